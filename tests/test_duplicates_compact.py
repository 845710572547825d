"""The compact index duplicates search their candidate pairs in (index/compact.py), on real photos: it finds
the pairs the collection's full index finds, it takes in new images only, and it is kept across reopening."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import duplicate_photos

from lookalike import Collection
from lookalike.duplicates import COMPACT_FOLDER, EDGE_FLOOR, NEIGHBOURS, neighbour_pairs, search_pairs, update_pairs
from lookalike.index.compact import COMPACT_DIM, CompactIndex

#: photos per label: 150 photos and 3 edited copies, more than COMPACT_DIM, so the projection drops dimensions
PER_LABEL = 75


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """The photos indexed once with efficientnet-lite0 (the measured setting of benchmarks/README.md's compact
    index figures; the default embedder's two views would double the time): (photos, collection folder)."""
    root = tmp_path_factory.mktemp("compact") / "photos"
    duplicate_photos(data_dir, root, per_label=PER_LABEL)
    with Collection.open(root.parent / "collection", embedder="efficientnet-lite0") as col:
        col.sync(root)
    return root, root.parent / "collection"


@pytest.fixture()
def collection(tmp_path: Path, template: tuple[Path, Path]) -> Collection:
    shutil.copytree(template[1], tmp_path / "collection")
    col = Collection.open(tmp_path / "collection", create=False)
    yield col
    col.close()


def stored_pairs(col: Collection, embedder: str) -> set[tuple[int, int]]:
    a, b, _ = col.catalog.pairs(embedder, EDGE_FLOOR)
    return set(zip(a.tolist(), b.tolist(), strict=True))


def test_compact_index_finds_the_full_index_pairs(collection: Collection):
    embedder = collection.default_embedder
    records = collection.records()
    assert update_pairs(collection, embedder, records) == len(records)
    index = CompactIndex.load(collection.path / COMPACT_FOLDER, embedder)
    assert index is not None and len(index) == len(records)
    assert index.dim == COMPACT_DIM < len(records) - 1  # a real projection, not a rotation of every dimension
    # the full index's nearest neighbours of every image, as duplicates searched them before the compact index
    ids = np.array(sorted(r.id for r in records), dtype=np.int64)
    vectors = collection.vectors_of(ids, embedder)
    found = collection.search_vectors(vectors, NEIGHBOURS, embedder=embedder, exclude=ids, expand=0)
    a, b, scores = neighbour_pairs(ids, found.ids, found.scores, EDGE_FLOOR)
    full = set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(full) >= 10
    assert stored_pairs(collection, embedder) == full
    # the whole 10-nearest-neighbour graph, whatever the score: nearly the same (candidates are what the compact
    # index ranks in its first 20; far down the list, at cosine ~0.4 between unrelated photos, the orders differ)
    a, b, _ = neighbour_pairs(ids, found.ids, found.scores, -1.0)
    a2, b2, _ = search_pairs(index, ids, vectors, lambda i: collection.vectors_of(i, embedder), -1.0)
    graph, compact = set(zip(a.tolist(), b.tolist(), strict=True)), set(zip(a2.tolist(), b2.tolist(), strict=True))
    assert len(graph) > 5 * len(ids)
    assert len(graph & compact) >= 0.9 * len(graph), f"{len(graph & compact)} of {len(graph)}"
    # and scored with the exact cosine of the stored vectors
    sa, sb, stored_scores = collection.catalog.pairs(embedder, EDGE_FLOOR)
    exact = np.einsum("ij,ij->i", collection.vectors_of(sa, embedder), collection.vectors_of(sb, embedder))
    np.testing.assert_allclose(stored_scores, exact, atol=1e-5)
    # the edited copies are among them
    by_path = {Path(r.path).name: r.id for r in records}
    for original, copy in [("cat.1.jpg", "cat.1-half.jpg"), ("dog.1.jpg", "dog.1-mirrored.jpg")]:
        pair = tuple(sorted((by_path[original], by_path[copy])))
        assert pair in full


def test_new_images_are_added_to_the_compact_index_only(collection: Collection, template: tuple[Path, Path]):
    embedder = collection.default_embedder
    update_pairs(collection, embedder, collection.records())
    folder = collection.path / COMPACT_FOLDER
    before = CompactIndex.load(folder, embedder)
    projection_written = (folder / f"{embedder}.npz").stat().st_mtime_ns
    from PIL import Image

    root = template[0]
    with Image.open(root / "cat" / "cat.3.jpg") as image:
        image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(root / "cat" / "cat.3-smaller.jpg")
    try:
        collection.sync(root)
    finally:
        (root / "cat" / "cat.3-smaller.jpg").unlink()
    new = {r.id for r in collection.records()} - set(before.ids().tolist())
    assert len(new) == 1
    assert update_pairs(collection, embedder, collection.records()) == 1  # only the new image is searched
    after = CompactIndex.load(folder, embedder)
    assert sorted(after.ids().tolist()) == sorted([*before.ids().tolist(), *new])
    assert after.projection.key == before.projection.key  # updated in place, not fit again
    assert (folder / f"{embedder}.npz").stat().st_mtime_ns == projection_written
    # the new copy is paired with its original
    by_path = {Path(r.path).name: r.id for r in collection.records()}
    pair = tuple(sorted((by_path["cat.3.jpg"], by_path["cat.3-smaller.jpg"])))
    assert pair in stored_pairs(collection, embedder)
    # an image removed from the collection leaves the compact index at the next search (of a new image)
    collection.remove([by_path["cat.3-smaller.jpg"]])
    with Image.open(root / "dog" / "dog.3.jpg") as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "dog" / "dog.3-mirrored.jpg")
    try:
        collection.sync(root)
    finally:
        (root / "dog" / "dog.3-mirrored.jpg").unlink()
    assert update_pairs(collection, embedder, collection.records()) == 1
    ids = set(CompactIndex.load(folder, embedder).ids().tolist())
    assert by_path["cat.3-smaller.jpg"] not in ids
    assert ids == {r.id for r in collection.records() if r.status == "ok"}


def test_compact_index_survives_reopening(collection: Collection):
    embedder = collection.default_embedder
    groups = collection.duplicates("similar").groups
    folder = collection.path / COMPACT_FOLDER
    key = CompactIndex.load(folder, embedder).projection.key
    collection.close()
    with Collection.open(folder.parent, create=False) as reopened:
        index = CompactIndex.load(folder, embedder)
        assert index is not None and index.projection.key == key
        assert len(index) == len(reopened.records())
        again = reopened.duplicates("similar")
        assert again.compared == 0
        assert [g.ids for g in again.groups] == [g.ids for g in groups]
        # files left by an interrupted save (the index and its projection not from the same fit) are rebuilt
        meta = folder / f"{embedder}.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "projection": "another fit"}))
        assert CompactIndex.load(folder, embedder) is None
        with reopened.writing():
            reopened.catalog.forget_pairs(embedder, [r.id for r in reopened.records()])
        assert reopened.duplicates("similar").compared == len(reopened.records())
        assert CompactIndex.load(folder, embedder) is not None
        assert [g.ids for g in reopened.duplicates("similar").groups] == [g.ids for g in groups]


def test_one_image_then_its_copy(tmp_path: Path, data_dir: Path):
    """Too few vectors for a projection: one image has no pair; with its copy the two are one group."""
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy2(data_dir / "cat" / "cat.1.jpg", root / "cat.1.jpg")
    with Collection.open(tmp_path / "collection") as col:
        col.sync(root)
        alone = col.duplicates("similar")
        assert alone.compared == 1 and alone.groups == []
        with Image.open(root / "cat.1.jpg") as image:
            image.resize((image.width // 2, image.height // 2)).save(root / "cat.1-half.jpg")
        col.sync(root)
        pair = col.duplicates("similar", threshold=0.8)  # a half-size copy scores ~0.83 with this embedder
        assert pair.compared == 1
        assert [sorted(Path(m.path).name for m in g.members) for g in pair.groups] == [["cat.1-half.jpg", "cat.1.jpg"]]
