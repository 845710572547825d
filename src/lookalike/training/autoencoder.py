"""Autoencoders: the bottleneck of a network trained to reconstruct its input is the embedding.

- `pixels` (default): a convolutional autoencoder on 64x64 images (encoder `SmallConvNet`,
  decoder `ConvDecoder`); no labels needed.
- `features` (the compact variant): an MLP autoencoder of the frozen EfficientNet-Lite0 pooled
  features (1280 floats) into a small code (128 floats by default), 10x less memory per image.

The spec (the options of `lookalike train autoencoder`) and the registry entry are in
`training/methods/autoencoder.py`, free of PyTorch; this module is the task, imported when training runs.

Denoising (Vincent et al. 2008): with `noise="mask"` a random `noise_level` share of the input
values is zeroed, with `noise="gaussian"` Gaussian noise of that standard deviation is added;
the target is always the clean input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ..embedders.networks import EFFICIENTNET_FEATURES, EfficientNetBackbone, Embedding, FeatureEncoder, SmallConvNet
from .data import FeatureCache, PixelCache, pixel_batch
from .loop import Task
from .methods.autoencoder import AutoencoderSpec
from .models import ConvDecoder
from .prepared import Prepared, batched, validation_figures


def build_network(spec: AutoencoderSpec, pretrained: bool = True) -> Embedding:
    if spec.variant == "pixels":
        return Embedding(SmallConvNet(spec.dim, spec.width), nn.Identity())
    return Embedding(
        EfficientNetBackbone(0, pretrained=pretrained), FeatureEncoder(EFFICIENTNET_FEATURES, spec.hidden, spec.dim)
    )


def build_decoder(spec: AutoencoderSpec) -> nn.Module:
    if spec.variant == "pixels":
        return ConvDecoder(spec.dim, spec.width)
    return nn.Sequential(
        nn.Linear(spec.dim, spec.hidden), nn.ReLU(inplace=True), nn.Linear(spec.hidden, EFFICIENTNET_FEATURES)
    )


class Autoencoder(nn.Module):
    """The trained pair; only `encoder` (an `Embedding`) is kept for search."""

    def __init__(self, encoder: Embedding, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder


def corrupt(x: torch.Tensor, noise: str, level: float) -> torch.Tensor:
    if noise == "mask":
        return x * (torch.rand_like(x) >= level)
    if noise == "gaussian":
        return x + level * torch.randn_like(x)
    return x


class AutoencoderTask(Task):
    def __init__(self, spec: AutoencoderSpec, prepared: Prepared, encoder: Embedding | None = None):
        self.spec = spec
        encoder = encoder if encoder is not None else build_network(spec)
        self.embedding = encoder
        self.model = Autoencoder(encoder, build_decoder(spec))
        self.prepared = prepared
        self.monitor = "MAP@R" if prepared.labelled_validation() else "neg_val_loss"
        self.batch_size = max(1, min(spec.batch_size, len(prepared.train)))
        self.cache_seconds = 0.0
        p = prepared
        if spec.variant == "pixels":
            train, val = PixelCache(p.cache_root, p.train), PixelCache(p.cache_root, p.val)
            self.train_inputs = train.load(p.report("caching pixels (train)"))
            self.val_inputs = val.load(p.report("caching pixels (val)"))
        else:
            backbone = encoder.backbone
            train = FeatureCache(p.cache_root, backbone, "efficientnet-lite0-pooled", p.train, spec.views, p.seed)
            val = FeatureCache(p.cache_root, backbone, "efficientnet-lite0-pooled", p.val, 1, p.seed)
            self.train_inputs = train.load(p.report("caching features (train)"))
            self.val_inputs = val.load(p.report("caching features (val)"))[:, 0]
        self.cache_seconds = train.seconds + val.seconds

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_inputs) / self.batch_size)

    def _inputs(self, idx: np.ndarray, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        source = self.train_inputs if train else self.val_inputs
        if self.spec.variant == "pixels":
            return pixel_batch(source[idx], generator)
        rows = source[idx]
        if train:  # one cached view of each image: clean or augmented
            rows = rows[np.arange(len(idx)), np.random.randint(0, source.shape[1], size=len(idx))]
        return self.model.encoder.head.normalise(torch.from_numpy(np.asarray(rows, dtype=np.float32)))

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        order = np.random.permutation(len(self.train_inputs))
        augment = self.spec.augment and self.spec.variant == "pixels"
        generator = torch.Generator().manual_seed(int(np.random.randint(2**31))) if augment else None
        for idx in batched(len(order), self.batch_size):
            yield self._inputs(order[idx], True, generator)

    def _reconstruction_loss(self, clean: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.model.encoder
        code = encoder.backbone(noisy) if self.spec.variant == "pixels" else encoder.head.layers(noisy)
        return nn.functional.mse_loss(self.model.decoder(code), clean), code

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self._reconstruction_loss(batch, corrupt(batch, self.spec.noise, self.spec.noise_level))[0]

    def validate(self) -> dict[str, float]:
        codes, total = [], 0.0
        for idx in batched(len(self.val_inputs), 128):
            clean = self._inputs(idx, False)
            loss, code = self._reconstruction_loss(clean, clean)
            codes.append(code)
            total += float(loss) * len(idx)
        figures = {"val_loss": total / max(len(self.val_inputs), 1)}
        figures["neg_val_loss"] = -figures["val_loss"]
        if self.monitor == "MAP@R":
            figures.update(validation_figures(torch.cat(codes), self.prepared.val_labels))
        return figures
