"""Siamese (contrastive loss on pairs), triplet (triplet margin loss) and proxy-anchor networks.

All are one weight-sharing network applied to every image of a batch; the pairs or
triplets are index tuples into the batch, so "two branches" never need two copies of the
weights. Pair/triplet selection, losses and distances are pytorch-metric-learning's:

- siamese, `--mining random`: random positive and negative pairs of the batch (the seed's
  approach), `--mining hard`: BatchHardMiner (hardest positive and negative per anchor);
- triplet: TripletMarginMiner(type_of_triplets="semihard") + TripletMarginLoss;
- proxy-anchor: ProxyAnchorLoss (Kim et al. 2020): one learned proxy per training label, each the anchor
  of a loss over every vector of the batch; the proxies learn `--proxy-lr-scale` times faster than the
  head (the paper's 100), are optimised and checkpointed with the network (`WithProxies`) and are not
  part of the saved embedder. On classes training never saw it generalises best (docs/training.md).

Backbones: `frozen` (a pretrained EfficientNet-Lite, by default Lite2, only the projection head
trains, on cached pooled features), `finetune` (the last k MBConv blocks and the head conv train
too, on cached activations before them), `scratch` (a small CNN on 64x64 pixels, every weight trains).
Lite2 is the default because it lifts held-out precision@5 above Lite0's ceiling (docs/training.md).

Heads: `mlp` (a new 128-d embedding replaces the pretrained features) or `residual` (a learned
correction added to them, zero at the start: `embedders.networks.ResidualHead`). `--distill W` adds
W x `neighbourhood_distillation`: the trained vectors of a batch must keep the pretrained vectors'
softmaxed cosine similarities, so training separates the labels without forgetting general similarity.
`--whiten` ends training with learned whitening, fit in closed form (`training.whitening`, `MetricTask.finish`).

The spec (the options of `lookalike train siamese|triplet|proxy-anchor`) and the registry entries are in
`training/methods/metric.py`, free of PyTorch; this module is the task, imported when training runs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator

import numpy as np
import torch
from pytorch_metric_learning import losses, miners, samplers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from ..embedders.networks import (
    EFFICIENTNET_FEATURES,
    EfficientNetBackbone,
    Embedding,
    LearnedWhitening,
    ResidualHead,
    SmallConvNet,
    projection_head,
)
from ..embedders.weights import efficientnet_lite_preprocessing
from .data import Augmentation, FeatureCache, PixelCache, pixel_batch
from .loop import Task
from .methods.metric import MetricSpec
from .prepared import Prepared, batched, validation_figures
from .whitening import fit_learned_whitening


def build_head(spec: MetricSpec, features: int) -> nn.Module:
    if spec.head == "residual":
        return ResidualHead(features, spec.hidden)
    return projection_head(features, spec.dim, spec.hidden)


def build_network(spec: MetricSpec, pretrained: bool = True) -> Embedding:
    if spec.backbone == "scratch":
        return Embedding(
            SmallConvNet(spec.scratch_features, spec.width), build_head(spec, spec.scratch_features), spec.flip_average
        )
    blocks = spec.trainable_blocks if spec.backbone == "finetune" else 0
    return Embedding(
        EfficientNetBackbone(blocks, pretrained, spec.backbone_model),
        build_head(spec, EFFICIENTNET_FEATURES),
        spec.flip_average,
    )


def neighbourhood_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """KL(teacher || student) of each row's softmaxed cosine similarities to the other vectors of the batch.

    Zero when the student ranks (and spaces) the batch as the teacher does; it keeps the pretrained
    neighbourhoods while a metric loss moves the labelled classes apart.
    """
    eye = torch.eye(len(student), dtype=torch.bool, device=student.device)

    def log_softmax(x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x.float(), dim=1)
        return (x @ x.T / temperature).masked_fill(eye, -1e9).log_softmax(dim=1)

    return nn.functional.kl_div(log_softmax(student), log_softmax(teacher), reduction="batchmean", log_target=True)


class PretrainedTeacher:
    """The pretrained features of cached inputs: the cache itself (frozen backbone), or a frozen copy of the
    blocks after the cut (fine-tuned backbone), taken before training moves them."""

    def __init__(self, backbone: nn.Module):
        self.blocks: EfficientNetBackbone | None = None
        if isinstance(backbone, EfficientNetBackbone) and backbone.trainable_blocks:
            self.blocks = copy.deepcopy(backbone).eval()
            for p in self.blocks.parameters():
                p.requires_grad = False

    def __call__(self, cached: torch.Tensor) -> torch.Tensor:
        if self.blocks is None:
            return cached
        with torch.no_grad():
            return self.blocks.after_cut(cached)


def m_per_class(batch_size: int, classes: int) -> int:
    """Images per label in a batch: enough to fill it, and a divisor of it (MPerClassSampler's rules)."""
    m = max(2, -(-batch_size // classes))
    while batch_size % m:
        m += 1
    return m


class WithProxies(nn.Module):
    """What a proxy-anchor run optimises and checkpoints: the embedding network and the loss's proxies."""

    def __init__(self, embedding: Embedding, loss: nn.Module):
        super().__init__()
        self.embedding = embedding
        self.loss = loss


class MetricTask(Task):
    def __init__(self, spec: MetricSpec, prepared: Prepared, model: Embedding | None = None):
        model = model if model is not None else build_network(spec)
        if len(np.unique(prepared.train_labels)) < 2:
            raise ValueError(f"{spec.method} training needs at least two labels (sub-folders) among training images")
        if not prepared.labelled_validation():
            raise ValueError("the validation split needs two labels with two images of one; raise --val-fraction")
        self.spec = spec
        self.model: nn.Module = model
        self.embedding: Embedding = model
        self.prepared = prepared
        self.pixels = spec.backbone == "scratch"
        self.train_inputs, self.val_inputs = self._inputs()
        self.teacher = PretrainedTeacher(model.backbone) if spec.distill else None
        batch = min(spec.batch_size, len(prepared.train))
        self.batch_size = batch - batch % 2 if batch > 2 else batch
        self.proxy_of: torch.Tensor | None = None  # proxy-anchor: a label code's proxy (-1: not a training label)
        if spec.method == "siamese":
            self.loss_fn: nn.Module = losses.ContrastiveLoss()  # LpDistance on L2-normalised embeddings
            self.miner = miners.BatchHardMiner() if spec.mining == "hard" else None
        elif spec.method == "triplet":
            self.loss_fn = losses.TripletMarginLoss(margin=spec.margin)
            self.miner = miners.TripletMarginMiner(margin=spec.margin, type_of_triplets="semihard")
        else:
            codes = np.unique(prepared.train_labels)
            self.proxy_of = torch.full((int(codes.max()) + 1,), -1, dtype=torch.long)
            self.proxy_of[torch.from_numpy(codes)] = torch.arange(len(codes))
            self.loss_fn = losses.ProxyAnchorLoss(
                num_classes=len(codes), embedding_size=spec.embedding_dim, margin=spec.proxy_margin,
                alpha=spec.proxy_alpha,
            )  # fmt: skip
            self.miner = None
            self.model = WithProxies(model, self.loss_fn)

    def _inputs(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.prepared
        if self.pixels:
            train_pixels, val_pixels = PixelCache(p.cache_root, p.train), PixelCache(p.cache_root, p.val)
            data = (
                train_pixels.load(p.report("caching pixels (train)")),
                val_pixels.load(p.report("caching pixels (val)")),
            )
            self.cache_seconds = train_pixels.seconds + val_pixels.seconds
            return data
        backbone = self.embedding.backbone
        assert isinstance(backbone, EfficientNetBackbone)
        backbone_id = f"{backbone.model}-cut{backbone.cut}" if backbone.trainable_blocks else f"{backbone.model}-pooled"
        views = self.spec.views if self.spec.augment else 1
        pre = efficientnet_lite_preprocessing(backbone.model)
        train = FeatureCache(p.cache_root, backbone, backbone_id, p.train, views, p.seed, Augmentation(), pre)
        val = FeatureCache(p.cache_root, backbone, backbone_id, p.val, 1, p.seed, preprocessing=pre)
        data = train.load(p.report("caching features (train)")), val.load(p.report("caching features (val)"))
        self.cache_seconds = train.seconds + val.seconds
        return data

    def parameter_groups(self, lr: float) -> list[dict[str, object]]:
        # Pretrained blocks move slower than the new head (backbone_lr_scale), so fine-tuning does not wreck them;
        # proxies, new like the head, faster (proxy_lr_scale). The blocks' group is marked "pretrained": the
        # warm-up stops it.
        backbone = [p for p in self.embedding.backbone.parameters() if p.requires_grad]
        groups = [{"params": list(self.embedding.head.parameters()), "lr": lr}]
        if self.proxy_of is not None:
            groups.append({"params": list(self.loss_fn.parameters()), "lr": lr * self.spec.proxy_lr_scale})
        if backbone:
            backbone_lr = lr if self.pixels else lr * self.spec.backbone_lr_scale
            groups.append({"params": backbone, "lr": backbone_lr, "pretrained": not self.pixels})
        return groups

    def start_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        # Linear probing, then fine-tuning (Kumar et al. 2022): while the new head is still random,
        # its large gradients would distort the pretrained blocks, so they wait for the head to settle.
        if epoch <= self.spec.head_warmup_epochs:
            for group in optimizer.param_groups:
                if group.get("pretrained"):
                    group["lr"] = 0.0  # the loop restores each group's initial rate every epoch

    def steps_per_epoch(self) -> int:
        return len(self.prepared.train) // self.batch_size

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = self.prepared.train_labels
        m = m_per_class(self.batch_size, len(np.unique(labels)))
        length = max(self.batch_size, len(labels) - len(labels) % self.batch_size)
        sampler = samplers.MPerClassSampler(labels, m, batch_size=self.batch_size, length_before_new_iter=length)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        generator = torch.Generator().manual_seed(int(np.random.randint(2**31)))
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self._batch(idx, generator), torch.from_numpy(labels[idx])

    def _batch(self, idx: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        if self.pixels:
            return pixel_batch(self.train_inputs[idx], generator if self.spec.augment else None)
        views = self.train_inputs.shape[1]
        chosen = np.random.randint(0, views, size=len(idx))  # one cached view of each image
        return torch.from_numpy(np.asarray(self.train_inputs[idx, chosen], dtype=np.float32))

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, labels = batch
        embeddings = self.embedding.from_cached(inputs)
        if self.proxy_of is not None:
            loss = self.loss_fn(embeddings, self.proxy_of[labels])
        elif self.miner is not None:
            loss = self.loss_fn(embeddings, labels, self.miner(embeddings, labels))
        else:
            loss = self.loss_fn(embeddings, labels, random_pairs(labels, len(labels)))
        if self.teacher is not None:
            loss = loss + self.spec.distill * neighbourhood_distillation(embeddings, self.teacher(inputs))
        return loss

    def _vectors(self, cached: np.ndarray, view: int = 0) -> torch.Tensor:
        """The network's vectors of every image of a cache (one cached view of each; pixels are unaugmented)."""
        out = []
        for idx in batched(len(cached), 128):
            if self.pixels:
                inputs = pixel_batch(cached[idx], None)
            else:
                inputs = torch.from_numpy(np.asarray(cached[idx, view], dtype=np.float32))
            out.append(self.embedding.from_cached(inputs))
        return torch.cat(out)

    def validate(self) -> dict[str, float]:
        return validation_figures(self._vectors(self.val_inputs), self.prepared.val_labels)

    def finish(self) -> dict[str, object]:
        """`--whiten`: fit learned whitening (`training.whitening`) on the training photos' vectors, every cached
        view, and keep it only if the validation MAP@R does not drop. Returns the figures (and, when it is not
        kept, the architecture without the layer) for model.json."""
        if not self.spec.whiten:
            return {}
        started = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            before = self.validate()
            views = 1 if self.pixels else self.train_inputs.shape[1]
            fit_on = torch.cat([self._vectors(self.train_inputs, view) for view in range(views)]).numpy()
            labels = np.tile(self.prepared.train_labels, views)
            mean, projection = fit_learned_whitening(fit_on, labels, self.spec.whiten_shrinkage)
            layer = LearnedWhitening(len(mean))
            layer.mean.copy_(torch.from_numpy(mean))
            layer.projection.copy_(torch.from_numpy(projection))
            self.embedding.whitening = layer
            after = self.validate()
        kept = after[self.monitor] >= before[self.monitor]
        figures: dict[str, object] = {
            "whitening": {
                "kept": kept,
                "validation_before": before,
                "validation_after": after,
                "fit_on": len(fit_on),
                "seconds": round(time.perf_counter() - started, 2),
            }
        }
        if not kept:
            self.embedding.whitening = None
            architecture = self.spec.architecture()
            architecture.pop("whiten", None)
            figures["architecture"] = architecture
        return figures


def random_pairs(labels: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """n/2 positive and n/2 negative pairs drawn at random from all pairs of the batch (no mining)."""
    a1, p, a2, neg = lmu.get_all_pairs_indices(labels)
    keep_pos = torch.randperm(len(a1))[: n // 2]
    keep_neg = torch.randperm(len(a2))[: n // 2]
    return a1[keep_pos], p[keep_pos], a2[keep_neg], neg[keep_neg]
