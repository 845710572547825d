"""Thumbnails of indexed images, made once and cached in the collection folder.

A thumbnail is named after the image id *and* the start of its content hash, so an
image whose file changed (same id, new content) never gets the old picture back.
Files are written atomically: a reader sees either no thumbnail or a whole one.
"""

from __future__ import annotations

import threading
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

    def get(self, record: ImageRecord) -> Path:
        """The thumbnail file of `record`, made now if missing; raises `ImageError` if the source is unreadable."""
        path = self.path_for(record)
        if path.is_file():
            return path
        try:
            with self._lock_for(record.id):
                if path.is_file():
                    return path
                image = open_image(record.path, max_pixels=self.max_pixels, draft_size=(self.size, self.size))
                image.thumbnail((self.size, self.size))
                with atomic_path(path) as tmp:
                    image.save(tmp, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
                self._discard_other_versions(record.id, keep=path)
                return path
        finally:
            with self._locks_guard:
                self._locks.pop(record.id, None)

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
