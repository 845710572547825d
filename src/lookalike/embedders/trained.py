"""Embedders trained on a collection's images, loaded by name like the pretrained ones.

A trained embedder lives inside its collection:

    <collection>/models/NAME/
        model.json    method, name, dim, architecture, training settings, figures, split rule and sizes
        weights.pt    state dict of the whole inference network (pixels -> embedding)
        model.onnx    the same network exported for ONNX Runtime (checked against PyTorch when made)
        split.json    content hashes of the train and validation images (never evaluated on)

model.json is written last (atomically), so a folder without it is an unfinished training run.
Loading needs no PyTorch when model.onnx is there; a model saved without it is exported on first use.
Training (`lookalike.training`) writes these folders; this module only reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .base import EmbedderError, Preprocessing
from .onnx import NetworkSource, OnnxEmbedder
from .runtime import file_identity, short_hash
from .weights import EFFICIENTNET_LITE_SIZES, efficientnet_lite_preprocessing

if TYPE_CHECKING:
    from torch import nn

MODEL_FILE, WEIGHTS_FILE, SPLIT_FILE, ONNX_FILE = "model.json", "weights.pt", "split.json", "model.onnx"

#: Inference preprocessing of the networks trained from pixels: the centre 64x64 of a 72-pixel short side.
PIXEL_PREPROCESSING = Preprocessing(resize=72, crop=64)


def preprocessing_for(arch: dict) -> Preprocessing:
    if arch["backbone"] in EFFICIENTNET_LITE_SIZES:
        return efficientnet_lite_preprocessing(arch["backbone"])
    return PIXEL_PREPROCESSING


def is_trained(models_dir: Path | None, name: str) -> bool:
    return models_dir is not None and (models_dir / name / MODEL_FILE).is_file()


def trained_names(models_dir: Path | None) -> list[str]:
    if models_dir is None or not models_dir.is_dir():
        return []
    return sorted(p.parent.name for p in models_dir.glob(f"*/{MODEL_FILE}"))


def read_info(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / MODEL_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise EmbedderError(f"trained embedder {model_dir.name!r} cannot be read: {exc}") from exc


class TrainedSource(NetworkSource):
    """A trained network: its weights file in the model folder, its ONNX file beside it."""

    def __init__(self, model_dir: Path, info: dict):
        self.model_dir = model_dir
        self.info = info
        self.name = str(info["name"])

    def key(self) -> str:
        return short_hash(self.name, file_identity(self.model_dir / WEIGHTS_FILE))

    def onnx_path(self) -> Path:
        path = self.model_dir / ONNX_FILE
        if path.is_file() or os.access(self.model_dir, os.W_OK):
            return path
        return super().onnx_path()  # saved without one, in a read-only collection: the user's cache

    def load_module(self) -> nn.Module:
        """The trained `Embedding` with its weights, in eval mode (imports PyTorch)."""
        import torch

        from .networks import build_module

        module = build_module(self.info["architecture"])
        try:
            state = torch.load(self.model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise EmbedderError(f"trained embedder {self.name!r} has no weights file") from exc
        module.load_state_dict(state)
        return module.eval()

    def build(self) -> nn.Module:
        from .networks import NormalisedFeatures

        return NormalisedFeatures(self.load_module(), preprocessing_for(self.info["architecture"]))


def load_model(model_dir: Path, runtime: str = "auto") -> OnnxEmbedder:
    """A trained model as an ordinary embedder."""
    model_dir = Path(model_dir)
    info = read_info(model_dir)
    source = TrainedSource(model_dir, info)
    return OnnxEmbedder(info["name"], int(info["dim"]), preprocessing_for(info["architecture"]), source, runtime)
