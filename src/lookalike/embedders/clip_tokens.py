"""CLIP's tokenizer without PyTorch: open_clip's byte-pair vocabulary read by Hugging Face `tokenizers`.

open_clip's own tokenizer module imports PyTorch at its top and returns tensors, so reading a word query
with it loads PyTorch even when both CLIP towers run on ONNX Runtime. This builds the same tokenizer
(open_clip's `SimpleTokenizer`: ftfy and HTML clean-up, whitespace folded, lower case, CLIP's word
pattern, byte-level BPE over the vocabulary file open_clip ships) with the `tokenizers` package, the way
Hugging Face's CLIP tokenizer does, finds that file and the model's context length without importing
open_clip, and gives token ids as numpy. Tests check it gives open_clip's ids.

Only models whose configuration ships inside open_clip and uses that default tokenizer qualify; for any
other (a Hugging Face tokenizer, a config added at run time), `clip_tokenizer` returns None and the
caller uses open_clip's.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

SOT = "<start_of_text>"
EOT = "<end_of_text>"
#: CLIP's word pattern (open_clip's `SimpleTokenizer.pat`, without its special tokens, handled apart)
WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: merges used of the vocabulary file: CLIP's 49,152 tokens less the 256 bytes (twice) and 2 special tokens
MERGES = 49152 - 256 - 2


def open_clip_folder() -> Path | None:
    """Where open_clip is installed, found without importing it (its package imports PyTorch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def byte_units() -> list[str]:
    """GPT-2's and CLIP's printable stand-ins for the 256 byte values, in their vocabulary's order: the
    printable bytes as themselves, then the others as the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


class ClipTokenizer:
    """Token ids (n, context_length) int64 for texts, as open_clip's default tokenizer gives them."""

    def __init__(self, vocabulary_file: Path, context_length: int):
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        with gzip.open(vocabulary_file, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")[1 : MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        units = byte_units()
        tokens = [*units, *(u + "</w>" for u in units), *("".join(m) for m in merges), SOT, EOT]
        vocab = {token: i for i, token in enumerate(tokens)}
        bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(WORDS), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.add_special_tokens([SOT, EOT])  # typed in a text, they are themselves, as in open_clip
        self._tokenizer = tokenizer
        self.sot, self.eot = vocab[SOT], vocab[EOT]
        self.context_length = context_length

    @staticmethod
    def clean(text: str) -> str:
        """open_clip's "lower" clean-up: ftfy, HTML entities, whitespace folded, lower case."""
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self._tokenizer.encode_batch([self.clean(t) for t in texts], add_special_tokens=False)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, encoding in enumerate(encoded):
            ids = [self.sot, *encoding.ids, self.eot]
            if len(ids) > self.context_length:  # truncated, still ending with the end token
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out


@cache
def clip_tokenizer(architecture: str) -> ClipTokenizer | None:
    """The torch-free tokenizer of an open_clip model config, or None when it needs open_clip's own
    (not installed, a config outside the package, another tokenizer) or `tokenizers` is missing."""
    folder = open_clip_folder()
    if folder is None or importlib.util.find_spec("tokenizers") is None:
        return None
    config_file = folder / "model_configs" / f"{architecture}.json"
    vocabulary_file = folder / VOCAB_FILE
    if not config_file.is_file() or not vocabulary_file.is_file():
        return None
    text: dict[str, Any] = json.loads(config_file.read_text()).get("text_cfg", {})
    if text.get("hf_tokenizer_name") or text.get("tokenizer_kwargs"):
        return None
    return ClipTokenizer(vocabulary_file, int(text.get("context_length", 77)))
