"""Search by words (concept search) on caltech101-dev: one text query per class, named as its folder.

Each of the 101 folder names, underscores as spaces ("car_side" -> "car side"), is searched with
`Collection.search_text` over a collection of the 2,020 photos indexed with the default embedder
(efficientnet-lite0, whose ImageNet classes give the concepts). A class counts as *matched* when at
least one of its words is a concept (the words that are not are left out, as a user's would be);
classes whose name matches nothing are listed with the reason. For the matched ones: precision@10
and MAP@R (R = the class's image count, definitions in shared/docs/metrics.md) of the images
returned, relevance = the image is in that class's folder. Images without any stored class under
the query's concepts are never returned, so a query may return fewer than R images: they count as
misses. Each class also lists what the network calls most of its photos (their top-1 ImageNet
class), which says why a query fails.

    python benchmarks/bench_concepts.py [--collection DIR]   # indexes once (minutes), reuses DIR after
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.concepts import ConceptError  # noqa: E402
from lookalike.evaluation.metrics import map_at_r, precision_at_k  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "caltech101-dev"
RESULTS = Path(__file__).resolve().parent / "results"


def top3(counts: Counter[str]) -> list[str]:
    return [f"{name} ({n})" for name, n in counts.most_common(3)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=Path, help="collection folder to build or reuse (default: a temp dir)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS / "concepts_caltech101.json")
    parser.add_argument("--smoke", action="store_true", help="3 classes of 3 photos in a temp folder; writes nothing")
    args = parser.parse_args()
    if args.smoke:
        smoke = Path(tempfile.mkdtemp(prefix="lookalike-concepts-smoke-"))
        for name in ("airplanes", "dalmatian", "umbrella"):
            (smoke / "data" / name).mkdir(parents=True)
            for photo in sorted((args.data / name).glob("*.jpg"))[:3]:
                shutil.copy(photo, smoke / "data" / name)
        args.data, args.collection = smoke / "data", smoke / "collection"

    record = run_record()
    folder = args.collection or Path(tempfile.mkdtemp(prefix="lookalike-concepts-")) / "collection"
    classes = sorted(p.name for p in args.data.iterdir() if p.is_dir())
    with Collection.open(folder) as collection:
        started = time.perf_counter()
        report = collection.sync(args.data)
        index_seconds = time.perf_counter() - started
        sizes = collection.stats()["labels"]
        seen_as: dict[str, Counter[str]] = {}  # what the network calls each class's photos (top-1 class)
        for image_id, tags in collection.tags(collection.vector_ids(), embedder="efficientnet-lite0").items():
            top = tags[0].name if tags else "(no concept above the tag threshold)"
            seen_as.setdefault(collection.image(image_id).label, Counter())[top] += 1
        rows = []
        query_seconds = []
        for name in classes:
            text = name.replace("_", " ")
            R = sizes.get(name, 0)
            try:
                t0 = time.perf_counter()
                found = collection.search_text(text, R)
                query_seconds.append(time.perf_counter() - t0)
            except ConceptError as exc:
                rows.append(
                    {"class": name, "query": text, "matched": False, "why": str(exc), "seen_as": top3(seen_as[name])}
                )
                continue
            labels = [r.label for r in found.results] + [None] * (R - len(found.results))
            rel = np.array([[label == name for label in labels]], dtype=bool)
            rows.append(
                {
                    "class": name,
                    "query": text,
                    "matched": True,
                    "read_as": [
                        f"{t.words} -> {', '.join(t.concepts)} ({len(t.classes)} classes)" for t in found.terms
                    ],
                    "left_out": list(found.ignored),
                    "returned": len(found.results),
                    "R": R,
                    "precision_at_10": round(precision_at_k(rel, 10), 4),
                    "map_at_r": round(map_at_r(rel, np.array([R])), 4),
                    "seen_as": top3(seen_as[name]),
                }
            )
    matched = [r for r in rows if r["matched"]]
    whole = [r for r in matched if not r["left_out"]]
    summary = {
        "classes": len(rows),
        "matched": len(matched),
        "matched_every_word": len(whole),
        "mean_precision_at_10": round(float(np.mean([r["precision_at_10"] for r in matched])), 4),
        "mean_map_at_r": round(float(np.mean([r["map_at_r"] for r in matched])), 4),
        "mean_precision_at_10_every_word": round(float(np.mean([r["precision_at_10"] for r in whole])), 4),
        "mean_map_at_r_every_word": round(float(np.mean([r["map_at_r"] for r in whole])), 4),
        "matched_below_0.5_precision_at_10": sorted(r["class"] for r in matched if r["precision_at_10"] < 0.5),
        "not_matched": sorted(r["class"] for r in rows if not r["matched"]),
        "median_query_ms": round(1000 * float(np.median(query_seconds)), 2),
    }
    result = {
        "benchmark": "concept search: one text query per caltech101-dev class name",
        "embedder": "efficientnet-lite0",
        "images": sum(sizes.values()),
        "index_seconds_under_load": round(index_seconds, 1),
        "embedded": report.embedded,
        "summary": summary,
        "per_class": rows,
        **finish_record(record),
    }
    print(json.dumps(summary, indent=2))
    if args.smoke:
        shutil.rmtree(args.data.parent, ignore_errors=True)
        print("smoke run: no results written")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
