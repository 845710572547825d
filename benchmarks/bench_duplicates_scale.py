"""Duplicates at scale: from N stored vectors with planted near-copies to groups, without comparing all pairs.

    .venv/bin/python benchmarks/bench_duplicates_scale.py --n 100000                  # both variants
    .venv/bin/python benchmarks/bench_duplicates_scale.py --n 1000000 --variants compact   # the issue's scale
    .venv/bin/python benchmarks/bench_duplicates_scale.py --smoke           # 2,000 vectors, seconds; no results

The vectors are benchmarks/common.py's ClusteredVectors (shaped like EfficientNet-Lite0 embeddings: nearest
neighbour cosine ~0.7-0.77), with `--planted` of them replaced by near-copies of others (the original plus
noise, cosine ~0.9, as an edited copy scores with the copy descriptor). They are written once to a float32
file (`--store` keeps it for the next run), which stands for the catalog: each variant reads the rows it
needs from it by id (positioned reads, no memory map), as duplicates read the catalog.

Two variants, each in its own process (its own peak memory), same vectors:
- `compact` (what `Collection.duplicates` runs): a PCA projection to 128 dimensions fit on 20,000 stored
  vectors, the projected vectors in an IVF-SQ8 index (index/compact.py), every vector's 20 nearest candidates
  through it scored with the exact cosine of the stored vectors and the best 10 kept (`duplicates.search_pairs`).
  The first duplicates run builds this index, so fitting and building count in its time to groups.
- `full` (before the compact index): the collection's own index kind (`--index`, hnsw-sq8 at 1M) over the full
  vectors, every vector's 10 nearest through it (scores as that index gives them). That index exists already
  (indexing built it), so its build is reported but not counted in the time to groups.
Pairs at or above the threshold are grouped by `duplicates.star_clusters`.

Reported per variant: seconds and CPU seconds per step, peak memory (max RSS of its process), the recall of
the planted pairs (copy in the same group as its original), how many groups and how many of them hold a
vector that is not a planted original or copy; and the time all pairs would take: exact dot products measured
on a sample block of rows against a block of columns, extrapolated to N (N - 1) / 2 pairs. Timings are on a
shared machine: see the load averages in the results; CPU seconds are what the load distorts least.
Results: benchmarks/results/duplicates_scale_<n>.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClusteredVectors, finish_record, run_record  # noqa: E402

from lookalike.duplicates import (  # noqa: E402
    NEIGHBOURS,
    SEARCH_BATCH,
    HashNeighbours,
    exact_scores,
    neighbour_pairs,
    search_pairs,
    star_clusters,
)
from lookalike.index import create_index  # noqa: E402
from lookalike.index.compact import COMPACT_DIM, FIT_SAMPLE, CompactIndex, fit_projection  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 50_000
#: noise of a planted copy: cosine to its original ~0.9
COPY_NOISE = 0.48
THRESHOLD = 0.85
#: neighbours per vector of the full variant (what `duplicates.NEIGHBOURS` was before the compact index)
FULL_NEIGHBOURS = 10


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

    def hashes(self) -> np.ndarray:
        """(n, 2) perceptual hashes (pHash, dHash) as uint64: uniformly random, except that each planted copy has its
        original's with 1-6 bits flipped in each (an edited copy's hashes stay within a few bits)."""
        rng = np.random.default_rng([self.seed, 7])
        codes = rng.integers(0, 2**63, (self.n, 2), dtype=np.int64).view(np.uint64) * np.uint64(2)
        codes ^= rng.integers(0, 2, (self.n, 2), dtype=np.int64).view(np.uint64)
        originals, copies = self.truth()
        flips = np.zeros((len(copies), 2), dtype=np.uint64)
        for row in range(len(copies)):
            for column in range(2):
                for bit in rng.choice(64, int(rng.integers(1, 7)), replace=False):
                    flips[row, column] |= np.uint64(1) << np.uint64(bit)
        codes[copies] = codes[originals] ^ flips
        return codes

    def truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(original ids, copy ids) of the planted pairs."""
        return np.arange(self.planted), np.arange(self.n - self.planted, self.n)


class StoredVectors:
    """The set's vectors in a float32 file on disk, standing for the catalog that stores them: rows are read by
    id with positioned reads into the caller's array (no memory map, whose pages would count as the process's
    memory), as duplicates read them from the catalog. Written once; a file of the right size is reused."""

    def __init__(self, path: Path, data: PlantedSet):
        self.path, self.n, self.dim = path, data.n, data.data.dim
        self.row = 4 * self.dim
        if not path.exists() or path.stat().st_size != self.n * self.row:
            with open(path, "wb") as f:
                for _, vectors in data.chunks():
                    f.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        buffer = memoryview(out).cast("B")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # runs of consecutive ids in one read each
            breaks = np.flatnonzero(np.diff(ids) != 1) + 1
            for first, last in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(ids)].tolist(), strict=True):
                os.preadv(fd, [buffer[first * self.row : last * self.row]], int(ids[first]) * self.row)
        finally:
            os.close(fd)
        return out

    def chunks(self, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, self.n, chunk):
            ids = np.arange(start, min(self.n, start + chunk), dtype=np.int64)
            yield ids, self(ids)


def peak_memory() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, *args):  # noqa: ANN001, ANN201
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def full_variant(stored: StoredVectors, kind: str, threshold: float) -> tuple[dict, tuple]:
    """Today's search before the compact index: every vector's FULL_NEIGHBOURS nearest through the collection's
    own index kind over the full vectors (scores as that index gives them)."""

    def build():  # noqa: ANN202
        index = create_index(kind, stored.dim)
        for ids, vectors in stored.chunks():
            index.add(ids, vectors)
        return index

    def graph(index):  # noqa: ANN001, ANN202
        found = []
        for ids, vectors in stored.chunks():
            scores, hits = index.search(vectors, FULL_NEIGHBOURS + 1)
            found.append(neighbour_pairs(ids, hits, scores, threshold))
        return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))

    index, build_s, build_cpu = timed(build)
    (a, b, scores), graph_s, graph_cpu = timed(graph, index)
    steps = {
        "build_index": {"seconds": build_s, "cpu_seconds": build_cpu, "kind": index.kind},
        "neighbour_graph": {"seconds": graph_s, "cpu_seconds": graph_cpu, "pairs": int(len(a))},
    }
    return {"index": kind, "neighbours": FULL_NEIGHBOURS, "steps": steps}, (a, b, scores)


def compact_variant(
    stored: StoredVectors, threshold: float, dim: int, hashes: np.ndarray | None = None
) -> tuple[dict, tuple]:
    """The compact index (index/compact.py) as `duplicates.update_pairs` builds and searches it: PCA fit on a
    sample, projected vectors in an IVF-SQ8 index, NEIGHBOURS candidates each, every pair scored exactly from
    the stored vectors (`duplicates.search_pairs`). With `hashes`, the near tier's second source of candidates
    too: every image's nearest by pHash and by dHash (`duplicates.HashNeighbours`), scored exactly."""
    every = np.arange(stored.n, dtype=np.int64)

    def fit():  # noqa: ANN202
        sample = every
        if stored.n > FIT_SAMPLE:
            sample = np.sort(np.random.default_rng(0).choice(every, FIT_SAMPLE, replace=False))
        return fit_projection(stored(sample), stored.n, dim)

    def build(projection):  # noqa: ANN001, ANN202
        return CompactIndex.build(projection, every, (vectors for _, vectors in stored.chunks()))

    def graph(index):  # noqa: ANN001, ANN202
        found = []
        for ids, vectors in stored.chunks(SEARCH_BATCH):
            found.append(search_pairs(index, ids, vectors, stored, threshold))
        return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))

    def hash_graph():  # noqa: ANN202
        by_hash = HashNeighbours(every, hashes)
        found = []
        for ids, vectors in stored.chunks(SEARCH_BATCH):
            near = by_hash.search(ids)
            found.append(neighbour_pairs(ids, near, exact_scores(vectors, near, stored), -np.inf))
        a, b, scores = (np.concatenate(parts) for parts in zip(*found, strict=True))
        _, first = np.unique(a << 32 | b, return_index=True)  # a pair is found from both its images
        return a[first], b[first], scores[first]

    projection, fit_s, fit_cpu = timed(fit)
    index, build_s, build_cpu = timed(build, projection)
    (a, b, scores), graph_s, graph_cpu = timed(graph, index)
    hash_step = None
    if hashes is not None:
        hash_pairs, hash_s, hash_cpu = timed(hash_graph)
        hash_step = {"seconds": hash_s, "cpu_seconds": hash_cpu, "pairs": int(len(hash_pairs[0])),
                     "pairs_by_hash_only": 0}  # fmt: skip
        fresh = ~np.isin(hash_pairs[0] << 32 | hash_pairs[1], a << 32 | b)
        hash_step["pairs_by_hash_only"] = int(fresh.sum())
        hash_step["hash_pairs"] = hash_pairs
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp), "bench")
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    steps = {
        "fit_projection": {"seconds": fit_s, "cpu_seconds": fit_cpu, "sample": min(stored.n, FIT_SAMPLE)},
        "build_index": {"seconds": build_s, "cpu_seconds": build_cpu, "kind": index.index.kind},
        "neighbour_graph": {"seconds": graph_s, "cpu_seconds": graph_cpu, "pairs": int(len(a))},
    }
    if hash_step is not None:
        steps["hash_neighbours"] = hash_step
    if hash_step is not None:
        steps["hash_neighbours"] = hash_step
    info = {"index": f"compact {dim}-d {index.index.kind}", "neighbours": NEIGHBOURS, "nprobe": index.index.nprobe,
            "index_file_bytes": size, "steps": steps}  # fmt: skip
    return info, (a, b, scores)


def run_variant(
    name: str,
    stored: StoredVectors,
    truth: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace,
    hashes: np.ndarray | None = None,
) -> dict:
    """One variant from the stored vectors to groups, scored against the planted pairs (in a child process)."""
    if name == "full":
        info, (a, b, scores) = full_variant(stored, args.index, args.threshold)
    else:
        info, (a, b, scores) = compact_variant(stored, args.threshold, args.compact_dim, hashes)
    by_hash = info["steps"].get("hash_neighbours")
    if by_hash is not None:
        # the pairs only the hashes found go to the geometric check, which needs the files (none here): counted,
        # not checked. The recall of the hash step alone: the share of planted pairs among its pairs.
        ha, hb, _ = by_hash.pop("hash_pairs")
        planted = set(zip(*truth, strict=True))
        found = sum((x, y) in planted for x, y in zip(ha.tolist(), hb.tolist(), strict=True))
        by_hash["planted_recall_by_hash"] = round(found / len(planted), 4)
    groups, cluster_s, cluster_cpu = timed(lambda: star_clusters(a, b, scores))
    info["steps"]["star_clusters"] = {"seconds": cluster_s, "cpu_seconds": cluster_cpu, "groups": len(groups)}
    group_of = np.full(stored.n, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        group_of[members] = g
    originals, copies = truth
    found = (group_of[originals] >= 0) & (group_of[originals] == group_of[copies])
    planted_members = set(originals.tolist()) | set(copies.tolist())
    steps = info["steps"]
    # from stored vectors to groups: for `full` the collection's index exists already (built while indexing);
    # the compact index is built by the first duplicates run, so its fit and build count
    counted = ["neighbour_graph", "star_clusters"] + (["fit_projection", "build_index"] if name == "compact" else [])
    counted += ["hash_neighbours"] if "hash_neighbours" in steps else []
    return {
        **info,
        "groups_seconds": round(sum(steps[s]["seconds"] for s in counted), 2),
        "groups_cpu_seconds": round(sum(steps[s]["cpu_seconds"] for s in counted), 2),
        "total_seconds": round(sum(s["seconds"] for s in steps.values()), 2),
        "total_cpu_seconds": round(sum(s["cpu_seconds"] for s in steps.values()), 2),
        "peak_memory_bytes": peak_memory(),
        "planted_recall": round(float(found.mean()), 4),
        "groups": len(groups),
        "groups_with_unplanted_vectors": sum(1 for g in groups if any(m not in planted_members for m in g)),
    }


def in_child(fn, *args):  # noqa: ANN001, ANN201
    """fn(*args) in a new process (spawned, not forked: a forked child starts with its parent's peak memory),
    so each variant's peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(fn, args)


def all_pairs(data: PlantedSet, n: int, sample: int) -> dict:
    """`sample` rows against a block of columns, exact dot products, extrapolated to n (n - 1) / 2 pairs."""
    rows = data.data.rows(0, sample)
    columns = data.data.rows(sample, sample + min(n, 20_000))
    started = time.process_time()
    wall = time.perf_counter()
    for _ in range(3):
        np.dot(rows, columns.T).max(axis=1)
    pair_cpu = (time.process_time() - started) / 3 / (len(rows) * len(columns))
    pair_wall = (time.perf_counter() - wall) / 3 / (len(rows) * len(columns))
    pairs = n * (n - 1) / 2
    return {
        "pairs": pairs, "sample_pairs": len(rows) * len(columns),
        "cpu_seconds_extrapolated": round(pairs * pair_cpu, 1), "seconds_extrapolated": round(pairs * pair_wall, 1),
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    data = PlantedSet(args.n, args.planted, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if args.store is None else args.store
        stored = StoredVectors(folder / f"vectors-{args.n}-{args.planted}-{args.dim}.f32", data)
        hashes = data.hashes() if args.hashes else None
        variants = {
            name: in_child(run_variant, name, stored, data.truth(), args, hashes if name == "compact" else None)
            for name in args.variants
        }
    return {
        "n": args.n, "dim": args.dim, "planted": args.planted, "threshold": args.threshold,
        "variants": variants, "all_pairs": all_pairs(data, args.n, args.sample),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--planted", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--index", default="hnsw-sq8", help="the full variant's index kind (auto's choice at 1M)")
    parser.add_argument("--variants", nargs="+", default=["compact", "full"], choices=["compact", "full"])
    parser.add_argument("--compact-dim", type=int, default=COMPACT_DIM, help="dimensions of the compact index")
    parser.add_argument(
        "--store", type=Path, help="keep the stored vectors' file (4 x n x dim bytes) in this folder and reuse it"
    )
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument(
        "--no-hashes", dest="hashes", action="store_false", help="compact variant without the hash neighbours step"
    )
    parser.add_argument("--sample", type=int, default=2000, help="rows of the all-pairs sample")
    parser.add_argument("--smoke", action="store_true", help="2,000 vectors, 100 planted; writes no results")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.planted, args.sample, args.index = 2_000, 100, 100, "hnsw"
    record = run_record()
    result = run(args)
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
