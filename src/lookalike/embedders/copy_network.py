"""The PyTorch module of the `copy-lite0` descriptor (see `copy.py`); imported only to export it."""

from __future__ import annotations

import torch
from torch import nn

#: the network's stride: one feature-map cell per 32 x 32 pixels
STRIDE = 32


class CopyDescriptor(nn.Module):
    """(n, 224, 224, 4) uint8 (RGB + 255 where the image is) -> (n, 1280) unit vectors.

    Per image and its mirror: the EfficientNet-Lite head's feature map, GeM-pooled (p = 3) over the
    cells that hold image, L2-normalised; the two are added and normalised again.
    """

    def __init__(self, network: nn.Module, p: float = 3.0):
        super().__init__()
        self.network = network
        self.p = p

    def pool(self, pixels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        features = self.network.extract_features(pixels).clamp(min=1e-6)
        cells = nn.functional.max_pool2d(valid, kernel_size=STRIDE, stride=STRIDE)
        cells = cells[..., : features.shape[2], : features.shape[3]]
        pooled = (features.pow(self.p) * cells).sum(dim=(2, 3)) / cells.sum(dim=(2, 3)).clamp(min=1.0)
        return nn.functional.normalize(pooled.pow(1.0 / self.p), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        pixels = (x[:, :3] - 127.5) / 127.5
        valid = (x[:, 3:] > 127).to(torch.float32)
        both = self.pool(torch.cat([pixels, pixels.flip(3)]), torch.cat([valid, valid.flip(3)]))
        n = images.shape[0]
        return nn.functional.normalize(both[:n] + both[n:], dim=1)
