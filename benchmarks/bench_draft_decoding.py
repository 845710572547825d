"""JPEG draft decoding: how far vectors move, and how much decoding time it saves, on large photos.

A large JPEG is decoded reduced by 2, 4 or 8 (JPEG draft mode: the decoder scales the DCT blocks,
the full image never exists) to no smaller than the model's resize, instead of decoded whole and then
resized. This measures, per photo, the cosine between the efficientnet-lite0 vectors of the two
decodings, and the decode time of each, and reports the distribution.

The shared data holds almost no large photos (two of 8,000 cats-and-dogs photos have a short side of
448 px or more; none of Caltech's), so the large photos are made: photos from both sets enlarged to a
12-megapixel phone size (long side 4,032 px, Lanczos), with sensor-like noise added (Gaussian,
sigma 3 grey levels, so the high frequencies a camera records exist and draft decoding has something
to drop) and saved at JPEG quality 90 with 4:2:0 chroma, as phones save. A real camera photo has more
fine detail than an enlarged one; the noise is there so that this is not flattering. The real large
photos in the data are measured too and reported apart.

    python benchmarks/bench_draft_decoding.py              # 200 photos (about 5 minutes on 2 cores)
    python benchmarks/bench_draft_decoding.py --smoke      # 6 photos, seconds, writes nothing
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish_record, run_record  # noqa: E402

from lookalike import embedders  # noqa: E402
from lookalike.images import open_image  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
LONG_SIDE = 4032
NOISE_SIGMA = 3.0
QUALITY = 90


def sources(n: int) -> list[Path]:
    """n photos, half cats and dogs, half Caltech-101 (spread over classes), in a fixed order."""
    pets = sorted((DATA / "catsdogs").glob("*/*.jpg"))
    caltech = sorted((DATA / "caltech101-dev").glob("*/*.jpg"))
    pick = lambda files, m: [files[i] for i in np.linspace(0, len(files) - 1, m).astype(int)]  # noqa: E731
    return pick(pets, n - n // 2) + pick(caltech, n // 2)


def enlarged(path: Path, rng: np.random.Generator) -> bytes:
    """The photo at phone size with sensor-like noise, as JPEG bytes."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = LONG_SIDE / max(image.size)
        big = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    pixels = np.asarray(big, dtype=np.float32)
    pixels += rng.normal(0.0, NOISE_SIGMA, size=pixels.shape).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=QUALITY, subsampling=2)
    return out.getvalue()


def real_large(short_side: int) -> list[bytes]:
    """The photos of the shared data that draft decoding reduces (short side at least `short_side`)."""
    found = []
    for path in sorted(DATA.glob("*/*/*.jpg")):
        with Image.open(path) as image:
            if min(image.size) >= short_side:
                found.append(path.read_bytes())
    return found


def measure(embedder, photos: list[bytes]) -> dict[str, object]:
    draft_size = embedder.preprocessing.draft_size
    cosines, full_ms, draft_ms, draft_pixels = [], [], [], []
    for data in photos:
        started = time.perf_counter()
        full = open_image(data)
        full_ms.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        reduced = open_image(data, draft_size=draft_size)
        draft_ms.append(1000 * (time.perf_counter() - started))
        draft_pixels.append(reduced.width * reduced.height)
        vectors = embedder.embed_images([full, reduced])
        cosines.append(float(vectors[0] @ vectors[1]))
    if not photos:
        return {"images": 0}
    cos = np.array(cosines)
    return {
        "images": len(photos),
        "cosine": {
            "min": float(cos.min()),
            "p1": float(np.percentile(cos, 1)),
            "p5": float(np.percentile(cos, 5)),
            "median": float(np.median(cos)),
            "share_at_least_0.99": float((cos >= 0.99).mean()),
            "share_at_least_0.995": float((cos >= 0.995).mean()),
        },
        "decode_ms_full_median": statistics.median(full_ms),
        "decode_ms_draft_median": statistics.median(draft_ms),
        "decoded_megapixels_draft_median": statistics.median(draft_pixels) / 1e6,
        "cosines": [round(c, 5) for c in cosines],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="6 photos, seconds; writes no results")
    args = parser.parse_args()
    if args.smoke:
        args.images = 6
    record = run_record()
    embedder = embedders.create("efficientnet-lite0")
    rng = np.random.default_rng(0)
    photos = [enlarged(path, rng) for path in sources(args.images)]
    real = [] if args.smoke else real_large(2 * embedder.preprocessing.resize)
    results = {
        **record,
        "method": {
            "embedder": "efficientnet-lite0",
            "draft_size": list(embedder.preprocessing.draft_size),
            "made_photos": f"long side {LONG_SIDE} px (Lanczos), noise sigma {NOISE_SIGMA}, JPEG q{QUALITY} 4:2:0",
        },
        "made_large_photos": measure(embedder, photos),
        "real_large_photos": measure(embedder, real),
    }
    finish_record(results)
    summary = {key: value for key, value in results["made_large_photos"].items() if key != "cosines"}
    print(json.dumps(summary, indent=2))
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "draft_decoding.json").write_text(json.dumps(results, indent=2) + "\n")
    else:
        print("smoke run: no results written")


if __name__ == "__main__":
    main()
