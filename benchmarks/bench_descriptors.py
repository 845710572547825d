"""Label-free descriptor options, each alone and combined, on three sets, through `lookalike.Collection`.

    .venv/bin/python benchmarks/bench_descriptors.py --work DIR --copy-set SET   # minutes to an hour
    .venv/bin/python benchmarks/bench_descriptors.py --smoke                     # a few photos; writes no results

Options measured (issue 14): GeM pooling (`efficientnet-lite0-gem`), two views pooled together
(`-gem-ms`: centre crop + whole image), and PCA-whitening fit on the collection's own stored
vectors (`Collection.set_whitening`, no labels, applied to the stored raw vectors without
re-embedding), against today's `efficientnet-lite0`; with `--expand N`, each also ranked with query expansion
over every query's top N (alpha-QE, `lookalike evaluate --expand N`, a search-time option: `search --expand N`).

- caltech101-dev: `evaluate_folder` (what `lookalike evaluate` runs), leave-one-out over all 101
  classes, and over each half of the classes (1-50, 51-101 by sorted name) within the same collection.
  The whitening settings (power, output size rule) were chosen on classes 1-50 only; 51-101 is the check.
- catsdogs: a fixed subset (every `--catsdogs-every`-th photo, at most `--catsdogs-per-label` per label).
- copy detection (a set written by benchmarks/copydetect.py): the collection holds originals,
  distractors and copies; each copy searches the originals + distractors (`search_vectors`, the
  collection's index); top-1 = its original ranked first. Per tier (exact, mild, strong).

Cost: embedding images/s as measured when the collection was indexed (`Collection.throughput`,
model time only, under whatever load the machine had then) and bytes per image stored (raw) and
indexed (after whitening). Collections are kept in --work, so a second run only evaluates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import copydetect  # noqa: E402
from benchmarks.common import finish_record, link_file, median_seconds, run_record  # noqa: E402
from lookalike import Collection  # noqa: E402
from lookalike.evaluation.runner import evaluate_folder  # noqa: E402
from lookalike.images import iter_image_files  # noqa: E402
from lookalike.index.whitening import WhiteningSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
EMBEDDERS = ["efficientnet-lite0", "efficientnet-lite0-gem", "efficientnet-lite0-gem-ms"]
WHITENINGS = {"raw": None, "pca": WhiteningSettings()}  # the defaults: chosen on caltech classes 1-50


def linked_subset(out: Path, files: list[tuple[Path, Path]]) -> Path:
    """A folder of hard links (relative path -> source file), so a subset is a folder like any other."""
    for relative, source in files:
        link = out / relative
        if not link.exists():
            link_file(source, link)
    return out


def catsdogs_subset(root: Path, out: Path, every: int, per_label: int) -> Path:
    files = []
    for label in sorted(p.name for p in root.iterdir() if p.is_dir()):
        chosen = sorted((root / label).iterdir())[::every][:per_label]
        files += [(Path(label) / f.name, f) for f in chosen]
    return linked_subset(out, files)


def copy_subset(root: Path, out: Path, queries_of: int, distractors: int) -> Path:
    """All originals, the first `distractors` distractors and the copies of the first `queries_of` originals."""
    manifest = json.loads((root / "manifest.json").read_text())
    names = list(manifest["originals"]) + [d["file"] for d in manifest["distractors"][:distractors]]
    for original in list(manifest["originals"])[:queries_of]:
        names += [c["file"] for c in manifest["originals"][original]["copies"]]
    linked_subset(out, [(Path(n), root / n) for n in names])
    (out / "manifest.json").write_text(json.dumps(manifest))  # read by copy_detection (not an image)
    return out


def cost(collection: Collection, name: str) -> dict[str, object]:
    throughput = collection.throughput(name)
    fit = collection.whitening(name)
    raw_dim = collection.vectors_of(sorted(collection.vector_ids(name))[:1], name).shape[1]
    return {
        "images_per_second": round(throughput[0] / throughput[1], 2) if throughput else None,
        "bytes_stored": int(raw_dim * 4),
        "bytes_indexed": int((fit.dim if fit else raw_dim) * 4),
        "whitening_dim": fit.dim if fit else None,
    }


def model_cpu_ms(name: str, folder: Path, images: int = 32) -> float:
    """CPU milliseconds (all threads) per image of the embedder's network on a batch of `images` photos,
    median of 3: unlike wall time, hardly moved by other jobs on a loaded machine."""
    from lookalike import embedders
    from lookalike.images import open_image

    embedder = embedders.create(name)
    every = list(iter_image_files(folder))
    files = every[:: max(1, len(every) // images)][:images]
    batch = np.stack([embedder.preprocess(open_image(f, draft_size=embedder.preprocessing.draft_size)) for f in files])
    embedder.embed_arrays(batch[:2])  # session warm
    _, cpu = median_seconds(lambda: embedder.embed_arrays(batch), 3)
    return round(1000 * cpu / len(batch), 1)


def labelled_set(collection: Collection, folder: Path, name: str, halves: bool, expand: int = 0) -> dict[str, dict]:
    """Leave-one-out figures of one embedder (with the collection's current whitening; query expansion over
    each query's top `expand` when > 0, as `lookalike evaluate --expand`)."""
    keep = ("precision@1", "precision@5", "MAP@R", "R-precision")
    out = {}
    evaluation = evaluate_folder(folder, collection, [name], expand=expand)
    out["all"] = {k: round(float(evaluation.results[0].figures[k]), 4) for k in keep}
    if halves:
        records = collection.records(under=folder)
        classes = sorted({r.label for r in records if r.label})
        first = set(classes[: len(classes) // 2])  # 1-50 of caltech101-dev's 101
        for half, wanted in (("classes 1-50", True), ("classes 51-101", False)):
            paths = {r.path for r in records if (r.label in first) == wanted}
            evaluation = evaluate_folder(folder, collection, [name], only_paths=paths, expand=expand)
            out[half] = {k: round(float(evaluation.results[0].figures[k]), 4) for k in keep}
    return out


def copy_detection(collection: Collection, folder: Path, name: str, expand: int = 0) -> dict[str, dict]:
    """Each copy searches originals + distractors; share whose original comes first, per tier and overall."""
    manifest = json.loads((folder / "manifest.json").read_text())
    id_of = {r.path: r.id for r in collection.records(under=folder)}
    ids = {relative: id_of.get(str(folder / relative)) for relative in _relative_files(folder)}
    gallery = np.asarray(
        sorted(i for rel, i in ids.items() if i is not None and not rel.startswith("copies/")), dtype=np.int64
    )
    queries, targets, tiers = [], [], []
    for original, info in manifest["originals"].items():
        for copy in info["copies"]:
            if ids.get(copy["file"]) is not None:
                queries.append(ids[copy["file"]])
                targets.append(ids[original])
                tiers.append(copy["tier"])
    vectors = collection.vectors_of(queries, name)
    found = collection.search_vectors(vectors, 10, embedder=name, within=gallery, expand=expand)
    targets_arr, tiers_arr = np.asarray(targets), np.asarray(tiers)
    top1 = found.ids[:, 0] == targets_arr
    top10 = (found.ids == targets_arr[:, None]).any(axis=1)
    out = {}
    for tier in ["all", *sorted(set(tiers))]:
        mask = np.ones(len(tiers_arr), bool) if tier == "all" else tiers_arr == tier
        out[tier] = {"queries": int(mask.sum()), "top1": round(float(top1[mask].mean()), 4)}
        out[tier]["top10"] = round(float(top10[mask].mean()), 4)
    return out


def _relative_files(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in iter_image_files(folder)]


def run(
    sets: dict[str, tuple[str, Path]],
    work: Path,
    embedders: list[str],
    whitenings: dict[str, WhiteningSettings | None],
    log=print,
    expands: tuple[int, ...] = (0,),
) -> dict:
    results: dict[str, dict] = {}
    for set_name, (kind, folder) in sets.items():
        with Collection.open(work / "collections" / folder.name) as collection:
            for name in embedders:
                collection.sync(folder, embedder=name)  # embeds only what is new
                for (whitening, settings), expand in itertools.product(whitenings.items(), expands):
                    variant = whitening if not expand else f"{whitening}+qe{expand}"
                    collection.set_whitening(settings)
                    started = time.perf_counter()
                    if kind == "copies":
                        figures = copy_detection(collection, folder, name, expand)
                    else:
                        figures = labelled_set(collection, folder, name, halves=kind == "caltech", expand=expand)
                    row = {"figures": figures, **cost(collection, name)}
                    row["eval_seconds"] = round(time.perf_counter() - started, 1)
                    results.setdefault(set_name, {})[f"{name}|{variant}"] = row
                    log(f"{set_name} {name} {variant}: {json.dumps(row)}")
            collection.set_whitening(None)
    return results


def markdown(results: dict) -> str:
    lines = [
        "| descriptor | whitening | caltech P@5 | caltech MAP@R | classes 1-50 MAP@R | classes 51-101 MAP@R "
        "| catsdogs P@5 | catsdogs MAP@R | copies top-1 (strong) | images/s | bytes stored / indexed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = next(iter(results.values())).keys()
    for key in keys:
        name, variant = key.split("|")
        cells = []
        cal, cd, cp = (results.get(s, {}).get(key) for s in ("caltech101-dev", "catsdogs", "copydetect"))
        if cal:
            f = cal["figures"]
            cells += [f"{f['all']['precision@5']:.4f}", f"{f['all']['MAP@R']:.4f}"]
            cells += [f"{f['classes 1-50']['MAP@R']:.4f}", f"{f['classes 51-101']['MAP@R']:.4f}"]
        else:
            cells += ["-"] * 4
        cells += (
            [f"{cd['figures']['all']['precision@5']:.4f}", f"{cd['figures']['all']['MAP@R']:.4f}"] if cd else ["-"] * 2
        )
        if cp:
            strong = cp["figures"].get("strong", {}).get("top1")
            cells.append(f"{cp['figures']['all']['top1']:.4f} ({strong if strong is not None else '-'})")
        else:
            cells.append("-")
        any_row = cal or cd or cp
        speed = any_row["images_per_second"] if any_row else None
        sizes = f"{any_row['bytes_stored']} / {any_row['bytes_indexed']}" if any_row else "-"
        lines.append(f"| {name} | {variant} | " + " | ".join(cells) + f" | {speed or 'n/a'} | {sizes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few photos of each set, one embedder; no results")
    parser.add_argument("--work", type=Path, help="where collections and subsets live (kept; default: a temp dir)")
    parser.add_argument("--caltech", type=Path, default=DATA / "caltech101-dev")
    parser.add_argument("--catsdogs", type=Path, default=DATA / "catsdogs")
    parser.add_argument("--catsdogs-every", type=int, default=20)
    parser.add_argument("--catsdogs-per-label", type=int, default=200)
    parser.add_argument("--copy-set", type=Path, help="a set written by benchmarks/copydetect.py")
    parser.add_argument("--copy-queries-of", type=int, default=30, help="originals whose copies are queries")
    parser.add_argument("--copy-distractors", type=int, default=300)
    parser.add_argument("--embedders", nargs="+", default=EMBEDDERS)
    parser.add_argument("--sets", nargs="+", default=["caltech101-dev", "catsdogs", "copydetect"])
    parser.add_argument("--out", type=Path, default=RESULTS / "descriptors.json")
    parser.add_argument("--merge", action="store_true", help="add these sets' results to those already in --out")
    parser.add_argument(
        "--expand", type=int, nargs="+", default=[0], metavar="N",
        help="query expansion depths to rank with (0: off), each a variant of every row",
    )  # fmt: skip
    args = parser.parse_args(argv)
    record = run_record()
    with tempfile.TemporaryDirectory(prefix="bench-descriptors-") as tmp:
        work = args.work or Path(tmp)
        if args.smoke:
            caltech = linked_subset(
                work / "data" / "caltech-smoke",
                [
                    (Path(c.name) / f.name, f)
                    for c in sorted(args.caltech.iterdir())[:4]
                    for f in sorted(c.iterdir())[:4]
                ],
            )
            catsdogs = catsdogs_subset(args.catsdogs, work / "data" / "catsdogs-smoke", 1, 6)
            copies = work / "data" / "copies-smoke"
            copydetect.generate(copies, [args.caltech], originals=3, distractors=4, seed=0)
            sets = {"caltech101-dev": ("caltech", caltech), "catsdogs": ("labelled", catsdogs)}
            sets["copydetect"] = ("copies", copies)
            whitenings = {"raw": None, "pca": WhiteningSettings(min_vectors=8)}
            embedders, args.expand = ["efficientnet-lite0"], [0, 2]
        else:
            if args.copy_set is None:
                parser.error("give --copy-set DIR (written by benchmarks/copydetect.py) or --smoke")
            catsdogs = catsdogs_subset(
                args.catsdogs, work / "data" / f"catsdogs-{2 * args.catsdogs_per_label}", args.catsdogs_every,
                args.catsdogs_per_label,
            )  # fmt: skip
            copies = copy_subset(
                args.copy_set, work / "data" / f"copydetect-{args.copy_queries_of}", args.copy_queries_of,
                args.copy_distractors,
            )  # fmt: skip
            sets = {"caltech101-dev": ("caltech", args.caltech), "catsdogs": ("labelled", catsdogs)}
            sets["copydetect"] = ("copies", copies)
            embedders, whitenings = args.embedders, WHITENINGS
            sets = {name: sets[name] for name in args.sets}
        results = run(sets, work, embedders, whitenings, expands=tuple(args.expand))
        cpu = {name: model_cpu_ms(name, args.caltech) for name in embedders}
    report = {
        **finish_record(record),
        "note": "images/s measured when each collection was indexed, on a shared 2-core machine under load",
        "sets": {
            "caltech101-dev": str(args.caltech),
            "catsdogs": f"every {args.catsdogs_every}th photo, {args.catsdogs_per_label} per label",
            "copydetect": f"{args.copy_set}: all originals, {args.copy_distractors} distractors, "
            f"copies of {args.copy_queries_of} originals",
        },
        "whitening": {k: (v.to_dict() if v else None) for k, v in whitenings.items()},
        "expand": args.expand,
        "model_cpu_ms_per_image": cpu,
        "results": results,
    }
    print(markdown(results))
    print("model CPU ms per image (all threads, median of 3 batches of 32):", cpu)
    if args.smoke:
        print("smoke run: no results written")
        return
    if args.merge and args.out.is_file():
        # one file, several runs: each run's record (when, how loaded) under "runs", rows merged set by set
        earlier = json.loads(args.out.read_text())
        run_keys = ("started", "finished", "load_average_start", "load_average_end", "idle")
        this_run = {"sets": list(results), **{k: report[k] for k in run_keys if k in report}}
        this_run.update(model_cpu_ms_per_image=cpu, expand=args.expand)
        merged = {s: {**earlier["results"].get(s, {}), **rows} for s, rows in results.items()}
        report = {
            **{k: v for k, v in report.items() if k not in (*run_keys, "model_cpu_ms_per_image", "expand")},
            "runs": [*earlier.get("runs", []), this_run],
            "results": {**earlier["results"], **merged},
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
