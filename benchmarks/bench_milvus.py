"""Milvus Lite vs the local faiss backend: insert rate and single-query latency, in one run.

    .venv/bin/python benchmarks/bench_milvus.py                 # 100,000 vectors of 1280 dims, ~20 min on 2 cores
    .venv/bin/python benchmarks/bench_milvus.py --smoke         # 2,000 vectors of 64 dims, a few seconds

Every backend is built through `lookalike.index.create_index` (the code a collection runs on a rebuild):
faiss "flat" and "hnsw", Milvus Lite FLAT and HNSW. Data: `common.ClusteredVectors` (embedding-like,
L2-normalised); queries from the same distribution, not in the index.

- insert: one `add` of all vectors (Milvus batches it into ~16 MB insert calls), then for Milvus
  `wait_until_indexed` (flush, and build the segment indexes Milvus otherwise builds in the background,
  answering by brute force meanwhile) and a first search; the rate counts all of it ("ready" is the wait).
- latency: one query per call (the interactive case), k=10, p50/p95 over --queries calls after a warm-up;
  "filtered" passes allowed_ids of a tenth of the collection (a label), as a label search does.
- recall@10 against exact search.

faiss runs on one OpenMP thread (Milvus Lite calls faiss in this process too, so both get one).
Results: benchmarks/results/milvus_vs_faiss.json (--smoke prints them only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: idle OpenMP threads must not spin

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClusteredVectors  # noqa: E402

from lookalike.index import create_index  # noqa: E402
from lookalike.index.milvus import release_lite  # noqa: E402

K = 10
RESULTS = Path(__file__).resolve().parent / "results" / "milvus_vs_faiss.json"


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def single_queries(index, queries: np.ndarray, allowed: np.ndarray | None = None) -> tuple[list[float], np.ndarray]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None, :], K, allowed_ids=allowed)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    return times, np.array(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)])), 4)


def run_backend(label: str, kind: str, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, truth, args) -> dict:
    t0 = time.perf_counter()
    index = create_index(kind, vectors.shape[1], name="bench")
    t1 = time.perf_counter()
    index.add(ids, vectors)
    t2 = time.perf_counter()
    if hasattr(index, "wait_until_indexed"):
        index.wait_until_indexed()  # Milvus indexes segments in the background; measure the steady state
    index.search(queries[:1], K)
    t3 = time.perf_counter()
    insert_s, ready_s = t2 - t1, t3 - t2
    warm = min(5, len(queries))
    single_queries(index, queries[:warm])
    times, found = single_queries(index, queries)
    allowed = ids[::10]
    f_times, f_found = single_queries(index, queries[: args.filtered_queries], allowed)
    allowed_vectors = vectors[::10]
    f_truth = allowed[np.argsort(-(queries[: args.filtered_queries] @ allowed_vectors.T), axis=1)[:, :K]]
    result = {
        "backend": label,
        "index": index.kind,
        "create_seconds": round(t1 - t0, 3),
        "insert_seconds": round(insert_s, 2),
        "ready_seconds": round(ready_s, 2),
        "inserts_per_second": round(len(ids) / (insert_s + ready_s), 1),
        "single_query": percentiles(times),
        "filtered_query": {**percentiles(f_times), "allowed": len(allowed), "queries": len(f_times)},
        "recall_at_10": recall(found, truth),
        "filtered_recall_at_10": recall(f_found, f_truth),
        "count": len(index),
    }
    print(json.dumps(result), flush=True)
    if hasattr(index, "close"):
        index.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280, help="1280 = EfficientNet-Lite0; ResNet-50 2048, VGG-16 4096")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--filtered-queries", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few seconds, results printed only")
    parser.add_argument("--out", type=Path, help=f"results file (default {RESULTS}; none with --smoke)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.dim, args.queries, args.filtered_queries = 2000, 64, 20, 10
    out = args.out or (None if args.smoke else RESULTS)
    faiss.omp_set_num_threads(1)

    gen = ClusteredVectors(dim=args.dim, clusters=max(10, args.n // 100))
    t = time.perf_counter()
    vectors = np.concatenate(list(gen.chunks(args.n)))
    queries = gen.rows(0, args.queries, stream=1)
    ids = np.arange(args.n, dtype=np.int64) * 3 + 1  # catalog ids are not positions
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :K]]
    print(f"data: {args.n} x {args.dim} in {time.perf_counter() - t:.1f} s", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    db = workdir / "bench.db"
    backends = {
        "faiss flat": "flat",
        "faiss hnsw": "hnsw",
        "milvus-lite FLAT": f"milvus-lite:{db}?index=FLAT",
        "milvus-lite HNSW": f"milvus-lite:{db}?index=HNSW&M=32&efConstruction=40&ef=64",  # faiss "hnsw"'s knobs
    }
    try:
        results = []
        for label, kind in backends.items():
            results.append(run_backend(label, kind, ids, vectors, queries, truth, args))
            if kind.startswith("milvus"):
                results[-1]["disk_bytes"] = sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
        release_lite(db)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    import milvus_lite
    import pymilvus

    report = {
        "n": args.n,
        "dim": args.dim,
        "k": K,
        "queries": args.queries,
        "threads": 1,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {
            "faiss": faiss.__version__,
            "pymilvus": pymilvus.__version__,
            "milvus_lite": milvus_lite.__version__,
        },
        "results": results,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
