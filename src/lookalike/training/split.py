"""The train/validation/test split, decided per image by a hash of its content.

Deciding by content hash (not by position or a random draw) means every method, every
seed and the pretrained baseline share the same held-out test images, a re-indexed or
moved folder keeps its split, and exact duplicate files always land on the same side,
so a copy of a test image can never be trained on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .options import option

if TYPE_CHECKING:  # the split itself needs only the content hashes (and `lookalike --help` no numpy)
    from ..catalog import ImageRecord

SPLITS = ("train", "val", "test")
DEFAULT_SALT = "lookalike-split-v1"


@dataclass(frozen=True)
class SplitRule:
    """test_fraction of the images are held out for evaluation, val_fraction for early stopping."""

    test_fraction: float = option(0.2, "share of the images held out for evaluation (never trained on)")
    val_fraction: float = option(0.1, "share of the images for early stopping")
    salt: str = option(DEFAULT_SALT, "mixed into the hash that assigns each image", cli=False)

    def __post_init__(self) -> None:
        if not (
            0 <= self.test_fraction < 1 and 0 <= self.val_fraction < 1 and self.test_fraction + self.val_fraction < 1
        ):
            raise ValueError("split fractions must be in [0, 1) and leave some images for training")

    def bucket(self, sha256: str) -> float:
        """A uniform number in [0, 1) fixed by the image's content."""
        import hashlib  # here, not at the top: `lookalike --help` reads SplitRule's options and needs no OpenSSL

        digest = hashlib.sha256(f"{self.salt}:{sha256}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def assign(self, sha256: str) -> str:
        u = self.bucket(sha256)
        if u < self.test_fraction:
            return "test"
        if u < self.test_fraction + self.val_fraction:
            return "val"
        return "train"


@dataclass
class Split:
    """The split one model was trained with: its rule and the content hashes on each side."""

    rule: SplitRule
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[ImageRecord], rule: SplitRule | None = None) -> Split:
        rule = rule or SplitRule()
        split = cls(rule)
        seen: set[str] = set()
        for record in records:
            if record.sha256 is None or record.sha256 in seen:
                continue
            seen.add(record.sha256)
            getattr(split, rule.assign(record.sha256)).append(record.sha256)
        for name in SPLITS:
            getattr(split, name).sort()
        return split

    def select(self, records: Sequence[ImageRecord], name: str) -> list[ImageRecord]:
        """The records on side `name`, one per content hash, in path order (deterministic)."""
        wanted = set(getattr(self, name))
        chosen: dict[str, ImageRecord] = {}
        for record in sorted(records, key=lambda r: r.path):
            if record.sha256 in wanted and record.sha256 not in chosen:
                chosen[record.sha256] = record
        return list(chosen.values())

    def counts(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}

    def to_dict(self) -> dict[str, object]:
        return {"rule": asdict(self.rule), "train": self.train, "val": self.val, "test": self.test}

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        return cls(SplitRule(**data["rule"]), list(data["train"]), list(data["val"]), list(data["test"]))


def held_out_paths(records: Iterable[ImageRecord], trained_on: Iterable[str], rule: SplitRule) -> set[str]:
    """Paths of the test-side images that no model in question was trained or validated on."""
    excluded = set(trained_on)
    return {
        r.path for r in records if r.sha256 is not None and rule.assign(r.sha256) == "test" and r.sha256 not in excluded
    }
