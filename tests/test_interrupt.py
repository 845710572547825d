"""An indexing run stopped part-way (killed, or Ctrl-C) resumes, and every image ends up indexed exactly once."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookalike import Collection
from lookalike.embedders import DEFAULT_EMBEDDER

IMAGES = 96
# Each test embeds 96 photos in real `lookalike index` processes (about half a minute of CPU).
pytestmark = pytest.mark.slow


def _committed(catalog: Path) -> int:
    if not catalog.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _folder(tmp_path: Path, data_dir: Path) -> Path:
    folder = tmp_path / "photos"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(1, IMAGES // 2 + 1):
            shutil.copy(data_dir / label / f"{label}.{i}.jpg", folder / label)
    return folder


def _index_command(folder: Path, collection_dir: Path) -> list[str]:
    return [sys.executable, "-m", "lookalike.cli.main", "index", str(folder), "--collection", str(collection_dir)]


def _stop_part_way(command: list[str], catalog: Path, how: signal.Signals) -> tuple[int, str, int]:
    """Start an indexing run and send it `how` once 8 images are committed: (exit code, stderr, images committed)."""
    process = subprocess.Popen(
        [*command, "--batch-size", "4", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a test run started in the background (`cmd &` without job control) ignores
        # SIGINT, and a child would inherit that and never see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while _committed(catalog) < 8 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    before = _committed(catalog)
    assert 8 <= before < IMAGES, f"stopped too late to test anything ({before} of {IMAGES} committed)"
    return process.returncode, stderr, before


def _rerun_completes_each_image_once(command: list[str], folder: Path, collection_dir: Path, before: int) -> None:
    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    with Collection.open(collection_dir, create=False) as collection:
        records = collection.catalog.records()
        assert len(records) == IMAGES and len({r.path for r in records}) == IMAGES
        assert all(r.status == "ok" for r in records)
        ids, _ = collection.catalog.vectors(DEFAULT_EMBEDDER)
        assert len(ids) == IMAGES and len(set(ids.tolist())) == IMAGES
        assert len(collection.index()) == IMAGES
        third = collection.sync(folder)
        assert third.embedded == 0 and third.unchanged == IMAGES
    assert f'"embedded": {IMAGES - before}' in rerun.stdout, "the rerun embeds only what the stopped run had not"


def test_killed_index_run_resumes_without_duplicates(tmp_path: Path, data_dir: Path) -> None:
    folder, collection_dir = _folder(tmp_path, data_dir), tmp_path / "col"
    command = _index_command(folder, collection_dir)
    code, _, before = _stop_part_way(command, collection_dir / "catalog.sqlite", signal.SIGKILL)
    assert code == -signal.SIGKILL
    _rerun_completes_each_image_once(command, folder, collection_dir, before)


def test_ctrl_c_stops_an_index_run_cleanly_and_it_resumes(tmp_path: Path, data_dir: Path) -> None:
    folder, collection_dir = _folder(tmp_path, data_dir), tmp_path / "col"
    command = _index_command(folder, collection_dir)
    code, stderr, before = _stop_part_way(command, collection_dir / "catalog.sqlite", signal.SIGINT)
    assert code == 130, stderr
    assert "lookalike: interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    _rerun_completes_each_image_once(command, folder, collection_dir, before)
