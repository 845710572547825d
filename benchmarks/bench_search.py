"""Search benchmark: build time, memory, recall@10 vs exact, queries/s for every index kind.

    .venv/bin/python benchmarks/bench_search.py --n 100000            # all kinds, ~30 min on 2 cores
    .venv/bin/python benchmarks/bench_search.py --n 1000000 --kinds hnsw-sq8 ivf-pq
    .venv/bin/python benchmarks/bench_search.py --smoke               # a few seconds, tiny data

Data: `common.ClusteredVectors` (embedding-like Gaussian mixture, L2-normalised), cached as .npy in
--cache; queries come from the same distribution but are not in the index. Each kind is built once
through `lookalike.index.create_index` (the code the collection runs), then every search setting is
measured: recall@10 against exact search, single-threaded queries/s (one query per call, the
interactive case, faiss.omp_set_num_threads(1)), batched queries/s (all queries in one call, all
threads). Timings are medians of --repeat runs. Memory is the size of the saved index file
(the faiss structure plus 8 bytes of id per vector; the in-process id dict adds ~100 bytes/vector).
Results: benchmarks/results/search_<n>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: idle OpenMP threads must not spin

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClusteredVectors, finish_record, median_seconds, memory_bandwidth, run_record  # noqa: E402

from lookalike.index import SPECS, FaissIndex, create_index, load_index  # noqa: E402

K = 10
SWEEPS: dict[str, list[dict[str, float]]] = {
    "flat": [{}],
    "flat-fp16": [{}],
    "hnsw": [{"ef_search": ef} for ef in (16, 32, 64, 128, 256)],
    "hnsw-sq8": [{"ef_search": ef} for ef in (16, 32, 64, 128, 256)],
    "ivf": [{"nprobe": p} for p in (4, 8, 16, 32)],
    "ivf-sq8": [{"nprobe": p} for p in (4, 8, 16, 32)],
    "ivf-pq": [{"nprobe": p, "k_factor": f} for f in (4, 16) for p in (8, 16, 32)],
    "ivf-pq-flat": [{"nprobe": p, "k_factor": f} for f in (4, 16) for p in (8, 16, 32)],
}
TARGET = {"recall_at_10": 0.95, "qps_single": 1000.0, "memory_bytes": 2 * 10**9}


def dataset(n: int, dim: int, n_queries: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base vectors as a read-only memmap, queries, exact top-10 ids), generated once and cached."""
    gen = ClusteredVectors(dim=dim)
    stem = cache / f"clustered_d{dim}_n{n}"
    base_path, gt_path = stem.with_suffix(".npy"), Path(f"{stem}_q{n_queries}_gt.npy")
    queries = gen.rows(0, n_queries, stream=1)
    if not base_path.exists():
        tmp = base_path.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for start, chunk in zip(range(0, n, 50_000), gen.chunks(n), strict=True):
            out[start : start + len(chunk)] = chunk
        out.flush()
        del out
        tmp.rename(base_path)
    base = np.load(base_path, mmap_mode="r")
    if not gt_path.exists():
        best_s = np.full((n_queries, 0), -np.inf, np.float32)
        best_i = np.full((n_queries, 0), -1, np.int64)
        for start in range(0, n, 100_000):
            s, i = faiss.knn(
                queries, np.ascontiguousarray(base[start : start + 100_000]), K, faiss.METRIC_INNER_PRODUCT
            )
            s, i = np.hstack([best_s, s]), np.hstack([best_i, i + start])
            order = np.argsort(-s, axis=1, kind="stable")[:, :K]
            best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        np.save(gt_path, best_i)
    return base, queries, np.load(gt_path)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def build_or_reuse(kind: str, base: np.ndarray, args: argparse.Namespace) -> tuple[FaissIndex, dict]:
    """Build `kind` over `base` (one add: the first add builds the structure directly), or load the copy
    a previous run saved in --cache (with its build times) when --reuse is given."""
    n, dim = base.shape
    structure = "".join(c if c.isalnum() else "_" for c in SPECS[kind].factory_for(dim, n))
    path = args.cache / f"index_d{dim}_n{n}_{kind}_{structure}.lkx"  # a changed spec is rebuilt
    meta_path = path.with_suffix(".json")
    if args.reuse and path.exists() and meta_path.exists():
        return load_index(path), json.loads(meta_path.read_text())  # type: ignore[return-value]
    faiss.omp_set_num_threads(args.threads)
    index = create_index(kind, dim)
    wall, cpu = time.perf_counter(), time.process_time()
    index.add(np.arange(n, dtype=np.int64), base)
    meta = {"build_s": time.perf_counter() - wall, "build_cpu_s": time.process_time() - cpu}
    index.save(path)
    meta["memory_bytes"] = path.stat().st_size
    meta_path.write_text(json.dumps(meta))
    if not args.reuse:
        path.unlink()
        meta_path.unlink()
    return index, meta  # type: ignore[return-value]


def bench_kind(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> dict:
    index, meta = build_or_reuse(kind, base, args)
    print(
        f"{kind}: {index.kind} built in {meta['build_s']:.1f} s ({meta['build_cpu_s']:.0f} CPU s), "
        f"{meta['memory_bytes'] / 1e9:.3f} GB",
        flush=True,
    )
    single = queries[: args.single_queries]
    rows = []
    for setting in SWEEPS[kind]:
        for knob, value in setting.items():
            setattr(index, knob, value)
        faiss.omp_set_num_threads(args.threads)
        _, found = index.search(queries, K)
        batch_wall, batch_cpu = median_seconds(lambda: index.search(queries, K), args.repeat)
        faiss.omp_set_num_threads(1)

        def one_at_a_time(single: np.ndarray = single) -> None:
            for q in single:
                index.search(q[None, :], K)

        single_wall, single_cpu = median_seconds(one_at_a_time, args.repeat)
        row = {
            "kind": kind,
            "structure": index.kind,
            **setting,
            "recall_at_10": round(recall_at_k(found, truth), 4),
            "qps_single": round(len(single) / single_cpu, 1),  # per CPU-second: see common.median_seconds
            "qps_single_wall": round(len(single) / single_wall, 1),
            "qps_batch_wall": round(len(queries) / batch_wall, 1),
            "qps_batch_per_cpu": round(len(queries) / batch_cpu, 1),
            "build_s": round(meta["build_s"], 2),
            "build_cpu_s": round(meta["build_cpu_s"], 2),
            "memory_bytes": meta["memory_bytes"],
        }
        row["meets_target"] = (
            row["recall_at_10"] >= TARGET["recall_at_10"]
            and row["qps_single"] >= TARGET["qps_single"]
            and row["memory_bytes"] <= TARGET["memory_bytes"]
        )
        print("   ", json.dumps(row), flush=True)
        rows.append(row)
    return {"kind": kind, "structure": index.kind, **meta, "settings": rows}


def markdown_table(report: dict) -> str:
    """The README table of one results file: every kind and search setting."""
    lines = [
        f"n = {report['n']:,}, d = {report['dim']}, {report['queries']} queries "
        f"(single-threaded: {report['single_queries']}), load average at start / end "
        f"{report.get('load_average_start', ['?'])[0]} / {report.get('load_average_end', ['?'])[0]}; "
        f"read bandwidth {report['bandwidth']['read_bytes_per_s'] / 1e9:.1f} GB per CPU-s -> exact-search bound "
        f"{report['flat_qps_bound_single']:.1f} q/s single-threaded",
        "",
        "| kind | structure | setting | recall@10 | q/s single (CPU) | q/s single (wall) | q/s batch (wall) "
        "| build s (CPU s) | memory MB | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        for row in result["settings"]:
            setting = ", ".join(f"{k}={row[k]:g}" for k in ("ef_search", "nprobe", "k_factor") if k in row) or "-"
            lines.append(
                f"| {row['kind']} | {row['structure']} | {setting} | {row['recall_at_10']:.3f} "
                f"| {row['qps_single']:,.0f} | {row['qps_single_wall']:,.0f} | {row['qps_batch_wall']:,.0f} "
                f"| {row['build_s']:.0f} ({row['build_cpu_s']:.0f}) "
                f"| {row['memory_bytes'] / 1e6:,.0f} "
                f"| {'yes' if row['meets_target'] else ''} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single-queries", type=int, default=300, help="queries timed one per call")
    parser.add_argument("--kinds", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--threads", type=int, default=faiss.omp_get_max_threads(), help="for builds and batches")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-bench")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/search_<n>.json")
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few seconds; writes no results")
    parser.add_argument("--prepare", action="store_true", help="only generate and cache the data and exact answers")
    parser.add_argument("--reuse", action="store_true", help="keep built indexes in --cache and reuse them")
    parser.add_argument("--append", action="store_true", help="add these kinds to an existing results file")
    parser.add_argument("--table", type=Path, nargs="+", help="print the markdown table of results files and exit")
    args = parser.parse_args()
    if args.table:
        print("\n\n".join(markdown_table(json.loads(path.read_text())) for path in args.table))
        return
    if args.smoke:
        args.n, args.dim, args.queries, args.single_queries, args.repeat = 3000, 64, 50, 20, 1
        for kind in SWEEPS:
            SWEEPS[kind] = SWEEPS[kind][:1]
    args.cache.mkdir(parents=True, exist_ok=True)

    bandwidth = memory_bandwidth(0.25 if args.smoke else 1.0)
    flat_bytes = args.n * args.dim * 4
    print(
        f"memory bandwidth per CPU-second: read {bandwidth['read_bytes_per_s'] / 1e9:.1f} GB/s, "
        f"copy {bandwidth['copy_bytes_per_s'] / 1e9:.1f} GB/s; exact-search bound "
        f"{bandwidth['read_bytes_per_s'] / flat_bytes:.1f} queries/s single-threaded",
        flush=True,
    )
    base, queries, truth = dataset(args.n, args.dim, args.queries, args.cache)
    if args.prepare:
        return
    report = {
        **run_record(),
        "n": args.n,
        "dim": args.dim,
        "k": K,
        "queries": args.queries,
        "single_queries": args.single_queries,
        "threads": args.threads,
        "data": "benchmarks/common.py ClusteredVectors defaults",
        "faiss": faiss.__version__,
        "bandwidth": bandwidth,
        "flat_qps_bound_single": bandwidth["read_bytes_per_s"] / flat_bytes,
        "target": TARGET,
        "results": [],
    }
    out = args.out or Path(__file__).resolve().parent / "results" / f"search_{args.n}.json"
    if args.append and out.exists():
        earlier = json.loads(out.read_text())["results"]
        report["results"] = [r for r in earlier if r["kind"] not in args.kinds]
    for kind in args.kinds:
        report["results"].append(bench_kind(kind, base, queries, truth, args))
        finish_record(report)
        if not args.smoke:  # after every kind, so a long run that is stopped keeps what it measured
            out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}" if not args.smoke else "smoke run: no results written")


if __name__ == "__main__":
    main()
