"""The automatic index choice: exact search while it is fast enough, a graph index above that."""

from __future__ import annotations

# Below this many vectors a scan of every vector answers one query in a few milliseconds (50k x 1280
# 16-bit floats is 128 MB, scanned at memory bandwidth), needs no build, and re-scored with the full
# vectors ("flat-fp16") gives the exact neighbours: keep it exhaustive.
FLAT_UP_TO = 50_000
# HNSW over full float vectors while those fit this budget; above it 8-bit codes (4x smaller).
FLOAT_VECTORS_BUDGET = 2 * 1024**3

# Order in which "auto" may move as a collection grows (never back, so it cannot flap).
# "flat" is the first rung only for collections built before "flat-fp16" existed: their next write moves them up.
AUTO_LADDER = ("flat", "flat-fp16", "hnsw", "hnsw-sq8")


def choose_index_kind(n_vectors: int, dim: int) -> str:
    """The index kind ("flat-fp16", "hnsw" or "hnsw-sq8") for a collection of `n_vectors` of `dim` floats."""
    if n_vectors < FLAT_UP_TO:
        return "flat-fp16"
    if n_vectors * dim * 4 <= FLOAT_VECTORS_BUDGET:
        return "hnsw"
    return "hnsw-sq8"
