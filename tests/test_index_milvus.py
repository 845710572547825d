"""The Milvus backend on Milvus Lite: its own mechanics (names, batches, filters in chunks, markers), collections
on Milvus, and failures. The behaviours every backend shares are tested in tests/test_index.py, Milvus Lite included.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lookalike import Collection
from lookalike.catalog import Catalog
from lookalike.cli.main import main
from lookalike.index import IndexError_, create_index, load_index, milvus
from lookalike.index.milvus import MilvusIndex, collection_name, parse_kind, release_lite
from lookalike.server import create_app

#: a vector database: under CI (ci_rules.py) these must run, not be skipped
pytestmark = pytest.mark.milvus

DIM = 32
N = 1000


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """L2-normalised Gaussian mixture (so nearest neighbours are meaningful)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory):
    """A Milvus Lite database for this module; its server is stopped afterwards."""
    path = tmp_path_factory.mktemp("milvus") / "vectors.db"
    yield f"milvus-lite:{path}"
    release_lite(path)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.arange(N, dtype=np.int64) * 7 + 3  # ids are not positions
    return ids, clustered(N), clustered(40, seed=1)


@pytest.fixture()
def index(lite, request) -> MilvusIndex:
    """An empty index in its own remote collection, named after the test."""
    created = create_index(lite, DIM, name=request.node.name)
    assert isinstance(created, MilvusIndex)
    return created


def filled(index: MilvusIndex, data) -> MilvusIndex:
    ids, vectors, _ = data
    index.add(ids, vectors)
    return index


# --- kinds and names --------------------------------------------------------------------------------


def test_kinds_parse_to_targets(tmp_path, monkeypatch):
    remote = parse_kind("milvus://db.example:19531/photos?index=ivf_sq8&nlist=4096&nprobe=32")
    assert (remote.uri, remote.prefix, remote.index_type, remote.lite) == (
        "http://db.example:19531",
        "photos",
        "IVF_SQ8",
        False,
    )
    assert remote.build_params == {"nlist": 4096} and remote.search_params == {"nprobe": 32}
    assert parse_kind(remote.kind) == remote, "a target's kind string parses back to it"
    defaults = parse_kind("milvus://localhost")
    assert (defaults.uri, defaults.prefix, defaults.index_type) == ("http://localhost:19530", "lookalike", "HNSW")
    assert defaults.search_params == {"ef": 64}
    monkeypatch.chdir(tmp_path)
    local = parse_kind("milvus-lite:vectors")
    assert (local.uri, local.index_type, local.lite) == (str(tmp_path / "vectors.db"), "FLAT", True)
    assert parse_kind(local.kind) == local
    for bad in ("milvus-lite:", "milvus://", "milvus://h/x?index=ANNOY", "milvus://h/x?nlist=many", "milvus:h"):
        with pytest.raises(IndexError_):
            parse_kind(bad)


def test_collection_names_are_valid_and_distinct():
    target = parse_kind("milvus://localhost/photos")
    names = {e: collection_name(target, e) for e in ("efficientnet-lite0", "efficientnet_lite0", "resnet50", "9x")}
    assert len(set(names.values())) == 4
    assert names["resnet50"] == "photos_resnet50", "a valid name is kept as it is"
    for name in names.values():
        assert name[0].isalpha() or name[0] == "_"
        assert all(c.isalnum() or c == "_" for c in name)


# --- Milvus specifics of the VectorIndex behaviours ---------------------------------------------------
# (the shared behaviour tests run on Milvus Lite in tests/test_index.py)


def test_a_repeated_id_in_one_batch_keeps_the_last_vector(index, data):
    _, vectors, _ = data
    index.add(np.array([1, 2, 1]), vectors[[0, 1, 2]])
    assert len(index) == 2
    _, found = index.search(vectors[2][None, :], 1)
    assert found[0, 0] == 1
    index.add(np.array([1, 1]), vectors[[3, 4]])  # an upsert batch, not the first insert
    scores, found = index.search(vectors[4][None, :], 1)
    assert found[0, 0] == 1 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("chunk", [milvus.FILTER_CHUNK, 50], ids=["one-filter", "chunked-filters"])
def test_allowed_ids_restrict_results(index, data, monkeypatch, chunk):
    ids, vectors, queries = data
    filled(index, data)
    monkeypatch.setattr(milvus, "FILTER_CHUNK", chunk)  # 334 allowed ids in 7 chunks: top-k merged across them
    allowed = ids[::3]
    scores, found = index.search(queries, 10, allowed_ids=allowed)
    np.testing.assert_array_equal(found, exact(queries, ids[::3], vectors[::3], 10))
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    few = ids[[4, 400, 800]]
    _, found = index.search(queries[:3], 5, allowed_ids=few)
    assert np.isin(found[:, :3], few).all() and (found[:, 3:] == -1).all()
    _, none = index.search(queries[:3], 5, allowed_ids=np.array([], dtype=np.int64))
    assert (none == -1).all()


def test_inserts_go_in_batches_and_refuse_wrong_shapes(index, data, monkeypatch):
    ids, vectors, _ = data
    monkeypatch.setattr(milvus, "INSERT_BYTES", 4 * DIM * 128)  # 128 vectors per call
    calls: list[int] = []
    for method in ("insert", "upsert"):
        original = getattr(index._client, method)
        monkeypatch.setattr(
            index._client, method, lambda name, rows, _f=original, **kw: calls.append(len(rows)) or _f(name, rows, **kw)
        )
    index.add(ids, vectors)
    assert calls == [128] * 7 + [N - 7 * 128]
    assert len(index) == N
    with pytest.raises(IndexError_, match="shape"):
        index.add(ids[:2], vectors[:2, :10])
    with pytest.raises(IndexError_, match="2 ids but 3 vectors"):
        index.add(ids[:2], vectors[:3])


def test_save_and_load_round_trip(index, data, tmp_path):
    ids, vectors, queries = data
    filled(index, data)
    index.remove(ids[:50])
    path = tmp_path / "indexes" / "e.faiss"
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["e.faiss"], "no temporary files left"
    assert json.loads(path.read_text())["collection"] == index.collection
    loaded = load_index(path)
    assert isinstance(loaded, MilvusIndex)
    assert (loaded.kind, len(loaded), loaded.dim, loaded.collection) == (index.kind, N - 50, DIM, index.collection)
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.sort(ids[50:]))
    for allowed in (None, ids[::2]):
        s1, i1 = index.search(queries, 10, allowed_ids=allowed)
        s2, i2 = loaded.search(queries, 10, allowed_ids=allowed)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2)
    loaded.add(np.array([10**9]), vectors[:1])  # still writable after loading
    assert len(loaded) == N - 49
    assert loaded.search(vectors[:1], 1)[1][0, 0] in (10**9, ids[0])


def test_creating_again_starts_from_an_empty_collection(lite, data, tmp_path):
    ids, vectors, _ = data
    first = create_index(lite, DIM, name="again")
    first.add(ids[:10], vectors[:10])
    first.save(tmp_path / "again.faiss")
    second = create_index(lite, DIM, name="again")  # a rebuild from the catalog
    assert len(second) == 0 and (second.search(vectors[:1], 3)[1] == -1).all()
    other = create_index(lite, DIM, name="another")  # another embedder's collection is left alone
    other.add(ids[:3], vectors[:3])
    assert len(create_index(lite, DIM, name="again")) == 0 and len(other) == 3


def test_a_missing_remote_collection_is_a_clear_error(index, data, tmp_path):
    filled(index, data)
    index.save(tmp_path / "e.faiss")
    index._client.drop_collection(index.collection)
    with pytest.raises(IndexError_, match=f"no collection {index.collection}; delete .*e.faiss to rebuild"):
        load_index(tmp_path / "e.faiss")


def test_hnsw_on_milvus_lite_has_high_recall(lite, data):
    ids, vectors, queries = data
    index = create_index(lite + "?index=HNSW&ef=128", DIM, name="hnsw")
    assert index.kind == "Milvus Lite HNSW"
    index.add(ids, vectors)
    index.wait_until_indexed()  # the segment's HNSW graph exists now: no brute-force fallback
    _, found = index.search(queries, 10)
    assert recall(found, exact(queries, ids, vectors, 10)) >= 0.95


# --- failures -------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    port = closed_port()
    with pytest.raises(IndexError_, match=f"cannot reach the Milvus server at 127.0.0.1:{port}"):
        create_index(f"milvus://127.0.0.1:{port}/photos", DIM, name="efficientnet-lite0")
    marker = tmp_path / "e.faiss"  # a saved index whose server has gone away
    marker.write_text(
        json.dumps(
            {
                "format": milvus.MARKER_FORMAT,
                "kind": f"milvus://127.0.0.1:{port}/photos",
                "collection": "c",
                "dim": 8,
                "catalog": None,
                "namespace": None,
            }
        )
    )
    with pytest.raises(IndexError_, match=f"cannot reach the Milvus server at 127.0.0.1:{port}"):
        load_index(marker)


# --- collections on Milvus Lite -------------------------------------------------------------------------


@pytest.fixture()
def milvus_collection(tmp_path, sample_folder):
    """A collection of the sample photos whose index is a Milvus Lite database; the server stops afterwards."""
    db = tmp_path / "milvus" / "vectors.db"
    collection = Collection.open(tmp_path / "collection", index=f"milvus-lite:{db}")
    collection.sync(sample_folder)
    yield collection, db
    collection.close()
    release_lite(db)


def test_a_collection_syncs_searches_filters_and_removes_through_milvus(milvus_collection, sample_folder):
    collection, db = milvus_collection
    index = collection.index()
    assert isinstance(index, MilvusIndex) and len(index) == collection.catalog.count() == 24
    query = sample_folder / "cat" / "cat.1.jpg"
    results = collection.search(query, k=5, expand=0)
    assert len(results) == 5 and all(r.path != str(query) for r in results)
    assert [r.rank for r in results] == [1, 2, 3, 4, 5] and results[0].score >= results[-1].score
    # the same answers as exact search over the catalog's vectors (plain cosine: no query expansion)
    ids, vectors = collection.catalog.vectors(collection.default_embedder)
    own = collection.catalog.get_by_path(str(query)).id
    expected = [i for i in exact(vectors[ids == own], ids, vectors, 6)[0] if i != own][:5]
    assert [r.id for r in results] == expected
    dogs = collection.search(query, k=20, label="dog")
    assert len(dogs) == 12 and {r.label for r in dogs} == {"dog"}
    gone = [r.id for r in results[:2]]
    assert collection.remove(gone) == 2
    assert len(index) == 22 and not {r.id for r in collection.search(query, k=22)} & set(gone)
    # A new session reconnects through the marker instead of rebuilding.
    marker = json.loads((collection.path / "indexes" / f"{collection.default_embedder}.faiss").read_text())
    assert marker["kind"].startswith(f"milvus-lite:{db}")
    with Collection.open(collection.path, create=False) as again:
        reopened = again.index()
        assert isinstance(reopened, MilvusIndex) and len(reopened) == 22
        assert [r.id for r in again.search(query, k=5)] == [r.id for r in collection.search(query, k=5)]


def test_a_write_the_server_refuses_commits_nothing(milvus_collection, sample_folder):
    collection, db = milvus_collection
    name = collection.default_embedder
    marker = collection.path / "indexes" / f"{name}.faiss"
    collection.index()
    before, generation = collection.catalog.count(), collection.catalog.generation(name)
    release_lite(db)  # the server goes away under a loaded index
    photo = (sample_folder / "dog" / "dog.3.jpg").read_bytes()
    new_path = sample_folder / "dog" / "new-dog.jpg"
    with pytest.raises(IndexError_, match=r"cannot reach Milvus Lite at .*vectors\.db: could not (remove|write) 1 "):
        collection.add_image(photo, new_path)
    assert collection.catalog.count() == before and collection.catalog.generation(name) == generation
    assert collection.catalog.get_by_path(str(new_path)) is None
    assert not marker.exists(), "the remote collection may hold part of the write: the next use rebuilds"
    # The next use rebuilds from the catalog (Milvus Lite starts again for it).
    assert len(collection.index(name)) == before and marker.exists()
    release_lite(db)
    with pytest.raises(IndexError_, match="cannot reach Milvus Lite"):
        collection.remove([collection.catalog.records()[0].id])
    assert collection.catalog.count() == before and collection.catalog.generation(name) == generation
    # With the server back, writes go through.
    collection.add_image(photo, new_path)
    assert len(collection.index(name)) == collection.catalog.count() == before + 1
    assert collection.search(sample_folder / "dog" / "dog.3.jpg", k=1)[0].path == str(new_path)


# --- catalogs sharing one remote collection ------------------------------------------------------------


def catalog_of(tmp_path, name: str, n: int) -> Catalog:
    """A real catalog whose n images are numbered 1..n, as every new catalog numbers them."""
    catalog = Catalog(tmp_path / f"{name}.sqlite")
    for i in range(n):
        catalog.upsert_image(
            path=f"/{name}/{i}.jpg", sha256=None, size=1, mtime_ns=0, label=name, width=1, height=1, status="ok"
        )
    return catalog


def test_catalogs_share_a_remote_collection_without_their_ids_colliding(lite, data, tmp_path):
    _, vectors, _ = data
    a, b = catalog_of(tmp_path, "a", 300), catalog_of(tmp_path, "b", 300)
    assert a.uid() != b.uid() and a.uid() == Catalog(tmp_path / "a.sqlite").uid(), "one uid per catalog, kept"
    local = np.arange(1, 301)  # the same ids in both catalogs
    in_a = create_index(lite, DIM, name="shared", owner=a)
    in_a.add(local, vectors[:300])
    in_b = create_index(lite, DIM, name="shared", owner=b)
    in_b.add(local, vectors[300:600])
    assert isinstance(in_a, MilvusIndex) and isinstance(in_b, MilvusIndex)
    assert in_a.collection == in_b.collection and in_a.namespace != in_b.namespace
    assert len(in_a) == len(in_b) == 300, "nothing overwritten"
    np.testing.assert_array_equal(np.sort(in_a.ids()), local)
    # A search covers both catalogs: A's own rows under A's ids, B's under B's full keys.
    _, found = in_a.search(vectors[[0, 300]], 1)
    b_key = (in_b.namespace << milvus.NAMESPACE_SHIFT) + 1
    assert found[:, 0].tolist() == [1, b_key]
    record = in_a.foreign_records([b_key, 1])[b_key]
    assert (record.catalog, record.id, record.path, record.label) == (b.uid(), 1, "/b/0.jpg", "b")
    assert list(in_a.foreign_records([b_key, 1])) == [b_key], "own ids are not foreign"
    # allowed_ids are the catalog's own ids
    _, found = in_a.search(vectors[300:301], 5, allowed_ids=local[:10])
    assert set(found[0]) <= set(local[:10])
    # Removing and rebuilding touch only the catalog's own rows.
    in_a.remove(local[:100])
    assert (len(in_a), len(in_b)) == (200, 300)
    rebuilt = create_index(lite, DIM, name="shared", owner=a)
    assert rebuilt.namespace == in_a.namespace and len(rebuilt) == 0 and len(in_b) == 300
    in_b.save(tmp_path / "b.faiss")
    assert load_index(tmp_path / "b.faiss", owner=b).namespace == in_b.namespace
    with pytest.raises(IndexError_, match="belongs to another catalog"):
        load_index(tmp_path / "b.faiss", owner=a)
    with pytest.raises(IndexError_, match="must lie in"):
        in_b.add(np.array([2**32]), vectors[:1])


def test_add_reports_progress_through_a_callback_and_prints_nothing(index, data, monkeypatch, capsys):
    ids, vectors, _ = data
    monkeypatch.setattr(milvus, "INSERT_BYTES", 4 * DIM * 300)  # 300 vectors per call
    calls: list[tuple[str, int, int]] = []
    index.add(ids, vectors, progress=lambda *args: calls.append(args))
    assert calls == [("milvus", 300, N), ("milvus", 600, N), ("milvus", 900, N), ("milvus", N, N)]
    assert capsys.readouterr() == ("", "")


def test_a_collection_describes_its_remote_index_in_stats(milvus_collection):
    collection, db = milvus_collection
    remote = collection.stats()["remote_index"]
    assert (remote["engine"], remote["server"], remote["index_type"]) == ("Milvus Lite", str(db), "FLAT")
    assert remote["rows"] == remote["this_catalog_rows"] == 24
    assert remote["catalog"] == collection.catalog.uid()


def test_collections_sharing_a_remote_collection_find_each_others_images(tmp_path, sample_folder, mean_colour, capsys):
    """Through Collection (what the CLI, the server and the API call): one catalog's search finds the other's
    images with the path and label stored beside them; query expansion folds their vectors in."""
    db = tmp_path / "milvus" / "shared.db"
    kind = f"milvus-lite:{db}"
    a = Collection.open(tmp_path / "a", embedder=mean_colour, index=kind)
    b = Collection.open(tmp_path / "b", embedder=mean_colour, index=kind)
    try:
        for collection, label in ((a, "cat"), (b, "dog")):  # two machines: one folder each
            shutil.copytree(sample_folder / label, tmp_path / f"{label}s" / label)
            collection.sync(tmp_path / f"{label}s")
        assert a.catalog.count() == b.catalog.count() == 12
        # every stored vector, by path: what an exact search over both catalogs ranks
        paths, vectors = [], []
        for collection in (a, b):
            ids, stored = collection.catalog.vectors(mean_colour)
            records = collection.images(ids.tolist())
            paths += [records[int(i)].path for i in ids]
            vectors.append(stored)
        stored = np.concatenate(vectors)

        def ranked(query: np.ndarray, k: int) -> list[str]:
            return [paths[i] for i in np.argsort(-(stored @ query), kind="stable")[:k]]

        dog = b.catalog.records()[0]
        query = b.stored_vector(dog.id)
        found = a.search_vector(query, k=24, expand=0)
        assert [r.path for r in found] == ranked(query, 24)
        assert found[0].path == dog.path and found[0].score == pytest.approx(1.0, abs=1e-5)
        theirs = [r for r in found if r.catalog is not None]
        assert len(theirs) == 12 and {r.catalog for r in theirs} == {b.catalog.uid()}
        assert all(r.id >= 2**32 and r.record is None and r.label == "dog" for r in theirs)
        assert all(r.catalog is None and r.record is not None for r in found if r.label == "cat")
        assert found[0].to_dict()["catalog"] == b.catalog.uid()
        # A label filter keeps to the searching collection's own images.
        assert {r.catalog for r in a.search_vector(query, k=5, label="cat")} == {None}

        # REST: this server serves its own images; the other collection's are named under `elsewhere`.
        with TestClient(create_app(a)) as client:
            upload = {"file": ("q.jpg", Path(dog.path).read_bytes())}
            answer = client.post("/api/search", params={"k": 24, "expand": 0}, files=upload)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [h["name"] for h in body["elsewhere"]] == [Path(r.path).name for r in theirs]
        assert {h["catalog"] for h in body["elsewhere"]} == {b.catalog.uid()} and body["elsewhere"][0]["rank"] == 1
        assert len(body["results"]) == 12 and {h["label"] for h in body["results"]} == {"cat"}
        assert sorted(h["rank"] for h in body["results"] + body["elsewhere"]) == list(range(1, 25))
        assert str(tmp_path) not in answer.text, "no server path in an HTTP answer"

        # alpha query expansion (rerank.py: alpha 3, relative to the nearest) over both catalogs' top 3, by hand
        top = np.argsort(-(stored @ query), kind="stable")[:3]
        cosines = np.maximum(stored[top] @ query, 0)
        weights = (cosines / cosines[0]) ** 3
        expanded = query + weights @ stored[top]
        expanded /= np.linalg.norm(expanded)
        assert [r.path for r in a.search_vector(query, k=10, expand=3)] == ranked(expanded, 10)
        # The command line: the same, through the same Collection.
        assert main(["search", dog.path, "--collection", str(a.path), "-k", "10", "--expand", "3", "--json"]) == 0
        assert [h["path"] for h in json.loads(capsys.readouterr().out)] == ranked(expanded, 10)
        assert main(["search", dog.path, "--collection", str(a.path), "-k", "2"]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert dog.path in first and first.endswith(f"(indexed by collection {b.catalog.uid()[:8]}, on its machine)")
        # B's images vanish from A's results once B removes them.
        assert b.remove([r.id for r in b.records()]) == 12
        assert {r.catalog for r in a.search_vector(query, k=24)} == {None}
    finally:
        a.close()
        b.close()
        release_lite(db)
