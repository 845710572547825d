"""Entry point of the `lookalike` command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module registers one or more sub-commands; `train` arrives with the training subsystem.
COMMAND_MODULES = ["index", "search", "evaluate", "train", "serve", "stats", "duplicates"]


class _Notices(logging.Handler):
    """The library's notices (such as "preparing efficientnet-lite0 for fast inference, once") on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"lookalike: {record.getMessage()}", file=sys.stderr)


def show_notices() -> None:
    log = logging.getLogger("lookalike")
    if not any(isinstance(h, _Notices) for h in log.handlers):
        log.addHandler(_Notices(logging.INFO))
        log.setLevel(logging.INFO)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command; given the command line, only of the sub-command it names (each
    module registers its own commands, and `train`'s are generated from the training registry: a search
    need not import it)."""
    parser = argparse.ArgumentParser(prog="lookalike", description="Find images that look alike.")
    commands = parser.add_subparsers(dest="command", required=True)
    named = next((a for a in argv if not a.startswith("-")), None) if argv else None
    modules = [named] if named in COMMAND_MODULES else COMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    show_notices()
    try:
        return int(args.run(args) or 0)
    except Exception as exc:
        from ..embedders import EmbedderError
        from ..images import ImageError
        from ..index import IndexError_
        from ..storage import CollectionWriteError

        known = (ImageError, EmbedderError, IndexError_, CollectionWriteError)
        if not isinstance(exc, (*known, FileNotFoundError, NotADirectoryError, ValueError, KeyError)):
            raise
        print(f"lookalike: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lookalike: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
