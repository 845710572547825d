"""Indexing a phone's photos: the same 12 MP photos as JPEG and as HEIC (what iPhones write), side by side.

A large JPEG is decoded reduced (JPEG draft mode); HEVC has no such shortcut, so a HEIC photo is decoded
whole (pillow-heif, the `heif` extra). This measures what a user waits for, a whole cold `lookalike index`
of a folder of each (a new collection each time, the default embedder, its ONNX file already prepared),
the two alternated, and the decode alone (`open_image` as indexing calls it, median per photo).

The photos are those of bench_draft_decoding.py (shared photos enlarged to 4032 px with sensor-like
noise, JPEG q90); each HEIC is the same pixels encoded by pillow-heif at `--heic-quality`.

    python benchmarks/bench_photo_formats.py            # 24 photos, 3 runs -> results/photo_formats.json
    python benchmarks/bench_photo_formats.py --smoke    # 2 photos, 1 run; writes nothing
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_draft_decoding import enlarged, sources  # noqa: E402
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.images import open_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LOOKALIKE = [sys.executable, "-m", "lookalike.cli.main"]


def heic_bytes(jpeg: bytes, quality: int) -> bytes:
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_pillow(Image.open(io.BytesIO(jpeg)).convert("RGB")).save(buffer, quality=quality)
    return buffer.getvalue()


def index_seconds(folder: Path, work: Path) -> float:
    """Wall time of one cold `lookalike index` of `folder` into a new collection (every photo must be added)."""
    collection = work / f"c-{time.monotonic_ns()}"
    started = time.perf_counter()
    done = subprocess.run([*LOOKALIKE, "index", str(folder), "--collection", str(collection), "--json"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    report = json.loads(done.stdout)
    if report["skipped"] or len(report["added"]) != len(list(folder.iterdir())):
        raise RuntimeError(f"not every photo of {folder.name} was indexed: {report['skipped'][:3]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3, help="cold index runs of each folder, alternated")
    parser.add_argument("--heic-quality", type=int, default=70)
    parser.add_argument("--smoke", action="store_true", help="2 photos, 1 run; writes nothing")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.runs = 2, 1
    record = run_record()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="lookalike-photo-formats-") as tmp:
        work = Path(tmp)
        folders = {"jpeg": work / "jpeg", "heic": work / "heic"}
        for folder in folders.values():
            folder.mkdir()
        sizes: dict[str, list[int]] = {"jpeg": [], "heic": []}
        for i, source in enumerate(sources(args.images)):
            jpeg = enlarged(source, rng)
            for kind, data in (("jpeg", jpeg), ("heic", heic_bytes(jpeg, args.heic_quality))):
                (folders[kind] / f"phone-{i:03d}.{kind}").write_bytes(data)
                sizes[kind].append(len(data))
        with Collection.open(work / "prepare") as collection:  # the ONNX file, once, outside the timings
            embedder = collection.default_embedder
            collection.embedder(embedder).prepare()
            draft = collection.embedder(embedder).preprocessing.draft_size
        decode_ms: dict[str, list[float]] = {"jpeg": [], "heic": []}
        for kind, folder in folders.items():
            for path in sorted(folder.iterdir()):
                data = path.read_bytes()
                started = time.perf_counter()
                open_image(data, draft_size=draft)
                decode_ms[kind].append(1000 * (time.perf_counter() - started))
        seconds: dict[str, list[float]] = {"jpeg": [], "heic": []}
        for run in range(args.runs):
            for kind in ("jpeg", "heic") if run % 2 == 0 else ("heic", "jpeg"):
                seconds[kind].append(index_seconds(folders[kind], work))
    finish_record(record)
    summary = {
        kind: {
            "photos": args.images,
            "file_mb_median": round(statistics.median(sizes[kind]) / 1e6, 2),
            "decode_ms_median": round(statistics.median(decode_ms[kind]), 1),
            "index_seconds_median": round(statistics.median(seconds[kind]), 2),
            "index_seconds_runs": [round(s, 2) for s in seconds[kind]],
            "images_per_s": round(args.images / statistics.median(seconds[kind]), 2),
        }
        for kind in ("jpeg", "heic")
    }
    result = {
        "benchmark": "photo_formats",
        **record,
        "method": {
            "embedder": embedder,
            "photos": f"{args.images} shared photos at 4032 px with noise (bench_draft_decoding.py), JPEG q90; the "
            f"same pixels as HEIC (pillow-heif, quality {args.heic_quality})",
            "index": f"whole cold `lookalike index FOLDER --json` into a new collection, {args.runs} runs of each, "
            "alternated; medians",
            "decode": "open_image(bytes, draft_size=the embedder's) in this process, once per photo; median",
        },
        "formats": summary,
    }
    print(json.dumps(summary, indent=2))
    if args.smoke:
        print("smoke run: no results written")
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "photo_formats.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
