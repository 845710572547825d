"""Searching with a phone photo: decoded as indexing decodes it (JPEG draft mode) against decoded whole.

Indexing decodes a large JPEG reduced by 2, 4 or 8 (draft mode) to no smaller than the model's resize.
Queries used to be decoded whole, which costs ten times the decoding and resizing and gives the same file
another vector. This measures what a user waits for, an upload search through the web API (`lookalike
serve`'s app, uvicorn in this process, one request at a time on 127.0.0.1), and the score the indexed photo
gets against itself, both ways in one run: for each photo the two ways are alternated (which comes first
alternates too) by switching `Collection.draft`, the collection's own switch, between requests.

The photos are those of bench_draft_decoding.py: shared photos enlarged to a 12-megapixel phone size with
sensor-like noise, saved as JPEG q90 4:2:0; they are indexed (with the default embedder), then each is
uploaded as the query.

    python benchmarks/bench_query_decoding.py            # 40 photos -> results/query_decoding.json
    python benchmarks/bench_query_decoding.py --smoke    # 4 photos, seconds; writes nothing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_draft_decoding import enlarged, sources  # noqa: E402
from bench_server_latency import free_loopback_port, percentiles  # noqa: E402
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.server import create_app  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"draft": True, "whole": False}  # value of Collection.draft


def upload_searches(collection: Collection, photos: list[Path], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per mode: each upload's wall time (ms) and the score of its own indexed photo (top-1 or absent: 0)."""
    import uvicorn

    ids = {Path(r.path).name: r.id for r in collection.catalog.records()}
    port = free_loopback_port()
    server = uvicorn.Server(uvicorn.Config(create_app(collection), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    out: dict[str, dict[str, list[float]]] = {mode: {"ms": [], "self_score": []} for mode in MODES}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            client.post("/api/search", files={"file": ("w.jpg", photos[0].read_bytes(), "image/jpeg")})  # warm-up
            for i, photo in enumerate(photos):
                data = photo.read_bytes()
                order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
                for _ in range(repeats):
                    for mode in order:
                        collection.draft = MODES[mode]
                        started = time.perf_counter()
                        response = client.post(
                            "/api/search", params={"k": 12}, files={"file": ("q.jpg", data, "image/jpeg")}
                        )
                        out[mode]["ms"].append(1000 * (time.perf_counter() - started))
                        response.raise_for_status()
                        top = response.json()["results"][0]
                        out[mode]["self_score"].append(top["score"] if top["id"] == ids[photo.name] else 0.0)
    finally:
        collection.draft = True
        server.should_exit = True
        thread.join(timeout=10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="uploads of each photo each way")
    parser.add_argument("--smoke", action="store_true", help="4 photos, 1 repeat; writes nothing")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.repeats = 4, 1
    record = run_record()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lookalike-query-decoding-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photos = []
        for i, source in enumerate(sources(args.images)):
            photos.append(folder / f"phone-{i:03d}.jpg")
            photos[-1].write_bytes(enlarged(source, rng))
        with Collection.open(Path(tmp) / "collection") as collection:
            collection.sync(folder)
            embedder = collection.default_embedder
            measured = upload_searches(collection, photos, args.repeats)
    finish_record(record)
    summary = {
        mode: {
            "uploads": len(values["ms"]),
            "latency_ms": percentiles(values["ms"]),
            "self_score_median": round(statistics.median(values["self_score"]), 6),
            "self_score_min": round(min(values["self_score"]), 6),
            "self_found_first": sum(s > 0 for s in values["self_score"]) / len(values["self_score"]),
        }
        for mode, values in measured.items()
    }
    result = {
        "benchmark": "query_decoding",
        **record,
        "method": {
            "embedder": embedder,
            "photos": f"{args.images} shared photos at 12 MP (bench_draft_decoding.py), indexed; each uploaded "
            f"{args.repeats}x each way, alternated",
            "request": "POST /api/search?k=12 through uvicorn in this process, one at a time, 127.0.0.1",
            "draft": "decoded as indexing decodes (JPEG draft mode, the default now)",
            "whole": "decoded whole (queries before this change)",
        },
        "upload_search": summary,
    }
    print(json.dumps(summary, indent=2))
    if args.smoke:
        print("smoke run: no results written")
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "query_decoding.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
