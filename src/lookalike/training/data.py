"""Training data: labelled images, augmented views, and the caches that make CPU training fast.

- `FeatureCache`: the frozen part of a pretrained backbone (`EfficientNetBackbone.before_cut`)
  is run once per image *view* through ONNX Runtime and stored as float16 on disk; view 0 is
  the clean image (exactly the inference preprocessing), views 1.. are augmented (random
  resized crop, flip, colour jitter), each drawn from a generator seeded by (seed, image, view),
  so the cache is deterministic and can be filled in any order and resumed after a kill.
- `PixelCache`: small uint8 images (72x72) for the networks trained from pixels; they are
  augmented on the fly (random 64x64 crop, flip, brightness/contrast) because that is cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torch import nn

from ..catalog import ImageRecord
from ..embedders.base import Preprocessing
from ..embedders.export import onnx_runner
from ..embedders.weights import EFFICIENTNET_LITE_PREPROCESSING
from ..images import open_image
from ..storage import atomic_path, write_json

_PIXEL_CACHE_PREPROCESSING = Preprocessing(resize=72, crop=72, resample=Image.Resampling.BICUBIC)

#: (n, done) -> None; progress of a cache fill
CacheProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop, horizontal flip and colour jitter, as in SimCLR-style training."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    jitter: float = 0.3  # brightness, contrast and saturation factors in [1 - j, 1 + j]

    def crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                return x, y, x + w, y + h
        side = min(width, height)  # give up like torchvision: a central square
        x, y = (width - side) // 2, (height - side) // 2
        return x, y, x + side, y + side

    def __call__(self, image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
        image = image.resize((size, size), Image.Resampling.BICUBIC, box=self.crop_box(*image.size, rng))
        if rng.random() < self.flip:
            image = ImageOps.mirror(image)
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(float(rng.uniform(1 - self.jitter, 1 + self.jitter)))
        return image


def view_rng(seed: int, sha256: str, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(sha256[:15], 16), view])


def to_array(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
    arr = (arr - np.asarray(preprocessing.mean, np.float32)) / np.asarray(preprocessing.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def image_views(
    path: str, sha256: str, views: int, seed: int, augmentation: Augmentation, preprocessing: Preprocessing
) -> np.ndarray:
    """(views, 3, crop, crop): view 0 clean (as at inference), the others augmented."""
    image = open_image(path, draft_size=preprocessing.draft_size)
    out = [preprocessing(image)]
    for v in range(1, views):
        out.append(to_array(augmentation(image, preprocessing.crop, view_rng(seed, sha256, v)), preprocessing))
    return np.stack(out)


class _BeforeCut(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.before_cut(images)


class FeatureCache:
    """float16 outputs of a frozen backbone part for `views` views of each image, on disk.

    Rows follow `records`; a row is filled once and marked done, so a killed fill resumes.
    """

    def __init__(
        self,
        root: Path,
        backbone: nn.Module,
        backbone_id: str,
        records: Sequence[ImageRecord],
        views: int,
        seed: int,
        augmentation: Augmentation | None = None,
        preprocessing: Preprocessing = EFFICIENTNET_LITE_PREPROCESSING,
    ):
        self.backbone = backbone
        self.records = list(records)
        self.views = views
        self.seed = seed
        self.augmentation = augmentation or Augmentation()
        self.preprocessing = preprocessing
        self.backbone_id = backbone_id
        key = {
            "backbone": backbone_id,
            "views": views,
            "seed": seed if views > 1 else None,
            "augmentation": repr(self.augmentation) if views > 1 else None,
            "preprocessing": repr(preprocessing),
            "images": [r.sha256 for r in self.records],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = root / f"{backbone_id}-{digest}"

    @property
    def seconds(self) -> float:
        """Time spent filling this cache, summed over every run that filled part of it."""
        meta = self.dir / "meta.json"
        return float(json.loads(meta.read_text()).get("seconds", 0.0)) if meta.exists() else 0.0

    def _shape(self) -> tuple[int, ...]:
        with torch.inference_mode():
            size = self.preprocessing.crop
            return tuple(self.backbone.before_cut(torch.zeros(1, 3, size, size)).shape[1:])

    def load(self, progress: CacheProgress | None = None, batch_size: int = 32, threads: int = 2) -> np.ndarray:
        """The (n, views, *shape) float16 array, computing whatever rows are missing."""
        data_path, done_path = self.dir / "features.npy", self.dir / "done.npy"
        n = len(self.records)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not data_path.exists():
            shape = (n, self.views, *self._shape())
            np.lib.format.open_memmap(data_path, mode="w+", dtype=np.float16, shape=shape).flush()
            np.save(done_path, np.zeros(n, dtype=bool))
            write_json(self.dir / "meta.json", {"backbone": self.backbone_id, "views": self.views, "shape": shape})
        meta = json.loads((self.dir / "meta.json").read_text())
        done = np.load(done_path)
        todo = np.flatnonzero(~done)
        if len(todo):
            started = time.perf_counter()
            data = np.load(data_path, mmap_mode="r+")
            size = self.preprocessing.crop
            run = onnx_runner(_BeforeCut(self.backbone), self.backbone_id, (2, 3, size, size), threads)
            n_done = n - len(todo)
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="views") as pool:

                def decode(i: int) -> np.ndarray:
                    r = self.records[i]
                    return image_views(
                        r.path, r.sha256 or "", self.views, self.seed, self.augmentation, self.preprocessing
                    )

                chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
                pending = [pool.map(decode, chunks[0])] if chunks else []
                for c, chunk in enumerate(chunks):
                    arrays = np.stack(list(pending.pop(0)))  # (b, views, 3, H, W)
                    if c + 1 < len(chunks):
                        pending.append(pool.map(decode, chunks[c + 1]))
                    out = run(np.ascontiguousarray(arrays.reshape(-1, *arrays.shape[2:]), dtype=np.float32))
                    data[chunk] = out.reshape(len(chunk), self.views, *out.shape[1:]).astype(np.float16)
                    data.flush()
                    done[chunk] = True
                    with atomic_path(done_path) as tmp, open(tmp, "wb") as f:
                        np.save(f, done)
                    n_done += len(chunk)
                    if progress:
                        progress(n_done, n)
                    meta["seconds"] = meta.get("seconds", 0.0) + time.perf_counter() - started
                    started = time.perf_counter()
                    write_json(self.dir / "meta.json", meta)
            del data
        return np.load(data_path, mmap_mode="r")


class PixelCache:
    """uint8 (n, 3, 72, 72) images for the networks trained from pixels."""

    def __init__(self, root: Path, records: Sequence[ImageRecord]):
        self.records = list(records)
        digest = hashlib.sha256(json.dumps([r.sha256 for r in self.records]).encode()).hexdigest()[:16]
        self.path = root / f"pixels72-{digest}.npy"
        self.meta = self.path.with_suffix(".json")

    @property
    def seconds(self) -> float:
        return float(json.loads(self.meta.read_text())["seconds"]) if self.meta.exists() else 0.0

    def load(self, progress: CacheProgress | None = None, threads: int = 2) -> np.ndarray:
        if not self.path.exists():
            started = time.perf_counter()
            prep = _PIXEL_CACHE_PREPROCESSING

            def decode(record: ImageRecord) -> np.ndarray:
                arr = prep(open_image(record.path, draft_size=prep.draft_size))
                return np.clip(np.rint((arr * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)

            out = np.zeros((len(self.records), 3, prep.crop, prep.crop), dtype=np.uint8)
            with ThreadPoolExecutor(max_workers=threads) as pool:
                for i, arr in enumerate(pool.map(decode, self.records)):
                    out[i] = arr
                    if progress and (i % 64 == 63 or i + 1 == len(out)):
                        progress(i + 1, len(out))
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                np.save(f, out)
            write_json(self.meta, {"seconds": time.perf_counter() - started, "images": len(out)})
        return np.load(self.path)


def pixel_batch(
    pixels: np.ndarray, generator: torch.Generator | None, jitter: float = 0.3, size: int = 64
) -> torch.Tensor:
    """uint8 (n, 3, 72, 72) -> float (n, 3, 64, 64) in [-1, 1]: centre crop, or augmented when a generator is given."""
    x = torch.from_numpy(np.asarray(pixels)).float().div_(127.5).sub_(1.0)
    n, _, full, _ = x.shape
    margin = full - size
    if generator is None:
        m = margin // 2
        return x[:, :, m : m + size, m : m + size].contiguous()
    offsets = torch.randint(0, margin + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([x[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])
    out[flips] = out[flips].flip(3)
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).clamp_(-1, 1)
