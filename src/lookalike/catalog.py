"""The SQLite catalog: which files a collection knows, their content, label and vectors.

It is the source of truth for incremental sync and for the vectors themselves;
vector indexes are rebuilt from it whenever they are missing or stale. Every
batch is written in one transaction, so a killed run leaves either a whole
batch or none of it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    label TEXT,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE INDEX IF NOT EXISTS images_label ON images(label, status);
CREATE TABLE IF NOT EXISTS vectors (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    embedder TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (embedder, image_id)
);
-- every column that references images(id) has an index leading with it: deleting an image (ON DELETE CASCADE),
-- or the vectors of a new or changed one, then finds its rows directly instead of reading the whole table
-- (a scan of every stored vector made each upload's commit take 7 ms at 10,000 images, growing with the catalog)
CREATE INDEX IF NOT EXISTS vectors_image ON vectors(image_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- each image's top classes by an embedder whose network is also a classifier (concept search, tags)
CREATE TABLE IF NOT EXISTS concepts (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    embedder TEXT NOT NULL,
    class INTEGER NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (embedder, image_id, class)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS concepts_class ON concepts(embedder, class);
CREATE INDEX IF NOT EXISTS concepts_image ON concepts(image_id);
-- duplicates: pairs of images found by a nearest-neighbour search, with their cosine (a < b), kept down to a
-- floor so a looser threshold regroups without searching again
CREATE TABLE IF NOT EXISTS duplicate_pairs (
    embedder TEXT NOT NULL,
    a INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    b INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    score REAL NOT NULL,
    PRIMARY KEY (embedder, a, b)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS duplicate_pairs_b ON duplicate_pairs(embedder, b);
CREATE INDEX IF NOT EXISTS duplicate_pairs_a_image ON duplicate_pairs(a);
CREATE INDEX IF NOT EXISTS duplicate_pairs_b_image ON duplicate_pairs(b);
-- the images already searched for duplicates with an embedder, and the content they had then
CREATE TABLE IF NOT EXISTS duplicate_searched (
    embedder TEXT NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    sha256 TEXT,
    PRIMARY KEY (embedder, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS duplicate_searched_image ON duplicate_searched(image_id);
-- two 64-bit perceptual hashes (pHash: DCT; dHash: gradients) of images searched in the near tier, and the
-- content they were computed from (dhash is NULL in rows from before it was kept: computed again)
CREATE TABLE IF NOT EXISTS duplicate_hashes (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    sha256 TEXT,
    phash INTEGER NOT NULL,
    dhash INTEGER
);
-- the near tier's geometric check of a pair (a < b): what it measured, with which settings (`verify.METHOD`);
-- dropped with the pairs when either image's content changes
CREATE TABLE IF NOT EXISTS duplicate_verified (
    a INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    b INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    inliers INTEGER NOT NULL,
    matches INTEGER NOT NULL,
    coverage REAL NOT NULL,
    mirrored INTEGER NOT NULL,
    PRIMARY KEY (a, b)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS duplicate_verified_b ON duplicate_verified(b);
-- the user's decisions: "keep" (a = the keeper, b = a member of its resolved group), "distinct" (a < b: not duplicates)
CREATE TABLE IF NOT EXISTS duplicate_decisions (
    a INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    b INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    decision TEXT NOT NULL CHECK (decision IN ('keep', 'distinct')),
    PRIMARY KEY (a, b, decision)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS duplicate_decisions_b ON duplicate_decisions(b);
"""


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    sha256: str | None
    size: int
    mtime_ns: int
    label: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None


_COLUMNS = "id, path, sha256, size, mtime_ns, label, width, height, status, error"


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 per pair of image ids (catalog ids are below 2**31): a << 32 | b."""
    return (np.asarray(a, dtype=np.int64) << 32) | np.asarray(b, dtype=np.int64)


class Catalog:
    """A thin, typed layer over the catalog database."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            self._db = _connect_read_only(self.path)
            return
        # check_same_thread=False: the server reads from worker threads; writes are serialised by callers.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(duplicate_hashes)")}
        if "dhash" not in columns:  # a catalog from before dHash was kept
            self._db.execute("ALTER TABLE duplicate_hashes ADD COLUMN dhash INTEGER")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- images ---------------------------------------------------------------------------

    def get_by_path(self, path: str) -> ImageRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE path = ?", (path,)).fetchone()
        return ImageRecord(*row) if row else None

    def get(self, image_id: int) -> ImageRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return ImageRecord(*row) if row else None

    def get_many(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        ids = [int(i) for i in ids]
        found: dict[int, ImageRecord] = {}
        for start in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            chunk = ids[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE id IN ({marks})", chunk):
                found[row[0]] = ImageRecord(*row)
        return found

    def records(self, status: str | None = None, under: str | None = None) -> list[ImageRecord]:
        """All records, optionally only one status and only paths under a folder prefix."""
        sql = f"SELECT {_COLUMNS} FROM images WHERE 1=1"
        args: list[object] = []
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if under is not None:
            sql += " AND substr(path, 1, ?) = ?"
            prefix = under.rstrip("/") + "/"
            args += [len(prefix), prefix]
        return [ImageRecord(*row) for row in self._db.execute(sql + " ORDER BY id", args)]

    def upsert_image(
        self,
        *,
        path: str,
        sha256: str | None,
        size: int,
        mtime_ns: int,
        label: str | None,
        width: int | None,
        height: int | None,
        status: str,
        error: str | None = None,
    ) -> int:
        """Insert or update the row for `path`; the id of a known path never changes."""
        self._db.execute(
            "INSERT INTO images (path, sha256, size, mtime_ns, label, width, height, status, error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(path) DO UPDATE SET sha256=excluded.sha256, size=excluded.size,"
            " mtime_ns=excluded.mtime_ns, label=excluded.label, width=excluded.width,"
            " height=excluded.height, status=excluded.status, error=excluded.error",
            (path, sha256, size, mtime_ns, label, width, height, status, error),
        )
        return int(self._db.execute("SELECT id FROM images WHERE path = ?", (path,)).fetchone()[0])

    def touch(self, image_id: int, size: int, mtime_ns: int) -> None:
        """Record a new mtime for a file whose content did not change."""
        self._db.execute("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, image_id))

    def delete_images(self, ids: Iterable[int]) -> None:
        self._db.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in ids])

    def ids_with_label(self, label: str) -> np.ndarray:
        """Ids of readable images with `label` (an indexed lookup, for label-filtered search)."""
        rows = self._db.execute("SELECT id FROM images WHERE label = ? AND status = 'ok'", (label,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def count(self, status: str = "ok") -> int:
        return int(self._db.execute("SELECT count(*) FROM images WHERE status = ?", (status,)).fetchone()[0])

    def labels(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT coalesce(label, ''), count(*) FROM images WHERE status = 'ok' GROUP BY label ORDER BY label"
        )
        return {label: n for label, n in rows}

    def duplicate_groups(self, ids: Iterable[int] | None = None) -> list[list[int]]:
        """Groups of ids whose files have identical bytes (same SHA-256)."""
        rows = self._db.execute(
            "SELECT sha256, group_concat(id) FROM images WHERE status = 'ok' AND sha256 IS NOT NULL"
            " GROUP BY sha256 HAVING count(*) > 1"
        ).fetchall()
        wanted = None if ids is None else set(int(i) for i in ids)
        groups = []
        for _, members in rows:
            group = sorted(int(m) for m in members.split(","))
            if wanted is not None:
                group = [m for m in group if m in wanted]
            if len(group) > 1:
                groups.append(group)
        return groups

    # --- vectors --------------------------------------------------------------------------

    def put_vectors(self, embedder: str, ids: Iterable[int], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._db.executemany(
            "INSERT OR REPLACE INTO vectors (image_id, embedder, vector) VALUES (?, ?, ?)",
            [(int(i), embedder, v.tobytes()) for i, v in zip(ids, vectors, strict=True)],
        )

    def delete_vectors(self, ids: Iterable[int], embedder: str | None = None) -> None:
        """Vectors of `ids` (of one embedder, or all), and the concepts the same network gave them."""
        ids = [int(i) for i in ids]
        for table in ("vectors", "concepts"):
            if embedder is None:
                self._db.executemany(f"DELETE FROM {table} WHERE image_id = ?", [(i,) for i in ids])
            else:
                self._db.executemany(
                    f"DELETE FROM {table} WHERE image_id = ? AND embedder = ?", [(i, embedder) for i in ids]
                )

    def delete_embedder(self, embedder: str) -> None:
        """Every vector and concept of one embedder, what was measured of it, and the duplicate pairs it scored
        with the marks of the images searched for them (so they are searched again with the new vectors)."""
        self._db.execute("DELETE FROM vectors WHERE embedder = ?", (embedder,))
        self._db.execute("DELETE FROM concepts WHERE embedder = ?", (embedder,))
        self.reset_pairs(embedder)
        self._db.execute("DELETE FROM meta WHERE key IN (?, ?)", (f"throughput:{embedder}", f"concepts:{embedder}"))

    def has_vector(self, embedder: str, image_id: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM vectors WHERE embedder = ? AND image_id = ?", (embedder, image_id)
        ).fetchone()
        return row is not None

    def vector_ids(self, embedder: str) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT image_id FROM vectors WHERE embedder = ?", (embedder,))}

    def count_vectors(self, embedder: str) -> int:
        row = self._db.execute("SELECT count(*) FROM vectors WHERE embedder = ?", (embedder,)).fetchone()
        return int(row[0])

    def vectors(self, embedder: str, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of an embedder, ordered by id; only `ids` if given."""
        if ids is None:
            rows = self._db.execute(
                "SELECT image_id, vector FROM vectors WHERE embedder = ? ORDER BY image_id", (embedder,)
            ).fetchall()
        else:
            wanted = [int(i) for i in ids]
            rows = []
            for start in range(0, len(wanted), 900):
                chunk = wanted[start : start + 900]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(
                    f"SELECT image_id, vector FROM vectors WHERE embedder = ? AND image_id IN ({marks})",
                    [embedder, *chunk],
                ).fetchall()
            rows.sort()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        out = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        return out_ids, out

    def embedders(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT embedder FROM vectors ORDER BY embedder")]

    # --- concepts (top classes) -----------------------------------------------------------

    def put_concepts(
        self, embedder: str, vocabulary: str, ids: Iterable[int], classes: np.ndarray, scores: np.ndarray
    ) -> None:
        """Replace the stored top classes of `ids` by an embedder whose classes are `vocabulary`'s."""
        ids = [int(i) for i in ids]
        self._db.executemany("DELETE FROM concepts WHERE image_id = ? AND embedder = ?", [(i, embedder) for i in ids])
        self._db.executemany(
            "INSERT INTO concepts (image_id, embedder, class, score) VALUES (?, ?, ?, ?)",
            [
                (i, embedder, int(c), float(s))
                for i, row_classes, row_scores in zip(ids, classes, scores, strict=True)
                for c, s in zip(row_classes, row_scores, strict=True)
            ],
        )
        if ids:
            self.set_meta(f"concepts:{embedder}", vocabulary)

    def concept_embedders(self) -> dict[str, str]:
        """Embedders that stored concepts -> their class vocabulary."""
        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'concepts:%' ORDER BY key")
        return {key.removeprefix("concepts:"): value for key, value in rows}

    def concept_ids(self, embedder: str) -> set[int]:
        """Ids of the images with stored concepts of `embedder`."""
        return {
            r[0] for r in self._db.execute("SELECT DISTINCT image_id FROM concepts WHERE embedder = ?", (embedder,))
        }

    def concept_scores(
        self, embedder: str, classes: Iterable[int], min_score: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, summed score) of the images with any of `classes` among their stored ones (each
        counted when its score is at least `min_score`)."""
        wanted = sorted({int(c) for c in classes})
        totals: dict[int, float] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for image_id, total in self._db.execute(
                f"SELECT image_id, sum(score) FROM concepts WHERE embedder = ? AND class IN ({marks})"
                " AND score >= ? GROUP BY image_id",
                [embedder, *chunk, min_score],
            ):
                totals[image_id] = totals.get(image_id, 0.0) + total
        ids = np.fromiter(totals, dtype=np.int64, count=len(totals))
        return ids, np.fromiter(totals.values(), dtype=np.float32, count=len(totals))

    def concepts_of(self, embedder: str, ids: Iterable[int]) -> dict[int, list[tuple[int, float]]]:
        """Each image's stored (class, score), best first."""
        wanted = [int(i) for i in ids]
        found: dict[int, list[tuple[int, float]]] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for image_id, cls, score in self._db.execute(
                f"SELECT image_id, class, score FROM concepts WHERE embedder = ? AND image_id IN ({marks})"
                " ORDER BY image_id, score DESC",
                [embedder, *chunk],
            ):
                found.setdefault(image_id, []).append((cls, score))
        return found

    # --- duplicates -----------------------------------------------------------------------

    def put_pairs(self, embedder: str, a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> None:
        """Store scored pairs (each once, smaller id first; a pair stored before is overwritten)."""
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        self._db.executemany(
            "INSERT OR REPLACE INTO duplicate_pairs (embedder, a, b, score) VALUES (?, ?, ?, ?)",
            [(embedder, int(x), int(y), float(s)) for x, y, s in zip(lo, hi, scores, strict=True) if x != y],
        )

    def pairs(self, embedder: str, min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) of the stored pairs of `embedder` scoring at least `min_score`."""
        rows = self._db.execute(
            "SELECT a, b, score FROM duplicate_pairs WHERE embedder = ? AND score >= ?", (embedder, min_score)
        ).fetchall()
        out = np.array(rows, dtype=np.float64).reshape(-1, 3)
        return out[:, 0].astype(np.int64), out[:, 1].astype(np.int64), out[:, 2].astype(np.float32)

    def searched(self, embedder: str) -> dict[int, str | None]:
        """Images already searched for duplicates with `embedder` -> their SHA-256 then."""
        rows = self._db.execute("SELECT image_id, sha256 FROM duplicate_searched WHERE embedder = ?", (embedder,))
        return {int(i): h for i, h in rows}

    def mark_searched(self, embedder: str, items: Iterable[tuple[int, str | None]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO duplicate_searched (embedder, image_id, sha256) VALUES (?, ?, ?)",
            [(embedder, int(i), h) for i, h in items],
        )

    def forget_pairs(self, embedder: str, ids: Iterable[int]) -> None:
        """Drop the pairs and the searched mark of `ids` (their content changed)."""
        rows = [(embedder, int(i)) for i in ids]
        self._db.executemany("DELETE FROM duplicate_pairs WHERE embedder = ? AND a = ?", rows)
        self._db.executemany("DELETE FROM duplicate_pairs WHERE embedder = ? AND b = ?", rows)
        self._db.executemany("DELETE FROM duplicate_searched WHERE embedder = ? AND image_id = ?", rows)
        self.forget_verified(int(i) for _, i in rows)

    def reset_pairs(self, embedder: str) -> None:
        """Drop every stored pair and searched mark of `embedder` (every image is searched again)."""
        self._db.execute("DELETE FROM duplicate_pairs WHERE embedder = ?", (embedder,))
        self._db.execute("DELETE FROM duplicate_searched WHERE embedder = ?", (embedder,))

    def verified(self, method: str) -> dict[tuple[int, int], tuple[int, int, float, bool]]:
        """Pairs (a < b) checked geometrically with `method` -> (inliers, matches, coverage, mirrored)."""
        rows = self._db.execute(
            "SELECT a, b, inliers, matches, coverage, mirrored FROM duplicate_verified WHERE method = ?", (method,)
        )
        return {(int(a), int(b)): (int(i), int(m), float(c), bool(f)) for a, b, i, m, c, f in rows}

    def verified_arrays(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """`verified` as arrays, read in chunks so a large table never becomes Python objects at once:
        (sorted `pair_keys`, (n, 4) float64 rows of inliers, matches, coverage, mirrored)."""
        cursor = self._db.execute(
            "SELECT a, b, inliers, matches, coverage, mirrored FROM duplicate_verified WHERE method = ?", (method,)
        )
        parts = [np.empty((0, 6))]
        while rows := cursor.fetchmany(100_000):
            parts.append(np.array(rows, dtype=np.float64))
        table = np.concatenate(parts)
        keys = pair_keys(table[:, 0], table[:, 1])
        order = np.argsort(keys, kind="stable")
        return keys[order], table[order, 2:]

    def put_verified(self, method: str, items: Iterable[tuple[int, int, int, int, float, bool]]) -> None:
        """Store geometric checks (a, b, inliers, matches, coverage, mirrored), each pair once, smaller id first."""
        self._db.executemany(
            "INSERT OR REPLACE INTO duplicate_verified (a, b, method, inliers, matches, coverage, mirrored)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(min(a, b), max(a, b), method, int(i), int(m), float(c), int(f)) for a, b, i, m, c, f in items],
        )

    def forget_verified(self, ids: Iterable[int]) -> None:
        """Drop the geometric checks of pairs involving `ids` (their content changed)."""
        rows = [(int(i),) for i in ids]
        self._db.executemany("DELETE FROM duplicate_verified WHERE a = ?", rows)
        self._db.executemany("DELETE FROM duplicate_verified WHERE b = ?", rows)

    def perceptual_hashes(self, ids: Iterable[int]) -> dict[int, tuple[str | None, int, int | None]]:
        """Stored perceptual hashes of `ids` -> (SHA-256 they were computed from, pHash, dHash or None), each 64-bit
        hash as a signed int."""
        wanted = [int(i) for i in ids]
        found: dict[int, tuple[str | None, int, int | None]] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            marks = ",".join("?" * len(chunk))
            for i, h, p, d in self._db.execute(
                f"SELECT image_id, sha256, phash, dhash FROM duplicate_hashes WHERE image_id IN ({marks})", chunk
            ):
                found[int(i)] = (h, int(p), None if d is None else int(d))
        return found

    def perceptual_hash_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, their (pHash, dHash) rows as int64) of every image with both hashes stored."""
        rows = self._db.execute(
            "SELECT image_id, phash, dhash FROM duplicate_hashes WHERE dhash IS NOT NULL ORDER BY image_id"
        ).fetchall()
        table = np.array(rows, dtype=np.int64).reshape(-1, 3)
        return table[:, 0].copy(), np.ascontiguousarray(table[:, 1:])

    def put_perceptual_hashes(self, items: Iterable[tuple[int, str | None, int, int]]) -> None:
        """Store (image id, SHA-256, pHash, dHash) rows, the hashes as signed 64-bit ints."""
        self._db.executemany(
            "INSERT OR REPLACE INTO duplicate_hashes (image_id, sha256, phash, dhash) VALUES (?, ?, ?, ?)",
            [(int(i), h, int(p), int(d)) for i, h, p, d in items],
        )

    def put_decisions(self, decision: str, pairs: Iterable[tuple[int, int]]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO duplicate_decisions (a, b, decision) VALUES (?, ?, ?)",
            [(int(a), int(b), decision) for a, b in pairs],
        )

    def decisions(self, decision: str) -> list[tuple[int, int]]:
        rows = self._db.execute("SELECT a, b FROM duplicate_decisions WHERE decision = ?", (decision,))
        return [(int(a), int(b)) for a, b in rows]

    def delete_decisions(self, ids: Iterable[int] | None = None) -> int:
        """Decisions involving any of `ids` (every decision if None); returns how many were deleted."""
        if ids is None:
            return self._db.execute("DELETE FROM duplicate_decisions").rowcount
        rows = [(int(i), int(i)) for i in ids]
        before = self._db.total_changes
        self._db.executemany("DELETE FROM duplicate_decisions WHERE a = ? OR b = ?", rows)
        return self._db.total_changes - before

    # --- meta -----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def uid(self) -> str:
        """This catalog's own random id, made on first use and kept (it names the catalog's rows in a
        store that several catalogs share, such as one Milvus collection)."""
        value = self.get_meta("uid")
        if value is None:
            # INSERT OR IGNORE, then read back: two processes making it at once agree on one.
            self._db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('uid', ?)", (uuid.uuid4().hex,))
            value = self.get_meta("uid")
        assert value is not None
        return value

    def bump_generation(self, embedder: str) -> int:
        """Count changes to an embedder's vectors, so a saved index can tell it is stale."""
        key = f"generation:{embedder}"
        value = int(self.get_meta(key) or 0) + 1
        self.set_meta(key, str(value))
        return value

    def generation(self, embedder: str) -> int:
        return int(self.get_meta(f"generation:{embedder}") or 0)

    def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the catalog."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes: for a catalog in a folder (or on a disk) that cannot be written.

    A WAL database opens read-only only if its shared-memory file exists or can be made; when
    neither, it is opened as immutable (nothing else can be writing to a read-only folder).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no catalog at {path}")
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("SELECT count(*) FROM images").fetchone()
    except sqlite3.OperationalError:
        db.close()
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        db.execute("SELECT count(*) FROM images").fetchone()
    return db
