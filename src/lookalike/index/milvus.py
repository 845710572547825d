"""Milvus as an index backend: a Milvus server or cluster, or a Milvus Lite file on this machine.

Kinds (the collection's `index` setting, `lookalike index FOLDER --index KIND`):

    milvus://HOST:PORT/NAME        a Milvus server or cluster; NAME prefixes the remote collection names
    milvus-lite:PATH               a Milvus Lite database (a folder; ".db" is appended if missing)

Either may end in `?index=TYPE` (FLAT, HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8, IVF_PQ, DISKANN, AUTOINDEX) and
index knobs (`M`, `efConstruction`, `nlist`, `m`, `nbits` to build; `ef`, `nprobe`, `search_list` to search), e.g.
`milvus://10.0.0.5:19530/photos?index=IVF_SQ8&nlist=65536&nprobe=64`. The defaults are FLAT (exact) for
Milvus Lite and HNSW for a server, with the same graph constants as the faiss "hnsw" kind (specs.py). A
token for a secured server is read from LOOKALIKE_MILVUS_TOKEN ("user:password" or an API key), so it
never lands in config.json or an index marker.

One remote collection per NAME and embedder, shared by every catalog (every lookalike collection, on any
machine) that points at it. Catalog image ids collide between catalogs (each SQLite catalog counts from
1), so a row's primary key is `namespace << 32 | image id`: the namespace is a 31-bit number drawn from
the catalog's uid (`Catalog.uid`) and checked against the rows already there, and each row also holds its
catalog's uid, path and label. A catalog writes, counts, lists and rebuilds only its own key range; a
search covers every catalog, so images indexed by another machine come back too, under their full key
(>= 2**32, never a local id) and described by `foreign_records`. An index used without a catalog (tests,
benchmarks, bulk loaders) owns the whole remote collection, keys are the ids it is given, and creating
it again starts from an empty collection.

The catalog stays the source of truth: the remote collection is a cache like a faiss file, and
`indexes/EMBEDDER.faiss` holds a small JSON marker naming it. On a server, writes wait and retry while
the server is unreachable (a restart) for up to LOOKALIKE_MILVUS_RETRY seconds (60); searches and reads
fail at once with a clear `IndexError_`. Every write the server does not accept raises `IndexError_`
(inside the catalog transaction, so the catalog change is rolled back) and deletes that marker, so the
next use rebuilds this catalog's rows from the catalog instead of trusting ones that may hold part of
the failed write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..storage import write_json
from .base import FOREIGN_IDS_FROM, IndexError_, IndexOwner, Progress
from .specs import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M

REMOTE_PREFIX = "milvus://"
LITE_PREFIX = "milvus-lite:"
MARKER_FORMAT = "lookalike-milvus-2"
DEFAULT_NAME = "lookalike"
DEFAULT_PORT = 19530
TOKEN_ENV = "LOOKALIKE_MILVUS_TOKEN"
#: seconds a write waits for an unreachable server to come back (a restart) before it fails
RETRY_ENV = "LOOKALIKE_MILVUS_RETRY"
RETRY_SECONDS = 60.0
#: seconds one call may take before it fails (a server that accepts connections but never answers)
TIMEOUT_ENV = "LOOKALIKE_MILVUS_TIMEOUT"
CALL_TIMEOUT = 120.0
#: seconds a read waits for a restarted server to load the collection again
LOAD_WAIT = 30.0

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
#: a catalog's keys are namespace << NAMESPACE_SHIFT | image id, so its image ids must stay below 2**32
#: (other catalogs' keys, >= 2**32, are what the collection calls foreign ids)
NAMESPACE_SHIFT = FOREIGN_IDS_FROM.bit_length() - 1
#: longest path and label stored beside a vector (bytes; PATH_MAX on Linux is 4096)
PATH_BYTES, LABEL_BYTES = 4096, 512

#: Searches see every write this process made (Session). Strong also waits for every other client's writes
#: acknowledged before the search, which costs a server time tick (~200 ms) per search; with Session another
#: process's writes show up within about that time instead.
CONSISTENCY_LEVELS = ("Session", "Strong", "Bounded", "Eventually")
DEFAULT_CONSISTENCY = "Session"

SEARCH_KEYS = {"ef", "nprobe", "search_list"}
#: search knobs that must be at least k
AT_LEAST_K = {"ef", "search_list"}
BUILD_DEFAULTS: dict[str, dict[str, int]] = {
    "FLAT": {},
    "AUTOINDEX": {},
    # the faiss "hnsw" kind's graph, so the two engines compare like for like
    "HNSW": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
    "HNSW_SQ": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "IVF_PQ": {"nlist": 1024, "nbits": 8},
    "DISKANN": {},
}
SEARCH_DEFAULTS: dict[str, dict[str, int]] = {
    "HNSW": {"ef": HNSW_EF_SEARCH},
    "HNSW_SQ": {"ef": HNSW_EF_SEARCH},
    "IVF_FLAT": {"nprobe": 16},
    "IVF_SQ8": {"nprobe": 16},
    "IVF_PQ": {"nprobe": 16},
    "DISKANN": {"search_list": 100},
}

T = TypeVar("T")


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
    consistency: str = DEFAULT_CONSISTENCY  # of searches

    @property
    def lite(self) -> bool:
        return not self.uri.startswith("http")

    @property
    def kind(self) -> str:
        """The kind string that parses back to this target (relative Lite paths made absolute)."""
        base = f"{LITE_PREFIX}{self.uri}" if self.lite else f"{REMOTE_PREFIX}{self.uri[len('http://') :]}/{self.prefix}"
        knobs: dict[str, object] = {"index": self.index_type, **self.build_params, **self.search_params}
        if self.consistency != DEFAULT_CONSISTENCY:
            knobs["consistency"] = self.consistency
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
    consistency = knobs.pop("consistency", DEFAULT_CONSISTENCY).capitalize()
    if consistency not in CONSISTENCY_LEVELS:
        raise IndexError_(f"{kind!r}: consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
    if index_type not in BUILD_DEFAULTS:
        raise IndexError_(f"{kind!r}: unknown Milvus index type {index_type}; available: {', '.join(BUILD_DEFAULTS)}")
    try:
        numbers = {k: int(v) for k, v in knobs.items()}
    except ValueError:
        raise IndexError_(f"{kind!r}: index knobs must be integers") from None
    build = {**BUILD_DEFAULTS[index_type], **{k: v for k, v in numbers.items() if k not in SEARCH_KEYS}}
    search = {**SEARCH_DEFAULTS.get(index_type, {}), **{k: v for k, v in numbers.items() if k in SEARCH_KEYS}}
    return MilvusTarget(uri, _valid_name(prefix), index_type, build, search, consistency)


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


def _seconds(env: str, default: float) -> float:
    try:
        return float(os.environ.get(env, default))
    except ValueError:
        return default


def _namespace(uid: str, attempt: int) -> int:
    """The attempt-th candidate namespace (1 .. 2**31 - 1) of catalog `uid`."""
    digest = hashlib.blake2b(f"{uid}/{attempt}".encode(), digest_size=4).digest()
    return (int.from_bytes(digest, "big") & 0x7FFF_FFFF) or 1


def _clip(text: str | None, limit: int) -> str:
    return (text or "").encode()[:limit].decode(errors="ignore")


def _transient(exc: BaseException) -> bool:
    """A failure a restarting server gives: unreachable, or up but its collections not loaded yet."""
    text = _message(exc).lower()
    return getattr(exc, "code", None) in (2, 101) or "connect" in text or "not loaded" in text or "unavailable" in text


@dataclass(frozen=True)
class ForeignRecord:
    """A row another catalog wrote into the shared remote collection: what its search hits refer to."""

    key: int  # the remote primary key, the id such a hit is returned under
    catalog: str  # the uid of the catalog that wrote it
    id: int  # its image id in that catalog
    path: str
    label: str | None


class MilvusIndex:
    """A `VectorIndex` kept in one Milvus collection.

    Schema: `id` (INT64 primary key: namespace << 32 | image id, or the bare id without a catalog),
    `catalog` (the owner's uid), `path`, `label` (VARCHAR) and `vector` (FLOAT_VECTOR, metric IP).
    """

    def __init__(
        self,
        target: MilvusTarget,
        dim: int,
        collection: str,
        client: Any,
        owner: IndexOwner | None = None,
        namespace: int | None = None,
    ):
        self.target = target
        self.dim = dim
        self.collection = collection
        self._client = client
        self._owner = owner
        self.catalog = owner.uid() if owner is not None else ""
        self.namespace = namespace  # None: this index owns the whole remote collection
        self._count: int | None = None  # cached row count, dropped by every write
        self._unflushed = False  # Milvus Lite searches unflushed rows slowly: flush before the next search
        # Every key above this is absent: none was written since this index cleared its rows (None: unknown).
        # New catalog images get ever larger ids, so their vectors can be inserted, cheaper than upserts.
        self._absent_above: int | None = None
        # The first search after this process's own writes reads at Strong consistency, so it sees them
        # however far behind the server is (Session alone relies on the client tracking write timestamps).
        self._wrote = False
        self._marker: Path | None = None  # the marker file written by save / read by load
        self._timeout = _seconds(TIMEOUT_ENV, CALL_TIMEOUT)

    # --- keys ------------------------------------------------------------------------------------

    @property
    def _base(self) -> int:
        return 0 if self.namespace is None else self.namespace << NAMESPACE_SHIFT

    def _own_filter(self) -> str:
        """The filter selecting this catalog's rows ("" = every row, when no catalog owns the index)."""
        if self.namespace is None:
            return ""
        return f"id >= {self._base} and id < {self._base + (1 << NAMESPACE_SHIFT)}"

    def _keys(self, ids: np.ndarray) -> np.ndarray:
        if self.namespace is not None and len(ids) and (ids.min() < 0 or ids.max() >= 1 << NAMESPACE_SHIFT):
            raise IndexError_(f"image ids must lie in [0, 2**{NAMESPACE_SHIFT}) in a shared Milvus collection")
        return ids + self._base

    def _ids_of(self, keys: np.ndarray) -> np.ndarray:
        """Keys found by a search as ids: own rows -> image ids, other catalogs' rows -> their keys (>= 2**32),
        rows written without a catalog -> -1 (they cannot be told from image ids)."""
        if self.namespace is None:
            return keys
        own = (keys >= self._base) & (keys < self._base + (1 << NAMESPACE_SHIFT))
        foreign = keys >= 1 << NAMESPACE_SHIFT
        return np.where(own, keys - self._base, np.where(foreign, keys, -1))

    # --- connecting ----------------------------------------------------------------------------

    @staticmethod
    def _connect(target: MilvusTarget) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise IndexError_("the Milvus backend needs pymilvus: pip install 'lookalike[milvus]'") from None
        # pymilvus logs every failed call and reconnection to stderr with a traceback, through handlers of
        # its own; each failure reaches the caller here as one IndexError_, so that log would only repeat it
        # (or report a retry that then succeeds).
        for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if target.lite:
            Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            return MilvusClient(uri=target.uri, token=os.environ.get(TOKEN_ENV, ""), timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            hint = " (is another process using that file?)" if target.lite else ""
            raise IndexError_(f"cannot reach {target.where()}: {_message(exc)}{hint}") from exc

    @classmethod
    def create(cls, kind: str, dim: int, name: str = "vectors", owner: IndexOwner | None = None) -> MilvusIndex:
        """An index for embedder `name` holding nothing yet.

        Without an owner the remote collection is made anew (an existing one of that name is dropped). With
        one, a remote collection other catalogs share is kept and only this catalog's rows are deleted; one
        from before catalogs shared collections (no `catalog` field) is replaced.
        """
        from pymilvus import DataType, MilvusClient

        target = parse_kind(kind)
        client = cls._connect(target)
        index = cls(target, dim, collection_name(target, name), client, owner)
        build = dict(target.build_params)
        if target.index_type == "IVF_PQ":
            build.setdefault("m", _pq_m(dim))
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("catalog", DataType.VARCHAR, max_length=64)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_BYTES)
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=target.index_type, metric_type="IP", params=build)

        def make() -> None:
            if client.has_collection(index.collection, timeout=index._timeout):
                if owner is not None and index._shareable():
                    client.load_collection(index.collection, timeout=index._timeout)
                    return
                client.drop_collection(index.collection, timeout=index._timeout)
            # Strong by default (counts and listings see every acknowledged write); searches ask for their own level
            client.create_collection(
                index.collection, schema=schema, index_params=params, consistency_level="Strong", timeout=index._timeout
            )

        index._rpc("create the collection", make, write=True)
        if owner is not None:
            index.namespace = index._rpc("claim a namespace", index._claim_namespace)
            index._rpc("clear this catalog's rows", lambda: client.delete(index.collection, filter=index._own_filter()))
        index._count, index._absent_above = 0, -1
        return index

    def _shareable(self) -> bool:
        """Whether the existing remote collection has this version's schema and dimension (else IndexError_)."""
        fields = {f["name"]: f for f in self._client.describe_collection(self.collection)["fields"]}
        if "catalog" not in fields:
            return False  # written before catalogs shared collections: rebuilt
        dims = int(fields["vector"]["params"]["dim"])
        if dims != self.dim:
            raise IndexError_(
                f"{self.target.where()} already has {self.collection} with vectors of {dims} dims, not {self.dim}: "
                "give this collection another NAME (milvus://HOST:PORT/NAME)"
            )
        return True

    def _claim_namespace(self) -> int:
        """The first candidate namespace of this catalog that no other catalog's rows use."""
        for attempt in range(64):
            ns = _namespace(self.catalog, attempt)
            base = ns << NAMESPACE_SHIFT
            taken = self._client.query(
                self.collection,
                filter=f'id >= {base} and id < {base + (1 << NAMESPACE_SHIFT)} and catalog != "{self.catalog}"',
                output_fields=["id"],
                limit=1,
                timeout=self._timeout,
            )
            if not taken:
                return ns
        raise IndexError_(f"no free namespace for catalog {self.catalog} in {self.collection}")

    @classmethod
    def load(cls, path: Path, owner: IndexOwner | None = None) -> MilvusIndex:
        """Reconnect to the collection named by a marker file that `save` wrote."""
        try:
            marker = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise IndexError_(f"{path}: not a Milvus index marker ({exc})") from None
        if marker.get("format") != MARKER_FORMAT:
            raise IndexError_(
                f"{path}: Milvus marker format {marker.get('format')!r} is not supported; delete it to rebuild"
            )
        if owner is not None and marker.get("catalog") not in (None, owner.uid()):
            raise IndexError_(f"{path} belongs to another catalog ({marker['catalog']}); delete it to rebuild")
        target = parse_kind(marker["kind"])
        index = cls(target, int(marker["dim"]), marker["collection"], cls._connect(target), owner, marker["namespace"])
        index.catalog = marker.get("catalog") or ""

        def open_it() -> list[dict[str, Any]]:
            if not index._client.has_collection(index.collection, timeout=index._timeout):
                raise IndexError_(
                    f"{target.where()} has no collection {index.collection}; "
                    f"delete {path} to rebuild it from the catalog"
                )
            index._client.load_collection(index.collection, timeout=index._timeout)
            return index._client.describe_collection(index.collection, timeout=index._timeout)["fields"]

        fields = index._rpc("open the collection", open_it)
        dims = [int(f["params"]["dim"]) for f in fields if f["name"] == "vector"]
        if dims != [index.dim] or "catalog" not in {f["name"] for f in fields}:
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
        self._rpc("flush", lambda: self._client.flush(self.collection, timeout=self._timeout))
        self._unflushed = False
        engine = self._lite_engine()
        if engine is not None:
            engine._wait_for_bg(timeout)  # its single background worker: compaction, then index builds
            return
        while True:
            info = self._rpc("wait for the index", lambda: self._client.describe_index(self.collection, "vector"))
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
        """This catalog's vectors (every vector when no catalog owns the index)."""
        if self._count is None:
            self._count = self._count_rows(self._own_filter())
        return self._count

    def _count_rows(self, expr: str) -> int:
        self._flush_if_needed()
        rows = self._rpc(
            "count the vectors",
            lambda: self._client.query(self.collection, filter=expr, output_fields=["count(*)"], timeout=self._timeout),
        )
        return int(rows[0]["count(*)"])

    def _flush_if_needed(self) -> None:
        if self._unflushed:
            self._rpc("flush", lambda: self._client.flush(self.collection, timeout=self._timeout))
            self._unflushed = False

    def ids(self) -> np.ndarray:
        """Every stored id of this catalog (read in pages; fine for checks and tools, not for every request)."""
        self._flush_if_needed()

        def read() -> list[int]:
            pages = self._client.query_iterator(
                self.collection, batch_size=10_000, filter=self._own_filter(), output_fields=["id"]
            )
            found: list[int] = []
            while page := pages.next():
                found.extend(int(row["id"]) for row in page)
            pages.close()
            return found

        return np.array(self._rpc("list the ids", read), dtype=np.int64) - self._base

    def add(self, ids: np.ndarray, vectors: np.ndarray, progress: Progress | None = None) -> None:
        """Add or replace vectors; `progress("milvus", done, total)` is called after each batch sent."""
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
        keys = self._keys(ids)
        records = self._owner.get_many(ids.tolist()) if self._owner is not None else {}
        self._count = None
        rows = max(1, INSERT_BYTES // (4 * self.dim))
        for start in range(0, len(ids), rows):
            chunk = slice(start, start + rows)
            batch = []
            for image_id, key, vector in zip(ids[chunk].tolist(), keys[chunk].tolist(), vectors[chunk], strict=True):
                record = records.get(image_id)
                path, label = (record.path, record.label) if record is not None else ("", "")
                batch.append(
                    {
                        "id": key,
                        "catalog": self.catalog,
                        "path": _clip(path, PATH_BYTES),
                        "label": _clip(label, LABEL_BYTES),
                        "vector": vector,
                    }
                )
            self._write(f"write {len(ids)} vectors", batch, int(keys[chunk].min()), int(keys[chunk].max()))
            if progress is not None:
                progress("milvus", min(start + rows, len(ids)), len(ids))
        if not self.target.lite and len(ids) >= REMOTE_FLUSH_AFTER:
            self._rpc("flush", lambda: self._client.flush(self.collection, timeout=self._timeout), write=True)
        self._unflushed = self.target.lite
        self._wrote = True

    def _write(self, what: str, batch: list[dict[str, Any]], low: int, high: int) -> None:
        """Send one batch of keys low..high: inserted when all are absent, else upserted. A retried call
        upserts, so a batch the server took before its answer was lost is not stored twice."""
        absent = self._absent_above is not None and low > self._absent_above
        attempts = 0

        def send() -> None:
            nonlocal attempts
            write = self._client.insert if absent and not attempts else self._client.upsert
            attempts += 1
            write(self.collection, batch, timeout=self._timeout)

        self._rpc(what, send, write=True)
        if self._absent_above is not None:
            self._absent_above = max(self._absent_above, high)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if self.namespace is not None:
            ids = ids[(ids >= 0) & (ids < 1 << NAMESPACE_SHIFT)]  # other ids are not this catalog's
        if not len(ids):
            return
        self._count = None
        keys = self._keys(ids)
        for start in range(0, len(keys), FILTER_CHUNK):
            chunk = [int(i) for i in keys[start : start + FILTER_CHUNK]]
            self._rpc(
                f"remove {len(ids)} vectors",
                lambda c=chunk: self._client.delete(self.collection, ids=c, timeout=self._timeout),
                write=True,
            )
        self._unflushed = self.target.lite
        self._wrote = True

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best of every catalog's rows (or of `allowed_ids`: this catalog's image ids, or other
        catalogs' keys as returned by an earlier search)."""
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        if k <= 0 or not len(queries):
            return scores, found
        if allowed_ids is None:
            filters = [""]
        else:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            if self.namespace is not None:
                local = (allowed >= 0) & (allowed < 1 << NAMESPACE_SHIFT)
                allowed = np.unique(np.where(local, allowed + self._base, allowed))
            if not len(allowed):
                return scores, found
            # Each chunk's best k are exact within the chunk, so the best k of their union are too.
            filters = [
                "id in [" + ",".join(map(str, allowed[i : i + FILTER_CHUNK].tolist())) + "]"
                for i in range(0, len(allowed), FILTER_CHUNK)
            ]
        limit = min(k, MAX_TOPK)
        params = {k_: max(v, limit) if k_ in AT_LEAST_K else v for k_, v in self.target.search_params.items()}
        self._flush_if_needed()
        consistency = "Strong" if self._wrote else self.target.consistency
        for start in range(0, len(queries), QUERY_BATCH):
            block = queries[start : start + QUERY_BATCH]
            hits: list[list[tuple[float, int]]] = [[] for _ in block]
            for expr in filters:
                result = self._rpc(
                    "search",
                    lambda b=block, e=expr: self._client.search(
                        self.collection,
                        data=b,
                        limit=limit,
                        filter=e,
                        output_fields=["id"],  # without it Milvus Lite sends every vector back
                        search_params={"metric_type": "IP", "params": params},
                        anns_field="vector",
                        consistency_level=consistency,
                        timeout=self._timeout,
                    ),
                )
                for row, answer in zip(hits, result, strict=True):
                    row.extend((float(hit["distance"]), int(hit["id"])) for hit in answer)
            for i, row in enumerate(hits, start=start):
                row.sort(key=lambda hit: -hit[0])
                best = [(s, int(j)) for s, j in zip(*self._mapped(row), strict=True) if j >= 0][:limit]
                scores[i, : len(best)] = [s for s, _ in best]
                found[i, : len(best)] = [j for _, j in best]
        self._wrote = False
        return scores, found

    def _mapped(self, row: list[tuple[float, int]]) -> tuple[list[float], np.ndarray]:
        keys = np.array([j for _, j in row], dtype=np.int64)
        return [s for s, _ in row], self._ids_of(keys)

    def foreign_records(self, keys: Iterable[int]) -> dict[int, ForeignRecord]:
        """What other catalogs' rows found by `search` (keys >= 2**32 that are not this catalog's) hold."""
        wanted = self._foreign_keys(keys)
        found: dict[int, ForeignRecord] = {}
        for start in range(0, len(wanted), FILTER_CHUNK):
            chunk = wanted[start : start + FILTER_CHUNK]
            rows = self._rpc(
                "read other catalogs' rows",
                lambda c=chunk: self._client.query(
                    self.collection,
                    filter=f"id in [{','.join(map(str, c))}]",
                    output_fields=["id", "catalog", "path", "label"],
                    timeout=self._timeout,
                ),
            )
            for row in rows:
                key = int(row["id"])
                local = key & ((1 << NAMESPACE_SHIFT) - 1)
                found[key] = ForeignRecord(key, str(row["catalog"]), local, str(row["path"]), row["label"] or None)
        return found

    def _foreign_keys(self, keys: Iterable[int]) -> list[int]:
        """The keys among `keys` that are other catalogs' rows (>= 2**32, not this catalog's namespace)."""
        wanted = sorted({int(k) for k in keys if int(k) >= 1 << NAMESPACE_SHIFT})
        return [k for k in wanted if self.namespace is None or k >> NAMESPACE_SHIFT != self.namespace]

    def foreign_vectors(self, keys: Iterable[int]) -> dict[int, np.ndarray]:
        """The vectors of other catalogs' rows found by `search` (for query expansion); a key gone is left out."""
        found: dict[int, np.ndarray] = {}
        wanted = self._foreign_keys(keys)
        for start in range(0, len(wanted), FILTER_CHUNK):
            chunk = wanted[start : start + FILTER_CHUNK]
            rows = self._rpc(
                "read other catalogs' vectors",
                lambda c=chunk: self._client.query(
                    self.collection,
                    filter=f"id in [{','.join(map(str, c))}]",
                    output_fields=["id", "vector"],
                    timeout=self._timeout,
                ),
            )
            found.update((int(row["id"]), np.asarray(row["vector"], dtype=np.float32)) for row in rows)
        return found

    def describe(self) -> dict[str, Any]:
        """The remote side, for `lookalike stats`: where, which collection, how many rows, which index."""

        def read() -> dict[str, Any]:
            info = dict(self._client.describe_index(self.collection, "vector", timeout=self._timeout))
            version = self._client.get_server_version(timeout=self._timeout)
            return {"index": info, "version": version}

        remote = self._rpc("describe the collection", read)
        info = remote["index"]
        known = {"index_type", "metric_type", "field_name", "index_name", "total_rows", "indexed_rows"}
        known |= {"pending_index_rows", "state", "params"}
        build = {k: v for k, v in info.items() if k not in known}
        if isinstance(info.get("params"), dict):
            build.update(info["params"])
        total = self._count_rows("")
        described: dict[str, Any] = {
            "engine": "Milvus Lite" if self.target.lite else "Milvus",
            "server": self.target.uri if self.target.lite else self.target.uri[len("http://") :],
            "server_version": str(remote["version"]),
            "collection": self.collection,
            "rows": total,
            "this_catalog_rows": len(self) if self.namespace is not None else total,
            "index_type": info.get("index_type"),
            "metric_type": info.get("metric_type"),
            "build_params": build,
            "search_params": dict(self.target.search_params),
            "index_state": info.get("state"),
            "indexed_rows": info.get("indexed_rows"),
            "pending_index_rows": info.get("pending_index_rows"),
        }
        if self.namespace is not None:
            described["catalog"] = self.catalog
            described["namespace"] = self.namespace
        return described

    def save(self, path: Path) -> None:
        """Write the marker naming the remote collection (the vectors themselves are already there)."""
        marker = {
            "format": MARKER_FORMAT,
            "kind": self.target.kind,
            "collection": self.collection,
            "dim": self.dim,
            "catalog": self.catalog or None,
            "namespace": self.namespace,
        }
        write_json(Path(path), marker)
        self._marker = Path(path)

    # --- calls and errors ----------------------------------------------------------------------------

    def _reload(self) -> None:
        """Ask a restarted server to load the collection again (it does so by itself, in its own time)."""
        with contextlib.suppress(Exception):  # the retry that follows reports what is wrong
            self._client.load_collection(self.collection, timeout=self._timeout)

    def _rpc(self, what: str, call: Callable[[], T], *, write: bool = False) -> T:
        """Run one client call; turn any client or server failure into one clear IndexError_.

        On a server, a write waits and retries while the server is unreachable or has not loaded the
        collection again (a restart), for up to LOOKALIKE_MILVUS_RETRY seconds; other calls retry only
        the few seconds a restarted server takes to load its collections. After a failed write the
        remote collection may hold part of it, so the marker goes: the next use rebuilds rather than trust it.
        """
        patience = _seconds(RETRY_ENV, RETRY_SECONDS) if write else LOAD_WAIT
        deadline = time.monotonic() + (0.0 if self.target.lite else patience)
        goaways = 0
        while True:
            try:
                return call()
            except IndexError_:
                raise
            except Exception as exc:
                # gRPC closes a connection that pinged "too often" while a busy server answered slowly
                # (GOAWAY); the client reconnects on the next call, so that one is retried on Lite too
                goaway = "too many pings" in _message(exc).lower() and goaways < 3
                goaways += goaway
                unreachable = getattr(exc, "code", None) == 2 or "connect" in _message(exc).lower()
                retry = goaway or (_transient(exc) and (write or not unreachable) and time.monotonic() < deadline)
                if retry:
                    time.sleep(1.0)
                    if "not loaded" in _message(exc).lower():
                        self._reload()
                    continue
                if write and self._marker is not None:
                    self._marker.unlink(missing_ok=True)
                problem = f"cannot reach {self.target.where()}" if unreachable else f"{self.target.where()} refused"
                raise IndexError_(
                    f"{problem}: could not {what} in collection {self.collection}: {_message(exc)}"
                ) from exc


def release_lite(path: str | os.PathLike[str]) -> None:
    """Stop the Milvus Lite server this process runs for `path` (servers otherwise stop at exit)."""
    from milvus_lite.server_manager import server_manager_instance

    path = os.path.abspath(os.fspath(path))
    server_manager_instance.release_server(path if path.endswith(".db") else path + ".db")


__all__ = [
    "ForeignRecord",
    "MilvusIndex",
    "MilvusTarget",
    "collection_name",
    "is_milvus_kind",
    "parse_kind",
    "release_lite",
]
