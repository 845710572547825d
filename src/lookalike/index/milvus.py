"""Milvus as an index backend: a Milvus server or cluster, or a Milvus Lite file on this machine.

Kinds (the collection's `index` setting, `lookalike index FOLDER --index KIND`):

    milvus://HOST:PORT/NAME        a Milvus server or cluster; NAME prefixes the remote collection names
    milvus-lite:PATH               a Milvus Lite database (a folder; ".db" is appended if missing)

Either may end in `?index=TYPE` (FLAT, HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8, IVF_PQ, DISKANN, AUTOINDEX) and
index knobs (`M`, `efConstruction`, `nlist`, `m`, `nbits` to build; `ef`, `nprobe`, `search_list` to search), e.g.
`milvus://10.0.0.5:19530/photos?index=IVF_SQ8&nlist=65536&nprobe=64`. The defaults are FLAT (exact) for
Milvus Lite and HNSW for a server. A token for a secured server is read from LOOKALIKE_MILVUS_TOKEN
("user:password" or an API key), so it never lands in config.json or an index marker.

The catalog stays the source of truth: the remote collection is a cache like a faiss file, and
`indexes/EMBEDDER.faiss` holds a small JSON marker naming it. Every write that the server does not
accept raises `IndexError_` (inside the catalog transaction, so the catalog change is rolled back) and
deletes that marker, so the next use rebuilds the remote collection from the catalog instead of trusting
one that may hold part of the failed write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..storage import write_json
from .base import IndexError_

REMOTE_PREFIX = "milvus://"
LITE_PREFIX = "milvus-lite:"
MARKER_FORMAT = "lookalike-milvus-1"
DEFAULT_NAME = "lookalike"
DEFAULT_PORT = 19530
TOKEN_ENV = "LOOKALIKE_MILVUS_TOKEN"

#: seconds to wait for a server to answer when connecting; an unreachable host fails after this
CONNECT_TIMEOUT = 10.0
#: bytes of vectors per insert call: well under Milvus's 64 MB gRPC message limit
INSERT_BYTES = 16 << 20
#: Milvus caps top-k (and nq) per search at 16384
MAX_TOPK = 16384
#: ids per `id in [...]` filter; a larger allowed set is searched in chunks whose top-k are merged
FILTER_CHUNK = 10_000
#: queries per search call
QUERY_BATCH = 1024
#: a server seals and indexes its growing segments sooner after a flush; worth it only after a bulk add
REMOTE_FLUSH_AFTER = 10_000

SEARCH_KEYS = {"ef", "nprobe", "search_list"}
#: search knobs that must be at least k
AT_LEAST_K = {"ef", "search_list"}
BUILD_DEFAULTS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "AUTOINDEX": {},
    "HNSW": {"M": 16, "efConstruction": 200},
    "HNSW_SQ": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "IVF_PQ": {"nlist": 1024, "nbits": 8},
    "DISKANN": {},
}
SEARCH_DEFAULTS: dict[str, dict[str, int]] = {
    "HNSW": {"ef": 64},
    "HNSW_SQ": {"ef": 64},
    "IVF_FLAT": {"nprobe": 16},
    "IVF_SQ8": {"nprobe": 16},
    "IVF_PQ": {"nprobe": 16},
    "DISKANN": {"search_list": 100},
}


def is_milvus_kind(kind: str) -> bool:
    return kind.startswith((REMOTE_PREFIX, LITE_PREFIX))


@dataclass(frozen=True)
class MilvusTarget:
    """Where the vectors live and how they are indexed there, parsed from a kind string."""

    uri: str  # what MilvusClient connects to: http://HOST:PORT, or an absolute path ending in .db
    prefix: str  # remote collection names are PREFIX_EMBEDDER
    index_type: str
    build_params: dict[str, int] = field(default_factory=dict)
    search_params: dict[str, int] = field(default_factory=dict)

    @property
    def lite(self) -> bool:
        return not self.uri.startswith("http")

    @property
    def kind(self) -> str:
        """The kind string that parses back to this target (relative Lite paths made absolute)."""
        base = f"{LITE_PREFIX}{self.uri}" if self.lite else f"{REMOTE_PREFIX}{self.uri[len('http://') :]}/{self.prefix}"
        knobs = {"index": self.index_type, **self.build_params, **self.search_params}
        return base + "?" + "&".join(f"{k}={v}" for k, v in knobs.items())

    def where(self) -> str:
        return f"Milvus Lite at {self.uri}" if self.lite else f"the Milvus server at {self.uri[len('http://') :]}"


def parse_kind(kind: str) -> MilvusTarget:
    """`milvus://HOST[:PORT][/NAME][?knobs]` or `milvus-lite:PATH[?knobs]` as a target."""
    body, _, query = kind.partition("?")
    knobs = dict(parse_qsl(query, keep_blank_values=True))
    if body.startswith(LITE_PREFIX):
        path = body[len(LITE_PREFIX) :].removeprefix("//")
        if not path:
            raise IndexError_(f"{kind!r}: give a file, e.g. milvus-lite:vectors.db")
        path = os.path.abspath(os.path.expanduser(path if path.endswith(".db") else path + ".db"))
        uri, prefix, default_type = path, DEFAULT_NAME, "FLAT"
    elif body.startswith(REMOTE_PREFIX):
        parts = urlsplit(body)
        if not parts.hostname:
            raise IndexError_(f"{kind!r}: give a host, e.g. milvus://localhost:19530/photos")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise IndexError_(f"{kind!r}: bad port ({exc})") from None
        uri, prefix, default_type = f"http://{parts.hostname}:{port}", parts.path.strip("/") or DEFAULT_NAME, "HNSW"
    else:
        raise IndexError_(f"{kind!r} is not a Milvus index kind (milvus://HOST:PORT/NAME or milvus-lite:PATH)")
    index_type = knobs.pop("index", default_type).upper()
    if index_type not in BUILD_DEFAULTS:
        raise IndexError_(f"{kind!r}: unknown Milvus index type {index_type}; available: {', '.join(BUILD_DEFAULTS)}")
    try:
        numbers = {k: int(v) for k, v in knobs.items()}
    except ValueError:
        raise IndexError_(f"{kind!r}: index knobs must be integers") from None
    build = {**BUILD_DEFAULTS[index_type], **{k: v for k, v in numbers.items() if k not in SEARCH_KEYS}}
    search = {**SEARCH_DEFAULTS.get(index_type, {}), **{k: v for k, v in numbers.items() if k in SEARCH_KEYS}}
    return MilvusTarget(uri, _valid_name(prefix), index_type, build, search)


def _valid_name(text: str) -> str:
    """A Milvus collection name (letters, digits, underscores; not starting with a digit) for `text`.

    A name that had to change gets a hash of the original, so "a-b" and "a_b" stay apart.
    """
    clean = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    if clean != text:
        clean = f"{clean[:200]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return clean


def collection_name(target: MilvusTarget, embedder: str) -> str:
    return _valid_name(f"{target.prefix}_{embedder}")


def _message(exc: BaseException) -> str:
    # MilvusException's repr is empty; its message carries the server's words
    return str(getattr(exc, "message", None) or exc).strip()


def _pq_m(dim: int) -> int:
    """PQ sub-quantizers: a divisor of dim giving 8 dimensions per byte code (dim/8), or the nearest below."""
    return next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


class MilvusIndex:
    """A `VectorIndex` kept in one Milvus collection (int64 primary key `id`, float vector `vector`, metric IP)."""

    def __init__(self, target: MilvusTarget, dim: int, collection: str, client: Any):
        self.target = target
        self.dim = dim
        self.collection = collection
        self._client = client
        self._count: int | None = None  # cached row count, dropped by every write
        self._unflushed = False  # Milvus Lite searches unflushed rows slowly: flush before the next search
        self._empty = False  # just created: the first add can insert instead of upsert
        self._marker: Path | None = None  # the marker file written by save / read by load

    # --- connecting ----------------------------------------------------------------------------

    @staticmethod
    def _connect(target: MilvusTarget) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise IndexError_("the Milvus backend needs pymilvus: pip install 'lookalike[milvus]'") from None
        if target.lite:
            Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            return MilvusClient(uri=target.uri, token=os.environ.get(TOKEN_ENV, ""), timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            hint = " (is another process using that file?)" if target.lite else ""
            raise IndexError_(f"cannot reach {target.where()}: {_message(exc)}{hint}") from exc

    @classmethod
    def create(cls, kind: str, dim: int, name: str = "vectors") -> MilvusIndex:
        """A new, empty remote collection for embedder `name` (an existing one of that name is dropped)."""
        from pymilvus import DataType, MilvusClient

        target = parse_kind(kind)
        client = cls._connect(target)
        index = cls(target, dim, collection_name(target, name), client)
        build = dict(target.build_params)
        if target.index_type == "IVF_PQ":
            build.setdefault("m", _pq_m(dim))
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=target.index_type, metric_type="IP", params=build)
        with index._calling("create the collection"):
            if client.has_collection(index.collection):
                client.drop_collection(index.collection)
            # Strong consistency: a search sees every write acknowledged before it
            client.create_collection(index.collection, schema=schema, index_params=params, consistency_level="Strong")
        index._count, index._empty = 0, True
        return index

    @classmethod
    def load(cls, path: Path) -> MilvusIndex:
        """Reconnect to the collection named by a marker file that `save` wrote."""
        try:
            marker = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{path}: not a Milvus index marker ({exc})") from None
        if marker.get("format") != MARKER_FORMAT:
            raise IndexError_(f"{path}: Milvus marker format {marker.get('format')!r} is not supported")
        target = parse_kind(marker["kind"])
        index = cls(target, int(marker["dim"]), marker["collection"], cls._connect(target))
        with index._calling("open the collection"):
            if not index._client.has_collection(index.collection):
                raise IndexError_(
                    f"{target.where()} has no collection {index.collection}; "
                    f"delete {path} to rebuild it from the catalog"
                )
            index._client.load_collection(index.collection)
            fields = index._client.describe_collection(index.collection)["fields"]
        dims = [int(f["params"]["dim"]) for f in fields if f["name"] == "vector"]
        if dims != [index.dim]:
            raise IndexError_(f"{index.collection} holds vectors of {dims} dims, the marker says {index.dim}")
        index._marker = Path(path)
        return index

    def close(self) -> None:
        self._client.close()

    def wait_until_indexed(self, timeout: float = 3600.0) -> None:
        """Flush, then block until every segment is indexed (searches before that fall back to brute force).

        Milvus builds segment indexes in the background after a flush, on a server and in Milvus Lite
        alike. A server reports progress in describe_index; Milvus Lite (always "Finished" there) is
        waited for through its engine when it runs in this process.
        """
        deadline = time.monotonic() + timeout
        with self._calling("wait for the index"):
            self._client.flush(self.collection)
            self._unflushed = False
            engine = self._lite_engine()
            if engine is not None:
                engine._wait_for_bg(timeout)  # its single background worker: compaction, then index builds
                return
            while True:
                info = self._client.describe_index(self.collection, "vector")
                if not int(info.get("pending_index_rows", 0)) and str(info.get("state", "Finished")) == "Finished":
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"index still building after {timeout:.0f} s: {info}")
                time.sleep(1.0)

    def _lite_engine(self) -> Any:
        """Milvus Lite's collection object when its server runs in this process, else None (a private API)."""
        if not self.target.lite:
            return None
        try:
            from milvus_lite.server_manager import server_manager_instance

            entry = server_manager_instance._servers.get(self.target.uri)
            engine = entry[1].get_collection(self.collection) if entry else None
        except Exception:
            return None
        return engine if hasattr(engine, "_wait_for_bg") else None

    # --- the VectorIndex interface ----------------------------------------------------------------

    @property
    def kind(self) -> str:
        return f"{'Milvus Lite' if self.target.lite else 'Milvus'} {self.target.index_type}"

    def __len__(self) -> int:
        if self._count is None:
            with self._calling("count the vectors"):
                rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
            self._count = int(rows[0]["count(*)"])
        return self._count

    def ids(self) -> np.ndarray:
        """Every stored id (read in pages; fine for checks and tools, not for every request)."""
        with self._calling("list the ids"):
            if self._unflushed:
                self._client.flush(self.collection)
                self._unflushed = False
            pages = self._client.query_iterator(self.collection, batch_size=10_000, output_fields=["id"])
            found: list[int] = []
            while page := pages.next():
                found.extend(int(row["id"]) for row in page)
            pages.close()
        return np.array(found, dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not len(ids) and not len(vectors):
            return  # an empty catalog gives (0, 0) vectors
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexError_(f"vectors have shape {vectors.shape}, the index wants (n, {self.dim})")
        if len(ids) != len(vectors):
            raise IndexError_(f"{len(ids)} ids but {len(vectors)} vectors")
        # A repeated id keeps its last vector (Milvus refuses duplicate keys in one upsert).
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        ids, vectors = ids[keep], vectors[keep]
        # Nothing to replace in a fresh collection: plain inserts are cheaper than upserts on a server.
        write = self._client.insert if self._empty else self._client.upsert
        self._empty = False
        self._count = None
        rows = max(1, INSERT_BYTES // (4 * self.dim))
        with self._calling(f"write {len(ids)} vectors", write=True), _progress(len(ids), rows, self.collection) as bar:
            for start in range(0, len(ids), rows):
                chunk = slice(start, start + rows)
                batch = zip(ids[chunk].tolist(), vectors[chunk], strict=True)
                write(self.collection, [{"id": i, "vector": v} for i, v in batch])
                bar(min(rows, len(ids) - start))
            if not self.target.lite and len(ids) >= REMOTE_FLUSH_AFTER:
                self._client.flush(self.collection)
        self._unflushed = self.target.lite

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return
        self._count = None
        with self._calling(f"remove {len(ids)} vectors", write=True):
            for start in range(0, len(ids), FILTER_CHUNK):
                self._client.delete(self.collection, ids=[int(i) for i in ids[start : start + FILTER_CHUNK]])
        self._unflushed = self.target.lite

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        if k <= 0 or not len(queries):
            return scores, found
        if allowed_ids is None:
            filters = [""]
        else:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            if not len(allowed):
                return scores, found
            # Each chunk's best k are exact within the chunk, so the best k of their union are too.
            filters = [
                "id in [" + ",".join(map(str, allowed[i : i + FILTER_CHUNK].tolist())) + "]"
                for i in range(0, len(allowed), FILTER_CHUNK)
            ]
        limit = min(k, MAX_TOPK)
        params = {k_: max(v, limit) if k_ in AT_LEAST_K else v for k_, v in self.target.search_params.items()}
        with self._calling("search"):
            if self._unflushed:
                self._client.flush(self.collection)
                self._unflushed = False
            for start in range(0, len(queries), QUERY_BATCH):
                block = queries[start : start + QUERY_BATCH]
                hits: list[list[tuple[float, int]]] = [[] for _ in block]
                for expr in filters:
                    result = self._client.search(
                        self.collection,
                        data=block,
                        limit=limit,
                        filter=expr,
                        output_fields=["id"],  # without it Milvus Lite sends every vector back
                        search_params={"metric_type": "IP", "params": params},
                        anns_field="vector",
                    )
                    for row, answer in zip(hits, result, strict=True):
                        row.extend((float(hit["distance"]), int(hit["id"])) for hit in answer)
                for i, row in enumerate(hits, start=start):
                    row.sort(key=lambda hit: -hit[0])
                    best = row[:limit]
                    scores[i, : len(best)] = [s for s, _ in best]
                    found[i, : len(best)] = [j for _, j in best]
        return scores, found

    def save(self, path: Path) -> None:
        """Write the marker naming the remote collection (the vectors themselves are already there)."""
        marker = {"format": MARKER_FORMAT, "kind": self.target.kind, "collection": self.collection, "dim": self.dim}
        write_json(Path(path), marker)
        self._marker = Path(path)

    # --- errors ------------------------------------------------------------------------------------

    @contextmanager
    def _calling(self, what: str, *, write: bool = False) -> Iterator[None]:
        """Turn any client or server failure into one clear IndexError_.

        After a failed write the remote collection may hold part of it, so the marker goes: the next
        use rebuilds from the catalog rather than trust it.
        """
        try:
            yield
        except IndexError_:
            raise
        except Exception as exc:
            if write and self._marker is not None:
                self._marker.unlink(missing_ok=True)
            code = getattr(exc, "code", None)
            if code == 2 or "connect" in _message(exc).lower():
                problem = f"cannot reach {self.target.where()}"
            else:
                problem = f"{self.target.where()} refused"
            raise IndexError_(f"{problem}: could not {what} in collection {self.collection}: {_message(exc)}") from exc


@contextmanager
def _progress(total: int, batch: int, name: str) -> Iterator[Any]:
    """A tqdm bar on stderr for writes of more than one batch (tqdm hides it when stderr is not a terminal)."""
    if total <= batch:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=f"Milvus {name}", unit="vec", file=sys.stderr, disable=None, leave=False) as bar:
        yield bar.update


def release_lite(path: str | os.PathLike[str]) -> None:
    """Stop the Milvus Lite server this process runs for `path` (servers otherwise stop at exit)."""
    from milvus_lite.server_manager import server_manager_instance

    path = os.path.abspath(os.fspath(path))
    server_manager_instance.release_server(path if path.endswith(".db") else path + ".db")


__all__ = ["MilvusIndex", "MilvusTarget", "collection_name", "is_milvus_kind", "parse_kind", "release_lite"]
