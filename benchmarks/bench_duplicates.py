"""Near-duplicate grouping on a copy-detection set: which methods put each copy with its original?

    .venv/bin/python benchmarks/copydetect.py --out /tmp/copydetect/set-seed0          # build the set first
    .venv/bin/python benchmarks/bench_duplicates.py --set /tmp/copydetect/set-seed0
    .venv/bin/python benchmarks/bench_duplicates.py --smoke        # a tiny generated set, seconds; writes no results
    .venv/bin/python benchmarks/bench_duplicates.py --table benchmarks/results/duplicates_150o_1000d_seed0.json

Every method gets the whole set (originals, copies, distractors as one folder of files) and returns
groups of files. Scores, from the set's manifest.json:
- recall of a transform: the share of its copies that end in the same group as their original;
- pair precision: of all pairs of files that share a group, the share that are copies of one original
  (an original and its copy, or two copies of one original); distractors belong to no original;
- per tier (exact, mild, strong) the mean recall over its transforms.

Methods (`METHODS`, registered with `@method`):
- `phash`, `dhash`, `whash`: imagededup's hashes (its own `encode_image`) at imagededup's default
  threshold, Hamming distance <= 10 (`find_duplicates(max_distance_threshold=10)`), compared over
  all pairs as imagededup does; groups = connected components of the pairs.
- `lookalike-0.90`, `lookalike-0.80`: the set synced into a temporary `lookalike.Collection` with
  efficientnet-lite0; the vectors read back through the collection; pairs at cosine >= 0.90 / 0.80;
  groups = connected components.
- `lookalike-near`: lookalike's own duplicate finder, `Collection.duplicates()` (the near tier: the copy-lite0
  descriptor, nearest neighbours through the compact index, its calibrated threshold, the geometric check of
  the pairs a little below it, star clustering); `lookalike-near-noverify`: the same with `verify=False`.
A method is a function `(Context) -> groups` (lists of file indices); a new one, such as the
collection's own duplicate finder, is one more registered function. Timings are wall and CPU seconds
on the shared 2-core machine (see the load averages in the results).
Results: benchmarks/results/duplicates_<originals>o_<distractors>d_seed<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copydetect  # noqa: E402
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EMBEDDER = "efficientnet-lite0"
NEAR_EMBEDDER = "copy-lite0"  # the descriptor of the near tier
HASH_THRESHOLD = 10  # imagededup's default max_distance_threshold for every hash method


# --- the set and its truth ----------------------------------------------------------------------


@dataclass
class CopySet:
    """The files of a generated set (paths relative to `root`) and which original each belongs to."""

    root: Path
    manifest: dict
    files: list[str]
    family: np.ndarray  # per file: the index of its original's family, or -1 for a distractor
    copies: list[tuple[int, int, str, str]]  # (copy file index, original file index, transform, tier)

    @classmethod
    def load(cls, root: Path) -> CopySet:
        manifest = json.loads((root / "manifest.json").read_text())
        files: list[str] = []
        family: list[int] = []
        copies = []
        for n, (original, record) in enumerate(manifest["originals"].items()):
            original_index = len(files)
            files.append(original)
            family.append(n)
            for copy in record["copies"]:
                copies.append((len(files), original_index, copy["transform"], copy["tier"]))
                files.append(copy["file"])
                family.append(n)
        for record in manifest["distractors"]:
            files.append(record["file"])
            family.append(-1)
        return cls(root, manifest, files, np.array(family), copies)

    def transforms(self) -> dict[str, str]:
        """Transform name -> tier, in the manifest's order."""
        return {name: spec["tier"] for name, spec in self.manifest["transforms"].items()}


@dataclass
class Context:
    """What a method may use: the set, a scratch folder, and features shared between methods."""

    copyset: CopySet
    workdir: Path
    features: dict[str, Any] = field(default_factory=dict)
    feature_seconds: dict[str, float] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [self.copyset.root / f for f in self.copyset.files]

    def feature(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per run, timed; later calls return the stored value."""
        if name not in self.features:
            started = time.perf_counter()
            self.features[name] = compute()
            self.feature_seconds[name] = round(time.perf_counter() - started, 2)
        return self.features[name]


# --- methods ------------------------------------------------------------------------------------

Groups = list[list[int]]


@dataclass
class Found:
    """A method's answer: groups of file indices, and the matched pairs they came from if it has them."""

    groups: Groups
    pairs: np.ndarray | None = None  # (m, 2) file indices


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    run: Callable[[Context], Found]


METHODS: dict[str, Method] = {}


def method(name: str, description: str) -> Callable[[Callable[[Context], Found]], Callable[[Context], Found]]:
    """Register `fn(context) -> Found` as method `name`."""

    def register(fn: Callable[[Context], Found]) -> Callable[[Context], Found]:
        METHODS[name] = Method(name, description, fn)
        return fn

    return register


def components(n: int, pairs: np.ndarray) -> Groups:
    """Connected components with more than one member of the graph on n nodes with edges `pairs` (m x 2)."""
    if len(pairs) == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(count + 1))
    return [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b - a > 1]


def pairs_within(scores: Callable[[slice], np.ndarray], n: int, keep: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """All pairs i < j with keep(score(i, j)), scoring blocks of rows against all columns."""
    found = []
    for start in range(0, n, 1024):
        rows = slice(start, min(n, start + 1024))
        i, j = np.nonzero(keep(scores(rows)))
        i += start
        upper = i < j
        found.append(np.stack([i[upper], j[upper]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def hash_groups(context: Context, kind: str) -> Found:
    """imagededup's `kind` hash of every file, pairs at Hamming distance <= HASH_THRESHOLD, components."""

    def encode() -> np.ndarray:
        from imagededup import methods

        hasher = getattr(methods, kind)()
        # imagededup returns 16 hex digits, or None for a file it cannot read (never grouped: all ones
        # would still match other unreadable files, so those get distinct values below)
        codes = [hasher.encode_image(image_file=str(path)) for path in context.paths()]
        values = np.array([int(code, 16) if code else 0 for code in codes], dtype=np.uint64)
        return values, np.array([code is None for code in codes])

    values, failed = context.feature(kind, encode)
    n = len(values)

    def distances(rows: slice) -> np.ndarray:
        return np.bitwise_count(values[rows, None] ^ values[None, :])

    pairs = pairs_within(distances, n, lambda d: d <= HASH_THRESHOLD)
    pairs = pairs[~failed[pairs].any(axis=1)]
    return Found(components(n, pairs), pairs)


for _kind in ("PHash", "DHash", "WHash"):
    method(
        _kind.lower(),
        f"imagededup {_kind}, Hamming distance <= {HASH_THRESHOLD} (its default), all pairs, connected components",
    )(lambda context, kind=_kind: hash_groups(context, kind))


def lookalike_vectors(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """(file indices, L2-normalised vectors) of every file the collection could read."""

    def compute() -> tuple[np.ndarray, np.ndarray]:
        index_of = {path.resolve(): i for i, path in enumerate(context.paths())}
        with Collection.open(context.workdir / "collection", embedder=EMBEDDER) as collection:
            collection.sync(context.copyset.root)
            ids = np.array(sorted(collection.vector_ids(EMBEDDER)), dtype=np.int64)
            vectors = collection.vectors_of(ids, EMBEDDER)
            records = collection.images(ids.tolist())
        rows = np.array([index_of[Path(records[int(i)].path).resolve()] for i in ids])
        return rows, vectors

    return context.feature(f"lookalike {EMBEDDER} vectors (sync)", compute)


def cosine_groups(context: Context, threshold: float) -> Found:
    rows, vectors = lookalike_vectors(context)
    pairs = rows[pairs_within(lambda r: vectors[r] @ vectors.T, len(rows), lambda s: s >= threshold)]
    return Found(components(len(context.copyset.files), pairs), pairs)


for _threshold in (0.90, 0.80):
    method(
        f"lookalike-{_threshold:.2f}",
        f"lookalike {EMBEDDER} vectors through a Collection, cosine >= {_threshold:.2f}, connected components",
    )(lambda context, threshold=_threshold: cosine_groups(context, threshold))


def near_tier(context: Context, threshold: float | None = None, verify: bool = True) -> Found:
    """Collection.duplicates(tier="near") over the set, as a user runs it; groups mapped back to file indices."""
    index_of = {path.resolve(): i for i, path in enumerate(context.paths())}
    # The collection `lookalike_vectors` made, if any (its copy-lite0 vectors are added); otherwise a new one
    # that embeds only the copy descriptor.
    with Collection.open(context.workdir / "collection", embedder=NEAR_EMBEDDER) as collection:
        collection.sync(context.copyset.root, embedder=NEAR_EMBEDDER)
        report = collection.duplicates("near", threshold=threshold, verify=verify)
    groups = [[index_of[Path(m.path).resolve()] for m in g.members] for g in report.groups]
    return Found(groups)


method(
    "lookalike-near",
    "lookalike's near tier: Collection.duplicates() (copy-lite0 descriptor, 10 neighbours through the compact index, "
    "its calibrated threshold, geometric check of the pairs a little below it, star clustering)",
)(near_tier)
method(
    "lookalike-near-noverify", "lookalike's near tier without the geometric check: Collection.duplicates(verify=False)"
)(lambda context: near_tier(context, verify=False))


# --- scoring ------------------------------------------------------------------------------------


def score(copyset: CopySet, groups: Iterable[Iterable[int]]) -> dict:
    n = len(copyset.files)
    label = np.arange(n)  # ungrouped files are alone
    pairs = true_pairs = 0
    largest = 1
    for g, members in enumerate(groups):
        members = np.fromiter(members, dtype=np.int64)
        label[members] = n + g
        pairs += len(members) * (len(members) - 1) // 2
        largest = max(largest, len(members))
        families = copyset.family[members]
        _, counts = np.unique(families[families >= 0], return_counts=True)
        true_pairs += int((counts * (counts - 1) // 2).sum())
    recall: dict[str, list[bool]] = {name: [] for name in copyset.transforms()}
    for copy, original, transform, _tier in copyset.copies:
        recall[transform].append(bool(label[copy] == label[original]))
    per_transform = {name: round(float(np.mean(hits)), 4) for name, hits in recall.items() if hits}
    tiers: dict[str, list[float]] = {}
    for name, tier in copyset.transforms().items():
        if name in per_transform:
            tiers.setdefault(tier, []).append(per_transform[name])
    _, family_sizes = np.unique(copyset.family[copyset.family >= 0], return_counts=True)
    all_true = int((family_sizes * (family_sizes - 1) // 2).sum())
    return {
        "recall": per_transform,
        "tier_recall": {tier: round(float(np.mean(values)), 4) for tier, values in tiers.items()},
        "pair_precision": round(true_pairs / pairs, 4) if pairs else None,
        "pair_recall": round(true_pairs / all_true, 4) if all_true else None,
        "pairs": pairs,
        "true_pairs": true_pairs,
        "groups": len(np.unique(label[label >= n])),
        "largest_group": largest,
    }


def score_pairs(copyset: CopySet, pairs: np.ndarray) -> dict:
    """The matched pairs themselves, before grouping: is each copy matched to its original directly,
    and what share of the matched pairs join two files of one family."""
    matched = {(int(a), int(b)) for a, b in pairs} | {(int(b), int(a)) for a, b in pairs}
    recall: dict[str, list[bool]] = {name: [] for name in copyset.transforms()}
    for copy, original, transform, _tier in copyset.copies:
        recall[transform].append((copy, original) in matched)
    families = copyset.family[pairs] if len(pairs) else np.empty((0, 2), dtype=np.int64)
    true = int(((families[:, 0] == families[:, 1]) & (families[:, 0] >= 0)).sum())
    return {
        "recall": {name: round(float(np.mean(hits)), 4) for name, hits in recall.items() if hits},
        "precision": round(true / len(pairs), 4) if len(pairs) else None,
        "pairs": len(pairs),
    }


# --- running ------------------------------------------------------------------------------------


def machine() -> dict:
    import imagededup
    import onnxruntime
    import PIL

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "imagededup": imagededup.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def run(copyset: CopySet, names: list[str], workdir: Path, log: Callable[[str], None] | None = None) -> dict:
    log = log or (lambda line: print(line, flush=True))
    context = Context(copyset, workdir)
    results = {}
    for name in names:
        spent = sum(context.feature_seconds.values())
        wall, cpu = time.perf_counter(), time.process_time()
        found = METHODS[name].run(context)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results[name] = {
            "description": METHODS[name].description,
            **score(copyset, found.groups),
            "matched_pairs": None if found.pairs is None else score_pairs(copyset, found.pairs),
            "seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "feature_seconds": round(sum(context.feature_seconds.values()) - spent, 2),
        }
        r = results[name]
        log(
            f"{name:16s} precision {r['pair_precision']}  mild {r['tier_recall'].get('mild')}  "
            f"strong {r['tier_recall'].get('strong')}  ({wall:.1f} s)",
        )
    return {"methods": results, "features": context.feature_seconds}


def markdown_table(report: dict) -> str:
    methods = report["methods"]
    names = list(methods)
    transforms = report["set"]["transforms"]
    lines = [
        "| transform | tier | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for transform, tier in transforms.items():
        cells = [f"{methods[m]['recall'].get(transform, float('nan')):.2f}" for m in names]
        lines.append(f"| {transform} | {tier} | " + " | ".join(cells) + " |")
    for tier in dict.fromkeys(transforms.values()):
        cells = [f"**{methods[m]['tier_recall'].get(tier, float('nan')):.2f}**" for m in names]
        lines.append(f"| **mean {tier}** | | " + " | ".join(cells) + " |")
    precision = [f"**{methods[m]['pair_precision']:.3f}**" if methods[m]["pair_precision"] else "-" for m in names]
    lines.append("| **pair precision** | | " + " | ".join(precision) + " |")
    lines.append("| pairs in groups | | " + " | ".join(f"{methods[m]['pairs']:,}" for m in names) + " |")
    lines.append("| largest group | | " + " | ".join(str(methods[m]["largest_group"]) for m in names) + " |")
    direct = {m: methods[m]["matched_pairs"] for m in names}
    if any(direct.values()):
        lines.append("| *matched pairs, before grouping:* | | " + " | ".join("" for _ in names) + " |")
        for tier in dict.fromkeys(t for t in transforms.values() if t != "exact"):
            cells = []
            for m in names:
                recall = direct[m] and [direct[m]["recall"][t] for t, x in transforms.items() if x == tier]
                cells.append(f"{np.mean(recall):.2f}" if recall else "-")
            lines.append(f"| copy matched to its original, mean {tier} | | " + " | ".join(cells) + " |")
        cells = [f"{direct[m]['precision']:.3f}" if direct[m] and direct[m]["precision"] else "-" for m in names]
        lines.append("| precision of matched pairs | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, help="a folder written by benchmarks/copydetect.py")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--collection", type=Path, help="keep the lookalike collection here (default a temp folder)")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/duplicates_<set>.json)")
    parser.add_argument("--smoke", action="store_true", help="a tiny generated set, a few seconds; writes no results")
    parser.add_argument("--sources", type=Path, nargs="+", default=copydetect.DEFAULT_SOURCES, help="for --smoke")
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if not args.smoke and args.set is None:
        parser.error("give --set DIR (a folder written by benchmarks/copydetect.py) or --smoke")

    record = run_record()
    with tempfile.TemporaryDirectory(prefix="bench-duplicates-") as tmp:
        workdir = Path(tmp)
        if args.collection:
            workdir = args.collection
            workdir.mkdir(parents=True, exist_ok=True)
        root = args.set
        if args.smoke:
            root = Path(tmp) / "set"
            copydetect.generate(root, [p.resolve() for p in args.sources], originals=4, distractors=8, seed=0)
        copyset = CopySet.load(root)
        outcome = run(copyset, args.methods, workdir)
    params = copyset.manifest["params"]
    report = {
        **finish_record(record),
        "versions": machine(),
        "set": {
            "path": str(root),
            **params,
            "files": len(copyset.files),
            "copies": len(copyset.copies),
            "transforms": copyset.transforms(),
        },
        "hash_threshold": HASH_THRESHOLD,
        "embedder": EMBEDDER,
        **outcome,
    }
    print(markdown_table(report))
    if args.smoke:
        print("smoke run: no results written")
        return
    out = args.out or RESULTS / f"duplicates_{params['originals']}o_{params['distractors']}d_seed{params['seed']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
