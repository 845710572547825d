"""Thumbnails of indexed images, made once and cached in the collection folder.

A thumbnail is named after the image id *and* the start of its content hash, so an
image whose file changed (same id, new content) never gets the old picture back.
Files are written atomically: a reader sees either no thumbnail or a whole one. It is made
only from bytes the caller has checked against the catalog, never from whatever is at the path.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

from ..catalog import ImageRecord
from ..images import DEFAULT_MAX_PIXELS, open_image
from ..storage import atomic_path

THUMBNAIL_SIZE = 256  # longest side, pixels
THUMBNAIL_QUALITY = 85


class ThumbnailCache:
    """`<collection>/thumbnails/<id>-<sha256 prefix>.jpg`, generated on first request."""

    def __init__(self, folder: Path, size: int = THUMBNAIL_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.folder = folder
        self.size = size
        self.max_pixels = max_pixels
        # One lock per image id, so two requests for the same missing thumbnail decode it once.
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path_for(self, record: ImageRecord) -> Path:
        version = (record.sha256 or "unhashed")[:12]
        return self.folder / f"{record.id}-{version}.jpg"

    def get(self, record: ImageRecord, read: Callable[[], bytes]) -> bytes:
        """The JPEG thumbnail of `record`, made now from `read()` (the checked file's bytes) if not cached.

        Served from memory, so a thumbnail deleted meanwhile (the image was removed) never cuts a
        response short; raises `ImageError` if the source is unreadable. When the cache cannot be
        written (a read-only collection), the thumbnail is still returned.
        """
        path = self.path_for(record)
        cached = self._read(path)
        if cached is not None:
            return cached
        try:
            with self._lock_for(record.id):
                cached = self._read(path)
                if cached is not None:
                    return cached
                image = open_image(read(), max_pixels=self.max_pixels, draft_size=(self.size, self.size))
                image.thumbnail((self.size, self.size))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
                data = buffer.getvalue()
                try:
                    with atomic_path(path) as tmp:
                        tmp.write_bytes(data)
                    self._discard_other_versions(record.id, keep=path)
                except OSError:
                    pass  # not cached (read-only or full disk): made again next time
                return data
        finally:
            with self._locks_guard:
                self._locks.pop(record.id, None)

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except OSError:
            return None

    def discard(self, image_id: int) -> None:
        """Forget every cached thumbnail of an image (it was deleted)."""
        self._discard_other_versions(image_id, keep=None)

    def _discard_other_versions(self, image_id: int, keep: Path | None) -> None:
        if not self.folder.is_dir():
            return
        for old in self.folder.glob(f"{int(image_id)}-*.jpg"):
            if old != keep:
                old.unlink(missing_ok=True)  # another request may have removed it first

    def _lock_for(self, image_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(image_id, threading.Lock())
