"""Metrics against hand-computed rankings, and against pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.evaluation.metrics import (
    average_precision_at_k,
    evaluate_rankings,
    hit_rate_at_k,
    knn_accuracy,
    map_at_r,
    precision_at_k,
    r_precision,
    rank_gallery,
    recall_at_k,
    retrieval_metrics,
)


def test_one_hit_at_rank_one_is_not_a_perfect_average_precision() -> None:
    # The pitfall in docs/metrics.md: hit, miss, miss, miss, miss with R = 10.
    rel = np.array([[1, 0, 0, 0, 0]], dtype=bool)
    R = np.array([10])
    assert precision_at_k(rel, 5) == pytest.approx(0.2)
    assert average_precision_at_k(rel, R, 5)[0] == pytest.approx(1 / 5)  # divided by min(k, R) = 5, not by 1 hit
    assert hit_rate_at_k(rel, 5) == 1.0
    assert recall_at_k(rel, R, 5) == pytest.approx(0.1)


def test_hand_computed_query() -> None:
    # Ranking: rel at ranks 1, 3, 4; R = 3.
    rel = np.array([[1, 0, 1, 1, 0, 0]], dtype=bool)
    R = np.array([3])
    # AP@5 = (1/3) * (1/1 + 2/3 + 3/4)
    assert average_precision_at_k(rel, R, 5)[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # MAP@R only looks at the first R = 3 ranks: (1/3) * (1/1 + 2/3)
    assert map_at_r(rel, R) == pytest.approx((1 + 2 / 3) / 3)
    assert r_precision(rel, R) == pytest.approx(2 / 3)
    assert precision_at_k(rel, 5) == pytest.approx(3 / 5)


def test_per_query_r_is_respected_in_map_at_r() -> None:
    rel = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=bool)
    R = np.array([2, 3])
    expected = ((1 + 1) / 2 + (0 + 1 / 2 + 2 / 3) / 3) / 2
    assert map_at_r(rel, R) == pytest.approx(expected)


def test_knn_accuracy_majority_and_tie_break() -> None:
    neighbours = np.array([["a", "b", "b"], ["b", "a", "a"], ["a", "b", "c"]])
    truth = np.array(["a", "a", "a"])
    # row 0: majority b -> wrong; row 1: majority a -> right; row 2: three-way tie -> first ranked (a) -> right
    assert knn_accuracy(neighbours, truth, 3) == pytest.approx(2 / 3)


def test_leave_one_out_never_returns_the_query() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ranking = rank_gallery(vectors, depth=49, chunk=7)
    assert not (ranking == np.arange(50)[:, None]).any()
    exact = np.argsort(-(vectors @ vectors.T) + np.eye(50) * 1e9, axis=1)[:, :49]
    np.testing.assert_array_equal(ranking, exact)


def test_perfectly_separated_classes_score_one() -> None:
    vectors = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0) + 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [0] * 4 + [1] * 4 + [2] * 4
    figures = retrieval_metrics(vectors, labels, ks=(1, 3))
    assert figures["MAP@R"] == pytest.approx(1.0)
    assert figures["precision@3"] == pytest.approx(1.0)
    assert figures["precision@1"] == pytest.approx(1.0)


def test_singleton_label_queries_are_excluded_and_counted() -> None:
    ranking = np.array([[1, 2], [0, 2], [0, 1]])
    figures = evaluate_rankings(ranking, ["a", "a", "b"], ks=(1,))
    assert figures["queries"] == 2 and figures["queries_without_relevant"] == 1
    assert figures["precision@1"] == 1.0


def test_agrees_with_pytorch_metric_learning_accuracy_calculator() -> None:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(42)
    centres = rng.normal(size=(4, 16))
    labels = rng.integers(0, 4, size=300)
    vectors = (centres[labels] + rng.normal(scale=1.2, size=(300, 16))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    ours = retrieval_metrics(vectors, labels, ks=(1,))
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k="max_bin_count",
        device=torch.device("cpu"),
    )
    theirs = calculator.get_accuracy(
        torch.from_numpy(vectors),
        torch.from_numpy(labels),
        torch.from_numpy(vectors),
        torch.from_numpy(labels),
        ref_includes_query=True,
    )
    assert 0.3 < ours["MAP@R"] < 0.95, "the data should be neither trivial nor hopeless"
    assert ours["precision@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["R-precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["MAP@R"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
