"""The web app and REST API: search a collection by uploaded image or by indexed image id.

Safety rules this module keeps:
- a client never names a file: images are served by catalog id only, and uploads are
  stored under a name the server picks from the content hash;
- a file is served (or thumbnailed) only if it is still the regular file indexed: opened once,
  not through a symbolic link, with the size and SHA-256 in the catalog; no response names a path;
- every upload is size-limited (413) before it is fully received, and pixel-limited
  (413) before it is decoded in full; decoding and embedding share a bounded number of slots,
  so memory does not grow with the number of concurrent uploads;
- adds and deletes hold the write lock only to commit: decoding and embedding happen before;
- beyond loopback, the API needs a token and Host must be a bound name (`access.py`);
- embedders and indexes are loaded once, when the app is created, never per request.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import math
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from ..catalog import ImageRecord
from ..collection import (
    MAX_SEARCH_ATTEMPTS,
    UPLOADS_DIR,
    Box,
    Collection,
    CollectionWriteError,
    DiskFullError,
    FileCheckError,
    Neighbours,
    PreparedImage,
    ReadOnlyCollectionError,
    SearchResult,
)
from ..concepts import ConceptError
from ..confidence import calibrate_weak_match
from ..duplicates import (
    DEFAULT_TIER,
    EDGE_FLOOR,
    TIERS,
    DuplicateGroup,
    DuplicateReport,
    DuplicatesError,
    default_threshold,
    tier_embedder,
)
from ..embedders import EmbedderError
from ..images import ImageError, is_heif, open_image
from .access import (
    LOOPBACK_HOST_NAMES,
    TOKEN_ENV,
    HostCheckMiddleware,
    TokenMiddleware,
    bound_names,
    check_token,
    is_loopback,
)
from .batching import BatchedSearch, SearchFunction
from .limits import MULTIPART_OVERHEAD_BYTES, BodySizeLimitMiddleware
from .locking import FifoSemaphore, ReadWriteLock
from .thumbnails import ThumbnailCache

try:  # serves Swagger UI's files itself, so /docs works offline
    from fastapi_offline import FastAPIOffline as make_fastapi
except ImportError:  # plain FastAPI: /docs loads Swagger UI from a CDN
    make_fastapi = FastAPI

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
# 40 megapixels (e.g. 8000x5000): larger uploads are refused before being decoded in full.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_K = 12
MAX_K = 100
MAX_EXPAND = 50
MAX_PAGE = 200
MAX_LABEL_LENGTH = 100
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id is a 422, never an overflow
MAX_OFFSET = 2**31
MAX_TEXT_LENGTH = 200
# An add embeds on one thread (its own session of the network), searches on several: a stream of adds
# then leaves the other cores to the searches (issue 15: search p99 beside 2 adders <= 3 x alone).
ADD_THREADS = 1
# ... in threads of lower CPU priority (Linux: nice +10 for those threads only): when the cores are short,
# the scheduler gives them to searches first, and adds take what is left.
ADD_NICENESS = 10
MOVED_DIR = "moved-duplicates"  # where the duplicates page moves non-keepers: inside the collection's folder
THUMBNAILS_DIR = "thumbnails"
STATIC_DIR = Path(__file__).parent / "static"

# Upload file extension by the format Pillow detected (never by the client's file name).
_EXTENSION_BY_FORMAT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "PPM": ".ppm",
    "AVIF": ".avif",
    "HEIF": ".heic",
}
_MEDIA_TYPE_BY_SIGNATURE = [
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
]
# The page loads nothing from elsewhere; images may come from blob: URLs (the local query preview).
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
IMAGE_CACHE_CONTROL = "private, max-age=86400"
PREVIEW_QUALITY = 90


# --- response models (they also document the API at /docs) --------------------------------------


class ErrorOut(BaseModel):
    detail: str


class ImageOut(BaseModel):
    id: int
    name: str = Field(description="file name only; the server never reveals or accepts full paths")
    label: str | None
    width: int | None
    height: int | None
    image_url: str
    thumbnail_url: str


class TagOut(BaseModel):
    name: str = Field(description="an ImageNet class")
    score: float = Field(description="the probability the network gave it")


class SearchHit(ImageOut):
    rank: int
    score: float = Field(
        description="cosine similarity, 1.0 = identical (text search by concepts: the concepts' probability)"
    )
    weak: bool = Field(False, description="a weak match: its score is below `weak_below`")
    tags: list[TagOut] = Field(default=[], description="the image's top concepts (ImageNet classes)")


class ImageDetails(ImageOut):
    path: str = Field(description="where the file is, relative to the folder the collection indexed")
    file_size: int = Field(description="bytes")
    uploaded: bool = Field(description="stored by this server (added through the API); removing it deletes the file")


class QueryOut(BaseModel):
    id: int | None = Field(description="the indexed image searched with, or null for an upload")
    width: int
    height: int
    box: list[float] | None = Field(description="the searched region, [x0, y0, x1, y1] in original pixels")


class ElsewhereHit(BaseModel):
    """An image another collection indexed into the same shared remote index (Milvus): its file is on that
    collection's machine, so this server can only name it."""

    id: int = Field(description="its key in the shared index (never an id of this collection)")
    name: str = Field(description="file name only")
    label: str | None
    catalog: str = Field(description="the uid of the collection that indexed it")
    rank: int = Field(description="its rank among all the hits, `results` included")
    score: float


class SearchOut(BaseModel):
    embedder: str
    k: int
    label: str | None
    query: QueryOut
    results: list[SearchHit]
    expand: int = Field(
        0,
        description="query expansion over this many top results (0: none); the first result is the query's own "
        "nearest and every score its cosine to the query",
    )
    took_ms: float
    elsewhere: list[ElsewhereHit] = Field(
        [], description="hits that are other collections' images sharing this collection's remote index"
    )
    weak_below: float | None = Field(
        None,
        description="the similarity below which a result is a weak match, calibrated on this collection "
        "(null when it is too small to tell)",
    )
    no_close_match: bool = Field(False, description="every result is a weak match: nothing here is really alike")


class TermOut(BaseModel):
    words: str = Field(description="words of the query, as matched")
    concepts: list[str] = Field(description="the WordNet senses they name")
    classes: int = Field(description="how many ImageNet classes those cover")


class TextSearchOut(BaseModel):
    embedder: str = Field(description="the embedder whose concepts (or text encoder) answered")
    method: str = Field(description="'concepts' (words -> ImageNet classes) or 'text-encoder' (CLIP)")
    text: str
    k: int
    label: str | None
    terms: list[TermOut] = Field(description="how the words were read (concept search)")
    ignored: list[str] = Field(default=[], description="words left out: they match no concept (closest words given)")
    results: list[SearchHit]
    took_ms: float


class ImagePage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ImageOut]


class EmbedderOut(BaseModel):
    name: str
    vectors: int = Field(description="how many images of this collection it has embedded")
    default: bool
    ready: bool = Field(description="loaded by this server and usable for search")


class EmbeddersOut(BaseModel):
    default: str
    embedders: list[EmbedderOut]


class LimitsOut(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    max_k: int
    default_k: int
    read_only: bool = Field(description="adding and removing images is switched off")


class StatsOut(BaseModel):
    name: str
    images: int
    unreadable: int
    labels: dict[str, int]
    default_embedder: str
    indexed_embedders: dict[str, int]
    index_type: str


class DuplicateMemberOut(ImageOut):
    path: str = Field(description="where the file is, relative to the folder the collection indexed")
    file_size: int = Field(description="bytes")
    score: float = Field(description="cosine similarity to the group's keeper (1.0 for the keeper)")
    keeper: bool


class DuplicateGroupOut(BaseModel):
    key: str = Field(description="stable while the group's members do not change")
    keeper: int = Field(description="id of the suggested image to keep")
    reason: str = Field(description="why it is the keeper: most pixels, then largest file, then oldest")
    members: list[DuplicateMemberOut] = Field(description="the keeper first, then by score")


class FileProblemOut(BaseModel):
    path: str = Field(description="relative to the indexed folder")
    reason: str


class DuplicatesOut(BaseModel):
    tier: str
    threshold: float
    thresholds: dict[str, float] = Field(description="each tier's calibrated default threshold")
    min_threshold: float = Field(description="the lowest threshold accepted")
    groups: list[DuplicateGroupOut]
    unreadable: list[FileProblemOut] = Field(description="files that could not be read: never grouped")
    vanished: int = Field(description="indexed files no longer on disk, left out of every group")
    compared: int = Field(description="images searched for neighbours in this request (only new ones)")
    resolved: int = Field(description="groups left out because a decision resolved them")
    took_ms: float


class DecisionIn(BaseModel):
    ids: list[int] = Field(min_length=2, max_length=1000, description="the images decided about")
    decision: Literal["keep", "distinct"] = Field(
        description="keep: the group is resolved as it is; distinct: these images are not duplicates"
    )
    keeper: int | None = Field(None, description="keep: the image kept (default: the first id)")


class GroupChoiceIn(BaseModel):
    key: str = Field(max_length=200, description="a group's key, as GET /api/duplicates gave it")
    keeper: int | None = Field(None, description="the member to keep (default: the suggested keeper)")


class MoveIn(BaseModel):
    tier: Literal["exact", "near", "similar"] = DEFAULT_TIER
    threshold: float | None = Field(None, ge=EDGE_FLOOR, le=1.0)
    verify: bool = Field(True, description="near tier: as listed with this `verify`")
    groups: list[GroupChoiceIn] = Field(min_length=1, max_length=10_000)
    dry_run: bool = Field(False, description="only say what would be moved")


class MoveOneOut(BaseModel):
    id: int
    name: str
    source: str = Field(description="where it was, relative to the indexed folder")
    target: str = Field(description=f"where it goes, relative to the collection's folder ({MOVED_DIR}/...)")
    group: str


class MoveOut(BaseModel):
    dry_run: bool
    moves: list[MoveOneOut]
    failed: list[FileProblemOut]
    manifest: str | None = Field(description=f"the file under {MOVED_DIR}/ recording the moves (to undo them)")


# --- server state -------------------------------------------------------------------------------


class WeakMatchThresholds:
    """Each embedder's weak-match thresholds, calibrated on the collection (`calibrate_weak_match`).

    The whole-image threshold is calibrated when the server starts, the region one (it embeds
    crops: about a second per 60 on an idle machine) in a background thread started then; a
    region search that comes first waits for it. Both are calibrated again when the embedder's
    vectors have changed (the catalog generation moved on) and their number by a tenth or more.
    """

    def __init__(self, collection: Collection, index_lock: ReadWriteLock):
        self._collection = collection
        self._index_lock = index_lock
        # (embedder, region): (generation, vectors, threshold)
        self._known: dict[tuple[str, bool], tuple[int, int, float | None]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def threshold(self, embedder: str, region: bool = False) -> float | None:
        key = (embedder, region)
        generation = self._collection.generation(embedder)
        known = self._known.get(key)
        if known is not None and known[0] == generation:
            return known[2]
        with self._lock:
            known = self._known.get(key)
            if known is not None and known[0] == generation:
                return known[2]
            count = self._collection.vector_counts().get(embedder, 0)
            if known is not None and abs(count - known[1]) < max(1, known[1] // 10):
                self._known[key] = (generation, known[1], known[2])
                return known[2]
            # The read lock covers the index search only: a region calibration embeds a hundred crops,
            # and a write waiting behind a long read would hold up every search after it.
            threshold = calibrate_weak_match(
                self._collection, embedder, region=region, cancel=self._stopping, searching=self._index_lock.reading
            )
            if self._stopping.is_set():
                return None
            self._known[key] = (generation, count, threshold)
            return threshold

    def stop(self, timeout: float = 30.0) -> None:
        """Stop a calibration in progress and wait for it: a process must not exit while a thread
        is inside ONNX Runtime (the C++ runtime aborts the process)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)

    def calibrate_in_background(self, embedders: list[str]) -> threading.Thread:
        """Calibrate the region thresholds of `embedders` now, in a daemon thread (stopped at exit)."""

        def run() -> None:
            for name in embedders:
                try:
                    self.threshold(name, region=True)
                except Exception:  # the server goes on; a region search will try again
                    log.exception("calibrating the region threshold of %s failed", name)

        thread = threading.Thread(target=run, name="lookalike-calibrate", daemon=True)
        if not self._threads:
            atexit.register(self.stop)
        self._threads.append(thread)
        thread.start()
        return thread


@dataclass
class ServerState:
    collection: Collection
    ready_embedders: list[str]
    thumbnails: ThumbnailCache
    max_upload_bytes: int
    max_pixels: int
    # Searches read the index concurrently; adds and deletes change it alone.
    index_lock: ReadWriteLock
    # Decodings + embeddings at once (more than the cores only makes every request slower, and each
    # holds a decoded image in memory), first come first served.
    embed_slots: FifoSemaphore
    # Adds decode and embed in at most half of those slots (at least one), so that a stream of adds
    # leaves cores to the searches.
    add_slots: FifoSemaphore
    # ... in these threads, of lower CPU priority (`lower_priority`)
    add_workers: ThreadPoolExecutor
    # Unfiltered searches of concurrent requests go through the index together, per embedder.
    batched_search: dict[str, BatchedSearch]
    weak_match: WeakMatchThresholds
    read_only: bool = False
    # One duplicates listing at a time: the first of a large collection embeds every image, and two at once would
    # both update the same pair tables.
    duplicates_lock: threading.Lock = field(default_factory=threading.Lock)


async def server_state(request: Request) -> ServerState:
    # `async` because it never waits: FastAPI runs a plain-def dependency in its thread pool, and under load
    # every request then queues for a thread once more, behind all the requests waiting for one.
    return request.app.state.lookalike


def lower_priority() -> None:
    """Lower the calling thread's CPU priority by ADD_NICENESS (Linux sets a nice value per thread; elsewhere,
    or when refused, nothing changes)."""
    if sys.platform == "linux":
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + ADD_NICENESS))


def json_out(out: BaseModel) -> Response:
    """`out` as the JSON answer, serialised in the request's thread. Returned as a model, FastAPI would
    validate it again in a second trip through its thread pool: under 50 concurrent uploads, a finished
    search then queued for a thread once more, behind the new requests waiting for one."""
    return Response(out.model_dump_json(), media_type="application/json")


State = Annotated[ServerState, Depends(server_state)]
ImageId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="catalog id of an indexed image")]
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]
EmbedderParam = Annotated[str | None, Query(description="embedder name (default: the collection's)")]
ExpandParam = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_EXPAND,
        description="re-rank by query expansion over the top N results (0: off; default: the collection's)",
    ),
]
LabelParam = Annotated[str | None, Query(max_length=MAX_LABEL_LENGTH, description="only return images with this label")]
TagParam = Annotated[
    str | None,
    Query(max_length=MAX_TEXT_LENGTH, description="only return images tagged with this concept (words, e.g. dog)"),
]
BoxParam = Annotated[
    str | None,
    Query(
        description="search only this region of the query: x0,y0,x1,y1 in original-image pixels",
        examples=["10,20,200,180"],
        max_length=200,
    ),
]

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorOut, "description": "no such image"},
    413: {"model": ErrorOut, "description": "upload over the size or pixel limit"},
    422: {"model": ErrorOut, "description": "not a readable image, or bad parameters"},
}
WRITE_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    **ERROR_RESPONSES,
    403: {"model": ErrorOut, "description": "a write from a foreign page, or the server or collection is read-only"},
    507: {"model": ErrorOut, "description": "the collection's disk is full (nothing was changed)"},
}

router = APIRouter(prefix="/api")


# --- helpers ------------------------------------------------------------------------------------


def relative_path(state: ServerState, record: ImageRecord) -> str:
    """Where an image's file is, never as a server path: relative to the indexed folder, or under uploads/."""
    return shown_path(state, record.path)


def shown_path(state: ServerState, file: str) -> str:
    """A file's path as a client may see it: relative to the indexed folder, or under uploads/ or
    moved-duplicates/ of the collection; else its name only."""
    path = Path(file)
    if path.parent == state.collection.uploads_dir:
        return f"{UPLOADS_DIR}/{path.name}"
    moved = state.collection.path / MOVED_DIR
    if moved in path.parents:
        return f"{MOVED_DIR}/{path.relative_to(moved).as_posix()}"
    root = state.collection.indexed_root()
    if root and file.startswith(root.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(file, root)).as_posix()
    return path.name


def without_paths(state: ServerState, text: str, *files: str) -> str:
    """`text` (an error from a library) with these files' server paths, and the collection's, made relative."""
    for file in files:
        text = text.replace(file, shown_path(state, file))
    for folder in (state.collection.indexed_root(), str(state.collection.path)):
        if folder:
            text = text.replace(folder.rstrip(os.sep) + os.sep, "").replace(folder, ".")
    return text


def image_details(state: ServerState, record: ImageRecord) -> ImageDetails:
    return ImageDetails(
        **image_out(record).model_dump(),
        path=relative_path(state, record),
        file_size=record.size,  # the indexed size: /file serves the file only while it is still that file
        uploaded=Path(record.path).parent == state.collection.uploads_dir,
    )


def mark_weak_matches(state: ServerState, out: SearchOut) -> SearchOut:
    """Flag the results below the collection's calibrated weak-match threshold (lookalike.confidence)."""
    threshold = state.weak_match.threshold(out.embedder, region=out.query.box is not None)
    if threshold is None:
        return out
    out.weak_below = round(threshold, 4)
    for hit in out.results:
        hit.weak = hit.score < threshold
    out.no_close_match = bool(out.results) and all(hit.weak for hit in out.results)
    return out


async def require_writable(state: State) -> None:  # async: see `server_state`
    if state.read_only:
        raise HTTPException(403, "this server is read-only: adding and removing images is switched off")
    if state.collection.read_only:
        raise write_refused(ReadOnlyCollectionError("read-only"))


def _version(record: ImageRecord) -> str:
    return (record.sha256 or "0")[:12]


def image_out(record: ImageRecord) -> ImageOut:
    version = _version(record)
    return ImageOut(
        id=record.id,
        name=os.path.basename(record.path),
        label=record.label,
        width=record.width,
        height=record.height,
        image_url=f"/api/images/{record.id}/file?v={version}",
        thumbnail_url=f"/api/images/{record.id}/thumbnail?v={version}",
    )


def indexed_record(state: ServerState, image_id: int) -> ImageRecord:
    record = state.collection.image(image_id)
    if record is None or record.status != "ok":
        raise HTTPException(404, f"no indexed image with id {image_id}")
    return record


def resolve_embedder(state: ServerState, name: str | None) -> str:
    name = name or state.collection.default_embedder
    if name not in state.ready_embedders:
        choices = ", ".join(state.ready_embedders)
        raise HTTPException(422, f"embedder {name!r} is not indexed in this collection; choose one of {choices}")
    return name


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None or not text.strip():
        return None
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise HTTPException(422, "box must be four numbers x0,y0,x1,y1 (pixels of the original image)")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise HTTPException(422, "box must have x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def check_box_overlaps(box: tuple[float, float, float, float] | None, width: int, height: int) -> None:
    if box is None:
        return
    x0, y0, x1, y1 = box
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise HTTPException(422, f"box {list(box)} lies outside the {width}x{height} image")


def read_upload(state: ServerState, upload: UploadFile) -> bytes:
    data = upload.file.read(state.max_upload_bytes + 1)
    if len(data) > state.max_upload_bytes:
        raise HTTPException(413, f"upload too large: the limit is {state.max_upload_bytes} bytes")
    return data


def decode_upload(state: ServerState, data: bytes, embedder: str, box: Box | None) -> Image.Image:
    """The upload as an upright RGB image, decoded as the indexed files were (`Collection.decode_query`: a
    large JPEG reduced in draft mode), or a clear 413/422 error."""
    try:
        return state.collection.decode_query(data, embedder, box, max_pixels=state.max_pixels)
    except ImageError as exc:
        raise upload_error(exc) from exc


def upload_error(exc: ImageError) -> HTTPException:
    if exc.reason.startswith("image too large"):
        return HTTPException(413, exc.reason)
    return HTTPException(422, f"the upload is not a readable image: {exc.reason}")


def write_refused(exc: CollectionWriteError) -> HTTPException:
    """A failed write as a clear answer: the collection is read-only (403) or its disk full (507)."""
    if isinstance(exc, ReadOnlyCollectionError):
        return HTTPException(403, "this collection is read-only: images cannot be added or deleted")
    if isinstance(exc, DiskFullError):
        return HTTPException(507, "the collection's disk is full: nothing was changed")
    return HTTPException(500, "the collection could not be written: nothing was changed")


def verified_bytes(state: ServerState, record: ImageRecord, *, follow_symlinks: bool = False) -> bytes:
    """The indexed file's bytes, only if still the file indexed (else 404, no path in the message)."""
    try:
        return state.collection.read_file(record, follow_symlinks=follow_symlinks)
    except FileCheckError as exc:
        raise HTTPException(404, str(exc)) from exc


def hit_out(hit: SearchResult) -> SearchHit:
    assert hit.record is not None
    tags = [TagOut(name=t.name, score=t.score) for t in hit.tags]
    return SearchHit(**image_out(hit.record).model_dump(), rank=hit.rank, score=round(hit.score, 6), tags=tags)


def search_response(
    state: ServerState,
    vector: np.ndarray,
    *,
    k: int,
    embedder: str,
    label: str | None,
    expand: int | None,
    query: QueryOut,
    started: float,
    tag: str | None = None,
) -> SearchOut:
    """Search with a query vector (the query's own image, when indexed, left out) and shape the answer."""
    exclude = -1 if query.id is None else query.id
    expand = state.collection.default_expand if expand is None else expand
    for _ in range(MAX_SEARCH_ATTEMPTS):
        if label is None and tag is None:
            scores, ids = state.batched_search[embedder].search(vector, k, exclude, expand)
            found = Neighbours(ids[None, :], scores[None, :], embedder)
        else:
            with state.index_lock.reading():
                try:
                    found = state.collection.search_vectors(
                        vector[None, :], k, embedder=embedder, label=label, exclude=[exclude], expand=expand, tag=tag
                    )
                except ConceptError as exc:
                    raise HTTPException(422, str(exc)) from exc
        results = state.collection.results(found)[0]
        if len(results) == int((found.ids >= 0).sum()):
            break
        # An image was deleted between the search and the lookup of its record: search again for a full k.
    hits = [hit_out(hit) for hit in results if hit.record is not None]
    elsewhere = [
        ElsewhereHit(
            id=hit.id, name=os.path.basename(hit.path), label=hit.label, catalog=hit.catalog, rank=hit.rank,
            score=round(hit.score, 6),
        )
        for hit in results
        if hit.catalog is not None
    ]  # fmt: skip
    took_ms = (time.perf_counter() - started) * 1000
    out = SearchOut(
        embedder=embedder, k=k, label=label, query=query, results=hits, expand=expand, took_ms=round(took_ms, 2),
        elsewhere=elsewhere,
    )  # fmt: skip
    return mark_weak_matches(state, out)


def embed_query(state: ServerState, data: bytes, embedder: str, box: Box | None) -> tuple[np.ndarray, tuple[int, int]]:
    """(vector, upright original size) of image bytes (or of their region).

    Decoded and embedded in one of a bounded number of slots, first come first served: at most
    that many decoded images exist at once, however many uploads arrive together.
    """
    with state.embed_slots:
        # Alone, the embedding takes every core (the lowest latency); beside others, one thread each, which is
        # how the cores embed the most images per second (EfficientNet-Lite0 on 2 cores, one image per call:
        # 1 thread x 2 at once 158-174 images/s, 2 threads x 2 at once 133-138).
        threads = None if state.embed_slots.taken <= 1 else 1
        image = decode_upload(state, data, embedder, box)
        width, height = image.info.get("original_size", image.size)
        check_box_overlaps(box, width, height)
        return state.collection.embed(image, embedder=embedder, box=box, threads=threads), (width, height)


def media_type_of(data: bytes) -> str:
    head = data[:16]
    for signature, media_type in _MEDIA_TYPE_BY_SIGNATURE:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "image/avif"
    if is_heif(head):
        return "image/heic"
    return "application/octet-stream"


def upload_file_name(data: bytes, sha256: str) -> str:
    """A name chosen by the server: the content hash plus the extension of the detected format."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            extension = _EXTENSION_BY_FORMAT.get(image.format or "", ".img")
    except Exception:  # already decoded once successfully; this only picks an extension
        extension = ".img"
    return f"{sha256[:32]}{extension}"


# --- routes -------------------------------------------------------------------------------------


@router.post("/search", response_model=SearchOut, responses=ERROR_RESPONSES, summary="Search by an uploaded image")
def search_upload(
    state: State,
    file: Annotated[UploadFile, File(description="the query image")],
    k: KParam = DEFAULT_K,
    embedder: EmbedderParam = None,
    label: LabelParam = None,
    box: BoxParam = None,
    expand: ExpandParam = None,
    tag: TagParam = None,
) -> Response:
    started = time.perf_counter()
    name = resolve_embedder(state, embedder)
    region = parse_box(box)
    vector, (width, height) = embed_query(state, read_upload(state, file), name, region)
    query = QueryOut(id=None, width=width, height=height, box=list(region) if region else None)
    return json_out(
        search_response(
            state, vector, k=k, embedder=name, label=label, expand=expand, query=query, started=started, tag=tag
        )
    )


def full_size_jpeg(state: ServerState, data: bytes) -> bytes:
    """A photo's bytes as a JPEG of the same pixel size, upright: what the page shows in place of a photo the
    browser cannot decode (HEIC outside Safari), so a region drawn on it is in the coordinates of a search's `box`.
    ImageError for bytes that are no image; 413 for a JPEG over the pixel limit (it is decoded reduced)."""
    with state.embed_slots:  # as many decoded photos at once as searches may hold
        image = open_image(data, max_pixels=state.max_pixels)
        if image.size != image.info.get("original_size", image.size):
            raise HTTPException(413, "the photo is too large to preview; a browser shows its JPEG itself")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=PREVIEW_QUALITY)
        return out.getvalue()


def jpeg_response(data: bytes, cache_control: str) -> Response:
    headers = {"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"}
    return Response(data, media_type="image/jpeg", headers=headers)


PREVIEW_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/jpeg": {}}},
    404: {"model": ErrorOut},
    413: {"model": ErrorOut},
    422: {"model": ErrorOut},
}


@router.post(
    "/preview",
    response_class=Response,
    responses=PREVIEW_RESPONSES,
    summary="An uploaded photo as a JPEG of the same size, upright: for formats a browser cannot show (HEIC)",
)
def preview_upload(state: State, file: Annotated[UploadFile, File(description="the photo")]) -> Response:
    try:
        return jpeg_response(full_size_jpeg(state, read_upload(state, file)), "no-store")
    except ImageError as exc:
        raise upload_error(exc) from exc


@router.get(
    "/images/{image_id}/preview",
    response_class=Response,
    responses=PREVIEW_RESPONSES,
    summary="An indexed photo as a JPEG of the same size, upright: for formats a browser cannot show (HEIC)",
)
def get_preview(state: State, image_id: ImageId) -> Response:
    record = indexed_record(state, image_id)
    # A re-encode of the checked bytes only; a link is followed, as for thumbnails.
    data = verified_bytes(state, record, follow_symlinks=True)
    try:
        return jpeg_response(full_size_jpeg(state, data), IMAGE_CACHE_CONTROL)
    except ImageError as exc:
        raise HTTPException(404, f"image {image_id} is no longer readable") from exc


@router.get(
    "/images/{image_id}/similar",
    response_model=SearchOut,
    responses=ERROR_RESPONSES,
    summary="Search by an indexed image (itself excluded)",
)
def search_by_id(
    state: State,
    image_id: ImageId,
    k: KParam = DEFAULT_K,
    embedder: EmbedderParam = None,
    label: LabelParam = None,
    box: BoxParam = None,
    expand: ExpandParam = None,
    tag: TagParam = None,
) -> Response:
    started = time.perf_counter()
    name = resolve_embedder(state, embedder)
    region = parse_box(box)
    record = indexed_record(state, image_id)
    query = QueryOut(
        id=image_id, width=record.width or 0, height=record.height or 0, box=list(region) if region else None
    )
    # The stored vector when the whole image is searched: no decoding, no embedding.
    vector = state.collection.stored_vector(image_id, name) if region is None else None
    if vector is None:
        data = verified_bytes(state, record, follow_symlinks=True)  # only the indexed bytes, never a swapped file
        try:
            vector, (width, height) = embed_query(state, data, name, region)
        except HTTPException as exc:
            if exc.status_code == 422 and exc.detail.startswith("box"):
                raise
            raise HTTPException(404, f"image {image_id} is no longer readable") from exc
        query = QueryOut(id=image_id, width=width, height=height, box=query.box)
    return json_out(
        search_response(
            state, vector, k=k, embedder=name, label=label, expand=expand, query=query, started=started, tag=tag
        )
    )


@router.get(
    "/search/text",
    response_model=TextSearchOut,
    responses=ERROR_RESPONSES,
    summary='Search by words: ImageNet concepts ("dog" finds every breed), or CLIP\'s text encoder',
)
def search_text(
    state: State,
    q: Annotated[str, Query(min_length=1, max_length=MAX_TEXT_LENGTH, description="the words, e.g. golden retriever")],
    k: KParam = DEFAULT_K,
    embedder: EmbedderParam = None,
    label: LabelParam = None,
    tag: TagParam = None,
) -> Response:
    started = time.perf_counter()
    name = resolve_embedder(state, embedder) if embedder is not None else None
    try:
        with state.index_lock.reading():
            found = state.collection.search_text(q, k, embedder=name, label=label, tag=tag)
    except (ConceptError, EmbedderError) as exc:
        raise HTTPException(422, str(exc)) from exc
    terms = [TermOut(words=t.words, concepts=list(t.concepts), classes=len(t.classes)) for t in found.terms]
    return json_out(
        TextSearchOut(
            embedder=found.embedder,
            method=found.method,
            text=q,
            k=k,
            label=label,
            terms=terms,
            ignored=list(found.ignored),
            results=[hit_out(hit) for hit in found.results if hit.record is not None],
            took_ms=round((time.perf_counter() - started) * 1000, 2),
        )
    )


@router.get("/images", response_model=ImagePage, summary="Browse the collection, a page at a time")
def list_images(
    state: State,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 48,
    label: LabelParam = None,
) -> ImagePage:
    ids = state.collection.image_ids(label)
    page = [int(i) for i in ids[offset : offset + limit]]
    records = state.collection.images(page)
    items = [image_out(records[i]) for i in page if i in records]
    return ImagePage(total=len(ids), offset=offset, limit=limit, items=items)


@router.post(
    "/images",
    response_model=ImageOut,
    status_code=201,
    responses=WRITE_ERROR_RESPONSES,
    summary="Add an uploaded image to the collection",
    dependencies=[Depends(require_writable)],
)
def add_image(
    state: State,
    file: Annotated[UploadFile, File(description="the image to add")],
    label: Annotated[
        str | None, Query(max_length=MAX_LABEL_LENGTH, description="its label (default: 'uploads')")
    ] = None,
) -> ImageOut:
    if label is not None and (not label.strip() or any(ord(c) < 32 for c in label)):
        raise HTTPException(422, "label must be non-blank printable text")
    data = read_upload(state, file)
    # Decoded and embedded outside the write lock (refused before anything is written) ...
    with state.add_slots, state.embed_slots:
        try:
            prepared: PreparedImage = state.add_workers.submit(
                state.collection.prepare_image, data, max_pixels=state.max_pixels, threads=ADD_THREADS
            ).result()
        except ImageError as exc:
            raise upload_error(exc) from exc
    # ... which is held only to move the file into place and commit its row and vectors.
    target = state.collection.uploads_dir / upload_file_name(data, prepared.sha256)
    try:
        record = state.collection.add_image(prepared, target, label=label, write_lock=state.index_lock.writing)
    except CollectionWriteError as exc:
        raise write_refused(exc) from exc
    return image_out(record)


@router.get("/images/{image_id}", response_model=ImageDetails, responses=ERROR_RESPONSES, summary="An image's details")
def get_image(state: State, image_id: ImageId) -> ImageDetails:
    return image_details(state, indexed_record(state, image_id))


@router.get(
    "/images/{image_id}/file",
    responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorOut}},
    response_class=Response,
    summary="The original image file (only while it is still the regular file indexed)",
)
def get_image_file(state: State, image_id: ImageId) -> Response:
    record = indexed_record(state, image_id)
    # Read once through one descriptor and checked against the catalog: what is sent is what was checked.
    data = verified_bytes(state, record)
    return Response(
        data,
        media_type=media_type_of(data),
        headers={"Cache-Control": IMAGE_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorOut}},
    summary="A small JPEG of the image (made once, then cached)",
)
def get_thumbnail(state: State, image_id: ImageId) -> Response:
    record = indexed_record(state, image_id)
    try:
        # A re-encode of the checked bytes only; a link is followed (files indexed with --follow-symlinks).
        data = state.thumbnails.get(record, lambda: verified_bytes(state, record, follow_symlinks=True))
    except ImageError as exc:
        raise HTTPException(404, f"image {image_id} is no longer readable") from exc
    return jpeg_response(data, IMAGE_CACHE_CONTROL)


@router.delete(
    "/images/{image_id}",
    status_code=204,
    responses={404: {"model": ErrorOut}, 403: WRITE_ERROR_RESPONSES[403], 507: WRITE_ERROR_RESPONSES[507]},
    summary="Remove an image by id",
    dependencies=[Depends(require_writable)],
)
def delete_image(state: State, image_id: ImageId) -> Response:
    try:
        with state.index_lock.writing():
            indexed_record(state, image_id)
            # Files this server stored are its to delete, under the same lock as the row;
            # files from the user's folders are left alone.
            state.collection.remove([image_id], delete_uploads=True)
    except CollectionWriteError as exc:
        raise write_refused(exc) from exc
    state.thumbnails.discard(image_id)
    return Response(status_code=204)


@router.get("/stats", response_model=StatsOut, summary="Collection statistics")
def stats(state: State) -> StatsOut:
    facts = state.collection.stats()
    return StatsOut(
        name=state.collection.path.name,
        images=int(facts["images"]),  # type: ignore[arg-type]
        unreadable=int(facts["unreadable"]),  # type: ignore[arg-type]
        labels=facts["labels"],  # type: ignore[arg-type]
        default_embedder=str(facts["default_embedder"]),
        indexed_embedders=facts["indexed_embedders"],  # type: ignore[arg-type]
        index_type=str(facts["index_type"]),
    )


@router.get("/limits", response_model=LimitsOut, summary="What this server accepts")
def limits(state: State) -> LimitsOut:
    return LimitsOut(
        max_upload_bytes=state.max_upload_bytes,
        max_pixels=state.max_pixels,
        max_k=MAX_K,
        default_k=DEFAULT_K,
        read_only=state.read_only or state.collection.read_only,
    )


@router.get("/embedders", response_model=EmbeddersOut, summary="Embedders and which ones can be searched")
def embedders(state: State) -> EmbeddersOut:
    collection = state.collection
    names = sorted(set(collection.available_embedders()) | set(state.ready_embedders))
    counts = collection.vector_counts()
    return EmbeddersOut(
        default=collection.default_embedder,
        embedders=[
            EmbedderOut(
                name=name,
                vectors=counts.get(name, 0),
                default=name == collection.default_embedder,
                ready=name in state.ready_embedders,
            )
            for name in names
        ],
    )


# --- duplicates: thin shells over Collection.duplicates and its decisions and moves ---------------


def duplicate_groups(state: ServerState, tier: str, threshold: float | None, verify: bool = True) -> DuplicateReport:
    """Collection.duplicates in an embedding slot. The `near` tier embeds the images it has not seen (minutes, the
    first time, in a large collection); it takes the index's write lock only to commit each batch, so searches
    and adds go on meanwhile."""
    try:
        with state.duplicates_lock, state.embed_slots:
            report = state.collection.duplicates(
                tier, threshold=threshold, include_resolved=False, verify=verify, write_lock=state.index_lock.writing
            )
    except DuplicatesError as exc:
        raise HTTPException(422, without_paths(state, str(exc))) from exc
    except CollectionWriteError as exc:  # the near tier stores the vectors it computes
        raise write_refused(exc) from exc
    return report


def group_out(state: ServerState, group: DuplicateGroup) -> DuplicateGroupOut | None:
    records = state.collection.images(group.ids)
    members = [
        DuplicateMemberOut(
            **image_out(records[m.id]).model_dump(),
            path=relative_path(state, records[m.id]),
            file_size=m.size,
            score=round(m.score, 4),
            keeper=m.id == group.keeper.id,
        )
        for m in group.members
        if m.id in records
    ]
    if len(members) < 2:
        return None  # removed while the groups were being formed
    return DuplicateGroupOut(key=group.key, keeper=group.keeper.id, reason=group.reason, members=members)


@router.get(
    "/duplicates",
    response_model=DuplicatesOut,
    responses=ERROR_RESPONSES,
    summary="Groups of duplicate images, each with a suggested keeper",
)
def list_duplicates(
    state: State,
    tier: Annotated[
        Literal["exact", "near", "similar"],
        Query(description="exact: same bytes or pixels; near: the same photo after edits; similar: another shot"),
    ] = DEFAULT_TIER,
    threshold: Annotated[
        float | None, Query(ge=EDGE_FLOOR, le=1.0, description="cosine similarity (default: the tier's calibrated one)")
    ] = None,
    verify: Annotated[
        bool,
        Query(description="near tier: also check pairs a little below the threshold geometrically (slower)"),
    ] = True,
) -> DuplicatesOut:
    started = time.perf_counter()
    report = duplicate_groups(state, tier, threshold, verify)
    shown = [out for out in (group_out(state, g) for g in report.groups) if out is not None]
    return DuplicatesOut(
        tier=report.tier,
        threshold=report.threshold,
        thresholds={
            name: default_threshold(name, tier_embedder(name, state.collection.default_embedder)) for name in TIERS
        },
        min_threshold=EDGE_FLOOR,
        groups=shown,
        unreadable=[
            FileProblemOut(path=shown_path(state, path), reason=without_paths(state, reason, path))
            for path, reason in report.unreadable
        ],
        vanished=len(report.vanished),
        compared=report.compared,
        resolved=report.resolved,
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.post(
    "/duplicates/decisions",
    status_code=204,
    responses={**ERROR_RESPONSES, 403: {"model": ErrorOut, "description": "the server is read-only"}},
    summary="Remember that a group is resolved (keep) or is not duplicates (distinct): it does not come back",
    dependencies=[Depends(require_writable)],
)
def decide_duplicates(state: State, decision: DecisionIn) -> Response:
    try:
        state.collection.decide_duplicates(decision.ids, decision.decision, keeper=decision.keeper)
    except DuplicatesError as exc:
        raise HTTPException(422, without_paths(state, str(exc))) from exc
    return Response(status_code=204)


@router.post(
    "/duplicates/move",
    response_model=MoveOut,
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorOut, "description": "the server is read-only"},
        409: {"model": ErrorOut, "description": "a group changed since it was listed"},
    },
    summary=f"Move the non-keepers of groups into the collection's {MOVED_DIR}/ folder (nothing is deleted)",
    dependencies=[Depends(require_writable)],
)
def move_duplicates(state: State, move: MoveIn) -> MoveOut:
    by_key = {g.key: g for g in duplicate_groups(state, move.tier, move.threshold, move.verify).groups}
    chosen = []
    for choice in move.groups:
        group = by_key.get(choice.key)
        if group is None:
            raise HTTPException(409, f"group {choice.key} changed or is gone since it was listed: list them again")
        if choice.keeper is not None and choice.keeper != group.keeper.id:
            keeper = next((m for m in group.members if m.id == choice.keeper), None)
            if keeper is None:
                raise HTTPException(422, f"image {choice.keeper} is not a member of group {choice.key}")
            others = tuple(m for m in group.members if m is not keeper)
            group = replace(group, keeper=keeper, members=(keeper, *others), reason="chosen by you")
        chosen.append(group)
    dest = state.collection.path / MOVED_DIR
    try:
        with state.index_lock.writing():
            report = state.collection.move_duplicates(chosen, dest, dry_run=move.dry_run)
    except DuplicatesError as exc:
        raise HTTPException(422, without_paths(state, str(exc))) from exc
    for done in report.moves if not move.dry_run else []:
        state.thumbnails.discard(done.id)
    return MoveOut(
        dry_run=report.dry_run,
        moves=[
            MoveOneOut(
                id=m.id,
                name=Path(m.source).name,
                source=shown_path(state, m.source),
                target=shown_path(state, m.target),
                group=m.group,
            )
            for m in report.moves
        ],
        failed=[
            FileProblemOut(path=shown_path(state, path), reason=without_paths(state, reason, path))
            for path, reason in report.failed
        ],
        manifest=None if report.manifest is None else shown_path(state, str(report.manifest)),
    )


# --- app ----------------------------------------------------------------------------------------


class SameOriginWritesMiddleware:
    """Refuses a cross-site page's writes (adding or deleting images) even when CORS is off.

    A browser sends a multipart POST to any site without asking first; only the Origin
    header tells the server that a foreign page sent it.
    """

    def __init__(self, app: ASGIApp, allowed_origins: list[str]):
        self.app = app
        self.allowed_origins = set(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            headers = dict(scope.get("headers", []))
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and origin not in self.allowed_origins and urlsplit(origin).netloc != host:
                response = JSONResponse({"detail": f"cross-origin request from {origin} refused"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def locked_search(collection: Collection, embedder: str, lock: ReadWriteLock) -> SearchFunction:
    """The batched searches of one embedder: the collection's search, alongside other readers."""

    def search(queries: np.ndarray, count: int, exclude: np.ndarray, expand: int) -> tuple[np.ndarray, np.ndarray]:
        with lock.reading():
            found = collection.search_vectors(queries, count, embedder=embedder, exclude=exclude, expand=expand)
        return found.scores, found.ids

    return search


def load_embedders(collection: Collection, *, adds: bool = True) -> list[str]:
    """Load every searchable embedder and its index now, and run each once (and its session for adds, when
    `adds`), so no request pays for it."""
    names = sorted(set(collection.vector_counts()) | {collection.default_embedder})
    blank = Image.new("RGB", (64, 64))
    ready = []
    for name in names:
        try:
            collection.index(name)
            model = collection.embedder(name)
            model.embed_images([blank])
            if adds:
                model.on_threads(ADD_THREADS).embed_images([blank])
            if model.encodes_text:  # CLIP: its text tower too (exported now, not in a request)
                model.embed_texts(["a photo"])
        except EmbedderError as exc:
            if name == collection.default_embedder:
                raise
            log.warning("embedder %s cannot be loaded, searching with it is disabled: %s", name, exc)
            continue
        ready.append(name)
    return ready


def create_app(
    collection: Collection,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cors_origins: list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_hosts: list[str] | None = None,
    token: str | None = None,
    public_read: bool = False,
    read_only: bool = False,
) -> FastAPI:
    """The web app and API over an open collection (loads its embedders and indexes now).

    `allowed_hosts`, when given, refuses requests for any other Host header (DNS rebinding).
    `token`, when given, is needed by every /api request (`Authorization: Bearer TOKEN`), except
    reads when `public_read`. `read_only` refuses adding and removing images (403); so does a
    collection opened read-only (its folder cannot be written).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.lookalike.weak_match.stop()  # a calibration thread must not outlive the app
        app.state.lookalike.add_workers.shutdown()  # nor an add inside ONNX Runtime

    app = make_fastapi(
        lifespan=lifespan,
        title="lookalike",
        version="0.1.0",
        description="Find the images in a collection that look like a given image.",
        redoc_url=None,  # ReDoc's bundle loads its logo from the network; /docs is served whole from here
    )
    ready = load_embedders(collection, adds=not (read_only or collection.read_only))
    deleted, forgotten = ([], []) if read_only else collection.tidy_uploads()  # what a killed server left
    if deleted or forgotten:
        log.warning(
            "uploads: %d stray files deleted, %d images whose file was gone removed", len(deleted), len(forgotten)
        )
    index_lock = ReadWriteLock()
    weak_match = WeakMatchThresholds(collection, index_lock)
    collection.on_close(weak_match.stop)  # its thread must not outlive the catalog's connection
    for name in ready:
        weak_match.threshold(name)  # calibrated now, so no request pays for it
    weak_match.calibrate_in_background(ready)
    app.state.lookalike = ServerState(
        collection=collection,
        ready_embedders=ready,
        thumbnails=ThumbnailCache(collection.path / THUMBNAILS_DIR, max_pixels=max_pixels),
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        index_lock=index_lock,
        embed_slots=FifoSemaphore(max(1, os.cpu_count() or 1)),
        add_slots=FifoSemaphore(max(1, (os.cpu_count() or 1) // 2)),
        add_workers=ThreadPoolExecutor(
            max(1, (os.cpu_count() or 1) // 2), thread_name_prefix="lookalike-add", initializer=lower_priority
        ),
        batched_search={name: BatchedSearch(locked_search(collection, name, index_lock)) for name in ready},
        weak_match=weak_match,
        read_only=read_only,
    )
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_SECURITY_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # Added last = runs first: refuse unknown hosts, missing tokens, oversize bodies and foreign
    # writes before any work.
    app.add_middleware(SameOriginWritesMiddleware, allowed_origins=cors_origins or [])
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        file_limit=max_upload_bytes,
    )
    if token is not None:
        app.add_middleware(TokenMiddleware, token=check_token(token), public_read=public_read)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
        )
    if allowed_hosts:
        app.add_middleware(HostCheckMiddleware, allowed=allowed_hosts)
    return app


def serve(
    collection_path: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    cors_origins: list[str] | None = None,
    *,
    token: str | None = None,
    public_read: bool = False,
    allowed_hosts: list[str] | None = None,
    read_only: bool = False,
) -> None:
    """Run the web app on host:port until interrupted (loopback only unless told otherwise).

    On loopback it answers only to loopback Host names and needs no token (unless given one).
    Bound to any other address it needs a token (`token`, else the LOOKALIKE_TOKEN environment
    variable) for every /api request, reads included unless `public_read`, and answers only to
    the bound names plus `allowed_hosts`.
    """
    import uvicorn

    token = token or os.environ.get(TOKEN_ENV) or None
    if is_loopback(host):
        # A foreign page cannot rebind its DNS name to us: only loopback names are answered.
        names = LOOPBACK_HOST_NAMES + list(allowed_hosts or [])
        if token is not None:
            check_token(token)
    else:
        check_token(token)  # raises AccessError: beyond loopback, never without a token
        names = bound_names(host) + list(allowed_hosts or [])
        log.warning(
            "serving on %s: reachable from other machines. Every API request needs the access token%s; "
            "answering to Host %s (add names with --allowed-host). Traffic is not encrypted: use a TLS proxy "
            "beyond a trusted network.",
            host, " (except searches and reads: --public-read)" if public_read else "", ", ".join(names),
        )  # fmt: skip
    collection = Collection.open(collection_path, create=False, read_only=True if read_only else None)
    try:
        app = create_app(
            collection,
            max_upload_bytes=max_upload_bytes,
            cors_origins=cors_origins,
            allowed_hosts=names,
            token=token,
            public_read=public_read,
            read_only=read_only,
        )
        uvicorn.run(app, host=host, port=port, log_level="info")
        app.state.lookalike.weak_match.stop()
    finally:
        try:
            collection.save()  # keep the in-memory index changes, so the next start needs no rebuild
        except CollectionWriteError as exc:
            log.error("%s; it is rebuilt from the catalog at the next start", exc)
        collection.close()
