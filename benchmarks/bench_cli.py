"""What a user waits for at the command line: whole, cold `lookalike` processes against the floor.

The floor is `python -c "import onnxruntime, faiss, numpy, PIL"`: the libraries a search cannot do
without. Each command and the floor run alternately in one session (A B A B ...), so both see the
same machine; medians of --repeat runs, wall time and peak memory (the child's max RSS from wait4).

Commands (the collection is built first if missing, and reused with --collection):
- `lookalike --help`;
- `lookalike search PHOTO -k 5` on a collection of 10,020 images (catsdogs + caltech101-dev), a photo
  that is not in it, so it is decoded and embedded;
- `lookalike index catsdogs` with nothing changed (8,000 images).

    python benchmarks/bench_cli.py                      # builds the collection once (minutes), then times
    python benchmarks/bench_cli.py --smoke              # a 40-image collection, 2 runs each: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish_record, run_record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
FLOOR = [sys.executable, "-c", "import onnxruntime, faiss, numpy, PIL"]
LOOKALIKE = [sys.executable, "-m", "lookalike.cli.main"]
# The query is not in the collection (a catsdogs photo cropped and saved elsewhere: new bytes, new path),
# so it is decoded and embedded, as a user's query is.
TARGETS = {"help": 0.5, "search": 1.0, "search_vs_floor": 2.5, "index_unchanged": 1.5}


def timed(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one whole process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode() if process.stderr else ''}")
    return seconds, usage.ru_maxrss // 1024


def compile_sources() -> str:
    """Byte-compile lookalike's own modules, as `pip install` (and the Makefile's install step) does: an
    environment with PYTHONDONTWRITEBYTECODE set would otherwise compile every module in every run."""
    import compileall

    package = Path(__file__).resolve().parents[1] / "src" / "lookalike"
    compileall.compile_dir(package, quiet=1)
    setting = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    return f"lookalike's modules byte-compiled before timing; PYTHONDONTWRITEBYTECODE={setting!r}"


def side_by_side(commands: dict[str, list[str]], repeat: int) -> dict[str, dict[str, float]]:
    """Run every command once per round, `repeat` rounds, after one untimed warm-up round (disk cache)."""
    for command in commands.values():
        timed(command)
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            runs[name].append(timed(command))
    return {
        name: {
            "median_s": round(statistics.median(s for s, _ in values), 3),
            "min_s": round(min(s for s, _ in values), 3),
            "max_s": round(max(s for s, _ in values), 3),
            "median_peak_mb": statistics.median(m for _, m in values),
        }
        for name, values in runs.items()
    }


def build_collection(collection: Path, folders: list[Path]) -> None:
    for folder in folders:
        subprocess.run([*LOOKALIKE, "index", str(folder), "--collection", str(collection), "--json"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=Path, help="reuse (or build here) the 10,020-image collection")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    record = run_record()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.smoke:
            folder = work / "photos"
            for label in ("cat", "dog"):
                (folder / label).mkdir(parents=True)
                for i in range(1, 21):
                    shutil.copy(DATA / "catsdogs" / label / f"{label}.{i}.jpg", folder / label)
            folders, collection, repeat = [folder], work / "collection", 2
        else:
            folders = [DATA / "catsdogs", DATA / "caltech101-dev"]
            collection, repeat = args.collection or work / "collection", args.repeat
        if not (collection / "catalog.sqlite").exists():
            build_collection(collection, folders)
        query = work / "query.jpg"
        from PIL import Image

        with Image.open(DATA / "catsdogs" / "dog" / "dog.7.jpg") as photo:
            photo.crop((10, 10, photo.width - 10, photo.height - 10)).save(query, quality=90)
        commands = {
            "floor": FLOOR,
            "help": [*LOOKALIKE, "--help"],
            "search": [*LOOKALIKE, "search", str(query), "-k", "5", "--collection", str(collection)],
            "index_unchanged": [*LOOKALIKE, "index", str(folders[0]), "--collection", str(collection)],
        }
        bytecode = compile_sources()
        figures = side_by_side(commands, repeat)
        stats = json.loads(
            subprocess.run(
                [*LOOKALIKE, "stats", "--collection", str(collection)], capture_output=True, text=True, check=True
            ).stdout  # fmt: skip
        )
    ratio = figures["search"]["median_s"] / figures["floor"]["median_s"]
    met = {
        "help": figures["help"]["median_s"] <= TARGETS["help"],
        "search": figures["search"]["median_s"] <= TARGETS["search"],
        "search_vs_floor": ratio <= TARGETS["search_vs_floor"],
        "index_unchanged": figures["index_unchanged"]["median_s"] <= TARGETS["index_unchanged"],
    }
    result = {
        "benchmark": "cli_cold_start",
        "smoke": args.smoke,
        "repeat": repeat,
        "collection_images": stats["images"],
        "index_type": stats["index_type"],
        "figures": figures,
        "search_over_floor": round(ratio, 2),
        "bytecode": bytecode,
        "targets": TARGETS,
        "met": met,
        **finish_record(record),
    }
    print(json.dumps(result, indent=2))
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cli_cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
