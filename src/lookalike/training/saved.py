"""Saving a trained embedder into its collection (the layout is described in `lookalike.embedders.trained`).

The weights, the ONNX export of the same network (checked against PyTorch) and the split are
written first, model.json last (atomically): a folder without model.json is an unfinished run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..embedders.export import export_checked
from ..embedders.networks import Embedding, NormalisedFeatures
from ..embedders.trained import (
    MODEL_FILE,
    ONNX_FILE,
    SPLIT_FILE,
    WEIGHTS_FILE,
    TrainedSource,
    preprocessing_for,
    read_info,
)
from ..storage import atomic_path, write_json
from .split import Split

__all__ = ["MODEL_FILE", "load_module", "read_info", "read_split", "save_model"]


def save_model(model_dir: Path, module: Embedding, split: Split, info: dict) -> dict:
    """Write weights, ONNX file, split and (last) model.json; `info` must hold method, name, dim and architecture."""
    for key in ("method", "name", "dim", "architecture"):
        if key not in info:
            raise ValueError(f"model info lacks {key!r}")
    model_dir.mkdir(parents=True, exist_ok=True)
    module.eval()
    with atomic_path(model_dir / WEIGHTS_FILE) as tmp:
        torch.save(module.state_dict(), tmp)
    preprocessing = preprocessing_for(info["architecture"])
    size = preprocessing.crop
    export_checked(
        NormalisedFeatures(module, preprocessing),
        model_dir / ONNX_FILE,
        example_shape=(2, size, size, 3),
        name=info["name"],
    )
    write_json(model_dir / SPLIT_FILE, split.to_dict())
    info = {**info, "split": {"rule": split.to_dict()["rule"], "counts": split.counts(), "file": SPLIT_FILE}}
    write_json(model_dir / MODEL_FILE, info)
    return info


def read_split(model_dir: Path) -> Split:
    return Split.from_dict(json.loads((model_dir / SPLIT_FILE).read_text()))


def load_module(model_dir: Path) -> tuple[Embedding, dict]:
    """The saved network in PyTorch, with its model.json."""
    info = read_info(model_dir)
    return TrainedSource(model_dir, info).load_module(), info
