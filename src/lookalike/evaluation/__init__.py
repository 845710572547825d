"""Measuring retrieval quality: metrics, the evaluation runner and its report."""

from .metrics import evaluate_rankings, rank_gallery, retrieval_metrics
from .runner import EmbedderEvaluation, Evaluation, evaluate_folder

__all__ = [
    "EmbedderEvaluation",
    "Evaluation",
    "evaluate_folder",
    "evaluate_rankings",
    "rank_gallery",
    "retrieval_metrics",
]
