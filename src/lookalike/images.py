"""Decoding any image file safely into an RGB Pillow image.

Everything that can go wrong with a file (missing, empty, truncated, not an image,
too many pixels) is raised as one `ImageError`, so callers can skip and report
a bad file without knowing Pillow's many exception types.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions a folder walk picks up. The content decides the decoder, not the name:
# a PNG called .jpg still decodes.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

ORIENTATION_TAG = 0x0112

# About 8k x 11k pixels; anything larger is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485

# 16-bit and float greyscale is scaled to 8 bits this many pixels at a time (a 4 MB float32 strip).
_STRIP_PIXELS = 1 << 20
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class _DecodeSlots:
    """A process-wide limit on images decoded at once: each decode may briefly hold several bytes per pixel."""

    def __init__(self, slots: int):
        self.limit = slots
        self._semaphore = threading.BoundedSemaphore(slots)

    def __enter__(self) -> None:
        self._semaphore.acquire()

    def __exit__(self, *exc: object) -> None:
        self._semaphore.release()


_decode_slots = _DecodeSlots(max(2, os.cpu_count() or 1))


def set_decode_limit(slots: int) -> None:
    """How many images may be decoded at once in this process (default: the number of cores, at least 2)."""
    global _decode_slots
    if slots < 1:
        raise ValueError("the decode limit must be at least 1")
    _decode_slots = _DecodeSlots(slots)


def decode_limit() -> int:
    return _decode_slots.limit


class ImageError(Exception):
    """A file that cannot be decoded as an image, with the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def is_image_name(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def iter_image_files(folder: str | os.PathLike[str], exclude: Path | None = None) -> Iterator[Path]:
    """Every file with an image extension under `folder`, recursively, in a stable order.

    Hidden folders (such as a collection's own `.lookalike/`) and `exclude` are skipped.
    """
    root = Path(folder)
    exclude = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (exclude is None or Path(dirpath, d).resolve() != exclude)
        )
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_name(name):
                yield Path(dirpath, name)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _HIGH_DEPTH_MODES:
        image = _scale_to_8_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float greyscale as 8-bit "L", its actual range stretched to 0..255 (not clipped).

    Converted a strip of rows at a time in float32, so the memory on top of the decoded image is
    one byte per pixel plus one strip, whatever the image's size.
    """
    lo, hi = image.getextrema()
    width, height = image.size
    out = np.zeros((height, width), dtype=np.uint8)
    if hi > lo:
        scale = 255.0 / (float(hi) - float(lo))
        rows = max(1, _STRIP_PIXELS // max(1, width))
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            strip = np.array(image.crop((0, top, width, bottom)), dtype=np.float32)  # a writable copy
            strip -= float(lo)
            strip *= scale
            np.rint(strip, out=strip)
            out[top:bottom] = strip
    return Image.fromarray(out)


def open_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a path or raw bytes to an upright RGB image, or raise `ImageError`.

    `draft_size` lets the JPEG decoder downscale by a power of two while decoding
    (much faster for large photos); the result is never smaller than `draft_size`.
    The upright size before any draft scaling is in `image.info["original_size"]`.
    """
    name = "<upload>" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageError(name, "empty file (0 bytes)")
            fp: io.BytesIO | str | os.PathLike[str] = io.BytesIO(source)
        else:
            if os.path.getsize(source) == 0:
                raise ImageError(name, "empty file (0 bytes)")
            fp = source
        # At most `decode_limit()` images are decoded (and converted) at once in this process.
        with _decode_slots, warnings.catch_warnings():
            # Pillow warns (not raises) between max_pixels and 2 x max_pixels; make it an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(fp) as image:
                    if image.width * image.height > max_pixels:
                        raise ImageError(
                            name,
                            f"image too large ({image.width}x{image.height} pixels, limit {max_pixels})",
                        )
                    width, height = image.size
                    if image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):
                        width, height = height, width  # rotated a quarter turn when made upright
                    if draft_size is not None and image.format == "JPEG":
                        image.draft("RGB", draft_size)
                    image.load()
                    image = ImageOps.exif_transpose(image) or image
                    rgb = _to_rgb(image)
                    rgb.info["original_size"] = (width, height)
                    return rgb
            finally:
                Image.MAX_IMAGE_PIXELS = previous_limit
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, f"image too large (decompression bomb limit): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(name, "not a recognised image format") from exc
    except FileNotFoundError as exc:
        raise ImageError(name, "file not found") from exc
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (a folder, no permission...): never its path
            raise ImageError(name, f"cannot read: {exc.strerror}") from exc
        # Truncated/corrupt data surfaces as OSError ("image file is truncated") or similar.
        raise ImageError(name, f"corrupt or truncated image: {_without_path(exc, name)}") from exc
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(name, f"corrupt or truncated image: {_without_path(exc, name)}") from exc


def _without_path(exc: BaseException, name: str) -> str:
    """An exception's message with the file's path cut down to its name (reasons may reach HTTP clients)."""
    return str(exc).replace(name, os.path.basename(name)) if name != "<upload>" else str(exc)
