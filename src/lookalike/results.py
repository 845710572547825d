"""The values `Collection` takes and returns: queries, search results, sync reports.

Plain data, importing nothing of the package's logic, so any module can name them without importing
`collection` (which re-exports them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .catalog import ImageRecord
from .concepts import Tag, Term

#: progress(stage, done, total); the core library never prints, the CLI draws bars from this
Progress = Callable[[str, int, int], None]
#: a caller's own lock, taken (with the collection's) around each commit: the server's readers-writer lock
WriteLock = Callable[[], AbstractContextManager[object]]
ImageInput = str | os.PathLike[str] | bytes | Image.Image
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SearchResult:
    id: int
    path: str
    label: str | None
    score: float
    rank: int
    #: the image's catalog row (size, content hash, ...)
    record: ImageRecord | None = field(default=None, repr=False, compare=False)
    #: its top concepts (ImageNet classes), when an embedder of the collection is a classifier
    tags: tuple[Tag, ...] = field(default=(), compare=False)
    #: set for an image another catalog indexed into a shared remote index (that catalog's uid): its id is
    #: the remote key (>= 2**32, never a local id), its path is on that catalog's machine, `record` is None
    catalog: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank, "score": self.score, "id": self.id, "label": self.label, "path": self.path,
            "tags": [{"name": t.name, "score": t.score} for t in self.tags], "catalog": self.catalog,
        }  # fmt: skip


@dataclass(frozen=True)
class TextSearch:
    """The answer to a search by words: the images, and how the words were read."""

    text: str
    results: list[SearchResult]
    #: "concepts" (the words matched ImageNet classes) or "text-encoder" (a CLIP-like embedder read them)
    method: str
    #: the embedder whose concepts or text encoder answered
    embedder: str
    #: the terms the words were read as (concept search only)
    terms: tuple[Term, ...] = ()
    #: words left out because they match no concept, each with the closest known words (concept search only)
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class Query:
    """One query of a batched search: an image, an indexed image, or a vector."""

    image: ImageInput | None = None  # a path, bytes or a Pillow image
    id: int | None = None  # an indexed image (searched with its stored vector unless a box is given)
    vector: np.ndarray | None = None  # an embedding already made
    box: Box | None = None  # search only this region of the image (pixels of the upright original)
    exclude: int | None = None  # an id never returned; by default the query's own, when it is indexed


@dataclass(frozen=True)
class Neighbours:
    """A batched search's answer as arrays: per query, hit ids (-1: none) and cosine scores, best first."""

    ids: np.ndarray  # (n_queries, k) int64
    scores: np.ndarray  # (n_queries, k) float32
    #: the embedder searched (None: the collection's default); `results` describes other catalogs' hits from its index
    embedder: str | None = None

    @classmethod
    def empty(cls, n: int, k: int, embedder: str | None = None) -> Neighbours:
        return cls(np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf, dtype=np.float32), embedder)


@dataclass
class SyncReport:
    """What one `sync` did. Paths are absolute."""

    embedder: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unchanged: int = 0
    #: images that already had vectors and only got their concepts (top classes) now
    described: int = 0
    embedded: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        data["images_per_second"] = round(self.images_per_second, 2)
        return data
