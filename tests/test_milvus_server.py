"""A real Milvus server (the session's `milvus_server`) under what Milvus Lite cannot show: two `lookalike`
processes of two collections sharing one remote collection, a server restarted or gone in the middle of
`lookalike index`, a server that cannot be reached at search time, and `lookalike stats` of the remote side.

Each `lookalike` here is a separate process, as on two machines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lookalike import Collection
from lookalike.embedders import DEFAULT_EMBEDDER
from lookalike.index.milvus import NAMESPACE_SHIFT, MilvusIndex, collection_name, parse_kind

#: seconds any one `lookalike` process may take here: a hang fails the test instead of stalling the suite
#: a vector database: under CI (ci_rules.py) these must run, not be skipped
pytestmark = pytest.mark.milvus

PROCESS_TIMEOUT = 600


def lookalike(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen[str]:
    """`lookalike ARGS` in its own process (finished when `wait`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lookalike.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if wait:
        process.wait(timeout=PROCESS_TIMEOUT)
    return process


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=PROCESS_TIMEOUT)
    return process.returncode, out, err


def copy_label(data_dir: Path, root: Path, label: str, numbers: range) -> Path:
    for i in numbers:
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir / label / f"{label}.{i}.jpg", root / label / f"{label}.{i}.jpg")
    return root


def remote_rows(server, name: str, wait: bool = True) -> list[int]:
    """Every primary key in the remote collection of embedder DEFAULT_EMBEDDER under NAME (one Strong read);
    without `wait`, none while the collection is not loaded yet."""
    from pymilvus import MilvusClient

    target = parse_kind(server.kind(name))
    client = MilvusClient(uri=target.uri, timeout=10)
    remote = collection_name(target, DEFAULT_EMBEDDER)
    try:
        for _ in range(120):
            if not client.has_collection(remote):
                return []
            try:
                rows = client.query(remote, filter="id >= 0", output_fields=["id"], consistency_level="Strong")
                return sorted(int(r["id"]) for r in rows)
            except Exception as exc:
                # being created (no index yet), or restarted: the server loads it in its own time
                if "not loaded" not in str(exc) and "index not found" not in str(exc):
                    raise
                if not wait:
                    return []
                time.sleep(1)
        raise AssertionError(f"{remote} never loaded")
    finally:
        client.close()


def stop_at_first_rows(server, name: str, process: subprocess.Popen[str]) -> None:
    """Let a running `lookalike index` go in short slices until its first batch is on the server, and leave it
    stopped (SIGSTOP) there, so whatever happens to the server next is sure to come in the middle of the run
    (on a quiet machine the 24 images can all be written between two polls). SIGCONT resumes it."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while True:
        os.kill(process.pid, signal.SIGSTOP)
        if remote_rows(server, name, wait=False):
            break
        assert process.poll() is None, f"indexing ended before any row arrived: {process.communicate()}"
        assert time.monotonic() < deadline, "no row reached the server"
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.05)
    assert len(remote_rows(server, name)) < 24, "the run is stopped in its middle"


def catalog_ids(path: Path) -> list[int]:
    with Collection.open(path, create=False) as collection:
        return sorted(r.id for r in collection.catalog.records("ok"))


def assert_agree(server, name: str, collection_path: Path, expected: int) -> None:
    """Catalog and server hold the same images, each exactly once."""
    ids = catalog_ids(collection_path)
    assert len(ids) == expected
    with Collection.open(collection_path, create=False) as collection:
        index = collection.index()
        assert isinstance(index, MilvusIndex) and index.namespace is not None
        keys = remote_rows(server, name)
        own = [k - (index.namespace << NAMESPACE_SHIFT) for k in keys if k >> NAMESPACE_SHIFT == index.namespace]
    assert own == ids, "every image once, under its catalog id"
    assert len(keys) == len(set(keys))


@pytest.fixture()
def server(milvus_server):
    """The session's server, running again after a test that stopped it."""
    yield milvus_server
    if not milvus_server.running:
        milvus_server.start()


def test_two_collections_write_and_search_one_milvus_collection_at_once(server, tmp_path, data_dir):
    kind = server.kind("shared")
    cats = copy_label(data_dir, tmp_path / "a" / "photos", "cat", range(1, 13))
    dogs = copy_label(data_dir, tmp_path / "b" / "photos", "dog", range(1, 13))
    col_a, col_b = tmp_path / "a" / "collection", tmp_path / "b" / "collection"
    first = [
        lookalike("index", str(cats), "--collection", str(col_a), "--index", kind, "--json", wait=False),
        lookalike("index", str(dogs), "--collection", str(col_b), "--index", kind, "--json", wait=False),
    ]
    for process in first:
        code, out, err = finish(process)
        assert code == 0, err
        assert len(json.loads(out)["added"]) == 12

    # Nothing lost: both catalogs count from 1, and each keeps its 12 images apart in its own namespace.
    assert catalog_ids(col_a) == catalog_ids(col_b) == list(range(1, 13))
    assert len(remote_rows(server, "shared")) == 24
    assert_agree(server, "shared", col_a, 12)
    assert_agree(server, "shared", col_b, 12)

    # At once: A indexes a new cat while B searches; then each finds the other's images.
    copy_label(data_dir, cats, "cat", range(13, 14))
    new_cat = cats / "cat" / "cat.13.jpg"
    writing = lookalike("index", str(cats), "--collection", str(col_a), "--json", wait=False)
    searching = lookalike("search", str(cats / "cat" / "cat.1.jpg"), "--collection", str(col_b), "--json", wait=False)
    for process in (writing, searching):
        code, _, err = finish(process)
        assert code == 0, err
    with Collection.open(col_a, create=False) as a, Collection.open(col_b, create=False) as b:
        uid_a, uid_b = a.catalog.uid(), b.catalog.uid()
    assert uid_a != uid_b

    code, out, err = finish(lookalike("search", str(new_cat), "--collection", str(col_b), "-k", "3", "--json"))
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["path"] == str(new_cat.resolve()) and hits[0]["catalog"] == uid_a
    assert hits[0]["label"] == "cat" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["id"] >> NAMESPACE_SHIFT > 0, "another catalog's image comes under its full key, never a local id"

    dog = dogs / "dog" / "dog.1.jpg"
    code, out, err = finish(lookalike("search", str(dog), "--collection", str(col_a), "-k", "13", "--json"))
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["path"] == str(dog.resolve()) and hits[0]["catalog"] == uid_b
    found_dogs = {h["path"] for h in hits if h["catalog"] == uid_b}
    found_cats = {h["path"] for h in hits if h["catalog"] is None}
    assert found_dogs and found_cats, "a search covers both catalogs"
    assert {Path(p).parent.name for p in found_dogs} == {"dog"} and {Path(p).parent.name for p in found_cats} == {"cat"}
    # A label filter stays within the collection's own catalog.
    code, out, _ = finish(lookalike("search", str(dog), "--collection", str(col_a), "--label", "cat", "--json"))
    assert code == 0 and all(h["catalog"] is None for h in json.loads(out))

    # `lookalike stats` shows the Milvus side.
    code, out, err = finish(lookalike("stats", "--collection", str(col_a)))
    assert code == 0, err
    remote = json.loads(out)["remote_index"]
    assert remote["collection"] == collection_name(parse_kind(kind), DEFAULT_EMBEDDER)
    assert (remote["rows"], remote["this_catalog_rows"]) == (25, 13)
    assert remote["index_type"] == "HNSW" and remote["metric_type"] == "IP"
    assert {k: int(v) for k, v in remote["build_params"].items()} == {"M": 32, "efConstruction": 80}
    assert remote["search_params"] == {"ef": 64}
    assert remote["server_version"].startswith("v2.3") and remote["server"] == server.address
    assert remote["catalog"] == uid_a


def test_a_server_restart_during_indexing_is_waited_out(server, tmp_path, sample_folder):
    folder = sample_folder
    col = tmp_path / "collection"
    indexing = lookalike(
        "index", str(folder), "--collection", str(col), "--index", server.kind("restart"), "--batch-size", "2",
        env={"LOOKALIKE_MILVUS_RETRY": "300"}, wait=False,
    )  # fmt: skip
    stop_at_first_rows(server, "restart", indexing)
    server.restart()  # the run is stopped between or inside a write: its next one finds the server gone, then back
    os.kill(indexing.pid, signal.SIGCONT)
    code, out, err = finish(indexing)
    assert code == 0, err
    assert "24 added" in out
    assert_agree(server, "restart", col, 24)
    code, out, err = finish(lookalike("index", str(folder), "--collection", str(col)))
    assert code == 0 and "0 added" in out and "24 unchanged" in out, err
    assert_agree(server, "restart", col, 24)


def test_a_server_gone_fails_clearly_and_a_rerun_indexes_every_image_once(server, tmp_path, sample_folder):
    folder = sample_folder
    col = tmp_path / "collection"
    address = server.address
    indexing = lookalike(
        "index", str(folder), "--collection", str(col), "--index", server.kind("gone"), "--batch-size", "2",
        env={"LOOKALIKE_MILVUS_RETRY": "2"}, wait=False,
    )  # fmt: skip
    stop_at_first_rows(server, "gone", indexing)
    server.stop()  # the run's next write finds the server gone
    os.kill(indexing.pid, signal.SIGCONT)
    code, _, err = finish(indexing)
    assert code == 2
    assert f"lookalike: error: cannot reach the Milvus server at {address}: could not write" in err
    assert "Traceback" not in err
    committed = len(catalog_ids(col))
    assert 0 < committed < 24, "the batches before the failure stay committed, the failed one is rolled back"

    # Searching while the server is down: a clear error, not a hang (the process timeout bounds it).
    query = str(folder / "cat" / "cat.1.jpg")
    code, _, err = finish(lookalike("search", query, "--collection", str(col)))
    assert code == 2 and f"cannot reach the Milvus server at {address}" in err and "Traceback" not in err
    # A server that accepts connections but never answers: the connect timeout ends it.
    with socket.socket() as silent:
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        silent.bind(("127.0.0.1", server.port))
        silent.listen()
        code, _, err = finish(lookalike("search", query, "--collection", str(col)))
    assert code == 2 and f"cannot reach the Milvus server at {address}" in err and "Traceback" not in err

    server.start()
    code, out, err = finish(lookalike("index", str(folder), "--collection", str(col)))
    assert code == 0, err
    assert f"{24 - committed} added" in out
    assert_agree(server, "gone", col, 24)
    code, out, err = finish(lookalike("search", query, "--collection", str(col), "-k", "3", "--json"))
    assert code == 0 and len(json.loads(out)) == 3, err


def test_a_port_taken_before_the_first_start_is_picked_anew(tmp_path):
    """A port picked free may be taken before the server binds it (a CI run once lost one to another
    process's outgoing connection): the first start picks new ports instead of failing."""
    from pymilvus import MilvusClient

    from lookalike.index.milvus_server import EmbeddedMilvus

    second = EmbeddedMilvus(tmp_path / "second")
    taken = second.port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        with second:
            assert second.running and second.port != taken
            client = MilvusClient(uri=f"http://{second.address}", timeout=30)
            try:
                assert client.list_collections() == []  # it answers on the port it says
            finally:
                client.close()
