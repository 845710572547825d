"""Decoding every kind of file a photo folder holds: clear errors for the bad ones, RGB for the rest."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import images
from lookalike.images import ImageError, iter_image_files, open_image


def _save(image: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    image.save(path, format=fmt, **kw)
    return path


@pytest.fixture()
def cat_jpeg(data_dir: Path) -> Path:
    return data_dir / "cat" / "cat.1.jpg"


def test_real_photo_decodes_to_rgb(cat_jpeg: Path) -> None:
    image = open_image(cat_jpeg)
    assert image.mode == "RGB"
    assert image.info["original_size"] == Image.open(cat_jpeg).size


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file, not a picture\n", "not a recognised image format"),
    ],
)
def test_empty_and_non_image_files_raise_image_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        open_image(path)
    with pytest.raises(ImageError, match=reason):
        open_image(content)


def test_truncated_jpeg_raises_image_error(tmp_path: Path, cat_jpeg: Path) -> None:
    data = cat_jpeg.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        open_image(path)


def test_corrupt_bytes_inside_a_jpeg_raise_image_error(tmp_path: Path, cat_jpeg: Path) -> None:
    data = bytearray(cat_jpeg.read_bytes())
    data[2:400] = b"\x00" * 398  # wipe the header segments
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError):
        open_image(path)


def test_missing_file_raises_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP"])
def test_extension_that_lies_still_decodes(tmp_path: Path, cat_jpeg: Path, fmt: str) -> None:
    real = Image.open(cat_jpeg).convert("RGB")
    path = _save(real, tmp_path / "actually_not_a.jpg", fmt)
    image = open_image(path)
    assert image.mode == "RGB" and image.size == real.size


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # A 40x20 image, left half red, stored with "rotate 90 CW to display" (orientation 6).
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(image, tmp_path / "rotated.jpg", "JPEG", exif=exif, quality=95)
    upright = open_image(path)
    assert upright.size == (20, 40)
    assert upright.info["original_size"] == (20, 40)
    top = np.asarray(upright)[2, 10]
    assert top[0] > 200 and top[2] < 60, "the red half should now be on top"


def test_upright_size_reads_the_header_as_open_image_sizes_the_photo(cat_jpeg: Path) -> None:
    data = cat_jpeg.read_bytes()
    assert images.upright_size(data) == open_image(data).info["original_size"] == (300, 280)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show: the upright size is the stored one turned
    buffer = io.BytesIO()
    with Image.open(cat_jpeg) as photo:
        photo.save(buffer, format="JPEG", exif=exif)
    rotated = buffer.getvalue()
    assert images.upright_size(rotated) == open_image(rotated).info["original_size"] == (280, 300)
    with pytest.raises(ImageError, match="not a recognised image format"):
        images.upright_size(b"not an image")
    with pytest.raises(ImageError):
        images.upright_size(data[:20])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
        lambda: Image.new("P", (16, 16), 3),
        lambda: Image.new("LA", (16, 16), (128, 255)),
        lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 128)),
        lambda: Image.new("L", (16, 16), 77),
        lambda: Image.new("1", (16, 16), 1),
    ],
    ids=["cmyk", "palette", "la", "rgba", "grey", "bilevel"],
)
def test_any_mode_becomes_rgb(tmp_path: Path, make) -> None:
    image = make()
    fmt = "TIFF" if image.mode == "CMYK" else "PNG"
    path = _save(image, tmp_path / f"img.{fmt.lower()}", fmt)
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (16, 16)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    path = _save(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), tmp_path / "clear.png", "PNG")
    assert tuple(np.asarray(open_image(path))[4, 4]) == (255, 255, 255)


def test_16_bit_greyscale_keeps_its_contrast(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(open_image(path))
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize(
    ("mode", "fmt", "values"),
    [
        ("I;16", "PNG", lambda rng: rng.integers(300, 60_000, (37, 53)).astype(np.uint16)),
        ("I", "TIFF", lambda rng: rng.integers(-70_000, 2_000_000, (37, 53)).astype(np.int32)),
        ("F", "TIFF", lambda rng: rng.normal(5.0, 3.0, (37, 53)).astype(np.float32)),
    ],
)
def test_deep_greyscale_is_stretched_strip_by_strip_like_the_exact_scaling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, fmt: str, values
) -> None:
    # Strips of 5 rows (at most 256 pixels here): several strips and a short last one.
    monkeypatch.setattr(images, "_STRIP_PIXELS", 256)
    pixels = values(np.random.default_rng(0))
    path = tmp_path / f"deep.{fmt.lower()}"
    Image.fromarray(pixels).save(path, format=fmt)
    assert Image.open(path).mode == mode
    exact = pixels.astype(np.float64)
    expected = np.round((exact - exact.min()) * (255.0 / (exact.max() - exact.min())))
    out = np.asarray(open_image(path))
    assert out.shape == (37, 53, 3)
    assert (out[..., 0] == out[..., 2]).all()
    difference = np.abs(out[..., 0].astype(np.int16) - expected.astype(np.int16))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # float32 rounding at most
    assert out.min() == 0 and out.max() == 255


def test_flat_deep_greyscale_is_black(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.full((9, 9), 4000, dtype=np.uint16)), tmp_path / "flat.png", "PNG")
    assert np.asarray(open_image(path)).max() == 0


def test_decodes_at_once_are_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cat_jpeg: Path) -> None:
    """However many threads decode, at most the limit convert at once (each holds a decoded image)."""
    previous = images.decode_limit()
    images.set_decode_limit(2)
    inside, most = 0, 0
    guard = threading.Lock()
    convert = images._to_rgb

    def slow_convert(image: Image.Image) -> Image.Image:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with guard:
            inside -= 1
        return convert(image)

    monkeypatch.setattr(images, "_to_rgb", slow_convert)
    data = cat_jpeg.read_bytes()
    try:
        threads = [threading.Thread(target=open_image, args=(data,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        images.set_decode_limit(previous)
    assert most == 2
    with pytest.raises(ValueError):
        images.set_decode_limit(0)


def test_unreadable_paths_are_not_named_in_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "private" / "cat.1005.jpg"
    folder.mkdir(parents=True)  # an indexed file replaced by a folder
    with pytest.raises(ImageError) as caught:
        open_image(folder)
    assert "private" not in caught.value.reason and "cannot read" in caught.value.reason


def test_decompression_bomb_gets_a_clear_error(tmp_path: Path) -> None:
    path = _save(Image.new("L", (3000, 3000)), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageError, match="3000x3000 pixels is 9 MP, the limit is 1 MP"):
        open_image(path, max_pixels=1_000_000)
    # Between the limit and twice the limit Pillow itself would only warn; that must still be refused.
    with pytest.raises(ImageError, match="9 MP, the limit is 5 MP"):
        open_image(path, max_pixels=5_000_000)
    assert open_image(path, max_pixels=10_000_000).size == (3000, 3000)


def _big_jpeg(cat_jpeg: Path, size: tuple[int, int], **save: object) -> bytes:
    data = io.BytesIO()
    Image.open(cat_jpeg).convert("RGB").resize(size).save(data, "JPEG", **save)
    return data.getvalue()


def test_a_jpeg_over_the_pixel_limit_is_decoded_reduced(cat_jpeg: Path) -> None:
    data = _big_jpeg(cat_jpeg, (2000, 1500))
    full = open_image(data)
    assert full.size == (2000, 1500)
    half = open_image(data, max_pixels=1_000_000)  # 3 MP over a 1 MP limit: decoded at 1/2
    assert half.size == (1000, 750)
    assert half.info["original_size"] == (2000, 1500)
    quarter = open_image(data, max_pixels=200_000)
    assert quarter.size == (500, 375)
    # The decoder's reduction is the picture, smaller: close to a resize of the full decode.
    resized = np.asarray(full.resize(quarter.size, Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(np.asarray(quarter, dtype=np.float64) - resized).mean() < 4
    # A draft size asked for on top of the limit: the larger of the two reductions.
    assert open_image(data, max_pixels=1_000_000, draft_size=(256, 256)).size == (500, 375)
    with pytest.raises(ImageError, match=r"3 MP; JPEGs are decoded at up to 1/8 scale.*limit of 0.04 MP"):
        open_image(data, max_pixels=40_000)  # 1/8 is 250x188, still over


def test_a_rotated_large_jpeg_reports_its_upright_size(cat_jpeg: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    image = open_image(_big_jpeg(cat_jpeg, (2000, 1500), exif=exif), max_pixels=1_000_000)
    assert image.size == (750, 1000)
    assert image.info["original_size"] == (1500, 2000)


def test_a_progressive_jpeg_over_the_limit_is_refused(cat_jpeg: Path) -> None:
    data = _big_jpeg(cat_jpeg, (2000, 1500), progressive=True)
    assert open_image(data).size == (2000, 1500)
    with pytest.raises(ImageError, match="3 MP, the limit is 1 MP; progressive JPEGs cannot be decoded reduced"):
        open_image(data, max_pixels=1_000_000)


def test_draft_decoding_keeps_at_least_the_requested_size(cat_jpeg: Path) -> None:
    data = io.BytesIO()
    Image.open(cat_jpeg).convert("RGB").resize((1000, 800)).save(data, "JPEG")
    image = open_image(data.getvalue(), draft_size=(256, 256))
    assert min(image.size) >= 256 and image.size[0] < 1000
    assert image.info["original_size"] == (1000, 800)


def test_folder_walk_is_recursive_sorted_and_skips_hidden(tmp_path: Path, cat_jpeg: Path) -> None:
    for rel in ["b/2.jpg", "a/1.JPG", "a/deep/3.png", ".lookalike/x.jpg", "a/.hidden.jpg", "a/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cat_jpeg, tmp_path / rel)
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert found == ["a/1.JPG", "a/deep/3.png", "b/2.jpg"]
