"""`lookalike search IMAGE`: the k most similar indexed images."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from .common import add_collection_option, print_json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="find the images most similar to IMAGE")
    parser.add_argument("image", type=Path)
    add_collection_option(parser)
    parser.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    parser.add_argument("--embedder", help="embedder name (default: the collection's)")
    parser.add_argument("--label", help="only return images with this label")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="search a region only")
    parser.add_argument(
        "--expand", type=int, default=0, metavar="N", help="re-rank by query expansion over the top N (default off)"
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection

    with Collection.open(args.collection, create=False) as collection:
        results = collection.search(
            args.image, args.k, embedder=args.embedder, label=args.label, box=args.box, expand=args.expand
        )
    if args.json:
        print_json([asdict(r) for r in results])
        return 0
    if not results:
        print("no results (is the collection empty?)")
    for r in results:
        print(f"{r.rank:>3}  {r.score:.4f}  {r.label or '-':<12} {r.path}")
    return 0
