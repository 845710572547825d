"""Decoding any image file safely into an RGB Pillow image.

Everything that can go wrong with a file (missing, empty, truncated, not an image,
too many pixels) is raised as one `ImageError`, so callers can skip and report
a bad file without knowing Pillow's many exception types.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions a folder walk picks up. The content decides the decoder, not the name:
# a PNG called .jpg still decodes.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".avif"}
    | {".heic", ".heif", ".hif"}
)

# HEIF/HEIC (what iPhones and many Android phones write) is decoded by pillow-heif, an optional dependency
# (`lookalike[heif]`: its wheel bundles an HEVC encoder under the GPL). Importing it takes about 0.3 s, so it
# is loaded only when a file Pillow cannot identify has a HEIF header; AVIF is Pillow's own.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
HEIF_MISSING = "HEIC/HEIF image: decoding it needs pillow-heif (pip install 'lookalike[heif]')"
_HEIF_LOCK = threading.Lock()
_heif_opener: bool | None = None  # None: not tried yet; then whether pillow-heif's Pillow plugin is registered

ORIENTATION_TAG = 0x0112

# About 8k x 11k pixels decoded at most (Pillow's own default); larger JPEGs are decoded reduced.
DEFAULT_MAX_PIXELS = 89_478_485
JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: a JPEG with extra frames, as many phones write

_PILLOW_LIMIT_LOCK = threading.Lock()


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


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} MP"


def is_heif(header: bytes) -> bool:
    """Whether a file's first 12 bytes are those of a HEIF image (an ISO-BMFF `ftyp` box of a HEIF brand)."""
    return header[4:8] == b"ftyp" and header[8:12] in HEIF_BRANDS


def heif_support() -> bool:
    """Whether HEIF images can be decoded: pillow-heif's Pillow plugin, registered at the first call."""
    global _heif_opener
    with _HEIF_LOCK:
        if _heif_opener is None:
            try:
                import pillow_heif
            except ImportError:
                _heif_opener = False
            else:
                pillow_heif.register_heif_opener()
                _heif_opener = True
        return _heif_opener


def _open_unchecked(fp: io.BytesIO | str | os.PathLike[str], name: str = "<bytes>") -> Image.Image:
    """`Image.open` (it reads the header only) without Pillow's own pixel limit; a HEIF file
    with pillow-heif's plugin (`heif_support`), or `ImageError` saying what to install.

    `open_image` checks the size itself before anything is decoded, with room for JPEGs
    decoded reduced. Pillow's limit is a process-wide setting, so it is lifted under a lock,
    only for the time of the header parse, and put back.
    """
    try:
        return _open_without_limit(fp)
    except UnidentifiedImageError:
        if isinstance(fp, io.BytesIO):
            header = fp.getvalue()[:12]
        else:
            with open(fp, "rb") as f:
                header = f.read(12)
        if not is_heif(header):
            raise
        if not heif_support():
            raise ImageError(name, HEIF_MISSING) from None
        if isinstance(fp, io.BytesIO):
            fp.seek(0)
        try:
            return _open_without_limit(fp)
        except UnidentifiedImageError:
            raise ImageError(name, "corrupt or truncated image: a HEIF header, no image pillow-heif can read") from None


def _open_without_limit(fp: io.BytesIO | str | os.PathLike[str]) -> Image.Image:
    with _PILLOW_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _power_of_two_at_most(value: int) -> int:
    return next(s for s in (8, 4, 2, 1) if value >= s)


def _jpeg_scale(width: int, height: int, max_pixels: int) -> int | None:
    """The smallest JPEG draft scale (1, 2, 4 or 8) that decodes at most `max_pixels`, or None."""
    for scale in (1, 2, 4, 8):
        if -(-width // scale) * -(-height // scale) <= max_pixels:
            return scale
    return None


def open_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a path or raw bytes to an upright RGB image, or raise `ImageError`.

    At most `max_pixels` are ever decoded, so memory per decode stays bounded. A baseline
    JPEG with more pixels (a phone's 48-200 megapixel photo) is decoded reduced by 2, 4 or 8
    in each direction (JPEG draft mode: the decoder itself scales, the full image never
    exists in memory) to fit; any other file over the limit, and a progressive JPEG (its
    decoder holds the whole image's coefficients), is refused with "N MP, the limit is M MP".

    `draft_size` lets the JPEG decoder downscale further, by a power of two, while decoding
    (much faster for large photos); the result is never smaller than `draft_size`.
    The upright size before any reduction is in `image.info["original_size"]`; boxes given
    in those pixels must be scaled by `image.size / original_size`.
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
        with _decode_slots, _open_unchecked(fp, name) as image:
            width, height = image.size
            pixels = width * height
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            scale = 1
            if image.format in JPEG_FORMATS and not progressive and len(image.tile) == 1:
                found = _jpeg_scale(width, height, max_pixels)
                if found is None:
                    raise ImageError(
                        name,
                        f"image too large: {width}x{height} pixels is {_megapixels(pixels)}; JPEGs are decoded "
                        f"at up to 1/8 scale, which still leaves more than the limit of {_megapixels(max_pixels)}",
                    )
                scale = found
                if draft_size is not None and draft_size[0] > 0 and draft_size[1] > 0:
                    wanted = min(width // draft_size[0], height // draft_size[1])
                    scale = max(scale, _power_of_two_at_most(max(1, wanted)))
                if scale > 1:
                    image.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            elif pixels > max_pixels:
                why = "; progressive JPEGs cannot be decoded reduced" if progressive else ""
                raise ImageError(
                    name,
                    f"image too large: {width}x{height} pixels is {_megapixels(pixels)}, "
                    f"the limit is {_megapixels(max_pixels)}{why}",
                )
            if image.width * image.height > max_pixels:  # the decoder did not reduce as asked
                limit = _megapixels(max_pixels)
                raise ImageError(name, f"image too large: {_megapixels(pixels)}, the limit is {limit}")
            if image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):
                width, height = height, width  # rotated a quarter turn when made upright
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
            rgb.info["original_size"] = (width, height)
            return rgb
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(name, f"image too large: {exc}") from exc
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


def upright_size(data: bytes) -> tuple[int, int]:
    """The upright (width, height) of an image from its header alone, nothing decoded; `ImageError` if it
    is not a readable image. The size `open_image` gives in `info["original_size"]`, for a fraction of the work."""
    try:
        with _open_unchecked(io.BytesIO(data)) as image:
            width, height = image.size
            if image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):
                width, height = height, width
            return width, height
    except UnidentifiedImageError as exc:
        raise ImageError("<bytes>", "not a recognised image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError("<bytes>", f"corrupt or truncated image: {exc}") from exc


def _without_path(exc: BaseException, name: str) -> str:
    """An exception's message with the file's path cut down to its name (reasons may reach HTTP clients)."""
    return str(exc).replace(name, os.path.basename(name)) if name != "<upload>" else str(exc)
