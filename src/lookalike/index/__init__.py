"""Vector index backends behind one interface (`VectorIndex`), chosen by name or automatically.

Kinds: "flat" (exact), "flat-fp16" (a scan of 16-bit copies, re-scored exactly), "hnsw", "hnsw-sq8",
"ivf", "ivf-sq8", "ivf-pq", "ivf-pq-flat" (see specs.py),
and "auto", which follows `choose_index_kind` as the collection grows.
"""

from __future__ import annotations

from pathlib import Path

from .base import IndexError_, IndexOwner, VectorIndex
from .choose import choose_index_kind
from .faiss_index import MAGIC, FaissIndex
from .flat import FlatIndex, load_legacy
from .specs import SPECS

DEFAULT_INDEX = "auto"
INDEX_KINDS = ("auto", *SPECS)


def check_index_kind(kind: str) -> None:
    """Raise `IndexError_` for a kind `create_index` would refuse (Milvus kinds are checked when connecting)."""
    if not kind.startswith("milvus") and kind not in INDEX_KINDS:
        raise IndexError_(f"unknown index type {kind!r}; available: {', '.join(INDEX_KINDS)}")


def create_index(kind: str, dim: int, *, name: str = "vectors", owner: IndexOwner | None = None) -> VectorIndex:
    """An empty index of `kind` (a name in INDEX_KINDS, or a Milvus kind: see milvus.py).

    `name` (the embedder) names the remote collection of a Milvus kind, and `owner` (the catalog) the
    part of it this index writes, since several catalogs may share it; local kinds ignore both.

    "auto" needs no expected size: the first `add` builds the structure `choose_index_kind` picks for
    that many vectors, and later growth moves it up (flat-fp16 -> hnsw -> hnsw-sq8) by a rebuild.
    """
    if kind.startswith("milvus"):  # imported only when used: faiss-only installs need no pymilvus
        from .milvus import MilvusIndex

        return MilvusIndex.create(kind, dim, name, owner)
    check_index_kind(kind)
    return FaissIndex(dim, kind)


def load_index(path: Path, owner: IndexOwner | None = None) -> VectorIndex:
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head.startswith(b"{"):  # a JSON marker naming a Milvus collection
        from .milvus import MilvusIndex

        return MilvusIndex.load(path, owner)
    is_ours = head == MAGIC
    return FaissIndex.load(path) if is_ours else load_legacy(path)


__all__ = [
    "DEFAULT_INDEX",
    "INDEX_KINDS",
    "FaissIndex",
    "FlatIndex",
    "IndexError_",
    "IndexOwner",
    "VectorIndex",
    "check_index_kind",
    "choose_index_kind",
    "create_index",
    "load_index",
]
