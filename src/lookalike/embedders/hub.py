"""Stronger backbones from `timm` and `open_clip`, when their weights are on this machine.

No download ever happens here: the weights come from a local file (`weights=PATH`, `--weights PATH`)
or from the user's Hugging Face cache (`~/.cache/huggingface/hub`, `HF_HUB_CACHE`), filled by
timm/open_clip on a machine with network access. Without either, building the embedder fails with a
message saying how to get them. Like every network, each is exported to ONNX once (`onnx.py`) and
searched without PyTorch afterwards.

| name | network | vector | also |
|---|---|---|---|
| `dinov2-vits14` | timm `vit_small_patch14_dinov2.lvd142m` at 224 px (its authors' 256 -> 224 transform) | 384 | |
| `convnext-tiny` | timm `convnext_tiny.fb_in22k_ft_in1k` | 768 | ImageNet classes (concepts) |
| `efficientnet-b0` | timm `efficientnet_b0.ra_in1k` | 1280 | ImageNet classes (concepts) |
| `clip-vit-b32` | open_clip `ViT-B-32`, `laion2b_s34b_b79k` | 512 | a text encoder: `--text` reads words with it |

The facts each needs at search time (vector size, preprocessing, where its weights live) are copied
here from timm's and open_clip's configurations, so describing or searching with these embedders
never imports them or PyTorch (tests check they still agree). Reading a text query with CLIP does not
either: open_clip's tokenizer (which imports PyTorch) is rebuilt with `tokenizers` (clip_tokens.py), and
the text tower runs on ONNX Runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..concepts import IMAGENET
from .base import EmbedderError, Preprocessing
from .onnx import NetworkSource, OnnxEmbedder
from .runtime import file_identity, open_session, short_hash
from .weights import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("lookalike")

#: bump when what an exported network computes changes
EXPORT_RECIPE = "1"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: timm's evaluation transform for a 224-pixel model with crop_pct 0.875: short side 256, centre 224
TIMM_224 = Preprocessing(256, 224, Image.Resampling.BICUBIC, IMAGENET_MEAN, IMAGENET_STD)
#: open_clip's: short side 224, centre 224, bicubic, CLIP's normalisation
CLIP_224 = Preprocessing(224, 224, Image.Resampling.BICUBIC, CLIP_MEAN, CLIP_STD)


@dataclass(frozen=True)
class HubModel:
    """A timm or open_clip network lookalike knows by name."""

    name: str
    library: str  # "timm" or "open_clip"
    architecture: str  # timm: "arch.tag"; open_clip: the model config name
    hf_repo: str  # where the weights live on the Hugging Face hub (and so in its cache)
    hf_files: tuple[str, ...]  # weights files tried in the cache, best first
    dim: int
    preprocessing: Preprocessing
    classes: str | None = None  # "imagenet-1k" for a network with an ImageNet-1k head
    options: dict[str, Any] = field(default_factory=dict)  # model options (timm: img_size=...)
    pretrained: str = ""  # open_clip's pretrained tag, for the instructions

    def how_to_get(self) -> str:
        if self.library == "timm":
            fetch = f"python -c \"import timm; timm.create_model('{self.architecture}', pretrained=True)\""
        else:
            fetch = (
                f"python -c \"import open_clip; open_clip.create_model('{self.architecture}', "
                f"pretrained='{self.pretrained}')\""
            )
        return (
            f"{self.name} needs its weights, which are neither given (--weights PATH) nor in the Hugging Face cache. "
            f"On a machine with network access, pip install 'lookalike[hub]' and run {fetch} (it fills "
            f"~/.cache/huggingface; copy that folder here), or download {self.hf_files[0]} from "
            f"https://huggingface.co/{self.hf_repo} and pass it with --weights PATH."
        )


MODELS: dict[str, HubModel] = {
    m.name: m
    for m in [
        HubModel(
            "dinov2-vits14", "timm", "vit_small_patch14_dinov2.lvd142m", "timm/vit_small_patch14_dinov2.lvd142m",
            ("model.safetensors", "pytorch_model.bin"), 384, TIMM_224, options={"img_size": 224},
        ),
        HubModel(
            "convnext-tiny", "timm", "convnext_tiny.fb_in22k_ft_in1k", "timm/convnext_tiny.fb_in22k_ft_in1k",
            ("model.safetensors", "pytorch_model.bin"), 768, TIMM_224, classes=IMAGENET,
        ),
        HubModel(
            "efficientnet-b0", "timm", "efficientnet_b0.ra_in1k", "timm/efficientnet_b0.ra_in1k",
            ("model.safetensors", "pytorch_model.bin"), 1280, TIMM_224, classes=IMAGENET,
        ),
        HubModel(
            "clip-vit-b32", "open_clip", "ViT-B-32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), 512, CLIP_224,
            pretrained="laion2b_s34b_b79k",
        ),
    ]
}  # fmt: skip


def hf_cached_file(repo: str, filenames: Sequence[str]) -> Path | None:
    """The first of `filenames` that the Hugging Face cache holds for `repo` (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


class HubSource(NetworkSource):
    """A timm or open_clip network: its weights file (given, or in the Hugging Face cache) and how to build it."""

    def __init__(self, model: HubModel, weights: str | Path | None = None):
        self.model = model
        self.name = model.name
        self.classes = model.classes
        self.weights = Path(weights).expanduser() if weights is not None else None
        self._clip: nn.Module | None = None

    def weights_file(self) -> Path:
        if self.weights is not None:
            return self.weights
        found = hf_cached_file(self.model.hf_repo, self.model.hf_files)
        if found is None:
            raise EmbedderError(self.model.how_to_get())
        return found

    def key(self) -> str:
        return short_hash(EXPORT_RECIPE, self.name, self.model.architecture, file_identity(self.weights_file()))

    def clip_model(self) -> nn.Module:
        if self._clip is None:
            from .networks import open_clip_model

            self._clip = open_clip_model(self.model.architecture, self.weights_file())
        return self._clip

    def build(self) -> nn.Module:
        from .networks import ClipImage, NormalisedFeatures, NormalisedFeaturesAndClasses, timm_network

        pre = self.model.preprocessing
        if self.model.library == "open_clip":
            return NormalisedFeatures(ClipImage(self.clip_model()), pre)
        network = timm_network(self.model.architecture, self.weights_file(), bool(self.classes), **self.model.options)
        return NormalisedFeaturesAndClasses(network, pre) if self.classes else NormalisedFeatures(network, pre)

    def build_text(self) -> nn.Module:
        from .networks import ClipText

        return ClipText(self.clip_model()).eval()

    def text_onnx_path(self) -> Path:
        return self.onnx_path().with_name(self.onnx_path().stem + "-text.onnx")

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids (n, context) int64 of open_clip's tokenizer for this model: without PyTorch when it is
        open_clip's default one (clip_tokens.py), else open_clip's own (which imports PyTorch)."""
        from .clip_tokens import clip_tokenizer

        tokenizer = clip_tokenizer(self.model.architecture)
        if tokenizer is not None:
            return tokenizer(texts)
        try:
            import open_clip
        except ImportError as exc:
            raise EmbedderError("reading text with CLIP needs open_clip: pip install 'lookalike[hub]'") from exc
        return open_clip.get_tokenizer(self.model.architecture)(list(texts)).numpy().astype(np.int64)


class TextImageEmbedder(OnnxEmbedder):
    """A CLIP-like embedder: images and texts in one space. Its text tower is exported to ONNX too."""

    encodes_text = True
    source: HubSource

    def __init__(self, name: str, dim: int, preprocessing: Preprocessing, source: HubSource, runtime: str = "auto"):
        super().__init__(name, dim, preprocessing, source, runtime)
        self._text_session: Any = None
        self._text_module: nn.Module | None = None

    def prepare_text(self) -> Path:
        """Export the text tower once (checked against PyTorch on real token ids)."""
        path = self.source.text_onnx_path()
        if not path.is_file():
            log.info("preparing %s's text encoder for fast inference, once", self.name)
            import torch

            from .export import export_checked

            probe = torch.from_numpy(self.source.tokenize(["a photo of a dog", "two red cars on a street"]))
            export_checked(
                self.source.build_text(), path, example_shape=tuple(probe.shape), name=f"{self.name} text encoder",
                input_name="tokens", probe=probe,
            )  # fmt: skip
        return path

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.source.tokenize(texts)
        if self.runtime == "torch":
            import torch

            if self._text_module is None:
                self._text_module = self.source.build_text()
            with torch.inference_mode():
                out = self._text_module(torch.from_numpy(tokens)).numpy()
        else:
            if self._text_session is None:
                self._text_session = open_session(self.prepare_text(), self.threads)
            out = self._text_session.run(None, {"tokens": tokens})[0]
        return np.ascontiguousarray(out, dtype=np.float32)


def create(name: str, weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
    model = MODELS[name]
    source = HubSource(model, weights)
    kind = TextImageEmbedder if model.library == "open_clip" else OnnxEmbedder
    return kind(model.name, model.dim, model.preprocessing, source, runtime)


def factory(name: str) -> Callable[..., OnnxEmbedder]:
    """The registry factory of the model called `name` in `MODELS`."""

    def make(weights: str | Path | None = None, runtime: str = "auto") -> OnnxEmbedder:
        return create(name, weights, runtime)

    return make
