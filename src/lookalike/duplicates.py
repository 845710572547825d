"""Duplicates: the same photo again (exact copies, edited copies, other shots of one scene), grouped.

`Collection.duplicates(tier=...)` is the entry point; this module holds the logic. Tiers:

- `exact`: byte-identical files (same SHA-256, from the catalog) and pixel-identical re-encodes
  (candidate pairs at cosine >= 0.99 of the collection's vectors with equal width and height,
  confirmed by comparing the fully decoded pixels).
- `near` (the default): the same photo after edits (resize, re-compression, crop, rotation, flip,
  colour, text, a screenshot of it). Scored with a copy descriptor, the `copy-lite0` embedder
  (EfficientNet-Lite0 on the whole image, long side 224, GeM-pooled head, averaged with its mirror
  image), stored beside the collection's other vectors and embedded on demand. Pairs a little below the
  threshold count when a perceptual hash matches or when a geometric check of the two files (`verify.py`:
  local features and a RANSAC fit; on by default, `verify=False` skips it) finds enough agreeing matches.
- `similar`: another shot of the same scene or object (bursts): the collection's own vectors at a
  looser threshold.

Candidates come from the k-nearest-neighbour graph (never all pairs) through a compact index of the
tier's vectors (index/compact.py: PCA to 128 dimensions, 8-bit IVF, kept in the collection's
`duplicates/` folder and updated with the new images only), and every candidate pair is scored with the
exact cosine of the two stored vectors; the scored pairs (edges) are kept in the catalog, so after new
images are added only they are searched. Groups are star clusters (`star_clusters`), so chains of pairs do
not merge unrelated photos: every member is linked directly to the group's centre (a pair at the threshold, or one
the hash or the geometric check accepted), or, joining last, to at least ATTACH_LINKS of its members. The keeper
is the image with the most pixels, then the largest file, then the oldest; `reason` says which rule decided.

Decisions ("keep" = this group is resolved, "distinct" = these images are not duplicates) are stored
in the catalog, so resolved groups do not come back. `move_duplicates` moves the non-keepers into a
folder and writes a manifest that `undo_move` restores from; nothing is ever deleted.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from .catalog import Catalog, ImageRecord, pair_keys
from .images import ImageError, open_image
from .index.compact import FIT_SAMPLE, CompactIndex, fit_projection
from .results import Progress, SyncReport, WriteLock

TIERS = ("exact", "near", "similar")
DEFAULT_TIER = "near"
#: the embedder whose vectors score the `near` tier
COPY_EMBEDDER = "copy-lite0"
#: default thresholds per tier (cosine similarity), calibrated on benchmarks/copydetect.py's set (seed 0),
#: checked on seed 1; see README "Duplicates". `exact` is the cosine a pair needs before its pixels are compared.
THRESHOLDS = {"exact": 0.99, "near": 0.82, "similar": 0.85}
#: the `similar` tier's threshold for a default embedder other than efficientnet-lite0 (0.85 above), set so that as
#: many pairs reach it: the two-view descriptor's cosines run higher (on caltech101-dev, 157 pairs reach 0.85 with
#: Lite0, 418 with the two views, and 157 reach 0.888; on the copy-detection set the same count is at 0.900)
SIMILAR_THRESHOLDS = {"efficientnet-lite0-gem-ms": 0.89}


def default_threshold(tier: str, embedder: str) -> float:
    """The cosine a pair of `tier` needs by default, scored with `embedder` (the tier's: see `tier_embedder`)."""
    if tier == "similar":
        return SIMILAR_THRESHOLDS.get(embedder, THRESHOLDS["similar"])
    return THRESHOLDS[tier]


def tier_embedder(tier: str, default_embedder: str) -> str:
    """The embedder whose vectors score `tier`: the copy descriptor for `near`, the collection's default otherwise."""
    return COPY_EMBEDDER if tier == "near" else default_embedder


#: near tier: a stored pair below the threshold (but at least HASH_FLOOR) still counts when the two images'
#: perceptual hashes (DCT, 64 bits, as imagededup's pHash) differ in at most this many bits; None: no hash check.
#: Only at the calibrated threshold or a looser one: a stricter threshold is a plain cosine cut.
HASH_DISTANCE: int | None = 10
#: near tier, geometric verification (`verify.py`): a stored pair scoring in [VERIFY_FLOOR, threshold) counts when
#: its local features agree on one similarity transform with at least `verify_inliers(score)` inliers (VERIFY_INLIERS
#: at VERIFY_FLOOR falling linearly to the second figure at the calibrated threshold) whose convex hull covers at
#: least VERIFY_COVERAGE of each image. Only at the calibrated threshold or a looser one, as the hash check.
#: Calibrated on benchmarks/copydetect.py's set, seed 0 (benchmarks/calibrate_verify.py: 10,538 band pairs, 3,604
#: of one original, 6,934 not); checked on seed 1 without changes; see README "Duplicates". The floor keeps ~75% of
#: the screenshots' direct pairs (the rest score lower); unrelated pairs reach 84 inliers, but those with 40 or more
#: are either degenerate fits (all inliers on a line or a point: covered area ~0, hence VERIFY_COVERAGE) or two
#: screenshots in the same frame (the frame matches), so the bar is high where the cosine is low.
VERIFY_FLOOR = 0.6
VERIFY_INLIERS = (60, 20)
VERIFY_COVERAGE = 0.02
#: at most this many band pairs per image are checked: its best-scoring ones (a pair is checked when it is among
#: the best of either of its images)
VERIFY_PER_IMAGE = 10
#: checked pairs stored per transaction
VERIFY_BATCH = 200
#: a centre's neighbour joins its group only when linked to at least this share of the members before it
MIN_SHARE = 0.0
#: an image star clustering leaves alone joins the group holding at least this many of its links (`star_clusters`).
#: 2 joined two distractors to groups on benchmarks/copydetect.py's seed 2 (pair precision 0.9912 -> 0.9894); with 3,
#: seeds 0, 1 and 2 keep precision 0.993, 0.994, 0.990 and the strong edits gain 0.01-0.07 (README "Duplicates")
ATTACH_LINKS = 3
#: neighbours kept per image (the k of the k-nearest-neighbour graph), by exact cosine
NEIGHBOURS = 10
#: candidates searched per image in the compact index, each scored exactly; the best NEIGHBOURS are kept. Twice
#: NEIGHBOURS: the compact index's order differs a little from the exact one (README "Duplicates")
CANDIDATES = 20
#: pairs are stored down to this cosine, so a lower `threshold=` regroups without searching again;
#: a threshold below it is refused. Low enough for the verifier's band (VERIFY_FLOOR); a catalog whose pairs were
#: stored with another floor is searched again once.
EDGE_FLOOR = 0.6
#: near tier, with the geometric check: besides the descriptor's nearest neighbours, each searched image's
#: HASH_NEIGHBOURS nearest by each perceptual hash (pHash and dHash, 64 bits) within HASH_CANDIDATE_BITS bits are
#: candidate pairs, whatever their cosine, stored with it. Large words over a photo can take its copy descriptor far
#: from the original's (cosine 0.40-0.58 on benchmarks/copydetect.py's seed 1, the original ranked up to 522nd), while
#: the hashes, which see the coarse layout of the whole image, stay within a few bits. A candidate below VERIFY_FLOOR
#: counts only when the geometric check accepts it at the floor's bar (VERIFY_INLIERS[0] inliers). 10 bits is
#: imagededup's default threshold: every pair its hashes match among an image's nearest is at least checked.
HASH_CANDIDATE_BITS = 10
HASH_NEIGHBOURS = 10
#: above this many stored hashes, the hash neighbours come from a binary IVF index (nprobe HASH_NPROBE) instead of
#: comparing with every stored hash
HASH_EXACT_LIMIT = 50_000
HASH_NPROBE = 16
#: perceptual hashes stored per transaction
HASH_BATCH = 2000
MASK64 = (1 << 64) - 1
#: the hash check's band starts here: the stored pairs' floor (from 0.70 before; at 0.60 no pair precision changed on
#: seeds 0-2 and seed 1's text overlays gained 0.013)
HASH_FLOOR = 0.6
DECISIONS = ("keep", "distinct")
#: images searched per batch when looking for new pairs
SEARCH_BATCH = 2048


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
    #: near tier: whether band pairs were checked geometrically, and how many were checked in this run
    #: (pairs checked in an earlier run are read from the catalog)
    verify: bool = False
    verified: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "tier": self.tier, "threshold": self.threshold, "embedder": self.embedder,
            "groups": [g.to_dict() for g in self.groups],
            "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
            "vanished": self.vanished, "compared": self.compared, "resolved": self.resolved,
            "verify": self.verify, "verified": self.verified, "seconds": round(self.seconds, 3),
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


class Collection(Protocol):
    """What this module uses of a `lookalike.Collection`, which passes itself in. Named here rather than
    imported, so collection.py can import this module and this module never imports collection.py."""

    path: Path
    catalog: Catalog

    @property
    def default_embedder(self) -> str: ...

    def writing(self) -> AbstractContextManager[None]: ...

    def records(
        self, *, under: str | os.PathLike[str] | None = None, status: str | None = "ok"
    ) -> list[ImageRecord]: ...

    def indexed_root(self) -> str: ...

    def vector_ids(self, embedder: str | None = None) -> set[int]: ...

    def vectors_of(self, ids: np.ndarray | Sequence[int], embedder: str | None = None) -> np.ndarray: ...

    def embed_missing(
        self,
        records: Sequence[ImageRecord],
        *,
        embedder: str | None = None,
        progress: Progress | None = None,
        write_lock: WriteLock | None = None,
    ) -> SyncReport: ...

    def remove(self, ids: Iterable[int], *, delete_uploads: bool = False) -> int: ...


# --- finding groups ---------------------------------------------------------------------------------


def find_duplicates(
    collection: Collection,
    tier: str = DEFAULT_TIER,
    *,
    threshold: float | None = None,
    under: str | os.PathLike[str] | None = None,
    include_resolved: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
    write_lock: WriteLock | None = None,
) -> DuplicateReport:
    """`Collection.duplicates`: see there."""
    started = time.perf_counter()
    if tier not in TIERS:
        raise DuplicatesError(f"unknown duplicates tier {tier!r}; choose one of {', '.join(TIERS)}")
    embedder = tier_embedder(tier, collection.default_embedder)
    threshold = default_threshold(tier, embedder) if threshold is None else float(threshold)
    if not EDGE_FLOOR <= threshold <= 1.0:
        raise DuplicatesError(f"a duplicates threshold must be between {EDGE_FLOOR} and 1 (cosine), not {threshold}")
    records = collection.records(under=under, status=None)
    readable = [r for r in records if r.status == "ok"]
    report = DuplicateReport(tier=tier, threshold=threshold, embedder=None)
    report.unreadable = [(r.path, r.error or "unreadable") for r in records if r.status != "ok"]
    by_id = {r.id: r for r in readable}

    # not under the collection's lock: embedding and searching take it only briefly, so searches go on meanwhile
    report.compared = update_pairs(collection, embedder, readable, progress, write_lock, hashes=tier == "near")
    a, b, scores = collection.catalog.pairs(embedder, threshold)
    report.embedder = embedder
    inside = np.isin(a, list(by_id)) & np.isin(b, list(by_id))
    a, b, scores = a[inside], b[inside], scores[inside]

    if tier == "exact":
        a, b, scores = _pixel_identical(collection, by_id, a, b, progress)
        same = collection.catalog.duplicate_groups(by_id)
        a = np.concatenate([a, *[np.full(len(g) - 1, g[0], dtype=np.int64) for g in same]])
        b = np.concatenate([b, *[np.asarray(g[1:], dtype=np.int64) for g in same]])
        scores = np.ones(len(a), dtype=np.float32)
        clusters = components(a, b)
    else:
        # the hash matches belong to the calibrated threshold and anything looser; a stricter threshold (a slider
        # moved up) is a plain cosine cut, so raising it always splits a pair whose score it passes
        if tier == "near" and HASH_DISTANCE is not None and HASH_FLOOR < threshold <= THRESHOLDS["near"]:
            a, b, scores = _with_hash_matches(collection, embedder, by_id, (a, b, scores), threshold, progress)
        if tier == "near" and verify and VERIFY_FLOOR < threshold <= THRESHOLDS["near"]:
            report.verify = True
            a, b, scores, report.verified = _with_verified_pairs(
                collection, embedder, by_id, (a, b, scores), threshold, progress
            )
        apart = {(min(x, y), max(x, y)) for x, y in collection.catalog.decisions("distinct")}
        clusters = star_clusters(a, b, scores, apart=apart, min_share=MIN_SHARE)

    keeps = _keep_decisions(collection)
    for members in clusters:
        present = [i for i in members if os.path.exists(by_id[i].path)]
        report.vanished += [by_id[i].path for i in members if i not in set(present)]
        if len(present) < 2:
            continue
        group = make_group(collection, tier, embedder, [by_id[i] for i in present], keeps)
        if not include_resolved and _resolved(group, keeps):
            report.resolved += 1
            continue
        report.groups.append(group)
    report.groups.sort(key=lambda g: (-len(g.members), g.keeper.id))
    report.seconds = time.perf_counter() - started
    return report


def update_pairs(
    collection: Collection,
    embedder: str,
    records: Sequence[ImageRecord],
    progress: Progress | None = None,
    write_lock: WriteLock | None = None,
    *,
    hashes: bool = False,
) -> int:
    """Search the images of `records` not searched before (or changed since) for their nearest neighbours
    with `embedder` (embedding those that lack its vector), and store the pairs scoring at least
    EDGE_FLOOR. Returns how many images were searched.

    Candidates come from the compact index (index/compact.py: the vectors projected to a few dimensions,
    kept under the collection's `duplicates/` folder and brought up to date here, new images only); each
    candidate pair is scored with the exact cosine of the two stored vectors. With `hashes` (the near tier),
    the searched images' perceptual hashes are computed and kept too, and their nearest by hash
    (`HashNeighbours`) are stored with their cosine, however low."""
    catalog = collection.catalog
    floor_key = f"duplicates-floor:{embedder}"
    settings = f"{EDGE_FLOOR} hashes {HASH_CANDIDATE_BITS}/{HASH_NEIGHBOURS}" if hashes else str(EDGE_FLOOR)
    if catalog.get_meta(floor_key) != settings:  # pairs stored with other settings (or none yet)
        with collection.writing():
            catalog.reset_pairs(embedder)
            catalog.set_meta(floor_key, settings)
    have = collection.vector_ids(embedder)
    missing = [r for r in records if r.id not in have]
    if missing:
        collection.embed_missing(missing, embedder=embedder, progress=progress, write_lock=write_lock)
        have = collection.vector_ids(embedder)
    searched = catalog.searched(embedder)
    todo = [r for r in records if r.id in have and (r.id not in searched or searched[r.id] != r.sha256)]
    changed = [r.id for r in todo if r.id in searched]
    if changed:
        with collection.writing():
            catalog.forget_pairs(embedder, changed)
    if not todo:
        return 0
    if len(have) < 2:  # one image: no pair to find
        with collection.writing():
            catalog.mark_searched(embedder, [(r.id, r.sha256) for r in todo])
        return len(todo)
    # the images to search get their vectors (re-)added: one whose file changed has a new vector
    index = compact_index(collection, embedder, have, [r.id for r in todo], progress)

    def stored(ids: np.ndarray) -> np.ndarray:
        return _stored_or_zero(collection, embedder, ids, index.projection.mean.shape[0])

    by_hash = None
    if hashes:
        perceptual_hashes(collection, todo, progress)
        hash_ids, codes = catalog.perceptual_hash_arrays()
        keep = np.isin(hash_ids, np.fromiter(have, dtype=np.int64, count=len(have)))
        by_hash = HashNeighbours(hash_ids[keep], codes[keep])
    stage = f"comparing ({embedder})"
    if progress:
        progress(stage, 0, len(todo))
    for start in range(0, len(todo), SEARCH_BATCH):
        chunk = todo[start : start + SEARCH_BATCH]
        ids = np.array([r.id for r in chunk], dtype=np.int64)
        vectors = collection.vectors_of(ids, embedder)
        a, b, scores = search_pairs(index, ids, vectors, stored, EDGE_FLOOR)
        if by_hash is not None:
            found = by_hash.search(ids)
            more = neighbour_pairs(ids, found, exact_scores(vectors, found, stored), -np.inf)
            fresh = ~np.isin(pair_keys(more[0], more[1]), pair_keys(a, b))
            a, b, scores = (np.concatenate([x, y[fresh]]) for x, y in zip((a, b, scores), more, strict=True))
        with collection.writing():
            catalog.put_pairs(embedder, a, b, scores)
            catalog.mark_searched(embedder, [(r.id, r.sha256) for r in chunk])
        if progress:
            progress(stage, start + len(chunk), len(todo))
    return len(todo)


#: the compact indexes live in this folder of the collection, one per embedder (NAME.faiss, NAME.npz, NAME.json)
COMPACT_FOLDER = "duplicates"
#: vectors read from the catalog per step when (re)building a compact index
BUILD_BATCH = 20_000


def compact_index(
    collection: Collection,
    embedder: str,
    have: set[int],
    refresh: Sequence[int] = (),
    progress: Progress | None = None,
) -> CompactIndex:
    """The compact index of `embedder`'s vectors, holding exactly the ids of `have` (the images with a vector):
    loaded from the collection's folder and updated (new ids added, ids of `refresh` added again, ids no
    longer stored removed), or built when there is none or its projection was fit on a much smaller or
    larger collection. Saved when it changed."""
    folder = collection.path / COMPACT_FOLDER
    index = CompactIndex.load(folder, embedder)
    every = np.array(sorted(have), dtype=np.int64)
    if index is None or index.stale(len(every)):
        sample = every
        if len(every) > FIT_SAMPLE:
            sample = np.sort(np.random.default_rng(0).choice(every, FIT_SAMPLE, replace=False))
        projection = fit_projection(collection.vectors_of(sample, embedder), len(every))
        stage = f"projecting ({embedder})"

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, len(every), BUILD_BATCH):
                yield collection.vectors_of(every[start : start + BUILD_BATCH], embedder)
                if progress:
                    progress(stage, min(start + BUILD_BATCH, len(every)), len(every))

        index = CompactIndex.build(projection, every, chunks())
    else:
        present = index.ids()
        add = np.union1d(np.setdiff1d(every, present), np.intersect1d(np.asarray(refresh, dtype=np.int64), every))
        gone = np.setdiff1d(present, every)
        if not len(add) and not len(gone):
            return index
        index.remove(gone)
        for start in range(0, len(add), BUILD_BATCH):
            part = add[start : start + BUILD_BATCH]
            index.add(part, collection.vectors_of(part, embedder))
    with collection.writing():
        index.save(folder, embedder)
    return index


def search_pairs(
    index: CompactIndex,
    ids: np.ndarray,
    vectors: np.ndarray,
    stored: Callable[[np.ndarray], np.ndarray],
    floor: float,
    neighbours: int = NEIGHBOURS,
    candidates: int = CANDIDATES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, exact cosine) of the pairs scoring at least `floor` between each of `ids` (full `vectors`) and
    its `neighbours` nearest by exact cosine among its `candidates` nearest through the compact `index`;
    `stored(ids)` gives the other ends' full vectors."""
    _, found = index.search(vectors, candidates + 1)  # + 1: an image usually finds itself first
    found = np.where(found == np.asarray(ids)[:, None], -1, found)
    scores = exact_scores(vectors, found, stored)
    if found.shape[1] > neighbours:
        best = np.argsort(-scores, axis=1, kind="stable")[:, :neighbours]
        found, scores = np.take_along_axis(found, best, 1), np.take_along_axis(scores, best, 1)
    return neighbour_pairs(ids, found, scores, floor)


def exact_scores(
    vectors: np.ndarray, found: np.ndarray, stored: Callable[[np.ndarray], np.ndarray], block: int = 256
) -> np.ndarray:
    """The cosine of each row's vector with the stored vector of each id it found (-inf where none: id -1).
    `block` rows at a time, so at most block x k stored vectors are held at once."""
    scores = np.full(found.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(found), block):
        rows = slice(start, start + block)
        hit = found[rows] >= 0
        if not hit.any():
            continue
        unique, inverse = np.unique(found[rows][hit], return_inverse=True)
        others = stored(unique)
        part = scores[rows]
        part[hit] = np.einsum("ij,ij->i", vectors[rows][np.nonzero(hit)[0]], others[inverse])
    return scores


def _stored_or_zero(collection: Collection, embedder: str, ids: np.ndarray, dim: int) -> np.ndarray:
    """Stored vectors of `ids`; zeros (a score of 0: no pair) for one removed since the index found it."""
    try:
        return collection.vectors_of(ids, embedder)
    except KeyError:
        have = np.isin(ids, list(collection.vector_ids(embedder)))
        out = np.zeros((len(ids), dim), dtype=np.float32)
        if have.any():
            out[have] = collection.vectors_of(ids[have], embedder)
        return out


def _with_hash_matches(
    collection: Collection,
    embedder: str,
    by_id: dict[int, ImageRecord],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`pairs` plus the stored pairs scoring in [HASH_FLOOR, threshold) whose perceptual hashes are within
    HASH_DISTANCE bits: the hash keeps greyscale, blurred and text-covered copies that the descriptor scores
    a little low, and the descriptor's floor keeps the hash's chance matches out."""
    a, b, scores = collection.catalog.pairs(embedder, HASH_FLOOR)
    band = (scores < threshold) & np.isin(a, list(by_id)) & np.isin(b, list(by_id))
    a, b, scores = a[band], b[band], scores[band]
    hashes = perceptual_hashes(collection, [by_id[i] for i in np.unique(np.concatenate([a, b])).tolist()], progress)
    keep = np.array(
        [
            x in hashes and y in hashes and (hashes[x][0] ^ hashes[y][0]).bit_count() <= HASH_DISTANCE
            for x, y in zip(a.tolist(), b.tolist(), strict=True)
        ],
        dtype=bool,
    )
    return tuple(np.concatenate([p, q[keep]]) for p, q in zip(pairs, (a, b, scores), strict=True))  # type: ignore[return-value]


def verify_inliers(score: np.ndarray | float) -> np.ndarray:
    """The inliers a band pair scoring `score` (cosine) needs: VERIFY_INLIERS[0] at VERIFY_FLOOR, falling linearly
    to VERIFY_INLIERS[1] at the calibrated threshold."""
    low, high = VERIFY_FLOOR, THRESHOLDS["near"]
    share = np.clip((np.asarray(score, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return VERIFY_INLIERS[0] + (VERIFY_INLIERS[1] - VERIFY_INLIERS[0]) * share


def verified_pairs(scores: np.ndarray, inliers: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Which band pairs (cosine `scores`, measured `inliers` and `coverage`) the verifier accepts."""
    return (np.asarray(inliers) >= verify_inliers(scores)) & (np.asarray(coverage) >= VERIFY_COVERAGE)


def _with_verified_pairs(
    collection: Collection,
    embedder: str,
    by_id: dict[int, ImageRecord],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    threshold: float,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`pairs` plus the stored pairs scoring below `threshold` that the geometric check accepts (`verified_pairs`),
    and how many pairs were checked now. Checked: each image's VERIFY_PER_IMAGE best pairs in [VERIFY_FLOOR,
    threshold), and every stored pair below VERIFY_FLOOR (only the hash neighbours are stored there: see
    HASH_CANDIDATE_BITS), held to the floor's bar. A pair's outcome is stored, so it is checked once until either
    image changes."""
    from .verify import METHOD, measure_pairs

    a, b, scores = collection.catalog.pairs(embedder, -2.0)  # every stored pair (cosines are >= -1)
    below = (scores < threshold) & np.isin(a, list(by_id)) & np.isin(b, list(by_id))
    below &= ~np.isin(pair_keys(a, b), pair_keys(pairs[0], pairs[1]))
    band, low = below & (scores >= VERIFY_FLOOR), below & (scores < VERIFY_FLOOR)
    best = _best_per_image(a[band], b[band], scores[band], VERIFY_PER_IMAGE)
    a, b, scores = (np.concatenate([x, y[low]]) for x, y in zip(best, (a, b, scores), strict=True))

    # outcomes as arrays, looked up by sorted key: compact however many pairs a large collection has checked
    keys, values = collection.catalog.verified_arrays(METHOD)
    wanted = pair_keys(a, b)
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    known = keys[at] == wanted if len(keys) else np.zeros(len(a), dtype=bool)
    measured = np.zeros((len(a), 4))  # inliers, matches, coverage, mirrored; unmeasured: nothing fits
    measured[known] = values[at[known]]
    todo = np.flatnonzero(~known)
    todo = todo[np.lexsort((b[todo], a[todo]))]  # pairs of one image together: its features stay in a cache
    stage = "verifying pairs"
    if progress:
        progress(stage, 0, len(todo))
    batch: list[tuple[int, int, int, int, float, bool]] = []
    outcomes = measure_pairs([(by_id[int(a[row])].path, by_id[int(b[row])].path) for row in todo])
    for n, (row, outcome) in enumerate(zip(todo.tolist(), outcomes, strict=True)):
        if outcome is not None:  # unreadable now (gone, changed): checked again next time
            measured[row] = (outcome.inliers, outcome.matches, outcome.coverage, outcome.mirrored)
            batch.append(
                (int(a[row]), int(b[row]), outcome.inliers, outcome.matches, outcome.coverage, outcome.mirrored)
            )
        if len(batch) >= VERIFY_BATCH or (batch and n + 1 == len(todo)):
            with collection.writing():
                collection.catalog.put_verified(METHOD, batch)
            batch = []
        if progress:
            progress(stage, n + 1, len(todo))
    keep = verified_pairs(scores, measured[:, 0], measured[:, 2])
    added = tuple(np.concatenate([p, q[keep]]) for p, q in zip(pairs, (a, b, scores), strict=True))
    return (*added, len(todo))  # type: ignore[return-value]


def _best_per_image(
    a: np.ndarray, b: np.ndarray, scores: np.ndarray, per_image: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs that are among the `per_image` best-scoring pairs of either of their two images."""
    if not len(a):
        return a, b, scores
    ends = np.concatenate([a, b])  # every pair once under each of its two images
    rows = np.concatenate([np.arange(len(a)), np.arange(len(a))])
    order = np.lexsort((-np.concatenate([scores, scores]), ends))
    ends, rows = ends[order], rows[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ends)) + 1]
    rank = np.arange(len(ends)) - np.repeat(starts, np.diff(np.r_[starts, len(ends)]))
    keep = np.zeros(len(a), dtype=bool)
    keep[rows[rank < per_image]] = True
    return a[keep], b[keep], scores[keep]


def perceptual_hashes(
    collection: Collection, records: Sequence[ImageRecord], progress: Progress | None = None
) -> dict[int, tuple[int, int]]:
    """Each readable image's 64-bit perceptual hashes (pHash, dHash; unsigned ints), computed once (images decoded
    in one thread per core) and kept in the catalog."""
    stored = collection.catalog.perceptual_hashes(r.id for r in records)
    sha_of = {r.id: r.sha256 for r in records}
    out = {i: (p & MASK64, d & MASK64) for i, (h, p, d) in stored.items() if d is not None and sha_of.get(i) == h}
    todo = [r for r in records if r.id not in out]
    if not todo:
        return out

    def compute(record: ImageRecord) -> tuple[int, int] | None:
        try:
            image = open_image(Path(record.path), draft_size=(256, 256))
        except (ImageError, OSError):
            return None
        return perceptual_hash(image), difference_hash(image)

    def signed(value: int) -> int:
        return value - (1 << 64) if value >= 1 << 63 else value

    new = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for n, (record, found) in enumerate(zip(todo, pool.map(compute, todo), strict=True)):
            if found is not None:
                out[record.id] = found
                new.append((record.id, record.sha256, signed(found[0]), signed(found[1])))
            if progress:
                progress("hashing", n + 1, len(todo))
            if len(new) >= HASH_BATCH or (new and n + 1 == len(todo)):
                with collection.writing():
                    collection.catalog.put_perceptual_hashes(new)
                new = []
    return out


def perceptual_hash(image: Image.Image) -> int:
    """pHash: the signs of the 8 x 8 lowest frequencies of the DCT of the 32 x 32 grey image against their median."""
    from scipy.fft import dct

    pixels = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    coefficients = dct(dct(pixels, axis=0), axis=1)[:8, :8].ravel()
    bits = coefficients >= np.median(coefficients[1:])
    return int(np.packbits(bits).view(">u8")[0])


def difference_hash(image: Image.Image) -> int:
    """dHash (as imagededup's): whether each pixel of the 9 x 8 grey image is brighter than its left neighbour."""
    pixels = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return int(np.packbits(pixels[:, 1:] > pixels[:, :-1]).view(">u8")[0])


class HashNeighbours:
    """Each image's nearest stored images by perceptual hash (pHash and dHash apart), within HASH_CANDIDATE_BITS.

    Up to HASH_EXACT_LIMIT hashes every stored hash is compared (faiss IndexBinaryFlat); above, a binary IVF index
    (2 sqrt(n) lists, HASH_NPROBE probed) finds them, most but not all (measured in
    benchmarks/bench_duplicates_scale.py)."""

    def __init__(self, ids: np.ndarray, hashes: np.ndarray):
        """`hashes`: one row per id of `ids`, (pHash, dHash) as 64-bit ints (signed or not: the same bits)."""
        import faiss  # here: `import lookalike` stays light

        order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")  # sorted ids: rows found by bisection
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        hashes = np.ascontiguousarray(np.asarray(hashes)[order]).view(np.uint64).reshape(-1, 2)
        self.codes = [np.ascontiguousarray(hashes[:, n]).view(np.uint8).reshape(-1, 8) for n in range(2)]
        self.indexes = []
        for codes in self.codes:
            if len(codes) <= HASH_EXACT_LIMIT:
                index = faiss.IndexBinaryFlat(64)
            else:
                lists = int(2 * np.sqrt(len(codes)))
                index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(64), 64, lists)
                index.nprobe = HASH_NPROBE
                sample = np.random.default_rng(0).choice(len(codes), min(len(codes), lists * 40), replace=False)
                index.train(codes[np.sort(sample)])
            index.add(codes)
            self.indexes.append(index)

    def search(self, ids: np.ndarray) -> np.ndarray:
        """For each of `ids`, the ids of its nearest (up to HASH_NEIGHBOURS by each hash, within the bits), -1 padded;
        an id without a stored hash finds nothing."""
        out = np.full((len(ids), 2 * HASH_NEIGHBOURS), -1, dtype=np.int64)
        if len(self.ids) < 2:
            return out
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        have = np.flatnonzero(self.ids[rows] == ids)
        if not len(have):
            return out
        k = min(HASH_NEIGHBOURS + 1, len(self.ids))  # + 1: an image usually finds itself first
        for n, (codes, index) in enumerate(zip(self.codes, self.indexes, strict=True)):
            distances, found = index.search(codes[rows[have]], k)
            found = np.where((found >= 0) & (distances <= HASH_CANDIDATE_BITS), self.ids[np.maximum(found, 0)], -1)
            found = np.where(found == ids[have, None], -1, found)
            # the nearest HASH_NEIGHBOURS other than the image itself
            order = np.argsort(found < 0, axis=1, kind="stable")[:, :HASH_NEIGHBOURS]
            part = np.take_along_axis(found, order, 1)
            out[have, n * HASH_NEIGHBOURS : n * HASH_NEIGHBOURS + part.shape[1]] = part
        return out


def neighbour_pairs(
    ids: np.ndarray, found: np.ndarray, scores: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, score) of the neighbour lists' pairs scoring at least `floor`, each pair once (a < b)."""
    rows = np.repeat(np.asarray(ids, dtype=np.int64), found.shape[1])
    cols, flat = found.ravel(), scores.ravel()
    keep = (cols >= 0) & (cols != rows) & (flat >= floor)
    a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    flat = np.minimum(flat[keep], 1.0)
    if not len(a):
        return a, b, flat.astype(np.float32)
    order = np.lexsort((-flat, b, a))
    a, b, flat = a[order], b[order], flat[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], flat[first].astype(np.float32)


def components(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components (of two or more ids) of the pairs (a[i], b[i])."""
    from scipy.sparse import coo_matrix  # imported here: `import lookalike` stays light
    from scipy.sparse.csgraph import connected_components

    if not len(a):
        return []
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a)), (inverse[: len(a)], inverse[len(a) :])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [sorted(int(i) for i in nodes[part]) for part in np.split(order, cuts) if len(part) > 1]


def star_clusters(
    a: np.ndarray,
    b: np.ndarray,
    scores: np.ndarray,
    *,
    apart: set[tuple[int, int]] | None = None,
    min_share: float = 0.0,
) -> list[list[int]]:
    """Groups that do not chain: star clustering over the pairs (each pair: a link scoring over the threshold).

    Within each connected component, the image linked to the most others (ties: the highest summed
    score, then the lowest id) is a centre; it and the unassigned images linked to it form a group,
    and the rest of the component is clustered again the same way. Every member of a group is linked
    directly to its centre (or, joining last, to several members), so a chain of pairs (A~B, B~C, C~D)
    never puts A and D together through two weak links. The centre's neighbours join best first; one also
    needs links to at least `min_share` of the members that joined before it, and is left out if it and a
    member are `apart` (pairs (smaller id, larger id) decided not to be duplicates). An image left alone at
    the end joins the group holding at least ATTACH_LINKS of its links (`_attach_leftovers`).
    """
    apart = apart or set()
    groups: list[list[int]] = []
    alone: list[int] = []  # images left without a group, for `_attach_leftovers`
    neighbours: dict[int, dict[int, float]] = {}
    for x, y, s in zip(a.tolist(), b.tolist(), scores.tolist(), strict=True):
        neighbours.setdefault(x, {})[y] = s
        neighbours.setdefault(y, {})[x] = s

    def rank(i: int, left: set[int]) -> tuple[int, float, int]:
        links = [s for j, s in neighbours[i].items() if j in left]
        return (-len(links), -sum(links), i)

    for component in components(a, b):
        left = set(component)
        heap = [(rank(i, left), i) for i in component]
        heapq.heapify(heap)
        while heap:
            key, centre = heapq.heappop(heap)
            if centre not in left:
                continue
            current = rank(centre, left)
            if current != key:  # its links changed since it was queued: queue it again with its new rank
                heapq.heappush(heap, (current, centre))
                continue
            members = [centre]
            for j in sorted((j for j in neighbours[centre] if j in left), key=lambda j: -neighbours[centre][j]):
                if any((min(j, m), max(j, m)) in apart for m in members):
                    continue
                joined = members[1:]
                if joined and sum(m in neighbours[j] for m in joined) < min_share * len(joined):
                    continue
                members.append(j)
            left.difference_update(members)
            if len(members) > 1:
                groups.append(sorted(members))
            else:
                alone.append(centre)
    _attach_leftovers(groups, alone, neighbours, apart)
    return groups


def _attach_leftovers(
    groups: list[list[int]], alone: list[int], neighbours: dict[int, dict[int, float]], apart: set[tuple[int, int]]
) -> None:
    """Give each image that star clustering left alone to the group holding the most of its links, when that is
    at least ATTACH_LINKS of them: a copy linked to several members of a group but not to its centre (another copy
    was the better-linked centre) belongs there, while one link alone never brings an image in, so chains still
    do not merge. Ties: the higher summed score. `groups` is extended in place (each kept sorted)."""
    where = {m: n for n, group in enumerate(groups) for m in group}
    joining: dict[int, list[int]] = {}
    for image in alone:
        counts: dict[int, list[float]] = {}
        for other, score in neighbours.get(image, {}).items():
            if other in where:
                counts.setdefault(where[other], []).append(score)
        if not counts:
            continue
        best = max(counts, key=lambda n: (len(counts[n]), sum(counts[n]), -n))
        if len(counts[best]) < ATTACH_LINKS or any((min(image, m), max(image, m)) in apart for m in groups[best]):
            continue
        joining.setdefault(best, []).append(image)
    for n, images in joining.items():
        groups[n] = sorted(groups[n] + images)


def _pixel_identical(
    collection: Collection, by_id: dict[int, ImageRecord], a: np.ndarray, b: np.ndarray, progress: Progress | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs whose images have the same width and height and the same decoded pixels."""
    same_size = [
        (x, y)
        for x, y in zip(a.tolist(), b.tolist(), strict=True)
        if (by_id[x].width, by_id[x].height) == (by_id[y].width, by_id[y].height)
        and by_id[x].sha256 != by_id[y].sha256  # same bytes: found by the content hash
    ]
    digests: dict[int, str | None] = {}

    def digest(i: int) -> str | None:
        if i not in digests:
            try:
                pixels = np.asarray(open_image(Path(by_id[i].path)).convert("RGB"))
                digests[i] = hashlib.sha256(pixels.tobytes()).hexdigest()
            except (ImageError, OSError):
                digests[i] = None
        return digests[i]

    kept = []
    for n, (x, y) in enumerate(same_size):
        if digest(x) is not None and digest(x) == digest(y):
            kept.append((x, y))
        if progress:
            progress("comparing pixels", n + 1, len(same_size))
    pairs = np.array(kept, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1], np.ones(len(pairs), dtype=np.float32)


def _keep_decisions(collection: Collection) -> dict[int, set[int]]:
    """keeper -> the images decided to be its duplicates."""
    keeps: dict[int, set[int]] = {}
    for keeper, member in collection.catalog.decisions("keep"):
        keeps.setdefault(keeper, set()).add(member)
    return keeps


def _resolved(group: DuplicateGroup, keeps: dict[int, set[int]]) -> bool:
    """A group is resolved when a decision kept its keeper and covered every other member."""
    return {m.id for m in group.others} <= keeps.get(group.keeper.id, set())


def make_group(
    collection: Collection,
    tier: str,
    embedder: str,
    records: Sequence[ImageRecord],
    keeps: dict[int, set[int]] | None = None,
) -> DuplicateGroup:
    """A group of these images: its keeper (a decided one, else by `choose_keeper`) and each one's score to it."""
    decided = [r for r in records if keeps and len(keeps.get(r.id, set()) & {o.id for o in records}) > 0]
    if decided:
        keeper, reason = decided[0], "kept by decision"
    else:
        keeper, reason = choose_keeper(records)
    if tier == "exact":
        scores = dict.fromkeys((r.id for r in records), 1.0)
    else:
        ids = np.array([r.id for r in records], dtype=np.int64)
        vectors = collection.vectors_of(ids, embedder)
        similarity = vectors @ vectors[[r.id for r in records].index(keeper.id)]
        scores = {int(i): float(min(1.0, s)) for i, s in zip(ids, similarity, strict=True)}
        scores[keeper.id] = 1.0
    members = sorted(records, key=lambda r: (r.id != keeper.id, -scores[r.id], r.id))
    ids_key = ",".join(str(i) for i in sorted(r.id for r in records))
    key = f"{tier}-{min(r.id for r in records)}-{hashlib.sha1(ids_key.encode()).hexdigest()[:8]}"
    return DuplicateGroup(
        key=key,
        tier=tier,
        keeper=_member(keeper, 1.0),
        reason=reason,
        members=tuple(_member(r, scores[r.id]) for r in members),
    )


def choose_keeper(records: Sequence[ImageRecord]) -> tuple[ImageRecord, str]:
    """The image to keep: the most pixels, then the largest file, then the oldest (then the lowest id),
    and the rule that decided it."""

    def pixels(r: ImageRecord) -> int:
        return (r.width or 0) * (r.height or 0)

    ranked = sorted(records, key=lambda r: (-pixels(r), -r.size, r.mtime_ns, r.id))
    best, runner_up = ranked[0], ranked[1]
    if pixels(best) > pixels(runner_up):
        return best, f"most pixels ({best.width}x{best.height})"
    if best.size > runner_up.size:
        return best, f"largest file ({best.size:,} bytes) among the largest images"
    if best.mtime_ns < runner_up.mtime_ns:
        return best, "oldest file among equal images"
    return best, "first indexed among equal files"


def _member(record: ImageRecord, score: float) -> DuplicateMember:
    return DuplicateMember(
        id=record.id, path=record.path, width=record.width, height=record.height, size=record.size,
        mtime_ns=record.mtime_ns, score=score,
    )  # fmt: skip


# --- decisions ---------------------------------------------------------------------------------------


def decide(collection: Collection, ids: Sequence[int], decision: str, *, keeper: int | None = None) -> None:
    """`Collection.decide_duplicates`: see there."""
    if decision not in DECISIONS:
        raise DuplicatesError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
    ids = list(dict.fromkeys(int(i) for i in ids))
    if len(ids) < 2:
        raise DuplicatesError("a decision is about two images or more")
    unknown = sorted(set(ids) - set(collection.catalog.get_many(ids)))
    if unknown:
        raise DuplicatesError(f"no image with id {unknown[0]} in this collection")
    if decision == "keep":
        keeper = ids[0] if keeper is None else int(keeper)
        if keeper not in ids:
            raise DuplicatesError(f"the keeper {keeper} is not one of the images decided about")
        pairs = [(keeper, i) for i in ids if i != keeper]
    else:
        pairs = [(x, y) for n, x in enumerate(sorted(ids)) for y in sorted(ids)[n + 1 :]]
    with collection.writing():
        collection.catalog.put_decisions(decision, pairs)


def clear_decisions(collection: Collection, ids: Sequence[int] | None = None) -> int:
    """`Collection.clear_duplicate_decisions`: see there."""
    with collection.writing():
        return collection.catalog.delete_decisions(ids)


# --- moving and undoing -----------------------------------------------------------------------------

MANIFEST_VERSION = 1


def move_files(collection: Collection, groups: Sequence[DuplicateGroup], dest: Path, *, dry_run: bool) -> MoveReport:
    """`Collection.move_duplicates`: see there."""
    dest = Path(dest).expanduser().resolve()
    root = collection.indexed_root()
    own = collection.path.resolve()  # never indexed (sync skips it), even inside the indexed folder
    inside_own = dest == own or own in dest.parents
    if root and (dest == Path(root) or Path(root) in dest.parents) and not inside_own:
        raise DuplicatesError(
            f"{dest.name} is inside the indexed folder, where the moved files would be indexed again; "
            "choose a folder outside it"
        )
    report = MoveReport(dry_run=dry_run, manifest=None)
    taken: set[Path] = set()
    planned: list[tuple[Move, ImageRecord]] = []
    for group in groups:
        for member in group.others:
            record = collection.catalog.get(member.id)
            if record is None or record.status != "ok":
                report.failed.append((member.path, "no longer in the collection"))
                continue
            problem = _changed_since_indexed(record)
            if problem:
                report.failed.append((record.path, problem))
                continue
            target = _free_target(dest, record.path, root, taken)
            taken.add(target)
            move = Move(record.id, record.path, str(target), group.key, group.keeper.path)
            planned.append((move, record))
    if dry_run:
        report.moves = [m for m, _ in planned]
        return report
    if not planned:
        return report
    dest.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    manifest = dest / f"lookalike-moved-{stamp}.jsonl"
    report.manifest = manifest
    moved: list[int] = []
    with open(manifest, "x", encoding="utf-8") as journal:
        _record(journal, {"version": MANIFEST_VERSION, "created": stamp, "collection": str(collection.path)})
        for n, (move, record) in enumerate(planned):
            _record(journal, {"state": "moving", **vars(move), "sha256": record.sha256, "size": record.size})
            try:
                _move_file(Path(move.source), Path(move.target))
            except OSError as exc:
                reason = f"not moved: {exc.strerror or exc}"
                _record(journal, {"state": "failed", "id": move.id, "reason": reason})
                report.failed.append((move.source, reason))
                report.failed += [(m.source, "not moved: an earlier move failed") for m, _ in planned[n + 1 :]]
                break
            _record(journal, {"state": "moved", "id": move.id})
            report.moves.append(move)
            moved.append(move.id)
    if moved:
        collection.remove(moved)
    return report


def undo_moves(collection: Collection, manifest: Path) -> UndoReport:
    """`Collection.undo_move`: see there."""
    manifest = Path(manifest).expanduser().resolve()
    entries = _read_manifest(manifest)
    todo = [e for e in entries.values() if e["state"] in ("moved", "moving")]
    # a "moving" entry whose file reached its target (the process stopped before recording it) was moved
    todo = [e for e in todo if e["state"] == "moved" or (Path(e["target"]).exists() and not Path(e["source"]).exists())]
    if not todo:
        raise DuplicatesError(f"nothing to undo in {manifest.name}: every file in it is already back in place")
    problems = []
    for entry in todo:
        target, source = Path(entry["target"]), Path(entry["source"])
        if not target.is_file():
            problems.append(f"{target.name}: no longer in {target.parent.name}")
        elif target.stat().st_size != entry["size"] or _sha256(target) != entry["sha256"]:
            problems.append(f"{target.name}: changed since it was moved")
        elif source.exists():
            problems.append(f"{source.name}: another file is now at its old place")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DuplicatesError(
            f"refusing to undo {manifest.name}: {len(problems)} file(s) changed since they were moved, "
            f"nothing was restored: {'; '.join(problems[:5])}{more}"
        )
    report = UndoReport(manifest=manifest)
    with open(manifest, "a", encoding="utf-8") as journal:
        for entry in todo:
            _move_file(Path(entry["target"]), Path(entry["source"]))
            _record(journal, {"state": "restored", "id": entry["id"]})
            report.restored.append(entry["source"])
    return report


def _read_manifest(manifest: Path) -> dict[int, dict]:
    """The manifest's files by id, each with its latest state."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DuplicatesError(f"cannot read the manifest {manifest.name}: {exc.strerror or exc}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
        records = [json.loads(line) for line in lines[1:] if line.strip()]
    except json.JSONDecodeError:
        raise DuplicatesError(f"{manifest.name} is not a lookalike move manifest") from None
    if header.get("version") != MANIFEST_VERSION:
        raise DuplicatesError(f"{manifest.name} is not a lookalike move manifest")
    entries: dict[int, dict] = {}
    for record in records:
        if record["state"] == "moving":
            entries[record["id"]] = dict(record)
        elif record["id"] in entries:
            entries[record["id"]]["state"] = record["state"]
    return entries


def _record(journal: object, data: dict) -> None:
    """Append one line to the manifest and make sure it is on disk before going on."""
    journal.write(json.dumps(data) + "\n")  # type: ignore[attr-defined]
    journal.flush()  # type: ignore[attr-defined]
    os.fsync(journal.fileno())  # type: ignore[attr-defined]


def _move_file(source: Path, target: Path) -> None:
    """Move one file without ever losing it: on failure it is back at `source` and `target` does not exist."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(errno.EEXIST, "the target exists", str(target))
    try:
        os.rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # another file system: copy beside the target, then rename it into place, then drop the source
    partial = target.with_name(f".{target.name}.partial")
    try:
        shutil.copy2(source, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.rename(partial, target)
        os.unlink(source)
    except BaseException:
        partial.unlink(missing_ok=True)
        if source.exists():
            target.unlink(missing_ok=True)
        raise


def _free_target(dest: Path, source: str, root: str, taken: set[Path]) -> Path:
    """Where a file goes: its path below the indexed root, under `dest`; a name already used gets a suffix."""
    relative = os.path.relpath(source, root) if root and source.startswith(root + os.sep) else Path(source).name
    target = dest / relative
    n = 1
    while target.exists() or target in taken:
        target = target.with_name(f"{Path(relative).stem}-{n}{Path(relative).suffix}")
        n += 1
    return target


def _changed_since_indexed(record: ImageRecord) -> str | None:
    try:
        stat = os.stat(record.path)
    except OSError:
        return "the file is gone"
    if stat.st_size != record.size or stat.st_mtime_ns != record.mtime_ns:
        return "changed since it was indexed (run `lookalike index` again)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
