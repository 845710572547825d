"""Training embedders on the user's own images: autoencoders, siamese, triplet, proxy-anchor, self-supervised.

Training depends on `lookalike.embedders` (the networks it trains and the ONNX export of the
result), never the reverse: a trained model is loaded by `lookalike.embedders.trained`.

Layout:

- `methods/`: the registry, one entry per method (its spec dataclass, whose fields are the options of
  `lookalike train METHOD`, the task that trains it, its defaults); free of PyTorch. Add a method
  with one module there (its docstring says how); nothing else needs to change.
- `run.py`: `TrainingRun` (the shared options: loop, split, name) and the reporting callbacks.
- `session.py`: `train(collection, run)`, from a folder to a saved embedder.
- `task.py`: what a method gives the loop (network, batches, loss, validation), free of PyTorch.
- `loop.py`: the one loop (checkpoints, resume, early stopping); `autoencoder.py`,
  `metric_learning.py`: the built-in methods' tasks; `data.py`, `prepared.py`, `split.py`: data.

The names below are imported on first use, so `lookalike --help` reads the registry without PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .methods import Defaults, Method, all_methods, register
    from .run import LoopConfig, TrainingRun
    from .session import Trained, train


def __getattr__(name: str) -> Any:
    # Plain imports inside the function (not import_module strings), so the import graph sees them.
    if name in ("Trained", "train"):
        from . import session

        return getattr(session, name)
    if name in ("TrainingRun", "LoopConfig"):
        from . import run

        return getattr(run, name)
    if name in ("Method", "Defaults", "register", "all_methods"):
        from . import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'lookalike.training' has no attribute {name!r}")


__all__ = ["Defaults", "LoopConfig", "Method", "Trained", "TrainingRun", "all_methods", "register", "train"]
