"""Duplicates: the same photo again (exact copies, edited copies, other shots of one scene), grouped.

`Collection.duplicates(tier=...)` is the entry point; this module holds the logic. Tiers:

- `exact`: byte-identical files (same SHA-256, from the catalog) and pixel-identical re-encodes
  (candidate pairs at cosine >= 0.99 of the collection's vectors with equal width and height,
  confirmed by comparing the fully decoded pixels).
- `near` (the default): the same photo after edits (resize, re-compression, crop, rotation, flip,
  colour, text, a screenshot of it). Scored with a copy descriptor, the `copy-lite0` embedder
  (EfficientNet-Lite0 on the whole image, long side 224, GeM-pooled head, averaged with its mirror
  image), stored beside the collection's other vectors and embedded on demand.
- `similar`: another shot of the same scene or object (bursts): the collection's own vectors at a
  looser threshold.

Candidates come from the k-nearest-neighbour graph through the collection's vector index (never all
pairs); the scored pairs (edges) are kept in the catalog, so after new images are added only they
are searched. Groups are formed around a keeper so that chains of pairs do not merge unrelated
photos: every member of a group scores at least the threshold with the group's keeper, and each
pair inside a group is at least the threshold or was linked directly. The keeper is the image
with the most pixels, then the largest file, then the oldest; `reason` says which rule decided.

Decisions ("keep" = this group is resolved, "distinct" = these images are not duplicates) are stored
in the catalog, so resolved groups do not come back. `move_duplicates` moves the non-keepers into a
folder and writes a manifest that `undo_move` restores from; nothing is ever deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .collection import Collection

TIERS = ("exact", "near", "similar")
DEFAULT_TIER = "near"
#: the embedder whose vectors score the `near` tier
COPY_EMBEDDER = "copy-lite0"
#: default thresholds per tier (cosine similarity), calibrated on benchmarks/copydetect.py's set (seed 0),
#: checked on seed 1; see README "Duplicates". `exact` is the cosine a pair needs before its pixels are compared.
THRESHOLDS = {"exact": 0.99, "near": 0.83, "similar": 0.85}
#: neighbours searched per image for candidate pairs
NEIGHBOURS = 10
#: pairs are stored down to this cosine, so a lower `threshold=` regroups without searching again
EDGE_FLOOR = 0.6


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group."""

    id: int
    path: str
    width: int | None
    height: int | None
    #: file size in bytes
    size: int
    #: the file's modification time (ns since the epoch) when it was indexed
    mtime_ns: int
    #: cosine similarity to the group's keeper (1.0 for the keeper itself and for exact copies)
    score: float

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id, "path": self.path, "width": self.width, "height": self.height, "size": self.size,
            "mtime_ns": self.mtime_ns, "score": round(self.score, 4),
        }  # fmt: skip


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are the same photo (or shot, for `similar`), with the one to keep."""

    #: stable while the group's members do not change: "<tier>-<smallest member id>-<hash of member ids>"
    key: str
    tier: str
    keeper: DuplicateMember
    #: why the keeper was chosen: "most pixels", "largest file" or "oldest file" (with the figures)
    reason: str
    #: every member, the keeper first, then by score (best first)
    members: tuple[DuplicateMember, ...]

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.members]

    @property
    def others(self) -> tuple[DuplicateMember, ...]:
        """The members that are not the keeper (what `move_duplicates` moves)."""
        return self.members[1:]

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key, "tier": self.tier, "keeper": self.keeper.id, "reason": self.reason,
            "members": [m.to_dict() for m in self.members],
        }  # fmt: skip


@dataclass
class DuplicateReport:
    """What `Collection.duplicates` found."""

    tier: str
    threshold: float
    #: the embedder whose vectors scored the pairs (None for byte-identical-only results)
    embedder: str | None
    groups: list[DuplicateGroup] = field(default_factory=list)
    #: (path, reason) of files that could not be read: never grouped
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    #: indexed files no longer on disk: left out of every group (run `lookalike index` to forget them)
    vanished: list[str] = field(default_factory=list)
    #: images searched for neighbours in this run (only those new since the last run)
    compared: int = 0
    #: groups left out because a decision resolved them (`include_resolved=True` shows them)
    resolved: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "tier": self.tier, "threshold": self.threshold, "embedder": self.embedder,
            "groups": [g.to_dict() for g in self.groups],
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "vanished": self.vanished, "compared": self.compared, "resolved": self.resolved,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass(frozen=True)
class Move:
    """One file moved (or to be moved, in a dry run)."""

    id: int
    source: str
    target: str
    #: the group it belongs to and that group's keeper (which stays)
    group: str
    keeper: str


@dataclass
class MoveReport:
    """What `move_duplicates` did (or would do, with `dry_run`)."""

    dry_run: bool
    #: the manifest `undo_move` reads (None in a dry run, or when nothing was moved)
    manifest: Path | None
    moves: list[Move] = field(default_factory=list)
    #: (path, reason) of files not moved: vanished, unreadable, or the move failed (the file is in place)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run, "manifest": None if self.manifest is None else str(self.manifest),
            "moves": [vars(m) for m in self.moves], "failed": [{"path": p, "reason": r} for p, r in self.failed],
        }  # fmt: skip


@dataclass
class UndoReport:
    """What `undo_move` restored."""

    manifest: Path
    restored: list[str] = field(default_factory=list)


class DuplicatesError(ValueError):
    """A duplicates request that cannot be done (unknown tier, a manifest whose files changed, ...)."""


def find_duplicates(collection: Collection, tier: str = DEFAULT_TIER, **options: object) -> DuplicateReport:
    raise NotImplementedError


def decide(collection: Collection, ids: Sequence[int], decision: str, *, keeper: int | None = None) -> None:
    raise NotImplementedError


def clear_decisions(collection: Collection, ids: Sequence[int] | None = None) -> int:
    raise NotImplementedError


def move_files(collection: Collection, groups: Sequence[DuplicateGroup], dest: Path, *, dry_run: bool) -> MoveReport:
    raise NotImplementedError


def undo_moves(collection: Collection, manifest: Path) -> UndoReport:
    raise NotImplementedError
