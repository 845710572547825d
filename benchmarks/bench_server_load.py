"""Load tests of the web API on a 10,000-image collection, loopback only; targets are ratios of the same run.

Same collection as bench_server_latency.py (real photo files, random vectors). One server
(`serve()`, in a subprocess on 127.0.0.1), measured four ways in one run:

1. **model only**: the embedder alone in this process on decoded, preprocessed photos, one image
   per call (the server's batch size: it embeds each upload on its own), with one call at a time
   and with as many at once as the server has embedding slots, each call on the embedder's
   default threads and on one thread; the highest rate is the reference. Beside it the server's work for an
   upload without HTTP (`upload_path_only`: decode, embed, search, records, in this process through
   `Collection`): the most the server could reach.
2. **uploads**: 50 clients search by an uploaded photo (decoded and embedded on every call), each
   sending its next request as soon as the previous one is answered. Target: throughput >= 0.7 x
   the model-only rate, p99 <= 1.5 s, no errors.
3. **uploads + writes**: the same beside 2 clients that add a photo and delete it again, without
   pause (their pair latency reported apart). Same target for the searches.
4. **fairness**: one client searching by id (a stored vector: no embedding) alone, then beside
   2 clients adding photos without pause. Target: p99 with the adders <= 3 x p99 alone.

Clients start no request after a phase's duration is over, and a phase is cut off after duration +
request timeout, so a run always stops by itself. The machine is shared: the result records the
load average at the start and end (`run_record` / `finish_record`), and figures taken while it is
busy are the machine's as much as the server's.

    .venv/bin/python benchmarks/bench_server_load.py            # results/server_load.json
    .venv/bin/python benchmarks/bench_server_load.py --smoke    # 200 images, 4 clients, seconds; writes nothing
    .venv/bin/python benchmarks/bench_server_load.py --phases fairness   # some phases only: prints, writes nothing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server_latency import (  # noqa: E402
    COLLECTION_SIZE,
    EMBEDDER,
    RESULTS,
    build_synthetic_collection,
    percentiles,
    query_files,
    running_server,
)
from common import finish_record, run_record  # noqa: E402

TARGET_THROUGHPUT_RATIO = 0.7
TARGET_P99_MS = 1500.0
TARGET_FAIRNESS_RATIO = 3.0
PHASES = ("model", "uploads", "writes", "fairness")


def measured_rate(work: Any, inputs: list[Any], at_once: int, seconds: float) -> tuple[float, float]:
    """(calls/s, CPU ms per call) of `work(input)` called for `seconds` by `at_once` threads, each going through
    `inputs` in turn from a different start."""
    counts = [0] * at_once
    deadline = time.perf_counter() + seconds

    def run(worker: int) -> None:
        while time.perf_counter() < deadline:
            work(inputs[(worker + counts[worker] * at_once) % len(inputs)])
            counts[worker] += 1

    started, cpu_started = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=run, args=(w,)) for w in range(at_once)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done = max(1, sum(counts))
    return round(done / (time.perf_counter() - started), 2), round((time.process_time() - cpu_started) * 1000 / done, 2)


def model_only(
    collection: Path, payloads: list[tuple[str, bytes]], seconds: float, name: str = EMBEDDER
) -> dict[str, object]:
    """Images/s of the embedder alone, one preprocessed image per call, with 1 and `slots` calls at once, each
    call on the embedder's default threads and on one thread; the best of these is the reference."""
    from lookalike import Collection
    from lookalike.images import open_image

    with Collection.open(collection, create=False) as opened:
        default = opened.embedder(name)
        arrays = [default.preprocess(open_image(data))[None] for _, data in payloads[:32]]
        slots = max(1, os.cpu_count() or 1)  # as the server's embedding slots
        rates: dict[str, float] = {}
        cpu_ms: dict[str, float] = {}
        for threads in sorted({default.threads, 1}, reverse=True):
            embedder = default.on_threads(threads)
            embedder.embed_arrays(arrays[0])  # warm-up
            for concurrency in sorted({1, slots}):
                key = f"{concurrency}_at_once_{threads}_thread{'s' if threads > 1 else ''}"
                rates[key], cpu_ms[key] = measured_rate(embedder.embed_arrays, arrays, concurrency, seconds)
    return {"batch_size": 1, "images_per_s": rates, "cpu_ms_per_image": cpu_ms, "reference": max(rates.values())}


def upload_path_only(
    collection: Path, payloads: list[tuple[str, bytes]], seconds: float, reference: float, name: str = EMBEDDER
) -> dict[str, object]:
    """Images/s of what the server does for an upload, without HTTP, in this process through `Collection`: the
    bytes decoded and embedded; query vectors embedded beforehand searched (k=12, the collection's query
    expansion) and their records read; and both, one after the other, as the server does. As many at once as the
    server has embedding slots, the model on one thread each, as the server runs it under load. Beside the model
    alone (same run, `reference` images/s) the last is the most the HTTP server could reach."""
    from lookalike import Collection

    slots = max(1, os.cpu_count() or 1)
    with Collection.open(collection, create=False) as opened:
        expand = opened.default_expand

        def embed(data: bytes) -> np.ndarray:
            return opened.embed(opened.decode_query(data, name), embedder=name, threads=1)

        def search(vector: np.ndarray) -> None:
            opened.results(opened.search_vectors(vector[None], 12, embedder=name, exclude=[-1], expand=expand))

        uploads = [data for _, data in payloads]
        stages: dict[str, tuple[Any, list[Any]]] = {
            "decode_and_embed": (embed, uploads),
            "search_and_records": (search, [embed(data) for data in uploads[:32]]),  # embedded beforehand: no model
            "decode_embed_search_records": (lambda data: search(embed(data)), uploads),
        }
        rates: dict[str, float] = {}
        cpu_ms: dict[str, float] = {}
        for key, (work, inputs) in stages.items():
            work(inputs[0])  # warm-up
            rates[key], cpu_ms[key] = measured_rate(work, inputs, slots, seconds)
    # the search alone runs no model: nothing to compare
    ratios = {key: round(rate / reference, 3) for key, rate in rates.items() if key != "search_and_records"}
    return {
        "at_once": slots,
        "query_expansion": expand,
        "images_per_s": rates,
        "cpu_ms_per_image": cpu_ms,
        "ratio_to_model_only": ratios,
    }


def multipart(name: str, data: bytes) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a multipart/form-data upload of one JPEG file field, as httpx would send it."""
    request = httpx.Request("POST", "http://x/", files={"file": (name, data, "image/jpeg")})
    return {"Content-Type": request.headers["Content-Type"]}, request.read()


def encoded_request(url: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    """A whole HTTP/1.1 POST (request line, headers, body) to `target` on the server at `url`, as bytes."""
    lines = [f"POST {target} HTTP/1.1", f"Host: {urlsplit(url).netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One keep-alive HTTP/1.1 connection sending pre-encoded requests, one at a time.

    The load clients share the server's cores: httpx spends 7-14 ms of CPU per request on its layers, this
    well under one, so the server gets the cores. What is timed is the same: from sending the request to the
    last byte of the response. It reads what the server sends: a status line, headers with Content-Length
    (uvicorn's answers to these requests have one), the body.
    """

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of the response to `request`; on any error the connection is closed (reopened next)."""
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self.streams
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, close = int(head[9:12]), None, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if length is None:
                raise ValueError("a response without Content-Length")
            body = await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def server_cpu_seconds() -> float | None:
    """CPU seconds (user + system) the server subprocess has used so far (Linux /proc; None elsewhere)."""
    me = os.getpid()
    try:
        for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split():
            if b"serve(" in Path(f"/proc/{pid}/cmdline").read_bytes():
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return None


async def run_clients(
    url: str,
    payloads: list[tuple[str, bytes]],
    clients: int,
    seconds: float,
    request_timeout: float,
    writers: int = 0,
) -> dict[str, object]:
    """`clients` searching by upload for `seconds`, beside `writers` adding and deleting photos."""
    latencies: list[float] = []
    server_took: list[float] = []
    write_latencies: list[float] = []
    errors: Counter[str] = Counter()
    write_errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + writers, max_keepalive_connections=clients + writers)
    # Each upload's whole request is encoded once, not per request, and sent on a lean connection (`Connection`):
    # the clients share the server's cores, and what they spend is taken from the server.
    requests = [encoded_request(url, "/api/search?k=12", *multipart(name, data)) for name, data in payloads]

    async def client_loop(number: int) -> None:
        rng = np.random.default_rng(number)
        connection = Connection(url)
        while time.monotonic() < deadline:
            request = requests[int(rng.integers(len(requests)))]
            started = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(connection.send(request), request_timeout)
            except (OSError, EOFError, ValueError, TimeoutError) as exc:  # EOFError: asyncio.IncompleteReadError
                errors[type(exc).__name__] += 1
                continue
            if status == 200:
                latencies.append((time.perf_counter() - started) * 1000)
                server_took.append(json.loads(body)["took_ms"])
            else:
                errors[f"HTTP {status}"] += 1
        connection.close()

    async def writer_loop(client: httpx.AsyncClient, number: int) -> None:
        """Add a photo, then delete it: a steady stream of writes that leaves the collection as it was."""
        rng = np.random.default_rng(1000 + number)
        while time.monotonic() < deadline:
            name, data = payloads[int(rng.integers(len(payloads)))]
            started = time.perf_counter()
            try:
                added = await client.post("/api/images", params={"label": "bench"}, files={"file": (name, data)})
                if added.status_code != 201:
                    write_errors[f"add HTTP {added.status_code}"] += 1
                    continue
                deleted = await client.delete(f"/api/images/{added.json()['id']}")
                if deleted.status_code not in (204, 404):  # 404: the other writer deleted the same photo first
                    write_errors[f"delete HTTP {deleted.status_code}"] += 1
                    continue
            except httpx.HTTPError as exc:
                write_errors[type(exc).__name__] += 1
                continue
            write_latencies.append((time.perf_counter() - started) * 1000)

    started, cpu_started, server_cpu_started = time.monotonic(), time.process_time(), server_cpu_seconds()
    async with httpx.AsyncClient(base_url=url, timeout=request_timeout, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(n)) for n in range(clients)]
        tasks += [asyncio.create_task(writer_loop(client, n)) for n in range(writers)]
        # Requests in flight at the deadline may finish; nothing runs past deadline + timeout.
        done, pending = await asyncio.wait(tasks, timeout=seconds + request_timeout + 5)
        for task in pending:
            task.cancel()
            errors["cut off at the end"] += 1
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed, client_cpu = time.monotonic() - started, time.process_time() - cpu_started
    server_cpu_ended = server_cpu_seconds()
    requests_done = max(1, len(latencies) + len(write_latencies))
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
        # the load clients' own CPU (this process, writers included), taken from the cores the server shares
        "client_cpu_s": round(client_cpu, 2),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / requests_done, 2),
        # the server's CPU per answered request: what the ratio to the model alone is made of
        "server_cpu_ms_per_request": (
            None
            if server_cpu_started is None or server_cpu_ended is None
            else round((server_cpu_ended - server_cpu_started) * 1000 / requests_done, 2)
        ),
    }
    if writers:
        figures["writers"] = {
            "clients": writers,
            "what": "POST /api/images then DELETE it, in a loop",
            "add_and_delete_pairs": len(write_latencies),
            "errors": sum(write_errors.values()),
            "error_kinds": dict(write_errors),
            "pair_latency": percentiles(write_latencies) if write_latencies else None,
        }
    return figures


def against_target(figures: dict[str, object], model: dict[str, object]) -> dict[str, object]:
    ratio = float(figures["throughput_per_s"]) / float(model["reference"])  # type: ignore[arg-type]
    p99 = (figures["latency"] or {}).get("p99_ms", float("inf"))  # type: ignore[union-attr]
    write_errors = (figures.get("writers") or {}).get("errors", 0)  # type: ignore[union-attr]
    return {
        "throughput_ratio": round(ratio, 3),
        "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
        "p99_ms": p99,
        "p99_ms_max": TARGET_P99_MS,
        "met": ratio >= TARGET_THROUGHPUT_RATIO and p99 <= TARGET_P99_MS and figures["errors"] == 0 == write_errors,
    }


def search_by_id_latencies(url: str, size: int, seconds: float, timeout: float = 60.0) -> tuple[list[float], int]:
    """One client, sequential searches by id (stored vectors, no embedding), for `seconds`: (latencies, errors).

    A search that times out counts with the timeout as its latency (the figure is then a floor)."""
    rng = np.random.default_rng(7)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=timeout) as client:
        while time.monotonic() < deadline:
            image_id = int(rng.integers(1, size + 1))
            started = time.perf_counter()
            try:
                response = client.get(f"/api/images/{image_id}/similar", params={"k": 12})
            except httpx.TimeoutException:
                latencies.append(timeout * 1000)
                continue
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies, errors


def adder(url: str, files: list[Path], number: int, stop: EventType, results: Queue) -> None:
    """One client adding photos without pause until `stop` is set; puts (add latencies, error kinds) on `results`.

    Runs in a process of its own: in the measuring client's process, its client work (httpx encodes and parses
    every request in Python) would hold the GIL the searches' client needs, and their latency would be the
    load generator's as much as the server's."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=120) as client:
        i = number
        while not stop.is_set():
            file = files[i % len(files)]
            i += 2
            data = file.read_bytes()
            started = time.perf_counter()
            try:
                response = client.post("/api/images", params={"label": "bench"}, files={"file": (file.name, data)})
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            if response.status_code == 201:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[f"HTTP {response.status_code}"] += 1
    results.put((latencies, dict(errors)))


def fairness(url: str, files: list[Path], size: int, seconds: float) -> dict[str, object]:
    """Search-by-id p99 alone, then beside two clients adding photos without pause (each in its own process)."""
    search_by_id_latencies(url, size, min(2.0, seconds))  # warm-up
    alone, alone_errors = search_by_id_latencies(url, size, seconds)
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    writers = [context.Process(target=adder, args=(url, files, n, stop, results)) for n in range(2)]
    for writer in writers:
        writer.start()
    adds: list[float] = []
    add_errors: Counter[str] = Counter()
    try:
        time.sleep(min(2.0, seconds) + 1.0)  # the adders started (a second to import) and their adds under way
        loaded, loaded_errors = search_by_id_latencies(url, size, seconds)
    finally:
        stop.set()
        for _ in writers:
            latencies, errors = results.get(timeout=180)
            adds += latencies
            add_errors.update(errors)
        for writer in writers:
            writer.join()
    ratio = float(np.percentile(loaded, 99) / np.percentile(alone, 99))
    return {
        "search": "GET /api/images/{id}/similar?k=12, one client, sequential (stored vector: no embedding)",
        "adders": "2 clients (2 processes), POST /api/images of distinct real photos without pause",
        "duration_s": seconds,
        "alone": percentiles(alone),
        "with_2_adders": percentiles(loaded),
        "search_errors": alone_errors + loaded_errors,
        "adds": percentiles(adds) if adds else None,
        "add_errors": dict(add_errors),
        "p99_ratio": round(ratio, 2),
        "target": f"p99 with adders <= {TARGET_FAIRNESS_RATIO} x p99 alone",
        "met": ratio <= TARGET_FAIRNESS_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--writers", type=int, default=2, help="add/delete clients beside the searches (phase 3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--model-seconds", type=float, default=10.0, help="how long the model-only rate is measured")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=COLLECTION_SIZE, help="images in the collection")
    parser.add_argument("--embedder", default=EMBEDDER, help=f"the collection's embedder (default {EMBEDDER})")
    parser.add_argument("--out", type=Path, default=RESULTS / "server_load.json")
    parser.add_argument("--smoke", action="store_true", help="200 images, 4 clients, 2 s phases; writes nothing")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated, of {', '.join(PHASES)}; fewer than all prints its figures and writes nothing",
    )
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - set(PHASES):
        parser.error(f"--phases takes some of {', '.join(PHASES)}")
    if args.smoke:
        args.size, args.clients, args.seconds, args.model_seconds = 200, 4, 2.0, 1.0

    files = query_files(500, seed=2)
    payloads = [(f.name, f.read_bytes()) for f in files]
    workdir = Path(tempfile.mkdtemp(prefix="lookalike-bench-load-"))
    record = run_record()
    try:
        collection = build_synthetic_collection(workdir, size=args.size, embedder=args.embedder)
        with running_server(collection, workdir / "server.log") as url:
            # One warm-up request, so the run measures the steady state.
            httpx.post(f"{url}/api/search", files={"file": payloads[0]}, timeout=60).raise_for_status()
            measured: dict[str, dict[str, object]] = {}
            if "model" in phases or "uploads" in phases or "writes" in phases:
                measured["model_only"] = model = model_only(collection, payloads, args.model_seconds, args.embedder)
                reference = float(model["reference"])  # type: ignore[arg-type]
                path = upload_path_only(collection, payloads, args.model_seconds, reference, args.embedder)
                measured["upload_path_only"] = path
            if "uploads" in phases:
                uploads = asyncio.run(run_clients(url, payloads, args.clients, args.seconds, args.request_timeout))
                uploads["target"] = against_target(uploads, model)
                measured["uploads"] = uploads
            if "writes" in phases:
                with_writes = asyncio.run(
                    run_clients(url, payloads, args.clients, args.seconds, args.request_timeout, args.writers)
                )
                with_writes["target"] = against_target(with_writes, model)
                measured["uploads_with_writes"] = with_writes
            if "fairness" in phases:
                measured["fairness"] = fair = fairness(url, files, args.size, args.seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    finish_record(record)
    if len(phases) < len(PHASES):
        print(json.dumps({**record, **measured}, indent=2))
        return
    start, end = record["load_average_start"][0], record["load_average_end"][0]  # type: ignore[index]
    result = {
        "benchmark": "server_load",
        "conditions": (
            "idle machine"
            if record["idle"]
            else f"measured under load: 1-minute load average {start} at the start and {end} at the end, "
            f"on {os.cpu_count()} cores shared with other jobs"
        ),
        **record,
        "collection": {
            "images": args.size,
            "how": "8,000 real photos + 2,000 symlinks to them; random unit vectors instead of embeddings",
            "embedder": args.embedder,
            "query_expansion": "a new collection's default (over the top 5, nearest kept first)",
        },
        "request": "POST /api/search?k=12 with a real cats-and-dogs JPEG (random of 500), on 127.0.0.1",
        "note": "client and server share the machine's cores",
        "model_only": model,
        "upload_path_only": measured["upload_path_only"],
        "uploads": uploads,
        "uploads_with_writes": with_writes,
        "fairness": fair,
    }
    for name, figures in (("uploads", uploads), ("uploads + writes", with_writes)):
        latency = figures["latency"] or {}
        target = figures["target"]
        print(
            f"{name}: {figures['requests_ok']} ok, {figures['errors']} errors, {figures['throughput_per_s']} req/s "
            f"(model alone {model['reference']} img/s: ratio {target['throughput_ratio']}); "  # type: ignore[index]
            f"p50 {latency.get('p50_ms')} ms, p99 {latency.get('p99_ms')} ms"
        )
    path = result["upload_path_only"]
    rates, ratios = path["images_per_s"], path["ratio_to_model_only"]  # type: ignore[index]
    print(
        "the upload path without HTTP, in-process: "
        + ", ".join(f"{key} {rate} img/s (ratio {ratios.get(key, '-')})" for key, rate in rates.items())
    )
    print(
        f"fairness: search by id p99 alone {fair['alone']['p99_ms']} ms, with 2 adders "  # type: ignore[index]
        f"{fair['with_2_adders']['p99_ms']} ms: ratio {fair['p99_ratio']}"  # type: ignore[index]
    )
    if args.smoke:
        if not uploads["requests_ok"] or uploads["errors"] or with_writes["errors"] or fair["search_errors"]:
            raise SystemExit("smoke run: the server answered no request, or with errors")
        if not with_writes["writers"]["add_and_delete_pairs"] or not fair["adds"]:  # type: ignore[index]
            raise SystemExit("smoke run: no image was added")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
