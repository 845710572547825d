"""What every sub-command shares: the collection option, progress bars, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


class Bars:
    """Progress(stage, done, total) drawn as one tqdm bar per stage on stderr, and `figures(stage, values)`
    (the running loss, a validation score) shown beside that stage's bar. A finished bar is closed when
    the next stage starts, so it stays on screen as it ended."""

    def __init__(self, enabled: bool = True, units: Mapping[str, str] | None = None):
        self.enabled = enabled
        self.units = dict(units or {})  # stage prefix -> unit; "img" otherwise
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        bar = self.bars.get(stage)
        if bar is None:
            from tqdm import tqdm

            self.close_finished()
            unit = next((u for prefix, u in self.units.items() if stage.startswith(prefix)), "img")
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    def figures(self, stage: str, values: Mapping[str, float]) -> None:
        bar = self.bars.get(stage)
        if bar is not None:
            bar.set_postfix({name: f"{value:.4f}" for name, value in values.items()})

    def close_finished(self) -> None:
        """Close the bars that reached their total (they stay on screen as they ended)."""
        for name, bar in list(self.bars.items()):
            if bar.total and bar.n >= bar.total:
                bar.close()
                del self.bars[name]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextmanager
def progress_bars(enabled: bool = True, units: Mapping[str, str] | None = None) -> Iterator[Bars]:
    """A Progress callback drawing one tqdm bar per stage on stderr (with `.figures` for a stage's figures)."""
    bars = Bars(enabled, units)
    try:
        yield bars
    finally:
        bars.close()


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
