"""Atomic file writes (a temporary file beside the target, then a rename), and the errors of a failed write."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: where a collection lives unless told otherwise
DEFAULT_COLLECTION_DIR = ".lookalike"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path` in one rename, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class CollectionWriteError(RuntimeError):
    """A change could not be written to the collection's folder; nothing of it was kept."""


class ReadOnlyCollectionError(CollectionWriteError):
    """The collection's folder (or its catalog) cannot be written: it can be searched, not changed."""


class DiskFullError(CollectionWriteError):
    """The disk holding the collection is full."""


_SQLITE_READONLY = 8
_SQLITE_FULL = 13


def write_error(exc: BaseException, what: str) -> CollectionWriteError | None:
    """`exc` as a clear error if it means the disk is full or read-only (else None): `what` failed."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        primary = code & 0xFF
        if primary == _SQLITE_FULL:
            return DiskFullError(f"{what}: the disk is full")
        if primary == _SQLITE_READONLY:
            return ReadOnlyCollectionError(f"{what}: the collection is read-only")
        return None
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(f"{what}: the disk is full")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return ReadOnlyCollectionError(f"{what}: the collection is read-only ({exc.strerror})")
    return None
