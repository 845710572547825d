"""One `VectorIndex` over any faiss structure (flat, HNSW, IVF, SQ8, PQ + refine), keyed by catalog ids.

How the parts the faiss structures lack are provided:

* Ids: faiss numbers vectors 0, 1, 2... in insertion order ("slots"). We keep slot -> catalog id
  (an int64 array) and catalog id -> slot (a dict) ourselves, so every structure, including HNSW,
  which has no `add_with_ids`, is keyed the same way.
* Removal: HNSW cannot delete, so no structure is asked to. Removing (or replacing) an id marks its
  slot dead; searches pass a bitmap `IDSelector` of live slots, so dead vectors are never returned.
  When dead slots exceed `compact_fraction` of all slots the index is rebuilt from its own live
  vectors (`reconstruct`), which frees the memory and renumbers the slots.
* Training: IVF/PQ/SQ structures need training data. Until `min_train` vectors exist the index is an
  exact flat index (right answers, no training); once enough exist it is rebuilt with the structure
  asked for, trained on up to `train_sample` live vectors spread over the whole collection. IVF
  kinds retrain when the collection has grown `regrow`-fold since, so the list count follows n.
* "auto" picks its structure with `choose_index_kind` and rebuilds when growth moves it up.
* Filters (`allowed_ids`): a bitmap selector of allowed live slots, with the search widened in
  proportion; small allowed sets, and any query an approximate search leaves short of k results
  although enough allowed vectors exist, are answered exactly instead.
* Persistence: one file, written atomically: a magic tag, a JSON header (kind, knobs, counts), the
  slot -> id array, then the faiss index itself (`faiss.write_index` through a callback writer).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..storage import atomic_path
from .base import IndexError_, distinct
from .choose import AUTO_LADDER, choose_index_kind
from .specs import HNSW_EF_CONSTRUCTION, get_spec

# faiss skips BLAS for query batches smaller than this threshold (default 20) and
# then runs a much slower scalar loop; batched search wants BLAS from 2 queries up.
faiss.cvar.distance_compute_blas_threshold = 1

MAGIC = b"LOOKALIKE-INDEX\n"
FORMAT = 1
REFINE_MIN_CANDIDATES = 32
CHUNK = 16384  # vectors per reconstruct/add step when rebuilding, bounding the temporary memory


def as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise IndexError_(f"vectors have shape {vectors.shape}, the index wants (n, {dim})")
    return vectors


def _empty_result(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = max(k, 0)
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


@contextmanager
def _threads_for(n_queries: int, index: faiss.Index) -> Iterator[None]:
    """At most one OpenMP thread per query, in the calling thread, while it searches.

    faiss shares a search out by query, except the BLAS product of a plain "Flat" index: one query on
    two threads leaves the second spinning at the end of the parallel section, which doubled the CPU
    of a lone query (measured on 2 cores: "flat-fp16" 1.8 ms of CPU on one thread, 6.1 ms on two, for
    the same wall time). OpenMP keeps the thread count per thread, so concurrent searches don't clash.
    """
    before = faiss.omp_get_max_threads()
    if isinstance(index, faiss.IndexFlat) or n_queries >= before:
        yield
        return
    faiss.omp_set_num_threads(max(1, n_queries))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns of each row (descending), padded with -inf / -1."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    if scores.shape[1] < k:
        pad_s, pad_i = _empty_result(len(scores), k - scores.shape[1])
        scores, ids = np.hstack([scores, pad_s]), np.hstack([ids, pad_i])
    return scores, ids


class FaissIndex:
    """A faiss index of kind `kind` (see `specs.SPECS`, or "auto") with ids, removal, filters and one-file saves."""

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        compact_fraction: float = 0.25,
        exact_filter_limit: int = 20_000,
        train_sample: int = 100_000,
    ):
        if kind != "auto":
            get_spec(kind)  # fail early on an unknown name
        self.dim = int(dim)
        self.name = kind
        self.compact_fraction = compact_fraction
        self.exact_filter_limit = exact_filter_limit
        self.train_sample = train_sample
        # search knobs; None = the kind's default (specs.py)
        self.ef_search: int | None = None
        self.nprobe: int | None = None
        self.k_factor: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._active = "flat"  # the spec actually built (differs from `name` while untrained, or for auto)
        self._factory = "Flat"
        self._index: faiss.Index = faiss.IndexFlatIP(self.dim)
        self._trained_n = 0
        self._slot_ids = np.empty(0, dtype=np.int64)  # capacity-doubling buffer; -1 = dead slot
        self._n_slots = 0
        self._slot_of: dict[int, int] = {}
        self._n_dead = 0
        self._live_bits_cache: np.ndarray | None = None

    # --- facts ---------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The faiss structure in use, e.g. "Flat", "HNSW32,SQ8" or "IVF256,PQ160x4fs,Refine(SQ8)"."""
        return self._factory

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, image_id: int) -> bool:
        return int(image_id) in self._slot_of

    def ids(self) -> np.ndarray:
        slots = self._slot_ids[: self._n_slots]
        return slots[slots >= 0].copy()

    @property
    def dead_fraction(self) -> float:
        return self._n_dead / self._n_slots if self._n_slots else 0.0

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (decoded, so approximate for SQ/PQ kinds); KeyError if one is absent."""
        slots = np.asarray([self._slot_of[int(i)] for i in np.asarray(ids).ravel()], dtype=np.int64)
        return self._reconstruct_slots(slots)

    # --- writes --------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if len(ids) == 0:
            return
        vectors = as_matrix(vectors, self.dim)
        if len(vectors) != len(ids):
            raise IndexError_(f"{len(ids)} ids but {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):  # the last vector of a repeated id wins, as with separate adds
            _, first_in_reversed = np.unique(ids[::-1], return_index=True)
            keep = np.sort(len(ids) - 1 - first_in_reversed)
            ids, vectors = ids[keep], vectors[keep]
        self._kill(ids)
        if len(self) == 0:
            # nothing live to keep: build the right structure straight from this batch
            self._install(self._wanted(len(ids)), ids, lambda: iter([vectors]), self._sample_of(vectors))
            return
        self._index.add(vectors)
        self._append_slots(ids)
        self._maybe_rebuild()

    def remove(self, ids: np.ndarray) -> None:
        self._kill(np.ascontiguousarray(ids, dtype=np.int64).ravel())
        self._maybe_rebuild()

    def _kill(self, ids: np.ndarray) -> None:
        slots = [s for s in (self._slot_of.pop(int(i), None) for i in ids) if s is not None]
        if slots:
            self._slot_ids[slots] = -1
            self._n_dead += len(slots)
            self._live_bits_cache = None

    def _append_slots(self, ids: np.ndarray) -> None:
        start, end = self._n_slots, self._n_slots + len(ids)
        if end > len(self._slot_ids):
            grown = np.full(max(end, 2 * len(self._slot_ids), 1024), -1, dtype=np.int64)
            grown[:start] = self._slot_ids[:start]
            self._slot_ids = grown
        self._slot_ids[start:end] = ids
        self._slot_of.update(zip(ids.tolist(), range(start, end), strict=True))
        self._n_slots = end
        self._live_bits_cache = None

    # --- structure -----------------------------------------------------------------------------

    def _wanted(self, n: int) -> str:
        """The spec this index should be built as when it holds `n` live vectors."""
        target = self.name
        if target == "auto":
            target = choose_index_kind(n, self.dim)
            if self._active in AUTO_LADDER and AUTO_LADDER.index(target) < AUTO_LADDER.index(self._active):
                target = self._active  # never step down: removals must not trigger rebuild ping-pong
        return "flat" if n < get_spec(target).min_train else target

    def _maybe_rebuild(self) -> None:
        n = len(self)
        if n == 0:
            if self._n_slots:
                self._reset()
            return
        wanted = self._wanted(n)
        spec = get_spec(wanted)
        if (
            wanted != self._active
            or (spec.regrow and n >= spec.regrow * self._trained_n)
            or self._n_dead > self.compact_fraction * self._n_slots
        ):
            self.rebuild(wanted)

    def rebuild(self, kind: str | None = None) -> None:
        """Rebuild from the live vectors (compaction, retraining, or a change of structure)."""
        live = np.flatnonzero(self._slot_ids[: self._n_slots] >= 0)
        ids = self._slot_ids[live].copy()
        old = self._index

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, len(live), CHUNK):
                yield self._reconstruct_slots(live[start : start + CHUNK], old)

        sample_slots = live[self._sample_positions(len(live))]
        self._install(kind or self._wanted(len(live)), ids, chunks, self._reconstruct_slots(sample_slots, old))

    def _sample_positions(self, n: int) -> np.ndarray:
        # evenly spread over the collection, not its first rows, which may all be one folder
        return np.unique(np.linspace(0, n - 1, min(n, self.train_sample)).astype(np.int64))

    def _sample_of(self, vectors: np.ndarray) -> np.ndarray:
        return vectors[self._sample_positions(len(vectors))]

    def _install(self, kind: str, ids: np.ndarray, chunks: Any, sample: np.ndarray) -> None:
        """Build `kind` for `ids` (vectors from `chunks()`, training from `sample`) and make it current."""
        spec = get_spec(kind)
        factory = spec.factory_for(self.dim, len(ids))
        index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if isinstance(index, faiss.IndexHNSW):
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if not index.is_trained:
            index.train(sample)
        for chunk in chunks():
            index.add(chunk)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and not isinstance(index, faiss.IndexRefine):
            ivf.make_direct_map()  # lets reconstruct() find a vector by slot (re-ranking, exact filters)
        self._reset()
        self._index, self._active, self._factory, self._trained_n = index, kind, factory, len(ids)
        self._append_slots(ids)

    def _reconstruct_slots(self, slots: np.ndarray, index: faiss.Index | None = None) -> np.ndarray:
        index = self._index if index is None else index
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        if len(slots) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return index.reconstruct_batch(slots)

    # --- search --------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = as_matrix(queries, self.dim)
        if k <= 0 or len(self) == 0:
            return _empty_result(len(queries), k)
        eligible: np.ndarray | None = None  # bool per slot; None = every live slot
        if allowed_ids is not None:
            allowed = np.asarray(allowed_ids, dtype=np.int64).ravel()
            slots = np.fromiter((self._slot_of.get(int(i), -1) for i in allowed), np.int64, len(allowed))
            slots = distinct(slots[slots >= 0])
            if len(slots) == 0:
                return _empty_result(len(queries), k)
            if len(slots) <= self.exact_filter_limit and not get_spec(self._active).exhaustive:
                return self._exact(queries, k, slots)
            eligible = np.zeros(self._n_slots, dtype=bool)
            eligible[slots] = True
            n_eligible = len(slots)
        else:
            n_eligible = len(self)

        keep: list[Any] = []  # faiss holds raw pointers: keep the bitmap and selector alive until search returns
        sel = None
        if eligible is not None or self._n_dead:
            bits = np.packbits(eligible, bitorder="little") if eligible is not None else self._live_bits()
            sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            keep += [bits, sel]
        widen = min(8.0, len(self) / n_eligible)  # a filter hides results: look proportionally further
        index = self._index
        batch_from = get_spec(self._active).full_floats_from_batch
        if batch_from and len(queries) >= batch_from:  # one matrix product over the same slots' full floats
            index = faiss.downcast_index(index.refine_index)
        params = self._search_params(index, sel, k, widen, keep)
        # faiss.contrib.torch_utils (imported by pytorch-metric-learning) replaces `search` with a
        # version without `params`; the original stays reachable as `search_numpy`.
        search = getattr(index, "search_numpy", index.search)
        with _threads_for(len(queries), index):
            scores, slots_found = search(queries, k, params=params)

        found = slots_found >= 0
        ids = np.where(found, self._slot_ids[np.maximum(slots_found, 0)], -1)
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        short = found.sum(axis=1) < min(k, n_eligible)
        if short.any():  # approximate search fell short although enough vectors qualify: answer exactly
            where = np.flatnonzero(eligible if eligible is not None else self._slot_ids[: self._n_slots] >= 0)
            scores[short], ids[short] = self._exact(queries[short], k, where)
        return scores, ids

    def _live_bits(self) -> np.ndarray:
        """Packed bitmap of live slots, cached until the next write (per-query rebuilding would cost O(n))."""
        if self._live_bits_cache is None:
            self._live_bits_cache = np.packbits(self._slot_ids[: self._n_slots] >= 0, bitorder="little")
        return self._live_bits_cache

    def _exact(self, queries: np.ndarray, k: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the stored vectors of `slots`, chunk by chunk."""
        best_s, best_i = _empty_result(len(queries), 0)
        for start in range(0, len(slots), CHUNK):
            part = slots[start : start + CHUNK]
            s = queries @ self._reconstruct_slots(part).T
            i = np.broadcast_to(self._slot_ids[part], s.shape)
            best_s, best_i = _top_k(np.hstack([best_s, s]), np.hstack([best_i, i]), k)
        return _top_k(best_s, best_i, k)

    def _search_params(
        self, index: faiss.Index, sel: Any, k: int, widen: float, keep: list[Any]
    ) -> faiss.SearchParameters | None:
        spec = get_spec(self._active)
        ef = max(int((self.ef_search or spec.ef_search) * widen), k)
        nprobe = int((self.nprobe or spec.nprobe) * widen)
        # re-rank at least REFINE_MIN_CANDIDATES: for small k, k * k_factor codes are too few to hold the answer
        k_factor = max(float(self.k_factor or spec.k_factor or 1.0), REFINE_MIN_CANDIDATES / k)

        def params_for(index: faiss.Index) -> faiss.SearchParameters | None:
            if isinstance(index, faiss.IndexRefine):
                base = faiss.downcast_index(index.base_index)
                p = faiss.IndexRefineSearchParameters(sel=sel, k_factor=k_factor)
                p.base_index_params = params_for(base)
            elif isinstance(index, faiss.IndexHNSW):
                p = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
            elif isinstance(index, faiss.IndexIVF):
                p = faiss.SearchParametersIVF(sel=sel, nprobe=max(1, min(nprobe, index.nlist)))
            elif sel is not None:
                p = faiss.SearchParameters(sel=sel)
            else:
                p = None
            keep.append(p)
            return p

        return params_for(index)

    # --- persistence ---------------------------------------------------------------------------

    def _header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dim": self.dim,
            "name": self.name,
            "active": self._active,
            "factory": self._factory,
            "trained_n": self._trained_n,
            "n_slots": self._n_slots,
            "ef_search": self.ef_search,
            "nprobe": self.nprobe,
            "k_factor": self.k_factor,
            "compact_fraction": self.compact_fraction,
        }

    def save(self, path: Path) -> None:
        header = json.dumps(self._header()).encode()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(self._slot_ids[: self._n_slots].astype("<i8").tobytes())
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise IndexError_(f"{path} is not a lookalike index file")
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
            if header.get("format") != FORMAT:
                raise IndexError_(f"{path}: index format {header.get('format')} is not supported")
            slot_ids = np.frombuffer(f.read(8 * header["n_slots"]), dtype="<i8").astype(np.int64)
            index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
        self = cls(header["dim"], header["name"], compact_fraction=header["compact_fraction"])
        self.ef_search, self.nprobe, self.k_factor = header["ef_search"], header["nprobe"], header["k_factor"]
        self._index, self._active, self._factory = index, header["active"], header["factory"]
        self._trained_n = header["trained_n"]
        live = np.flatnonzero(slot_ids >= 0)
        self._slot_ids, self._n_slots, self._n_dead = slot_ids.copy(), len(slot_ids), len(slot_ids) - len(live)
        self._slot_of = dict(zip(slot_ids[live].tolist(), live.tolist(), strict=True))
        self._live_bits_cache = None
        if index.ntotal != len(slot_ids) or index.d != self.dim:
            raise IndexError_(f"{path}: {index.ntotal} vectors of {index.d} dims for {len(slot_ids)} ids")
        return self
