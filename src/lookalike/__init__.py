"""lookalike: offline image similarity search.

The names below are imported on first use (PEP 562), so `lookalike --help` and the command
line's argument parsing do not pay for numpy, Pillow and faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Collection": "collection",
    "Neighbours": "results",
    "Query": "results",
    "SearchResult": "results",
    "SyncReport": "results",
    "TextSearch": "results",
    "ImageError": "images",
    "open_image": "images",
}

if TYPE_CHECKING:
    from .collection import Collection
    from .images import ImageError, open_image
    from .results import Neighbours, Query, SearchResult, SyncReport, TextSearch


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")


__all__ = [
    "Collection",
    "ImageError",
    "Neighbours",
    "Query",
    "SearchResult",
    "SyncReport",
    "TextSearch",
    "__version__",
    "open_image",
]
