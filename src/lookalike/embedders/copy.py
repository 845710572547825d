"""`copy-lite0`: a copy-detection descriptor (the `near` tier of `Collection.duplicates`).

The same EfficientNet-Lite0 as the default embedder, read differently (measured in the copy-detection
research behind issue 13, see README "Duplicates"): the *whole* image (no centre crop; long side 224,
aspect kept), the 1280-channel head feature map pooled by generalised mean (GeM, p = 3) instead of
averaged, and the descriptor of the mirrored image added before normalising, so a flipped copy scores
as its original. It keeps mild edits (resize, JPEG, colour, blur, small crops and rotations) closer to
their original than the default vector does, and other shots of a scene further away.

Images of any aspect ratio go through the network in batches: `preprocess` puts the resized image in
the top-left corner of a 224 x 224 canvas of mid-grey (which the network's normalisation maps to zero)
and adds a fourth channel marking the image's pixels; the network pools only the feature-map cells
that hold image. Like every network embedder it is exported to ONNX once and runs without PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .base import Preprocessing
from .onnx import NetworkSource, OnnxEmbedder
from .runtime import file_identity, short_hash
from .weights import pip_weights_file

if TYPE_CHECKING:
    import torch
    from torch import nn

NAME = "copy-lite0"
#: long side of the image given to the network
SIZE = 224
#: the canvas around the image: this grey is 0 after the network's (x - 127.5) / 127.5
PAD_VALUE = 128
#: bump when what the exported network computes changes
RECIPE = "1"


class CopySource(NetworkSource):
    """EfficientNet-Lite0's weights (the pip package's, or a file) inside the copy descriptor."""

    def __init__(self, weights: str | Path | None = None):
        self.name = NAME
        self.weights = Path(weights).expanduser() if weights is not None else None

    def weights_file(self) -> Path:
        return self.weights if self.weights is not None else pip_weights_file("efficientnet-lite0")

    def key(self) -> str:
        return short_hash(RECIPE, NAME, file_identity(self.weights_file()))

    def build(self) -> nn.Module:
        from .copy_network import CopyDescriptor
        from .networks import efficientnet_lite_network

        return CopyDescriptor(efficientnet_lite_network("efficientnet-lite0", self.weights_file()))


class CopyEmbedder(OnnxEmbedder):
    """Whole image, long side 224, padded to a square with a validity channel: (224, 224, 4) uint8."""

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return on_canvas(image)

    def prepare(self) -> Path:
        path = self.onnx_path()
        if not path.is_file():
            from .export import export_checked
            from .onnx import log

            log.info("preparing %s for fast inference, once", self.name)
            probe = _probe_batch()
            export_checked(self.module, path, example_shape=probe.shape, name=self.name, probe=probe)
        return path


def on_canvas(image: Image.Image) -> np.ndarray:
    """The image resized to long side SIZE in the top-left of a SIZE x SIZE grey canvas, plus a validity channel."""
    w, h = image.size
    scale = SIZE / max(w, h)
    size = (max(1, min(SIZE, round(w * scale))), max(1, min(SIZE, round(h * scale))))
    resized = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)
    canvas = np.full((SIZE, SIZE, 4), PAD_VALUE, dtype=np.uint8)
    canvas[..., 3] = 0
    canvas[: size[1], : size[0], :3] = resized
    canvas[: size[1], : size[0], 3] = 255
    return canvas


def _probe_batch() -> torch.Tensor:
    """Two real-looking inputs (a landscape and a portrait image with their masks) to check the export on."""
    import torch

    generator = np.random.default_rng(0)
    embedder_input = []
    for w, h in ((224, 150), (100, 224)):
        pixels = generator.integers(0, 256, (h, w, 3), dtype=np.uint8)
        embedder_input.append(on_canvas(Image.fromarray(pixels)))
    return torch.from_numpy(np.stack(embedder_input))


def copy_lite0(weights: str | Path | None = None, runtime: str = "auto") -> CopyEmbedder:
    # draft decoding may shrink a JPEG but keeps both sides >= SIZE, enough for the long side
    preprocessing = Preprocessing(resize=SIZE, crop=SIZE)
    return CopyEmbedder(NAME, 1280, preprocessing, CopySource(weights), runtime)
