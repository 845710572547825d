"""alpha query expansion: the expanded query, exclusion of the query itself, and a ranking it fixes."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lookalike.index import create_index
from lookalike.index.rerank import alpha_query_expansion, expand_queries


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# q's two nearest neighbours (a1, b1) lean towards a2; the distractor d is nearer q than a2 is.
Q, A1, B1, A2, D = unit([1, 0, 0], [1, 0.5, 0], [1, 0.55, 0.05], [0.6, 1, 0], [0.8, -0.55, 0.3])
IDS = np.array([10, 11, 12, 13])  # a1, b1, a2, d


def test_expanded_query_weights_neighbours_by_score_relative_to_the_nearest_to_the_alpha():
    neighbours = np.stack([A1, B1])[None]
    scores = np.array([[0.5, 0.25]], dtype=np.float32)
    expected = Q + 1.0 * A1 + (0.25 / 0.5) ** 3 * B1
    np.testing.assert_allclose(
        expand_queries(Q[None], neighbours, scores, 3.0)[0], expected / np.linalg.norm(expected), rtol=1e-6
    )
    average = Q + A1 + B1  # alpha = 0: average query expansion
    np.testing.assert_allclose(expand_queries(Q[None], neighbours, scores, 0.0)[0], average / np.linalg.norm(average))


def test_expansion_does_not_depend_on_how_high_cosines_run():
    """An embedder whose cosines all run lower (a whitened one) expands its queries just as much."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(4, 8)).astype(np.float32)
    neighbours = rng.normal(size=(4, 5, 8)).astype(np.float32)
    scores = np.sort(rng.uniform(0.3, 0.9, size=(4, 5)), axis=1)[:, ::-1].astype(np.float32)
    np.testing.assert_allclose(
        expand_queries(queries, neighbours, scores * 0.5, 3.0),
        expand_queries(queries, neighbours, scores, 3.0),
        atol=1e-6,
    )


def test_missing_and_negative_neighbours_do_not_move_the_query():
    neighbours = np.stack([A1, B1])[None]
    for alpha in (0.0, 3.0):
        out = expand_queries(Q[None], neighbours, np.array([[-np.inf, -np.inf]]), alpha)
        np.testing.assert_allclose(out[0], Q, atol=1e-6)
    out = expand_queries(Q[None], neighbours, np.array([[-0.4, -np.inf]]), 3.0)
    np.testing.assert_allclose(out[0], Q, atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_expansion_pulls_in_the_neighbours_neighbour(kind):
    index = create_index(kind, 3)
    index.add(IDS, np.stack([A1, B1, A2, D]))
    _, plain = index.search(Q[None], 4)
    assert plain[0].tolist() == [10, 11, 13, 12], "without QE the distractor beats a2"
    _, expanded = alpha_query_expansion(Q[None], index, 4, n_expand=2, alpha=3.0)
    assert expanded[0].tolist() == [10, 11, 12, 13], "QE ranks a2 above the distractor"
    _, none = alpha_query_expansion(Q[None], index, 4, n_expand=0)
    assert none[0].tolist() == plain[0].tolist()


def test_the_query_itself_is_excluded_from_expansion_and_results():
    index = create_index("flat", 3)
    index.add(np.array([1, *IDS]), np.stack([Q, A1, B1, A2, D]))
    scores, ids = alpha_query_expansion(Q[None], index, 4, n_expand=2, alpha=3.0, exclude_ids=np.array([1]))
    assert ids[0].tolist() == [10, 11, 12, 13] and np.isfinite(scores).all()
    # a query whose id is not among its results still gets k results
    _, ids = alpha_query_expansion(A2[None], index, 2, n_expand=1, exclude_ids=np.array([999]))
    assert ids[0].tolist() == [12, 11]
    # -1 means "exclude nothing", not "drop padding": Q's one expansion neighbour is Q, so the plain order stays
    _, ids = alpha_query_expansion(Q[None], index, 7, n_expand=1, exclude_ids=np.array([-1]))
    assert ids[0, :5].tolist() == [1, 10, 11, 13, 12] and (ids[0, 5:] == -1).all()


def test_allowed_ids_limit_expansion_and_results():
    index = create_index("flat", 3)
    index.add(IDS, np.stack([A1, B1, A2, D]))
    allowed = np.array([11, 13])
    _, ids = alpha_query_expansion(Q[None], index, 3, n_expand=2, allowed_ids=allowed)
    assert ids[0].tolist() == [11, 13, -1]


def test_the_query_s_nearest_stays_first_and_scores_are_cosines_to_the_query():
    """Expansion towards a kind must not pass over the one photo the query is a copy of.

    q's nearest is c (cos 0.90), a photo q is an edited copy of; x1 (0.89) and x3 (0.85) lean the same
    other way. Expanded over the top 3, q' = q + 0.9^3 c + 0.89^3 x1 + 0.85^3 x3, whose cosines are
    x1 0.964, x3 0.949, c 0.920: plain alpha-QE would rank x1 and x3 above c. c stays first; the
    rest follow the expanded order, each scored by its cosine to q itself.
    """
    q = unit([1, 0, 0])[0]
    c = np.array([0.9, np.sqrt(1 - 0.81), 0], dtype=np.float32)
    x1 = np.array([0.89, 0, np.sqrt(1 - 0.89**2)], dtype=np.float32)
    x3 = np.array([0.85, 0, np.sqrt(1 - 0.85**2)], dtype=np.float32)
    index = create_index("flat", 3)
    index.add(np.array([1, 2, 3]), np.stack([c, x1, x3]))
    expanded = expand_queries(q[None], np.stack([c, x1, x3])[None], np.array([[0.9, 0.89, 0.85]]), 3.0)[0]
    assert expanded @ x1 > expanded @ x3 > expanded @ c, "the setting: plain QE passes over c"
    scores, ids = alpha_query_expansion(q[None], index, 3, n_expand=3, alpha=3.0)
    assert ids[0].tolist() == [1, 2, 3]
    np.testing.assert_allclose(scores[0], [0.9, 0.89, 0.85], atol=1e-6)
    # with room for more than there are, the rest is padding, as without expansion
    scores, ids = alpha_query_expansion(q[None], index, 5, n_expand=3, alpha=3.0)
    assert ids[0].tolist() == [1, 2, 3, -1, -1] and np.isneginf(scores[0, 3:]).all()


def test_expansion_reorders_the_plain_shortlist_through_any_index_and_by_brute_force_alike():
    """The expanded query orders the plain search's top max(SHORTLIST, k), nothing beyond it: the index path
    and the exact path (evaluation) give the same answers, and every result's score is its plain cosine."""
    from lookalike.index.rerank import SHORTLIST, exact_query_expansion

    rng = np.random.default_rng(0)
    stored = unit(*rng.standard_normal((600, 16)).tolist())
    ids = np.arange(1000, 1600)
    queries = unit(*rng.standard_normal((20, 16)).tolist())
    index = create_index("flat", 16)
    index.add(ids, stored)
    k = 30
    scores, found = alpha_query_expansion(queries, index, k, n_expand=5)
    exact_scores, exact_found = exact_query_expansion(queries, stored, ids, k, n_expand=5)
    np.testing.assert_array_equal(found, exact_found)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    _, plain = index.search(queries, SHORTLIST)
    for row in range(len(queries)):
        assert set(found[row].tolist()) <= set(plain[row].tolist())
        assert found[row, 0] == plain[row, 0]
        np.testing.assert_allclose(scores[row], stored[found[row] - 1000] @ queries[row], atol=1e-5)
    assert (found != plain[:, :k]).any(), "the expansion changes some orders"
