"""What every method starts from: the labelled images of a folder, split by image, and a cache folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..catalog import ImageRecord
from ..evaluation.metrics import retrieval_metrics
from .run import Progress
from .split import Split


@dataclass
class Prepared:
    split: Split
    train: list[ImageRecord]
    val: list[ImageRecord]
    label_names: list[str]
    train_labels: np.ndarray  # int64 codes into label_names
    val_labels: np.ndarray
    cache_root: Path
    seed: int
    progress: Progress | None = None

    @classmethod
    def of(
        cls, records: list[ImageRecord], split: Split, cache_root: Path, seed: int, progress: Progress | None = None
    ) -> Prepared:
        train, val = split.select(records, "train"), split.select(records, "val")
        names = sorted({r.label or "" for r in train + val})
        code = {name: i for i, name in enumerate(names)}
        return cls(
            split,
            train,
            val,
            names,
            np.asarray([code[r.label or ""] for r in train], dtype=np.int64),
            np.asarray([code[r.label or ""] for r in val], dtype=np.int64),
            cache_root,
            seed,
            progress,
        )

    def labelled_validation(self) -> bool:
        """MAP@R needs two labels and some label with two validation images."""
        _, counts = np.unique(self.val_labels, return_counts=True)
        return len(counts) >= 2 and int(counts.max()) >= 2

    def report(self, stage: str) -> Callable[[int, int], None] | None:
        progress = self.progress
        if progress is None:
            return None
        return lambda done, total: progress(stage, done, total)


def validation_figures(embeddings: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """MAP@R and precision@1/5 of the validation images retrieving each other (leave-one-out)."""
    vectors = torch.nn.functional.normalize(embeddings.float(), dim=1).numpy()
    figures = retrieval_metrics(vectors, labels.tolist(), ks=(1, 5))
    return {k: float(figures[k]) for k in ("MAP@R", "precision@1", "precision@5")}


def batched(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
