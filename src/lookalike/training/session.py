"""One training run from start to saved embedder: split, caches, the loop, saving."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..collection import Collection
from ..embedders.networks import Embedding
from . import autoencoder, metric_learning
from .loop import CHECKPOINT, EpochRecord, LoopConfig, fit, seed_everything
from .prepared import Prepared, Progress
from .saved import MODEL_FILE, save_model
from .split import Split, SplitRule

METHODS = ("autoencoder", "siamese", "triplet")


@dataclass
class TrainingRun:
    """What `lookalike train` was asked to do; None means the method's default."""

    method: str
    folder: Path
    name: str | None = None
    epochs: int | None = None
    lr: float | None = None
    patience: int = 3
    schedule: str | None = None
    seed: int = 0
    split: SplitRule = field(default_factory=SplitRule)
    spec: dict[str, object] = field(default_factory=dict)  # MetricSpec / AutoencoderSpec fields
    restart: bool = False

    def resolved_spec(self) -> metric_learning.MetricSpec | autoencoder.AutoencoderSpec:
        if self.method == "autoencoder":
            spec = dict(self.spec)
            if spec.get("variant") == "features" and "dim" not in spec:
                spec["dim"] = 128  # the compact variant: 1280 -> 128 floats
            return autoencoder.AutoencoderSpec(**spec)
        if self.method in ("siamese", "triplet"):
            return metric_learning.MetricSpec(method=self.method, **self.spec)
        raise ValueError(f"unknown training method {self.method!r}; choose one of {', '.join(METHODS)}")

    def default_name(self) -> str:
        if self.method == "autoencoder" and self.spec.get("variant") == "features":
            return "autoencoder-compact"
        return self.method

    def loop_config(self, spec: object) -> LoopConfig:
        """CPU-feasible defaults per method (see docs/training.md for the measured times)."""
        schedule = "constant"
        if isinstance(spec, autoencoder.AutoencoderSpec):
            epochs, lr = (10, 1e-3) if spec.variant == "pixels" else (30, 1e-3)
        else:
            assert isinstance(spec, metric_learning.MetricSpec)
            epochs, lr = {"frozen": (20, 1e-3), "finetune": (4, 1e-3), "scratch": (10, 1e-3)}[spec.backbone]
            if spec.backbone == "finetune":
                schedule = "cosine"
        return LoopConfig(
            epochs=self.epochs if self.epochs is not None else epochs,
            lr=self.lr if self.lr is not None else lr,
            patience=self.patience,
            schedule=self.schedule or schedule,
            seed=self.seed,
        )


def _split_digest(split: Split) -> str:
    return hashlib.sha256(("|".join(split.train) + "#" + "|".join(split.val)).encode()).hexdigest()[:16]


@dataclass
class Trained:
    info: dict  # what model.json holds
    module: Embedding  # the inference network, best epoch's weights, eval mode


def train(
    collection: Collection,
    run: TrainingRun,
    *,
    progress: Progress | None = None,
    bars: bool = True,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> Trained:
    """Train, save into `collection.models_dir/NAME` and return the saved model.

    Run the same call again after an interruption: it resumes from the last epoch's checkpoint.
    """
    spec = run.resolved_spec()
    config = run.loop_config(spec)
    name = run.name or run.default_name()
    model_dir = collection.models_dir / name
    if run.restart and model_dir.exists():
        shutil.rmtree(model_dir)
    if (model_dir / MODEL_FILE).exists():
        raise ValueError(f"an embedder called {name!r} is already trained in {collection.path}; use --restart")
    root = Path(run.folder).expanduser().resolve()
    collection.sync(root, progress=progress)  # the catalog knows every image's content hash and label
    records = collection.catalog.records(status="ok", under=str(root))
    if not records:
        raise ValueError(f"no readable images in {root}")
    split = Split.of(records, run.split)
    if not split.train or not split.val:
        raise ValueError(f"too few images to split ({split.counts()}); lower --test-fraction or add images")
    prepared = Prepared.of(records, split, collection.path / "cache" / "training", run.seed, progress)

    seed_everything(run.seed, -1)  # network initialisation is part of what --seed fixes
    if isinstance(spec, autoencoder.AutoencoderSpec):
        encoder = autoencoder.build_network(spec)
        task: autoencoder.AutoencoderTask | metric_learning.MetricTask = autoencoder.AutoencoderTask(
            spec, encoder, prepared
        )
    else:
        encoder = metric_learning.build_network(spec)
        task = metric_learning.MetricTask(spec, encoder, prepared)

    run_config = {"method": run.method, "spec": asdict(spec), "split": _split_digest(split)}
    result = fit(task, model_dir, config, run_config=run_config, progress=bars, on_epoch=on_epoch)
    info = {
        "method": run.method,
        "name": name,
        "dim": spec.dim,
        "architecture": spec.architecture(),
        "spec": asdict(spec),
        "loop": asdict(config),
        "folder": str(root),
        "labels": prepared.label_names,
        "monitor": task.monitor,
        "best_epoch": result.best_epoch,
        "best_score": result.best_score,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "history": [asdict(h) for h in result.history],
        "train_seconds": round(result.seconds, 2),
        "cache_seconds": round(task.cache_seconds, 2),
        "training_seconds": round(result.seconds + task.cache_seconds, 2),
        "trained_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    info = save_model(model_dir, encoder, split, info)
    collection.forget_embedder(name)  # vectors of an earlier model of this name would be stale
    (model_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: model.json + weights are what count
    return Trained(info, encoder.eval())
