"""The `selfsup` method: self-supervised contrastive training, no labels needed.

Positive pairs are two augmented views of one photo (random crops, flips, colour, blur, a text
overlay, JPEG re-compression), every other photo of the batch is a negative (NT-Xent, SimCLR's
loss). The head sits on a frozen pretrained EfficientNet-Lite, whose pooled features are cached for
a few views per image, so an epoch only runs the head. By default the head is residual (it adds to
the pretrained features, zero at the start) and a distillation term keeps the pretrained
neighbourhoods: training makes the vectors invariant to the edits above without forgetting what
the pretrained network knows. Early stopping watches a label-free figure on the validation photos
(`view-margin`, see `training.selfsup`). Sub-folders (labels), if any, are ignored by training.

The task is `lookalike.training.selfsup.SelfSupTask`; this module stays free of PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import MethodSpec, option
from . import Defaults, Method, register
from .metric import BACKBONE_MODELS, HEADS, LITE_FEATURES


@dataclass(frozen=True)
class SelfSupSpec(MethodSpec):
    backbone_model: str = option("efficientnet-lite0", "the frozen pretrained network", choices=BACKBONE_MODELS)
    head: str = option(
        "residual",
        "residual: a learned correction added to the pretrained features (zero at the start); mlp: a new"
        " embedding of --dim values replaces them",
        choices=HEADS,
    )
    distill: float = option(1.0, "weight of the term keeping each batch's pretrained neighbourhoods (0: off)")
    temperature: float = option(0.1, "NT-Xent temperature")
    dim: int = option(128, "embedding size (mlp head; the residual head keeps the features' size)")
    hidden: int = option(512, "width of the head's hidden layer")
    batch_size: int = option(128, "photos per batch (two views each)")
    views: int = option(4, "cached views per training photo: the clean one + augmented ones")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.views < 2:
            raise ValueError("selfsup needs at least two views per photo")
        if self.distill < 0 or self.temperature <= 0:
            raise ValueError("distill must be >= 0 and temperature > 0")

    @property
    def embedding_dim(self) -> int:
        return LITE_FEATURES if self.head == "residual" else self.dim

    def architecture(self) -> dict[str, object]:
        return {
            "backbone": self.backbone_model,
            "trainable_blocks": 0,
            "head": self.head,
            "hidden": self.hidden,
            "dim": self.embedding_dim,
            "flip_average": False,
        }


SELFSUP = register(
    Method(
        "selfsup",
        "self-supervised: two augmented views of one photo are a positive pair (no labels needed)",
        SelfSupSpec,
        task="lookalike.training.selfsup:SelfSupTask",
        defaults={"": Defaults(epochs=10)},
    )
)
