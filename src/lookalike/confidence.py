"""When is a search result a weak match? A similarity threshold calibrated on the collection itself.

Cosine similarity has no fixed meaning: with the pretrained CNN embedders every pair of
photos scores above zero (a motorbike and a cat score about 0.3), and what counts as close
depends on the embedder and on the collection. So the threshold is read off the collection's
own similarity distribution, without labels: take a sample of its images, find each one's
nearest other image, and put the threshold at a low quantile (`WEAK_MATCH_QUANTILE`) of
those nearest-neighbour similarities. A query whose best match is below it is further from
the collection than all but that fraction of the collection's own images are from their
neighbours: "no close match in this collection".

Because a query from the collection's own kind of images has a best match distributed like
a member's nearest neighbour, about `quantile` of such queries are flagged falsely; how many
foreign queries are caught is measured in docs/confidence.md (catsdogs and caltech101-dev).

A region of a photo is less like anything than the whole photo is (measured: with the
whole-image threshold, 17-23% of centre-half crops of the collection's own photos would be
flagged), so searches of a region get their own threshold: the same quantile of the best
matches of centre-half crops of a smaller sample (`REGION_SAMPLE`, embedded when calibrating).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import numpy as np

from .collection import FileCheckError
from .images import ImageError

if TYPE_CHECKING:
    from .collection import Collection

#: The share of the collection's own images whose nearest neighbour may lie below the threshold
#: (measured in docs/confidence.md: about that share of in-collection queries is flagged).
WEAK_MATCH_QUANTILE = 0.05
#: How many images' nearest neighbours the threshold is computed from (more only costs time).
CALIBRATION_SAMPLE = 1000
#: How many centre-half crops a region threshold is computed from (each is decoded and embedded).
REGION_SAMPLE = 100
#: Below this many images, a nearest-neighbour distribution says too little: no threshold.
MIN_CALIBRATION_IMAGES = 10


def nearest_neighbour_similarities(
    collection: Collection,
    embedder: str | None = None,
    *,
    sample: int = CALIBRATION_SAMPLE,
    seed: int = 0,
    region: bool = False,
    cancel: threading.Event | None = None,
    searching: Callable[[], AbstractContextManager[object]] | None = None,
) -> np.ndarray:
    """The similarity of each of up to `sample` indexed images (chosen at random) to its nearest other image.

    With `region`, of the centre half (by side) of each of up to `REGION_SAMPLE` of them instead,
    embedded now; files that are not the ones indexed any more are left out. `searching()`, if given,
    is held around the index search only, never while images are embedded (the server's read lock).
    """
    name = embedder or collection.default_embedder
    ids = np.fromiter(sorted(collection.vector_ids(name)), dtype=np.int64)
    if len(ids) < 2:
        return np.empty(0, dtype=np.float32)
    size = min(REGION_SAMPLE if region else sample, sample, len(ids))
    chosen = np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))
    if region:
        found, vectors = _centre_crop_vectors(collection, name, chosen, cancel)
    else:
        found, vectors = chosen, collection.vectors_of(chosen, name)
    if not len(found):
        return np.empty(0, dtype=np.float32)
    with searching() if searching is not None else nullcontext():
        # each image's nearest other, by the plain cosine the thresholds are for
        nearest = collection.search_vectors(vectors, 1, embedder=name, exclude=found, expand=0)
    return nearest.scores[nearest.ids[:, 0] >= 0, 0].astype(np.float32)


def _centre_crop_vectors(
    collection: Collection, embedder: str, ids: np.ndarray, cancel: threading.Event | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of the centre half (by side) of each image, embedded now; unreadable files are left out.

    `cancel`, once set, stops the embedding (a server shutting down): what was embedded is returned.
    Each file is read through `Collection.read_file`: only while it is still the regular file indexed
    (a file swapped for a FIFO, a device or other bytes is left out, never read).
    """
    found, vectors = [], []
    for image_id, record in sorted(collection.images(ids.tolist()).items()):
        if cancel is not None and cancel.is_set():
            break
        w, h = record.width or 0, record.height or 0
        try:
            data = collection.read_file(record, follow_symlinks=True)
            vector = collection.embed(data, embedder=embedder, box=(w / 4, h / 4, w - w / 4, h - h / 4))
        except (FileCheckError, ImageError):
            continue
        found.append(image_id)
        vectors.append(vector)
    dim = collection.embedder(embedder).dim
    return np.asarray(found, dtype=np.int64), np.stack(vectors) if vectors else np.empty((0, dim), np.float32)


def calibrate_weak_match(
    collection: Collection,
    embedder: str | None = None,
    *,
    quantile: float = WEAK_MATCH_QUANTILE,
    sample: int = CALIBRATION_SAMPLE,
    seed: int = 0,
    region: bool = False,
    cancel: threading.Event | None = None,
    searching: Callable[[], AbstractContextManager[object]] | None = None,
) -> float | None:
    """The similarity below which a result of `embedder` in this collection is a weak match.

    `region`: the threshold for searches of a region of the query (see the module's notes).
    None when the collection is too small to say (fewer than `MIN_CALIBRATION_IMAGES` images).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, not {quantile}")
    similarities = nearest_neighbour_similarities(
        collection, embedder, sample=sample, seed=seed, region=region, cancel=cancel, searching=searching
    )
    if cancel is not None and cancel.is_set():
        return None
    if len(similarities) < MIN_CALIBRATION_IMAGES:
        return None
    return float(np.quantile(similarities, quantile))
