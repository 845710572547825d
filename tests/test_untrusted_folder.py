"""Indexing a folder someone else filled: only regular files are read, links only when asked, reads capped."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike import Collection

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and symbolic links (POSIX)")


@pytest.fixture()
def hostile_folder(tmp_path: Path, data_dir: Path) -> Path:
    """Two real photos, plus a FIFO, a link to /dev/zero, a link to a photo outside the folder and a socket."""
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    for i in (1, 2):
        shutil.copy2(data_dir / "cat" / f"cat.{i}.jpg", folder)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    outside = tmp_path / "elsewhere" / "private.jpg"
    outside.parent.mkdir()
    shutil.copy2(data_dir / "dog" / "dog.1.jpg", outside)
    (folder / "outside.jpg").symlink_to(outside)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.png"))
    server.close()
    return folder.parent


def index_in_a_subprocess(folder: Path, collection: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`lookalike index` in a child process, so that a hang fails the test instead of blocking it."""
    command = [sys.executable, "-m", "lookalike.cli.main", "index", str(folder), "--collection", str(collection)]
    return subprocess.run([*command, *options], capture_output=True, text=True, timeout=300)


def test_fifos_devices_sockets_and_links_are_skipped_and_reported(hostile_folder: Path, tmp_path: Path) -> None:
    result = index_in_a_subprocess(hostile_folder, tmp_path / "collection")
    assert result.returncode == 0, result.stderr
    assert "2 added" in result.stdout and "4 skipped" in result.stdout
    reported = {
        line.split(": ", 1)[0].rsplit("/", 1)[-1]: line.split(": ", 1)[1] for line in result.stdout.splitlines()[1:]
    }
    assert reported["fifo.jpg"] == "not a regular file (a FIFO)"
    assert reported["socket.png"] == "not a regular file (a socket)"
    assert reported["zero.jpg"].startswith("a symbolic link, not followed")
    assert reported["outside.jpg"].startswith("a symbolic link, not followed")
    with Collection.open(tmp_path / "collection", create=False) as collection:
        assert sorted(Path(r.path).name for r in collection.records(status=None)) == ["cat.1.jpg", "cat.2.jpg"]


def test_links_are_followed_only_when_asked_and_never_to_a_device(hostile_folder: Path, tmp_path: Path) -> None:
    result = index_in_a_subprocess(hostile_folder, tmp_path / "collection", "--follow-symlinks")
    assert result.returncode == 0, result.stderr
    assert "3 added" in result.stdout and "3 skipped" in result.stdout
    assert "zero.jpg: not a regular file (a device)" in result.stdout
    with Collection.open(tmp_path / "collection", create=False) as collection:
        names = sorted(Path(r.path).name for r in collection.records(status=None))
        assert names == ["cat.1.jpg", "cat.2.jpg", "outside.jpg"]
        assert collection.search_id(collection.records()[0].id, k=2)


def test_reads_are_capped_and_a_file_that_becomes_a_fifo_is_dropped(sample_folder: Path, tmp_path: Path) -> None:
    collection = Collection.open(tmp_path / "collection")
    big = sample_folder / "cat" / "cat.1.jpg"
    size = big.stat().st_size
    report = collection.sync(sample_folder, max_file_bytes=size - 1)
    assert (str(big), f"file too large ({size} bytes, limit {size - 1})") in report.skipped
    too_large = [path for path, reason in report.skipped if reason.startswith("file too large")]
    assert collection.catalog.count() == 24 - len(too_large)
    assert collection.sync(sample_folder).added == too_large  # with the default cap they are read

    victim = sample_folder / "dog" / "dog.3.jpg"
    victim.unlink()
    os.mkfifo(victim)
    report = collection.sync(sample_folder)
    assert report.skipped == [(str(victim), "not a regular file (a FIFO)")]
    assert report.removed == [str(victim)]
    assert collection.catalog.get_by_path(str(victim)) is None
    collection.close()
