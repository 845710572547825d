"""lookalike: offline image similarity search."""

from .collection import Collection, SearchResult, SyncReport
from .images import ImageError, open_image

__version__ = "0.1.0"

__all__ = ["Collection", "ImageError", "SearchResult", "SyncReport", "open_image", "__version__"]
