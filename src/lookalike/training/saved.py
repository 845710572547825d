"""A trained embedder on disk, inside its collection, and the loader `lookalike.embedders.create` uses.

    <collection>/models/NAME/
        model.json    method, name, dim, architecture, training settings, figures, split rule and sizes
        weights.pt    state dict of the whole inference network (pixels -> embedding)
        split.json    content hashes of the train and validation images (never evaluated on)

model.json is written last (atomically), so a folder without it is an unfinished training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..embedders import EmbedderError, register_trained_loader
from ..embedders.base import Preprocessing
from ..embedders.pretrained import EFFICIENTNET_LITE_SIZES, efficientnet_lite_preprocessing
from ..embedders.runtime import TorchModelEmbedder
from ..storage import atomic_path, write_json
from .autoencoder import FeatureEncoder
from .data import PIXEL_PREPROCESSING
from .models import EFFICIENTNET_FEATURES, EfficientNetBackbone, Embedding, SmallConvNet, projection_head
from .split import Split

METHODS = ("autoencoder", "siamese", "triplet")
MODEL_FILE, WEIGHTS_FILE, SPLIT_FILE = "model.json", "weights.pt", "split.json"


def build_module(arch: dict) -> Embedding:
    """The inference network described by `arch` (weights are loaded separately)."""
    if arch["backbone"] in EFFICIENTNET_LITE_SIZES:
        # Random init: every weight, pretrained or trained, comes from weights.pt.
        backbone: nn.Module = EfficientNetBackbone(int(arch["trainable_blocks"]), False, arch["backbone"])
        features = EFFICIENTNET_FEATURES
    elif arch["backbone"] == "small-cnn":
        backbone = SmallConvNet(int(arch["features"]), int(arch.get("width", 32)))
        features = int(arch["features"])
    else:
        raise EmbedderError(f"unknown backbone {arch['backbone']!r}")
    dim, head_kind = int(arch["dim"]), arch["head"]
    if head_kind == "mlp":
        head: nn.Module = projection_head(features, dim, int(arch["hidden"]))
    elif head_kind == "feature-encoder":
        head = FeatureEncoder(features, int(arch["hidden"]), dim)
    elif head_kind == "identity":
        head = nn.Identity()
    else:
        raise EmbedderError(f"unknown head {head_kind!r}")
    return Embedding(backbone, head, bool(arch.get("flip_average", False)))


def preprocessing_for(arch: dict) -> Preprocessing:
    if arch["backbone"] in EFFICIENTNET_LITE_SIZES:
        return efficientnet_lite_preprocessing(arch["backbone"])
    return PIXEL_PREPROCESSING


def save_model(model_dir: Path, module: Embedding, split: Split, info: dict) -> dict:
    """Write weights, split and (last) model.json; `info` must hold method, name, dim and architecture."""
    for key in ("method", "name", "dim", "architecture"):
        if key not in info:
            raise ValueError(f"model info lacks {key!r}")
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_dir / WEIGHTS_FILE) as tmp:
        torch.save(module.state_dict(), tmp)
    write_json(model_dir / SPLIT_FILE, split.to_dict())
    info = {**info, "split": {"rule": split.to_dict()["rule"], "counts": split.counts(), "file": SPLIT_FILE}}
    write_json(model_dir / MODEL_FILE, info)
    return info


def read_info(model_dir: Path) -> dict:
    return json.loads((model_dir / MODEL_FILE).read_text())


def read_split(model_dir: Path) -> Split:
    return Split.from_dict(json.loads((model_dir / SPLIT_FILE).read_text()))


def load_module(model_dir: Path) -> tuple[Embedding, dict]:
    info = read_info(model_dir)
    module = build_module(info["architecture"])
    try:
        state = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise EmbedderError(f"trained embedder {info['name']!r} has no weights file in {model_dir}") from exc
    module.load_state_dict(state)
    return module.eval(), info


def load_model(model_dir: Path, runtime: str = "auto") -> TorchModelEmbedder:
    """The loader registered for every training method: a trained model as an ordinary embedder."""
    module, info = load_module(Path(model_dir))
    return TorchModelEmbedder(info["name"], module, int(info["dim"]), preprocessing_for(info["architecture"]), runtime)


for _method in METHODS:
    register_trained_loader(_method, load_model)
