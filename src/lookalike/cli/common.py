"""What every sub-command shares: the collection option, progress bars, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..storage import DEFAULT_COLLECTION_DIR

#: progress(stage, done, total), as the library reports it
Progress = Callable[[str, int, int], None]


def add_collection_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--collection",
        type=Path,
        default=Path(DEFAULT_COLLECTION_DIR),
        help=f"collection folder (default: ./{DEFAULT_COLLECTION_DIR})",
    )


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Progress]:
    """A Progress callback drawing one tqdm bar per stage on stderr."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if not enabled or total == 0:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="img", file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
