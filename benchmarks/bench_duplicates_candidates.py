"""Candidate pairs of the near tier on a real copy-detection set: the compact index against the full one.

    .venv/bin/python benchmarks/bench_duplicates_candidates.py --set SET --collection DIR
    .venv/bin/python benchmarks/bench_duplicates_candidates.py --smoke     # a tiny generated set; no results

The set (a folder written by benchmarks/copydetect.py) is synced into a collection with the near tier's
descriptor (`copy-lite0`; `--collection` keeps it, so a second run embeds nothing). Every image's 10-nearest-
neighbour graph is then built three ways from the same stored vectors:
- `exact`: all pairs scored (the reference);
- `full_index`: through the collection's own index (what duplicates searched before the compact index);
- `compact`: through the compact index, as `duplicates.update_pairs` does (`duplicates.search_pairs`: 20
  candidates in the projected space, scored with the exact cosine, the best 10 kept).
Reported, at the pair floor (`EDGE_FLOOR`, pairs kept for regrouping and the hash check) and at the near
tier's threshold: pairs in each graph, and pairs one graph has that another lacks.
Results: benchmarks/results/duplicates_candidates_<set name>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copydetect  # noqa: E402
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.duplicates import (  # noqa: E402
    CANDIDATES,
    COPY_EMBEDDER,
    EDGE_FLOOR,
    NEIGHBOURS,
    THRESHOLDS,
    neighbour_pairs,
    search_pairs,
)
from lookalike.index.compact import CompactIndex, fit_projection  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def graphs(collection: Collection) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], dict]:
    ids = np.array(sorted(collection.vector_ids(COPY_EMBEDDER)), dtype=np.int64)
    vectors = collection.vectors_of(ids, COPY_EMBEDDER)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argsort(-similarity, axis=1)[:, :NEIGHBOURS]
    exact = neighbour_pairs(ids, ids[top], np.take_along_axis(similarity, top, 1), EDGE_FLOOR)
    found = collection.search_vectors(vectors, NEIGHBOURS, embedder=COPY_EMBEDDER, exclude=ids)
    full = neighbour_pairs(ids, found.ids, found.scores, EDGE_FLOOR)
    index = CompactIndex.create(fit_projection(vectors, len(ids)))
    index.add(ids, vectors)
    row = {int(i): n for n, i in enumerate(ids)}
    compact = search_pairs(index, ids, vectors, lambda wanted: vectors[[row[int(i)] for i in wanted]], EDGE_FLOOR)
    info = {
        "images": len(ids), "full_index": collection.index(COPY_EMBEDDER).kind,
        "compact_index": f"{index.dim}-d {index.index.kind}, nprobe {index.index.nprobe}",
        "neighbours": NEIGHBOURS, "candidates": CANDIDATES,
    }  # fmt: skip
    return {"exact": exact, "full_index": full, "compact": compact}, info


def compare(found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], cut: float) -> dict[str, int]:
    sets = {name: {(a, b) for a, b, s in zip(*(x.tolist() for x in pairs), strict=True) if s >= cut}
            for name, pairs in found.items()}  # fmt: skip
    out = {f"{name}_pairs": len(pairs) for name, pairs in sets.items()}
    for one, other in [("full_index", "compact"), ("compact", "full_index"), ("exact", "full_index"),
                       ("exact", "compact")]:  # fmt: skip
        out[f"{one}_not_{other}"] = len(sets[one] - sets[other])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, help="a folder written by benchmarks/copydetect.py")
    parser.add_argument("--collection", type=Path, help="keep the collection here (default a temp folder)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="a tiny generated set, seconds; writes no results")
    args = parser.parse_args(argv)
    if not args.smoke and args.set is None:
        parser.error("give --set DIR (a folder written by benchmarks/copydetect.py) or --smoke")
    record = run_record()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.set = Path(tmp) / "set"
            sources = [p.resolve() for p in copydetect.DEFAULT_SOURCES]
            copydetect.generate(args.set, sources, originals=4, distractors=8, seed=0)
        folder = args.collection or Path(tmp) / "collection"
        with Collection.open(folder, embedder=COPY_EMBEDDER) as collection:
            collection.sync(args.set, embedder=COPY_EMBEDDER)
            found, info = graphs(collection)
    report = {
        **finish_record(record), "set": str(args.set), **info,
        "floor": {"cosine": EDGE_FLOOR, **compare(found, EDGE_FLOOR)},
        "threshold": {"cosine": THRESHOLDS["near"], **compare(found, THRESHOLDS["near"])},
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.smoke:
        print("smoke run: no results written")
        return
    out = args.out or RESULTS / f"duplicates_candidates_{args.set.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
