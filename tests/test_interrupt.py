"""An indexing run killed part-way resumes, and every image ends up indexed exactly once."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from lookalike import Collection


def _committed(catalog: Path) -> int:
    if not catalog.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM vectors").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_killed_index_run_resumes_without_duplicates(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "photos"
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(1, 49):
            shutil.copy(data_dir / label / f"{label}.{i}.jpg", folder / label)
    collection_dir = tmp_path / "col"
    command = [sys.executable, "-m", "lookalike.cli.main", "index", str(folder), "--collection", str(collection_dir)]

    process = subprocess.Popen([*command, "--batch-size", "4", "--json"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _committed(collection_dir / "catalog.sqlite") < 8 and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _committed(collection_dir / "catalog.sqlite")
    assert 8 <= before < 96, f"killed too late to test anything ({before} of 96 committed)"

    rerun = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr

    with Collection.open(collection_dir, create=False) as collection:
        records = collection.catalog.records()
        assert len(records) == 96 and len({r.path for r in records}) == 96
        assert all(r.status == "ok" for r in records)
        ids, vectors = collection.catalog.vectors("efficientnet-lite0")
        assert len(ids) == 96 and len(set(ids.tolist())) == 96
        assert len(collection.index()) == 96
        third = collection.sync(folder)
        assert third.embedded == 0 and third.unchanged == 96
    assert '"embedded": ' + str(96 - before) in rerun.stdout, "the rerun embeds only what the killed run had not"
