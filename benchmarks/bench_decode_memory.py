"""Peak memory of decoding a phone-sized JPEG: `open_image` (decoded reduced to the server's 40 MP) vs a full decode.

Each decode runs in a fresh Python process; the figure is its peak resident memory (VmHWM, reset after
the imports through /proc/self/clear_refs; Linux only) minus its resident memory then, so it is what
the decode itself adds. Test photos are a
real cats-and-dogs photo scaled up (a baseline JPEG, as phone cameras write).

    python benchmarks/bench_decode_memory.py --out benchmarks/results/decode_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from lookalike.evaluation.runner import machine_info

SIZES = {"12 MP": (4000, 3000), "48 MP": (8000, 6000), "108 MP": (12000, 9000), "200 MP": (16320, 12240)}
SERVER_MAX_PIXELS = 40_000_000
IMAGES_MODULE = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "images.py"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs" / "cat" / "cat.100.jpg"

# images.py is loaded on its own: importing the lookalike package (torch) would peak higher than any decode.
MEASURE = """
import importlib.util, sys, time
from PIL import Image
spec = importlib.util.spec_from_file_location("images", sys.argv[4])
images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(images)
open_image = images.open_image
def peak_kb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
with open("/proc/self/clear_refs", "w") as f:  # the peak so far includes the parent's, inherited by fork
    f.write("5")
before = peak_kb()
started = time.perf_counter()
if sys.argv[2] == "open_image":
    image = open_image(sys.argv[1], max_pixels=int(sys.argv[3]))
else:
    Image.MAX_IMAGE_PIXELS = None
    image = Image.open(sys.argv[1]); image.load()
seconds = time.perf_counter() - started
peak = peak_kb()
print(before, peak, image.size[0], image.size[1], seconds)
"""


def measure(path: Path, how: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), how, str(SERVER_MAX_PIXELS), str(IMAGES_MODULE)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    before, peak, width, height, seconds = int(out[0]), int(out[1]), int(out[2]), int(out[3]), float(out[4])
    return {
        "decoded": f"{width}x{height}",
        "added_peak_mb": round((peak - before) / 1024, 1),
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_memory.json"))
    parser.add_argument("--smoke", action="store_true", help="the 12 MP photo only; writes nothing")
    args = parser.parse_args()
    sizes = dict(list(SIZES.items())[:1]) if args.smoke else SIZES
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in sizes.items():
            path = Path(tmp) / f"{name.replace(' ', '')}.jpg"
            Image.open(DATA).convert("RGB").resize(size, Image.Resampling.BILINEAR).save(path, quality=85)
            results[name] = {
                "size": f"{size[0]}x{size[1]}",
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "open_image_40mp_limit": measure(path, "open_image"),
                "full_decode": measure(path, "full"),
            }
            print(name, json.dumps(results[name]))
            path.unlink()
    report = {
        "what": "peak resident memory a decode adds, fresh process per decode; open_image with max_pixels=40 MP",
        "results": results,
        "run": {
            "started": started,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "machine": machine_info(),
        },
    }
    if args.smoke:
        print("smoke run: no results written")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
