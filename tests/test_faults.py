"""Faults a collection must survive: a killed server, a full disk, a read-only folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from lookalike import Collection
from lookalike.cli.main import main
from lookalike.collection import DiskFullError, ReadOnlyCollectionError
from lookalike.embedders import DEFAULT_EMBEDDER
from lookalike.server import create_app

EMBEDDER = DEFAULT_EMBEDDER


def copy_photos(data_dir: Path, root: Path, per_label: int = 3) -> Path:
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(1, per_label + 1):
            shutil.copy2(data_dir / label / f"{label}.{i}.jpg", root / label)
    return root


def upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def assert_consistent(collection: Collection) -> None:
    """Catalog rows, stored vectors, the index and the files of uploads/ all agree."""
    rows = {r.id: r for r in collection.records(status=None)}
    vector_ids = collection.vector_ids(EMBEDDER)
    assert vector_ids == {i for i, r in rows.items() if r.status == "ok"}  # no vector without a row, and back
    index = collection.index(EMBEDDER)
    assert len(index) == len(vector_ids)
    probe = np.ones((1, collection.embedder(EMBEDDER).dim), dtype=np.float32)
    found = collection.search_vectors(probe, max(1, len(vector_ids)), embedder=EMBEDDER)
    assert set(found.ids[0][found.ids[0] >= 0].tolist()) == vector_ids
    uploaded = {Path(r.path).name for r in rows.values() if Path(r.path).parent == collection.uploads_dir}
    files = {p.name for p in collection.uploads_dir.iterdir()} if collection.uploads_dir.is_dir() else set()
    assert files == uploaded  # no orphan file, no row without its file
    for row in rows.values():
        assert Path(row.path).is_file(), row.path


# --- kill -9 of the server during adds and deletes ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_killed_during_adds_and_deletes_restarts_consistent(tmp_path: Path, data_dir: Path) -> None:
    """`kill -9` of `lookalike serve` while two clients add and one deletes, at the worst moment seen
    from outside: a file has appeared in uploads/ that no answered add has named (an add under way)."""
    photos = copy_photos(data_dir, tmp_path / "photos")
    with Collection.open(tmp_path / "collection") as collection:
        collection.sync(photos)
        uploads = collection.uploads_dir
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "lookalike.cli.main", "serve", "--collection", str(tmp_path / "collection")]
    with open(log, "wb") as out:
        server = subprocess.Popen([*command, "--port", str(port)], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    added: list[int] = []
    named: set[str] = set()  # file names of the answered adds
    stop = threading.Event()
    problems: list[str] = []

    def add(first: int) -> None:
        for i in range(first, first + 100):
            if stop.is_set():
                return
            try:
                response = httpx.post(f"{url}/api/images", files=upload(data_dir / "cat" / f"cat.{i}.jpg"), timeout=60)
            except httpx.TransportError:
                return  # the server died under us
            if response.status_code != 201:
                problems.append(response.text)
                return
            named.add(response.json()["name"])
            added.append(response.json()["id"])

    def delete() -> None:
        while not stop.is_set():
            if len(added) < 2:
                time.sleep(0.01)
                continue
            try:
                httpx.delete(f"{url}/api/images/{added.pop(0)}", timeout=60)
            except httpx.TransportError:
                return

    workers = [threading.Thread(target=add, args=(200,)), threading.Thread(target=add, args=(300,))]
    workers.append(threading.Thread(target=delete))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/api/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            on_disk = set(os.listdir(uploads)) if uploads.is_dir() else set()
            if len(named) >= 4 and on_disk - named:
                break
            time.sleep(0.002)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
            server.wait()
    for worker in workers:
        worker.join(timeout=60)
    assert problems == []
    assert len(named) >= 4, "killed before the stream of adds was under way"
    # Restart: what `lookalike serve` does on start, then every store agrees.
    with Collection.open(tmp_path / "collection", create=False) as collection:
        client = TestClient(create_app(collection))
        stats = client.get("/api/stats").json()
        assert stats["images"] == collection.catalog.count("ok") >= 6
        assert_consistent(collection)
        meta = json.loads((collection.path / "indexes" / f"{EMBEDDER}.json").read_text())
        assert meta["generation"] == collection.catalog.generation(EMBEDDER)  # the index on disk is current


def test_a_restart_tidies_what_a_killed_add_or_delete_left(tmp_path: Path, data_dir: Path) -> None:
    """The states a kill can leave, made on purpose: a file written before its row was committed,
    a temporary file, and (a file deleted by hand) a row without its file."""
    photos = copy_photos(data_dir, tmp_path / "photos")
    collection = Collection.open(tmp_path / "collection")
    collection.sync(photos)
    client = TestClient(create_app(collection))
    kept = client.post("/api/images", files=upload(data_dir / "cat" / "cat.100.jpg")).json()
    gone = client.post("/api/images", files=upload(data_dir / "cat" / "cat.101.jpg")).json()
    uploads = collection.uploads_dir
    next(p for p in uploads.iterdir() if p.read_bytes() == (data_dir / "cat" / "cat.101.jpg").read_bytes()).unlink()
    shutil.copy2(data_dir / "dog" / "dog.100.jpg", uploads / "0123456789abcdef0123456789abcdef.jpg")
    (uploads / ".0123.jpg.x1y2.tmp").write_bytes(b"half a file")
    collection.close()

    with Collection.open(tmp_path / "collection", create=False) as restarted:
        client = TestClient(create_app(restarted))
        assert client.get(f"/api/images/{kept['id']}").status_code == 200
        assert client.get(f"/api/images/{gone['id']}").status_code == 404
        assert sorted(p.name for p in uploads.iterdir()) == [Path(restarted.image(kept["id"]).path).name]
        assert_consistent(restarted)


# --- a full disk ------------------------------------------------------------------------------------


@contextmanager
def mounted(*arguments: str, target: Path) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", *arguments, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or 'not permitted'})")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def fill(folder: Path) -> None:
    """Use every free byte of the file system holding `folder`."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 16, 512):  # large blocks, then the last few bytes
            try:
                while True:
                    f.write(bytes(chunk))
            except OSError:
                pass
    assert shutil.disk_usage(folder).free == 0


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="mounts a small tmpfs (Linux, as root)")
def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_state(tmp_path: Path, data_dir: Path) -> None:
    photos = copy_photos(data_dir, tmp_path / "photos")
    more = copy_photos(data_dir, tmp_path / "more", per_label=30)
    disk = tmp_path / "disk"
    with mounted("-t", "tmpfs", "-o", "size=4m", "tmpfs", target=disk):
        collection = Collection.open(disk / "collection")
        collection.sync(photos)
        record = collection.records()[0]
        before = [r.id for r in collection.search_id(record.id, k=4)]
        index_file = disk / "collection" / "indexes" / f"{EMBEDDER}.faiss"
        saved_index = index_file.read_bytes()
        client = TestClient(create_app(collection))
        fill(disk)

        # The catalog: an add through the server, a sync of 54 more photos.
        response = client.post("/api/images", files=upload(data_dir / "cat" / "cat.100.jpg"))
        assert response.status_code == 507
        assert response.json()["detail"] == "the collection's disk is full: nothing was changed"
        with pytest.raises(DiskFullError, match="disk is full"):
            collection.sync(more)
        assert collection.catalog.count() == 6
        assert not list(collection.uploads_dir.iterdir())  # no file left without its row
        # The index: its file is replaced whole or not at all.
        with pytest.raises(DiskFullError, match=f"cannot save the {EMBEDDER} index"):
            collection._save_index(EMBEDDER, collection.index(), collection.catalog.generation(EMBEDDER))
        assert index_file.read_bytes() == saved_index
        assert not [p for p in index_file.parent.iterdir() if p.name.endswith(".tmp")]
        # Searching goes on, in this process and in a new one, still on the full disk.
        assert client.post("/api/search", files=upload(data_dir / "cat" / "cat.100.jpg")).status_code == 200
        assert [r.id for r in collection.search_id(record.id, k=4)] == before
        collection.close()
        reopened = subprocess.run(
            [sys.executable, "-m", "lookalike.cli.main", "search", record.path, "--collection",
             str(disk / "collection"), "-k", "4", "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert reopened.returncode == 0, reopened.stderr
        assert [hit["id"] for hit in json.loads(reopened.stdout)] == before


# --- a read-only collection ---------------------------------------------------------------------------


@contextmanager
def read_only_view(folder: Path, view: Path) -> Iterator[Path]:
    """`folder` seen read-only: a read-only bind mount as root, else a folder without write permission."""
    if os.geteuid() == 0:
        with mounted("--bind", str(folder), target=view):
            if subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode != 0:
                pytest.skip("cannot remount read-only here")
            yield view
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield folder
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_a_read_only_collection_searches_and_refuses_writes_clearly(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = copy_photos(data_dir, tmp_path / "photos")
    with Collection.open(tmp_path / "collection") as collection:
        collection.sync(photos)
        record = collection.records()[0]
        expected = [r.id for r in collection.search_id(record.id, k=4)]
    shutil.rmtree(tmp_path / "collection" / "indexes")  # stale: rebuilt in memory, not saved
    with read_only_view(tmp_path / "collection", tmp_path / "view") as folder:
        collection = Collection.open(folder)
        assert collection.read_only
        assert [r.id for r in collection.search_id(record.id, k=4)] == expected
        assert collection.search(Path(record.path), k=1)[0].id == expected[0]
        for change in (
            lambda: collection.add_image((data_dir / "cat" / "cat.100.jpg").read_bytes(), folder / "uploads" / "a.jpg"),
            lambda: collection.remove([record.id]),
            lambda: collection.sync(photos),
        ):
            with pytest.raises(ReadOnlyCollectionError, match="read-only"):
                change()
        collection.save()  # nothing to save: no error

        client = TestClient(create_app(collection))
        assert client.post("/api/search", files=upload(data_dir / "cat" / "cat.100.jpg")).status_code == 200
        assert client.get(f"/api/images/{record.id}/similar").status_code == 200
        assert client.get(f"/api/images/{record.id}/thumbnail").status_code == 200  # made, not cached
        for response in (
            client.post("/api/images", files=upload(data_dir / "cat" / "cat.100.jpg")),
            client.delete(f"/api/images/{record.id}"),
        ):
            assert response.status_code == 403
            assert response.json()["detail"] == "this collection is read-only: images cannot be added or deleted"
        collection.close()
        assert main(["index", str(photos), "--collection", str(folder)]) == 2
        assert "read-only" in capsys.readouterr().err
        with pytest.raises(ReadOnlyCollectionError):
            Collection.open(folder, read_only=False)
