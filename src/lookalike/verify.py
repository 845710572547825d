"""Geometric verification of a candidate pair: is image B the same photo as image A after edits?

Local features (OpenCV SIFT on the grey image, long side at most LONG_SIDE), matched with Lowe's ratio
test, then a RANSAC fit of a similarity transform (rotation, uniform scale, translation:
`cv2.estimateAffinePartial2D`). A copy that was cropped, rotated, shrunk, framed in a screenshot or
written over keeps many matches that agree on one transform; another photo of the same kind of scene
keeps few. B's mirror image is tried too when the plain match finds few inliers (flipped copies).

The outcome of a pair (`Outcome`) is measured, not decided here: the near tier decides with it and the
pair's cosine (`duplicates.verified_pair`), and keeps the outcomes in the catalog so a pair is measured
once. Features are computed from the image files when needed and kept only in a per-run LRU cache
(`Verifier`): ~64 KB per image, too much to store for every image of a large collection.

Cost on the development machine (2 cores, shared, under load average 8-9): 64 ms of CPU per image (decode +
SIFT; 69 ms more for its mirror image, when needed), 9.5 ms per pair (matching + RANSAC, both orientations
when the plain one fails).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import ImageError, open_image

#: the grey image's long side, in pixels, before features are found (larger images are shrunk)
LONG_SIDE = 512
#: SIFT keypoints kept per image (the strongest)
KEYPOINTS = 500
#: Lowe's ratio test: a match is kept when its distance is below RATIO x the second-best one's
RATIO = 0.8
#: RANSAC: a match is an inlier when the fitted transform puts it within this many pixels (1.5% of LONG_SIDE)
REPROJECTION = 0.015 * LONG_SIDE
#: B's mirror image is tried when the plain match gives fewer inliers than this
MIRROR_BELOW = 25
#: names the settings above: stored outcomes measured with other settings are measured again
METHOD = f"sift{KEYPOINTS}-{LONG_SIDE}-r{RATIO}-p{REPROJECTION:g}-m{MIRROR_BELOW}"
#: images whose features the per-run cache keeps (~70 KB each, twice for mirrored ones: at most ~280 MB), shared
#: out among `measure_pairs`' threads
CACHE_IMAGES = 2048
#: pairs one of `measure_pairs`' threads measures in a row (sorted pairs: mostly one first image, read once)
BLOCK = 32


@dataclass(frozen=True)
class Outcome:
    """What the geometric check of one pair measured."""

    #: matches consistent with the best similarity transform
    inliers: int
    #: matches that passed the ratio test
    matches: int
    #: the share of the smaller of the two images' areas covered by the convex hull of the inliers (0..1)
    coverage: float
    #: the inliers were found against B's mirror image
    mirrored: bool = False


NOTHING = Outcome(0, 0, 0.0)

Features = tuple[np.ndarray, np.ndarray | None, tuple[int, int]]  # keypoint (x, y), descriptors, (width, height)


def grey(path: str | Path, long_side: int = LONG_SIDE) -> np.ndarray:
    """The image as an upright grey uint8 array with its long side at most `long_side` (decoded by
    `images.open_image`, so the collection's pixel limit and EXIF orientation apply)."""
    image = open_image(Path(path), draft_size=(long_side, long_side)).convert("L")
    scale = long_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image)


class Verifier:
    """Measures pairs of image files; keeps the features of the last CACHE_IMAGES images it read."""

    def __init__(self, cache_images: int = CACHE_IMAGES):
        import cv2  # imported here: `import lookalike` stays light

        self._cv2 = cv2
        self._sift = cv2.SIFT_create(nfeatures=KEYPOINTS)
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)
        self._cache: OrderedDict[tuple[str, bool], Features | None] = OrderedDict()
        self._size = cache_images
        #: images whose features were computed (not read from the cache), plain and mirrored
        self.images_read = 0

    def features(self, path: str, mirrored: bool = False) -> Features | None:
        """The image's keypoints and descriptors (of its mirror image if `mirrored`); None if it cannot be read."""
        key = (path, mirrored)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            pixels = grey(path)
        except (ImageError, OSError):
            found = None
        else:
            if mirrored:
                pixels = np.ascontiguousarray(pixels[:, ::-1])
            self.images_read += 1
            keypoints, descriptors = self._sift.detectAndCompute(pixels, None)
            xy = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
            if descriptors is not None:
                descriptors = np.clip(descriptors, 0, 255).astype(np.uint8)  # SIFT's values fit a byte: 4x smaller
            found = (xy, descriptors, (pixels.shape[1], pixels.shape[0]))
        self._cache[key] = found
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return found

    def measure(self, path_a: str, path_b: str) -> Outcome | None:
        """The pair's outcome, B as it is or mirrored, whichever has more inliers; None if either cannot be read."""
        a, b = self.features(path_a), self.features(path_b)
        if a is None or b is None:
            return None
        plain = self._match(a, b)
        if plain.inliers >= MIRROR_BELOW:
            return plain
        b_mirrored = self.features(path_b, mirrored=True)
        if b_mirrored is None:
            return plain
        flipped = self._match(a, b_mirrored)
        if flipped.inliers > plain.inliers:
            return Outcome(flipped.inliers, flipped.matches, flipped.coverage, mirrored=True)
        return plain

    def _match(self, a: Features, b: Features) -> Outcome:
        cv2 = self._cv2
        (xa, da, size_a), (xb, db, size_b) = a, b
        if da is None or db is None or len(da) < 2 or len(db) < 2:
            return NOTHING
        knn = self._matcher.knnMatch(da.astype(np.float32), db.astype(np.float32), k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
        if len(good) < 4:
            return Outcome(0, len(good), 0.0)
        src = xa[[m.queryIdx for m in good]]
        dst = xb[[m.trainIdx for m in good]]
        transform, mask = cv2.estimateAffinePartial2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION, maxIters=2000, confidence=0.995
        )
        if transform is None or mask is None:
            return Outcome(0, len(good), 0.0)
        inlier = mask.ravel().astype(bool)
        coverage = min(_hull_share(src[inlier], size_a), _hull_share(dst[inlier], size_b))
        return Outcome(int(inlier.sum()), len(good), coverage)


def measure_pairs(
    pairs: Sequence[tuple[str, str]], workers: int | None = None, block: int = BLOCK
) -> Iterator[Outcome | None]:
    """`Verifier.measure` of each pair of files, in order, by `workers` threads (default: one per core; OpenCV
    releases the GIL, so they run at once), each with its own Verifier and a share of the CACHE_IMAGES cache.
    Blocks of `block` consecutive pairs go to one thread, so sorted pairs of one image read it once."""
    workers = max(1, min(workers or os.cpu_count() or 1, -(-len(pairs) // block)))
    local = threading.local()

    def run(part: Sequence[tuple[str, str]]) -> list[Outcome | None]:
        if not hasattr(local, "verifier"):
            local.verifier = Verifier(CACHE_IMAGES // workers)
        return [local.verifier.measure(a, b) for a, b in part]

    blocks = [pairs[start : start + block] for start in range(0, len(pairs), block)]
    if workers == 1:
        for part in blocks:
            yield from run(part)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lookalike-verify")
    try:
        for outcomes in pool.map(run, blocks):
            yield from outcomes
    finally:  # also when the caller stops early: queued blocks are dropped, running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def _hull_share(points: np.ndarray, size: tuple[int, int]) -> float:
    """The area of the convex hull of `points` as a share of the image's area."""
    import cv2

    if len(points) < 3:
        return 0.0
    area = cv2.contourArea(cv2.convexHull(points.astype(np.float32)))
    return float(min(1.0, area / max(1, size[0] * size[1])))
