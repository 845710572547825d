"""Collection.duplicates on a small copy-detection set of real photos: tiers, keeper, clustering, incremental
search, decisions, moving and undoing, bad input, and the command line."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_modules import load_script

from lookalike import Collection
from lookalike.catalog import ImageRecord
from lookalike.cli.main import main
from lookalike.duplicates import (
    ATTACH_LINKS,
    THRESHOLDS,
    DuplicatesError,
    HashNeighbours,
    choose_keeper,
    default_threshold,
    difference_hash,
    perceptual_hash,
    star_clusters,
)
from lookalike.images import open_image

REPO = Path(__file__).resolve().parents[1]
MILD = ["half", "jpeg30", "flip", "crop90"]
TRANSFORMS = ["bytes", "png", *MILD, "screenshot"]


@pytest.fixture(scope="module")
def copyset(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, dict]:
    """Two originals (cats and dogs photos) with 7 copies each, and 3 unrelated photos."""
    sources = tmp_path_factory.mktemp("sources") / "pets"
    for name in ["cat/cat.1.jpg", "cat/cat.2.jpg", "cat/cat.3.jpg", "dog/dog.1.jpg", "dog/dog.5.jpg", "dog/dog.8.jpg"]:
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / name, sources / name)
    out = tmp_path_factory.mktemp("set") / "set"
    manifest = load_script("copydetect").generate(
        out, [sources], originals=2, distractors=3, seed=0, transforms=TRANSFORMS
    )
    return out, manifest


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, copyset: tuple[Path, dict]) -> tuple[Path, Path]:
    """The set indexed once, its pairs searched for every tier: (photos, collection folder)."""
    root = tmp_path_factory.mktemp("template") / "photos"
    shutil.copytree(copyset[0], root)
    (root / "manifest.json").unlink()
    with Collection.open(root.parent / "collection") as col:
        col.sync(root)
        for tier in ("exact", "near", "similar"):
            col.duplicates(tier)
    return root, root.parent / "collection"


@pytest.fixture()
def photos(tmp_path: Path, template: tuple[Path, Path], copyset: tuple[Path, dict]) -> tuple[Path, dict]:
    """A writable copy of the set (files with their modification times: the copied catalog knows them)."""
    root = tmp_path / "photos"
    shutil.copytree(template[0], root)
    return root, copyset[1]


@pytest.fixture()
def collection(tmp_path: Path, photos: tuple[Path, dict], template: tuple[Path, Path]) -> Collection:
    """A copy of the template collection over this test's copy of the photos (no embedding again)."""
    shutil.copytree(template[1], tmp_path / "collection")
    db = sqlite3.connect(tmp_path / "collection" / "catalog.sqlite")
    with db:
        db.execute("UPDATE images SET path = replace(path, ?, ?)", (str(template[0]), str(photos[0])))
    db.close()
    col = Collection.open(tmp_path / "collection", create=False)
    yield col
    col.close()


def family_of(manifest: dict, root: Path) -> dict[str, str]:
    """path -> its original's path (distractors are not in it)."""
    families = {}
    for original, record in manifest["originals"].items():
        families[str(root / original)] = original
        for copy in record["copies"]:
            families[str(root / copy["file"])] = original
    return families


def copy_path(manifest: dict, root: Path, original: str, transform: str) -> str:
    record = manifest["originals"][original]
    return next(str(root / c["file"]) for c in record["copies"] if c["transform"] == transform)


def test_tiers_group_each_photo_with_its_copies_and_nothing_else(collection: Collection, photos: tuple[Path, dict]):
    root, manifest = photos
    families = family_of(manifest, root)
    exact = collection.duplicates("exact")
    assert len(exact.groups) == 2
    for group in exact.groups:
        names = sorted(Path(m.path).stem.split("_")[-1] for m in group.members)
        assert len(names) == 3 and all(m.score == 1.0 for m in group.members)
        assert {families[m.path] for m in group.members} == {families[group.keeper.path]}
        assert {n for n in names if not n.startswith("o")} == {"bytes", "png"}  # the original, its file copy, a PNG

    near = collection.duplicates()  # the default tier
    assert near.tier == "near" and near.embedder == "copy-lite0" and near.threshold == THRESHOLDS["near"]
    assert len(near.groups) == 2
    for original in manifest["originals"]:
        group = next(g for g in near.groups if str(root / original) in {m.path for m in g.members})
        paths = {m.path for m in group.members}
        for transform in ["bytes", "png", *MILD]:
            assert copy_path(manifest, root, original, transform) in paths, transform
        # only this photo's copies: no distractor, no copy of the other original
        assert all(families.get(p) == original for p in paths)
        keeper = group.keeper
        assert keeper.pixels == max(m.pixels for m in group.members)
        assert group.reason.startswith(("most pixels", "largest file"))
        assert group.members[0] == keeper and keeper.score == 1.0
        assert all(0.5 < m.score < 1.0 + 1e-6 for m in group.others)
        assert [m.score for m in group.others] == sorted((m.score for m in group.others), reverse=True)

    similar = collection.duplicates("similar")
    assert similar.embedder == collection.default_embedder
    grouped = [m.path for g in similar.groups for m in g.members]
    assert len(grouped) == len(set(grouped)) >= 8
    assert all(len({families.get(m.path) for m in g.members}) == 1 for g in similar.groups)


def test_thresholds_are_checked_and_overridable(collection: Collection):
    with pytest.raises(DuplicatesError, match="tier"):
        collection.duplicates("blurry")
    with pytest.raises(DuplicatesError, match="between"):
        collection.duplicates(threshold=0.2)
    strict = collection.duplicates(threshold=0.999)
    default = collection.duplicates()
    assert sum(len(g.members) for g in strict.groups) < sum(len(g.members) for g in default.groups)
    assert strict.compared == 0  # the pairs were stored by the first call: regrouping searched nothing


def record(i: int, width: int, height: int, size: int, mtime_ns: int) -> ImageRecord:
    return ImageRecord(i, f"/p/{i}.jpg", "x", size, mtime_ns, None, width, height, "ok", None)


def test_keeper_most_pixels_then_largest_file_then_oldest():
    keeper, reason = choose_keeper([record(1, 100, 100, 900, 1), record(2, 200, 100, 500, 2), record(3, 50, 50, 9, 0)])
    assert keeper.id == 2 and reason == "most pixels (200x100)"
    keeper, reason = choose_keeper([record(1, 100, 100, 900, 5), record(2, 100, 100, 950, 6)])
    assert keeper.id == 2 and reason.startswith("largest file (950 bytes)")
    keeper, reason = choose_keeper([record(1, 100, 100, 900, 5), record(2, 100, 100, 900, 3)])
    assert keeper.id == 2 and reason == "oldest file among equal images"


def test_star_clusters_do_not_chain():
    # 1..4 are copies of one photo (all linked), 5 is another photo linked to 4 only, 6 linked to 5 only
    pairs = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4), (4, 5), (5, 6)]
    a, b = np.array(pairs).T
    groups = star_clusters(a, b, np.full(len(pairs), 0.9, dtype=np.float32))
    assert any({1, 2, 3, 4} <= set(g) for g in groups)
    assert all(not {1, 6} <= set(g) for g in groups)  # 6 is two links away from the photo: never with it
    assert sorted(i for g in groups for i in g) == sorted(set(i for g in groups for i in g))  # one group each
    # a chain A~B~C~D: no group holds both ends
    a, b = np.array([(10, 11), (11, 12), (12, 13)]).T
    groups = star_clusters(a, b, np.array([0.9, 0.95, 0.9], dtype=np.float32))
    assert all(not {10, 13} <= set(g) for g in groups)
    assert sorted(len(g) for g in groups) == [3]  # the best-linked middle image and its two neighbours


def test_an_image_linked_to_several_members_but_not_to_the_centre_joins_their_group():
    # 1 is the best-linked centre of 1..5; 6 is linked to 2, 3 and 4 but not to 1; 7 to 4 and 5 only
    pairs = [(1, 2), (1, 3), (1, 4), (1, 5), (2, 3), (2, 6), (3, 6), (4, 6), (4, 7), (5, 7)]
    a, b = np.array(pairs).T
    scores = np.full(len(pairs), 0.9, dtype=np.float32)
    assert ATTACH_LINKS == 3
    assert star_clusters(a, b, scores) == [[1, 2, 3, 4, 5, 6]]  # 7 has two links: it stays out
    # a decision that 6 and the centre are not duplicates keeps 6 out
    assert star_clusters(a, b, scores, apart={(1, 6)}) == [[1, 2, 3, 4, 5]]


def test_only_new_images_are_compared(collection: Collection, photos: tuple[Path, dict]):
    root, manifest = photos
    assert collection.duplicates().compared == 0  # the copied collection's images were all compared
    original = next(iter(manifest["originals"]))
    from PIL import Image

    with Image.open(root / original) as img:
        img.resize((img.width * 2 // 3, img.height * 2 // 3)).save(root / "new_smaller.jpg", quality=85)
    collection.sync(root)
    again = collection.duplicates()
    assert again.compared == 1
    group = next(g for g in again.groups if str(root / original) in {m.path for m in g.members})
    assert str(root / "new_smaller.jpg") in {m.path for m in group.members}


def test_forgetting_an_embedder_forgets_its_pairs_and_searches_again(collection: Collection):
    """A replaced model's pairs must not outlive its vectors: after `forget_embedder` and re-embedding, every
    image is searched again from scratch, the same groups are found, and a pair only the old model scored is
    gone (here planted between two unrelated photos, as a worse model might have scored them)."""
    catalog = collection.catalog
    before = collection.duplicates()
    assert before.compared == 0 and len(before.groups) == 2
    grouped = {m.id for g in before.groups for m in g.members}
    strangers = sorted(r.id for r in collection.records() if r.id not in grouped)[:2]
    with collection.writing():
        catalog.put_pairs("copy-lite0", np.array(strangers[:1]), np.array(strangers[1:]), np.array([0.99]))
    assert len(collection.duplicates().groups) == 3  # the planted pair is reported while it is stored
    similar = catalog.pairs(collection.default_embedder, 0.0)

    collection.forget_embedder("copy-lite0")
    assert len(catalog.pairs("copy-lite0", 0.0)[0]) == 0 and catalog.searched("copy-lite0") == {}
    assert collection.vector_ids("copy-lite0") == set()
    kept = catalog.pairs(collection.default_embedder, 0.0)  # another embedder's pairs stay
    assert all(np.array_equal(x, y) for x, y in zip(kept, similar, strict=True)) and len(kept[0]) > 0

    after = collection.duplicates()  # re-embeds with copy-lite0, then searches every image
    readable = len(collection.records())
    assert after.compared == readable == len(collection.vector_ids("copy-lite0"))
    assert len(catalog.searched("copy-lite0")) == readable
    assert sorted(sorted(m.path for m in g.members) for g in after.groups) == sorted(
        sorted(m.path for m in g.members) for g in before.groups
    )
    assert not any(set(strangers) <= {m.id for m in g.members} for g in after.groups)
    a, b, _ = catalog.pairs("copy-lite0", 0.0)
    assert (min(strangers), max(strangers)) not in set(zip(a.tolist(), b.tolist(), strict=True))


def test_decisions_persist(collection: Collection, tmp_path: Path):
    groups = collection.duplicates().groups
    kept, split = groups[0], groups[1]
    collection.decide_duplicates(kept.ids, "keep", keeper=kept.keeper.id)
    collection.decide_duplicates(split.ids[:2], "distinct")
    with pytest.raises(DuplicatesError, match="decision"):
        collection.decide_duplicates(kept.ids, "maybe")
    collection.close()
    with Collection.open(tmp_path / "collection", create=False) as reopened:
        report = reopened.duplicates()
        assert report.resolved == 1
        assert kept.key not in {g.key for g in report.groups}
        assert all(not set(split.ids[:2]) <= set(g.ids) for g in report.groups)
        shown = reopened.duplicates(include_resolved=True)
        assert kept.key in {g.key for g in shown.groups}
        assert reopened.clear_duplicate_decisions() == len(kept.ids) - 1 + 1
        assert kept.key in {g.key for g in reopened.duplicates().groups}


def test_move_dry_run_and_undo(collection: Collection, tmp_path: Path):
    groups = collection.duplicates().groups
    others = [m.path for g in groups for m in g.others]
    dest = tmp_path / "moved"
    planned = collection.move_duplicates(groups, dest, dry_run=True)
    assert planned.manifest is None and len(planned.moves) == len(others)
    assert all(os.path.exists(p) for p in others) and not dest.exists()

    done = collection.move_duplicates(groups, dest)
    assert done.manifest is not None and done.manifest.is_file() and not done.failed
    assert not any(os.path.exists(p) for p in others)
    assert all(Path(m.target).is_file() and Path(m.target).is_relative_to(dest) for m in done.moves)
    assert all(os.path.exists(g.keeper.path) for g in groups)
    assert collection.duplicates().groups == []  # the moved files left the collection

    undone = collection.undo_move(done.manifest)
    assert sorted(undone.restored) == sorted(others)
    assert all(os.path.exists(p) for p in others)
    with pytest.raises(DuplicatesError, match="nothing to undo"):
        collection.undo_move(done.manifest)


def test_move_into_the_indexed_folder_is_refused(collection: Collection, photos: tuple[Path, dict]):
    with pytest.raises(DuplicatesError, match="inside the indexed folder"):
        collection.move_duplicates(collection.duplicates().groups, photos[0] / "dups")


def test_a_move_failing_halfway_leaves_every_file_in_place_or_recorded(
    collection: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    groups = collection.duplicates().groups
    others = [m.path for g in groups for m in g.others]
    real_rename = os.rename
    calls = []

    def disk_full_on_third(source: str, target: str) -> None:
        calls.append(source)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", disk_full_on_third)
    report = collection.move_duplicates(groups, tmp_path / "moved")
    monkeypatch.undo()
    assert len(report.moves) == 2 and len(report.failed) == len(others) - 2
    assert "No space left" in report.failed[0][1]
    moved = {m.source for m in report.moves}
    for path in others:  # each file is either in place, or moved and recorded
        assert os.path.exists(path) != (path in moved)
    lines = [json.loads(line) for line in report.manifest.read_text().splitlines()[1:]]
    assert [e["id"] for e in lines if e["state"] == "moved"] == [m.id for m in report.moves]
    assert sorted(collection.undo_move(report.manifest).restored) == sorted(moved)
    assert all(os.path.exists(p) for p in others)


def test_undo_refuses_when_a_moved_file_changed(collection: Collection, tmp_path: Path):
    groups = collection.duplicates().groups
    report = collection.move_duplicates(groups, tmp_path / "moved")
    changed = Path(report.moves[1].target)
    changed.write_bytes(changed.read_bytes() + b"edited")
    with pytest.raises(DuplicatesError, match="changed since it was moved"):
        collection.undo_move(report.manifest)
    assert all(Path(m.target).exists() and not Path(m.source).exists() for m in report.moves)  # nothing restored


def test_unreadable_and_vanished_files_are_never_grouped(collection: Collection, photos: tuple[Path, dict]):
    root, manifest = photos
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    collection.sync(root)
    original = next(iter(manifest["originals"]))
    gone = copy_path(manifest, root, original, "flip")
    os.unlink(gone)
    report = collection.duplicates()
    grouped = {m.path for g in report.groups for m in g.members}
    assert [p for p, _ in report.unreadable] == [str(root / "broken.jpg")]
    assert str(root / "broken.jpg") not in grouped
    assert gone not in grouped and report.vanished == [gone]


def test_cli_json_and_csv(collection: Collection, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    col = str(collection.path)
    assert main(["duplicates", "--collection", col, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tier"] == "near" and len(data["groups"]) == 2
    assert {"key", "keeper", "reason", "members"} <= set(data["groups"][0])

    out = tmp_path / "groups.csv"
    assert main(["duplicates", "--collection", col, "--tier", "exact", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and sum(r["keeper"] == "yes" for r in rows) == 2
    assert all(r["score"] == "1.0000" for r in rows)

    assert main(["duplicates", "--collection", col, "--move-to", str(tmp_path / "m"), "--dry-run"]) == 0
    assert "would move" in capsys.readouterr().out and not (tmp_path / "m").exists()
    assert main(["duplicates", "--collection", col, "--threshold", "0.1"]) == 2
    assert "between" in capsys.readouterr().err


def test_finding_duplicates_never_imports_torch_once_models_are_exported(
    collection: Collection, photos: tuple[Path, dict]
):
    root, manifest = photos
    original = next(iter(manifest["originals"]))
    shutil.copyfile(root / original, root / "again.jpg")
    os.utime(root / "again.jpg", (1, 1))  # same bytes as the original, another file: embedded anew
    collection.close()
    code = (
        "import sys, json\nfrom lookalike import Collection\n"
        f"with Collection.open({str(collection.path)!r}, create=False) as c:\n"
        f"    c.sync({str(root)!r})\n"
        "    report = c.duplicates('near')\n"
        "heavy = [m for m in ('torch', 'torchvision') if m in sys.modules]\n"
        "print(json.dumps({'compared': report.compared, 'heavy': heavy}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"compared": 1, "heavy": []}


def test_perceptual_hash_is_near_for_copies_and_far_for_other_photos(photos: tuple[Path, dict]):
    root, manifest = photos
    originals = list(manifest["originals"])
    hashes = {}
    for name in [originals[0], originals[1]]:
        hashes[name] = perceptual_hash(open_image(root / name))
    for transform in ("half", "jpeg30"):
        copy = perceptual_hash(open_image(copy_path(manifest, root, originals[0], transform)))
        assert (copy ^ hashes[originals[0]]).bit_count() <= 10, transform
    assert (hashes[originals[0]] ^ hashes[originals[1]]).bit_count() > 10


def test_difference_hash_is_near_for_copies_and_far_for_other_photos(photos: tuple[Path, dict]):
    root, manifest = photos
    first, second = (difference_hash(open_image(root / name)) for name in list(manifest["originals"])[:2])
    for transform in ("half", "jpeg30", "png"):
        copy = difference_hash(open_image(copy_path(manifest, root, list(manifest["originals"])[0], transform)))
        assert (copy ^ first).bit_count() <= 4, transform
    assert (first ^ second).bit_count() > 10


def planted_hashes(n: int, seed: int = 0) -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """n random pairs of 64-bit hashes keyed 1..n, then copies of the first n // 10 with 1-6 bits flipped in the
    dHash (pHash kept): (hashes, copy id -> original id)."""
    rng = np.random.default_rng(seed)
    hashes = {i + 1: (int(rng.integers(0, 2**63)), int(rng.integers(0, 2**63))) for i in range(n)}
    copies = {}
    for i in range(1, n // 10 + 1):
        flips = sum(1 << int(bit) for bit in rng.choice(64, int(rng.integers(1, 7)), replace=False))
        copies[n + i] = i
        hashes[n + i] = ((hashes[i][0] ^ flips) if i % 2 else int(rng.integers(0, 2**63)), hashes[i][1] ^ flips)
    return hashes, copies


def test_hash_neighbours_find_the_hashes_within_the_bits_and_never_the_image_itself():
    hashes, copies = planted_hashes(3000)
    neighbours = HashNeighbours(np.array(list(hashes)), np.array(list(hashes.values()), dtype=np.uint64))
    ids = np.array(sorted(copies), dtype=np.int64)
    found = neighbours.search(ids)
    for row, copy in enumerate(ids.tolist()):
        got = set(found[row][found[row] >= 0].tolist())
        assert copies[copy] in got and copy not in got
        for other in got:  # only hashes within the bits, by pHash or by dHash
            assert min((hashes[other][n] ^ hashes[copy][n]).bit_count() for n in range(2)) <= 10
    assert (neighbours.search(np.array([10**6])) == -1).all()  # no stored hash: nothing


def test_hash_neighbours_of_a_large_collection_come_from_a_binary_ivf_index(monkeypatch: pytest.MonkeyPatch):
    import lookalike.duplicates as duplicates

    monkeypatch.setattr(duplicates, "HASH_EXACT_LIMIT", 1000)
    hashes, copies = planted_hashes(20_000, seed=1)
    neighbours = HashNeighbours(np.array(list(hashes)), np.array(list(hashes.values()), dtype=np.uint64))
    assert type(neighbours.indexes[0]).__name__ == "IndexBinaryIVF"
    ids = np.array(sorted(copies), dtype=np.int64)
    found = neighbours.search(ids)
    hits = [copies[c] in set(found[row].tolist()) for row, c in enumerate(ids.tolist())]
    assert np.mean(hits) >= 0.9  # approximate: uniform random hashes are the IVF's worst case


def test_a_copy_the_descriptor_misses_is_found_by_its_hashes_and_the_geometric_check(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Words over a photo can take its copy descriptor far from the original's (seed 1 of the benchmark set: the
    original ranked 522nd, cosine 0.40). Here the descriptor's neighbours are taken away altogether: the copy and the
    original are still paired, through their hashes, and no unrelated photo joins them; without the hash neighbours
    they are not. A hash pair scoring below the verifier's floor counts only when the geometric check accepts it."""
    import lookalike.duplicates as duplicates

    sources = tmp_path / "sources" / "pets"
    sources.mkdir(parents=True)
    for name in ["cat/cat.4.jpg", "cat/cat.6.jpg", "dog/dog.2.jpg", "dog/dog.3.jpg", "dog/dog.4.jpg"]:
        shutil.copyfile(data_dir / name, sources / Path(name).name)
    root = tmp_path / "set"
    manifest = load_script("copydetect").generate(
        root, [sources.parent], originals=1, distractors=4, seed=3, transforms=["text"]
    )
    (root / "manifest.json").unlink()
    original = next(iter(manifest["originals"]))
    text_copy = copy_path(manifest, root, original, "text")

    def no_neighbours(index, ids, vectors, stored, floor, *args, **kwargs):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)

    monkeypatch.setattr(duplicates, "search_pairs", no_neighbours)
    with Collection.open(tmp_path / "collection") as col:
        col.sync(root)
        report = col.duplicates()
        pair = sorted([str(root / original), text_copy])
        assert [sorted(m.path for m in g.members) for g in report.groups] == [pair]

        # the same pair, and one between two unrelated photos, as if the descriptor scored them 0.3
        ids = {r.path: r.id for r in col.records()}
        strangers = sorted(i for path, i in ids.items() if path not in pair)[:2]
        low = np.array([min(ids[p] for p in pair), strangers[0]]), np.array([max(ids[p] for p in pair), strangers[1]])
        with col.writing():
            col.catalog.put_pairs("copy-lite0", *low, np.array([0.3, 0.3]))
        checked = col.duplicates()
        assert checked.compared == 0 and checked.verified == 2
        assert [sorted(m.path for m in g.members) for g in checked.groups] == [pair]
        assert col.duplicates(verify=False).groups == []  # unchecked, a pair below the floor never counts

        monkeypatch.setattr(duplicates, "HASH_CANDIDATE_BITS", -1)  # no hash neighbours: searched again
        again = col.duplicates()
        assert again.compared == 6 and again.groups == []


def test_a_catalog_from_before_dhash_gains_the_column_and_computes_the_missing_hashes(tmp_path: Path):
    from lookalike.catalog import Catalog

    Catalog(tmp_path / "catalog.sqlite").close()
    db = sqlite3.connect(tmp_path / "catalog.sqlite")  # the table as it was
    db.execute("DROP TABLE duplicate_hashes")
    db.execute("CREATE TABLE duplicate_hashes (image_id INTEGER PRIMARY KEY, sha256 TEXT, phash INTEGER NOT NULL)")
    db.execute("INSERT INTO images (id, path, size, mtime_ns, status) VALUES (7, '/x.jpg', 1, 1, 'ok')")
    db.execute("INSERT INTO duplicate_hashes VALUES (7, 'abc', -5)")
    db.commit()
    db.close()
    catalog = Catalog(tmp_path / "catalog.sqlite")
    assert catalog.perceptual_hashes([7]) == {7: ("abc", -5, None)}  # kept; its dHash is computed when next needed
    catalog.put_perceptual_hashes([(7, "abc", -5, -6)])
    assert catalog.perceptual_hashes([7]) == {7: ("abc", -5, -6)}
    ids, codes = catalog.perceptual_hash_arrays()
    assert ids.tolist() == [7] and codes.tolist() == [[-5, -6]]
    catalog.close()


def test_the_similar_tier_threshold_follows_the_embedder_that_scores_it(tmp_path: Path) -> None:
    """The two-view descriptor's cosines run higher than Lite0's: its `similar` tier needs more, so that a new
    collection (which embeds with it) groups about as many pairs as Lite0 did at 0.85. `near` is always scored
    by the copy descriptor, `exact` by pixels: theirs do not move."""
    assert default_threshold("similar", "efficientnet-lite0") == THRESHOLDS["similar"] == 0.85
    assert default_threshold("similar", "efficientnet-lite0-gem-ms") == 0.89
    for tier in ("exact", "near"):
        assert default_threshold(tier, "efficientnet-lite0-gem-ms") == THRESHOLDS[tier]
    with Collection.open(tmp_path / "col") as collection:  # a new collection: the default embedder
        report = collection.duplicates(tier="similar")
        assert report.threshold == default_threshold("similar", collection.default_embedder) == 0.89
