"""Build a copy-detection set from any image folders: originals, their edited copies, and distractors.

    .venv/bin/python benchmarks/copydetect.py --out /tmp/copydetect/set-seed0
    .venv/bin/python benchmarks/copydetect.py --out DIR --sources A B --originals 150 --distractors 1000 --seed 0

Each source folder is walked recursively (sorted), its image files are shuffled with the seed, and
originals and distractors are drawn from it in turn (split evenly over the sources; a source that runs
short leaves its share to the others). A file is skipped when it does not decode, when its bytes equal
a file already taken (so no two originals or distractors are identical), when it matches --exclude, or
(originals only) when its shorter side is below --min-side. The default --exclude drops Caltech-101's
`Faces_easy` class, which holds crops of the `Faces` photos: unplanted copies would count as errors.

Every original gets one copy per transform (`TRANSFORMS`, tiers `exact`, `mild`, `strong`), named
`copies/<original>_<transform>.<ext>`. Random choices (crop offsets, angles' sign, texts, frame kinds)
come from a generator seeded by (seed, original, transform), so a set depends only on the sources, the
options and the Pillow build. Everything is drawn with Pillow (its default font for text).

Layout of --out:
    originals/o0001.jpg ...       the original files, byte for byte (extension kept)
    copies/o0001_flip.jpg ...     one edited copy per original and transform
    distractors/d0001.jpg ...     other photos, byte for byte, none identical to an original
    manifest.json                 what came from where, and which copy belongs to which original
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import random
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = [REPO.parent / "shared" / "data" / "caltech101-dev", REPO.parent / "shared" / "data" / "catsdogs"]
DEFAULT_EXCLUDE = ["Faces_easy/*"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TIERS = ("exact", "mild", "strong")
MANIFEST_VERSION = 1
JPEG_QUALITY = 95  # copies whose transform is not about compression are saved at this quality

PHRASES = [
    "SUMMER SALE 50% OFF",
    "Look who is here!",
    "Best day ever",
    "Not again...",
    "(c) 2024 Photo Studio",
    "When the coffee kicks in",
    "FOR SALE - call now",
    "Monday mood",
    "Holiday memories",
    "Guess where I am",
    "LIMITED EDITION",
    "Happy birthday!",
    "Found this today",
    "Nobody: / Me:",
    "Weekend plans",
    "This is fine",
]
WORDS = ["photos", "gallery", "share", "album", "img", "media", "post", "view", "cdn", "pics"]


# --- transforms ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """One kind of edit: `apply(image, rng) -> (edited image, parameters for the manifest)`.

    `save` is "jpeg" (at `quality`), "png", or "bytes" (the original file copied unchanged).
    """

    name: str
    tier: str
    description: str
    apply: Callable[[Image.Image, random.Random], tuple[Image.Image, dict]] | None
    save: str = "jpeg"
    quality: int = JPEG_QUALITY


TRANSFORMS: dict[str, Transform] = {}


def transform(name: str, tier: str, description: str, save: str = "jpeg", quality: int = JPEG_QUALITY):
    """Register a transform under `name` (the decorated function is its `apply`)."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")

    def register(fn: Callable[[Image.Image, random.Random], tuple[Image.Image, dict]] | None):
        TRANSFORMS[name] = Transform(name, tier, description, fn, save, quality)
        return fn

    return register


TRANSFORMS["bytes"] = Transform("bytes", "exact", "the original file copied byte for byte", None, save="bytes")


@transform("png", "exact", "the decoded pixels re-encoded losslessly as PNG (pixel-identical)", save="png")
def _png(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return img, {}


@transform("half", "mild", "resized to half the width and half the height (Lanczos)")
def _half(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    size = (max(1, img.width // 2), max(1, img.height // 2))
    return img.resize(size, Image.Resampling.LANCZOS), {"size": list(size)}


@transform("jpeg30", "mild", "re-encoded as JPEG at quality 30", quality=30)
def _jpeg30(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return img, {"quality": 30}


@transform("flip", "mild", "mirrored left to right")
def _flip(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return ImageOps.mirror(img), {}


@transform("bright", "mild", "brightness +30%")
def _bright(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return ImageEnhance.Brightness(img).enhance(1.3), {"factor": 1.3}


@transform("grey", "mild", "greyscale (one channel)")
def _grey(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return ImageOps.grayscale(img), {}


@transform("crop90", "mild", "cropped to 90% of the width and height at a random position")
def _crop90(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return crop(img, 0.9, rng)


@transform("rotate5", "mild", "rotated 5 degrees either way, same size, black corners")
def _rotate5(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    angle = rng.choice([-5, 5])
    return img.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0)), {"angle": angle}


@transform("blur", "mild", "Gaussian blur, radius 0.75% of the shorter side (at least 1 pixel)")
def _blur(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    radius = round(max(1.0, 0.0075 * min(img.size)), 2)
    return img.filter(ImageFilter.GaussianBlur(radius)), {"radius": radius}


@transform("crop60", "strong", "cropped to 60% of the width and height at a random position")
def _crop60(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    return crop(img, 0.6, rng)


@transform("rotate15", "strong", "rotated 15 degrees either way, canvas expanded to hold it, black corners")
def _rotate15(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    angle = rng.choice([-15, 15])
    return img.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0)), {"angle": angle}


@transform("text", "strong", "one or two lines of large outlined text over the photo")
def _text(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    out = img.copy()
    draw = ImageDraw.Draw(out)
    lines = rng.sample(PHRASES, rng.choice([1, 2]))
    size = max(10, out.height // 7)
    font = fit_font(draw, lines, size, 0.92 * out.width)
    fill, stroke = rng.choice([("white", "black"), ("yellow", "black"), ("black", "white"), ("red", "white")])
    line_height = font.size * 1.15
    position = rng.choice(["top", "middle", "bottom"])
    block = line_height * len(lines)
    y0 = {"top": 0.05 * out.height, "middle": (out.height - block) / 2, "bottom": 0.95 * out.height - block}[position]
    for i, line in enumerate(lines):
        width = draw.textlength(line, font=font)
        xy = ((out.width - width) / 2, y0 + i * line_height)
        draw.text(xy, line, font=font, fill=fill, stroke_width=max(1, font.size // 12), stroke_fill=stroke)
    return out, {"lines": lines, "font_size": font.size, "position": position, "fill": fill}


@transform("caption", "strong", "a meme-style white caption bar with black text added above or below the photo")
def _caption(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    bar = max(24, round(0.22 * img.height))
    where = rng.choice(["above", "below"])
    out = Image.new("RGB", (img.width, img.height + bar), "white")
    out.paste(img, (0, bar if where == "above" else 0))
    draw = ImageDraw.Draw(out)
    line = rng.choice(PHRASES)
    font = fit_font(draw, [line], round(0.45 * bar), 0.92 * img.width)
    top = 0 if where == "above" else img.height
    width = draw.textlength(line, font=font)
    draw.text(((img.width - width) / 2, top + (bar - font.size) / 2), line, font=font, fill="black")
    return out, {"bar": bar, "where": where, "text": line}


@transform("screenshot", "strong", "scaled down inside a window, browser or phone screenshot, saved as PNG", save="png")
def _screenshot(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    kind = rng.choice(["window", "browser", "phone"])
    scale = round(rng.uniform(0.45, 0.65), 3)
    photo = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    out, box = FRAMES[kind](photo, rng)
    return out, {"frame": kind, "scale": scale, "photo_box": list(box)}


@transform("combo", "strong", "saturation x1.6 and contrast x1.2, cropped to 80%, shrunk to half, JPEG 25", quality=25)
def _combo(img: Image.Image, rng: random.Random) -> tuple[Image.Image, dict]:
    out = ImageEnhance.Contrast(ImageEnhance.Color(img).enhance(1.6)).enhance(1.2)
    out, params = crop(out, 0.8, rng)
    size = (max(1, out.width // 2), max(1, out.height // 2))
    return out.resize(size, Image.Resampling.LANCZOS), {**params, "size": list(size), "quality": 25}


def crop(img: Image.Image, fraction: float, rng: random.Random) -> tuple[Image.Image, dict]:
    w, h = max(1, round(img.width * fraction)), max(1, round(img.height * fraction))
    left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    box = (left, top, left + w, top + h)
    return img.crop(box), {"box": list(box)}


def fit_font(draw: ImageDraw.ImageDraw, lines: list[str], size: int, width: float) -> ImageFont.FreeTypeFont:
    """Pillow's default font at `size`, made smaller until the widest line fits in `width` pixels."""
    size = max(6, size)
    font = ImageFont.load_default(size)
    widest = max(draw.textlength(line, font=font) for line in lines)
    if widest > width:
        font = ImageFont.load_default(max(6, int(size * width / widest)))
    return font


# --- screenshot frames: each returns (canvas, box of the photo in it) ---------------------------


def _text_lines(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, count: int, unit: int, colour: str) -> None:
    """Grey bars standing for lines of text."""
    for i in range(count):
        length = width if i < count - 1 else width * 2 // 3
        top = y + i * unit * 2
        draw.rounded_rectangle((x, top, x + length, top + unit), radius=unit // 2, fill=colour)


def _window(photo: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int, int]]:
    dark = rng.random() < 0.5
    bg, panel, bar, ink = (
        ("#1e1e1e", "#2b2b2b", "#3a3a3a", "#5a5a5a") if dark else ("#f5f5f5", "#e8e8e8", "#d6d6d6", "#b8b8b8")
    )
    unit = max(4, photo.width // 40)
    title, margin, sidebar = 6 * unit, 3 * unit, max(10 * unit, photo.width * 2 // 5)
    size = (sidebar + photo.width + 2 * margin, title + photo.height + 2 * margin + 4 * unit)
    out = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, size[0], title), fill=bar)
    for i, colour in enumerate(("#ff5f57", "#febc2e", "#28c840")):
        cx = 2 * unit + i * 3 * unit
        draw.ellipse((cx, 2 * unit, cx + 2 * unit, 4 * unit), fill=colour)
    font = ImageFont.load_default(max(6, 3 * unit))
    draw.text((12 * unit, 1.5 * unit), f"IMG_{rng.randint(1000, 9999)}.JPG - Photos", font=font, fill=ink)
    draw.rectangle((0, title, sidebar, size[1]), fill=panel)
    _text_lines(
        draw, 2 * unit, title + 2 * unit, sidebar - 4 * unit, max(1, (size[1] - title) // (3 * unit)), unit, ink
    )
    box = (sidebar + margin, title + margin)
    out.paste(photo, box)
    _text_lines(draw, box[0], box[1] + photo.height + unit, photo.width // 2, 1, unit, ink)
    return out, (*box, box[0] + photo.width, box[1] + photo.height)


def _browser(photo: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int, int]]:
    unit = max(4, photo.width // 40)
    tabs, address, margin = 6 * unit, 7 * unit, 4 * unit
    side = max(margin, round(photo.width * rng.uniform(0.15, 0.35)))
    header = 8 * unit
    size = (photo.width + 2 * side, tabs + address + header + photo.height + 12 * unit)
    out = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, size[0], tabs), fill="#dee1e6")
    draw.rounded_rectangle((2 * unit, unit, 2 * unit + size[0] // 3, tabs + unit), radius=unit, fill="#ffffff")
    draw.rectangle((0, tabs, size[0], tabs + address), fill="#ffffff")
    draw.line((0, tabs + address, size[0], tabs + address), fill="#c4c7cc", width=max(1, unit // 4))
    draw.rounded_rectangle(
        (8 * unit, tabs + unit, size[0] - 2 * unit, tabs + address - unit), radius=2 * unit, fill="#f1f3f4"
    )
    small = ImageFont.load_default(max(6, 3 * unit))
    url = f"https://{rng.choice(WORDS)}.example.com/{rng.choice(WORDS)}/{rng.randint(10**5, 10**6)}"
    draw.text((10 * unit, tabs + 2 * unit), url, font=small, fill="#202124")
    for i in range(3):  # back, forward, reload
        draw.ellipse((unit + i * 2 * unit, tabs + 3 * unit, 2 * unit + i * 2 * unit, tabs + 4 * unit), fill="#5f6368")
    top = tabs + address
    big = ImageFont.load_default(max(6, 4 * unit))
    draw.text((side, top + 2 * unit), rng.choice(PHRASES), font=big, fill="#202124")
    box = (side, top + header)
    out.paste(photo, box)
    _text_lines(draw, side, box[1] + photo.height + 2 * unit, photo.width, 4, unit, "#dadce0")
    return out, (*box, box[0] + photo.width, box[1] + photo.height)


def _phone(photo: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int, int]]:
    width = photo.width
    unit = max(4, width // 40)
    height = max(round(width * 19.5 / 9), photo.height + 40 * unit)
    dark = rng.random() < 0.5
    bg, ink, faint = ("#000000", "#ffffff", "#333333") if dark else ("#ffffff", "#000000", "#dbdbdb")
    out = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(max(6, 3 * unit))
    draw.text((3 * unit, 1.5 * unit), "9:41", font=font, fill=ink)
    draw.rounded_rectangle((width - 8 * unit, 2 * unit, width - 3 * unit, 4 * unit), radius=unit // 2, outline=ink)
    header = 7 * unit
    draw.ellipse((2 * unit, header, 7 * unit, header + 5 * unit), fill=rng.choice(["#e1306c", "#405de6", "#fd1d1d"]))
    draw.text((9 * unit, header + unit), f"{rng.choice(WORDS)}_{rng.randint(1, 999)}", font=font, fill=ink)
    top = header + 7 * unit + rng.randint(0, max(0, (height - photo.height - 40 * unit) // 3))
    out.paste(photo, (0, top))
    icons = top + photo.height + 2 * unit
    for i in range(3):  # like, comment, share
        draw.ellipse((2 * unit + i * 6 * unit, icons, 6 * unit + i * 6 * unit, icons + 4 * unit), outline=ink, width=2)
    _text_lines(draw, 2 * unit, icons + 7 * unit, width - 4 * unit, 3, unit, faint)
    draw.rectangle((0, height - 8 * unit, width, height), fill=bg)
    draw.line((0, height - 8 * unit, width, height - 8 * unit), fill=faint, width=max(1, unit // 4))
    for i in range(5):
        cx = width * (2 * i + 1) // 10
        draw.rectangle((cx - unit, height - 5 * unit, cx + unit, height - 3 * unit), outline=ink, width=2)
    return out, (0, top, photo.width, top + photo.height)


FRAMES = {"window": _window, "browser": _browser, "phone": _phone}


# --- choosing the photos ------------------------------------------------------------------------


@dataclass
class Picked:
    source: int
    path: Path
    relative: str
    sha256: str
    size: tuple[int, int]


@dataclass
class Source:
    """One folder's image files in seeded random order, consumed from the front."""

    index: int
    root: Path
    files: list[Path]
    cursor: int = 0
    set_aside: list[Path] = field(default_factory=list)  # decodable but too small to be an original

    def next(self, as_original: bool) -> Path | None:
        if not as_original and self.set_aside:
            return self.set_aside.pop(0)
        if self.cursor == len(self.files):
            return None
        self.cursor += 1
        return self.files[self.cursor - 1]


def list_images(root: Path, exclude: list[str]) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        excluded = any(fnmatch.fnmatch(relative, pattern) for pattern in exclude)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not excluded:
            files.append(path)
    return files


def load_rgb(data: bytes) -> Image.Image:
    """The image as displayed (EXIF orientation applied), in RGB."""
    with Image.open(io.BytesIO(data)) as raw:
        img = ImageOps.exif_transpose(raw)
        img.load()
    return img.convert("RGB")


def pick(
    sources: list[Source], originals: int, distractors: int, min_side: int, skipped: list[dict]
) -> tuple[list[Picked], list[Picked]]:
    seen: dict[str, str] = {}

    def take(source: Source, want: int, as_original: bool) -> list[Picked]:
        got: list[Picked] = []
        while len(got) < want and (path := source.next(as_original)) is not None:
            relative = f"{source.root.name}/{path.relative_to(source.root).as_posix()}"
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                skipped.append({"path": relative, "reason": f"same bytes as {seen[digest]}"})
                continue
            try:
                size = load_rgb(data).size
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                skipped.append({"path": relative, "reason": f"unreadable: {error}"})
                continue
            if as_original and min(size) < min_side:
                source.set_aside.append(path)  # may still be a distractor
                continue
            seen[digest] = relative
            got.append(Picked(source.index, path, relative, digest, size))
        return got

    def draw(want: int, as_original: bool) -> list[Picked]:
        shares = [want // len(sources) + (i < want % len(sources)) for i in range(len(sources))]
        chosen: list[Picked] = []
        for source, share in zip(sources, shares, strict=True):
            chosen += take(source, share, as_original)
        for source in sources:  # a source that ran short leaves its share to the others
            if len(chosen) < want:
                chosen += take(source, want - len(chosen), as_original)
        if len(chosen) < want:
            kind = "originals" if as_original else "distractors"
            raise SystemExit(
                f"the sources hold only {len(chosen)} usable {kind} besides those already taken, {want} asked for"
            )
        return chosen

    return draw(originals, True), draw(distractors, False)


# --- writing ------------------------------------------------------------------------------------


def copy_seed(seed: int, original: str, name: str) -> random.Random:
    return random.Random(f"{seed}:{original}:{name}")


def make_copy(out: Path, original_id: str, picked: Picked, name: str, seed: int) -> dict:
    spec = TRANSFORMS[name]
    data = picked.path.read_bytes()
    if spec.save == "bytes":
        target = out / "copies" / f"{original_id}_{name}{picked.path.suffix.lower()}"
        target.write_bytes(data)
        return {"file": target.relative_to(out).as_posix(), "transform": name, "tier": spec.tier, "params": {}}
    assert spec.apply is not None
    img, params = spec.apply(load_rgb(data), copy_seed(seed, original_id, name))
    suffix = ".png" if spec.save == "png" else ".jpg"
    target = out / "copies" / f"{original_id}_{name}{suffix}"
    if spec.save == "png":
        img.save(target, "PNG")
    else:
        img.save(target, "JPEG", quality=spec.quality)
    return {
        "file": target.relative_to(out).as_posix(),
        "transform": name,
        "tier": spec.tier,
        "params": params,
        "size": list(img.size),
    }


def generate(
    out: Path,
    sources: list[Path],
    originals: int = 150,
    distractors: int = 1000,
    seed: int = 0,
    transforms: list[str] | None = None,
    exclude: list[str] | None = None,
    min_side: int = 100,
    workers: int = 2,
) -> dict:
    """Write the set to `out` (which must be empty or missing) and return its manifest."""
    names = list(TRANSFORMS) if transforms is None else transforms
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown:
        raise SystemExit(f"unknown transform(s) {', '.join(unknown)}; known: {', '.join(TRANSFORMS)}")
    exclude = DEFAULT_EXCLUDE if exclude is None else exclude
    for root in sources:
        if not root.is_dir():
            raise SystemExit(f"no such source folder: {root}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose a new --out folder")
    started = time.time()
    folders = []
    for i, root in enumerate(sources):
        files = list_images(root, exclude)
        random.Random(f"{seed}:source:{i}").shuffle(files)
        folders.append(Source(i, root, files))
    skipped: list[dict] = []
    picked_originals, picked_distractors = pick(folders, originals, distractors, min_side, skipped)

    for sub in ("originals", "copies", "distractors"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest_originals: dict[str, dict] = {}
    jobs = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for n, picked in enumerate(picked_originals, 1):
            original_id = f"o{n:04d}"
            file = f"originals/{original_id}{picked.path.suffix.lower()}"
            shutil.copyfile(picked.path, out / file)
            manifest_originals[file] = {
                "id": original_id,
                "source": picked.relative,
                "sha256": picked.sha256,
                "size": list(picked.size),
                "copies": [],
            }
            jobs += [(file, pool.submit(make_copy, out, original_id, picked, name, seed)) for name in names]
        manifest_distractors = []
        for n, picked in enumerate(picked_distractors, 1):
            file = f"distractors/d{n:04d}{picked.path.suffix.lower()}"
            shutil.copyfile(picked.path, out / file)
            manifest_distractors.append({"file": file, "source": picked.relative, "sha256": picked.sha256})
        for file, job in jobs:
            manifest_originals[file]["copies"].append(job.result())

    manifest = {
        "version": MANIFEST_VERSION,
        "params": {
            "seed": seed,
            "originals": originals,
            "distractors": distractors,
            "sources": [str(root) for root in sources],
            "exclude": exclude,
            "min_side": min_side,
            "transforms": names,
            "jpeg_quality": JPEG_QUALITY,
            "pillow": PIL.__version__,
        },
        "transforms": {n: {"tier": TRANSFORMS[n].tier, "description": TRANSFORMS[n].description} for n in names},
        "originals": manifest_originals,
        "distractors": manifest_distractors,
        "skipped": skipped,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["seconds"] = round(time.time() - started, 1)  # not in the file: the file depends only on the inputs
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--sources", type=Path, nargs="+", default=DEFAULT_SOURCES, help="image folders (recursive)")
    parser.add_argument("--originals", type=int, default=150)
    parser.add_argument("--distractors", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transforms", nargs="+", metavar="NAME", help=f"default all: {' '.join(TRANSFORMS)}")
    parser.add_argument(
        "--exclude",
        nargs="*",
        metavar="GLOB",
        help=f"skip files whose path inside a source matches (default {' '.join(DEFAULT_EXCLUDE)}; none: --exclude)",
    )
    parser.add_argument("--min-side", type=int, default=100, help="an original's shorter side, in pixels, at least")
    parser.add_argument("--workers", type=int, default=2, help="threads that draw the copies")
    args = parser.parse_args(argv)
    manifest = generate(
        args.out,
        [path.resolve() for path in args.sources],
        originals=args.originals,
        distractors=args.distractors,
        seed=args.seed,
        transforms=args.transforms,
        exclude=args.exclude,
        min_side=args.min_side,
        workers=args.workers,
    )
    copies = sum(len(o["copies"]) for o in manifest["originals"].values())
    print(
        f"{args.out}: {len(manifest['originals'])} originals, {copies} copies, "
        f"{len(manifest['distractors'])} distractors, {len(manifest['skipped'])} files skipped, "
        f"{manifest['seconds']} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
