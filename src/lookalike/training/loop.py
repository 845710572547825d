"""The one training loop every method uses.

A method supplies a `Task` (its module, its batches, its loss, its validation); the loop
owns everything else: the optimiser and its learning-rate schedule, seeding, an atomic
checkpoint after every epoch, resuming from it, early stopping on the validation score
(MAP@R when labels exist) and restoring the best epoch's weights at the end.

The loop never prints. It reports each epoch's steps through `progress(stage, done, total)` with
the stage "epoch E/N", the running loss through `figures(stage, {"loss": ...})` and, at the end
of the epoch, the loss and the validation figure it monitors through `figures` again and the whole
`EpochRecord` through `on_epoch`. The command line draws these as one bar per epoch
(`cli/common.py`); before, the loop drew tqdm bars itself.

A checkpoint is read back with `torch.load(weights_only=True)`: tensors and plain values only, so
a checkpoint planted in a collection folder cannot run code when training resumes; anything else
is refused with a ValueError.

Determinism: every epoch reseeds torch, numpy and `random` from (seed, epoch), so an
interrupted-and-resumed run gives the same weights as one that was never interrupted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..storage import atomic_path
from .run import SCHEDULES, Figures, LoopConfig, Progress
from .task import Task

__all__ = ["CHECKPOINT", "SCHEDULES", "EpochRecord", "LoopConfig", "LoopResult", "Task", "cosine_factor", "fit"]

CHECKPOINT = "checkpoint.pt"


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    seconds: float
    validation: dict[str, float]


@dataclass
class LoopResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seconds: float = 0.0  # training time summed over every run (resumes included)
    resumed_from: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def seed_everything(seed: int, epoch: int = 0) -> None:
    derived = int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:4], "big")
    random.seed(derived)
    np.random.seed(derived)  # pytorch-metric-learning's samplers draw from numpy's global RNG
    torch.manual_seed(derived)


def cosine_factor(progress: float, epochs: int) -> float:
    """The cosine schedule's multiplier after `progress` epochs of `epochs`: 1 at the start, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(progress / max(epochs, 1), 1.0)))


def _fingerprint(config: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit(
    task: Task,
    work_dir: Path,
    config: LoopConfig,
    *,
    run_config: dict[str, object] | None = None,
    progress: Progress | None = None,
    figures: Figures | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> LoopResult:
    """Train `task.model` in `work_dir` (checkpoint there), resuming if a matching checkpoint exists.

    `run_config` describes the whole run; a checkpoint from a different run is refused rather
    than silently continued. `progress`, `figures` and `on_epoch` report as the module docstring says.
    """
    torch.set_num_threads(config.threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = work_dir / CHECKPOINT
    # Stopping rules (epochs, patience) may change between runs: resuming with more epochs extends training
    # (under the cosine schedule the rest of the decay then stretches to the new last epoch).
    dynamics = {k: v for k, v in asdict(config).items() if k not in ("epochs", "patience")}
    fingerprint = _fingerprint({"loop": dynamics, "run": run_config or {}})
    model = task.model
    optimizer = torch.optim.AdamW(task.parameter_groups(config.lr), lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    result = LoopResult()
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs = 0
    start_epoch = 0

    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state["fingerprint"] != fingerprint:
            raise ValueError(
                f"{checkpoint_path} belongs to a run with other settings; use the same options to resume, "
                "or --restart to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state = state["best_state"]
        bad_epochs = state["bad_epochs"]
        result = LoopResult(**{**state["result"], "history": [EpochRecord(**h) for h in state["result"]["history"]]})
        start_epoch = result.history[-1].epoch if result.history else 0
        result.resumed_from = start_epoch
    else:
        # Score the untrained model too: training must beat it to be kept (epoch 0).
        seed_everything(config.seed, 0)
        model.eval()
        with torch.no_grad():
            result.best_score = float(task.validate()[task.monitor])

    stopped = bad_epochs >= config.patience
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if stopped:
            break
        started = time.perf_counter()
        seed_everything(config.seed, epoch)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        task.start_epoch(epoch, optimizer)
        epoch_lrs = [group["lr"] for group in optimizer.param_groups]
        steps = task.steps_per_epoch()
        stage = f"epoch {epoch}/{config.epochs}"
        model.train()
        total, count = 0.0, 0
        if progress:
            progress(stage, 0, steps or 0)
        for step, batch in enumerate(task.batches(epoch)):
            if config.schedule == "cosine":
                # A function of (epoch, step) alone, so a resumed run follows the same rates.
                factor = cosine_factor(epoch - 1 + (step / steps if steps else 0.0), config.epochs)
                for group, lr in zip(optimizer.param_groups, epoch_lrs, strict=True):
                    group["lr"] = lr * factor
            loss = task.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
            if progress:
                progress(stage, count, max(steps or 0, count))
            if figures:
                figures(stage, {"loss": total / count})
        model.eval()
        with torch.no_grad():
            scores = {k: float(v) for k, v in task.validate().items()}
        record = EpochRecord(epoch, total / max(count, 1), time.perf_counter() - started, scores)
        result.history.append(record)
        result.seconds += record.seconds
        score = scores[task.monitor]
        if score > result.best_score:
            result.best_score, result.best_epoch, bad_epochs = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        stopped = bad_epochs >= config.patience
        result.stopped_early = stopped and epoch < config.epochs
        if figures:
            figures(stage, {"loss": record.train_loss, task.monitor: score})
        _save_checkpoint(checkpoint_path, model, optimizer, best_state, bad_epochs, result, fingerprint)
        if on_epoch:
            on_epoch(record)
    model.load_state_dict(best_state)
    model.eval()
    return result


CHECKPOINT_KEYS = ("model", "optimizer", "best_state", "bad_epochs", "result", "fingerprint")


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's tensors and plain values; ValueError for anything else (a pickle that could run code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{path} holds objects other than tensors and plain values, and loading it could run code: "
            "refused. Delete it, or use --restart to start over"
        ) from exc
    except Exception as exc:  # torch raises many types for a damaged file
        raise ValueError(f"{path} cannot be read ({exc}); use --restart to start over") from exc
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise ValueError(f"{path} is not a training checkpoint; use --restart to start over")
    return state


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    best_state: dict,
    bad_epochs: int,
    result: LoopResult,
    fingerprint: str,
) -> None:
    """Written beside the target and renamed: a kill mid-write leaves the previous checkpoint intact."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_state": best_state,
        "bad_epochs": bad_epochs,
        "result": result.to_dict(),
        "fingerprint": fingerprint,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
