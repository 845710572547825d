"""`lookalike stats` and `lookalike embedders`: what a collection holds and what it can use."""

from __future__ import annotations

import argparse

from .common import add_collection_option, print_json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("stats", help="what the collection holds")
    add_collection_option(parser)
    parser.set_defaults(run=run_stats)
    parser = commands.add_parser("embedders", help="list the embedders this collection can use")
    add_collection_option(parser)
    parser.set_defaults(run=run_embedders)


def run_stats(args: argparse.Namespace) -> int:
    from ..collection import Collection

    with Collection.open(args.collection, create=False) as collection:
        print_json(collection.stats())
    return 0


def run_embedders(args: argparse.Namespace) -> int:
    from ..collection import Collection

    with Collection.open(args.collection) as collection:
        for name in collection.available_embedders():
            print(name)
    return 0
