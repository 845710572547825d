"""Load tests of the web API on a 10,000-image collection, loopback only; targets are ratios of the same run.

Same collection as bench_server_latency.py (real photo files, random vectors). The server
(`serve()`, in a subprocess on 127.0.0.1) is measured three ways:

* `--mode uploads` (default): 50 clients search by an uploaded photo (decoded and embedded on
  every call) for 30 s, each sending its next request as soon as the previous one is answered.
  Before the clients start, the same process measures the model alone at the server's batch size
  (one image per call, as many calls at once as the server's embedding slots). Target: throughput
  >= 0.7 x that model-only rate, p99 <= 1.5 s, no errors. `--writers 2` adds two clients that
  add a photo and delete it again, over and over, beside the searches (their figures apart).
* `--mode fairness`: one client searching by id (a stored vector: no embedding) alone, then with
  two clients adding photos without pause. Target: loaded p99 <= 3 x unloaded p99.

Clients start no request after the duration is over, and a run is cut off after duration +
request timeout, so it always stops by itself. The load average is recorded before and after:
the machine is shared, and figures taken while it is busy are not the machine's.

    .venv/bin/python benchmarks/bench_server_load.py                  # results/server_load.json
    .venv/bin/python benchmarks/bench_server_load.py --writers 2      # results/server_load_writes.json
    .venv/bin/python benchmarks/bench_server_load.py --mode fairness  # results/server_fairness.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

try:  # python -m benchmarks.bench_server_load
    from .bench_server_latency import (
        COLLECTION_SIZE,
        EMBEDDER,
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
        EMBEDDER,
        RESULTS,
        build_synthetic_collection,
        machine,
        percentiles,
        query_files,
        running_server,
    )

TARGET_THROUGHPUT_RATIO = 0.7
TARGET_P99_MS = 1500.0
TARGET_FAIRNESS_RATIO = 3.0


def model_only(collection: Path, payloads: list[tuple[str, bytes]], seconds: float) -> dict[str, object]:
    """Images/s of the embedder alone on decoded, preprocessed photos, one image per call (the server's
    batch size), with 1 and with `slots` calls at once (the server's embedding slots): the ceiling."""
    from lookalike import Collection
    from lookalike.images import open_image

    with Collection.open(collection, create=False) as opened:
        embedder = opened.embedder(EMBEDDER)
        arrays = [embedder.preprocess(open_image(data))[None] for _, data in payloads[:32]]
        embedder.embed_arrays(arrays[0])  # warm-up
        slots = max(1, os.cpu_count() or 1)  # as the server's FifoSemaphore
        rates = {}
        for concurrency in sorted({1, slots}):
            counts = [0] * concurrency
            deadline = time.perf_counter() + seconds

            def run(worker: int, counts: list[int] = counts, deadline: float = deadline) -> None:
                while time.perf_counter() < deadline:
                    embedder.embed_arrays(arrays[(worker + counts[worker] * len(counts)) % len(arrays)])
                    counts[worker] += 1

            started = time.perf_counter()
            threads = [threading.Thread(target=run, args=(w,)) for w in range(concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rates[f"{concurrency}_at_once"] = round(sum(counts) / (time.perf_counter() - started), 2)
    return {"batch_size": 1, "images_per_s": rates, "reference": max(rates.values())}


async def run_clients(
    url: str,
    payloads: list[tuple[str, bytes]],
    clients: int,
    seconds: float,
    request_timeout: float,
    writers: int = 0,
) -> dict[str, object]:
    latencies: list[float] = []
    server_took: list[float] = []
    write_latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + writers, max_keepalive_connections=clients + writers)

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

    async def writer_loop(client: httpx.AsyncClient, number: int) -> None:
        """Add a photo, then delete it: a steady stream of writes that leaves the collection as it was."""
        rng = np.random.default_rng(1000 + number)
        while time.monotonic() < deadline:
            name, data = payloads[int(rng.integers(len(payloads)))]
            started = time.perf_counter()
            try:
                added = await client.post("/api/images", params={"label": "bench"}, files={"file": (name, data)})
                if added.status_code != 201:
                    errors[f"add HTTP {added.status_code}"] += 1
                    continue
                deleted = await client.delete(f"/api/images/{added.json()['id']}")
                if deleted.status_code not in (204, 404):  # 404: the other writer deleted the same photo first
                    errors[f"delete HTTP {deleted.status_code}"] += 1
                    continue
            except httpx.HTTPError as exc:
                errors[f"write {type(exc).__name__}"] += 1
                continue
            write_latencies.append((time.perf_counter() - started) * 1000)

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(client, n)) for n in range(clients)]
        tasks += [asyncio.create_task(writer_loop(client, n)) for n in range(writers)]
        # Requests in flight at the deadline may finish; nothing runs past deadline + timeout.
        done, pending = await asyncio.wait(tasks, timeout=seconds + request_timeout + 5)
        for task in pending:
            task.cancel()
            errors["cut off at the end"] += 1
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - started
    figures: dict[str, object] = {
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
    if writers:
        figures["writers"] = {
            "clients": writers,
            "what": "POST /api/images then DELETE it, in a loop",
            "add_and_delete_pairs": len(write_latencies),
            "pair_latency": percentiles(write_latencies) if write_latencies else None,
        }
    return figures


def search_by_id_latencies(url: str, seconds: float, timeout: float = 60.0) -> list[float]:
    """One client, sequential searches by id (stored vectors, no embedding), for `seconds`.

    A search that times out counts with the timeout as its latency (the figure is then a floor)."""
    rng = np.random.default_rng(7)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=timeout) as client:
        while time.monotonic() < deadline:
            image_id = int(rng.integers(1, COLLECTION_SIZE + 1))
            started = time.perf_counter()
            try:
                client.get(f"/api/images/{image_id}/similar", params={"k": 12}).raise_for_status()
            except httpx.TimeoutException:
                latencies.append(timeout * 1000)
                continue
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def fairness(url: str, payloads: list[tuple[str, bytes]], seconds: float) -> dict[str, object]:
    """Search-by-id p99 alone, then beside two clients adding photos without pause."""
    search_by_id_latencies(url, 2)  # warm-up
    alone = search_by_id_latencies(url, seconds)
    stop = threading.Event()
    adds: list[float] = []
    add_errors: Counter[str] = Counter()

    def adder(number: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            i = number
            while not stop.is_set():
                name, data = payloads[i % len(payloads)]
                i += 2
                started = time.perf_counter()
                try:
                    response = client.post("/api/images", params={"label": "bench"}, files={"file": (name, data)})
                except httpx.HTTPError as exc:
                    add_errors[type(exc).__name__] += 1
                    continue
                if response.status_code == 201:
                    adds.append((time.perf_counter() - started) * 1000)
                else:
                    add_errors[f"HTTP {response.status_code}"] += 1

    writers = [threading.Thread(target=adder, args=(n,)) for n in range(2)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(2)  # the adds under way
        loaded = search_by_id_latencies(url, seconds)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    ratio = float(np.percentile(loaded, 99) / np.percentile(alone, 99))
    return {
        "search": "GET /api/images/{id}/similar?k=12, one client, sequential (stored vector: no embedding)",
        "adders": "2 clients, POST /api/images of distinct real photos without pause",
        "alone": percentiles(alone),
        "with_2_adders": percentiles(loaded),
        "adds": percentiles(adds) if adds else None,
        "add_errors": dict(add_errors),
        "p99_ratio": round(ratio, 2),
        "target": f"p99 with adders <= {TARGET_FAIRNESS_RATIO} x p99 alone",
        "met": ratio <= TARGET_FAIRNESS_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["uploads", "fairness"], default="uploads")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--writers", type=int, default=0, help="uploads mode: clients adding and deleting beside")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model-seconds", type=float, default=10.0, help="how long the model-only rate is measured")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.out is None:
        name = "server_fairness" if args.mode == "fairness" else "server_load_writes" if args.writers else "server_load"
        args.out = RESULTS / f"{name}.json"

    payloads = [(f.name, f.read_bytes()) for f in query_files(500, seed=2)]
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-bench-load-"))
    try:
        collection = build_synthetic_collection(workdir)
        with running_server(collection, workdir / "server.log") as url:
            # One warm-up request, so the run measures the steady state.
            httpx.post(f"{url}/api/search", files={"file": payloads[0]}, timeout=60).raise_for_status()
            load_before = machine()["load_average_1_5_15"]
            if args.mode == "fairness":
                figures = fairness(url, payloads, args.seconds)
            else:
                model = model_only(collection, payloads, args.model_seconds)
                figures = asyncio.run(
                    run_clients(url, payloads, args.clients, args.seconds, args.request_timeout, args.writers)
                )
                figures["model_only"] = model
                ratio = figures["throughput_per_s"] / model["reference"]  # type: ignore[operator]
                p99 = (figures["latency"] or {}).get("p99_ms", float("inf"))  # type: ignore[union-attr]
                figures["target"] = {
                    "throughput_ratio": round(ratio, 3),
                    "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                    "p99_ms_max": TARGET_P99_MS,
                    "met": ratio >= TARGET_THROUGHPUT_RATIO and p99 <= TARGET_P99_MS and figures["errors"] == 0,
                }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "benchmark": "server_fairness" if args.mode == "fairness" else "server_load",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load_average_before": load_before},
        "collection": {
            "images": COLLECTION_SIZE,
            "how": "8,000 real photos + 2,000 symlinks to them; random unit vectors instead of embeddings",
        },
        "request": "POST /api/search?k=12 with a real cats-and-dogs JPEG (random of 500), on 127.0.0.1",
        "note": "client and server share the machine's cores; load_average_1_5_15 is taken at the end",
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.mode == "fairness":
        print(
            f"search by id p99 alone {figures['alone']['p99_ms']} ms, with 2 adders "  # type: ignore[index]
            f"{figures['with_2_adders']['p99_ms']} ms: ratio {figures['p99_ratio']}"  # type: ignore[index]
        )
    else:
        latency = figures["latency"] or {}
        print(
            f"{figures['requests_ok']} ok, {figures['errors']} errors, {figures['throughput_per_s']} req/s "
            f"(model alone {figures['model_only']['reference']} img/s: ratio "  # type: ignore[index]
            f"{figures['target']['throughput_ratio']}); p50 {latency.get('p50_ms')} ms, "  # type: ignore[index]
            f"p99 {latency.get('p99_ms')} ms"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
