"""Measure the near tier's geometric verifier on every candidate pair of a copy-detection set, for calibration.

    .venv/bin/python benchmarks/bench_duplicates.py --set SET --methods lookalike-near --collection COL
    .venv/bin/python benchmarks/calibrate_verify.py --set SET --collection COL/collection --out pairs.npz
    .venv/bin/python benchmarks/calibrate_verify.py --set SET --load pairs.npz       # the sweep only

Candidate pairs are the copy descriptor's k-nearest-neighbour pairs (`duplicates.NEIGHBOURS`, through the
collection's index, as the near tier finds them) scoring in [--floor, the near threshold). Each is measured
with `lookalike.verify.Verifier` (inliers, ratio-test matches, covered share of each image) and labelled
from the set's manifest: a true pair joins two files of one original (the original or its copies). The
sweep prints, for acceptance rules of the form inliers >= m(cosine) and coverage >= c, how many unrelated
pairs pass and the share of each transform's direct (copy, original) pairs that pass.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_duplicates import NEAR_EMBEDDER, CopySet  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.duplicates import NEIGHBOURS, THRESHOLDS, neighbour_pairs  # noqa: E402
from lookalike.verify import METHOD, Verifier  # noqa: E402


def measure(
    copyset: CopySet,
    collection_path: Path,
    floor: float,
    part: tuple[int, int] = (0, 1),
    store: bool = False,
    log=print,
) -> dict[str, np.ndarray]:
    index_of = {(copyset.root / f).resolve(): i for i, f in enumerate(copyset.files)}
    with Collection.open(collection_path, create=False) as collection:
        records = collection.records()
        ids = np.array([r.id for r in records], dtype=np.int64)
        path_of = {r.id: r.path for r in records}
        row_of = {r.id: index_of[Path(r.path).resolve()] for r in records}
        stored = collection.catalog.verified(METHOD)  # what a run of the near tier already measured
        found = collection.search_vectors(
            collection.vectors_of(ids, NEAR_EMBEDDER), NEIGHBOURS, embedder=NEAR_EMBEDDER, exclude=ids
        )
    a, b, scores = neighbour_pairs(ids, found.ids, found.scores, floor)
    band = scores < THRESHOLDS["near"]
    a, b, scores = a[band], b[band], scores[band]
    order = np.lexsort((b, a))
    a, b, scores = a[order], b[order], scores[order]
    # part i of n: the pairs whose smaller id is i modulo n (an image's pairs stay together: its features are cached)
    mine = a % part[1] == part[0]
    a, b, scores = a[mine], b[mine], scores[mine]
    verifier = Verifier()
    out = np.zeros((len(a), 5), dtype=np.float64)  # inliers, matches, coverage, mirrored, cpu seconds
    started = time.process_time()
    for n, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        if (x, y) in stored:
            out[n, :4] = stored[(x, y)]
            out[n, 4] = np.nan
            continue
        t = time.process_time()
        o = verifier.measure(path_of[x], path_of[y])
        if o is not None:
            out[n, :4] = (o.inliers, o.matches, o.coverage, o.mirrored)
        out[n, 4] = time.process_time() - t
        if n % 500 == 0:
            log(f"{n}/{len(a)} pairs, {time.process_time() - started:.0f} CPU s, {verifier.images_read} images read")
    if store:  # as the near tier stores them: its next run reads these instead of measuring
        new = [
            (x, y, int(m[0]), int(m[1]), float(m[2]), bool(m[3]))
            for x, y, m in zip(a.tolist(), b.tolist(), out, strict=True)
            if (x, y) not in stored
        ]
        for _attempt in range(10):  # other parts may be writing
            try:
                with Collection.open(collection_path, create=False) as collection, collection.writing():
                    collection.catalog.put_verified(METHOD, new)
                break
            except sqlite3.OperationalError:
                time.sleep(5)
    rows = np.array([[row_of[x], row_of[y]] for x, y in zip(a.tolist(), b.tolist(), strict=True)]).reshape(-1, 2)
    return {
        "rows": rows, "scores": scores, "measured": out,
        "cpu": np.array([time.process_time() - started, verifier.images_read]),
    }  # fmt: skip


def sweep(copyset: CopySet, data: dict[str, np.ndarray]) -> None:
    rows, scores, measured = data["rows"], data["scores"], data["measured"]
    family = copyset.family[rows]
    true = (family[:, 0] == family[:, 1]) & (family[:, 0] >= 0)
    direct = {}
    for copy, original, transform, tier in copyset.copies:
        if tier != "exact":
            direct[(min(copy, original), max(copy, original))] = transform
    kind = np.array([direct.get((min(x, y), max(x, y)), "") for x, y in rows.tolist()])
    transforms = [t for t, tier in copyset.transforms().items() if tier != "exact"]
    inliers, coverage = measured[:, 0], measured[:, 2]
    print(f"{len(rows)} band pairs, {true.sum()} true ({(kind != '').sum()} direct copy-original), {(~true).sum()} not")
    print("CPU:", data["cpu"][0], "s for", int(data["cpu"][1]), "images read; per pair", np.nanmean(measured[:, 4]))
    for m_low, m_high, c in [(12, 20, 0), (15, 25, 0), (15, 30, 0), (20, 30, 0), (20, 40, 0), (15, 30, 0.1),
                             (15, 30, 0.2), (20, 30, 0.2), (12, 30, 0.3), (20, 20, 0.2), (25, 25, 0.25)]:  # fmt: skip
        need = m_high + (m_low - m_high) * (scores - scores.min()) / max(1e-6, THRESHOLDS["near"] - scores.min())
        ok = (inliers >= need) & (coverage >= c)
        cells = " ".join(f"{t}={ok[kind == t].mean():.2f}" for t in transforms if (kind == t).any())
        print(f"m {m_high}->{m_low} cov>={c}: false {int((ok & ~true).sum())} true {int((ok & true).sum())} | {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, required=True)
    parser.add_argument("--collection", type=Path, help="a collection holding the set with copy-lite0 vectors")
    parser.add_argument("--floor", type=float, default=0.5, help="lowest cosine of the pairs measured")
    parser.add_argument("--out", type=Path, help="save the measurements here (.npz)")
    parser.add_argument("--part", default="0/1", help="measure part I/N of the pairs (run N processes, --load all)")
    parser.add_argument("--store", action="store_true", help="store the outcomes in the collection's catalog")
    parser.add_argument("--load", type=Path, nargs="+", help="sweep saved measurements instead of measuring")
    args = parser.parse_args()
    copyset = CopySet.load(args.set)
    if args.load:
        parts = [dict(np.load(path)) for path in args.load]
        data = {key: np.concatenate([p[key] for p in parts]) for key in ("rows", "scores", "measured")}
        data["cpu"] = np.sum([p["cpu"] for p in parts], axis=0)
    else:
        i, n = (int(x) for x in args.part.split("/"))
        data = measure(copyset, args.collection, args.floor, (i, n), args.store, log=lambda s: print(s, flush=True))
        if args.out:
            np.savez(args.out, **data)
    sweep(copyset, data)


if __name__ == "__main__":
    main()
