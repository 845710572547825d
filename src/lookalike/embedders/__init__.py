"""Embedders by name: a registry, so callers never import a concrete embedder.

Built-in (pretrained) embedders register a factory here; embedders trained on the user's
images are saved inside a collection (`models/NAME/model.json`) and loaded by `trained.load_model`,
or by a loader registered for their training method. Nothing here imports PyTorch: a network is
built only to export it once (see `onnx.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import copy, hub, pretrained, trained
from .base import Embedder, EmbedderError, Preprocessing, l2_normalise

DEFAULT_EMBEDDER = "efficientnet-lite0-gem-ms"

# name -> factory(weights=None, runtime="auto") -> Embedder
_BUILTIN: dict[str, Callable[..., Embedder]] = {
    "efficientnet-lite0": pretrained.efficientnet_lite0,
    "efficientnet-lite1": pretrained.efficientnet_lite1,
    "efficientnet-lite2": pretrained.efficientnet_lite2,
    # label-free variants of the default (issue 14; figures in benchmarks/README.md)
    "efficientnet-lite0-gem": pretrained.efficientnet_lite0_gem,
    "efficientnet-lite0-ms": pretrained.efficientnet_lite0_ms,
    "efficientnet-lite0-gem-ms": pretrained.efficientnet_lite0_gem_ms,
    "resnet50": pretrained.resnet50,
    "vgg16": pretrained.vgg16,
    # the copy-detection descriptor of the duplicates' near tier (embedders/copy.py)
    copy.NAME: copy.copy_lite0,
    # timm / open_clip networks, when their weights are on this machine (embedders/hub.py)
    **{name: hub.factory(name) for name in hub.MODELS},
}

# training method -> loader(model_dir, runtime="auto") -> Embedder; the default loader reads every
# architecture `networks.build_module` knows
_TRAINED_LOADERS: dict[str, Callable[..., Embedder]] = {}


def register(name: str, factory: Callable[..., Embedder]) -> None:
    _BUILTIN[name] = factory


def reads_text(name: str) -> bool:
    """Whether the built-in embedder `name` has a text encoder (known without building it)."""
    return name in hub.MODELS and hub.MODELS[name].library == "open_clip"


def register_hub_model(model: hub.HubModel) -> None:
    """Make a timm or open_clip network (weights from a file or the Hugging Face cache) an embedder."""
    hub.MODELS[model.name] = model
    register(model.name, hub.factory(model.name))


def register_trained_loader(method: str, loader: Callable[..., Embedder]) -> None:
    _TRAINED_LOADERS[method] = loader


def builtin_names() -> list[str]:
    return sorted(_BUILTIN)


def trained_names(models_dir: Path | None) -> list[str]:
    return trained.trained_names(models_dir)


def available(models_dir: Path | None = None) -> list[str]:
    return builtin_names() + trained_names(models_dir)


def create(
    name: str,
    *,
    weights: str | Path | None = None,
    runtime: str = "auto",
    models_dir: Path | None = None,
) -> Embedder:
    """Build the embedder called `name`: a built-in one, or one trained into `models_dir`."""
    if models_dir is not None and trained.is_trained(models_dir, name):
        method = trained.read_info(models_dir / name).get("method")
        loader = _TRAINED_LOADERS.get(str(method), trained.load_model)
        return loader(models_dir / name, runtime=runtime)
    if name not in _BUILTIN:
        raise EmbedderError(f"unknown embedder {name!r}; available: {', '.join(available(models_dir))}")
    return _BUILTIN[name](weights=weights, runtime=runtime)


__all__ = [
    "DEFAULT_EMBEDDER",
    "Embedder",
    "EmbedderError",
    "Preprocessing",
    "available",
    "builtin_names",
    "create",
    "l2_normalise",
    "register",
    "reads_text",
    "register_hub_model",
    "register_trained_loader",
]
