"""Running an embedder's network with ONNX Runtime, without importing PyTorch.

An embedder backed by a neural network is an `OnnxEmbedder`: a name, a vector size, its
preprocessing and a `NetworkSource`, which says which weights it uses (`key`, cheap, no PyTorch)
and how to build the PyTorch module from them (`build`, only when needed). The first time an
embedder is used on a machine its module is built and exported to an ONNX file (checked against
PyTorch, see `export.py`); from then on, searching and indexing only load that file, so a query
never pays for `import torch` (3-4 s here).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .base import Embedder, EmbedderError, Preprocessing
from .runtime import RUNTIMES, cache_dir, onnxruntime_available, open_session

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("lookalike")


class NetworkSource(ABC):
    """Where an embedder's network comes from."""

    #: the embedder's name (names the exported file and the notice shown while exporting)
    name: str
    #: the class vocabulary of a classifier network ("imagenet-1k"): its module then returns
    #: (embeddings, class probabilities) and the exported file has both outputs
    classes: str | None = None

    @abstractmethod
    def key(self) -> str:
        """Identifies the weights without loading them or importing PyTorch."""

    @abstractmethod
    def build(self) -> nn.Module:
        """The PyTorch module, uint8 (n, H, W, 3) pixels in, unit vectors out, and class probabilities
        too when `classes` is set (imports PyTorch)."""

    def onnx_path(self) -> Path:
        return cache_dir() / "onnx" / f"{self.name}-{self.key()}.onnx"


class OnnxEmbedder(Embedder):
    """An embedder whose network runs on ONNX Runtime (or, as a fallback, eager PyTorch).

    Pixel normalisation runs inside the network, so `preprocess` only resizes and crops.
    """

    def __init__(
        self,
        name: str,
        dim: int,
        preprocessing: Preprocessing,
        source: NetworkSource,
        runtime: str = "auto",
        threads: int | None = None,
    ):
        if runtime not in RUNTIMES:
            raise EmbedderError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if runtime == "auto":
            runtime = "onnx" if onnxruntime_available() else "torch"
        elif runtime == "onnx" and not onnxruntime_available():
            raise EmbedderError("runtime 'onnx' needs the onnxruntime package (pip install onnxruntime)")
        self.name = name
        self.dim = dim
        self.preprocessing = preprocessing
        self.source = source
        self.classes = source.classes
        self.runtime = runtime
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._module: nn.Module | None = None
        self._session: Any = None
        # the same embedder on other thread counts (`on_threads`), shared by all of them
        self._on_threads: dict[int, OnnxEmbedder] = {self.threads: self}
        self._on_threads_lock = threading.Lock()
        # Whatever is wrong with the weights (missing, not fitting, not downloadable) is found now,
        # not at the first image: when the ONNX file exists it was checked when it was made.
        if runtime == "torch":
            self.module  # noqa: B018
        elif not self.onnx_path().is_file():
            self.prepare()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(crop, crop, 3) uint8; the network itself normalises."""
        return self.preprocessing.resize_and_crop(image)

    @property
    def module(self) -> nn.Module:
        """The PyTorch module (built on first use: this imports PyTorch)."""
        if self._module is None:
            self._module = self.source.build().eval()
        return self._module

    def onnx_path(self) -> Path:
        return self.source.onnx_path()

    def prepare(self) -> Path:
        """Export the network to ONNX once (checked against PyTorch); later processes only load the file."""
        path = self.onnx_path()
        if not path.is_file():
            log.info("preparing %s for fast inference, once", self.name)
            from .export import export_checked

            outputs = ("embeddings", "probabilities") if self.classes else ("embeddings",)
            shape = (2, *self.input_shape())
            export_checked(self.module, path, example_shape=shape, name=self.name, output_names=outputs)
        return path

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one `preprocess` output, the network's input without the batch axis."""
        size = self.preprocessing.crop
        return (size, size, 3)

    def on_threads(self, threads: int) -> OnnxEmbedder:
        """The same embedder on its own ONNX Runtime session with `threads` intra-op threads (of the same file,
        opened at its first use and kept); with the PyTorch runtime, itself."""
        if self.runtime != "onnx":
            return self
        with self._on_threads_lock:
            twin = self._on_threads.get(threads)
            if twin is None:
                twin = copy.copy(self)
                twin.threads, twin._session = threads, None
                self._on_threads[threads] = twin
        return twin

    def run_torch(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.uint8)))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    def run_onnx(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._session is None:
            self._session = open_session(self.prepare(), self.threads)
        return self._session.run(None, {"images": np.ascontiguousarray(batch, dtype=np.uint8)})

    def embed_and_classify(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32), None
        outputs = self.run_onnx(batch) if self.runtime == "onnx" else self.run_torch(batch)
        vectors = np.ascontiguousarray(outputs[0], dtype=np.float32)
        return vectors, (outputs[1] if self.classes and len(outputs) > 1 else None)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        return self.embed_and_classify(batch)[0]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "runtime": self.runtime}
