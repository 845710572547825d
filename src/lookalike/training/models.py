"""Training-only networks. The networks an embedder runs at inference (backbones, heads, `Embedding`)
live in `lookalike.embedders.networks`, which training builds on; only the decoder of the pixel
autoencoder, which is thrown away after training, is defined here.
"""

from __future__ import annotations

import torch
from torch import nn


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
