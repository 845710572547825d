"""The one interface every embedder implements.

An embedder turns RGB images into L2-normalised float32 vectors, in two steps so
that decoding and preprocessing (CPU, Pillow, runs in worker threads) can overlap
with the model (ONNX Runtime or PyTorch):

    arrays = [embedder.preprocess(img) for img in images]   # CHW float32 each
    vectors = embedder.embed_arrays(np.stack(arrays))        # (n, dim), unit length
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


class EmbedderError(RuntimeError):
    """An embedder cannot be built or loaded (unknown name, missing weights, ...)."""


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side, centre-crop, scale to [0, 1], normalise per channel."""

    resize: int = 256
    crop: int = 224
    resample: Image.Resampling = Image.Resampling.BICUBIC
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __call__(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        scale = self.resize / min(w, h)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        image = image.resize(size, self.resample)
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    @property
    def draft_size(self) -> tuple[int, int]:
        # JPEG draft decoding may shrink by powers of two but keeps both sides >= this.
        return (self.resize, self.resize)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Embedder(ABC):
    """Images in, unit-length float32 vectors out."""

    #: registry name, also the key of this embedder's vectors in a collection
    name: str
    #: length of each vector
    dim: int
    preprocessing: Preprocessing

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocessing(image)

    @abstractmethod
    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed float32 -> (n, dim) L2-normalised float32."""

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [
            self.embed_arrays(np.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "dim": self.dim}
