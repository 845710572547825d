"""Every index backend against exact numpy search: ids, replacement, removal, filters, saves, recall.

The behaviour tests run on every faiss kind, on Milvus Lite ("milvus-lite") and on a real Milvus server
("milvus-server", the session's `milvus_server`): one contract for all backends. Tests of faiss-only
mechanics (slot compaction, training, filter strategies) run on faiss kinds.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.index import (
    INDEX_KINDS,
    FaissIndex,
    IndexError_,
    VectorIndex,
    choose_index_kind,
    create_index,
    load_index,
)
from lookalike.index import choose as choose_module
from lookalike.index.specs import SPECS

DIM = 32
N = 2000
KINDS = list(SPECS)
# Milvus backends are marked `milvus`: under CI (ci_rules.py) they must run, not be skipped
MILVUS_KINDS = ("milvus-lite", "milvus-server")
MILVUS = [pytest.param(kind, marks=pytest.mark.milvus) for kind in MILVUS_KINDS]
BACKENDS = KINDS + MILVUS  # every backend behind the VectorIndex interface
# recall@10 vs exact on the clustered data below, measured with the default knobs: flat 1.0, hnsw 0.986,
# hnsw-sq8 0.968 (at ef 64), ivf 0.998, ivf-sq8 0.986, ivf-pq 0.948, ivf-pq-flat 0.956
MIN_RECALL = {"flat": 1.0, "flat-fp16": 1.0, "hnsw": 0.97, "hnsw-sq8": 0.94, "ivf": 0.97, "ivf-sq8": 0.95}
MIN_RECALL["ivf-pq"] = 0.92
MIN_RECALL["ivf-pq-flat"] = MIN_RECALL["ivf-pq"]
MIN_RECALL["milvus-lite"] = 1.0  # FLAT on Milvus Lite: exact
MIN_RECALL["milvus-server"] = 0.97  # the server's default, HNSW with the faiss "hnsw" constants
EXACT = {"flat", "flat-fp16", "milvus-lite"}  # flat-fp16: 16-bit scan, re-scored with the full floats


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # the machine is shared: OpenMP threads waiting on busy cores make tiny searches slow
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    """L2-normalised Gaussian mixture with low-rank clusters (so nearest neighbours are meaningful)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    bases = rng.standard_normal((20, 4, dim)) * 0.4
    label = rng.integers(0, 20, n)
    x = centres[label] + np.einsum("nr,nrd->nd", rng.standard_normal((n, 4)), bases[label])
    x += 0.05 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(N)
    ids = np.arange(N, dtype=np.int64) * 7 + 3  # ids are not positions
    queries = clustered(50, seed=1)
    return ids, vectors, queries


@pytest.fixture(scope="module")
def milvus_lite(tmp_path_factory: pytest.TempPathFactory):
    """One Milvus Lite database per module; its server is stopped afterwards."""
    try:
        from lookalike.index.milvus import release_lite
    except ImportError as exc:  # the milvus extra is not installed
        pytest.skip(f"no Milvus Lite: {exc}")
    path = tmp_path_factory.mktemp("milvus") / "vectors.db"
    yield f"milvus-lite:{path}"
    release_lite(path)


@pytest.fixture()
def empty(request):
    """empty(kind, **faiss_options): a new, empty index of any backend (Milvus ones started when first asked)."""
    made = 0

    def make(kind: str, **options: object) -> VectorIndex:
        nonlocal made
        made += 1
        name = f"{request.node.name}_{made}"
        if kind == "milvus-lite":
            return create_index(request.getfixturevalue("milvus_lite"), DIM, name=name)
        if kind == "milvus-server":
            return create_index(request.getfixturevalue("milvus_server").kind("behaviour"), DIM, name=name)
        return FaissIndex(DIM, kind, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture()
def built(empty):
    """built(kind, ids, vectors, **faiss_options): an index of any backend holding `vectors` under `ids`."""

    def make(kind: str, ids: np.ndarray, vectors: np.ndarray, **options: object) -> VectorIndex:
        index = empty(kind, **options)
        index.add(ids, vectors)
        return index

    return make


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.mark.parametrize("kind", KINDS)
def test_builds_the_structure_asked_for(kind, data, built):
    ids, vectors, _ = data
    index = built(kind, ids, vectors)
    assert isinstance(index, VectorIndex)
    assert len(index) == N and index.dim == DIM
    assert index.kind.startswith(SPECS[kind].factory.split("{")[0].split(",")[0])
    assert sorted(index.ids()) == sorted(ids)


@pytest.mark.parametrize("kind", BACKENDS)
def test_search_order_and_scores_match_exact(kind, data, built):
    ids, vectors, queries = data
    index = built(kind, ids, vectors)
    scores, found = index.search(queries, 10)
    assert scores.shape == found.shape == (50, 10) and found.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "best first"
    # scores are cosines of the returned ids (up to quantisation error)
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    true_scores = np.array([[queries[q] @ by_id[i] for i in row] for q, row in enumerate(found)])
    full_floats = ("flat", "flat-fp16", "hnsw", "ivf", "milvus-lite")
    assert np.abs(true_scores - scores).max() < (1e-4 if kind in full_floats else 0.05)
    if kind in EXACT:
        np.testing.assert_array_equal(found, exact(queries, ids, vectors, 10))
    # a stored vector finds itself first
    _, self_hit = index.search(vectors[:20], 1)
    assert (self_hit[:, 0] == ids[:20]).mean() >= 0.95


@pytest.mark.parametrize("kind", BACKENDS)
def test_recall_at_10_against_exact(kind, data, built):
    ids, vectors, queries = data
    _, found = built(kind, ids, vectors).search(queries, 10)
    assert recall(found, exact(queries, ids, vectors, 10)) >= MIN_RECALL[kind]


@pytest.mark.parametrize("kind", BACKENDS)
def test_add_replaces_an_existing_id(kind, data, built):
    ids, vectors, _ = data
    index = built(kind, ids, vectors)
    target, new_vector = int(ids[5]), vectors[1500]  # id 5 now holds the vector of position 1500
    index.add(np.array([target]), new_vector[None, :])
    assert len(index) == N
    _, found = index.search(vectors[5][None, :], 5)
    assert target not in found[0]
    _, found = index.search(new_vector[None, :], 2)
    assert set(found[0]) == {target, int(ids[1500])}


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_repeated_id_in_one_batch_keeps_the_last_vector(kind, data, empty):
    ids, vectors, _ = data
    index = empty(kind)
    index.add(np.array([1, 2, 1]), vectors[[0, 1, 2]])
    assert len(index) == 2
    _, found = index.search(vectors[2][None, :], 1)
    assert found[0, 0] == 1


@pytest.mark.parametrize("kind", BACKENDS)
def test_removed_ids_are_never_returned(kind, data, built):
    ids, vectors, queries = data
    index = built(kind, ids, vectors)
    gone = ids[:200]  # 10%: below the compaction threshold, so these stay as dead slots
    index.remove(np.concatenate([gone, [-5, 10**12]]))  # absent ids are ignored
    assert len(index) == N - 200
    if isinstance(index, FaissIndex):
        assert index.dead_fraction == pytest.approx(0.1)
    _, found = index.search(np.vstack([queries, vectors[:200]]), 10)
    assert not np.isin(found, gone).any()
    assert (found >= 0).all(), "still k results"


@pytest.mark.parametrize("kind", KINDS)
def test_heavy_removal_compacts_and_stays_correct(kind, data, built):
    ids, vectors, queries = data
    index = built(kind, ids, vectors)
    index.remove(ids[: N // 2])
    assert index.dead_fraction == 0.0, "rebuilt without the dead vectors"
    assert len(index) == N // 2 and sorted(index.ids()) == sorted(ids[N // 2 :])
    _, found = index.search(queries, 10)
    assert not np.isin(found, ids[: N // 2]).any()
    assert recall(found, exact(queries, ids[N // 2 :], vectors[N // 2 :], 10)) >= MIN_RECALL[kind] - 0.05


@pytest.mark.parametrize("kind", [*INDEX_KINDS, *MILVUS])
def test_pads_with_minus_one_when_fewer_than_k(kind, data, empty):
    _, vectors, _ = data
    index = create_index(kind, DIM) if kind in INDEX_KINDS else empty(kind)
    scores, found = index.search(vectors[:2], 4)
    assert (found == -1).all() and np.isneginf(scores).all()
    index.add(np.array([10, 11, 12]), vectors[:3])
    scores, found = index.search(vectors[:2], 5)
    assert (found[:, :3] >= 10).all() and (found[:, 3:] == -1).all()
    assert np.isfinite(scores[:, :3]).all() and np.isneginf(scores[:, 3:]).all()
    index.remove(np.array([10, 11, 12]))
    assert len(index) == 0 and (index.search(vectors[:1], 3)[1] == -1).all()


@pytest.mark.parametrize(
    ("kind", "exact_filter_limit"),
    [(k, limit) for k in KINDS for limit in (0, 20_000)]
    + [pytest.param(k, None, marks=pytest.mark.milvus) for k in MILVUS_KINDS],
)
def test_allowed_ids_restrict_results(kind, exact_filter_limit, data, built):
    ids, vectors, queries = data
    options = {} if exact_filter_limit is None else {"exact_filter_limit": exact_filter_limit}
    index = built(kind, ids, vectors, **options)
    allowed = ids[::3]  # a "label" of a third of the collection
    _, found = index.search(queries, 10, allowed_ids=allowed)
    assert np.isin(found, allowed).all(), "only allowed ids, and k of them"
    assert recall(found, exact(queries, ids[::3], vectors[::3], 10)) >= MIN_RECALL[kind] - 0.05


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_selective_filter_still_returns_k_results(kind, data, built):
    ids, vectors, queries = data
    options = {"exact_filter_limit": 0} if kind in KINDS else {}  # force faiss's approximate path
    index = built(kind, ids, vectors, **options)
    allowed = ids[1::150][:12]  # 12 scattered ids: graph/list search alone would miss most
    index.remove(allowed[:2])  # removed ids stay excluded even when allowed
    scores, found = index.search(queries, 10, allowed_ids=allowed)
    assert np.isin(found, allowed[2:]).all() and (found >= 0).all()
    _, few = index.search(queries[:3], 15, allowed_ids=allowed)
    assert ((few >= 0).sum(axis=1) == 10).all() and (few[:, 10:] == -1).all()
    _, none = index.search(queries[:3], 5, allowed_ids=np.array([], dtype=np.int64))
    assert (none == -1).all()


@pytest.mark.parametrize("kind", BACKENDS)
def test_save_and_load_round_trip(kind, data, tmp_path, built):
    ids, vectors, queries = data
    index = built(kind, ids, vectors)
    index.remove(ids[:100])  # dead slots must survive the round trip
    if kind.startswith("hnsw"):
        index.ef_search = 48
    path = tmp_path / "indexes" / "e.faiss"
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["e.faiss"], "no temporary files left"
    loaded = load_index(path)
    assert type(loaded) is type(index)
    assert (loaded.kind, len(loaded), loaded.dim) == (index.kind, len(index), DIM)
    if isinstance(index, FaissIndex):
        assert loaded.name == kind and loaded.ef_search == index.ef_search
    for allowed in (None, ids[::2]):
        s1, i1 = index.search(queries, 10, allowed_ids=allowed)
        s2, i2 = loaded.search(queries, 10, allowed_ids=allowed)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2)
    loaded.add(np.array([10**9]), vectors[:1])  # still writable after loading
    assert loaded.search(vectors[:1], 1)[1][0, 0] in (10**9, ids[0])
    assert len(loaded) == len(index) + 1


@pytest.mark.parametrize("kind", KINDS)
def test_save_is_atomic(kind, data, tmp_path, monkeypatch, built):
    ids, vectors, _ = data
    path = tmp_path / "e.faiss"
    index = built(kind, ids[:1200], vectors[:1200])
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["e.faiss"], "no temporary files left"
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    index.add(ids[1200:1300], vectors[1200:1300])
    monkeypatch.setattr(faiss, "write_index", fail)
    with pytest.raises(OSError):
        index.save(path)
    assert path.read_bytes() == before, "a failed save leaves the old file whole"
    assert [p.name for p in tmp_path.iterdir()] == ["e.faiss"]
    monkeypatch.undo()
    assert len(load_index(path)) == 1200


@pytest.mark.parametrize(
    ("kind", "knob"),
    [("hnsw", "ef_search"), ("hnsw-sq8", "ef_search"), *((k, "nprobe") for k in KINDS if k.startswith("ivf"))],
)
def test_search_knobs_trade_recall_for_work_and_are_saved(kind, knob, data, tmp_path):
    """ef_search (graph nodes visited) and nprobe (IVF lists scanned): few find less than the default, many find
    as much or more (all of them when the vectors are stored whole); a saved index keeps the setting."""
    ids, vectors, queries = data
    index = FaissIndex(DIM, kind)
    index.add(ids, vectors)
    truth = exact(queries, ids, vectors, 10)

    def found_with(value: int | None) -> np.ndarray:
        setattr(index, knob, value)
        return index.search(queries, 10)[1]

    narrow, default, wide = found_with(1), found_with(None), found_with(1024)
    assert recall(narrow, truth) + 0.2 < recall(default, truth) <= recall(wide, truth) + 0.01
    if kind in ("hnsw", "ivf"):
        assert recall(wide, truth) == 1.0
    found_with(1)
    index.save(tmp_path / "narrow.faiss")
    loaded = load_index(tmp_path / "narrow.faiss")
    assert getattr(loaded, knob) == 1
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], narrow)


def test_trainable_kinds_stay_exact_until_enough_vectors(data):
    ids, vectors, queries = data
    index = FaissIndex(DIM, "ivf-pq")
    index.add(ids[:600], vectors[:600])
    assert index.kind == "Flat", "too few vectors to train: exact"
    _, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, exact(queries, ids[:600], vectors[:600], 10))
    index.add(ids[600:1100], vectors[600:1100])
    assert index.kind.startswith("IVF") and "PQ" in index.kind and len(index) == 1100


def test_ivf_retrains_as_the_collection_grows(data):
    ids, vectors, _ = data
    index = FaissIndex(DIM, "ivf")
    index.add(ids[:1000], vectors[:1000])
    assert index.kind == "IVF16,Flat"
    for start in range(1000, N, 100):  # 2x growth: below regrow (8x), so no retraining yet
        index.add(ids[start : start + 100], vectors[start : start + 100])
    assert index.kind == "IVF16,Flat"
    more = clustered(6000, seed=2)
    index.add(np.arange(6000) + 10**6, more)  # now 8x the training size: retrained, lists follow n
    assert index.kind == "IVF128,Flat" and len(index) == N + 6000
    _, found = index.search(more[:5], 1)
    assert (found[:, 0] == np.arange(5) + 10**6).all()


def test_auto_follows_the_collection_size(data, monkeypatch):
    ids, vectors, queries = data
    monkeypatch.setattr(choose_module, "FLAT_UP_TO", 1000)
    index = create_index("auto", DIM)
    index.add(ids[:900], vectors[:900])
    assert index.kind == "SQfp16,RFlat"
    _, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, exact(queries, ids[:900], vectors[:900], 10))
    index.add(ids[900:1200], vectors[900:1200])
    assert index.kind == "HNSW32,Flat", "crossing the threshold rebuilt it as a graph"
    index.remove(ids[:400])
    assert index.kind == "HNSW32,Flat", "never steps back down"
    _, found = index.search(queries, 10)
    assert recall(found, exact(queries, ids[400:1200], vectors[400:1200], 10)) >= 0.95
    fresh = create_index("auto", DIM)
    fresh.add(ids, vectors)  # a first add of the whole catalog builds the final structure directly
    assert fresh.kind == "HNSW32,Flat"


def test_choose_index_kind_by_size():
    assert choose_index_kind(0, 1280) == "flat-fp16"
    assert choose_index_kind(49_999, 1280) == "flat-fp16"
    assert choose_index_kind(100_000, 1280) == "hnsw"
    assert choose_index_kind(1_000_000, 1280) == "hnsw-sq8"
    assert choose_index_kind(1_000_000, 128) == "hnsw"


def test_unknown_kind_and_wrong_dimension_are_errors(data):
    with pytest.raises(IndexError_, match="unknown index type"):
        create_index("lsh", DIM)
    index = create_index("flat", DIM)
    with pytest.raises(IndexError_):
        index.add(np.array([1]), np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(IndexError_):
        index.add(np.array([1, 2]), np.zeros((1, DIM), np.float32))


def test_loads_a_bare_faiss_flat_file_from_the_first_release(data, tmp_path):
    ids, vectors, queries = data
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    old.add_with_ids(vectors[:300], ids[:300])
    path = tmp_path / "old.faiss"
    faiss.write_index(old, str(path))
    index = load_index(Path(path))
    assert index.kind == "Flat" and len(index) == 300
    _, found = index.search(queries, 5)
    np.testing.assert_array_equal(found, exact(queries, ids[:300], vectors[:300], 5))


def test_auto_moves_a_collection_saved_as_flat_up_to_flat_fp16_on_its_next_write(data, tmp_path):
    ids, vectors, queries = data
    old = create_index("auto", DIM)
    old.add(ids[:500], vectors[:500])
    old.rebuild("flat")  # what "auto" built for small collections before "flat-fp16"
    assert old.kind == "Flat"
    old.save(tmp_path / "old.faiss")
    index = load_index(tmp_path / "old.faiss")
    assert index.kind == "Flat", "loading alone changes nothing"
    index.add(ids[500:600], vectors[500:600])
    assert index.kind == "SQfp16,RFlat" and len(index) == 600
    _, found = index.search(queries, 10)
    np.testing.assert_array_equal(found, exact(queries, ids[:600], vectors[:600], 10))


def test_a_search_leaves_the_callers_openmp_thread_count_as_it_was(data):
    ids, vectors, queries = data
    index = create_index("flat-fp16", DIM)
    index.add(ids, vectors)
    faiss.omp_set_num_threads(2)
    try:
        one = index.search(queries[:1], 10)  # one query searches on one thread ...
        assert faiss.omp_get_max_threads() == 2  # ... and gives the caller back its setting
        np.testing.assert_array_equal(one[1], index.search(queries, 10)[1][:1])
    finally:
        faiss.omp_set_num_threads(1)
