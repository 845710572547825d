"""The interface every vector index backend implements.

Vectors are float32 and L2-normalised, so a higher inner product means more similar
(cosine similarity). Ids are the catalog's image ids (int64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Ids at or above this that an index's search returns are images of other catalogs sharing a remote index
#: (Milvus: their remote keys); a catalog's own image ids stay below it.
FOREIGN_IDS_FROM = 1 << 32

#: progress(stage, done, total): how a long index operation reports progress (the library never prints)
Progress = Callable[[str, int, int], None]


class IndexError_(RuntimeError):
    """A vector index cannot be built, loaded or reached."""


@runtime_checkable
class VectorIndex(Protocol):
    dim: int
    #: a short description such as "Flat" or "HNSW32", shown in stats and reports
    kind: str

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under `ids`; an id already present is replaced."""

    def remove(self, ids: np.ndarray) -> None:
        """Remove `ids`; ids not present are ignored."""

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; missing results have id -1, score -inf.

        `allowed_ids` restricts the search to those ids (for example one label).
        """

    def save(self, path: Path) -> None:
        """Write to `path` atomically: readers see the old file or the new one, never half."""


class IndexOwner(Protocol):
    """The catalog whose images an index holds, for a backend that one store shares between catalogs (Milvus).

    `uid` names the catalog for good (the same after a restart, different for every catalog); `get_many`
    gives the records (with `.path` and `.label`) of image ids, which such a backend stores beside each
    vector so that other catalogs can show what they find.
    """

    def uid(self) -> str: ...

    def get_many(self, ids: Iterable[int]) -> Mapping[int, Any]: ...


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a 1-d array: `np.unique` without its import of numpy.ma, which costs
    a cold process about 0.1 s (searches call this on every query)."""
    ordered = np.sort(np.asarray(values).ravel())
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]
