"""Choosing the unseen-classes recipe's settings without the unseen classes, then testing it at several seeds.

    .venv/bin/python benchmarks/bench_generalise_select.py            # about 65 min on 2 idle cores
    .venv/bin/python benchmarks/bench_generalise_select.py --smoke    # tiny folders, 1 epoch; writes nothing

The protocol of `bench_generalise.py` (train on caltech101-dev classes 1-50 by sorted name, score leave-one-out
on classes 51-101), with the choice of settings made the way metric-learning papers are asked to make it
(Musgrave et al. 2020, "A Metric Learning Reality Check"): on classes held out of training, never on the test
classes.

1. **Selection.** The 50 seen classes are split again: the first 25 train, the other 25 validate. Each candidate
   (`CANDIDATES`: variants of the proxy-anchor 9-block `--whiten` recipe) is trained on the 25 at each selection
   seed and scored leave-one-out on the 25 validation classes (MAP@R, plain cosine). The candidate with the
   best mean is chosen. The unseen classes play no part.
2. **Test.** The chosen candidate, and the recipe as it was (candidate "recipe") beside it, are trained on all 50
   seen classes at each test seed (a tenth for early stopping, as `bench_generalise.py`) and scored leave-one-out
   on the 51 unseen classes, with pretrained Lite0 in the same run.

Results: benchmarks/results/generalise_select_caltech101-dev.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalise import (  # noqa: E402
    DATA,
    FINETUNE,
    PRETRAINED,
    RESULTS,
    SEEN_CLASSES,
    WHITEN,
    _figures,
    class_split,
    link_classes,
)
from common import finish_record, run_record  # noqa: E402

from lookalike import Collection  # noqa: E402
from lookalike.evaluation.runner import evaluate_folder  # noqa: E402
from lookalike.training import TrainingRun, train  # noqa: E402
from lookalike.training.split import SplitRule  # noqa: E402

METHOD = "proxy-anchor"
RECIPE = {**FINETUNE, "trainable_blocks": 9, **WHITEN}
#: name -> options over RECIPE, fixed before the selection ran: the two settings that trade fitting the seen
#: classes against keeping the pretrained neighbourhoods (distillation weight, pretrained blocks' rate), alone
#: and together
CANDIDATES: dict[str, dict[str, object]] = {
    "recipe": {},
    "distill2": {"distill": 2.0},
    "rate0.1": {"backbone_lr_scale": 0.1},
    "distill2-rate0.1": {"distill": 2.0, "backbone_lr_scale": 0.1},
}
EPOCHS = 15


def train_and_score(
    collection: Collection, stage: str, train_dir: Path, test_dir: Path, candidates: dict[str, dict[str, object]],
    seed: int, smoke: bool,
) -> dict[str, dict[str, object]]:  # fmt: skip
    """Train each candidate (name -> options over RECIPE) on train_dir at `seed`, as the model
    `<stage>-<name>-s<seed>`; score them and pretrained Lite0 on test_dir. Keyed by candidate name."""
    out: dict[str, dict[str, object]] = {}
    models = {}
    for name, extra in candidates.items():
        options = {**RECIPE, **extra, **({"batch_size": 8} if smoke else {})}
        models[f"{stage}-{name}-s{seed}"] = name
        started = time.perf_counter()
        info = train(
            collection,
            TrainingRun(
                method=METHOD,
                folder=train_dir,
                name=f"{stage}-{name}-s{seed}",
                epochs=1 if smoke else EPOCHS,
                seed=seed,
                spec=options,
                split=SplitRule(test_fraction=0.0, val_fraction=0.25 if smoke else 0.1),
                restart=True,
            ),
        ).info
        out[name] = {
            "model": f"{stage}-{name}-s{seed}",
            "best_epoch": info["best_epoch"],
            "whitening_kept": info.get("whitening", {}).get("kept"),
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
    evaluation = evaluate_folder(test_dir, collection, [PRETRAINED, *models], ks=(1, 5), held_out=False, expand=0)
    for result in evaluation.results:
        out.setdefault(models.get(result.embedder, result.embedder), {})["figures"] = _figures(result.figures)
    return out


def stage_record(runs: list[dict[str, dict[str, object]]], seeds: list[int]) -> dict[str, object]:
    """Each seed's figures, and per embedder its MAP@R at each seed and their mean."""
    names = list(runs[0])
    maps = {name: [run[name]["figures"]["MAP@R"] for run in runs] for name in names}  # type: ignore[index]
    return {
        "seeds": seeds,
        "runs": runs,
        "MAP@R": maps,
        "mean_MAP@R": {name: round(statistics.fmean(values), 4) for name, values in maps.items()},
    }


def run(data: Path, work: Path, select_seeds: list[int], test_seeds: list[int], smoke: bool) -> dict[str, object]:
    record = run_record()
    seen, unseen = class_split(data, 4 if smoke else SEEN_CLASSES)
    unseen = unseen[:2] if smoke else unseen
    half = len(seen) // 2
    per_class = 6 if smoke else None
    folders = {
        "train": link_classes(data, seen[:half], work / "select-train", per_class),
        "validate": link_classes(data, seen[half:], work / "select-validate", per_class),
        "seen": link_classes(data, seen, work / "seen", per_class),
        "unseen": link_classes(data, unseen, work / "unseen", per_class),
    }
    record.update({
        "data": str(data), "method": METHOD, "recipe": RECIPE, "candidates": CANDIDATES, "epochs": EPOCHS,
        "select_train_classes": seen[:half], "select_validate_classes": seen[half:], "unseen_classes": unseen,
    })  # fmt: skip
    with Collection.open(work / "collection", embedder=PRETRAINED) as collection:
        selection = stage_record(
            [
                train_and_score(collection, "select", folders["train"], folders["validate"], CANDIDATES, seed, smoke)
                for seed in select_seeds
            ],
            select_seeds,
        )
        means = selection["mean_MAP@R"]
        chosen = max(CANDIDATES, key=lambda name: means[name])  # type: ignore[index]
        record["selection"] = {**selection, "chosen": chosen}
        tested = {"recipe": CANDIDATES["recipe"], chosen: CANDIDATES[chosen]}
        record["test"] = stage_record(
            [
                train_and_score(collection, "test", folders["seen"], folders["unseen"], tested, seed, smoke)
                for seed in test_seeds
            ],
            test_seeds,
        )
    return finish_record(record)


def table(record: dict) -> str:
    lines = []
    for stage, classes in (("selection", "select_validate_classes"), ("test", "unseen_classes")):
        part = record[stage]
        lines += [f"{stage}: MAP@R on the {len(record[classes])} {classes.replace('_', ' ')} at seeds {part['seeds']}"]
        lines += [f"  {name}: mean {part['mean_MAP@R'][name]:.4f}  {maps}" for name, maps in part["MAP@R"].items()]
    lines.append(f"chosen: {record['selection']['chosen']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, help="collection and class folders (default: a temp folder)")
    parser.add_argument("--select-seeds", default="0,1", help="comma-separated seeds of the selection stage")
    parser.add_argument("--test-seeds", default="0,1,2", help="comma-separated seeds of the test stage")
    parser.add_argument("--out", type=Path, default=RESULTS / "generalise_select_caltech101-dev.json")
    parser.add_argument("--smoke", action="store_true", help="4 seen and 2 unseen classes of 6 photos; no results")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.select_seeds.split(",")], [int(s) for s in args.test_seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.work is None or args.smoke else args.work
        record = run(args.data, work, *seeds, args.smoke)
    print(table(record))
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
