"""`Collection`: catalog + embedders + vector indexes, the one object every entry point uses.

On disk a collection is a folder:

    catalog.sqlite          images, their content hash/label/status, and every embedder's vectors
    config.json             default embedder and index type
    indexes/NAME.faiss      one vector index per embedder (a cache, rebuilt from the catalog if stale)
    indexes/NAME.json       the catalog generation (and whitening fit) that index reflects
    whitening/NAME.npz      the PCA-whitening fit on NAME's stored vectors, when the collection whitens
    models/NAME/            embedders trained on this collection's images
    uploads/                images added as bytes (`add_image` from the server), named by content
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import stat as stat_mode
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import embedders as embedder_registry
from .catalog import Catalog, ImageRecord
from .concepts import TAG_MIN_SCORE, ConceptError, Tag, Term, top_classes, vocabulary
from .embedders import DEFAULT_EMBEDDER, Embedder
from .images import (
    DEFAULT_MAX_PIXELS,
    HEIF_MISSING,
    ImageError,
    heif_support,
    iter_image_files,
    open_image,
    upright_size,
)
from .index import DEFAULT_INDEX, VectorIndex, check_index_kind, create_index, load_index
from .index.base import FOREIGN_IDS_FROM, distinct
from .index.milvus import is_milvus_kind
from .index.rerank import DEFAULT_EXPAND, alpha_query_expansion, exact_query_expansion, search_excluding
from .index.whitening import Whitening, WhiteningSettings, fit_whitening
from .results import (
    Box,
    ImageInput,
    Neighbours,
    Progress,
    Query,
    SearchResult,
    SyncReport,
    TextSearch,
    WriteLock,
)
from .storage import (
    DEFAULT_COLLECTION_DIR,
    CollectionWriteError,
    DiskFullError,
    ReadOnlyCollectionError,
    write_error,
    write_json,
)

__all__ = [
    "Collection",
    "CollectionWriteError",
    "DiskFullError",
    "FileCheckError",
    "Neighbours",
    "PreparedImage",
    "Query",
    "ReadOnlyCollectionError",
    "SearchResult",
    "SyncReport",
]

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the logic is in duplicates.py, imported when first used
    from .duplicates import DuplicateGroup, DuplicateReport, MoveReport, UndoReport

#: a search that races a delete is repeated, at most this often, so it still returns k results
MAX_SEARCH_ATTEMPTS = 3
#: files larger than this are not read when indexing a folder (a 40-megapixel 16-bit TIFF is 240 MB)
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
UPLOADS_DIR = "uploads"
_READ_CHUNK = 1 << 20


class FileCheckError(Exception):
    """An indexed image's file is no longer the one indexed (gone, replaced, a link, not a regular file).

    The message never contains a path: it may be shown to a web client.
    """


@dataclass(frozen=True)
class PreparedImage:
    """An image decoded and embedded by every embedder the collection has vectors of, ready to be added."""

    data: bytes
    sha256: str
    width: int
    height: int
    #: embedder name -> (its classes or None, the (1, dim) vector, class probabilities or None)
    outputs: dict[str, tuple[str | None, np.ndarray, np.ndarray | None]]


@dataclass
class _Decoded:
    """A file read and decoded by a worker thread."""

    path: Path
    size: int
    mtime_ns: int
    sha256: str | None = None
    array: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _outer(write_lock: WriteLock | None) -> AbstractContextManager[object]:
    """The caller's own lock for one commit (taken before the collection's), or nothing."""
    return write_lock() if write_lock is not None else nullcontext()


class Collection:
    """A folder holding a catalog of images and their vectors, searchable by similarity."""

    def __init__(self, path: Path, config: dict[str, object], *, read_only: bool = False):
        self.path = path
        self.config = config
        #: the folder cannot be written: searches work, every change raises ReadOnlyCollectionError
        self.read_only = read_only
        self.catalog = Catalog(path / "catalog.sqlite", read_only=read_only)
        self._embedders: dict[str, Embedder] = {}
        self._indexes: dict[str, VectorIndex] = {}
        # The catalog generation each in-memory index reflects: when another process (an `index`
        # run beside the server) changes an embedder's vectors, its generation moves on and the
        # index is reloaded on next use instead of answering from stale vectors.
        self._generations: dict[str, int] = {}
        self._lock = threading.RLock()  # guards index loading and every write
        # One `embed_missing` at a time: it embeds without holding `_lock` (searches go on meanwhile) and takes
        # that only to commit each batch.
        self._embedding = threading.Lock()
        #: decode JPEGs in draft mode when indexing, and so when adding and querying (`draft_size`; see
        #: benchmarks/bench_indexing.py and bench_draft_decoding.py for its effect)
        self.draft = True
        self._writes = 0  # changes committed through this object (SQLite's data_version counts the others)
        self._all_ids: tuple[tuple[int, int], np.ndarray, str] | None = None
        # The whitening each in-memory index was built with (None: raw vectors); queries go through the same.
        self._whitenings: dict[str, Whitening | None] = {}
        self._on_close: list[Callable[[], None]] = []

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] = DEFAULT_COLLECTION_DIR,
        *,
        embedder: str | None = None,
        index: str | None = None,
        create: bool = True,
        read_only: bool | None = None,
    ) -> Collection:
        """Open the collection at `path`, creating it if needed (unless `create=False`).

        `embedder`/`index` set the defaults of a new collection; for an existing one
        `embedder` only changes what this session uses by default. A collection whose folder
        or catalog cannot be written opens read-only (searches work, changes raise
        `ReadOnlyCollectionError`); `read_only=True` asks for that, `False` refuses it.
        """
        path = Path(path).expanduser().resolve()
        config_path = path / "config.json"
        writable = True
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            catalog = path / "catalog.sqlite"
            writable = os.access(path, os.W_OK) and (not catalog.exists() or os.access(catalog, os.W_OK))
            if read_only is False and not writable:
                raise ReadOnlyCollectionError(f"the collection at {path} is read-only")
        elif read_only or not create:
            raise FileNotFoundError(f"no lookalike collection at {path} (run `lookalike index FOLDER` first)")
        else:
            if embedder is not None and embedder not in embedder_registry.available(path / "models"):
                raise embedder_registry.EmbedderError(
                    f"unknown embedder {embedder!r}; available: {', '.join(embedder_registry.available())}"
                )
            if index is not None:
                check_index_kind(index)
            path.mkdir(parents=True, exist_ok=True)
            config = {
                "version": 1,
                "default_embedder": embedder or DEFAULT_EMBEDDER,
                "index": index or DEFAULT_INDEX,
                "expand": DEFAULT_EXPAND,
            }
            write_json(config_path, config)
        collection = cls(path, config, read_only=bool(read_only) or not writable)
        if embedder is not None:
            collection.config["default_embedder"] = embedder
        return collection

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the collection closes, before its catalog does: a background user of the
        collection (the server's calibration thread) stops first instead of reading a closing database."""
        self._on_close.append(callback)

    def close(self) -> None:
        while self._on_close:
            self._on_close.pop()()
        self.catalog.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def default_embedder(self) -> str:
        return str(self.config.get("default_embedder", DEFAULT_EMBEDDER))

    @property
    def default_expand(self) -> int:
        """Query expansion over this many top neighbours when a search does not say (0: off).

        A new collection gets `DEFAULT_EXPAND`; one made before query expansion was the default has
        none in its config and keeps searching without it.
        """
        return int(self.config.get("expand", 0))

    def set_default_expand(self, n: int) -> None:
        """Make every search that does not say expand over `n` neighbours (0: off); saved with the collection."""
        if n < 0:
            raise ValueError(f"expand must be >= 0, not {n}")
        if self.read_only:
            raise ReadOnlyCollectionError("this collection is read-only: its settings cannot be changed")
        with self._lock:
            self._set_config("expand", int(n))

    def _set_config(self, key: str, value: object) -> None:
        """Set (None: remove) one key of the collection's config, here and in config.json, where only this key
        changes: the session's other choices (`open(embedder=...)`) are not the collection's. Under `_lock`."""
        on_disk = json.loads((self.path / "config.json").read_text())
        for config in (self.config, on_disk):
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        write_json(self.path / "config.json", on_disk)

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    # --- embedders and indexes ----------------------------------------------------------------

    def embedder(self, name: str | None = None, *, weights: str | Path | None = None) -> Embedder:
        """The embedder called `name` (default: the collection's), built once and kept.

        A local weights file given here is remembered in config.json, so later sessions (a search,
        the server) build the same embedder without being told again.
        """
        name = name or self.default_embedder
        with self._lock:
            if name not in self._embedders:
                remembered = self.config.get("weights", {})
                if weights is None:
                    weights = remembered.get(name)
                self._embedders[name] = embedder_registry.create(name, weights=weights, models_dir=self.models_dir)
                if weights is not None and remembered.get(name) != str(Path(weights).expanduser().resolve()):
                    self._set_config("weights", {**remembered, name: str(Path(weights).expanduser().resolve())})
            return self._embedders[name]

    def use_embedder(self, embedder: Embedder) -> None:
        """Use an already-built embedder object under its name (tests, custom embedders)."""
        with self._lock:
            self._embedders[embedder.name] = embedder

    def available_embedders(self) -> list[str]:
        return embedder_registry.available(self.models_dir)

    def _index_paths(self, embedder: str) -> tuple[Path, Path]:
        return self.path / "indexes" / f"{embedder}.faiss", self.path / "indexes" / f"{embedder}.json"

    def index(self, embedder: str | None = None) -> VectorIndex:
        """The vector index of an embedder: loaded from disk if current, else rebuilt from the catalog.

        Kept in memory while the catalog's generation for the embedder is the one it was loaded at,
        so changes made by another process are picked up by the next call.
        """
        name = embedder or self.default_embedder
        with self._lock:
            generation = self.catalog.generation(name)
            if name in self._indexes and self._generations.get(name) == generation:
                return self._indexes[name]
            index_path, meta_path = self._index_paths(name)
            whitening = self._current_whitening(name)
            index = None
            if index_path.is_file() and meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                if meta.get("generation") == generation and meta.get("whitening") == _key(whitening):
                    index = load_index(index_path, owner=self.catalog)
            if index is None:
                ids, vectors = self.catalog.vectors(name)
                if whitening is not None:
                    vectors = whitening.apply(vectors)
                dim = vectors.shape[1] if len(ids) else (whitening.dim if whitening else self.embedder(name).dim)
                index = create_index(str(self.config.get("index", DEFAULT_INDEX)), dim, name=name, owner=self.catalog)
                index.add(ids, vectors)
                self._whitenings[name] = whitening
                if not self.read_only:
                    try:
                        self._save_index(name, index, generation)
                    except CollectionWriteError as exc:  # searchable all the same; rebuilt again next time
                        log.warning("%s", exc)
            self._indexes[name] = index
            self._whitenings[name] = whitening
            self._generations[name] = generation
            return index

    # --- PCA-whitening fit on the collection's own vectors (index/whitening.py) ------------------

    @property
    def whitening_settings(self) -> WhiteningSettings | None:
        """How this collection whitens its vectors before indexing them (None: it does not)."""
        data = self.config.get("whitening")
        return WhiteningSettings.from_dict(data) if isinstance(data, dict) else None

    def set_whitening(self, settings: WhiteningSettings | None) -> None:
        """Whiten every embedder's vectors with `settings` from now on (None: search raw vectors again).

        Saved in config.json. Nothing is re-embedded: each index is rebuilt from the stored raw vectors
        the next time it is used, with a transform fit on them.
        """
        if settings is not None and is_milvus_kind(str(self.config.get("index", DEFAULT_INDEX))):
            raise ValueError("whitening is not available with a Milvus index: its rows are shared, raw vectors")
        with self._lock:
            self._set_config("whitening", None if settings is None else settings.to_dict())
            for path in (self.path / "whitening").glob("*.npz"):
                path.unlink()
            self._indexes.clear()
            self._whitenings.clear()

    def whitening(self, embedder: str | None = None) -> Whitening | None:
        """The whitening the searches of `embedder` use now (None: raw vectors)."""
        name = embedder or self.default_embedder
        with self._lock:
            self.index(name)
            return self._whitenings.get(name)

    def _whitening_path(self, name: str) -> Path:
        return self.path / "whitening" / f"{name}.npz"

    def _current_whitening(self, name: str) -> Whitening | None:
        """The saved fit of `name`, fit again first when there is none, its settings changed, or the number
        of stored vectors has moved by the refit fraction since (None: no whitening, or too few vectors)."""
        settings = self.whitening_settings
        if settings is None:
            return None
        count = self.catalog.count_vectors(name)
        path = self._whitening_path(name)
        saved = None
        if path.is_file():
            try:
                saved = Whitening.load(path)
            except (OSError, ValueError, KeyError):
                saved = None  # unreadable: fit again
        if saved is not None and saved.settings == settings and not saved.stale(count):
            return saved
        if count < settings.min_vectors:
            return None
        _, vectors = self.catalog.vectors(name)
        fitted = fit_whitening(vectors, settings)
        fitted.save(path)
        return fitted

    def _refit_if_grown(self, name: str) -> None:
        """After a change: when the collection has grown or shrunk enough, fit the whitening again and rebuild
        the index from the stored raw vectors (cheap otherwise: one count)."""
        settings = self.whitening_settings
        if settings is None:
            return
        current = self._whitenings.get(name)
        count = self.catalog.count_vectors(name)
        if current is None and count < settings.min_vectors:
            return
        if current is not None and current.settings == settings and not current.stale(count):
            return
        self._indexes.pop(name, None)
        self.index(name)  # fits again (see _current_whitening) and rebuilds

    def _save_index(self, name: str, index: VectorIndex, generation: int) -> None:
        index_path, meta_path = self._index_paths(name)
        self._check_writable(f"cannot save the {name} index")
        # Index first, then its generation: a crash in between leaves a stale marker, which
        # only costs a rebuild, never a wrong answer. Each file is replaced whole or not at all.
        try:
            index.save(index_path)
            meta = {"generation": generation, "kind": index.kind, "dim": index.dim, "count": len(index)}
            write_json(meta_path, {**meta, "whitening": _key(self._whitenings.get(name))})
        except Exception as exc:
            error = _write_error_in(exc, f"cannot save the {name} index of {self.path}")
            if error is None:
                raise
            raise error from exc

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyCollectionError(f"{what}: the collection at {self.path} is read-only")

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the collection's write lock around one catalog transaction (with its index updates): for
        modules that keep their own tables in the catalog, such as duplicates.py."""
        with self._lock, self._change():
            yield

    @contextmanager
    def _change(self) -> Iterator[None]:
        """One catalog transaction together with the index updates made inside it.

        Index updates happen before the commit, so a backend that refuses vectors (a remote
        engine that is down) rolls the catalog back. If anything fails, the in-memory indexes,
        which may hold part of the change, are dropped and rebuilt from the catalog when next used.
        """
        self._check_writable("cannot change the catalog")
        try:
            with self.catalog.transaction():
                yield
        except BaseException as exc:
            self._indexes.clear()
            error = _write_error_in(exc, f"cannot write the catalog of {self.path}")
            if error is not None:
                raise error from exc
            raise
        finally:
            self._writes += 1

    def _forget(self, ids: Sequence[int], embedders: Iterable[str] | None = None) -> None:
        """Inside `_change`: drop vectors of `ids` (of some or all embedders) from catalog and indexes."""
        if not ids:
            return
        names = set(self.catalog.embedders()) | set(self._indexes) if embedders is None else set(embedders)
        if embedders is None:
            self.catalog.delete_vectors(ids)
        else:
            for name in names:
                self.catalog.delete_vectors(ids, name)
        for name in names:
            index = self._changing(name)
            if index is not None:
                index.remove(np.asarray(ids, dtype=np.int64))

    def forget_embedder(self, name: str) -> None:
        """Drop every stored vector of embedder `name` (its model was replaced); they are re-embedded when needed.

        The duplicate pairs `name` scored, and the marks of the images searched for them, go in the same
        transaction: the next `duplicates` with this embedder searches every image again, with the new vectors.
        """
        with self._lock, self._change():
            self.catalog.delete_embedder(name)
            self.catalog.bump_generation(name)  # a saved index of `name` is now stale
            self._indexes.pop(name, None)
            self._embedders.pop(name, None)

    def _store(self, name: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Inside `_change`: put vectors of one embedder into catalog and index."""
        if not len(ids):
            return
        self.catalog.put_vectors(name, ids, vectors)
        index = self._changing(name)
        if index is not None:
            whitening = self._whitenings.get(name)
            index.add(np.asarray(ids, dtype=np.int64), whitening.apply(vectors) if whitening else vectors)

    def _changing(self, name: str) -> VectorIndex | None:
        """Inside `_change`: count a change to `name`'s vectors; returns the in-memory index to update
        with it, or None when there is none or it is stale (then it is rebuilt when next used)."""
        after = self.catalog.bump_generation(name)
        index = self._indexes.get(name)
        if index is not None and self._generations.get(name) == after - 1:
            self._generations[name] = after
            return index
        self._indexes.pop(name, None)  # another process changed these vectors since it was loaded
        return None

    def save(self) -> None:
        """Persist every loaded index (the catalog is always persisted); nothing to do when read-only."""
        if self.read_only:
            return
        with self._lock:
            for name, index in self._indexes.items():
                # The generation it reflects, not the catalog's: a stale index must not pass for current.
                self._save_index(name, index, self._generations[name])

    # --- reading and embedding files ------------------------------------------------------------

    def _decode(
        self,
        path: Path,
        embedder: Embedder,
        known: ImageRecord | None,
        has_vector: bool,
        follow_symlinks: bool = False,
        max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> _Decoded:
        """Read, hash and preprocess one file (runs in a worker thread)."""
        try:
            data, stat = read_regular_file(path, follow_symlinks=follow_symlinks, max_bytes=max_bytes)
        except _NotReadable as exc:
            return _Decoded(path, exc.size, exc.mtime_ns, error=str(exc))
        item = _Decoded(path, stat.st_size, stat.st_mtime_ns)
        item.sha256 = sha256_of(data)
        if known is not None and known.status == "ok" and known.sha256 == item.sha256 and has_vector:
            return item  # same bytes under a new mtime: nothing to embed
        try:
            # JPEG draft mode decodes large photos at 1/2..1/8 scale, never below the resize target.
            image = open_image(data, draft_size=embedder.preprocessing.draft_size if self.draft else None)
        except ImageError as exc:
            item.error = exc.reason
            return item
        item.width, item.height = image.info.get("original_size", image.size)
        item.array = embedder.preprocess(image)
        return item

    def _decoded_batches(
        self,
        paths: Sequence[Path],
        embedder: Embedder,
        known: dict[str, ImageRecord],
        have_vectors: set[int],
        batch_size: int,
        workers: int,
        follow_symlinks: bool,
        max_file_bytes: int,
    ) -> Iterator[list[_Decoded]]:
        """Decode in worker threads, a few batches ahead of the consumer, in input order."""
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

        def submit(pool: ThreadPoolExecutor, batch: Sequence[Path]) -> list[Future[_Decoded]]:
            futures = []
            for p in batch:
                record = known.get(str(p))
                has_vector = record is not None and record.id in have_vectors
                futures.append(
                    pool.submit(self._decode, p, embedder, record, has_vector, follow_symlinks, max_file_bytes)
                )
            return futures

        ahead = 2  # batches decoded ahead: enough to keep the model busy, bounded memory
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending = [submit(pool, batch) for batch in batches[:ahead]]
            for i in range(len(batches)):
                futures = pending.pop(0)
                if i + ahead < len(batches):
                    pending.append(submit(pool, batches[i + ahead]))
                yield [f.result() for f in futures]

    # --- sync ------------------------------------------------------------------------------------

    def sync(
        self,
        folder: str | os.PathLike[str],
        *,
        embedder: str | None = None,
        batch_size: int = 64,  # measured: 64 keeps ONNX Runtime busier than 32 while threads decode
        workers: int | None = None,
        progress: Progress | None = None,
        follow_symlinks: bool = False,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> SyncReport:
        """Make the collection match `folder` (recursively) for one embedder.

        New files are embedded, changed files re-embedded, deleted files removed; an
        unchanged file is not even read. Each batch commits in one transaction, so an
        interrupted sync resumes where it stopped.

        Only regular files are read: FIFOs, devices and sockets are skipped (and reported), and so
        are symbolic links to files unless `follow_symlinks` (links to folders are never followed);
        a file over `max_file_bytes` is not read. A known file that became one of these is dropped.
        """
        started = time.perf_counter()
        self._check_writable("cannot index")
        model = self.embedder(embedder)
        name = model.name
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {root}")
        report = SyncReport(embedder=name)
        with self._lock:
            self.index(name)  # loaded now, so each batch updates it in place
            known = {r.path: r for r in self.catalog.records(under=str(root))}
            have_vectors = self._embedded_ids(model)
            seen: set[str] = set()
            todo: list[Path] = []
            for path in iter_image_files(root, exclude=self.path):
                key = str(path)
                record = known.get(key)
                try:
                    stat = path.stat() if follow_symlinks else path.lstat()
                except OSError as exc:
                    seen.add(key)  # perhaps unreadable for a moment: its row stays
                    report.skipped.append((key, f"cannot read: {exc.strerror}"))
                    continue
                refusal = _refusal(stat, max_file_bytes)
                if refusal is not None:
                    report.skipped.append((key, refusal))  # not seen: a row it had is removed
                    continue
                seen.add(key)
                if record is not None and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
                    # a HEIC skipped for want of pillow-heif is read again once it is installed
                    if record.status == "error" and not (record.error == HEIF_MISSING and heif_support()):
                        report.skipped.append((key, record.error or "unreadable"))
                        continue
                    if record.id in have_vectors:
                        report.unchanged += 1
                        continue
                todo.append(path)

            # Files the collection stores itself (uploads) are not part of the folder being synced.
            inside = str(self.path) + os.sep
            gone = [r for path, r in known.items() if path not in seen and not path.startswith(inside)]
            if gone:
                with self._change():
                    self._forget([r.id for r in gone])
                    self.catalog.delete_images(r.id for r in gone)
                report.removed = [r.path for r in gone]

            self._ingest(
                todo, model, known, have_vectors, report, batch_size, workers, progress, follow_symlinks, max_file_bytes
            )
            if todo or gone:
                self._refit_if_grown(name)
                self._save_index(name, self.index(name), self.catalog.generation(name))
        report.seconds = time.perf_counter() - started
        return report

    def _embedded_ids(self, model: Embedder) -> set[int]:
        """Images with everything `model` gives: its vector, and its concepts when it is a classifier
        (images indexed before concepts were kept get them on the next sync)."""
        ids = self.catalog.vector_ids(model.name)
        return ids & self.catalog.concept_ids(model.name) if model.classes else ids

    def embed_missing(
        self,
        records: Sequence[ImageRecord],
        *,
        embedder: str | None = None,
        batch_size: int = 64,
        workers: int | None = None,
        progress: Progress | None = None,
        write_lock: WriteLock | None = None,
    ) -> SyncReport:
        """Give each of these catalog images a vector of `embedder` if it lacks one (a subset's `sync`).

        The same pipeline as `sync`: a file whose content changed since it was indexed is re-read
        and its row updated; nothing outside `records` is looked at or removed. Each batch is
        committed under the collection's lock and `write_lock()`, the caller's own if given (the
        server's readers-writer lock), which neither holds while decoding and embedding.
        """
        started = time.perf_counter()
        self._check_writable("cannot embed")
        model = self.embedder(embedder)
        report = SyncReport(embedder=model.name)
        # Not under `_lock` while decoding and embedding, which can take minutes (the first duplicates listing
        # of a large collection): each batch is committed under it, so searches in other threads go on.
        with self._embedding:
            with self._lock:
                self.index(model.name)
                have_vectors = self.catalog.vector_ids(model.name)
            todo = [r for r in records if r.id not in have_vectors]
            report.unchanged = len(records) - len(todo)
            known = {r.path: r for r in todo}
            # Files already in the catalog: a link is followed (it was indexed with --follow-symlinks).
            self._ingest(
                [Path(r.path) for r in todo], model, known, have_vectors, report, batch_size, workers, progress,
                follow_symlinks=True, max_file_bytes=DEFAULT_MAX_FILE_BYTES, write_lock=write_lock,
            )  # fmt: skip
            if todo:
                with _outer(write_lock), self._lock:
                    self._refit_if_grown(model.name)
                    self._save_index(model.name, self.index(model.name), self.catalog.generation(model.name))
        report.seconds = time.perf_counter() - started
        return report

    def _ingest(
        self,
        todo: Sequence[Path],
        model: Embedder,
        known: dict[str, ImageRecord],
        have_vectors: set[int],
        report: SyncReport,
        batch_size: int,
        workers: int | None,
        progress: Progress | None,
        follow_symlinks: bool = False,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        write_lock: WriteLock | None = None,
    ) -> None:
        """Read, decode, embed and commit files batch by batch (decoding in threads ahead of the model);
        each commit under `write_lock()` too when given."""
        name = model.name
        stage = "embedding" if name == self.default_embedder else f"embedding ({name})"
        done = 0
        if progress:
            progress(stage, 0, len(todo))
        for batch in self._decoded_batches(
            todo, model, known, have_vectors, batch_size, workers or min(4, os.cpu_count() or 1),
            follow_symlinks, max_file_bytes,
        ):  # fmt: skip
            arrays = [item for item in batch if item.array is not None]
            t0 = time.perf_counter()
            vectors, probabilities = (
                model.embed_and_classify(np.stack([a.array for a in arrays])) if arrays else (None, None)
            )
            report.embed_seconds += time.perf_counter() - t0
            report.embedded += len(arrays)
            concepts = None
            if probabilities is not None and model.classes:
                concepts = (model.classes, *top_classes(probabilities))
            # `_lock` is already held by `sync`; `embed_missing` takes it per batch
            with _outer(write_lock), self._lock:
                self._write_batch(name, batch, arrays, vectors, known, report, concepts)
            done += len(batch)
            if progress:
                progress(stage, done, len(todo))
        if report.embedded >= 64:
            with self._lock:
                self.catalog.set_meta(
                    f"throughput:{name}", json.dumps({"images": report.embedded, "seconds": report.embed_seconds})
                )

    def _write_batch(
        self,
        name: str,
        batch: list[_Decoded],
        arrays: list[_Decoded],
        vectors: np.ndarray | None,
        known: dict[str, ImageRecord],
        report: SyncReport,
        concepts: tuple[str, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Commit one decoded batch: rows, vectors, concepts and index updates in one transaction.

        `concepts`: (vocabulary, class ids (n, k), scores (n, k)) of the images in `arrays`.
        """
        vector_of = {id(item): v for item, v in zip(arrays, vectors if vectors is not None else [], strict=True)}
        row_of = {id(item): r for r, item in enumerate(arrays)}
        new_ids: list[int] = []
        new_vectors: list[np.ndarray] = []
        described: list[tuple[int, int]] = []  # (image id, row in arrays) of every image given concepts
        stale: list[int] = []  # rows whose content changed or became unreadable: every embedder's vectors go
        inside = str(self.path) + os.sep
        with self._change():
            for item in batch:
                key = str(item.path)
                record = known.get(key)
                # A folder's image is labelled by its sub-folder; an added image keeps the label it was given.
                label = record.label if record is not None and key.startswith(inside) else item.path.parent.name
                if item.error is not None:
                    image_id = self.catalog.upsert_image(
                        path=key, sha256=item.sha256, size=item.size, mtime_ns=item.mtime_ns, label=label,
                        width=None, height=None, status="error", error=item.error,
                    )  # fmt: skip
                    stale.append(image_id)
                    report.skipped.append((key, item.error))
                    continue
                if item.array is None and record is not None:
                    # Same bytes, new mtime: keep the vectors, remember the new stat.
                    self.catalog.touch(record.id, item.size, item.mtime_ns)
                    report.unchanged += 1
                    continue
                content_changed = record is not None and record.sha256 != item.sha256
                # known, unchanged and holding this embedder's vector already: the vector stays (stored again,
                # the id would be in the index twice)
                kept = (
                    record is not None
                    and not content_changed
                    and record.status == "ok"
                    and self.catalog.has_vector(name, record.id)
                )
                if kept and concepts is None:
                    # given its vector meanwhile (a `sync` of the same embedder while `embed_missing` embedded
                    # without the lock)
                    self.catalog.touch(record.id, item.size, item.mtime_ns)
                    report.unchanged += 1
                    continue
                image_id = self.catalog.upsert_image(
                    path=key, sha256=item.sha256, size=item.size, mtime_ns=item.mtime_ns, label=label,
                    width=item.width, height=item.height, status="ok",
                )  # fmt: skip
                if content_changed:
                    stale.append(image_id)
                if concepts is not None:
                    described.append((image_id, row_of[id(item)]))
                    if kept:
                        report.described += 1  # indexed before concepts were kept: its vector stays
                        continue
                new_ids.append(image_id)
                new_vectors.append(vector_of[id(item)])
                if record is None:
                    report.added.append(key)
                elif content_changed or record.status == "error":
                    report.updated.append(key)
                else:
                    report.added.append(key)  # known file, first vectors for this embedder
            self._forget(stale)
            if new_ids:
                self._store(name, new_ids, np.stack(new_vectors))
            if concepts is not None and described:
                vocab, classes, scores = concepts
                rows = [r for _, r in described]
                self.catalog.put_concepts(name, vocab, [i for i, _ in described], classes[rows], scores[rows])

    # --- single images -----------------------------------------------------------------------

    @property
    def uploads_dir(self) -> Path:
        """Where images added as bytes through the server are stored; the collection owns these files."""
        return self.path / UPLOADS_DIR

    def prepare_image(
        self, data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, threads: int | None = None
    ) -> PreparedImage:
        """Decode `data` and embed it with every embedder the collection has vectors of, changing nothing.

        The slow half of `add_image`, run without any lock; raises `ImageError` for bytes that are
        not a readable image (or have more than `max_pixels`). `threads`: run each network on at
        most that many threads (`Embedder.on_threads`; the server's adds take one, leaving the other
        cores to searches).
        """
        names = sorted(set(self.catalog.embedders()) | {self.default_embedder})
        image = open_image(data, max_pixels=max_pixels, draft_size=self.draft_size(*names))
        outputs = {}
        for n in names:
            model = self.embedder(n) if threads is None else self.embedder(n).on_threads(threads)
            vector, probabilities = model.embed_and_classify(model.preprocess(image)[None])
            outputs[n] = (model.classes, vector, probabilities)
        width, height = image.info.get("original_size", image.size)
        return PreparedImage(data=data, sha256=sha256_of(data), width=width, height=height, outputs=outputs)

    def add_image(
        self,
        data: bytes | PreparedImage,
        path: str | os.PathLike[str],
        label: str | None = None,
        *,
        write_lock: WriteLock | None = None,
    ) -> ImageRecord:
        """Add (or replace) one image given as bytes, stored at `path`, embedded with every indexed embedder.

        Unlike files found by `sync`, its label is only what is given (none by default). Decoding,
        embedding and writing the bytes happen first, outside any lock; only moving the file into
        place and committing its row and vectors happen under the collection's lock (and under
        `write_lock()`, the caller's own, if given: the server's readers-writer lock). A failed
        commit (disk full) removes the file again, so no file is left without its row.
        """
        self._check_writable("cannot add an image")
        prepared = data if isinstance(data, PreparedImage) else self.prepare_image(data)
        target = Path(path).expanduser().resolve()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            raise _clear(exc, f"cannot store the image in {self.path}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(prepared.data)
                f.flush()
                os.fsync(f.fileno())
            with _outer(write_lock), self._lock:
                existed = target.exists()
                os.replace(tmp, target)
                stat = target.stat()
                try:
                    with self._change():
                        image_id = self.catalog.upsert_image(
                            path=str(target), sha256=prepared.sha256, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                            label=label, width=prepared.width, height=prepared.height, status="ok",
                        )  # fmt: skip
                        self._forget([image_id])  # a replaced file's vectors of embedders not recomputed here go too
                        for n, (classes, vector, probabilities) in prepared.outputs.items():
                            self._store(n, [image_id], vector)
                            if classes and probabilities is not None:
                                self.catalog.put_concepts(n, classes, [image_id], *top_classes(probabilities))
                except BaseException:
                    if not existed:
                        target.unlink(missing_ok=True)
                    raise
                for n in prepared.outputs:
                    self._refit_if_grown(n)
                record = self.catalog.get(image_id)
        except OSError as exc:
            raise _clear(exc, f"cannot store the image in {self.path}") from exc
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        assert record is not None
        return record

    def import_vectors(
        self,
        files: Sequence[str | os.PathLike[str]],
        vectors: np.ndarray,
        *,
        embedder: str | None = None,
        follow_symlinks: bool = False,
    ) -> list[int]:
        """Index `files` with vectors made elsewhere, row i of `vectors` being file i's, without decoding or
        embedding them: vectors another program computed with the same model, or a large collection built
        quickly for a benchmark. Returns the files' ids, in order.

        Each file is read once, with `sync`'s rules (regular files only, symbolic links only if
        `follow_symlinks`), for its SHA-256; its pixel size comes from its header and its label is its
        folder's name, as `sync` gives it. A file known before is replaced: its vectors of other embedders
        go. No concepts are stored (a classifier's tags come with the next `sync` of the folder). Raises
        ValueError, and writes nothing, when a file cannot be read or `vectors` is not one finite unit-length
        row per file of the dimension the embedder's other vectors have.
        """
        self._check_writable("cannot import vectors")
        name = embedder or self.default_embedder
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(files) or not np.isfinite(vectors).all():
            raise ValueError(f"expected {len(files)} finite vectors (one row per file), got shape {vectors.shape}")
        if len(files) and not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
            raise ValueError("the vectors must have unit length (searches score by inner product)")
        if name not in embedder_registry.available(self.models_dir):
            raise ValueError(f"unknown embedder {name!r}")
        paths = [Path(os.path.abspath(Path(f).expanduser())) for f in files]  # a link is its own row, as in `sync`
        if len(set(paths)) != len(paths):
            raise ValueError("a file is named more than once")
        rows = []
        for path in paths:
            try:
                data, stat = read_regular_file(path, follow_symlinks=follow_symlinks, max_bytes=DEFAULT_MAX_FILE_BYTES)
                width, height = upright_size(data)
            except (_NotReadable, ImageError) as exc:
                reason = exc.short if isinstance(exc, _NotReadable) else exc.reason
                raise ValueError(f"cannot import {path}: {reason}") from None
            rows.append(dict(path=str(path), sha256=sha256_of(data), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                             label=path.parent.name, width=width, height=height, status="ok"))  # fmt: skip
        with self._lock:
            have = self.vector_ids(name)
            if have and len(files):
                dim = len(self.vectors_of([min(have)], name)[0])
                if vectors.shape[1] != dim:
                    raise ValueError(f"{name} vectors have {dim} dimensions here, not {vectors.shape[1]}")
            with self._change():
                replaced = [r.id for r in map(self.catalog.get_by_path, (row["path"] for row in rows)) if r]
                ids = [self.catalog.upsert_image(**row) for row in rows]
                self._forget(replaced)
                self._store(name, ids, vectors)
            if ids:
                self._refit_if_grown(name)
        return ids

    def remove(self, ids: Iterable[int], *, delete_uploads: bool = False) -> int:
        """Forget images by id; returns how many were known.

        Files are left alone, except, with `delete_uploads`, the collection's own copies in
        `uploads_dir`, deleted under the same lock as their rows (after the commit: a crash in
        between leaves a file without a row, which `tidy_uploads` removes, never a row without a file).
        """
        ids = [int(i) for i in ids]
        self._check_writable("cannot remove images")
        with self._lock:
            present = self.catalog.get_many(ids)
            if not present:
                return 0
            with self._change():
                self._forget(list(present))
                self.catalog.delete_images(present)
            if delete_uploads:
                for record in present.values():
                    if Path(record.path).parent == self.uploads_dir:
                        Path(record.path).unlink(missing_ok=True)
            for name in list(self._whitenings):
                self._refit_if_grown(name)
        return len(present)

    def tidy_uploads(self) -> tuple[list[str], list[int]]:
        """Make `uploads_dir` and the catalog agree after a crash: (file names deleted, ids removed).

        Deletes files there that no row refers to (an add or delete cut short, temporary files)
        and forgets rows there whose file is gone. Run when nothing else adds to this collection
        (the server does it when it starts).
        """
        if self.read_only or not self.uploads_dir.is_dir():
            return [], []
        with self._lock:
            rows = {Path(r.path).name: r for r in self.records(under=self.uploads_dir, status=None)}
            deleted = []
            for entry in sorted(self.uploads_dir.iterdir()):
                if entry.name not in rows and (entry.is_file() or entry.is_symlink()):
                    entry.unlink(missing_ok=True)
                    deleted.append(entry.name)
            missing = [r.id for name, r in rows.items() if not (self.uploads_dir / name).is_file()]
            if missing:
                self.remove(missing)
        return deleted, missing

    def read_file(self, record: ImageRecord, *, follow_symlinks: bool = False) -> bytes:
        """The bytes of an indexed image's file, only if they are still the bytes indexed.

        The file is opened once (not through a symbolic link unless `follow_symlinks`), must be a
        regular file, and its size and SHA-256 must match the catalog; otherwise `FileCheckError`,
        whose message names no path. What is returned is exactly what was checked.
        """
        changed = FileCheckError(f"the file of image {record.id} has changed since it was indexed")
        try:
            data, stat = read_regular_file(Path(record.path), follow_symlinks=follow_symlinks, max_bytes=record.size)
        except _NotReadable as exc:
            if exc.short.startswith("file too large"):
                raise changed from None
            raise FileCheckError(f"the file of image {record.id} cannot be served: {exc.short}") from None
        if stat.st_size != record.size or record.sha256 is None or sha256_of(data) != record.sha256:
            raise changed
        return data

    # --- search ----------------------------------------------------------------------------------

    def embed(
        self, image: ImageInput, *, embedder: str | None = None, box: Box | None = None, threads: int | None = None
    ) -> np.ndarray:
        """One image (path, bytes or Pillow image), optionally cropped to `box`, as a (dim,) vector."""
        return self.embed_images([image], embedder=embedder, boxes=[box], threads=threads)[0]

    def embed_images(
        self,
        images: Sequence[ImageInput],
        *,
        embedder: str | None = None,
        boxes: Sequence[Box | None] | None = None,
        threads: int | None = None,
    ) -> np.ndarray:
        """Images (paths, bytes or Pillow images), each optionally cropped to its box, as (n, dim) vectors.

        `threads`: run the network on at most that many threads (`Embedder.on_threads`), as `prepare_image`.
        Paths and bytes are decoded as `sync` decodes them (`draft_size`), a region reduced no further than
        keeps it as large as the network's input; a Pillow image is taken as it is."""
        model = self.embedder(embedder)
        pils = []
        for i, image in enumerate(images):
            box = boxes[i] if boxes is not None else None
            if isinstance(image, Image.Image):
                pil = image.convert("RGB")
            else:
                pil = self.decode_query(image if isinstance(image, bytes) else Path(image), embedder, box)
            pils.append(pil.crop(_clamp_box(_box_in_decoded_pixels(box, pil), pil.size)) if box is not None else pil)
        return (model if threads is None else model.on_threads(threads)).embed_images(pils)

    def decode_query(
        self,
        source: bytes | Path,
        embedder: str | None = None,
        box: Box | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> Image.Image:
        """A query image (file or bytes) decoded upright as `sync` decodes for `embedder` (`draft_size`; for a
        region, `box` in upright original pixels, reduced no further than keeps it as large); `ImageError`
        if it cannot be, or if the file is not a regular file of at most `DEFAULT_MAX_FILE_BYTES`."""
        if not isinstance(source, bytes):  # only a regular file (a FIFO never waits), within the indexer's limit
            try:
                source, _ = read_regular_file(source, follow_symlinks=True, max_bytes=DEFAULT_MAX_FILE_BYTES)
            except _NotReadable as exc:
                raise ImageError(str(source), exc.short) from None
        # For a region, the header says how far the photo may be reduced.
        size = upright_size(source) if box is not None and self.draft else None
        return open_image(source, max_pixels=max_pixels, draft_size=self.draft_size(embedder, box=box, size=size))

    def draft_size(
        self, *embedders: str | None, box: Box | None = None, size: tuple[int, int] | None = None
    ) -> tuple[int, int] | None:
        """The size a large JPEG may be decoded reduced to (JPEG draft mode) for these embedders (None: the
        default one), the largest any of them needs; None when the collection decodes every pixel (`draft`).
        For a region (`box`, in pixels of the upright image of `size`), the size that keeps the region itself
        at least that large.

        `sync` decodes each file so, and so do queries and added images: an indexed photo searched for
        again gets the very vector it was indexed with (decoded whole, a 12-megapixel photo's vector moves
        to a cosine as low as 0.96 from its draft-decoded one: benchmarks/results/draft_decoding.json), and
        a phone photo is decoded and resized in a fraction of the time.
        """
        if not self.draft:
            return None
        sizes = [self.embedder(name).preprocessing.draft_size for name in embedders or (None,)]
        wanted = max(w for w, _ in sizes), max(h for _, h in sizes)
        if box is None:
            return wanted
        if size is None:
            raise ValueError("a region's draft size needs the image's size")
        width, height = size
        x0, y0, x1, y1 = box
        region_width = max(1.0, min(x1, width) - max(x0, 0.0))
        region_height = max(1.0, min(y1, height) - max(y0, 0.0))
        # Square, so it holds whichever way the stored pixels are turned (EXIF orientation).
        side = math.ceil(max(wanted[0] * width / region_width, wanted[1] * height / region_height))
        return side, side

    def search(
        self,
        image: ImageInput | Query,
        k: int = 5,
        *,
        embedder: str | None = None,
        box: Box | None = None,
        label: str | None = None,
        expand: int | None = None,
        tag: str | None = None,
    ) -> list[SearchResult]:
        """The k images most similar to `image`, best first (`tag`: only images showing that concept).

        An image that is itself in the collection is never returned as its own match.
        """
        query = image if isinstance(image, Query) else Query(image=image, box=box)
        return self.search_batch([query], k, embedder=embedder, label=label, expand=expand, tag=tag)[0]

    def search_id(
        self,
        image_id: int,
        k: int = 5,
        *,
        embedder: str | None = None,
        label: str | None = None,
        expand: int | None = None,
        tag: str | None = None,
    ) -> list[SearchResult]:
        """Neighbours of an indexed image (itself excluded)."""
        return self.search_batch([Query(id=image_id)], k, embedder=embedder, label=label, expand=expand, tag=tag)[0]

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 5,
        *,
        embedder: str | None = None,
        label: str | None = None,
        exclude: int | None = None,
        expand: int | None = None,
    ) -> list[SearchResult]:
        """The k nearest indexed images to `vector` (`exclude`: an id never returned)."""
        query = Query(vector=vector, exclude=exclude)
        return self.search_batch([query], k, embedder=embedder, label=label, expand=expand)[0]

    def search_batch(
        self,
        queries: Sequence[Query | ImageInput | np.ndarray],
        k: int = 5,
        *,
        embedder: str | None = None,
        label: str | None = None,
        expand: int | None = None,
        tag: str | None = None,
    ) -> list[list[SearchResult]]:
        """The k most similar images of each query, best first: the one search every entry point uses.

        A query is a `Query`, an image (path, bytes, Pillow image) or a vector. An indexed image
        (by id, or by its path) is searched with its stored vector and never returned as its own
        match; images are embedded together in one batch.
        """
        name = embedder or self.default_embedder
        vectors, exclude = self.query_vectors([q if isinstance(q, Query) else _as_query(q) for q in queries], name)
        found = self.search_vectors(vectors, k, embedder=name, label=label, exclude=exclude, expand=expand, tag=tag)
        return self.results(found)

    def query_vectors(self, queries: Sequence[Query], embedder: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim), excluded id per query or -1): stored vectors where the query is indexed, else embedded."""
        name = embedder or self.default_embedder
        exclude = np.full(len(queries), -1, dtype=np.int64)
        vectors: list[np.ndarray | None] = [None] * len(queries)
        to_embed: list[int] = []
        for i, query in enumerate(queries):
            if query.vector is not None:
                vectors[i] = np.asarray(query.vector, dtype=np.float32)
                exclude[i] = -1 if query.exclude is None else query.exclude
                continue
            if query.exclude is not None:
                exclude[i] = query.exclude
            record = None
            if query.id is not None:
                record = self.catalog.get(int(query.id))
                if record is None or record.status != "ok":
                    raise KeyError(f"no indexed image with id {query.id}")
            elif isinstance(query.image, str | os.PathLike):
                record = self.catalog.get_by_path(str(Path(query.image).expanduser().resolve()))
            if record is not None and record.status == "ok":
                exclude[i] = record.id if query.exclude is None else query.exclude
                if query.box is None:
                    vectors[i] = self.stored_vector(record.id, name)
            if vectors[i] is None:
                if query.image is None and record is None:
                    raise ValueError("a query needs an image, an id or a vector")
                to_embed.append(i)
        if to_embed:
            sources = [
                queries[i].image if queries[i].image is not None else self._source_of(queries[i]) for i in to_embed
            ]
            embedded = self.embed_images(sources, embedder=name, boxes=[queries[i].box for i in to_embed])
            for i, vector in zip(to_embed, embedded, strict=True):
                vectors[i] = vector
        dim = self.embedder(name).dim if not vectors else len(vectors[0])  # type: ignore[arg-type]
        stacked = np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)  # type: ignore[arg-type]
        return stacked, exclude

    def _source_of(self, query: Query) -> ImageInput:
        """What to embed for a query: its image, else the file of the indexed image it names."""
        if query.image is not None:
            return query.image
        record = self.catalog.get(int(query.id))  # type: ignore[arg-type]
        if record is None:
            raise KeyError(f"no indexed image with id {query.id}")
        return self.read_file(record, follow_symlinks=True)

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 5,
        *,
        embedder: str | None = None,
        label: str | None = None,
        within: np.ndarray | None = None,
        exclude: np.ndarray | Sequence[int] | None = None,
        expand: int | None = None,
        exact: bool = False,
        tag: str | None = None,
    ) -> Neighbours:
        """The k nearest indexed images of each vector, as arrays: the core of every search.

        `label`, `tag` (words: images tagged with that concept, see `tagged_ids`) and `within` (ids)
        restrict the candidates; `exclude` is one id per query never
        returned (-1: none); `expand` > 0 re-ranks by alpha query expansion over that many top
        neighbours (index/rerank.py), None the collection's `default_expand`; `exact` ranks by brute
        force over the stored vectors whatever the index (evaluation). A hit deleted by another thread
        or process between the index search and the catalog lookup is replaced by searching again.

        With a remote index that several catalogs share (Milvus), hits include other catalogs' images
        under their remote keys (>= FOREIGN_IDS_FROM); `label`, `tag`, `within` and `exact` keep to this
        catalog's images, and query expansion folds in other catalogs' vectors read from the index.
        """
        name = embedder or self.default_embedder
        expand = self.default_expand if expand is None else expand
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        excluded = np.full(len(vectors), -1, dtype=np.int64) if exclude is None else np.asarray(exclude, np.int64)
        allowed = within
        if label is not None:
            with_label = self.catalog.ids_with_label(label)
            allowed = with_label if allowed is None else with_label[np.isin(with_label, allowed)]
        if tag is not None:
            tagged = self.tagged_ids(tag)
            allowed = tagged if allowed is None else tagged[np.isin(tagged, allowed)]
        if allowed is not None and not len(allowed):
            return Neighbours.empty(len(vectors), k, name)
        raw = vectors
        if exact:
            with self._lock:
                self.index(name)
                whitening = self._whitenings.get(name)
            ids, stored = self.catalog.vectors(name, None if allowed is None else allowed.tolist())
            if whitening is not None:
                vectors, stored = whitening.apply(raw), whitening.apply(stored) if len(stored) else stored
            scores, found = exact_query_expansion(vectors, stored, ids, k, n_expand=expand, exclude=excluded)
            return Neighbours(found, scores, name)
        for _ in range(MAX_SEARCH_ATTEMPTS):
            with self._lock:  # the index and the whitening it was built with, as one pair
                index = self.index(name)
                whitening = self._whitenings.get(name)
            vectors = whitening.apply(raw) if whitening is not None else raw

            def transformed(
                wanted: np.ndarray, whitening: Whitening | None = whitening, index: VectorIndex = index
            ) -> np.ndarray:
                # From the index when it holds them (a local faiss index: in its own space, whitened or not, and
                # 25x faster than reading the catalog), else the catalog's (other catalogs': the shared index's).
                reconstruct = getattr(index, "reconstruct", None)
                if reconstruct is not None and (wanted < FOREIGN_IDS_FROM).all():
                    try:
                        return reconstruct(wanted)
                    except KeyError:  # removed since it was found: the catalog says what is left
                        pass
                stored = self._stored_vectors(name, wanted)
                return whitening.apply(stored) if whitening is not None and len(stored) else stored

            if expand > 0:
                scores, found = alpha_query_expansion(
                    vectors, index, k, n_expand=expand, allowed_ids=allowed, exclude_ids=excluded,
                    vectors_of=transformed,
                )  # fmt: skip
            else:
                scores, found = search_excluding(index, vectors, k, allowed, excluded)
            # Other catalogs' images (a shared remote index) are not in this catalog: `results` reads them.
            hits = distinct(found[(found >= 0) & (found < FOREIGN_IDS_FROM)])
            if len(self.catalog.get_many(hits.tolist())) == len(hits):
                return Neighbours(found, scores, name)
            # A hit was deleted since the index answered: the next `index()` call sees the change.
        present = np.isin(found, np.fromiter(self.catalog.get_many(hits.tolist()), dtype=np.int64))
        present |= found >= FOREIGN_IDS_FROM
        return Neighbours(np.where(present, found, -1), np.where(present, scores, -np.inf), name)

    def results(self, found: Neighbours) -> list[list[SearchResult]]:
        """Typed results of a batched search, with each image's catalog record and tags.

        Hits of other catalogs sharing the remote index (ids >= FOREIGN_IDS_FROM) come with the path and
        label that catalog stored beside the vector, its uid in `catalog`, and no record or tags.
        """
        hits = distinct(found.ids[found.ids >= 0]).tolist()
        records = self.catalog.get_many(hits)
        tags = self.tags(hits)
        foreign = self._foreign_records(found.embedder, [i for i in hits if i >= FOREIGN_IDS_FROM])
        out = []
        for row_ids, row_scores in zip(found.ids, found.scores, strict=True):
            row = [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if int(i) >= 0]
            row = [(i, s) for i, s in row if i in records or i in foreign]
            out.append(
                [
                    SearchResult(
                        id=i, path=records[i].path, label=records[i].label, score=s, rank=rank,
                        record=records[i], tags=tuple(tags.get(i, ())),
                    )
                    if i in records
                    else SearchResult(
                        id=i, path=foreign[i].path, label=foreign[i].label, score=s, rank=rank,
                        catalog=foreign[i].catalog,
                    )
                    for rank, (i, s) in enumerate(row, start=1)
                ]
            )  # fmt: skip
        return out

    def _foreign_records(self, embedder: str | None, keys: list[int]) -> dict[int, Any]:
        """What other catalogs stored beside their vectors in the shared remote index of `embedder`."""
        if not keys:
            return {}
        reader = getattr(self.index(embedder), "foreign_records", None)
        return {} if reader is None else reader(keys)

    def _stored_vectors(self, embedder: str, ids: np.ndarray) -> np.ndarray:
        """Vectors of `ids` from the catalog (other catalogs' images: from the shared index), in the order asked."""
        ids = np.asarray(ids, dtype=np.int64)
        local = ids < FOREIGN_IDS_FROM
        found, vectors = self.catalog.vectors(embedder, ids[local].tolist())
        if not len(ids):
            return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), dtype=np.float32)
        row = {int(i): vector for i, vector in zip(found.tolist(), vectors, strict=True)}
        if not local.all():
            row.update(self.index(embedder).foreign_vectors(ids[~local]))  # type: ignore[attr-defined]
        dim = vectors.shape[1] if len(found) else self.index(embedder).dim
        gone = np.zeros(dim, dtype=np.float32)  # removed since found: adds nothing
        return np.stack([row[int(i)] if i < FOREIGN_IDS_FROM else row.get(int(i), gone) for i in ids])

    # --- concepts: search by words, tags ---------------------------------------------------------

    def concept_source(self, embedder: str | None = None) -> str | None:
        """The embedder whose stored concepts answer word queries and give tags: `embedder` (default:
        the collection's) when it stored concepts, else the first that did; None when none has."""
        stored = self.catalog.concept_embedders()
        name = embedder or self.default_embedder
        return name if name in stored else next(iter(stored), None)

    def _concept_vocabulary(self, embedder: str | None = None) -> tuple[str, object]:
        source = self.concept_source(embedder)
        if source is None:
            raise ConceptError(
                "no image of this collection has concepts yet: they come from an ImageNet classifier embedder "
                "(the default, efficientnet-lite0, is one); run `lookalike index FOLDER` "
                "(with --embedder efficientnet-lite0 if the collection's default is another) to compute them"
            )
        return source, vocabulary(self.catalog.concept_embedders()[source])

    def read_text(self, text: str, *, embedder: str | None = None, strict: bool = True) -> list[Term]:
        """How a word query is read: its terms, each a set of classes. ConceptError when no word matches
        a concept, or (`strict`) when any word does not."""
        _, vocab = self._concept_vocabulary(embedder)
        return vocab.read(text, strict=strict)  # type: ignore[attr-defined]

    def concept_scores(
        self, text: str, *, embedder: str | None = None, min_score: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the images matching every term of `text`: per term, the summed probability of
        its classes among the image's stored top classes (those of at least `min_score`); over terms,
        their product. Best first."""
        source, _ = self._concept_vocabulary(embedder)
        return self._score_terms(source, self.read_text(text, embedder=source), min_score)

    def _score_terms(self, source: str, terms: Sequence[Term], min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        ids: np.ndarray | None = None
        scores = np.zeros(0, dtype=np.float32)
        for term in terms:
            term_ids, term_scores = self.catalog.concept_scores(source, term.classes, min_score)
            if ids is None:
                ids, scores = term_ids, term_scores
                continue
            both, mine, theirs = np.intersect1d(ids, term_ids, return_indices=True)
            ids, scores = both, scores[mine] * term_scores[theirs]
        assert ids is not None
        order = np.lexsort((ids, -scores))  # best first, ties by id
        return ids[order], np.minimum(scores[order], 1.0).astype(np.float32)

    def tagged_ids(self, text: str, *, embedder: str | None = None) -> np.ndarray:
        """Ids of the images tagged with what `text` names: one of their tags (a class of probability at
        least TAG_MIN_SCORE) is that concept or below it ("dog": any breed), for every term. Sorted."""
        return np.sort(self.concept_scores(text, embedder=embedder, min_score=TAG_MIN_SCORE)[0])

    def tags(self, ids: Iterable[int], *, embedder: str | None = None) -> dict[int, list[Tag]]:
        """Each image's top concepts (the classes its network is most sure of), when the collection has any."""
        source = self.concept_source(embedder)
        if source is None:
            return {}
        vocab = vocabulary(self.catalog.concept_embedders()[source])
        return {
            i: vocab.tags([c for c, _ in row], [s for _, s in row])
            for i, row in self.catalog.concepts_of(source, ids).items()
        }

    def search_text(
        self,
        text: str,
        k: int = 5,
        *,
        embedder: str | None = None,
        label: str | None = None,
        tag: str | None = None,
    ) -> TextSearch:
        """The k images that best show what `text` says, best first.

        With an embedder that encodes text (CLIP), the words are embedded and searched like an image;
        otherwise they are read as concepts (ImageNet classes, through WordNet: "dog" finds every
        breed) and matched against each image's stored top classes. Words that match no concept
        raise ConceptError naming the closest known words; when some words match, the others are left
        out and listed in `ignored`.
        """
        name = embedder or self.default_embedder
        # Only an embedder that reads text is built here: concept search needs no network.
        model = self._embedders.get(name)
        if model is None and embedder_registry.reads_text(name):
            model = self.embedder(name)
        if model is not None and model.encodes_text:
            vector = model.embed_texts([text])
            found = self.search_vectors(vector, k, embedder=name, label=label, tag=tag, expand=0)  # words: no QE
            return TextSearch(text, self.results(found)[0], "text-encoder", name)
        source, vocab = self._concept_vocabulary(embedder)
        terms = tuple(self.read_text(text, embedder=source, strict=False))
        ignored = tuple(vocab.explain(word) for word in vocab.parse(text)[1])  # type: ignore[attr-defined]
        ids, scores = self._score_terms(source, terms)
        keep = np.ones(len(ids), dtype=bool)
        if label is not None:
            keep &= np.isin(ids, self.catalog.ids_with_label(label))
        if tag is not None:
            keep &= np.isin(ids, self.tagged_ids(tag, embedder=source))
        ids, scores = ids[keep][:k], scores[keep][:k]
        found = Neighbours(
            np.concatenate([ids, np.full(k - len(ids), -1, dtype=np.int64)])[None, :],
            np.concatenate([scores, np.full(k - len(ids), -np.inf, dtype=np.float32)])[None, :],
        )
        return TextSearch(text, self.results(found)[0], "concepts", source, terms, ignored)

    # --- reading the catalog -----------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRecord | None:
        """The catalog record of an image (readable or not), or None."""
        return self.catalog.get(int(image_id))

    def images(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        """The catalog records of `ids` by id (ids the catalog does not know are left out)."""
        return self.catalog.get_many(ids)

    def records(self, *, under: str | os.PathLike[str] | None = None, status: str | None = "ok") -> list[ImageRecord]:
        """Catalog records in id order (by default the readable ones), optionally only under a folder."""
        folder = None if under is None else str(Path(under).expanduser().resolve())
        return self.catalog.records(status=status, under=folder)

    def image_ids(self, label: str | None = None) -> np.ndarray:
        """Ids of the readable images in id order (one label's, if given), for browsing.

        The full list is kept until the catalog changes (here or in another process), so paging
        through a large collection does not list every row per page.
        """
        if label is not None:
            return np.sort(self.catalog.ids_with_label(label))
        return self._listing()[0]

    def indexed_root(self) -> str:
        """The deepest folder holding every indexed file except the collection's own (uploads); "" if none."""
        return self._listing()[1]

    def _listing(self) -> tuple[np.ndarray, str]:
        with self._lock:
            version = (self.catalog.data_version(), self._writes)
            if self._all_ids is None or version != self._all_ids[0]:
                records = self.catalog.records(status="ok")
                ids = np.fromiter((r.id for r in records), dtype=np.int64, count=len(records))
                inside = str(self.path) + os.sep
                root = _common_folder(r.path for r in records if not r.path.startswith(inside))
                self._all_ids = (version, ids, root)
            return self._all_ids[1], self._all_ids[2]

    def generation(self, embedder: str | None = None) -> int:
        """A number that moves on whenever the vectors of `embedder` change (here or in another process)."""
        return self.catalog.generation(embedder or self.default_embedder)

    def stored_vector(self, image_id: int, embedder: str | None = None) -> np.ndarray | None:
        """The stored vector of an indexed image, or None when it has none of that embedder."""
        _, stored = self.catalog.vectors(embedder or self.default_embedder, [int(image_id)])
        return stored[0] if len(stored) else None

    def vectors_of(self, ids: np.ndarray | Sequence[int], embedder: str | None = None) -> np.ndarray:
        """Stored vectors of `ids`, in the order asked (KeyError if one has none)."""
        ids = np.asarray(ids, dtype=np.int64)
        name = embedder or self.default_embedder
        try:
            return self._stored_vectors(name, ids)
        except KeyError as exc:
            raise KeyError(f"image {exc.args[0]} has no {name} vector") from None

    def vector_ids(self, embedder: str | None = None) -> set[int]:
        """Ids of the images that have a vector of `embedder`."""
        return self.catalog.vector_ids(embedder or self.default_embedder)

    def identical_files(self, ids: Iterable[int] | None = None) -> list[list[int]]:
        """Groups of ids (among `ids`, if given) whose files have the same bytes."""
        return self.catalog.duplicate_groups(ids)

    def throughput(self, embedder: str | None = None) -> tuple[int, float] | None:
        """(images, seconds) of the last sync that embedded at least 64 images with `embedder`."""
        stored = self.catalog.get_meta(f"throughput:{embedder or self.default_embedder}")
        if not stored:
            return None
        data = json.loads(stored)
        return int(data["images"]), float(data["seconds"])

    def vector_counts(self) -> dict[str, int]:
        """How many images each embedder has vectors of (embedders with none are left out)."""
        return {name: self.catalog.count_vectors(name) for name in self.catalog.embedders()}

    # --- duplicates (logic in duplicates.py) -----------------------------------------------------

    def duplicates(
        self,
        tier: str = "near",
        *,
        threshold: float | None = None,
        under: str | os.PathLike[str] | None = None,
        include_resolved: bool = False,
        verify: bool = True,
        progress: Progress | None = None,
        write_lock: WriteLock | None = None,
    ) -> DuplicateReport:
        """Groups of duplicate images, each with a suggested keeper and every member's similarity to it.

        `tier`: "exact" (same bytes or same pixels), "near" (the same photo after edits; the default) or
        "similar" (another shot of the same scene). `threshold` overrides the tier's calibrated cosine
        (`duplicates.default_threshold`). `under`: only images under this folder. Groups resolved by a decision
        (`decide_duplicates`) are left out unless `include_resolved`. The `near` tier embeds images that
        have no copy-descriptor vector yet, and only images not compared before are searched. With `verify`
        (the default) it also checks the pairs scoring a little below the threshold geometrically (local
        features and a RANSAC fit, from the image files) and counts those that pass; each pair is checked
        once (the outcome is kept in the catalog). `verify=False` skips that: faster, fewer strong edits found.
        `write_lock`: the caller's own lock, taken (with the collection's) only to commit the vectors it
        embeds, as in `embed_missing`.
        """
        from .duplicates import find_duplicates

        return find_duplicates(
            self,
            tier,
            threshold=threshold,
            under=under,
            include_resolved=include_resolved,
            verify=verify,
            progress=progress,
            write_lock=write_lock,
        )

    def decide_duplicates(self, ids: Sequence[int], decision: str, *, keeper: int | None = None) -> None:
        """Remember a decision about images shown as duplicates, so they do not come back.

        "keep": the group is resolved as it is (`keeper`, default the first id, is the one kept);
        "distinct": these images are not duplicates of each other and are never grouped together again.
        """
        from .duplicates import decide

        decide(self, ids, decision, keeper=keeper)

    def clear_duplicate_decisions(self, ids: Sequence[int] | None = None) -> int:
        """Forget the decisions involving `ids` (all decisions if None); returns how many were dropped."""
        from .duplicates import clear_decisions

        return clear_decisions(self, ids)

    def move_duplicates(
        self, groups: Sequence[DuplicateGroup], dest: str | os.PathLike[str], *, dry_run: bool = False
    ) -> MoveReport:
        """Move every non-keeper of `groups` into `dest` (keeping their folders below the indexed root)
        and write a manifest there for `undo_move`; nothing is deleted. A move that fails leaves that
        file in place and is reported; every file moved before it is recorded in the manifest."""
        from .duplicates import move_files

        return move_files(self, groups, Path(dest), dry_run=dry_run)

    def undo_move(self, manifest: str | os.PathLike[str]) -> UndoReport:
        """Put the files of a `move_duplicates` manifest back where they were.

        Refuses (DuplicatesError, nothing moved) when a moved file changed since, or when something
        now occupies its old place. Restored files are indexed again by the next sync.
        """
        from .duplicates import undo_moves

        return undo_moves(self, Path(manifest))

    # --- facts -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "images": self.catalog.count("ok"),
            "unreadable": self.catalog.count("error"),
            "labels": self.catalog.labels(),
            "default_embedder": self.default_embedder,
            "default_expand": self.default_expand,
            "indexed_embedders": {name: self.catalog.count_vectors(name) for name in self.catalog.embedders()},
            "index_type": self.config.get("index", DEFAULT_INDEX),
            **self._remote_index_stats(),
        }

    def _remote_index_stats(self) -> dict[str, object]:
        """The remote side of a remote index (Milvus: collection, rows, index, server version); {} for a local one."""
        if not is_milvus_kind(str(self.config.get("index", DEFAULT_INDEX))):
            return {}  # a local index is not loaded just to describe it
        return {"remote_index": self.index().describe()}  # type: ignore[attr-defined]


def _key(whitening: Whitening | None) -> str | None:
    return whitening.key if whitening is not None else None


class _NotReadable(Exception):
    """A file that is not read: its reason (no path in it), and what is known of its size and time."""

    def __init__(self, short: str, size: int = 0, mtime_ns: int = 0):
        super().__init__(short)
        self.short = short
        self.size = size
        self.mtime_ns = mtime_ns


def _refusal(stat: os.stat_result, max_bytes: int) -> str | None:
    """Why a file with this (l)stat is not read, or None: only regular files up to `max_bytes` are."""
    mode = stat.st_mode
    if stat_mode.S_ISLNK(mode):
        return "a symbolic link, not followed (use --follow-symlinks)"
    if not stat_mode.S_ISREG(mode):
        kind = (
            "a FIFO" if stat_mode.S_ISFIFO(mode)
            else "a socket" if stat_mode.S_ISSOCK(mode)
            else "a device" if stat_mode.S_ISCHR(mode) or stat_mode.S_ISBLK(mode)
            else "a folder" if stat_mode.S_ISDIR(mode)
            else "not a file"
        )  # fmt: skip
        return f"not a regular file ({kind})"
    if stat.st_size > max_bytes:
        return f"file too large ({stat.st_size} bytes, limit {max_bytes})"
    return None


def read_regular_file(path: Path, *, follow_symlinks: bool, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and its stat, read through one descriptor; raises `_NotReadable`.

    The descriptor is opened without following a final symbolic link (unless `follow_symlinks`)
    and without blocking (a FIFO would otherwise wait for a writer), then checked with fstat, so
    what is read is the file that was checked, never more than `max_bytes`.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotReadable("a symbolic link, not followed") from None
        if exc.errno == errno.ENOENT:
            raise _NotReadable("file not found") from None
        raise _NotReadable(f"cannot read: {exc.strerror}") from None
    try:
        stat = os.fstat(fd)
        refusal = _refusal(stat, max_bytes)
        if refusal is not None:
            raise _NotReadable(refusal, stat.st_size, stat.st_mtime_ns)
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(_READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise _NotReadable(f"file too large (over {max_bytes} bytes)", stat.st_size, stat.st_mtime_ns)
        return b"".join(chunks), stat
    except OSError as exc:
        raise _NotReadable(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _clear(exc: BaseException, what: str) -> BaseException:
    """The error to raise for a failed write: a clear one when the disk is full or read-only, else `exc`."""
    return _write_error_in(exc, what) or exc


def _write_error_in(exc: BaseException, what: str) -> CollectionWriteError | None:
    """A clear error for a write that failed because the disk is full or read-only (the cause may be wrapped)."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # a chain can loop (a library re-raising its cause)
        visited.add(id(seen))
        if isinstance(seen, CollectionWriteError):
            return seen
        error = write_error(seen, what)
        if error is not None:
            return error
        seen = seen.__cause__ or seen.__context__
    return None


def _as_query(query: ImageInput | np.ndarray) -> Query:
    return Query(vector=query) if isinstance(query, np.ndarray) else Query(image=query)


def _common_folder(paths: Iterable[str]) -> str:
    """The deepest folder that holds every one of `paths` ("" for none)."""
    lowest = highest = None
    for path in paths:  # the common prefix of the smallest and largest string is everyone's
        lowest = path if lowest is None or path < lowest else lowest
        highest = path if highest is None or path > highest else highest
    if lowest is None or highest is None:
        return ""
    return os.path.dirname(os.path.commonprefix([lowest, highest]) + "x")


def _box_in_decoded_pixels(box: Box, image: Image.Image) -> Box:
    """A box in the upright original's pixels, in pixels of `image` (a large JPEG may have been decoded reduced)."""
    width, height = image.info.get("original_size", image.size)
    sx, sy = image.width / max(1, width), image.height / max(1, height)
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def _clamp_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A crop box in pixels, clipped to the image, at least 1x1."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    left = int(max(0, min(x0, x1, w - 1)))
    top = int(max(0, min(y0, y1, h - 1)))
    right = int(min(w, max(x0, x1, left + 1)))
    bottom = int(min(h, max(y0, y1, top + 1)))
    return left, top, max(right, left + 1), max(bottom, top + 1)
