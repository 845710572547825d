"""Every benchmark runs its --smoke version (seconds, tiny data, no results written), so none can rot unnoticed.

The figures themselves are measured by hand (benchmarks/README.md); here only "it still runs".
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def test_run_all_smoke_runs_every_benchmark() -> None:
    spec = importlib.util.spec_from_file_location("run_all", BENCHMARKS / "run_all.py")
    assert spec is not None and spec.loader is not None
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    assert sorted(script for script, *_ in run_all.SMOKE) == [path.name for path in SCRIPTS]
    assert all(options == ["--smoke"] for _, *options in run_all.SMOKE)
    assert len(SCRIPTS) >= 7


def results_files() -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in (BENCHMARKS / "results").glob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_smoke_run(script: Path, tmp_path: Path) -> None:
    before = results_files()
    result = subprocess.run(
        [sys.executable, str(script), "--smoke"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert results_files() == before, "a smoke run writes no results"
