"""One training run from start to saved embedder: split, caches, the loop, saving.

`train(collection, run)` looks the method up in the registry (`training.methods`), builds its
spec and loop settings from the run (`TrainingRun.resolve`), lets the method's task build its
network and data, runs the one loop and saves the task's `embedding`. Nothing here names a
method: a new one only registers itself. Progress goes through callbacks (`progress`, `figures`,
`on_epoch`); the library draws nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..collection import Collection
from ..embedders.networks import Embedding
from .loop import CHECKPOINT, EpochRecord, fit, seed_everything
from .prepared import Prepared
from .run import Figures, Progress, TrainingRun
from .saved import MODEL_FILE, save_model
from .split import Split

__all__ = ["Trained", "TrainingRun", "train"]


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
    figures: Figures | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> Trained:
    """Train, save into `collection.models_dir/NAME` and return the saved model.

    Run the same call again after an interruption: it resumes from the last epoch's checkpoint.
    `progress(stage, done, total)` hears about the sync, the caches and each epoch's steps,
    `figures(stage, values)` about the running loss and each epoch's validation score, `on_epoch`
    gets each finished epoch's record.
    """
    method, spec, config, name = run.resolve()
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
    task = method.load_task()(spec, prepared)  # builds the network first, then its data

    run_config = {"method": run.method, "spec": asdict(spec), "split": _split_digest(split)}
    result = fit(task, model_dir, config, run_config=run_config, progress=progress, figures=figures, on_epoch=on_epoch)
    finished = task.finish()  # a last closed-form step, if the method has one; may amend the architecture
    encoder = task.embedding
    info = {
        "method": run.method,
        "name": name,
        "dim": int(spec.architecture()["dim"]),
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
        **finished,
    }
    info = save_model(model_dir, encoder, split, info)
    collection.forget_embedder(name)  # vectors of an earlier model of this name would be stale
    (model_dir / CHECKPOINT).unlink(missing_ok=True)  # finished: model.json + weights are what count
    return Trained(info, encoder.eval())
