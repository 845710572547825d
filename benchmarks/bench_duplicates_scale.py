"""Duplicates at scale: from N stored vectors with planted near-copies to groups, without comparing all pairs.

    .venv/bin/python benchmarks/bench_duplicates_scale.py --n 1000000       # the issue's scale (long)
    .venv/bin/python benchmarks/bench_duplicates_scale.py --n 200000
    .venv/bin/python benchmarks/bench_duplicates_scale.py --smoke           # 2,000 vectors, seconds; no results

The vectors are benchmarks/common.py's ClusteredVectors (shaped like EfficientNet-Lite0 embeddings: nearest
neighbour cosine ~0.7-0.77), with `--planted` of them replaced by near-copies of others (the original plus
noise, cosine ~0.9, as an edited copy scores with the copy descriptor). The steps are the ones
`Collection.duplicates` runs after its vectors are stored, with the same functions: the vectors go into the
index kind a collection of that size uses (`--index`, hnsw-sq8 by default), every vector is searched for
its 10 nearest neighbours through it (`duplicates.NEIGHBOURS`), pairs at or above the threshold are kept
(`duplicates.neighbour_pairs`), and grouped by `duplicates.star_clusters`. The catalog (SQLite) is not part
of it: at 1M images of 1280 floats it would hold 5 GB of vectors, which this benchmark never holds in memory
(vectors are generated chunk by chunk, twice: to build the index and to search it).

Reported: seconds and CPU seconds per step, peak memory (max RSS), the recall of the planted pairs (copy in
the same group as its original), how many groups and how many of them mix unrelated vectors, and the time
all pairs would take: exact dot products measured on a sample block of rows against a block of columns,
extrapolated to N (N - 1) / 2 pairs. Timings are on a shared machine: see the load averages in the results.
Results: benchmarks/results/duplicates_scale_<n>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClusteredVectors, finish_record, run_record  # noqa: E402

from lookalike.duplicates import NEIGHBOURS, neighbour_pairs, star_clusters  # noqa: E402
from lookalike.index import create_index  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 50_000
#: noise of a planted copy: cosine to its original ~0.9
COPY_NOISE = 0.48
THRESHOLD = 0.85


class PlantedSet:
    """N vectors: ClusteredVectors rows, the last `planted` of them near-copies of the first `planted`."""

    def __init__(self, n: int, planted: int, dim: int, seed: int = 0, chunk: int = CHUNK):
        self.n, self.planted, self.chunk = n, planted, chunk
        self.data = ClusteredVectors(dim=dim, seed=seed)
        self.seed = seed

    def originals(self) -> np.ndarray:
        first = self.data.rows(0, min(self.chunk, self.n - self.planted))
        assert self.planted <= len(first), "planted copies come from the first chunk"
        return first[: self.planted]

    def copies(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 99])
        base = self.originals()
        noisy = base + rng.standard_normal(base.shape, dtype=np.float32) * (COPY_NOISE / np.sqrt(base.shape[1]))
        return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunk by chunk, every time the same."""
        plain = self.n - self.planted
        for start in range(0, plain, self.chunk):
            stop = min(plain, start + self.chunk)
            yield np.arange(start, stop, dtype=np.int64), self.data.rows(start, stop)
        yield np.arange(plain, self.n, dtype=np.int64), self.copies()

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(original ids, copy ids) of the planted pairs."""
        return np.arange(self.planted), np.arange(self.n - self.planted, self.n)


def peak_memory() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, *args):  # noqa: ANN001, ANN201
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def run(n: int, planted: int, dim: int, kind: str, threshold: float, sample: int) -> dict:
    data = PlantedSet(n, planted, dim)

    def build():  # noqa: ANN202
        index = create_index(kind, dim)
        for ids, vectors in data.chunks():
            index.add(ids, vectors)
        return index

    def graph(index):  # noqa: ANN001, ANN202
        found = []
        for ids, vectors in data.chunks():
            scores, hits = index.search(vectors, NEIGHBOURS + 1)
            found.append(neighbour_pairs(ids, hits, scores, threshold))
        return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))

    index, build_s, build_cpu = timed(build)
    (a, b, scores), graph_s, graph_cpu = timed(graph, index)
    groups, cluster_s, cluster_cpu = timed(lambda: star_clusters(a, b, scores))
    del index
    group_of = np.full(n, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    originals, copies = data.truth()
    found = (group_of[originals] >= 0) & (group_of[originals] == group_of[copies])
    planted_members = set(originals.tolist()) | set(copies.tolist())
    mixed = sum(1 for g in groups if any(m not in planted_members for m in g))

    # all pairs: `sample` rows against a block of columns, exact dot products, extrapolated to n (n - 1) / 2
    rows = data.data.rows(0, sample)
    columns = data.data.rows(sample, sample + min(n, 20_000))
    started = time.process_time()
    wall = time.perf_counter()
    for _ in range(3):
        np.dot(rows, columns.T).max(axis=1)
    pair_cpu = (time.process_time() - started) / 3 / (len(rows) * len(columns))
    pair_wall = (time.perf_counter() - wall) / 3 / (len(rows) * len(columns))
    all_pairs = n * (n - 1) / 2
    return {
        "n": n, "dim": dim, "planted": planted, "index": kind, "neighbours": NEIGHBOURS, "threshold": threshold,
        "steps": {
            "build_index": {"seconds": build_s, "cpu_seconds": build_cpu},
            "neighbour_graph": {"seconds": graph_s, "cpu_seconds": graph_cpu, "pairs": int(len(a))},
            "star_clusters": {"seconds": cluster_s, "cpu_seconds": cluster_cpu, "groups": len(groups)},
        },
        "groups_seconds": round(graph_s + cluster_s, 2),
        "total_seconds": round(build_s + graph_s + cluster_s, 2),
        "peak_memory_bytes": peak_memory(),
        "planted_recall": round(float(found.mean()), 4),
        "groups_with_unplanted_vectors": mixed,
        "all_pairs": {
            "pairs": all_pairs, "sample_pairs": len(rows) * len(columns),
            "cpu_seconds_extrapolated": round(all_pairs * pair_cpu, 1),
            "seconds_extrapolated": round(all_pairs * pair_wall, 1),
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--planted", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--index", default="hnsw-sq8", help="index kind (default hnsw-sq8, auto's choice above 400k)")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--sample", type=int, default=2000, help="rows of the all-pairs sample")
    parser.add_argument("--smoke", action="store_true", help="2,000 vectors, 100 planted; writes no results")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.planted, args.sample, args.index = 2_000, 100, 100, "hnsw"
    record = run_record()
    result = run(args.n, args.planted, args.dim, args.index, args.threshold, args.sample)
    report = {**finish_record(record), **result}
    print(json.dumps(report, indent=2))
    if args.smoke:
        print("smoke run: no results written")
        return
    out = args.out or RESULTS / f"duplicates_scale_{args.n}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
