"""The near tier's geometric verification on real photos: a 60% crop and a screenshot of a photo join it only
with verification on; two different photos of Windsor chairs (repetitive spindles) stay apart; checked pairs are
stored and not checked again, until an image changes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from benchmark_modules import load_script

from lookalike import Collection
from lookalike.duplicates import THRESHOLDS, VERIFY_FLOOR
from lookalike.images import open_image
from lookalike.verify import METHOD, Verifier, measure_pairs

REPO = Path(__file__).resolve().parents[1]
STAGE = "verifying pairs"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """A dog photo, its 60% crop and its screenshot (drawn as benchmarks/copydetect.py draws them), two Windsor
    chairs, and two other photos; indexed with the copy descriptor, no pair searched yet: (photos, collection)."""
    copydetect = load_script("copydetect")
    root = tmp_path_factory.mktemp("verify") / "photos"
    root.mkdir()
    shutil.copyfile(data_dir / "dog" / "dog.1.jpg", root / "dog.jpg")
    photo = open_image(root / "dog.jpg")
    for name in ("crop60", "screenshot"):
        copy, _ = copydetect.TRANSFORMS[name].apply(photo, copydetect.copy_seed(0, "o0003", name))
        copy.save(root / f"dog_{name}.png")
    chairs = data_dir.parent / "caltech101-dev" / "windsor_chair"
    for n in ("14", "16"):
        shutil.copyfile(chairs / f"image_00{n}.jpg", root / f"chair{n}.jpg")
    for name in ("cat/cat.4.jpg", "dog/dog.6.jpg"):
        shutil.copyfile(data_dir / name, root / Path(name).name)
    collection = root.parent / "collection"
    with Collection.open(collection, embedder="copy-lite0") as col:
        col.sync(root, embedder="copy-lite0")
    return root, collection


@pytest.fixture()
def setup(tmp_path: Path, template: tuple[Path, Path]) -> tuple[Collection, Path]:
    """A copy of the template (photos and collection) for one test."""
    root, collection = tmp_path / "photos", tmp_path / "collection"
    shutil.copytree(template[0], root)
    shutil.copytree(template[1], collection)
    db = sqlite3.connect(collection / "catalog.sqlite")
    with db:
        db.execute("UPDATE images SET path = replace(path, ?, ?)", (str(template[0]), str(root)))
    db.close()
    col = Collection.open(collection, create=False)
    yield col, root
    col.close()


class Calls:
    """A progress callback that records the verifier's stage."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == STAGE:
            self.calls.append((done, total))

    @property
    def checked(self) -> int:
        """Pairs checked: the total the stage announced (0 when every pair's outcome was stored)."""
        return self.calls[0][1] if self.calls else 0


def names_with(report, name: str) -> set[str]:
    for group in report.groups:
        names = {Path(m.path).name for m in group.members}
        if name in names:
            return names
    return {name}


def test_copies_join_their_original_only_with_verification(setup: tuple[Collection, Path]):
    col, root = setup
    scores = pair_scores(col, root)
    # the copy descriptor alone misses both copies: they score in the verifier's band, below the threshold
    for name in ("dog_crop60.png", "dog_screenshot.png"):
        assert VERIFY_FLOOR <= scores[name] < THRESHOLDS["near"], (name, scores[name])

    calls = Calls()
    off = col.duplicates(verify=False, progress=calls)
    assert not off.verify and off.verified == 0 and calls.calls == []
    assert names_with(off, "dog.jpg").isdisjoint({"dog_crop60.png", "dog_screenshot.png"})

    calls = Calls()
    on = col.duplicates(progress=calls)  # verification is on by default
    assert on.verify and on.verified == calls.checked > 0
    assert calls.calls[-1] == (calls.checked, calls.checked)
    assert {"dog.jpg", "dog_crop60.png", "dog_screenshot.png"} <= names_with(on, "dog.jpg")
    # the two chairs score in the band and match on their spindles, but not well enough: checked, not grouped
    ids = {Path(r.path).name: r.id for r in col.records()}
    chairs = (min(ids["chair14.jpg"], ids["chair16.jpg"]), max(ids["chair14.jpg"], ids["chair16.jpg"]))
    stored = col.catalog.verified(METHOD)
    assert chairs in stored
    assert "chair16.jpg" not in names_with(on, "chair14.jpg")
    keys, values = col.catalog.verified_arrays(METHOD)  # the same outcomes, as the near tier reads them
    assert keys.tolist() == sorted((x << 32) | y for x, y in stored)
    assert [tuple(v) for v in values.tolist()] == [stored[(k >> 32, k & 0xFFFFFFFF)] for k in keys.tolist()]
    for group in on.groups:  # nothing else joined the dog or the chairs
        assert {Path(m.path).name for m in group.members} <= {"dog.jpg", "dog_crop60.png", "dog_screenshot.png"}

    calls = Calls()
    again = col.duplicates(progress=calls)
    assert again.verified == 0 and calls.checked == 0  # every outcome was stored
    assert [g.ids for g in again.groups] == [g.ids for g in on.groups]
    assert names_with(col.duplicates(verify=False), "dog.jpg") == names_with(off, "dog.jpg")


def test_a_changed_image_is_checked_again(setup: tuple[Collection, Path]):
    col, root = setup
    first = Calls()
    col.duplicates(progress=first)
    stored = col.catalog.verified(METHOD)
    screenshot = next(r.id for r in col.records() if r.path.endswith("dog_screenshot.png"))
    theirs = {pair for pair in stored if screenshot in pair}
    assert theirs and first.checked == len(stored)

    with open_image(root / "dog_screenshot.png") as image:  # another screenshot of the same photo: smaller
        image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(root / "dog_screenshot.png")
    col.sync(root, embedder="copy-lite0")
    calls = Calls()
    report = col.duplicates(progress=calls)
    assert calls.checked == report.verified >= 1
    assert {pair for pair in col.catalog.verified(METHOD) if screenshot in pair}  # measured again
    assert calls.checked <= len(theirs) + 2  # only the changed image's pairs (its neighbours may differ a little)
    assert "dog_screenshot.png" in names_with(report, "dog.jpg")


def test_verifier_measures_a_crop_and_refuses_unreadable_files(setup: tuple[Collection, Path], tmp_path: Path):
    _, root = setup
    verifier = Verifier()
    crop = verifier.measure(str(root / "dog.jpg"), str(root / "dog_crop60.png"))
    assert crop is not None and crop.inliers >= 50 and not crop.mirrored
    chairs = verifier.measure(str(root / "chair14.jpg"), str(root / "chair16.jpg"))
    assert chairs is not None and chairs.inliers < crop.inliers / 2
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert verifier.measure(str(root / "dog.jpg"), str(broken)) is None
    read = verifier.images_read
    assert verifier.measure(str(root / "dog_crop60.png"), str(root / "dog.jpg")) is not None
    assert verifier.images_read == read  # features come from the cache the second time


def pair_scores(col: Collection, root: Path) -> dict[str, float]:
    """Each photo's copy-descriptor cosine to dog.jpg."""
    records = {Path(r.path).name: r.id for r in col.records()}
    vectors = col.vectors_of([records[n] for n in records], "copy-lite0")
    dog = vectors[list(records).index("dog.jpg")]
    return {name: float(v @ dog) for name, v in zip(records, vectors, strict=True)}


def test_cli_and_rest_turn_verification_off(setup: tuple[Collection, Path], capsys: pytest.CaptureFixture[str]):
    from fastapi.testclient import TestClient

    from lookalike.cli.main import main
    from lookalike.server import create_app

    col, root = setup
    copies = {"dog_crop60.png", "dog_screenshot.png"}
    app = create_app(col)
    try:
        client = TestClient(app)
        off = client.get("/api/duplicates", params={"verify": "false"})
        assert off.status_code == 200
        assert not any(copies & {m["name"] for m in g["members"]} for g in off.json()["groups"])
        on = client.get("/api/duplicates")
        assert any(copies <= {m["name"] for m in g["members"]} for g in on.json()["groups"])
    finally:
        app.state.lookalike.weak_match.stop()

    assert main(["duplicates", "--collection", str(col.path), "--no-verify", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["verify"] is False and body["verified"] == 0
    grouped = {Path(m["path"]).name for g in body["groups"] for m in g["members"]}
    assert grouped.isdisjoint(copies)
    assert main(["duplicates", "--collection", str(col.path), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["verify"] is True and body["verified"] == 0  # checked through the REST call: stored
    assert copies <= {Path(m["path"]).name for g in body["groups"] for m in g["members"]}


def test_pairs_stored_with_another_floor_are_searched_again(setup: tuple[Collection, Path]):
    col, _ = setup
    first = col.duplicates(verify=False)
    assert first.compared == len(col.records())
    assert col.duplicates(verify=False).compared == 0
    col.catalog.set_meta("duplicates-floor:copy-lite0", "0.7")  # as a catalog searched before the floor was 0.60
    again = col.duplicates(verify=False)
    assert again.compared == len(col.records())
    assert [g.ids for g in again.groups] == [g.ids for g in first.groups]


def test_pairs_measured_by_several_threads_give_the_outcomes_of_one_verifier(template: tuple[Path, Path]):
    root = template[0]
    files = sorted(str(p) for p in root.iterdir())
    pairs = [(a, b) for a in files for b in files if a < b] + [(files[0], str(root / "gone.jpg"))]
    one = Verifier()
    expected = [one.measure(a, b) for a, b in pairs]
    assert expected[-1] is None and any(o is not None and o.inliers >= 20 for o in expected)
    assert list(measure_pairs(pairs, workers=2, block=3)) == expected
    assert list(measure_pairs(pairs, workers=1)) == expected
