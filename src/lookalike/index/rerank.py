"""Query expansion re-ranking: search, fold the best neighbours into the query, search again.

alpha-QE (Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human annotation",
TPAMI 2018): q' = normalise(q + sum_{i<=n} w_i * x_i) over the query's top-n neighbours x_i with cosine s_i.
alpha = 0 is average query expansion (Chum et al. 2007): every neighbour weighs as much as the query.
The paper's weight is max(s_i, 0)^alpha; here it is (s_i / s_1)^alpha, s_1 the nearest neighbour's cosine,
so the weights do not depend on how high an embedder's cosines run. With the paper's weights, an embedder
whose nearest neighbours sit near cosine 0.5 (a trained network ending with learned whitening) barely
expands at all while one near 0.75 does; with these, both do, and a large alpha still lets only the
neighbours about as near as the nearest move the query. Measured (benchmarks/results/descriptors.json,
2026-12-03): MAP@R with expansion +0.005 to +0.012 on caltech101-dev and +0.002 to +0.003 on cats and dogs
for every descriptor; copy detection top-1 unchanged, top-10 1-2 copies of 2,400 lower.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .base import VectorIndex
from .exact import BLOCK, exact_search

#: Query expansion over this many neighbours in a new collection's searches (`Collection.default_expand`).
#: Measured with efficientnet-lite0-gem-ms (benchmarks/results/descriptors.json): caltech101-dev MAP@R
#: 0.605 -> 0.665, cats-and-dogs precision@5 0.9725 -> 0.973, copy detection top-1 unchanged (the nearest
#: result stays first).
DEFAULT_EXPAND = 5
#: the expanded query re-ranks the plain search's top max(SHORTLIST, k) results, not the whole collection: one
#: search per query instead of two (on 10,000 vectors, exact: 2.7 ms a query plain, 6.4 ms with a second search)
SHORTLIST = 100
#: candidate vectors gathered at a time when re-ranking through `vectors_of` (bounded memory)
GATHER = 4096


def expand_queries(
    queries: np.ndarray, neighbour_vectors: np.ndarray, neighbour_scores: np.ndarray, alpha: float
) -> np.ndarray:
    """alpha-QE queries: (n_queries, dim) from neighbours (n_queries, n, dim) and their scores (n_queries, n).

    Each neighbour weighs (its score / the query's best neighbour score)^alpha (negative scores count as 0);
    a neighbour with score -inf (a missing result) gets weight 0.
    """
    queries = np.asarray(queries, dtype=np.float32)
    scores = np.where(np.isfinite(neighbour_scores), np.maximum(neighbour_scores, 0.0), 0.0)
    nearest = scores.max(axis=1, keepdims=True)
    relative = scores / np.where(nearest > 0, nearest, 1.0)
    weights = relative**alpha if alpha else np.isfinite(neighbour_scores).astype(np.float32)
    expanded = queries + np.einsum("qn,qnd->qd", weights.astype(np.float32), neighbour_vectors)
    norms = np.linalg.norm(expanded, axis=1, keepdims=True)
    return (expanded / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def search_excluding(
    index: VectorIndex, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None, exclude_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query without its `exclude_ids` entry (e.g. the query image itself); -1 = none."""
    if exclude_ids is None:
        return index.search(queries, k, allowed_ids=allowed_ids)
    scores, ids = index.search(queries, k + 1, allowed_ids=allowed_ids)
    exclude = np.asarray(exclude_ids, dtype=np.int64)[:, None]
    drop = (ids == exclude) & (exclude >= 0)
    drop[:, -1] |= ~drop.any(axis=1)  # rows without the excluded id lose their (k+1)th result instead
    keep = ~drop
    return scores[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)


def alpha_query_expansion(
    queries: np.ndarray,
    index: VectorIndex,
    k: int,
    *,
    n_expand: int = 5,
    alpha: float = 3.0,
    allowed_ids: np.ndarray | None = None,
    exclude_ids: np.ndarray | None = None,
    vectors_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) like `index.search`, re-ranked by one round of alpha-QE (see `_expanded`).

    `vectors_of(ids)` gives stored vectors in the index's space (default `index.reconstruct`); `exclude_ids`
    (one per query, -1 for none) keeps each query's own image out of both the expansion and the results.
    """
    vectors_of = vectors_of or index.reconstruct  # type: ignore[attr-defined]

    def search(q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return search_excluding(index, q, n, allowed_ids, exclude_ids)

    return _expanded(search, vectors_of, _gathered(vectors_of), queries, k, n_expand, alpha)


def exact_query_expansion(
    queries: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    k: int,
    *,
    n_expand: int = 5,
    alpha: float = 3.0,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`alpha_query_expansion` by brute force over `vectors` (rows of `ids`): the same answers, each query's
    `exclude` id kept out of both the expansion and the results."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    sorted_ids = np.asarray(ids)[order]

    def search(q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_search(q, vectors, ids, n, exclude=exclude)

    def rows_of(wanted: np.ndarray) -> np.ndarray:
        return order[np.searchsorted(sorted_ids, wanted)]

    def score(expanded: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        out = np.full(candidates.shape, -np.inf, dtype=np.float32)
        valid = candidates >= 0
        if not valid.any():  # nothing stored (or nothing found): nothing to order
            return out
        for start in range(0, len(expanded), BLOCK):  # a (block, n) similarity matrix at a time, as exact_search
            sims = expanded[start : start + BLOCK] @ vectors.T
            block = slice(start, start + len(sims))
            cand = np.where(valid[block], candidates[block], sorted_ids[0])
            gathered = np.take_along_axis(sims, rows_of(cand), axis=1)
            out[block] = np.where(valid[block], gathered, -np.inf)
        return out

    return _expanded(search, lambda wanted: vectors[rows_of(wanted)], score, queries, k, n_expand, alpha)


def _gathered(vectors_of: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Cosines of each expanded query to its candidates (n, m), from the candidates' vectors, GATHER at a time."""

    def score(expanded: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        out = np.full(candidates.shape, -np.inf, dtype=np.float32)
        rows, cols = np.nonzero(candidates >= 0)
        for start in range(0, len(rows), GATHER):
            r, c = rows[start : start + GATHER], cols[start : start + GATHER]
            out[r, c] = np.einsum("nd,nd->n", vectors_of(candidates[r, c]), expanded[r])
        return out

    return score


def _expanded(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    vectors_of: Callable[[np.ndarray], np.ndarray],
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    queries: np.ndarray,
    k: int,
    n_expand: int,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One round of alpha-QE over a shortlist: `search(queries, n) -> (scores, ids)` (-1 = none), stored
    `vectors_of(ids)`, and `score(expanded, candidate ids) -> cosines` (-inf where an id is -1).

    The plain search's top max(SHORTLIST, k) are the candidates; the expanded query (the query plus its top
    `n_expand` weighted by (cosine / the nearest one's)^alpha) orders them. The query's own nearest stays first:
    expansion moves the query towards its neighbours' kind, which ranks more of that kind higher, but can pass
    over the one photo the query is an edited copy of (on a copy-detection set, 14 of 2,400 copies lost their
    original's first place, none gained it). The scores are the results' cosines to the query itself, as without
    expansion (weak-match thresholds apply); after the first result they need not be in order.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if n_expand <= 0:
        return search(queries, k)
    scores, ids = search(queries, max(SHORTLIST, k, n_expand))
    found = ids[:, :n_expand] >= 0
    neighbours = np.zeros((len(ids), n_expand, queries.shape[1]), dtype=np.float32)
    if found.any():
        neighbours[found] = vectors_of(ids[:, :n_expand][found])
    expanded = expand_queries(queries, neighbours, np.where(found, scores[:, :n_expand], -np.inf), alpha)
    order_by = score(expanded, ids)
    order_by[:, 0] = np.inf  # the plain nearest stays first
    order_by[ids < 0] = -np.inf  # missing results stay last
    order = np.argsort(-order_by, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
