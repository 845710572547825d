"""The named index kinds: which faiss structure each name builds, and its search knobs.

Every kind uses METRIC_INNER_PRODUCT on L2-normalised vectors (score = cosine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import IndexError_

#: The HNSW graph, one set of numbers for every engine: degree M, construction beam efConstruction
#: (faiss's default is 40; 80 buys recall on 1280-d data for ~1.6x build time) and search beam efSearch.
#: The faiss "hnsw"/"hnsw-sq8" kinds and the Milvus backend's HNSW are built from these.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64


def ivf_lists(n: int) -> int:
    """Number of IVF lists for `n` vectors: ~4*sqrt(n), a power of two, with >= 39 training points per list."""
    target = min(4 * math.sqrt(max(n, 1)), n / 39)
    return int(min(65536, max(1, 2 ** math.floor(math.log2(max(target, 1))))))


def pq_subquantizers(dim: int) -> int:
    """PQ sub-vectors of 8 dimensions (4-bit fast-scan codes: dim/16 bytes), at least 32 of them for small dims."""
    target = max(dim // 8, min(dim // 2, 32))
    return next(m for m in range(max(target, 1), dim + 1) if dim % m == 0)


@dataclass(frozen=True)
class IndexSpec:
    name: str
    #: faiss index_factory string; "{nlist}" and "{m}" are filled in from the collection size and dimension
    factory: str
    #: IVF/PQ/SQ need training; until `min_train` vectors exist the index stays exact (flat)
    min_train: int = 0
    #: rebuild (retrain) when the collection has grown this many times since training (IVF list count follows n)
    regrow: float = 0.0
    #: searched graph nodes / IVF lists probed / refine candidates per result, overridable per index
    ef_search: int = 0
    nprobe: int = 0
    k_factor: float = 0.0
    #: compares the query with every stored vector: a filter needs no exact fallback
    exhaustive: bool = False
    #: from this many queries in one call, search the refine stage's full floats alone, with one matrix product
    #: (0: never)
    full_floats_from_batch: int = 0

    def factory_for(self, dim: int, n: int) -> str:
        return self.factory.format(nlist=ivf_lists(n), m=pq_subquantizers(dim))


# Search defaults from benchmarks/README.md: recall@10 >= 0.95 on 1280-d embedding-like data (hnsw-sq8 at 1M: ef 128).
SPECS: dict[str, IndexSpec] = {
    s.name: s
    for s in (
        IndexSpec("flat", "Flat", exhaustive=True),
        # Every vector scanned as 16-bit floats (half the bytes of "flat", and faiss scans them ~4x faster per lone
        # query), then the best 2k (at least REFINE_MIN_CANDIDATES) re-scored with the full floats (faiss
        # IndexRefineFlat): exact scores, 1.5x the memory of "flat". What "auto" uses below FLAT_UP_TO.
        # From 4 queries in one call the full floats alone (a lone query: the 16-bit scan, 1.8 against 7.7 ms of
        # CPU; 4 queries: about even; more: the product; 50,000 x 1280: 1,101 against 255 queries/s in batches).
        IndexSpec("flat-fp16", "SQfp16,RFlat", k_factor=2, exhaustive=True, full_floats_from_batch=4),
        IndexSpec("hnsw", f"HNSW{HNSW_M},Flat", ef_search=HNSW_EF_SEARCH),
        IndexSpec("hnsw-sq8", f"HNSW{HNSW_M},SQ8", min_train=1000, ef_search=128),  # used at >400k vectors: needs more
        # The coarse quantizer is a flat scan of the centroids: an HNSW graph over them ("IVF1024_HNSW32")
        # measured slower and less accurate at 100k and 1M vectors (benchmarks/README.md).
        IndexSpec("ivf", "IVF{nlist},Flat", min_train=1000, regrow=8, nprobe=16),
        IndexSpec("ivf-sq8", "IVF{nlist},SQ8", min_train=1000, regrow=8, nprobe=16),
        # 4-bit fast-scan PQ finds candidates, SQ8 codes re-rank them (faiss IndexRefine)
        IndexSpec("ivf-pq", "IVF{nlist},PQ{m}x4fs,Refine(SQ8)", min_train=1000, regrow=8, nprobe=16, k_factor=8),
        # the same with full float vectors for re-ranking: best recall, but 4*dim bytes per vector
        IndexSpec("ivf-pq-flat", "IVF{nlist},PQ{m}x4fs,RFlat", min_train=1000, regrow=8, nprobe=16, k_factor=8),
    )
}


def get_spec(kind: str) -> IndexSpec:
    try:
        return SPECS[kind]
    except KeyError:
        raise IndexError_(f"unknown index type {kind!r}; available: auto, {', '.join(SPECS)}") from None
