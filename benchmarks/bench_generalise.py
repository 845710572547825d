"""Does training generalise? The metric-learning papers' protocol on caltech101-dev.

    .venv/bin/python benchmarks/bench_generalise.py                 # about 30 min on 2 idle cores
    .venv/bin/python benchmarks/bench_generalise.py --smoke         # 4 classes x 6 photos, 1 epoch; writes nothing
    .venv/bin/python benchmarks/bench_generalise.py --work DIR --reuse   # score again the models trained in DIR

The class folders are sorted by name (Python's `sorted`, so upper case first: Faces, Faces_easy,
Leopards, Motorbikes, accordion, ...); the first 50 are the *seen* classes, the other 51 the *unseen*
ones. Each trained embedder (`CONFIGS`) is trained on the seen photos only (a tenth of them for early
stopping, no test split: the unseen classes are the test), in one `lookalike.Collection`; then every
embedder, the pretrained EfficientNet-Lite0 included, is scored leave-one-out on the unseen photos
(precision@5, MAP@R: docs/metrics.md), ranked by plain cosine and again with the query expansion a new
collection's searches use. For comparison, "seen" is the seen classes' validation photos
(a tenth, used for early stopping, never trained on): the trained embedders' figures there are the ones
training recorded for its best epoch, the pretrained one's are scored on the same photos.

The two class folders are folders of symbolic links to the photos (the collection reads the links).
Results: benchmarks/results/generalise_caltech101-dev.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish_record, link_file, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.evaluation.runner import evaluate_folder  # noqa: E402
from lookalike.images import iter_image_files  # noqa: E402
from lookalike.training import TrainingRun, train  # noqa: E402
from lookalike.training.saved import read_info, read_split  # noqa: E402
from lookalike.training.split import SplitRule  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101-dev"
PRETRAINED = "efficientnet-lite0"
SEEN_CLASSES = 50
#: name -> (method, spec options, maximum epochs or None for the method's default): the heads on the frozen Lite0
#: features, so the comparison is the head's, then the last 6 or 9 blocks of Lite0 fine-tuned too; "-whiten" ends
#: the same training with learned whitening (`--whiten`, the default since), the others say `--no-whiten`; the last
#: is the 9-block recipe with the proxy-anchor loss (its paper's settings) in place of the contrastive one
FROZEN_RESIDUAL = {
    "backbone": "frozen",
    "backbone_model": PRETRAINED,
    "flip_average": False,
    "head": "residual",
    "distill": 3.0,
}
FINETUNE = {
    "backbone": "finetune",
    "backbone_model": PRETRAINED,
    "backbone_lr_scale": 0.2,
    "flip_average": False,
    "head": "residual",
    "distill": 1.0,
}
PLAIN, WHITEN = {"whiten": False}, {"whiten": True}
CONFIGS: dict[str, tuple[str, dict[str, object], int | None]] = {
    "siamese-mlp": (
        "siamese",
        {"backbone": "frozen", "backbone_model": PRETRAINED, "flip_average": False, **PLAIN},
        None,
    ),
    "siamese-residual": ("siamese", {**FROZEN_RESIDUAL, **PLAIN}, None),
    "siamese-residual-whiten": ("siamese", {**FROZEN_RESIDUAL, **WHITEN}, None),
    "siamese-finetune6": ("siamese", {**FINETUNE, "trainable_blocks": 6, **PLAIN}, 15),
    "siamese-finetune6-whiten": ("siamese", {**FINETUNE, "trainable_blocks": 6, **WHITEN}, 15),
    "siamese-finetune9-whiten": ("siamese", {**FINETUNE, "trainable_blocks": 9, **WHITEN}, 15),
    "proxy-anchor-finetune9-whiten": ("proxy-anchor", {**FINETUNE, "trainable_blocks": 9, **WHITEN}, 15),
    "selfsup": ("selfsup", {"views": 3}, None),
}


def class_split(root: Path, seen: int = SEEN_CLASSES) -> tuple[list[str], list[str]]:
    """(seen, unseen) class folder names of `root`: the first `seen` in sorted order, then the rest."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) <= seen:
        raise ValueError(f"{root} has {len(classes)} class folders; need more than {seen}")
    return classes[:seen], classes[seen:]


def link_classes(root: Path, classes: list[str], out: Path, per_class: int | None = None) -> Path:
    """out/<class>/<photo> hard links to the photos of `classes` (the first `per_class` of each)."""
    for name in classes:
        photos = sorted(iter_image_files(root / name))[:per_class]
        (out / name).mkdir(parents=True, exist_ok=True)
        for photo in photos:
            link = out / name / photo.name
            if not link.exists():
                link_file(photo, link)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, help="collection and split folders (default: a temp folder)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (default: each method's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "generalise_caltech101-dev.json")
    parser.add_argument("--smoke", action="store_true", help="2 seen and 2 unseen classes of 6 photos; no results")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --work: evaluate the models an earlier run trained there with the same settings, train the rest",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.work is None or args.smoke else args.work
        record = run(args.data, work, args.epochs, args.smoke, args.reuse and not args.smoke)
    if args.smoke:
        print(json.dumps(record["unseen"], indent=1))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(table(record))
    print(f"wrote {args.out}")


def trained_before(collection: Collection, request: TrainingRun) -> dict | None:
    """model.json of a model of the request's name already trained with the same method, options and epochs."""
    model_dir = collection.models_dir / str(request.name)
    if not (model_dir / "model.json").exists():
        return None
    info = read_info(model_dir)
    same = info["method"] == request.method and info["loop"]["epochs"] == request.resolve()[2].epochs
    if same and all(info["spec"].get(key) == value for key, value in request.spec.items()):
        return info
    return None


def run(data: Path, work: Path, epochs: int | None, smoke: bool, reuse: bool = False) -> dict[str, object]:
    record = run_record()
    seen, unseen = class_split(data, 2 if smoke else SEEN_CLASSES)
    if smoke:
        unseen = unseen[:2]
    per_class = 6 if smoke else None
    seen_dir = link_classes(data, seen, work / "seen", per_class)
    unseen_dir = link_classes(data, unseen, work / "unseen", per_class)
    record.update({"data": str(data), "seen_classes": seen, "unseen_classes": unseen, "configs": {}, "training": {}})
    names = [PRETRAINED]
    with Collection.open(work / "collection", embedder=PRETRAINED) as collection:
        for name, (method, spec, max_epochs) in CONFIGS.items():
            options = {**spec, "batch_size": 8} if smoke else spec
            request = TrainingRun(
                method=method,
                folder=seen_dir,
                name=name,
                epochs=1 if smoke else epochs or max_epochs,
                split=SplitRule(test_fraction=0.0, val_fraction=0.25 if smoke else 0.1),
                spec=options,
                restart=True,
            )
            started = time.perf_counter()
            info = trained_before(collection, request) if reuse else None
            reused = info is not None
            info = info or train(collection, request).info
            record["configs"][name] = {"method": method, "spec": options}
            record["training"][name] = {
                "reused": reused,  # trained by an earlier run with the same settings: its own time is training_seconds
                "wall_seconds": None if reused else round(time.perf_counter() - started, 1),
                "training_seconds": info["training_seconds"],
                **{k: info[k] for k in ("best_epoch", "epochs_run", "monitor", "best_score", "cache_seconds", "dim")},
            }
            if "whitening" in info:
                record["training"][name]["whitening"] = info["whitening"]
            names.append(name)
        evaluation = evaluate_folder(unseen_dir, collection, names, ks=(1, 5), held_out=False, expand=0)
        record["unseen"] = {r.embedder: _figures(r.figures) for r in evaluation.results}
        record["unseen"]["images"] = evaluation.images
        # the same vectors ranked as a new collection's searches rank them (query expansion)
        expanded = evaluate_folder(unseen_dir, collection, names, ks=(1, 5), held_out=False)
        record["unseen_expanded"] = {r.embedder: _figures(r.figures) for r in expanded.results}
        record["unseen_expanded"]["expand"] = collection.default_expand
        val = set(read_split(collection.models_dir / names[1]).val)
        only = {r.path for r in collection.records(under=seen_dir.resolve()) if r.sha256 in val}
        evaluation = evaluate_folder(
            seen_dir, collection, [PRETRAINED], ks=(1, 5), only_paths=only, held_out=False, expand=0
        )
        record["seen"] = {PRETRAINED: _figures(evaluation.results[0].figures), "images": evaluation.images}
        for name in names[1:]:
            info = read_info(collection.models_dir / name)
            best = info["best_epoch"]  # 0: no epoch beat the untrained network, which was kept
            record["seen"][name] = _figures(info["history"][best - 1]["validation"]) if best else None
            if info.get("whitening", {}).get("kept"):
                record["seen"][name] = _figures(info["whitening"]["validation_after"])
    return finish_record(record)


def _figures(figures: dict) -> dict[str, float]:
    return {k: round(float(figures[k]), 4) for k in ("precision@1", "precision@5", "MAP@R")}


def table(record: dict) -> str:
    rows = [
        "| embedder | unseen precision@5 | unseen MAP@R | unseen MAP@R, expanded | seen precision@5 | seen MAP@R |",
        "|---|---|---|---|---|---|",
    ]
    for name in record["unseen"]:
        if name == "images":
            continue
        u, s = record["unseen"][name], record["seen"][name] or {"precision@5": None, "MAP@R": None}
        figures = [u["precision@5"], u["MAP@R"], record["unseen_expanded"][name]["MAP@R"], s["precision@5"], s["MAP@R"]]
        rows.append(f"| {name} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in figures) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
