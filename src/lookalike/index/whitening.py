"""PCA-whitening of a collection's vectors, fit on the collection's own stored vectors (no labels).

The pretrained embedders' vectors are not centred and a few directions (what every photo shares:
lighting, "a photo") carry much of their variance. Centring, projecting on the main axes of *this*
collection and flattening their variances makes the cosine measure what tells this collection's
images apart (Jégou & Chum, 2012; Radenović et al., 2018). Nothing here needs labels.

- Shrinkage: the eigenvalues are pulled towards their mean before whitening,
  lambda' = (1 - shrinkage) * lambda + shrinkage * mean(lambda), and raised to `power` / 2 only
  (power 1 = full whitening, 0 = plain PCA projection), so a small collection's noise axes are not
  blown up.
- The collection keeps the raw vectors; only its index holds transformed ones. A fit records how
  many vectors it saw; when the collection has grown (or shrunk) by `refit_growth` of that, the
  transform is fit again and the index rebuilt from the stored raw vectors (no re-embedding).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..storage import atomic_path

#: a collection larger than this is fit on a (fixed) random sample of this many vectors
MAX_FIT_VECTORS = 50_000


@dataclass(frozen=True)
class WhiteningSettings:
    """How a collection whitens its vectors (stored in its config.json).

    `dim` = None chooses the output size from the collection: n / `vectors_per_dim`, within
    [`min_dim`, `max_dim`] (more images support more axes; a fixed 128 over-fits 1,000 images and
    under-fits 8,000). Below `min_vectors` stored vectors nothing is fit and vectors are searched raw.
    """

    dim: int | None = None
    power: float = 0.0
    shrinkage: float = 0.1
    refit_growth: float = 0.25
    min_vectors: int = 200
    vectors_per_dim: int = 16
    min_dim: int = 32
    max_dim: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        if not 0.0 <= self.power <= 1.0:
            raise ValueError(f"power must be in [0, 1], got {self.power}")
        if self.refit_growth <= 0:
            raise ValueError(f"refit_growth must be > 0, got {self.refit_growth}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.min_vectors < 2:
            raise ValueError("min_vectors must be >= 2")

    def output_dim(self, n: int, d: int) -> int:
        """Components kept for `n` vectors of `d` dimensions (never more than n - 1 or d)."""
        wanted = (
            self.dim if self.dim is not None else int(np.clip(n // self.vectors_per_dim, self.min_dim, self.max_dim))
        )
        return max(1, min(wanted, n - 1, d))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> WhiteningSettings:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown whitening settings: {', '.join(sorted(unknown))}")
        return cls(**data)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class Whitening:
    """A fitted transform: x -> normalise((x - mean) @ projection)."""

    mean: np.ndarray  # (d,) float32
    projection: np.ndarray  # (d, k) float32
    fitted_on: int
    settings: WhiteningSettings

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def key(self) -> str:
        """Identifies this fit (an index built with it records the key)."""
        digest = hashlib.sha256(self.mean.tobytes())
        digest.update(self.projection.tobytes())
        digest.update(json.dumps(self.settings.to_dict(), sort_keys=True).encode())
        return f"{self.fitted_on}-{digest.hexdigest()[:16]}"

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) raw vectors -> (n, k) unit vectors, float32."""
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        y = (x - self.mean) @ self.projection
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def stale(self, count: int) -> bool:
        """Whether a collection now holding `count` vectors should be fit again."""
        return abs(count - self.fitted_on) >= self.settings.refit_growth * self.fitted_on

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer, mean=self.mean, projection=self.projection, fitted_on=np.int64(self.fitted_on),
            settings=np.frombuffer(json.dumps(self.settings.to_dict()).encode(), dtype=np.uint8),
        )  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Whitening:
        with np.load(path, allow_pickle=False) as data:
            settings = WhiteningSettings.from_dict(json.loads(data["settings"].tobytes().decode()))
            return cls(data["mean"], data["projection"], int(data["fitted_on"]), settings)


def fit_whitening(vectors: np.ndarray, settings: WhiteningSettings) -> Whitening:
    """Fit centring + PCA projection + shrunk partial whitening on `vectors` (n, d), n >= 2."""
    x = np.asarray(vectors, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError("fitting a whitening needs at least 2 vectors")
    if n > MAX_FIT_VECTORS:  # the main axes of a large collection are found as well on a sample
        x = x[np.sort(np.random.default_rng(0).choice(n, MAX_FIT_VECTORS, replace=False))]
    mean = x.mean(axis=0)
    # Singular values of the centred data give the covariance's eigenvalues s^2 / (n - 1) and its axes.
    _, singular, axes = np.linalg.svd(x - mean, full_matrices=False)
    eigenvalues = singular**2 / (len(x) - 1)
    average = eigenvalues.sum() / d  # mean over all d eigenvalues (those beyond rank n - 1 are 0)
    k = settings.output_dim(n, d)
    eigenvalues = np.pad(eigenvalues, (0, max(0, k - len(eigenvalues))))
    shrunk = (1.0 - settings.shrinkage) * eigenvalues[:k] + settings.shrinkage * average
    projection = axes[:k].T / np.maximum(shrunk, 1e-12) ** (settings.power / 2.0)
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), n, settings)
