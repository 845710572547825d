"""A real Milvus server vs the local faiss backend, in one run: insert rate, single-query latency, recall@10.

    .venv/bin/python benchmarks/bench_milvus.py --n 100000     # results/milvus_server_100k.json
    .venv/bin/python benchmarks/bench_milvus.py --n 1000000    # results/milvus_server_1m.json
    .venv/bin/python benchmarks/bench_milvus.py --smoke        # 3,000 vectors of 64 dims, printed only

The server is the Milvus 2.3.5 standalone binary of the `milvus` package (`lookalike.index.milvus_server`),
started for the run with its data in a temporary folder and stopped at the end. Every index is built through
`lookalike.index.create_index`, the code a collection runs on a rebuild, at the settings lookalike chooses:

- Milvus: the `milvus://` default, HNSW with M, efConstruction and ef from `index.specs` (HNSW_M,
  HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH), the constants the faiss "hnsw" kind is built from;
- faiss "hnsw" (the same graph constants), and with `--faiss hnsw,auto` also what "auto" picks at that
  size (hnsw-sq8 from 400,000 vectors of 1280 dims).

Data: `common.ClusteredVectors` (embedding-like, L2-normalised), generated in chunks of 50,000 rows and
never held whole (1,000,000 x 1280 floats are 5 GB): the exact top-10 of the queries is computed chunk by
chunk, and each backend is fed the same chunks again. Queries come from the same distribution, not from
the index. Backends run one after the other, each freed before the next, to bound memory.

- insert: the `add` calls of every chunk ("insert_seconds"), then for Milvus `wait_until_indexed` (flush,
  and the segment indexes the server builds in the background; until then it answers by brute force) and
  a first search ("ready_seconds"); "vectors_per_second" counts both.
- latency: one query per call (the interactive case), k=10, p50/p99 over --queries calls after 20 warm-up
  calls.
- recall@10 against the exact top-10.

The results file is written after each backend ("complete": false until the last), so a run stopped part
way keeps what it measured; `--milvus-first` runs the server before faiss. It records (common.run_record and
finish_record) when the run started and ended, the load average (1, 5, 15 min) at both, and the machine;
"idle" is true only when the 1-minute load average at start was below 0.5. `--smoke` writes nothing.

Memory: one backend at a time (the server is stopped before faiss starts, or started after faiss is freed).
At 1,000,000 x 1280 the largest is about 5.5 GB (faiss "hnsw" in this process, or the server's loaded HNSW
index plus its buffers); the vectors stay on disk in 50,000-row files (5 GB, plus the server's own copy).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared machine: idle OpenMP threads must not spin

import faiss  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClusteredVectors, finish_record, run_record  # noqa: E402

from lookalike.index import choose_index_kind, create_index  # noqa: E402
from lookalike.index.milvus_server import EmbeddedMilvus  # noqa: E402
from lookalike.index.specs import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M  # noqa: E402

K = 10
CHUNK = 50_000
WARMUP = 20
#: seconds the server may take to index every segment after the insert (1M rows on 2 cores: well under this)
INDEX_TIMEOUT = 4 * 3600.0
RESULTS = Path(__file__).resolve().parent / "results"


def memory_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def rss_gib(pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 2**20, 2)
    except (OSError, TypeError):
        return None
    return None


class Data:
    """The benchmark's vectors, chunk by chunk, with ids that are not positions (as catalog ids are not).

    Each chunk is generated once and kept as a .npy file in `cache` (memory-mapped when read again): at
    1M x 1280 generating takes minutes, reading a few seconds.
    """

    def __init__(self, n: int, dim: int, queries: int, cache: Path):
        self.n, self.dim, self.cache = n, dim, cache
        self.gen = ClusteredVectors(dim=dim, clusters=max(10, n // 100))
        self.queries = self.gen.rows(0, queries, stream=1)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, self.n, CHUNK):
            stop = min(self.n, start + CHUNK)
            path = self.cache / f"{start}-{stop}.npy"
            if not path.exists():
                np.save(path, self.gen.rows(start, stop))
            yield np.arange(start, stop, dtype=np.int64) * 3 + 1, np.load(path, mmap_mode="r")

    def exact_top_k(self) -> np.ndarray:
        """The exact top-K ids of every query, merged chunk by chunk (faiss's blocked exact search)."""
        best_s = np.full((len(self.queries), K), -np.inf, dtype=np.float32)
        best_i = np.full((len(self.queries), K), -1, dtype=np.int64)
        for ids, vectors in self.chunks():
            s, i = faiss.knn(self.queries, np.ascontiguousarray(vectors), K, metric=faiss.METRIC_INNER_PRODUCT)
            s, i = np.hstack([best_s, s]), np.hstack([best_i, ids[i]])
            top = np.argsort(-s, axis=1, kind="stable")[:, :K]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        return best_i


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{p}_ms": round(float(np.percentile(ms, p)), 3) for p in (50, 99)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth, strict=True)])), 4)


def run_backend(label: str, kind: str, data: Data, truth: np.ndarray, server: EmbeddedMilvus | None = None) -> dict:
    print(f"{label}: {kind}", flush=True)
    t0 = time.perf_counter()
    index = create_index(kind, data.dim, name="bench")
    t1 = time.perf_counter()
    for ids, vectors in data.chunks():
        index.add(ids, np.ascontiguousarray(vectors))
        print(f"  {label}: {len(index):,} vectors after {time.perf_counter() - t1:.0f} s", flush=True)
    t2 = time.perf_counter()
    if hasattr(index, "wait_until_indexed"):
        index.wait_until_indexed(INDEX_TIMEOUT)  # Milvus indexes segments in the background: the steady state
    index.search(data.queries[:1], K)
    t3 = time.perf_counter()
    for q in data.queries[:WARMUP]:
        index.search(q[None, :], K)
    times, found = [], []
    for q in data.queries:
        t = time.perf_counter()
        _, ids = index.search(q[None, :], K)
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    result = {
        "backend": label,
        "kind": kind,
        "index": index.kind,
        "count": len(index),
        "create_seconds": round(t1 - t0, 2),
        "insert_seconds": round(t2 - t1, 1),
        "ready_seconds": round(t3 - t2, 1),
        "vectors_per_second": round(data.n / (t3 - t1), 1),
        "single_query": percentiles(times),
        "recall_at_10": recall(np.array(found), truth),
    }
    if server is not None:
        result["server_rss_gib"] = rss_gib(server.pid)
        result["server_disk_gib"] = round(
            sum(f.stat().st_size for f in (server.base_dir / "data").rglob("*") if f.is_file()) / 2**30, 2
        )
        result["remote"] = index.describe()  # type: ignore[attr-defined]
    else:
        result["process_rss_gib"] = rss_gib(os.getpid())
    print(json.dumps(result), flush=True)
    if hasattr(index, "close"):
        index.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280, help="1280 = EfficientNet-Lite0")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--faiss", default="hnsw,auto", help="faiss kinds to run beside Milvus (auto: its choice)")
    parser.add_argument("--milvus-first", action="store_true", help="run the Milvus server before faiss")
    parser.add_argument("--smoke", action="store_true", help="tiny data, results printed only")
    parser.add_argument("--out", type=Path, help="results file (default results/milvus_server_<n>.json)")
    parser.add_argument("--workdir", type=Path, help="where the server keeps its data (default: a temp folder)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.dim, args.queries = 3000, 64, 50
    size = f"{args.n // 1_000_000}m" if args.n % 1_000_000 == 0 else f"{args.n // 1000}k"
    out = args.out or (None if args.smoke else RESULTS / f"milvus_server_{size}.json")
    report: dict = {
        "benchmark": "bench_milvus.py",
        "command": " ".join(["benchmarks/bench_milvus.py", *sys.argv[1:]]),
        **run_record(),
    }
    report["machine"]["memory_gib"] = memory_total_gib()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` still stops the server and cleans up
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    import pymilvus

    report.update(
        {
            "n": args.n,
            "dim": args.dim,
            "k": K,
            "queries": args.queries,
            "hnsw_constants": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "ef": HNSW_EF_SEARCH},
            "faiss_threads": faiss.omp_get_max_threads(),
            "versions": {"faiss": faiss.__version__, "pymilvus": pymilvus.__version__},
            "complete": False,  # until every backend has run
            "results": [],
        }
    )

    def write() -> None:
        """The report so far: a run stopped part way still leaves the backends it finished."""
        finish_record(report)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")

    kinds: list[str] = []
    for kind in args.faiss.split(","):
        kind = choose_index_kind(args.n, args.dim) if kind == "auto" else kind
        if kind and kind not in kinds:
            kinds.append(kind)
    workdir = Path(tempfile.mkdtemp(prefix="bench-milvus-", dir=args.workdir))
    try:
        (workdir / "vectors").mkdir()
        data = Data(args.n, args.dim, args.queries, workdir / "vectors")
        t = time.perf_counter()
        truth = data.exact_top_k()
        print(f"data and exact top-{K}, {args.n:,} x {args.dim}: {time.perf_counter() - t:.0f} s", flush=True)

        def run_milvus() -> None:
            with EmbeddedMilvus(workdir / "server") as server:
                report["versions"]["milvus_server"] = server.version
                report["results"].append(run_backend("milvus server", server.kind("bench"), data, truth, server))
            write()

        if args.milvus_first:
            run_milvus()
        for kind in kinds:
            report["results"].append(run_backend(f"faiss {kind}", kind, data, truth))
            write()
            gc.collect()
        if not args.milvus_first:
            run_milvus()
    except BaseException:
        # keep the server's logs (why it failed), drop its data and the vectors
        shutil.rmtree(workdir / "vectors", ignore_errors=True)
        shutil.rmtree(workdir / "server" / "data", ignore_errors=True)
        print(f"failed; the server's logs are in {workdir / 'server' / 'logs'}", flush=True)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    report["complete"] = True
    write()
    print(json.dumps(report, indent=2) if out is None else f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
