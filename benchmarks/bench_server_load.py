"""Load test of the web API: 50 concurrent clients for 30 seconds, loopback only.

Same 10,000-image collection as bench_server_latency.py (real photo files, random
vectors). The server (`serve()`, in a subprocess on 127.0.0.1) gets nothing but the
heaviest request: search by an uploaded photo, which is decoded and embedded on
every call. Each client sends its next request as soon as the previous one is
answered. Clients start no request after the duration is over, and the whole run
is cut off after duration + request timeout, so it always stops by itself.

    .venv/bin/python benchmarks/bench_server_load.py     # writes benchmarks/results/server_load.json
    .venv/bin/python benchmarks/bench_server_load.py --smoke   # 200 images, 4 clients for 3 s; writes nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

try:  # python -m benchmarks.bench_server_load
    from .bench_server_latency import (
        COLLECTION_SIZE,
        RESULTS,
        build_synthetic_collection,
        machine,
        percentiles,
        query_files,
        running_server,
    )
except ImportError:  # python benchmarks/bench_server_load.py
    from bench_server_latency import (  # type: ignore[no-redef]
        COLLECTION_SIZE,
        RESULTS,
        build_synthetic_collection,
        machine,
        percentiles,
        query_files,
        running_server,
    )


async def run_clients(
    url: str, payloads: list[tuple[str, bytes]], clients: int, seconds: float, request_timeout: float
) -> dict[str, object]:
    latencies: list[float] = []
    server_took: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        rng = np.random.default_rng(number)
        while time.monotonic() < deadline:
            name, data = payloads[int(rng.integers(len(payloads)))]
            started = time.perf_counter()
            try:
                response = await client.post(
                    "/api/search", params={"k": 12}, files={"file": (name, data, "image/jpeg")}
                )
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            if response.status_code == 200:
                latencies.append((time.perf_counter() - started) * 1000)
                server_took.append(response.json()["took_ms"])
            else:
                errors[f"HTTP {response.status_code}"] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(client, n)) for n in range(clients)]
        # Requests in flight at the deadline may finish; nothing runs past deadline + timeout.
        done, pending = await asyncio.wait(tasks, timeout=seconds + request_timeout + 5)
        for task in pending:
            task.cancel()
            errors["cut off at the end"] += 1
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "duration_s": seconds,
        "elapsed_s": round(elapsed, 2),
        "requests_ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "throughput_per_s": round(len(latencies) / elapsed, 2),
        "latency": percentiles(latencies) if latencies else None,
        "server_took": percentiles(server_took) if server_took else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "server_load.json")
    parser.add_argument("--size", type=int, default=COLLECTION_SIZE, help="images in the collection")
    parser.add_argument("--smoke", action="store_true", help="200 images, 4 clients for 3 s; writes nothing")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.clients, args.seconds = 200, 4, 3.0

    payloads = [(f.name, f.read_bytes()) for f in query_files(500, seed=2)]
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-bench-load-"))
    try:
        collection = build_synthetic_collection(workdir, size=args.size)
        with running_server(collection, workdir / "server.log") as url:
            # One warm-up request, so the run measures the steady state.
            httpx.post(f"{url}/api/search", files={"file": payloads[0]}, timeout=60).raise_for_status()
            load_before = machine()["load_average_1_5_15"]
            figures = asyncio.run(run_clients(url, payloads, args.clients, args.seconds, args.request_timeout))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "benchmark": "server_load",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_average_before": load_before},
        "collection": {
            "images": args.size,
            "how": "8,000 real photos + 2,000 symlinks to them; random unit vectors instead of embeddings",
        },
        "request": "POST /api/search?k=12 with a real cats-and-dogs JPEG (random of 500), on 127.0.0.1",
        "note": "client and server share the machine's cores",
        **figures,
    }
    latency = figures["latency"] or {}
    print(
        f"{figures['requests_ok']} ok, {figures['errors']} errors, {figures['throughput_per_s']} req/s; "
        f"p50 {latency.get('p50_ms')} ms, p99 {latency.get('p99_ms')} ms"
    )
    if args.smoke:
        if not figures["requests_ok"] or figures["errors"]:
            raise SystemExit("smoke run: the server answered no request, or with errors")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
