"""Does alpha query expansion raise MAP@R? Leave-one-out retrieval on a labelled collection.

    .venv/bin/python benchmarks/bench_rerank.py --collection /tmp/qe_collection
    (the collection: `Collection.open(PATH).sync('/work/shared/data/catsdogs')`, EfficientNet-Lite0)

Every image is a query against all the others (itself excluded), ranked exactly (flat index), and
again after one round of alpha-QE (`lookalike.index.rerank`). The (n_expand, alpha) grid is scored on
all queries; the setting is *chosen* on the even-numbered queries and *reported* on the odd ones,
so the reported gain is not tuned on the queries it is measured on. MAP@R is
`lookalike.evaluation.metrics.map_at_r`. Results: benchmarks/results/search_qe_<name>.json.

    .venv/bin/python benchmarks/bench_rerank.py --smoke   # 16 photos indexed in a temp folder, seconds, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.evaluation.metrics import map_at_r, precision_at_k  # noqa: E402
from lookalike.index import create_index  # noqa: E402
from lookalike.index.rerank import alpha_query_expansion  # noqa: E402

DATA = Path(os.environ.get("LOOKALIKE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs"))


def scores_for(ranked_ids: np.ndarray, query_labels: np.ndarray, label_of: dict[int, str], R: np.ndarray) -> dict:
    labels = np.vectorize(lambda i: label_of.get(int(i), ""), otypes=[object])(ranked_ids)
    rel = labels == query_labels[:, None]
    halves = {"all": slice(None), "even": slice(0, None, 2), "odd": slice(1, None, 2)}
    return {
        name: {"map_at_r": round(map_at_r(rel[s], R[s]), 4), "p_at_10": round(precision_at_k(rel[s], 10), 4)}
        for name, s in halves.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, default=Path("/tmp/qe_collection"))
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--index", default="flat", help="index kind to search (default exact)")
    parser.add_argument("--n-expand", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 50])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 3.0], help="0 = average QE")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help="8 cats and 8 dogs indexed in a temp folder; no results")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            photos = Path(tmp) / "photos"
            for label in ("cat", "dog"):
                (photos / label).mkdir(parents=True)
                for i in range(1, 9):
                    shutil.copy(DATA / label / f"{label}.{i}.jpg", photos / label)
            with Collection.open(Path(tmp) / "qe_smoke", embedder=args.embedder) as collection:
                collection.sync(photos)
            args.collection, args.n_expand, args.alpha = Path(tmp) / "qe_smoke", [1, 2], [0.0, 3.0]
            run(args)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    record = run_record()
    collection = Collection.open(args.collection, create=False)
    ids = np.array(sorted(collection.vector_ids(args.embedder)), dtype=np.int64)
    vectors = collection.vectors_of(ids, args.embedder)
    label_of = {record.id: record.label for record in collection.records() if record.id in set(ids.tolist())}
    query_labels = np.array([label_of[int(i)] for i in ids], dtype=object)
    counts = {label: int((query_labels == label).sum()) for label in set(label_of.values())}
    R = np.array([counts[label] - 1 for label in query_labels])
    depth = int(R.max())

    index = create_index(args.index, vectors.shape[1])
    index.add(ids, vectors)
    t = time.perf_counter()
    _, ranked = alpha_query_expansion(vectors, index, depth, n_expand=0, exclude_ids=ids)
    baseline = {"n_expand": 0, "alpha": None, **scores_for(ranked, query_labels, label_of, R)}
    baseline["seconds"] = round(time.perf_counter() - t, 2)
    print(json.dumps(baseline), flush=True)
    rows = [baseline]
    for n_expand, alpha in ((n, a) for n in args.n_expand for a in args.alpha):
        t = time.perf_counter()
        _, ranked = alpha_query_expansion(vectors, index, depth, n_expand=n_expand, alpha=alpha, exclude_ids=ids)
        row = {"n_expand": n_expand, "alpha": alpha, **scores_for(ranked, query_labels, label_of, R)}
        row["seconds"] = round(time.perf_counter() - t, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)

    chosen = max(rows[1:], key=lambda r: r["even"]["map_at_r"])
    report = {
        **record,
        "collection": str(args.collection),
        "embedder": args.embedder,
        "index": index.kind,
        "images": len(ids),
        "labels": counts,
        "baseline": baseline,
        "chosen_on_even_queries": {"n_expand": chosen["n_expand"], "alpha": chosen["alpha"]},
        "odd_queries": {
            "map_at_r_baseline": baseline["odd"]["map_at_r"],
            "map_at_r_qe": chosen["odd"]["map_at_r"],
            "p_at_10_baseline": baseline["odd"]["p_at_10"],
            "p_at_10_qe": chosen["odd"]["p_at_10"],
        },
        "grid": rows,
    }
    finish_record(report)
    print(json.dumps(report["odd_queries"]), report["chosen_on_even_queries"])
    if args.smoke:
        return
    out = args.out or Path(__file__).resolve().parent / "results" / f"search_qe_{args.collection.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
