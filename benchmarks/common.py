"""Shared benchmark helpers: synthetic embedding-like vectors, timing, memory bandwidth."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


class ClusteredVectors:
    """A Gaussian mixture shaped like image embeddings, L2-normalised, generated chunk by chunk.

    x = normalise(mean * g + centre_c + W_c z + noise * e): a shared mean direction g (embeddings of
    one model are not centred: random pairs have cosine ~0.3), `clusters` centres, inside each cluster a
    `rank`-dimensional Gaussian (W_c random, z ~ N(0, I)) plus small isotropic noise. Isotropic noise
    alone would make every point of a cluster equally near in 1280 dimensions, so nearest neighbours
    would be meaningless; the low-rank part gives the local structure real embeddings have. The
    defaults roughly match EfficientNet-Lite0 embeddings of the cats-and-dogs photos (nearest
    neighbour cosine ~0.7, 10th ~0.65, random pairs ~0.33 at 8,000 images; these give ~0.77, ~0.67, ~0.33
    at 100 vectors per cluster).
    Rows [start, stop) depend only on (seed, stream, start, stop): `chunks` is reproducible.
    """

    def __init__(
        self,
        dim: int = 1280,
        clusters: int = 1000,
        rank: int = 16,
        mean: float = 0.57,
        spread: float = 0.45,
        within: float = 0.65,
        noise: float = 0.25,
        seed: int = 0,
    ):
        self.dim, self.clusters, self.rank, self.seed = dim, clusters, rank, seed
        self.mean, self.within, self.noise = mean, within, noise
        rng = np.random.default_rng(seed)
        g = rng.standard_normal(dim).astype(np.float32)
        self.g = g / np.linalg.norm(g)
        c = rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centres = spread * c / np.linalg.norm(c, axis=1, keepdims=True)
        b = rng.standard_normal((clusters, rank, dim)).astype(np.float32)
        self.bases = b / np.sqrt(dim)  # each basis row has norm ~1

    def rows(self, start: int, stop: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, start, stop])
        n = stop - start
        label = rng.integers(0, self.clusters, n)
        z = rng.standard_normal((n, self.rank), dtype=np.float32) * (self.within / np.sqrt(self.rank))
        x = self.mean * self.g + self.centres[label]
        order = np.argsort(label, kind="stable")  # grouped by cluster: a basis per row would be n*rank*dim floats
        bounds = np.searchsorted(label[order], np.arange(self.clusters + 1))
        for c in range(self.clusters):
            rows = order[bounds[c] : bounds[c + 1]]
            x[rows] += z[rows] @ self.bases[c]
        x += rng.standard_normal((n, self.dim), dtype=np.float32) * (self.noise / np.sqrt(self.dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self, n: int, chunk: int = 50_000, stream: int = 0) -> Iterator[np.ndarray]:
        for start in range(0, n, chunk):
            yield self.rows(start, min(n, start + chunk), stream)


def median_seconds(fn: Callable[[], object], repeat: int = 3) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `fn` over `repeat` runs.

    CPU time (all threads of this process) is what to read on a shared, overloaded machine: wall time
    then also counts the time spent waiting for a core, which has nothing to do with the index.
    """
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu))


def memory_bandwidth(gib: float = 1.0) -> dict[str, float]:
    """Bytes per CPU-second of a single-threaded numpy read (sum) and copy over `gib` GiB, median of 5."""
    a = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    b = np.empty_like(a)
    read = a.nbytes / median_seconds(lambda: a.sum(), 5)[1]
    copy = 2 * a.nbytes / median_seconds(lambda: np.copyto(b, a), 5)[1]  # a copy reads and writes
    return {"read_bytes_per_s": read, "copy_bytes_per_s": copy}


def run_record() -> dict[str, object]:
    """When a benchmark ran and how loaded the machine was when it started (call `finish_record` at the end).

    "idle" is claimed only when the 1-minute load average at the start was below 0.5.
    """
    from lookalike.evaluation.runner import machine_info

    load = os.getloadavg()
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_start": [round(x, 2) for x in load],
        "idle": load[0] < 0.5,
        "machine": machine_info(),
    }


def finish_record(record: dict[str, object]) -> dict[str, object]:
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    record["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return record


def link_file(source: Path, target: Path) -> None:
    """`target` as another name of the photo `source` (a hard link, or a copy across file systems).

    Not a symbolic link: lookalike reads only regular files and skips file links unless told to
    follow them (an indexed folder is untrusted), so a subset made of links would index nothing.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
