"""Entry point of the `lookalike` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..embedders import EmbedderError
from ..images import ImageError
from ..index import IndexError_

# Each module registers one or more sub-commands; `train` arrives with the training subsystem.
COMMAND_MODULES = ["index", "search", "evaluate", "train", "serve", "stats"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="Find images that look alike.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ImageError, EmbedderError, IndexError_, FileNotFoundError, NotADirectoryError, ValueError, KeyError) as exc:
        print(f"lookalike: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lookalike: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
