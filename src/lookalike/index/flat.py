"""Exact cosine search: the flat inner-product kind, and reading index files from before the one-file format."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from .faiss_index import FaissIndex


class FlatIndex(FaissIndex):
    """Brute-force inner product: exact, no build, fine up to ~10^5 vectors (see choose.py)."""

    def __init__(self, dim: int, **options: object):
        super().__init__(dim, "flat", **options)  # type: ignore[arg-type]


def load_legacy(path: Path) -> FaissIndex:
    """A bare faiss IndexIDMap2(IndexFlatIP) file, as the first release wrote, converted to a flat index."""
    stored = faiss.read_index(str(path))
    index = FlatIndex(stored.d)
    if isinstance(stored, faiss.IndexIDMap) and stored.ntotal:
        ids = faiss.vector_to_array(stored.id_map).astype(np.int64)
        index.add(ids, faiss.downcast_index(stored.index).reconstruct_n(0, stored.ntotal))
    return index
