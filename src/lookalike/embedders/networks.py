"""The PyTorch networks behind the embedders: pretrained CNNs and the architectures trained on a collection.

Only exporting a network to ONNX (the first use of an embedder on a machine), the `torch` runtime
and training import this module; searching and indexing run the exported file (`onnx.py`).

- `NormalisedFeatures` wraps any feature network: uint8 pixels in, unit vectors out, pixel
  normalisation inside the graph (cheap there, costly in numpy in the decoding threads).
- Pretrained: EfficientNet-Lite0/1/2 (weights from their pip packages), torchvision's ResNet-50
  and VGG-16 (weights downloaded by torchvision, or a local file). The classifiers among them are
  wrapped by `NormalisedFeaturesAndClasses`: the same unit vectors, plus ImageNet class probabilities.
- Trained (`build_module`): an `Embedding` = backbone -> head (-> learned whitening), described by the `architecture`
  dict that training writes into `models/NAME/model.json`.
"""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import torch
from torch import nn

from .base import EmbedderError, Preprocessing
from .weights import EFFICIENTNET_LITE_SIZES, pip_weights_file


class NormalisedFeatures(nn.Module):
    """Pixels in, unit vectors out: (n, H, W, 3) uint8 -> normalise -> features -> L2-normalise."""

    def __init__(self, features: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.features = features
        std = torch.tensor(preprocessing.std, dtype=torch.float32) * 255.0
        self.register_buffer("scale", (1.0 / std).view(1, 3, 1, 1))
        self.register_buffer("shift", (-torch.tensor(preprocessing.mean) * 255.0 / std).view(1, 3, 1, 1))

    def forward_normalised(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) float32, already normalised (training data) -> unit vectors."""
        return nn.functional.normalize(self.features(images).flatten(1), dim=1)

    def normalise_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 -> (n, 3, H, W) float32, normalised as the network was trained."""
        return pixels.permute(0, 3, 1, 2).to(torch.float32) * self.scale + self.shift

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_normalised(self.normalise_pixels(pixels))


class NormalisedFeaturesAndClasses(NormalisedFeatures):
    """Pixels in; unit vectors and class probabilities out, from one run of a classifier network.

    `features` returns (pooled features, class logits); the embedding is the features, as with
    `NormalisedFeatures`, so adding the classes changes no vector.
    """

    def forward_normalised(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.features(images)[0].flatten(1), dim=1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        features, logits = self.features(self.normalise_pixels(pixels))
        return nn.functional.normalize(features.flatten(1), dim=1), logits.softmax(dim=1)


# --- weights files --------------------------------------------------------------------------------


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, loaded as data only (a file cannot run code)."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise EmbedderError(f"weights file not found: {path}") from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise EmbedderError(f"cannot read weights file {Path(path).name}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EmbedderError(f"weights file {Path(path).name} does not hold a state dict")
    return state


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter `module` needs from `state`; extra keys (a classifier) are ignored."""
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise EmbedderError(f"weights from {source} do not fit this network; missing e.g. {result.missing_keys[:3]}")


# --- pretrained -----------------------------------------------------------------------------------


class GeM(nn.Module):
    """Generalised-mean pooling of a feature map (Radenović et al., 2018): (mean over positions of x^p)^(1/p).

    (n, c, h, w) -> (n, c). p = 1 is average pooling, p -> infinity max pooling; in between, strong local
    activations (an object's parts) weigh more than the background. `learnable` makes p a parameter (for
    training); otherwise it is a constant of the exported graph. Activations are clamped to `eps` first
    (x^p needs x > 0; the EfficientNet-Lites' ReLU6 outputs are >= 0 anyway).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM needs p > 0, got {p}")
        self.eps = eps
        if learnable:
            self.p: torch.Tensor | float = nn.Parameter(torch.tensor(float(p)))
        else:
            self.p = float(p)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if isinstance(self.p, float) and self.p == 1.0:
            return features.mean(dim=(2, 3))
        return features.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3g}"


def average_pool(features: torch.Tensor) -> torch.Tensor:
    return features.mean(dim=(2, 3))


class EfficientNetLiteFeatures(nn.Module):
    """An EfficientNet-Lite up to the 1280-channel head, then pooled: global average pooling, or `pool`
    (e.g. `GeM(p)`) over the last feature map."""

    def __init__(self, network: nn.Module, pool: nn.Module | None = None):
        super().__init__()
        self.network = network
        self.pool = pool

    def pooled(self, feature_map: torch.Tensor) -> torch.Tensor:
        return average_pool(feature_map) if self.pool is None else self.pool(feature_map)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pooled(self.network.extract_features(images))


class EfficientNetLiteFeaturesAndClasses(EfficientNetLiteFeatures):
    """The pooled features and the network's ImageNet logits (its dropout is off in eval mode).

    The classifier was trained on average-pooled features, so the logits come from those whatever `pool`
    gives the embedding: a GeM embedder tags images exactly as the plain one does.
    """

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        feature_map = self.network.extract_features(images)
        average = average_pool(feature_map)
        features = average if self.pool is None else self.pool(feature_map)
        return features, self.network._fc(average)


class MultiView(nn.Module):
    """Several views of each image (e.g. the centre crop and the whole photo) embedded as one vector.

    (n, V, H, W, 3) uint8 -> `single` runs on all n*V views in one batch -> the V unit vectors of an image
    are summed and L2-normalised. A classifier's probabilities are those of view 0 (the usual centre crop),
    so tags do not change. `single` is a `NormalisedFeatures` (or `...AndClasses`) module.
    """

    def __init__(self, single: nn.Module):
        super().__init__()
        self.single = single

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        views, height, width, channels = pixels.shape[1:]
        out = self.single(pixels.reshape(-1, height, width, channels))
        vectors, probabilities = out if isinstance(out, tuple) else (out, None)
        summed = nn.functional.normalize(vectors.reshape(-1, views, vectors.shape[1]).sum(dim=1), dim=1)
        if probabilities is None:
            return summed
        return summed, probabilities.reshape(-1, views, probabilities.shape[1])[:, 0]


def efficientnet_lite_network(name: str = "efficientnet-lite0", weights: str | Path | None = None) -> nn.Module:
    """The full classifier network (features + 1000-way ImageNet head) with its pretrained weights."""
    from efficientnet_lite_pytorch import EfficientNet

    if name not in EFFICIENTNET_LITE_SIZES:
        raise EmbedderError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(EFFICIENTNET_LITE_SIZES)}")
    network = EfficientNet.from_name(name)
    path = Path(weights) if weights is not None else pip_weights_file(name)
    load_into(network, load_state_dict(path), path.name)
    return network.eval()


def efficientnet_lite0_network(weights: str | Path | None = None) -> nn.Module:
    return efficientnet_lite_network("efficientnet-lite0", weights)


def torchvision_state(url: str, weights: str | Path | None, name: str) -> dict[str, torch.Tensor]:
    """A local weights file, else torchvision's download of `url` (into torch's hub cache)."""
    if weights is not None:
        return load_state_dict(weights)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, map_location="cpu")
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise EmbedderError(
            f"could not download the {name} weights ({exc}). Offline, download {url} "
            f"elsewhere and pass the file with --weights PATH (Python: weights=PATH)."
        ) from exc


class ResNetFeaturesAndClasses(nn.Module):
    """A torchvision ResNet's pooled features and its ImageNet logits."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        features = torch.flatten(net.avgpool(x), 1)
        return features, net.fc(features)


def resnet50_classifier(url: str, weights: str | Path | None = None) -> nn.Module:
    """ResNet-50: 2048-d pooled features and the 1000 ImageNet logits."""
    from torchvision.models import resnet50

    network = resnet50(weights=None)
    load_into(network, torchvision_state(url, weights, "resnet50"), str(weights or url))
    return ResNetFeaturesAndClasses(network).eval()


class VGGFeatures(nn.Module):
    """VGG-16 convolutional trunk, global-average-pooled to 512-d."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).mean(dim=(2, 3))


def vgg16_features(url: str, weights: str | Path | None = None) -> nn.Module:
    """VGG-16: 512-d pooled convolutional features."""
    from torchvision.models import vgg16

    trunk = VGGFeatures(vgg16(weights=None).features)
    state = torchvision_state(url, weights, "vgg16")
    # Keys in torchvision's file are "features.N.weight"; keep them, drop the classifier.
    load_into(trunk, {k: v for k, v in state.items() if k.startswith("features.")}, str(weights or url))
    return trunk.eval()


# --- timm and open_clip (weights from the Hugging Face cache or a local file) ---------------------


class TimmFeatures(nn.Module):
    """A timm network's pooled features (`forward_head(pre_logits=True)`), and its logits when it has a head."""

    def __init__(self, network: nn.Module, classes: bool):
        super().__init__()
        self.network = network
        self.classes = classes

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        net = self.network
        features = net.forward_head(net.forward_features(images), pre_logits=True)
        return (features, net.get_classifier()(features)) if self.classes else features


def timm_network(architecture: str, weights: Path, classes: bool, **kwargs: object) -> nn.Module:
    """`architecture` ("vit_small_patch14_dinov2.lvd142m") with the weights of a local file, through timm's
    own loading (which adapts a checkpoint to the model, e.g. a ViT's position embeddings to its image size)."""
    try:
        import timm
    except ImportError as exc:
        raise EmbedderError("this embedder needs timm: pip install 'lookalike[hub]'") from exc
    try:
        network = timm.create_model(
            architecture, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs
        )
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise EmbedderError(f"weights from {weights.name} do not fit {architecture}: {str(exc)[:300]}") from exc
    return TimmFeatures(network.eval(), classes)


class ClipImage(nn.Module):
    """An open_clip model's image tower: normalised pixels -> image embedding (before L2-normalising)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class ClipText(nn.Module):
    """An open_clip model's text tower: token ids (n, context) int64 -> unit vectors in the images' space."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.model.encode_text(tokens), dim=1)


def open_clip_model(architecture: str, weights: Path) -> nn.Module:
    """An open_clip model ("ViT-B-32") with the weights of a local file."""
    try:
        import open_clip
    except ImportError as exc:
        raise EmbedderError("this embedder needs open_clip: pip install 'lookalike[hub]'") from exc
    try:
        return open_clip.create_model(architecture, pretrained=str(weights), require_pretrained=True).eval()
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise EmbedderError(f"weights from {weights.name} do not fit {architecture}: {str(exc)[:300]}") from exc


# --- architectures trained on a collection ---------------------------------------------------------
#
# Training on CPU is made cheap by splitting a pretrained network at a *cut*: everything before the
# cut is frozen, so its output is computed once per image view and cached (training/data.py); only
# the part after the cut runs in the training loop. At inference the two halves are one module again.

EFFICIENTNET_FEATURES = 1280  # every EfficientNet-Lite ends in a 1280-channel head conv


def projection_head(in_dim: int, dim: int, hidden: int = 512) -> nn.Module:
    """The small MLP that maps backbone features to the embedding (its output is L2-normalised later)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class ResidualHead(nn.Module):
    """Pretrained features plus a learned correction: x + MLP(x), x = the L2-normalised features (scaled to
    unit variance per value), the MLP's last layer zero at initialisation.

    At initialisation the output is the pretrained vector itself, so an untrained head ranks exactly as
    the pretrained embedder; training adds to the general-purpose features instead of replacing them
    (issue 14: a replaced head forgets similarity outside the classes it was trained on).
    The output keeps the features' size.
    """

    def __init__(self, in_dim: int, hidden: int = 512):
        super().__init__()
        self.scale = math.sqrt(in_dim)
        self.residual = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, in_dim))
        nn.init.zeros_(self.residual[2].weight)
        nn.init.zeros_(self.residual[2].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(features, dim=1) * self.scale
        return x + self.residual(x)


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


class FeatureEncoder(nn.Module):
    """L2-normalised features (scaled to unit variance per value) -> code.

    Normalising first makes the autoencoder preserve the cosine geometry the pretrained
    embedder is searched with.
    """

    def __init__(self, in_dim: int, hidden: int, dim: int):
        super().__init__()
        self.scale = math.sqrt(in_dim)
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features, dim=1) * self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalise(features))


class LearnedWhitening(nn.Module):
    """x -> (unit(x) - mean) @ projection.T: the learned whitening a training run may end with
    (`training.whitening`); the buffers are saved with the weights and exported to ONNX with them."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (nn.functional.normalize(x, dim=1) - self.mean) @ self.projection.T


class Embedding(nn.Module):
    """backbone -> head (-> whitening): the module exported for inference (pixels in, embedding out).

    `flip_average`: embed the image and its mirror image and sum the two unit vectors
    (test-time augmentation; the caller L2-normalises the sum). A photo and its mirror show
    the same thing, so this removes a source of noise at twice the inference cost.
    `whitening`: a `LearnedWhitening` fit after training (None until then, and for models without one).
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, flip_average: bool = False, whitening: nn.Module | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.flip_average = flip_average
        self.whitening = whitening

    def whiten(self, vectors: torch.Tensor) -> torch.Tensor:
        return vectors if self.whitening is None else self.whitening(vectors)

    def from_cached(self, cached: torch.Tensor) -> torch.Tensor:
        """Training path: start from the feature cache (pretrained backbones) or from pixels."""
        if isinstance(self.backbone, EfficientNetBackbone):
            return self.whiten(self.head(self.backbone.after_cut(cached)))
        return self.whiten(self.head(self.backbone(cached)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.flip_average:
            return self.whiten(self.head(self.backbone(images)))
        # One batch of both, so the backbone runs once over 2n images (NCHW: dim 3 is the width).
        both = self.head(self.backbone(torch.cat([images, images.flip(3)])))
        plain, mirrored = both.chunk(2)
        return self.whiten(nn.functional.normalize(plain, dim=1) + nn.functional.normalize(mirrored, dim=1))


def build_module(arch: dict) -> Embedding:
    """The inference network described by `arch` (random weights: they are loaded separately)."""
    if arch["backbone"] in EFFICIENTNET_LITE_SIZES:
        backbone: nn.Module = EfficientNetBackbone(int(arch["trainable_blocks"]), False, arch["backbone"])
        features = EFFICIENTNET_FEATURES
    elif arch["backbone"] == "small-cnn":
        backbone = SmallConvNet(int(arch["features"]), int(arch.get("width", 32)))
        features = int(arch["features"])
    else:
        raise EmbedderError(f"unknown backbone {arch['backbone']!r}")
    dim, head_kind = int(arch["dim"]), arch["head"]
    if head_kind == "mlp":
        head: nn.Module = projection_head(features, dim, int(arch["hidden"]))
    elif head_kind == "residual":
        head = ResidualHead(features, int(arch["hidden"]))
    elif head_kind == "feature-encoder":
        head = FeatureEncoder(features, int(arch["hidden"]), dim)
    elif head_kind == "identity":
        head = nn.Identity()
    else:
        raise EmbedderError(f"unknown head {head_kind!r}")
    whitening = LearnedWhitening(dim) if arch.get("whiten") else None
    return Embedding(backbone, head, bool(arch.get("flip_average", False)), whitening)
