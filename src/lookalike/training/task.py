"""What a training method gives the loop (`training/loop.py`): a `Task`.

Free of PyTorch at import (its types are only annotations), so a method's module in
`training/methods/` may define its task beside its spec, keeping the heavy imports inside the
task's methods; or the task lives in a module of its own (the built-in methods' choice).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class Task(ABC):
    """What one training method provides to the loop."""

    #: the module whose trainable parameters are optimised and checkpointed
    model: nn.Module
    #: the inference network that is saved as the embedder (an `embedders.networks.Embedding`, part of `model`)
    embedding: nn.Module
    #: the validation figure early stopping maximises
    monitor: str = "MAP@R"
    #: seconds spent filling caches before training (reported in model.json)
    cache_seconds: float = 0.0

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[object]:
        """This epoch's training batches (global RNGs are already seeded for the epoch)."""

    @abstractmethod
    def loss(self, batch: object) -> torch.Tensor:
        """The loss of one batch, with gradients."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Figures on the validation images (must include `monitor`); the model is in eval mode."""

    def steps_per_epoch(self) -> int | None:
        return None

    def parameter_groups(self, lr: float) -> list[dict[str, object]]:
        """Optimiser groups; by default every trainable parameter at `lr`."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": lr}]

    def finish(self) -> dict[str, object]:
        """After the loop restored the best epoch, before saving: a last step that is not a gradient step
        (the metric methods' learned whitening). Returns model.json fields to add or replace."""
        return {}

    def start_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:  # noqa: B027 (optional hook)
        """Called before each epoch (also after a resume): a place for per-epoch schedules."""
