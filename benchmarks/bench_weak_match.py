"""How well does the label-free weak-match threshold (lookalike.confidence) separate good queries from foreign ones?

For each collection, the threshold is calibrated exactly as the server does it (`calibrate_weak_match`:
a low quantile of the nearest-neighbour similarities of 1,000 sampled images), then measured on:

* own queries: every image of the collection not in the calibration sample, searched against the rest
  (leave-one-out); the share whose best match falls below the threshold is the false "no close match" rate;
* region queries: the centre half (by side) of up to 200 such images (none of them in the region calibration
  sample), embedded as the server embeds a box, against the region threshold (and the whole-image one);
* foreign queries: every image of the other collection; the share caught as "no close match";
* per result: of the top-12 results of own queries, how many share the query's label above and below it;
* the labelled alternative: the similarity at which a result is as likely to share the query's label as not.

Usage (two collections of the same embedder, e.g. made with `lookalike index FOLDER --collection DIR`):
    python benchmarks/bench_weak_match.py --collection catsdogs=/tmp/c/catsdogs --collection caltech=/tmp/c/caltech \
        --out benchmarks/results/weak_match.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike import Collection
from lookalike.confidence import (
    CALIBRATION_SAMPLE,
    REGION_SAMPLE,
    WEAK_MATCH_QUANTILE,
    calibrate_weak_match,
    nearest_neighbour_similarities,
)
from lookalike.evaluation.runner import machine_info

QUANTILES = [0.01, 0.02, 0.05, 0.1, 0.2]
TOP = 12  # results per query, as the web page shows
REGION_QUERIES = 200


def top_matches(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, gallery rows) of every query, in blocks; with exclude_self query i is gallery row i."""
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    rows_out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 1024):
        block = queries[start : start + 1024] @ gallery.T
        if exclude_self:
            block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        rows = np.argpartition(-block, k, axis=1)[:, :k]
        part = np.take_along_axis(block, rows, axis=1)
        order = np.argsort(-part, axis=1)
        scores_out[start : start + len(block)] = np.take_along_axis(part, order, axis=1)
        rows_out[start : start + len(block)] = np.take_along_axis(rows, order, axis=1)
    return scores_out, rows_out


def calibration_sample(ids: np.ndarray, seed: int = 0) -> set[int]:
    """The ids `nearest_neighbour_similarities` draws (same generator, same call)."""
    chosen = np.random.default_rng(seed).choice(np.sort(ids), size=min(SAMPLE[0], len(ids)), replace=False)
    return {int(i) for i in chosen}


def labelled_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The similarity where a result is as likely to share the query's label as not (equal-precision point)."""
    order = np.argsort(scores)
    s, y = scores[order], same[order].astype(np.float64)
    # Above a cut c: precision of results >= c; take the lowest c with precision >= 0.5 in a 200-result window.
    window = 200
    run = np.convolve(y, np.ones(window) / window, mode="valid")
    above = np.nonzero(run >= 0.5)[0]
    return float(s[above[0] + window // 2]) if len(above) else float("nan")


def region_vectors(collection: Collection, embedder: str, ids: list[int]) -> np.ndarray:
    records = collection.images(ids)
    vectors = []
    for i in ids:
        w, h = records[i].width or 1, records[i].height or 1
        box = (w * 0.25, h * 0.25, w * 0.75, h * 0.75)
        vectors.append(collection.embed(records[i].path, embedder=embedder, box=box))
    return np.stack(vectors)


def measure(name: str, collection: Collection, foreign: dict[str, Collection], embedder: str) -> dict[str, object]:
    ids = np.array(sorted(collection.vector_ids(embedder)), dtype=np.int64)
    vectors = collection.vectors_of(ids, embedder)
    records = collection.images(ids.tolist())
    labels = np.asarray([records[int(i)].label or "" for i in ids])
    started = time.perf_counter()
    assert calibrate_weak_match(collection, embedder, sample=SAMPLE[0]) is not None  # what the server runs, timed
    calibration_seconds = time.perf_counter() - started
    started = time.perf_counter()
    region_samples = {
        seed: nearest_neighbour_similarities(collection, embedder, region=True, seed=seed, sample=SAMPLE[1])
        for seed in (0, 1, 2)
    }
    region_calibration_seconds = (time.perf_counter() - started) / 3
    whole = nearest_neighbour_similarities(collection, embedder, sample=SAMPLE[0])
    thresholds = {q: float(np.quantile(whole, q)) for q in QUANTILES}
    region_thresholds = {q: float(np.quantile(region_samples[0], q)) for q in QUANTILES}
    held_out = np.asarray([int(i) not in calibration_sample(ids) for i in ids])
    region_calibrated = {
        int(i) for i in np.random.default_rng(0).choice(ids, size=min(SAMPLE[1], len(ids)), replace=False)
    }

    scores, rows = top_matches(vectors, vectors, TOP, exclude_self=True)
    own_best = scores[held_out, 0]
    same = labels[rows[held_out]] == labels[held_out][:, None]
    hit_scores = scores[held_out].ravel()
    hit_same = same.ravel()

    rng = np.random.default_rng(1)
    candidates = np.asarray([i for i in ids[held_out] if int(i) not in region_calibrated])
    region_ids = sorted(rng.choice(candidates, size=min(REGION_QUERIES, len(candidates)), replace=False))
    region_scores = region_vectors(collection, embedder, [int(i) for i in region_ids]) @ vectors.T
    # A crop of an indexed image matches the image itself: its best match is the best among the others.
    region_scores[np.arange(len(region_ids)), np.searchsorted(ids, region_ids)] = -np.inf
    region_best = region_scores.max(axis=1)

    out: dict[str, object] = {
        "images": len(ids),
        "held_out_queries": int(held_out.sum()),
        "calibration_seconds": round(calibration_seconds, 3),
        "region_calibration_seconds": round(region_calibration_seconds, 3),
        "region_threshold_by_seed": {
            seed: round(float(np.quantile(v, WEAK_MATCH_QUANTILE)), 4) for seed, v in region_samples.items()
        },
        "nearest_neighbour_similarity": {
            "p01": float(np.quantile(scores[:, 0], 0.01)),
            "p05": float(np.quantile(scores[:, 0], 0.05)),
            "median": float(np.median(scores[:, 0])),
        },
        "labelled_threshold": labelled_threshold(hit_scores, hit_same),
        "by_quantile": {},
    }
    for q, t in thresholds.items():
        row: dict[str, object] = {
            "threshold": round(t, 4),
            "own_queries_flagged": round(float(np.mean(own_best < t)), 4),
            "region_threshold": round(region_thresholds[q], 4),
            "region_queries_flagged": round(float(np.mean(region_best < region_thresholds[q])), 4),
            "region_queries_flagged_by_whole_image_threshold": round(float(np.mean(region_best < t)), 4),
            "results_above_same_label": round(float(hit_same[hit_scores >= t].mean()), 4),
            "results_below_same_label": round(float(hit_same[hit_scores < t].mean()), 4)
            if (hit_scores < t).any()
            else None,
            "results_below_share": round(float(np.mean(hit_scores < t)), 4),
        }
        for other_name, other in foreign.items():
            other_ids = np.array(sorted(other.vector_ids(embedder)), dtype=np.int64)
            other_vectors = other.vectors_of(other_ids, embedder)
            best = top_matches(other_vectors, vectors, 1, exclude_self=False)[0][:, 0]
            row[f"foreign_{other_name}_caught"] = round(float(np.mean(best < t)), 4)
            if q == WEAK_MATCH_QUANTILE:
                other_records = other.images(other_ids.tolist())
                other_labels = np.asarray([other_records[int(i)].label or "" for i in other_ids])
                by_label = {
                    label: round(float(np.mean(best[other_labels == label] < t)), 2)
                    for label in np.unique(other_labels)
                }
                out[f"foreign_{other_name}_caught_by_label"] = dict(sorted(by_label.items(), key=lambda kv: kv[1]))
                out[f"foreign_{other_name}_best_similarity"] = {
                    "median": float(np.median(best)),
                    "p95": float(np.quantile(best, 0.95)),
                }
        out["by_quantile"][str(q)] = row  # type: ignore[index]
    return out


# (calibration sample, region sample): the server's, or a few images for a smoke run on tiny collections
SAMPLE = [CALIBRATION_SAMPLE, REGION_SAMPLE]


def smoke_collections(root: Path) -> list[str]:
    """Two small collections (cats and dogs; Caltech photos) for a smoke run, as NAME=PATH items."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    sources = {
        "catsdogs": sorted((data / "catsdogs" / "cat").glob("*.jpg"))[:10]
        + sorted((data / "catsdogs" / "dog").glob("*.jpg"))[:10],
        "caltech": [
            p
            for c in ("airplanes", "umbrella", "ferry", "pizza")
            for p in sorted((data / "caltech101-dev" / c).glob("*.jpg"))[:5]
        ],
    }
    items = []
    for name, photos in sources.items():
        for photo in photos:
            (root / name / photo.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, root / name / photo.parent.name)
        with Collection.open(root / f"{name}-collection") as collection:
            collection.sync(root / name)
        items.append(f"{name}={root / f'{name}-collection'}")
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", action="append", default=[], help="NAME=PATH, at least two")
    parser.add_argument("--embedder", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/weak_match.json"))
    parser.add_argument("--smoke", action="store_true", help="two 20-photo collections in a temp folder; no results")
    args = parser.parse_args()
    if args.smoke:
        SAMPLE[:] = [12, 4]
        args.collection = smoke_collections(Path(tempfile.mkdtemp(prefix="lookalike-weak-smoke-")))
    elif len(args.collection) < 2:
        parser.error("give --collection NAME=PATH at least twice (or --smoke)")
    collections = {}
    for item in args.collection:
        label, _, path = item.partition("=")
        collections[label] = Collection.open(Path(path), create=False)
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    embedder = args.embedder or next(iter(collections.values())).default_embedder
    results = {
        "embedder": embedder,
        "quantile_used_by_the_server": WEAK_MATCH_QUANTILE,
        "calibration_sample": CALIBRATION_SAMPLE,
        "collections": {
            name: measure(name, c, {n: o for n, o in collections.items() if n != name}, embedder)
            for name, c in collections.items()
        },
    }
    results["run"] = {
        "started": started,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "machine": machine_info(),
    }
    print(json.dumps(results["collections"], indent=2))
    for collection in collections.values():
        collection.close()
    if args.smoke:
        print("smoke run: no results written")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
