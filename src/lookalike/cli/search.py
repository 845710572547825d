"""`lookalike search IMAGE` / `lookalike search --text WORDS`: the k most similar, or best matching, indexed images."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from .common import add_collection_option, print_json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "search", help="find the images most similar to IMAGE, or those showing what --text says"
    )
    parser.add_argument("image", type=Path, nargs="?", help="the query image (or use --text)")
    add_collection_option(parser)
    parser.add_argument(
        "--text",
        metavar="WORDS",
        help='search by words instead of an image, e.g. "golden retriever", "dog", "vehicle"',
    )
    parser.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    parser.add_argument("--embedder", help="embedder name (default: the collection's)")
    parser.add_argument("--label", help="only return images with this label")
    parser.add_argument("--tag", metavar="WORDS", help="only return images tagged with this concept, e.g. dog")
    parser.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="search a region only")
    parser.add_argument(
        "--expand",
        type=int,
        metavar="N",
        help="re-rank by query expansion over the top N (0: off; default: the collection's, 5 for a new one)",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..collection import Collection

    if (args.image is None) == (args.text is None):
        raise ValueError("give a query image or --text WORDS (one of them)")
    if args.text is not None and (args.box or args.expand):
        raise ValueError("--box and --expand apply to image queries only")
    with Collection.open(args.collection, create=False) as collection:
        if args.text is not None:
            found = collection.search_text(args.text, args.k, embedder=args.embedder, label=args.label, tag=args.tag)
            results = found.results
            if found.method == "concepts":
                read = "; ".join(
                    f"{t.words!r} -> {', '.join(t.concepts)} ({len(t.classes)} ImageNet classes)" for t in found.terms
                )
                print(f"lookalike: {read}", file=sys.stderr)
                for reason in found.ignored:
                    print(f"lookalike: left out: {reason}", file=sys.stderr)
        else:
            results = collection.search(
                args.image,
                args.k,
                embedder=args.embedder,
                label=args.label,
                box=args.box,
                expand=args.expand,
                tag=args.tag,
            )
    if args.json:
        print_json([asdict(r) for r in results])
        return 0
    if not results:
        print("no results (is the collection empty?)" if args.text is None else "no image shows that")
    for r in results:
        tags = ", ".join(f"{t.name} {t.score:.2f}" for t in r.tags)
        where = f"  (indexed by collection {r.catalog[:8]}, on its machine)" if r.catalog else ""
        print(f"{r.rank:>3}  {r.score:.4f}  {r.label or '-':<12} {r.path}" + (f"  [{tags}]" if tags else "") + where)
    return 0
