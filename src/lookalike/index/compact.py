"""A compact index for finding candidate pairs: vectors projected by PCA to a few dimensions, in a small ANN index.

Finding duplicates searches every stored vector for its nearest neighbours once. Through the collection's
own index (full 1280-d vectors, an HNSW graph) that costs ~2 CPU-ms per image and the graph's build,
over 15 minutes at 1,000,000 images on two cores. Near-duplicates are very near each other, so a much
smaller space finds them as well: the vectors centred and projected on their main axes (PCA, no
whitening, fit on a sample of the stored vectors), L2-normalised, in an IVF index with 8-bit codes
(`COMPACT_DIM` bytes a vector). Its scores only rank candidates: every candidate pair is scored again with
the exact cosine of the stored full vectors (duplicates.py), so thresholds keep their meaning and only
which pairs are found can change. See benchmarks/bench_duplicates_scale.py.

The projection is fit again, and the index rebuilt from the stored vectors, when the number of vectors has
moved by `REFIT_GROWTH` of the number it was fit on; otherwise vectors are added and removed in place.
Persisted as NAME.faiss (the index, index/faiss_index.py's format), NAME.npz (the projection, index/whitening.py's
format) and NAME.json (the key of the projection the index was built with, written last: files left by an
interrupted save do not pass for a pair).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..storage import write_json
from .faiss_index import FaissIndex
from .whitening import Whitening, WhiteningSettings

#: dimensions kept by the projection (fewer when there are fewer vectors)
COMPACT_DIM = 128
#: the index kind holding the projected vectors (index/specs.py): exact below 1,000 vectors
COMPACT_KIND = "ivf-sq8"
#: IVF lists probed per search (the kind's default is 16; 8 finds the same pairs on the copy-detection set)
COMPACT_NPROBE = 8
#: vectors the projection is fit on (a fixed random sample of the stored ones)
FIT_SAMPLE = 20_000
#: fit again when the number of vectors has grown or shrunk by this fraction of the number fit on
REFIT_GROWTH = 1.0


def fit_projection(sample: np.ndarray, fitted_on: int, dim: int = COMPACT_DIM) -> Whitening:
    """PCA of `sample` (n, d), n >= 2: centring and projection on the `dim` main axes, as a `Whitening`
    with power 0 (no whitening). The covariance's main eigenvectors, not an SVD of the sample (whitening.py's
    fit): seconds, not a minute, for 20,000 x 1280. `fitted_on`: the number of vectors the sample stands for."""
    x = np.asarray(sample, dtype=np.float32)
    n, d = x.shape
    if n < 2:
        raise ValueError("fitting a projection needs at least 2 vectors")
    from scipy.linalg import eigh  # imported here: `import lookalike` stays light

    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = x - mean
    settings = WhiteningSettings(dim=dim, power=0.0, shrinkage=0.0, refit_growth=REFIT_GROWTH)
    k = settings.output_dim(n, d)
    # only the k largest eigenpairs, in single precision: ~2 CPU-s for 1280 x 1280 instead of ~9 for all in double
    eigenvalues, axes = eigh((centred.T @ centred) / (n - 1), subset_by_index=[d - k, d - 1], driver="evr")
    projection = axes[:, ::-1]  # largest first
    return Whitening(mean, np.ascontiguousarray(projection, dtype=np.float32), int(fitted_on), settings)


class CompactIndex:
    """Stored vectors projected by `projection`, in a `FaissIndex` keyed by catalog ids."""

    def __init__(self, projection: Whitening, index: FaissIndex):
        self.projection = projection
        self.index = index

    @classmethod
    def create(cls, projection: Whitening, kind: str = COMPACT_KIND) -> CompactIndex:
        index = FaissIndex(projection.dim, kind)
        index.nprobe = COMPACT_NPROBE
        return cls(projection, index)

    @classmethod
    def build(cls, projection: Whitening, ids: np.ndarray, chunks: Iterable[np.ndarray]) -> CompactIndex:
        """A new index of `ids`, whose full vectors `chunks` yields in order: projected chunk by chunk (4 x dim
        bytes a vector held at once) and added in one step, so the IVF lists are trained for the whole set."""
        self = cls.create(projection)
        projected = np.empty((len(ids), projection.dim), dtype=np.float32)
        start = 0
        for chunk in chunks:
            projected[start : start + len(chunk)] = projection.apply(chunk)
            start += len(chunk)
        if start != len(ids):
            raise ValueError(f"{len(ids)} ids but {start} vectors")
        self.index.add(np.asarray(ids, dtype=np.int64), projected)
        return self

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return self.projection.dim

    def ids(self) -> np.ndarray:
        return self.index.ids()

    def stale(self, count: int) -> bool:
        """Whether an index of `count` vectors should have its projection fit again."""
        return self.projection.stale(count)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) the full vectors of `ids`."""
        if len(ids):
            self.index.add(np.asarray(ids, dtype=np.int64), self.projection.apply(vectors))

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove(np.asarray(ids, dtype=np.int64))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores in the projected space, ids) of the k nearest of each full vector, best first (-1: none)."""
        return self.index.search(self.projection.apply(vectors), k)

    def nbytes(self) -> int:
        """Bytes a vector takes in the index's codes (8-bit: one per dimension)."""
        return self.dim if "SQ8" in self.index.kind else 4 * self.dim

    @staticmethod
    def paths(folder: Path, name: str) -> tuple[Path, Path, Path]:
        return folder / f"{name}.faiss", folder / f"{name}.npz", folder / f"{name}.json"

    def save(self, folder: Path, name: str) -> None:
        """Write the three files, each atomically, the one tying them together last."""
        index_path, projection_path, meta_path = self.paths(folder, name)
        folder.mkdir(parents=True, exist_ok=True)
        if _saved_key(meta_path) != self.projection.key or not projection_path.exists():
            self.projection.save(projection_path)  # an update in place keeps its projection: not written again
        self.index.save(index_path)
        write_json(meta_path, {"projection": self.projection.key, "count": len(self), "kind": self.index.kind})

    @classmethod
    def load(cls, folder: Path, name: str) -> CompactIndex | None:
        """The saved index, or None when there is none or its files do not belong together."""
        index_path, projection_path, meta_path = cls.paths(folder, name)
        if not index_path.exists() or not projection_path.exists():
            return None
        projection = Whitening.load(projection_path)
        if _saved_key(meta_path) != projection.key:
            return None
        index = FaissIndex.load(index_path)
        if index.dim != projection.dim:
            return None
        return cls(projection, index)


def _saved_key(meta_path: Path) -> str | None:
    """The projection key a saved index records (None: no readable record)."""
    try:
        return json.loads(meta_path.read_text()).get("projection")
    except (OSError, ValueError, AttributeError):
        return None
