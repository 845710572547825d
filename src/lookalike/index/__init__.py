"""Vector index backends behind one interface (`VectorIndex`), chosen by name."""

from __future__ import annotations

from pathlib import Path

from .base import IndexError_, VectorIndex
from .flat import FlatIndex

DEFAULT_INDEX = "flat"


def create_index(kind: str, dim: int) -> VectorIndex:
    if kind == "flat":
        return FlatIndex(dim)
    raise IndexError_(f"unknown index type {kind!r}; available: flat")


def load_index(path: Path) -> VectorIndex:
    return FlatIndex.load(path)


__all__ = ["DEFAULT_INDEX", "FlatIndex", "IndexError_", "VectorIndex", "create_index", "load_index"]
