"""The `autoencoder` method: its spec (the options of `lookalike train autoencoder`) and registry entry.

The task that trains it is `lookalike.training.autoencoder.AutoencoderTask`; this module stays
free of PyTorch so that `lookalike --help` can list its options.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import MethodSpec, option
from . import Defaults, Method, register

VARIANTS = ("pixels", "features")
NOISE = ("none", "mask", "gaussian")


@dataclass(frozen=True)
class AutoencoderSpec(MethodSpec):
    variant: str = option(
        "pixels",
        "pixels: a convolutional autoencoder of 64x64 images; features: a compact code of the frozen"
        " EfficientNet-Lite0 features",
        choices=VARIANTS,
    )
    dim: int = option(256, "code size, the embedding")  # 128 for the features variant (its Defaults)
    hidden: int = option(512, "features: width of the MLP's hidden layer")
    batch_size: int = option(64, "images per batch")
    noise: str = option("none", "denoising corruption of the input (the target stays clean)", choices=NOISE)
    noise_level: float = option(0.25, "masked share of the input values, or the Gaussian noise's sigma")
    augment: bool = option(False, "pixels: random crops, flips, brightness and contrast on the fly")
    width: int = option(32, "pixels: channels of the first conv layer (doubling per layer)")
    views: int = option(3, "features: cached views per image (the clean one + augmented ones)")

    def architecture(self) -> dict[str, object]:
        if self.variant == "pixels":
            return {
                "backbone": "small-cnn",
                "features": self.dim,
                "width": self.width,
                "head": "identity",
                "dim": self.dim,
            }
        return {
            "backbone": "efficientnet-lite0",
            "trainable_blocks": 0,
            "head": "feature-encoder",
            "hidden": self.hidden,
            "dim": self.dim,
        }


AUTOENCODER = register(
    Method(
        "autoencoder",
        "an autoencoder's bottleneck as the embedding (needs no labels)",
        AutoencoderSpec,
        task="lookalike.training.autoencoder:AutoencoderTask",
        defaults_by="variant",
        defaults={
            "pixels": Defaults(epochs=10),
            # the compact variant: 1280 pretrained features -> 128 floats
            "features": Defaults(epochs=30, name="autoencoder-compact", spec={"dim": 128}),
        },
    )
)
