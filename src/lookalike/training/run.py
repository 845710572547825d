"""What a training run is asked to do, and how it reports; no PyTorch here.

- `TrainingRun`: the method, the folder and the options shared by every method (loop, split,
  name); its fields are the shared options of `lookalike train METHOD` (`cli/train.py` builds them
  from the field metadata, as it builds each method's own options from its spec).
  `resolve()` turns it into the method's spec, the loop settings and the embedder name, filling in
  the method's defaults (`training.methods`).
- `LoopConfig`: what the loop (`training.loop.fit`) needs.
- The callbacks the library reports through (it never prints): `Progress` (stage, done, total),
  as `Collection.sync` uses it, and `Figures` (stage, {name: value}), the figures of a stage as
  they change: the running loss during an epoch, then its validation score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import methods
from .options import MethodSpec, option
from .split import SplitRule

#: progress(stage, done, total)
Progress = Callable[[str, int, int], None]
#: figures(stage, {name: value}): e.g. ("epoch 2/4", {"loss": 0.31}), then ("epoch 2/4", {"loss": 0.30, "MAP@R": 0.97})
Figures = Callable[[str, Mapping[str, float]], None]

SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class LoopConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3  # epochs without a better validation score before stopping
    seed: int = 0
    threads: int = 2
    # "constant", or "cosine": every group's rate decays per step along a half cosine to 0 at the last
    # epoch, so the final epochs take small steps and the kept weights do not depend on where a step landed.
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")


@dataclass
class TrainingRun:
    """What `lookalike train` was asked to do; None means the method's default."""

    method: str = option(help="the training method (a `training.methods` name)", cli=False)
    folder: Path = option(help="the labelled folder (sub-folder = label)", cli=False)
    name: str | None = option(None, "embedder name")  # default: the method's (`training.methods.Defaults`)
    epochs: int | None = option(None, "maximum epochs")
    lr: float | None = option(None, "learning rate of the new layers")
    patience: int = option(3, "stop after N epochs without a better validation score (MAP@R when labelled)")
    schedule: str | None = option(
        None, "learning-rate schedule: constant, or a half cosine decaying to 0 at the last epoch", choices=SCHEDULES
    )
    seed: int = option(0, "seed: the same seed gives the same model")
    split: SplitRule = field(default_factory=SplitRule)  # its own fields are options
    spec: dict[str, object] = field(default_factory=dict)  # the method's spec fields that were given
    restart: bool = option(False, "discard a checkpoint or a trained model of that name and start over")

    def resolve(self) -> tuple[methods.Method, MethodSpec, LoopConfig, str]:
        """The method, its spec, the loop settings and the embedder name, defaults filled in."""
        method = methods.get(self.method)
        spec = method.make_spec(self.spec)
        defaults = method.defaults_for(spec)
        config = LoopConfig(
            epochs=self.epochs if self.epochs is not None else defaults.epochs,
            lr=self.lr if self.lr is not None else defaults.lr,
            patience=self.patience,
            schedule=self.schedule or defaults.schedule,
            seed=self.seed,
        )
        return method, spec, config, self.name or method.default_name(spec)
