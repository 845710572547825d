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

from typing import TYPE_CHECKING

import numpy as np

from .images import ImageError, open_image

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
) -> np.ndarray:
    """The similarity of each of up to `sample` indexed images (chosen at random) to its nearest other image.

    With `region`, of the centre half (by side) of each of up to `REGION_SAMPLE` of them instead,
    embedded now; files that cannot be read any more are left out.
    """
    name = embedder or collection.default_embedder
    ids = np.fromiter(sorted(collection.catalog.vector_ids(name)), dtype=np.int64)
    if len(ids) < 2:
        return np.empty(0, dtype=np.float32)
    size = min(REGION_SAMPLE if region else sample, sample, len(ids))
    chosen = np.sort(np.random.default_rng(seed).choice(ids, size=size, replace=False))
    if region:
        found, vectors = _centre_crop_vectors(collection, name, chosen)
    else:
        found, vectors = collection.catalog.vectors(name, chosen.tolist())
    if not len(found):
        return np.empty(0, dtype=np.float32)
    scores, neighbours = collection.index(name).search(np.asarray(vectors, dtype=np.float32), 2)
    nearest = []
    for own, row_scores, row_ids in zip(np.asarray(found), scores, neighbours, strict=True):
        others = [s for s, i in zip(row_scores, row_ids, strict=True) if i >= 0 and i != own]
        if others:
            nearest.append(others[0])
    return np.asarray(nearest, dtype=np.float32)


def _centre_crop_vectors(collection: Collection, embedder: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = collection.embedder(embedder)
    records = collection.catalog.get_many(ids.tolist())
    draft = tuple(2 * side for side in model.preprocessing.draft_size)  # the crop is still >= the model's input
    found, arrays = [], []
    for image_id in ids.tolist():
        record = records.get(image_id)
        if record is None:
            continue
        try:
            image = open_image(record.path, draft_size=draft)  # type: ignore[arg-type]
        except ImageError:
            continue
        w, h = image.size
        arrays.append(model.preprocess(image.crop((w // 4, h // 4, w - w // 4, h - h // 4))))
        found.append(image_id)
    if not arrays:
        return np.empty(0, dtype=np.int64), np.empty((0, model.dim), dtype=np.float32)
    vectors = np.concatenate([model.embed_arrays(np.stack(arrays[i : i + 32])) for i in range(0, len(arrays), 32)])
    return np.asarray(found, dtype=np.int64), vectors


def calibrate_weak_match(
    collection: Collection,
    embedder: str | None = None,
    *,
    quantile: float = WEAK_MATCH_QUANTILE,
    sample: int = CALIBRATION_SAMPLE,
    seed: int = 0,
    region: bool = False,
) -> float | None:
    """The similarity below which a result of `embedder` in this collection is a weak match.

    `region`: the threshold for searches of a region of the query (see the module's notes).
    None when the collection is too small to say (fewer than `MIN_CALIBRATION_IMAGES` images).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, not {quantile}")
    similarities = nearest_neighbour_similarities(collection, embedder, sample=sample, seed=seed, region=region)
    if len(similarities) < MIN_CALIBRATION_IMAGES:
        return None
    return float(np.quantile(similarities, quantile))
