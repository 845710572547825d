"""`lookalike evaluate FOLDER`: leave-one-out retrieval quality of one or more embedders."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_collection_option, print_json, progress_bars


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", help="measure retrieval quality on a labelled folder (sub-folder = label)")
    parser.add_argument("folder", type=Path)
    add_collection_option(parser)
    parser.add_argument("--embedders", default=None, help="comma-separated names (default: the collection's)")
    parser.add_argument("--k", type=int, default=5, help="the k of the headline figures (default 5)")
    parser.add_argument("--out", type=Path, default=Path("reports/evaluation"), help="report folder")
    parser.add_argument(
        "--held-out",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only the test split no evaluated model was trained on (default: on when a trained embedder is evaluated)",
    )
    parser.add_argument(
        "--visuals",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a 2-D map and example queries to the report (default: with --held-out)",
    )
    parser.add_argument(
        "--expand",
        type=int,
        metavar="N",
        help="rank as `search --expand N` does: query expansion over each query's top N neighbours "
        "(0: off; default: the collection's, as `search`)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection
    from ..evaluation.report import summary_table, write_report
    from ..evaluation.runner import evaluate_folder

    with Collection.open(args.collection) as collection:
        names = args.embedders.split(",") if args.embedders else [collection.default_embedder]
        ks = tuple(sorted({1, args.k, 10}))
        with progress_bars(not args.json) as progress:
            evaluation = evaluate_folder(
                args.folder, collection, names, ks=ks, progress=progress, held_out=args.held_out, expand=args.expand
            )
    md_path, json_path = write_report(evaluation, args.out, k=args.k, visuals=args.visuals)
    if args.json:
        print_json(evaluation.to_dict())
        return 0
    scope = "held-out test split, leave-one-out" if evaluation.held_out else "leave-one-out"
    print(f"{evaluation.images} images in {evaluation.folder}, {scope}, {evaluation.wall_seconds:.1f} s")
    print(summary_table(evaluation, args.k))
    if evaluation.duplicate_groups:
        print(f"note: {len(evaluation.duplicate_groups)} group(s) of identical files in the gallery (see the report)")
    print(f"report: {md_path}  figures: {json_path}")
    return 0
