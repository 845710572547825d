"""The copy-detection set generator (benchmarks/copydetect.py) and bench_duplicates.py's scoring, on real photos."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from benchmark_modules import load_script
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
CALTECH = REPO.parent / "shared" / "data" / "caltech101-dev"


copydetect = load_script("copydetect")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> list[Path]:
    """Two small source folders of real photos; the pets one holds the known identical pair."""
    root = tmp_path_factory.mktemp("sources")
    pets = ["cat/cat.1.jpg", "cat/cat.2.jpg", "dog/dog.1.jpg", "dog/dog.2027.jpg", "dog/dog.3082.jpg"]
    for name in pets:
        (root / "pets" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / name, root / "pets" / name)
    objects = ["accordion/image_0001.jpg", "airplanes/image_0001.jpg", "Faces/image_0001.jpg"]
    objects += ["Faces_easy/image_0001.jpg"]  # a crop of Faces/image_0001.jpg: excluded by default
    for name in objects:
        (root / "objects" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CALTECH / name, root / "objects" / name)
    return [root / "objects", root / "pets"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, sources: list[Path]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("set") / "seed0"
    return out, copydetect.generate(out, sources, originals=4, distractors=3, seed=0)


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.float32)


def copy_of(manifest: dict, original: str, transform: str) -> dict:
    return next(c for c in manifest["originals"][original]["copies"] if c["transform"] == transform)


def test_manifest_lists_every_file_and_every_transform(generated: tuple[Path, dict]) -> None:
    out, manifest = generated
    assert len(manifest["originals"]) == 4 and len(manifest["distractors"]) == 3
    listed = set(manifest["originals"]) | {d["file"] for d in manifest["distractors"]}
    for record in manifest["originals"].values():
        assert [c["transform"] for c in record["copies"]] == list(copydetect.TRANSFORMS)
        assert all(c["tier"] == copydetect.TRANSFORMS[c["transform"]].tier for c in record["copies"])
        listed |= {c["file"] for c in record["copies"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == listed
    assert json.loads((out / "manifest.json").read_text())["originals"] == manifest["originals"]
    # originals and distractors are disjoint and byte-distinct
    digests = [hashlib.sha256((out / f).read_bytes()).hexdigest() for f in manifest["originals"]]
    digests += [hashlib.sha256((out / d["file"]).read_bytes()).hexdigest() for d in manifest["distractors"]]
    assert len(set(digests)) == 7
    assert all(s["reason"].startswith("same bytes as") for s in manifest["skipped"])
    sources = [r["source"] for r in manifest["originals"].values()] + [d["source"] for d in manifest["distractors"]]
    assert not any("Faces_easy" in s for s in sources)
    assert not {"pets/dog/dog.2027.jpg", "pets/dog/dog.3082.jpg"} <= set(sources)


def test_copies_differ_from_their_original_as_the_transform_says(generated: tuple[Path, dict]) -> None:
    out, manifest = generated
    for original in manifest["originals"]:
        pixels = decoded(out / original)
        h, w = pixels.shape[:2]
        copy = {name: out / copy_of(manifest, original, name)["file"] for name in copydetect.TRANSFORMS}

        assert copy["bytes"].read_bytes() == (out / original).read_bytes()
        assert np.array_equal(decoded(copy["png"]), pixels)

        flipped = decoded(copy["flip"])
        to_mirror = np.abs(flipped - pixels[:, ::-1]).mean()
        assert to_mirror < 3.0  # JPEG quality 95
        assert np.abs(flipped - pixels).mean() > 3 * to_mirror

        with Image.open(copy["half"]) as half:
            assert half.size == (w // 2, h // 2)  # half each side: a quarter of the pixels

        with Image.open(copy["grey"]) as grey:
            assert grey.mode == "L"
        grey_pixels = decoded(copy["grey"])
        assert np.abs(grey_pixels[..., 0] - grey_pixels[..., 1]).max() == 0

        box = copy_of(manifest, original, "crop90")["params"]["box"]
        cropped = decoded(copy["crop90"])
        assert cropped.shape[:2] == (box[3] - box[1], box[2] - box[0]) == (round(0.9 * h), round(0.9 * w))
        assert np.abs(cropped - pixels[box[1] : box[3], box[0] : box[2]]).mean() < 3.0

        bright = decoded(copy["bright"])
        assert bright.mean() > 1.1 * pixels.mean()
        assert np.abs(decoded(copy["jpeg30"]) - pixels).mean() > np.abs(flipped - pixels[:, ::-1]).mean()

        with Image.open(copy["rotate15"]) as rotated:
            assert rotated.width > w and rotated.height > h
        caption = copy_of(manifest, original, "caption")["params"]
        with Image.open(copy["caption"]) as captioned:
            assert captioned.size == (w, h + caption["bar"])

        shot = copy_of(manifest, original, "screenshot")["params"]
        with Image.open(copy["screenshot"]) as screenshot:
            assert screenshot.format == "PNG"
            left, top, right, bottom = shot["photo_box"]
            assert right - left < w and bottom - top < h  # scaled down
            inside = np.asarray(screenshot.convert("RGB").crop(shot["photo_box"]), dtype=np.float32)
        scaled = Image.fromarray(pixels.astype(np.uint8)).resize((right - left, bottom - top), Image.Resampling.LANCZOS)
        assert np.abs(inside - np.asarray(scaled, dtype=np.float32)).mean() < 1.0  # lossless PNG

        with Image.open(copy["combo"]) as combo:
            assert combo.size == (round(0.8 * w) // 2, round(0.8 * h) // 2)


def test_a_seed_gives_the_same_set_and_another_seed_another(
    generated: tuple[Path, dict], sources: list[Path], tmp_path: Path
) -> None:
    out, manifest = generated
    again = copydetect.generate(tmp_path / "again", sources, originals=4, distractors=3, seed=0, workers=1)
    assert again["originals"] == manifest["originals"] and again["distractors"] == manifest["distractors"]
    for path in out.rglob("*"):
        if path.is_file():
            assert (tmp_path / "again" / path.relative_to(out)).read_bytes() == path.read_bytes(), path
    other = copydetect.generate(tmp_path / "other", sources, originals=4, distractors=3, seed=1)
    params = [[c["params"] for c in o["copies"]] for o in manifest["originals"].values()]
    other_params = [[c["params"] for c in o["copies"]] for o in other["originals"].values()]
    assert params != other_params


def test_generator_refuses_a_folder_that_is_not_empty(generated: tuple[Path, dict], sources: list[Path]) -> None:
    out, _ = generated
    with pytest.raises(SystemExit, match="not empty"):
        copydetect.generate(out, sources, originals=1, distractors=1)


def test_identical_files_count_once(sources: list[Path], tmp_path: Path) -> None:
    pets = sources[1]
    with pytest.raises(SystemExit, match="only 2 usable distractors"):  # 5 files, 2 identical
        copydetect.generate(tmp_path / "set", [pets], originals=2, distractors=3)
    manifest = copydetect.generate(tmp_path / "set2", [pets], originals=2, distractors=2)
    picked = [r["source"] for r in manifest["originals"].values()] + [d["source"] for d in manifest["distractors"]]
    assert not {"pets/dog/dog.2027.jpg", "pets/dog/dog.3082.jpg"} <= set(picked)


def test_scores_follow_the_groups(generated: tuple[Path, dict]) -> None:
    bench = load_script("bench_duplicates")
    out, manifest = generated
    copyset = bench.CopySet.load(out)
    assert len(copyset.copies) == 4 * len(copydetect.TRANSFORMS)
    assert len(copyset.files) == 4 + len(copyset.copies) + 3
    families = [np.flatnonzero(copyset.family == f).tolist() for f in range(4)]

    perfect = bench.score(copyset, families)
    assert perfect["pair_precision"] == 1.0 and perfect["pair_recall"] == 1.0
    assert set(perfect["recall"].values()) == {1.0}

    # one flipped copy left out, and all three distractors joined to the first family
    flip = next(c for c, o, t, _ in copyset.copies if t == "flip" and o == families[0][0])
    distractors = np.flatnonzero(copyset.family == -1).tolist()
    groups = [[i for i in families[0] if i != flip] + distractors, *families[1:]]
    scored = bench.score(copyset, groups)
    assert scored["recall"]["flip"] == 0.75 and scored["recall"]["half"] == 1.0
    size = len(families[0])  # the first group: size - 1 family members + 3 distractors
    true = (size - 1) * (size - 2) // 2 + 3 * size * (size - 1) // 2
    assert scored["pairs"] == (size + 2) * (size + 1) // 2 + 3 * size * (size - 1) // 2
    assert scored["pair_precision"] == round(true / scored["pairs"], 4)
    assert scored["tier_recall"]["mild"] == round(
        np.mean([scored["recall"][t] for t in bench_tier(copyset, "mild")]), 4
    )


def bench_tier(copyset, tier: str) -> list[str]:
    return [name for name, t in copyset.transforms().items() if t == tier]


def test_components_join_chains_and_drop_singletons() -> None:
    bench = load_script("bench_duplicates")
    groups = bench.components(7, np.array([[0, 1], [1, 2], [4, 5]]))
    assert sorted(sorted(g) for g in groups) == [[0, 1, 2], [4, 5]]
    assert bench.components(3, np.empty((0, 2), dtype=np.int64)) == []
