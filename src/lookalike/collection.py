"""`Collection`: catalog + embedders + vector indexes, the one object every entry point uses.

On disk a collection is a folder:

    catalog.sqlite          images, their content hash/label/status, and every embedder's vectors
    config.json             default embedder and index type
    indexes/NAME.faiss      one vector index per embedder (a cache, rebuilt from the catalog if stale)
    indexes/NAME.json       the catalog generation that index reflects
    models/NAME/            embedders trained on this collection's images
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import embedders as embedder_registry
from .catalog import Catalog, ImageRecord
from .embedders import DEFAULT_EMBEDDER, Embedder
from .images import ImageError, iter_image_files, open_image
from .index import DEFAULT_INDEX, VectorIndex, create_index, load_index
from .index.milvus import is_milvus_kind
from .index.rerank import alpha_query_expansion
from .storage import write_json

DEFAULT_COLLECTION_DIR = ".lookalike"

#: progress(stage, done, total); the core library never prints, the CLI draws bars from this
Progress = Callable[[str, int, int], None]
ImageInput = str | os.PathLike[str] | bytes | Image.Image
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SearchResult:
    id: int
    path: str
    label: str | None
    score: float
    rank: int
    #: set for an image another catalog indexed into a shared remote index (its uid); its path is on that machine
    catalog: str | None = None


@dataclass
class SyncReport:
    """What one `sync` did. Paths are absolute."""

    embedder: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unchanged: int = 0
    embedded: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        data["images_per_second"] = round(self.images_per_second, 2)
        return data


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


class Collection:
    """A folder holding a catalog of images and their vectors, searchable by similarity."""

    def __init__(self, path: Path, config: dict[str, object]):
        self.path = path
        self.config = config
        self.catalog = Catalog(path / "catalog.sqlite")
        self._embedders: dict[str, Embedder] = {}
        self._indexes: dict[str, VectorIndex] = {}
        # The catalog generation each in-memory index reflects: when another process (an `index`
        # run beside the server) changes an embedder's vectors, its generation moves on and the
        # index is reloaded on next use instead of answering from stale vectors.
        self._generations: dict[str, int] = {}
        self._lock = threading.RLock()  # guards index loading and every write
        #: decode JPEGs in draft mode when indexing (see benchmarks/bench_indexing.py for its effect)
        self.draft = True

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] = DEFAULT_COLLECTION_DIR,
        *,
        embedder: str | None = None,
        index: str | None = None,
        create: bool = True,
    ) -> Collection:
        """Open the collection at `path`, creating it if needed (unless `create=False`).

        `embedder`/`index` set the defaults of a new collection; for an existing one
        `embedder` only changes what this session uses by default.
        """
        path = Path(path).expanduser().resolve()
        config_path = path / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
        elif not create:
            raise FileNotFoundError(f"no lookalike collection at {path} (run `lookalike index FOLDER` first)")
        else:
            if embedder is not None and embedder not in embedder_registry.available(path / "models"):
                raise embedder_registry.EmbedderError(
                    f"unknown embedder {embedder!r}; available: {', '.join(embedder_registry.available())}"
                )
            path.mkdir(parents=True, exist_ok=True)
            config = {"version": 1, "default_embedder": embedder or DEFAULT_EMBEDDER, "index": index or DEFAULT_INDEX}
            write_json(config_path, config)
        collection = cls(path, config)
        if embedder is not None:
            collection.config["default_embedder"] = embedder
        return collection

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def default_embedder(self) -> str:
        return str(self.config.get("default_embedder", DEFAULT_EMBEDDER))

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    # --- embedders and indexes ----------------------------------------------------------------

    def embedder(self, name: str | None = None, *, weights: str | Path | None = None) -> Embedder:
        """The embedder called `name` (default: the collection's), built once and kept."""
        name = name or self.default_embedder
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = embedder_registry.create(name, weights=weights, models_dir=self.models_dir)
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
            index = None
            if index_path.is_file() and meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                if meta.get("generation") == generation:
                    index = load_index(index_path, owner=self.catalog)
            if index is None:
                ids, vectors = self.catalog.vectors(name)
                dim = vectors.shape[1] if len(ids) else self.embedder(name).dim
                index = create_index(str(self.config.get("index", DEFAULT_INDEX)), dim, name=name, owner=self.catalog)
                index.add(ids, vectors)
                self._save_index(name, index, generation)
            self._indexes[name] = index
            self._generations[name] = generation
            return index

    def _save_index(self, name: str, index: VectorIndex, generation: int) -> None:
        index_path, meta_path = self._index_paths(name)
        # Index first, then its generation: a crash in between leaves a stale marker, which
        # only costs a rebuild, never a wrong answer.
        index.save(index_path)
        write_json(meta_path, {"generation": generation, "kind": index.kind, "dim": index.dim, "count": len(index)})

    @contextmanager
    def _change(self) -> Iterator[None]:
        """One catalog transaction together with the index updates made inside it.

        Index updates happen before the commit, so a backend that refuses vectors (a remote
        engine that is down) rolls the catalog back. If anything fails, the in-memory indexes,
        which may hold part of the change, are dropped and rebuilt from the catalog when next used.
        """
        try:
            with self.catalog.transaction():
                yield
        except BaseException:
            self._indexes.clear()
            raise

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
        """Drop every stored vector of embedder `name` (its model was replaced); they are re-embedded when needed."""
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
            index.add(np.asarray(ids, dtype=np.int64), vectors)

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
        """Persist every loaded index (the catalog is always persisted)."""
        with self._lock:
            for name, index in self._indexes.items():
                # The generation it reflects, not the catalog's: a stale index must not pass for current.
                self._save_index(name, index, self._generations[name])

    # --- reading and embedding files ------------------------------------------------------------

    def _decode(self, path: Path, embedder: Embedder, known: ImageRecord | None, has_vector: bool) -> _Decoded:
        """Read, hash and preprocess one file (runs in a worker thread)."""
        try:
            stat = path.stat()
        except OSError as exc:
            return _Decoded(path, 0, 0, error=f"cannot read: {exc}")
        item = _Decoded(path, stat.st_size, stat.st_mtime_ns)
        try:
            data = path.read_bytes()
        except OSError as exc:
            item.error = f"cannot read: {exc}"
            return item
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
    ) -> Iterator[list[_Decoded]]:
        """Decode in worker threads, a few batches ahead of the consumer, in input order."""
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

        def submit(pool: ThreadPoolExecutor, batch: Sequence[Path]) -> list[Future[_Decoded]]:
            futures = []
            for p in batch:
                record = known.get(str(p))
                has_vector = record is not None and record.id in have_vectors
                futures.append(pool.submit(self._decode, p, embedder, record, has_vector))
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
    ) -> SyncReport:
        """Make the collection match `folder` (recursively) for one embedder.

        New files are embedded, changed files re-embedded, deleted files removed; an
        unchanged file is not even read. Each batch commits in one transaction, so an
        interrupted sync resumes where it stopped.
        """
        started = time.perf_counter()
        model = self.embedder(embedder)
        name = model.name
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {root}")
        report = SyncReport(embedder=name)
        with self._lock:
            self.index(name)  # loaded now, so each batch updates it in place
            known = {r.path: r for r in self.catalog.records(under=str(root))}
            have_vectors = self.catalog.vector_ids(name)
            seen: set[str] = set()
            todo: list[Path] = []
            for path in iter_image_files(root, exclude=self.path):
                key = str(path)
                seen.add(key)
                record = known.get(key)
                try:
                    stat = path.stat()
                except OSError as exc:
                    report.skipped.append((key, f"cannot read: {exc}"))
                    continue
                if record is not None and record.size == stat.st_size and record.mtime_ns == stat.st_mtime_ns:
                    if record.status == "error":
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

            done = 0
            if progress:
                progress("embedding", 0, len(todo))
            for batch in self._decoded_batches(
                todo, model, known, have_vectors, batch_size, workers or min(4, os.cpu_count() or 1)
            ):
                arrays = [item for item in batch if item.array is not None]
                t0 = time.perf_counter()
                vectors = model.embed_arrays(np.stack([a.array for a in arrays])) if arrays else None
                report.embed_seconds += time.perf_counter() - t0
                report.embedded += len(arrays)
                self._write_batch(name, batch, arrays, vectors, known, report)
                done += len(batch)
                if progress:
                    progress("embedding", done, len(todo))
            if todo or gone:
                self._save_index(name, self.index(name), self.catalog.generation(name))
            if report.embedded >= 64:
                self.catalog.set_meta(
                    f"throughput:{name}", json.dumps({"images": report.embedded, "seconds": report.embed_seconds})
                )
        report.seconds = time.perf_counter() - started
        return report

    def _write_batch(
        self,
        name: str,
        batch: list[_Decoded],
        arrays: list[_Decoded],
        vectors: np.ndarray | None,
        known: dict[str, ImageRecord],
        report: SyncReport,
    ) -> None:
        """Commit one decoded batch: rows, vectors and index updates in one transaction."""
        vector_of = {id(item): v for item, v in zip(arrays, vectors if vectors is not None else [], strict=True)}
        new_ids: list[int] = []
        new_vectors: list[np.ndarray] = []
        stale: list[int] = []  # rows whose content changed or became unreadable: every embedder's vectors go
        with self._change():
            for item in batch:
                key = str(item.path)
                record = known.get(key)
                label = item.path.parent.name
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
                image_id = self.catalog.upsert_image(
                    path=key, sha256=item.sha256, size=item.size, mtime_ns=item.mtime_ns, label=label,
                    width=item.width, height=item.height, status="ok",
                )  # fmt: skip
                if content_changed:
                    stale.append(image_id)
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

    # --- single images -----------------------------------------------------------------------

    def add_image(self, data: bytes, path: str | os.PathLike[str], label: str | None = None) -> ImageRecord:
        """Add (or replace) one image given as bytes, stored at `path`, embedded with every indexed embedder.

        Unlike files found by `sync`, its label is only what is given (none by default).
        """
        image = open_image(data)  # raises ImageError before anything is written
        target = Path(path).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        stat = target.stat()
        names = sorted(set(self.catalog.embedders()) | {self.default_embedder})
        vectors = {n: self.embedder(n).embed_images([image]) for n in names}
        width, height = image.info.get("original_size", image.size)
        with self._lock, self._change():
            image_id = self.catalog.upsert_image(
                path=str(target), sha256=sha256_of(data), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                label=label, width=width, height=height, status="ok",
            )  # fmt: skip
            self._forget([image_id])  # a replaced file's vectors of embedders not recomputed here go too
            for n, v in vectors.items():
                self._store(n, [image_id], v)
        record = self.catalog.get(image_id)
        assert record is not None
        return record

    def remove(self, ids: Iterable[int]) -> int:
        """Forget images by id (the files themselves are left alone); returns how many were known."""
        ids = [int(i) for i in ids]
        with self._lock:
            present = list(self.catalog.get_many(ids))
            if not present:
                return 0
            with self._change():
                self._forget(present)
                self.catalog.delete_images(present)
        return len(present)

    # --- search ----------------------------------------------------------------------------------

    def embed(self, image: ImageInput, *, embedder: str | None = None, box: Box | None = None) -> np.ndarray:
        """One image (path, bytes or Pillow image), optionally cropped to `box`, as a (dim,) vector."""
        if isinstance(image, Image.Image):
            pil = image.convert("RGB")
        else:
            pil = open_image(image if isinstance(image, bytes) else Path(image))
        if box is not None:
            pil = pil.crop(_clamp_box(box, pil.size))
        return self.embedder(embedder).embed_images([pil])[0]

    def search(
        self,
        image: ImageInput,
        k: int = 5,
        *,
        embedder: str | None = None,
        box: Box | None = None,
        label: str | None = None,
        expand: int = 0,
    ) -> list[SearchResult]:
        """The k images most similar to `image`, best first.

        An image that is itself in the collection is never returned as its own match.
        """
        name = embedder or self.default_embedder
        exclude: int | None = None
        vector: np.ndarray | None = None
        if box is None and isinstance(image, str | os.PathLike):
            record = self.catalog.get_by_path(str(Path(image).expanduser().resolve()))
            if record is not None and record.status == "ok":
                exclude = record.id
                _, stored = self.catalog.vectors(name, [record.id])
                vector = stored[0] if len(stored) else None
        if vector is None:
            vector = self.embed(image, embedder=name, box=box)
        return self.search_vector(vector, k, embedder=name, label=label, exclude=exclude, expand=expand)

    def search_id(
        self, image_id: int, k: int = 5, *, embedder: str | None = None, label: str | None = None
    ) -> list[SearchResult]:
        """Neighbours of an indexed image (itself excluded)."""
        name = embedder or self.default_embedder
        _, stored = self.catalog.vectors(name, [image_id])
        if not len(stored):
            raise KeyError(f"image {image_id} has no {name} vector in this collection")
        return self.search_vector(stored[0], k, embedder=name, label=label, exclude=image_id)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 5,
        *,
        embedder: str | None = None,
        label: str | None = None,
        exclude: int | None = None,
        expand: int = 0,
    ) -> list[SearchResult]:
        """The k nearest indexed images to `vector`; `expand` > 0 re-ranks by alpha query expansion
        over that many top neighbours (see index/rerank.py and benchmarks/README.md for its effect)."""
        name = embedder or self.default_embedder
        index = self.index(name)
        allowed = None
        if label is not None:
            allowed = self.catalog.ids_with_label(label)
            if not len(allowed):
                return []
        if expand > 0:
            scores, ids = alpha_query_expansion(
                vector[None, :], index, k, n_expand=expand, allowed_ids=allowed,
                exclude_ids=np.asarray([-1 if exclude is None else exclude]),
                vectors_of=lambda wanted: self._stored_vectors(name, wanted),
            )  # fmt: skip
        else:
            scores, ids = index.search(vector[None, :], k + (exclude is not None), allowed_ids=allowed)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0 and i != exclude][:k]
        records: dict[int, Any] = dict(self.catalog.get_many(i for i, _ in pairs))
        foreign = getattr(index, "foreign_records", None)  # images other catalogs put in a shared index
        if foreign is not None and len(records) < len(pairs):
            records.update(foreign(i for i, _ in pairs if i not in records))
        return [
            SearchResult(
                id=i,
                path=records[i].path,
                label=records[i].label,
                score=s,
                rank=rank,
                catalog=getattr(records[i], "catalog", None),
            )  # fmt: skip
            for rank, (i, s) in enumerate(((i, s) for i, s in pairs if i in records), start=1)
        ]

    def _stored_vectors(self, embedder: str, ids: np.ndarray) -> np.ndarray:
        """Vectors of `ids` from the catalog, in the order asked."""
        found, vectors = self.catalog.vectors(embedder, ids.tolist())
        row = {int(i): r for r, i in enumerate(found)}
        return vectors[[row[int(i)] for i in ids]]

    # --- facts -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "images": self.catalog.count("ok"),
            "unreadable": self.catalog.count("error"),
            "labels": self.catalog.labels(),
            "default_embedder": self.default_embedder,
            "indexed_embedders": {name: self.catalog.count_vectors(name) for name in self.catalog.embedders()},
            "index_type": self.config.get("index", DEFAULT_INDEX),
            **self._remote_index_stats(),
        }

    def _remote_index_stats(self) -> dict[str, object]:
        """The remote side of a remote index (Milvus: collection, rows, index, server version); {} for a local one."""
        if not is_milvus_kind(str(self.config.get("index", DEFAULT_INDEX))):
            return {}  # a local index is not loaded just to describe it
        return {"remote_index": self.index().describe()}  # type: ignore[attr-defined]


def _clamp_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A crop box in pixels, clipped to the image, at least 1x1."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    left = int(max(0, min(x0, x1, w - 1)))
    top = int(max(0, min(y0, y1, h - 1)))
    right = int(min(w, max(x0, x1, left + 1)))
    bottom = int(min(h, max(y0, y1, top + 1)))
    return left, top, max(right, left + 1), max(bottom, top + 1)
