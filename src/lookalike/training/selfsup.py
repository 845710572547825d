"""The `selfsup` method's task: NT-Xent on two augmented views of each photo, on cached frozen features.

Each training photo is cached as `views` pooled feature vectors of the frozen backbone (view 0 the
clean photo, the others drawn by `CopyAugmentation`, deterministic per (seed, photo, view)). A batch
takes B photos and two different cached views of each; the two views of a photo are the positive pair,
the other 2B - 2 vectors its negatives (pytorch-metric-learning's `NTXentLoss`, labels = photo index).
`--distill W` adds W x `metric_learning.neighbourhood_distillation` against the pretrained features
of the same views.

Validation needs no labels: each validation photo's augmented view queries the clean views of all of
them; `view-margin` = mean of (cosine to its own clean view - the best cosine to another photo),
`view-recall@1` = the share whose nearest clean view is its own. Early stopping watches the margin,
which keeps moving after recall@1 saturates. When the folder has labels, MAP@R and precision@k of the
clean views are reported too (never used for training or stopping).
"""

from __future__ import annotations

import io
import string
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pytorch_metric_learning import losses

from ..embedders.networks import EFFICIENTNET_FEATURES, EfficientNetBackbone, Embedding
from ..embedders.weights import efficientnet_lite_preprocessing
from .data import Augmentation, FeatureCache
from .methods.selfsup import SelfSupSpec
from .metric_learning import build_head, neighbourhood_distillation
from .prepared import Prepared, batched, validation_figures
from .task import Task


@dataclass(frozen=True)
class CopyAugmentation(Augmentation):
    """`Augmentation` (random resized crop, flip, colour jitter) plus the edits copies of a photo go through:
    sometimes greyscale, a Gaussian blur, a line of random text drawn over it, JPEG re-compression."""

    grey: float = 0.1
    blur: float = 0.3  # probability; radius uniform in [0.5, 2.5] pixels
    text: float = 0.3
    jpeg: float = 0.5  # probability; quality uniform in [20, 80]

    def __call__(self, image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
        image = super().__call__(image, size, rng)
        if rng.random() < self.grey:
            image = image.convert("L").convert("RGB")
        if rng.random() < self.blur:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
        if rng.random() < self.text:
            image = image.copy()
            draw = ImageDraw.Draw(image)
            letters = rng.choice(list(string.ascii_letters + string.digits + " "), size=int(rng.integers(4, 14)))
            font = ImageFont.load_default(int(rng.integers(size // 12, size // 5)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            xy = (float(rng.uniform(0, size * 0.5)), float(rng.uniform(0, size * 0.8)))
            draw.text(xy, "".join(letters), font=font, fill=colour, stroke_width=1, stroke_fill=(0, 0, 0))
        if rng.random() < self.jpeg:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(rng.integers(20, 81)))
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        return image


def view_figures(clean: torch.Tensor, augmented: torch.Tensor) -> dict[str, float]:
    """How well each augmented view finds its own photo's clean view among all clean views (label-free)."""
    c = torch.nn.functional.normalize(clean.float(), dim=1)
    a = torch.nn.functional.normalize(augmented.float(), dim=1)
    sims = a @ c.T
    own = sims.diagonal()
    others = sims.masked_fill(torch.eye(len(c), dtype=torch.bool), -2.0).max(dim=1).values
    return {
        "view-margin": float((own - others).mean()),
        "view-recall@1": float((sims.argmax(dim=1) == torch.arange(len(c))).float().mean()),
    }


class SelfSupTask(Task):
    monitor = "view-margin"

    def __init__(self, spec: SelfSupSpec, prepared: Prepared):
        if len(prepared.train) < 2 or len(prepared.val) < 2:
            raise ValueError("selfsup needs at least two training and two validation photos; add photos")
        self.spec = spec
        self.prepared = prepared
        self.model = self.embedding = Embedding(
            EfficientNetBackbone(0, True, spec.backbone_model), build_head(spec, EFFICIENTNET_FEATURES), False
        )
        self.loss_fn = losses.NTXentLoss(temperature=spec.temperature)
        self.batch_size = min(spec.batch_size, len(prepared.train))
        backbone = self.model.backbone
        pre = efficientnet_lite_preprocessing(spec.backbone_model)
        augmentation = CopyAugmentation()
        p = prepared
        backbone_id = f"{spec.backbone_model}-pooled"
        train = FeatureCache(p.cache_root, backbone, backbone_id, p.train, spec.views, p.seed, augmentation, pre)
        val = FeatureCache(p.cache_root, backbone, backbone_id, p.val, 2, p.seed, augmentation, pre)
        self.train_inputs = train.load(p.report("caching views (train)"))
        self.val_inputs = val.load(p.report("caching views (val)"))
        self.cache_seconds = train.seconds + val.seconds

    def steps_per_epoch(self) -> int:
        return len(self.train_inputs) // self.batch_size

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        n, views = self.train_inputs.shape[:2]
        order = np.random.permutation(n)
        for start in range(0, n - self.batch_size + 1, self.batch_size):
            idx = np.sort(order[start : start + self.batch_size])
            first = np.random.randint(0, views, size=len(idx))
            second = (first + np.random.randint(1, views, size=len(idx))) % views  # always another view
            pair = np.concatenate([self.train_inputs[idx, first], self.train_inputs[idx, second]])
            yield torch.from_numpy(np.asarray(pair, dtype=np.float32))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.from_cached(batch)
        photos = torch.arange(len(batch) // 2)
        loss = self.loss_fn(embeddings, torch.cat([photos, photos]))
        if self.spec.distill:
            loss = loss + self.spec.distill * neighbourhood_distillation(embeddings, batch)
        return loss

    def validate(self) -> dict[str, float]:
        clean, augmented = [], []
        for idx in batched(len(self.val_inputs), 256):
            inputs = torch.from_numpy(np.asarray(self.val_inputs[idx], dtype=np.float32))
            clean.append(self.model.from_cached(inputs[:, 0]))
            augmented.append(self.model.from_cached(inputs[:, 1]))
        figures = view_figures(torch.cat(clean), torch.cat(augmented))
        if self.prepared.labelled_validation():
            figures.update(validation_figures(torch.cat(clean), self.prepared.val_labels))
        return figures
