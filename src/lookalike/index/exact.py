"""Exact top-k by inner product over vectors held in memory, block by block (bounded memory).

Used where the answer must be exact whatever index a collection uses: evaluation's leave-one-out
ranking (`Collection.search_vectors(..., exact=True)`) and training's validation figures.
"""

from __future__ import annotations

import numpy as np

#: queries scored per block: a (block, n) float32 similarity matrix is held at a time
BLOCK = 1024


def exact_search(
    queries: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    k: int,
    *,
    exclude: np.ndarray | None = None,
    block: int = BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k), best first; -inf / -1 where fewer than k exist.

    `exclude` (one id per query, -1 for none) keeps each query's own image out of its results.
    Ties keep the order of `ids`.
    """
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    n = len(queries)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    if k <= 0 or len(ids) == 0:
        return out_scores, out_ids
    position = None
    if exclude is not None:
        order = np.argsort(ids, kind="stable")
        position = (order, ids[order])
    take = min(k, len(ids))
    for start in range(0, n, block):
        sims = queries[start : start + block] @ vectors.T
        if position is not None:
            wanted = np.asarray(exclude, dtype=np.int64)[start : start + block]
            order, sorted_ids = position
            at = np.clip(np.searchsorted(sorted_ids, wanted), 0, len(sorted_ids) - 1)
            hit = (sorted_ids[at] == wanted) & (wanted >= 0)
            sims[np.flatnonzero(hit), order[at[hit]]] = -np.inf  # a query is never its own match
        if take < len(ids) - (position is not None):  # else a full sort: every candidate is kept
            top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            top_sims = np.take_along_axis(sims, top, axis=1)
            top = np.take_along_axis(top, np.argsort(-top_sims, axis=1, kind="stable"), axis=1)
        else:
            top = np.argsort(-sims, axis=1, kind="stable")[:, :take]
        rows = slice(start, start + len(sims))
        scores = np.take_along_axis(sims, top, axis=1)
        out_scores[rows, :take] = scores
        out_ids[rows, :take] = np.where(np.isfinite(scores), ids[top], -1)
    return out_scores, out_ids
