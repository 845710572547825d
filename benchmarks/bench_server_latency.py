"""End-to-end query latency of the web API on a 10,000-image collection.

The collection is built cheaply: 10,000 catalog rows whose files are the 8,000 real
cats-and-dogs photos plus 2,000 hard links to them (so every row is a servable image),
each given a random unit vector instead of a real embedding (`Collection.import_vectors`:
files hashed, not decoded). Exact (flat) search costs the same whatever the vectors are,
and every query *is* real: a photo uploaded over HTTP, decoded, embedded by
EfficientNet-Lite0 and searched against all 10,000 vectors.

The server runs as `lookalike.server.app.serve` in a subprocess on 127.0.0.1; one
client sends queries one after another and times each request end to end.

    .venv/bin/python benchmarks/bench_server_latency.py            # writes benchmarks/results/server_latency.json
    .venv/bin/python benchmarks/bench_server_latency.py --smoke    # 200 images, 5 queries: seconds, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish_record, link_file, run_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOOKALIKE_DATA", REPO.parent / "shared" / "data" / "catsdogs"))
RESULTS = REPO / "benchmarks" / "results"
EMBEDDER = "efficientnet-lite0"
EMBEDDER_DIM = 1280
COLLECTION_SIZE = 10_000


def photos(data: Path = DATA) -> list[Path]:
    files = sorted((data / "cat").glob("*.jpg")) + sorted((data / "dog").glob("*.jpg"))
    if not files:
        sys.exit(f"no photos under {data} (set LOOKALIKE_DATA)")
    return files


def build_synthetic_collection(
    folder: Path, size: int = COLLECTION_SIZE, seed: int = 0, embedder: str = EMBEDDER
) -> Path:
    """A collection of `size` real, servable image files with random unit vectors of `embedder` (its default, with
    a new collection's other defaults: query expansion); returns its path."""
    from lookalike import Collection

    real = photos()
    links = folder / "links"
    files: list[Path] = []
    for i in range(size):
        source = real[i % len(real)]
        if i < len(real):
            files.append(source)
            continue
        link = links / source.parent.name / f"copy{i // len(real)}-{source.name}"
        link_file(source, link)
        files.append(link)

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((size, EMBEDDER_DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    with Collection.open(folder / "collection", embedder=embedder) as collection:
        collection.import_vectors(files, vectors, embedder=embedder)  # files read for their hash, not decoded
        collection.index(embedder)  # build and save the index now, not in the server's startup
    return folder / "collection"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(collection: Path, log_path: Path, startup_timeout: float = 120.0) -> Iterator[str]:
    """`serve()` in a subprocess on a free loopback port; stopped (SIGINT, then SIGKILL) on exit."""
    port = free_loopback_port()
    code = (
        "import sys; from pathlib import Path; from lookalike.server.app import serve; "
        "serve(Path(sys.argv[1]), port=int(sys.argv[2]))"
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code, str(collection), str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/api/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {startup_timeout} s; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(array, 50)), 2),
        "p95_ms": round(float(np.percentile(array, 95)), 2),
        "p99_ms": round(float(np.percentile(array, 99)), 2),
        "mean_ms": round(float(array.mean()), 2),
        "max_ms": round(float(array.max()), 2),
    }


def machine() -> dict[str, object]:
    from lookalike.evaluation.runner import machine_info

    # The machine is shared: the load average says how busy it was while measuring.
    return {**machine_info(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def query_files(count: int, seed: int = 1) -> list[Path]:
    rng = np.random.default_rng(seed)
    real = photos()
    return [real[i] for i in rng.choice(len(real), size=count, replace=False)]


def measure(url: str, queries: int, warmup: int, size: int = COLLECTION_SIZE) -> dict[str, object]:
    files = query_files(queries + warmup)
    payloads = [(f.name, f.read_bytes()) for f in files]
    scenarios: dict[str, object] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for name, data in payloads[:warmup]:
            client.post("/api/search", params={"k": 12}, files={"file": (name, data, "image/jpeg")}).raise_for_status()

        def timed(make_request) -> tuple[list[float], list[float]]:
            wall, server = [], []
            for i in range(queries):
                started = time.perf_counter()
                response = make_request(i)
                response.raise_for_status()
                wall.append((time.perf_counter() - started) * 1000)
                server.append(response.json()["took_ms"])
            return wall, server

        def upload(i: int, **params: object) -> httpx.Response:
            name, data = payloads[warmup + i]
            return client.post("/api/search", params={"k": 12, **params}, files={"file": (name, data, "image/jpeg")})

        runs = {
            "upload_search": lambda i: upload(i),
            "upload_search_label_filter": lambda i: upload(i, label="cat"),
            "upload_search_box": lambda i: upload(i, box="20,20,220,220"),
            "search_by_id": lambda i: client.get(f"/api/images/{(i * 37) % size + 1}/similar?k=12"),
        }
        for scenario, make_request in runs.items():
            wall, server = timed(make_request)
            scenarios[scenario] = {"end_to_end": percentiles(wall), "server_took": percentiles(server)}
    return scenarios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200, help="timed queries per scenario")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--size", type=int, default=COLLECTION_SIZE, help="images in the collection")
    parser.add_argument("--out", type=Path, help="results file (default results/server_latency[_SIZE].json)")
    parser.add_argument("--smoke", action="store_true", help="200 images, 5 queries per scenario; writes nothing")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.queries, args.warmup = 200, 5, 1
    suffix = "" if args.size == COLLECTION_SIZE else f"_{args.size}"
    args.out = args.out or RESULTS / f"server_latency{suffix}.json"

    record = run_record()
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-bench-server-"))
    try:
        started = time.perf_counter()
        collection = build_synthetic_collection(workdir, size=args.size)
        build_seconds = time.perf_counter() - started
        with running_server(collection, workdir / "server.log") as url:
            stats = httpx.get(f"{url}/api/stats").json()
            assert stats["images"] == args.size, stats
            scenarios = measure(url, args.queries, args.warmup, args.size)
        index_kind = json.loads((collection / "indexes" / f"{EMBEDDER}.json").read_text())["kind"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "benchmark": "server_latency",
        **finish_record(record),
        "machine": machine(),
        "collection": {
            "images": args.size,
            "how": "the 8,000 real photos + symlinks to them; random unit vectors (1280-d) instead of embeddings",
            "embedder": EMBEDDER,
            "index": index_kind,
            "build_seconds": round(build_seconds, 1),
        },
        "client": "one httpx client on 127.0.0.1, sequential requests, keep-alive; k=12",
        "query_photos": "real cats-and-dogs JPEGs (random, different each query), uploaded as multipart",
        "scenarios": scenarios,
        "target": "end-to-end upload + embed + search < 100 ms",
    }
    for name, figures in scenarios.items():
        e2e = figures["end_to_end"]  # type: ignore[index]
        print(f"{name:28s} p50 {e2e['p50_ms']:7.1f} ms   p95 {e2e['p95_ms']:7.1f} ms   p99 {e2e['p99_ms']:7.1f} ms")
    if args.smoke:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
