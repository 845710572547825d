"""Leave-one-out evaluation of one or more embedders on a labelled folder (sub-folder = label)."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..catalog import ImageRecord
from ..collection import Collection, Progress
from .metrics import evaluate_rankings, precision_curve


@dataclass
class EmbedderEvaluation:
    embedder: str
    dim: int
    bytes_per_image: int
    figures: dict[str, float | int]
    precision_curve: list[float]
    images_per_second: float | None
    throughput_note: str
    eval_seconds: float
    #: for embedders trained on the collection: training method and wall time (feature caching included)
    method: str | None = None
    training_seconds: float | None = None


@dataclass
class RetrievalSample:
    """What the report's 2-D map and example grid need (kept out of results.json)."""

    vectors: np.ndarray
    labels: list[str]
    paths: list[str]
    ranking: np.ndarray  # (n, depth) indices into paths, best first


@dataclass
class Evaluation:
    folder: str
    images: int
    labels: dict[str, int]
    duplicate_groups: list[list[str]]
    skipped: list[tuple[str, str]]
    ks: list[int]
    machine: dict[str, str]
    results: list[EmbedderEvaluation] = field(default_factory=list)
    started: str = ""
    wall_seconds: float = 0.0
    #: set when the evaluation is restricted to images no evaluated model was trained or validated on
    held_out: dict[str, object] | None = None
    #: > 0: every query re-ranked by alpha query expansion over its top `expand` neighbours (index/rerank.py)
    expand: int = 0
    samples: dict[str, RetrievalSample] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("samples")
        return data


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": installed("torch"),
        "onnxruntime": installed("onnxruntime"),
        "platform": platform.platform(),
    }


def _throughput(collection: Collection, name: str, embedded: int, seconds: float) -> tuple[float | None, str]:
    if embedded >= 64 and seconds > 0:
        return embedded / seconds, f"measured in this run ({embedded} images)"
    stored = collection.throughput(name)
    if stored:
        images, seconds = stored
        return images / seconds, f"measured when indexed ({images} images)"
    return None, "not measured (vectors were already cached)"


def trained_models(collection: Collection, names: list[str]) -> dict[str, dict]:
    """model.json of each embedder in `names` that was trained into this collection."""
    found = {}
    for name in names:
        path = collection.models_dir / name / "model.json"
        if path.is_file():
            found[name] = {**json.loads(path.read_text()), "model_dir": str(path.parent)}
    return found


def held_out_split(records: list[ImageRecord], trained: dict[str, dict]) -> tuple[set[str], dict[str, object]]:
    """Paths of the test images shared by every trained model, and a description for the report."""
    from ..training.saved import read_split
    from ..training.split import held_out_paths

    rules = {name: read_split(Path(info["model_dir"])).rule for name, info in trained.items()}
    first = next(iter(rules.values()))
    if any(rule != first for rule in rules.values()):
        raise ValueError("the trained embedders were split with different rules; retrain them with the same fractions")
    seen: set[str] = set()
    for info in trained.values():
        split = read_split(Path(info["model_dir"]))
        seen.update(split.train)
        seen.update(split.val)
    paths = held_out_paths(records, seen, first)
    description = {
        "rule": {"test_fraction": first.test_fraction, "val_fraction": first.val_fraction, "salt": first.salt},
        "images": len(paths),
        "models": sorted(trained),
    }
    return paths, description


def evaluate_folder(
    folder: str | os.PathLike[str],
    collection: Collection,
    embedders: list[str],
    ks: tuple[int, ...] = (1, 5, 10),
    curve_k: int = 50,
    progress: Progress | None = None,
    only_paths: set[str] | None = None,
    held_out: bool | None = None,
    expand: int | None = None,
) -> Evaluation:
    """Index `folder` with each embedder (incrementally) and score leave-one-out retrieval.

    Every image queries all the others of the folder (or of `only_paths`, e.g. a held-out split).
    `held_out` (default: whenever a trained embedder is among `embedders`) restricts every
    embedder, pretrained ones included, to the test split of the trained models, minus any
    image one of them was trained or validated on. `expand` > 0 ranks as `search --expand` does: each query
    re-ranked by alpha query expansion over its top `expand` neighbours (no labels used); None (the default)
    as the collection's searches do (`Collection.default_expand`).
    """
    started = time.perf_counter()
    expand = collection.default_expand if expand is None else expand
    root = Path(folder).expanduser().resolve()
    evaluation: Evaluation | None = None
    trained = trained_models(collection, embedders)
    held_out_info: dict[str, object] | None = None
    if held_out is None:
        held_out = bool(trained)
    if held_out and not trained:
        raise ValueError("--held-out needs at least one trained embedder (its split defines the test images)")
    if held_out:
        # Only the held-out images are scored, so only they need vectors: embed those (5x less work
        # on an 80/20 split); `lookalike index --embedder NAME` embeds the whole folder for search.
        collection.sync(root, progress=progress)  # the catalog up to date (cheap when nothing changed)
        only_paths, held_out_info = held_out_split(collection.records(under=root), trained)
    for name in embedders:
        if held_out:
            records = [r for r in collection.records(under=root) if r.path in only_paths]
            sync = collection.embed_missing(records, embedder=name, progress=progress)
            records = [r for r in collection.records(under=root) if r.path in only_paths]
        else:
            sync = collection.sync(root, embedder=name, progress=progress)
            records = collection.records(under=root)
        if only_paths is not None:
            records = [r for r in records if r.path in only_paths]
        have = collection.vector_ids(name)
        ids = np.asarray([r.id for r in records if r.id in have], dtype=np.int64)
        by_id = {r.id: r for r in records}
        labels = [by_id[int(i)].label or "" for i in ids]
        if evaluation is None:
            unique, counts = np.unique(np.asarray(labels), return_counts=True)
            groups = collection.identical_files(ids.tolist())
            evaluation = Evaluation(
                folder=str(root),
                images=len(ids),
                labels={str(u): int(c) for u, c in zip(unique, counts, strict=True)},
                duplicate_groups=[[by_id[i].path for i in g] for g in groups],
                skipped=sorted(set(sync.skipped)),
                ks=list(ks),
                machine=machine_info(),
                started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                held_out=held_out_info,
                expand=expand,
            )
        if len(ids) < 2:
            raise ValueError(f"need at least two readable images to evaluate, found {len(ids)} in {root}")
        t0 = time.perf_counter()
        depth = min(max(max(ks), curve_k, max(evaluation.labels.values()) - 1), len(ids) - 1)
        # Every image queries the others, ranked exactly (whatever index the collection searches with).
        vectors = collection.vectors_of(ids, name)
        found = collection.search_vectors(
            vectors, depth, embedder=name, within=ids, exclude=ids, exact=True, expand=expand
        )
        ranking = np.searchsorted(ids, found.ids)  # ids are sorted: result ids -> positions in this gallery
        figures = evaluate_rankings(ranking, labels, ks)
        curve = precision_curve(ranking, labels, curve_k)
        speed, note = _throughput(collection, name, sync.embedded, sync.embed_seconds)
        info = trained.get(name, {})
        evaluation.samples[name] = RetrievalSample(vectors, labels, [by_id[int(i)].path for i in ids], ranking)
        evaluation.results.append(
            EmbedderEvaluation(
                embedder=name,
                dim=int(vectors.shape[1]),
                bytes_per_image=int(vectors.shape[1] * vectors.dtype.itemsize),
                figures=figures,
                precision_curve=curve,
                images_per_second=speed,
                throughput_note=note,
                eval_seconds=time.perf_counter() - t0,
                method=info.get("method"),
                training_seconds=info.get("training_seconds"),
            )
        )
    assert evaluation is not None, "no embedder given"
    evaluation.wall_seconds = time.perf_counter() - started
    return evaluation
