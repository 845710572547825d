"""CLIP's tokenizer without PyTorch (embedders/clip_tokens.py) gives open_clip's token ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason="pip install 'lookalike[hub]'")
open_clip = pytest.importorskip("open_clip", reason="pip install 'lookalike[hub]'")

from lookalike.embedders.clip_tokens import clip_tokenizer  # noqa: E402

TEXTS = [
    "a photo of a dog",
    "Two RED cars on a street!!",
    "golden retriever on a beach at sunset",
    "café crème brûlée, ÄÖÜ straße ǅ",
    "it's what they're doing, isn't it? I'll go; don't won't y'all",
    "&amp; &lt;b&gt; html &quot;quotes&quot;",
    "日本語のテキスト and emoji 🐶🐈",
    "numbers 12345 and 3.14159",
    "  lots   of\twhitespace\n\nhere  ",
    "",
    "<start_of_text> typed <end_of_text> tokens",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "mojibake: Ã©tÃ©",
    "a-b_c/d\\e|f \x00ctrl\x07chars",
    "dog " * 100,  # longer than the context: truncated, still ending with the end token
]


def test_it_gives_open_clips_ids() -> None:
    ours = clip_tokenizer("ViT-B-32")
    assert ours is not None
    theirs = open_clip.get_tokenizer("ViT-B-32")(TEXTS).numpy()
    ids = ours(TEXTS)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXTS), 77)
    for text, mine, reference in zip(TEXTS, ids, theirs, strict=True):
        assert mine.tolist() == reference.tolist(), text
    assert ids[-1, -1] == ours.eot and ids[0, 0] == ours.sot


def test_models_with_another_tokenizer_are_left_to_open_clip() -> None:
    assert clip_tokenizer("no-such-model") is None  # a config added at run time (the tiny test CLIP)
    assert clip_tokenizer("ViT-B-16-SigLIP") is None  # a Hugging Face tokenizer


def test_reading_words_with_clip_vit_b32_does_not_import_torch() -> None:
    code = (
        "import sys, json\nfrom lookalike.embedders.hub import MODELS, HubSource\n"
        "ids = HubSource(MODELS['clip-vit-b32']).tokenize(['a dog on a beach'])\n"
        "print(json.dumps({'shape': list(ids.shape), 'torch': 'torch' in sys.modules}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"shape": [1, 77], "torch": False}
