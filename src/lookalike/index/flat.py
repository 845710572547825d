"""Exact cosine search with faiss: a flat inner-product index keyed by catalog ids."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from ..storage import atomic_path
from .base import IndexError_

# faiss skips BLAS for query batches smaller than this threshold (default 20) and
# then runs a much slower scalar loop; batched search wants BLAS from 2 queries up.
faiss.cvar.distance_compute_blas_threshold = 1


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.shape[1] != dim:
        raise IndexError_(f"vectors have {vectors.shape[1]} dimensions, the index {dim}")
    return vectors


class FlatIndex:
    """Brute-force inner product: exact, supports add/remove/filter, fine up to ~10^5-10^6 vectors."""

    kind = "Flat"

    def __init__(self, dim: int, index: faiss.Index | None = None):
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        self._index.add_with_ids(_as_matrix(vectors, self.dim), ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) and len(self):
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_matrix(queries, self.dim)
        if k <= 0 or len(self) == 0:
            return (
                np.full((len(queries), max(k, 0)), -np.inf, dtype=np.float32),
                np.full((len(queries), max(k, 0)), -1, dtype=np.int64),
            )
        params = None
        if allowed_ids is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed_ids, dtype=np.int64)))
        scores, ids = self._index.search(queries, k, params=params)
        scores[ids < 0] = -np.inf  # faiss pads with id -1 when fewer than k vectors qualify
        return scores, ids

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            faiss.write_index(self._index, str(tmp))

    @classmethod
    def load(cls, path: Path) -> FlatIndex:
        index = faiss.read_index(str(path))
        return cls(index.d, index)
