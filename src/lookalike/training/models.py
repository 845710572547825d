"""The networks trained here, each one `nn.Module` from pixels to an embedding at inference.

Training on CPU is made cheap by splitting a pretrained network at a *cut*: everything
before the cut is frozen, so its output is computed once per image view and cached
(`data.FeatureCache`); only the part after the cut runs in the training loop. At
inference the two halves are one module again, exported to ONNX by `TorchModelEmbedder`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..embedders.pretrained import EFFICIENTNET_LITE_SIZES, efficientnet_lite_network

EFFICIENTNET_FEATURES = 1280  # every EfficientNet-Lite ends in a 1280-channel head conv


def projection_head(in_dim: int, dim: int, hidden: int = 512) -> nn.Module:
    """The small MLP that maps backbone features to the embedding (its output is L2-normalised later)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class EfficientNetBackbone(nn.Module):
    """EfficientNet-Lite features, split after block `cut` (cut = number of blocks: only the 1x1 head conv is left).

    `trainable_blocks` = 0 keeps everything frozen and caches the pooled 1280-d features;
    k > 0 caches the activations before the last k MBConv blocks and trains those blocks and the head conv.
    `model`: efficientnet-lite0 (16 blocks, 224 px), -lite1 or -lite2 (21 blocks, 240 / 260 px).
    """

    def __init__(self, trainable_blocks: int = 0, pretrained: bool = True, model: str = "efficientnet-lite0"):
        super().__init__()
        if model not in EFFICIENTNET_LITE_SIZES:
            raise ValueError(f"backbone model must be one of {', '.join(EFFICIENTNET_LITE_SIZES)}")
        if pretrained:
            self.network = efficientnet_lite_network(model)
        else:
            from efficientnet_lite_pytorch import EfficientNet

            self.network = EfficientNet.from_name(model)
        self.model = model
        blocks = len(self.network._blocks)
        if not 0 <= trainable_blocks <= blocks:
            raise ValueError(f"trainable blocks must be in 0..{blocks} for {model}")
        self.trainable_blocks = trainable_blocks
        self.cut = blocks - trainable_blocks
        for p in self.network.parameters():
            p.requires_grad = False
        if trainable_blocks:
            for module in [*self.network._blocks[self.cut :], self.network._conv_head, self.network._bn1]:
                for p in module.parameters():
                    p.requires_grad = True

    def before_cut(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature cache stores: block activations, or pooled features when nothing is trained."""
        net = self.network
        x = net._swish(net._bn0(net._conv_stem(images)))
        for block in net._blocks[: self.cut]:
            x = block(x)
        return self.pool(x) if self.trainable_blocks == 0 else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))

    def after_cut(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainable_blocks == 0:
            return x
        for block in self.network._blocks[self.cut :]:
            x = block(x)
        return self.pool(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.after_cut(self.before_cut(images))

    def train(self, mode: bool = True) -> EfficientNetBackbone:
        # Batch-norm statistics and drop-connect stay as pretrained: small batches of a few
        # classes would skew the statistics, and cached inputs already carry the augmentation.
        super().train(False)
        return self


class SmallConvNet(nn.Module):
    """A small CNN for 64x64 pixels, trained from scratch (the seed's kind of network)."""

    def __init__(self, out_dim: int = 256, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(4):  # 64 -> 32 -> 16 -> 8 -> 4
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * 4 * 4, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images).flatten(1))


class ConvDecoder(nn.Module):
    """Mirror of `SmallConvNet`: a code back to a 64x64 image in [-1, 1]."""

    def __init__(self, in_dim: int = 256, width: int = 32):
        super().__init__()
        channels = width * 8
        self.fc = nn.Linear(in_dim, channels * 4 * 4)
        self.channels = channels
        layers: list[nn.Module] = []
        for i in range(3, 0, -1):
            out = width * 2 ** (i - 1)
            layers += [
                nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        layers += [nn.ConvTranspose2d(channels, 3, 4, stride=2, padding=1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.layers(self.fc(code).view(len(code), self.channels, 4, 4))


class Embedding(nn.Module):
    """backbone -> head: the module exported for inference (pixels in, embedding out).

    `flip_average`: embed the image and its mirror image and sum the two unit vectors
    (test-time augmentation; the caller L2-normalises the sum). A photo and its mirror show
    the same thing, so this removes a source of noise at twice the inference cost.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, flip_average: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.flip_average = flip_average

    def from_cached(self, cached: torch.Tensor) -> torch.Tensor:
        """Training path: start from the feature cache (pretrained backbones) or from pixels."""
        if isinstance(self.backbone, EfficientNetBackbone):
            return self.head(self.backbone.after_cut(cached))
        return self.head(self.backbone(cached))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.flip_average:
            return self.head(self.backbone(images))
        # One batch of both, so the backbone runs once over 2n images (NCHW: dim 3 is the width).
        both = self.head(self.backbone(torch.cat([images, images.flip(3)])))
        plain, mirrored = both.chunk(2)
        return nn.functional.normalize(plain, dim=1) + nn.functional.normalize(mirrored, dim=1)
