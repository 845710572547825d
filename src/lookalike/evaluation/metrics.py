"""Retrieval metrics, exactly as docs/metrics.md defines them.

Everything is computed from a *relevance matrix*: row q holds, for the gallery ranked
by similarity to query q (q itself removed), 1 where the result has q's label. `R[q]` is
the number of gallery items with q's label. Queries with R = 0 have no relevant item
and are left out of every average (the caller reports how many).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..index.exact import BLOCK, exact_search


def precision_at_k(rel: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant in top k) / k."""
    return float(rel[:, :k].sum(axis=1).mean() / k)


def recall_at_k(rel: np.ndarray, R: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant in top k) / R (IR recall)."""
    return float((rel[:, :k].sum(axis=1) / R).mean())


def hit_rate_at_k(rel: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant item in the top k (metric-learning "Recall@K")."""
    return float(rel[:, :k].any(axis=1).mean())


def _precision_curve(rel: np.ndarray, depth: int) -> np.ndarray:
    """P(i) for i = 1..depth, per query."""
    hits = np.cumsum(rel[:, :depth], axis=1, dtype=np.float64)
    return hits / np.arange(1, hits.shape[1] + 1)


def average_precision_at_k(rel: np.ndarray, R: np.ndarray, k: int) -> np.ndarray:
    """Per query: (1 / min(k, R)) * sum_{i<=k} P(i) rel(i)."""
    precision = _precision_curve(rel, k)
    return (precision * rel[:, :k]).sum(axis=1) / np.minimum(k, R)


def map_at_k(rel: np.ndarray, R: np.ndarray, k: int) -> float:
    return float(average_precision_at_k(rel, R, k).mean())


def average_precision_at_r(rel: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Per query: (1 / R) * sum_{i<=R} P(i) rel(i), the term MAP@R averages."""
    depth = int(R.max())
    precision = _precision_curve(rel, depth)
    within_r = np.arange(1, depth + 1)[None, :] <= R[:, None]
    return (precision * rel[:, :depth] * within_r).sum(axis=1) / R


def map_at_r(rel: np.ndarray, R: np.ndarray) -> float:
    """Mean over queries of (1 / R) * sum_{i<=R} P(i) rel(i) (Musgrave et al., 2020)."""
    return float(average_precision_at_r(rel, R).mean())


def r_precision(rel: np.ndarray, R: np.ndarray) -> float:
    """Mean over queries of (relevant in top R) / R."""
    depth = int(R.max())
    within_r = np.arange(1, depth + 1)[None, :] <= R[:, None]
    return float(((rel[:, :depth] & within_r).sum(axis=1) / R).mean())


def knn_accuracy(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Share of queries whose top-k majority label is their own; a tie goes to the label ranked first."""
    correct = 0
    for row, truth in zip(neighbour_labels[:, :k], query_labels, strict=True):
        counts = Counter(row.tolist())
        best = max(counts.values())
        winner = next(label for label in row.tolist() if counts[label] == best)
        correct += winner == truth
    return correct / len(query_labels)


def rank_gallery(vectors: np.ndarray, depth: int, chunk: int = BLOCK) -> np.ndarray:
    """Leave-one-out ranking: for each vector, the indices of the `depth` most similar others."""
    n = len(vectors)
    positions = np.arange(n, dtype=np.int64)
    _, order = exact_search(vectors, vectors, positions, min(depth, n - 1), exclude=positions, block=chunk)
    return order


def evaluate_rankings(
    ranking: np.ndarray, labels: Sequence[object], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float | int]:
    """All the figures of docs/metrics.md from a leave-one-out ranking (indices into `labels`)."""
    labels_arr = np.asarray(labels)
    _, codes, counts = np.unique(labels_arr, return_inverse=True, return_counts=True)
    R = counts[codes] - 1
    keep = R > 0
    neighbour_codes = codes[ranking]
    rel = neighbour_codes == codes[:, None]
    rel, R_kept, q_codes, n_codes = rel[keep], R[keep], codes[keep], neighbour_codes[keep]
    if int(R_kept.max(initial=0)) > rel.shape[1]:
        raise ValueError("ranking is shallower than the largest class; rank the whole gallery for MAP@R")
    figures: dict[str, float | int] = {"queries": int(keep.sum()), "queries_without_relevant": int((~keep).sum())}
    for k in ks:
        figures[f"precision@{k}"] = precision_at_k(rel, k)
        figures[f"recall@{k}"] = recall_at_k(rel, R_kept, k)
        figures[f"hit_rate@{k}"] = hit_rate_at_k(rel, k)
        figures[f"mAP@{k}"] = map_at_k(rel, R_kept, k)
        figures[f"knn_accuracy@{k}"] = knn_accuracy(n_codes, q_codes, k)
    figures["MAP@R"] = map_at_r(rel, R_kept)
    figures["R-precision"] = r_precision(rel, R_kept)
    return figures


def per_query_figures(ranking: np.ndarray, labels: Sequence[object], k: int = 5) -> dict[str, np.ndarray]:
    """Per query: "AP@R" (the MAP@R term) and "precision@k"; NaN for a query whose label has no other image."""
    labels_arr = np.asarray(labels)
    _, codes, counts = np.unique(labels_arr, return_inverse=True, return_counts=True)
    R = counts[codes] - 1
    keep = R > 0
    ap = np.full(len(labels_arr), np.nan)
    precision = np.full(len(labels_arr), np.nan)
    if keep.any():
        rel = codes[ranking[keep]] == codes[keep][:, None]
        if int(R[keep].max()) > rel.shape[1]:
            raise ValueError("ranking is shallower than the largest class; rank the whole gallery for MAP@R")
        ap[keep] = average_precision_at_r(rel, R[keep])
        precision[keep] = rel[:, :k].sum(axis=1) / k
    return {"AP@R": ap, f"precision@{k}": precision}


def per_class_figures(ranking: np.ndarray, labels: Sequence[object], k: int = 5) -> list[dict[str, object]]:
    """Per label: its images, the mean AP@R of its queries (the class's MAP@R: how well its images find each
    other) and their precision@k, worst class first. Classes of one image (nothing to find) are left out.

    The query-weighted mean of the classes' MAP@R is the overall MAP@R."""
    figures = per_query_figures(ranking, labels, k)
    labels_arr = np.asarray(labels)
    rows = []
    for label in np.unique(labels_arr):
        mask = (labels_arr == label) & ~np.isnan(figures["AP@R"])
        if not mask.any():
            continue
        rows.append(
            {
                "label": str(label),
                "images": int((labels_arr == label).sum()),
                "MAP@R": float(figures["AP@R"][mask].mean()),
                f"precision@{k}": float(figures[f"precision@{k}"][mask].mean()),
            }
        )
    return sorted(rows, key=lambda row: (row["MAP@R"], row["label"]))


def precision_curve(ranking: np.ndarray, labels: Sequence[object], max_k: int = 50) -> list[float]:
    """precision@k for k = 1..max_k (for plots)."""
    labels_arr = np.asarray(labels)
    rel = labels_arr[ranking[:, :max_k]] == labels_arr[:, None]
    return [float(v) for v in (np.cumsum(rel, axis=1).mean(axis=0) / np.arange(1, rel.shape[1] + 1))]


def retrieval_metrics(vectors: np.ndarray, labels: Sequence[object], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Leave-one-out figures for L2-normalised `vectors` with their `labels`."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    depth = max(max(ks), int(counts.max()) - 1)
    return evaluate_rankings(rank_gallery(vectors, depth), labels, ks)
