"""The one interface every embedder implements.

An embedder turns RGB images into L2-normalised float32 vectors, in two steps so
that decoding and preprocessing (CPU, Pillow, runs in worker threads) can overlap
with the model (ONNX Runtime or PyTorch):

    arrays = [embedder.preprocess(img) for img in images]   # one array per image
    vectors = embedder.embed_arrays(np.stack(arrays))        # (n, dim), unit length

What `preprocess` returns is the embedder's business: pretrained CNNs return the
resized crop as uint8 and normalise inside the model, where it is cheap.
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

    def resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """The crop as (crop, crop, 3) uint8: all the CPU work that must happen outside the model."""
        w, h = image.size
        scale = self.resize / min(w, h)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        left = (size[0] - self.crop) // 2
        top = (size[1] - self.crop) // 2
        # Resample straight into the crop window: no full-size intermediate image.
        box = (left / scale, top / scale, (left + self.crop) / scale, (top + self.crop) / scale)
        image = image.resize((self.crop, self.crop), self.resample, box=box)
        return np.asarray(image, dtype=np.uint8)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """(..., H, W, 3) uint8 -> (..., 3, H, W) float32, scaled and normalised per channel."""
        arr = pixels.astype(np.float32) * (1.0 / 255.0)
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(arr, -1, -3))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, crop, crop) float32, normalised: the network's input."""
        return self.normalise(self.resize_and_crop(image))

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
    #: the class vocabulary its network also scores each image against ("imagenet-1k"), if it is a classifier
    classes: str | None = None
    #: whether `embed_texts` puts words in the same space as images (a CLIP-like model with a text tower)
    encodes_text: bool = False

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.preprocessing(image)

    @abstractmethod
    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """A stack of `preprocess` outputs -> (n, dim) L2-normalised float32."""

    def embed_and_classify(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """`embed_arrays`, and for an embedder with `classes`, each image's class probabilities (n, n_classes)
        from the same run of the network."""
        return self.embed_arrays(batch), None

    def on_threads(self, threads: int) -> Embedder:
        """This embedder with its network run on at most `threads` threads, everything else shared.

        An embedder that cannot choose returns itself (PyTorch sets its thread count per process)."""
        return self

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts as (n, dim) unit vectors comparable with the images' (only when `encodes_text`)."""
        raise EmbedderError(f"{self.name} cannot read text; only embedders with a text encoder (CLIP) can")

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [
            self.embed_arrays(np.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "dim": self.dim}
