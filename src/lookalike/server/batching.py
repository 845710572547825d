"""Searching the vectors of concurrent requests together, in one pass over the index.

An exact search of one query reads every stored vector (51 MB for 10,000 1280-d vectors);
sixteen queries searched together read them once. No request ever waits for others to
arrive: whoever finds the index idle searches at once with whatever is queued, and
the requests that come in meanwhile form the next batch. Without concurrency every
batch has one query, so a lone request is as fast as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# (queries (n, dim), how many per query, an id to leave out per query or -1, query expansion over how many
# neighbours (0: none)) -> (scores (n, k), ids (n, k)), best first
SearchFunction = Callable[[np.ndarray, int, np.ndarray, int], tuple[np.ndarray, np.ndarray]]

MAX_BATCH = 32


@dataclass
class _Request:
    vector: np.ndarray
    count: int
    exclude: int = -1
    expand: int = 0
    done: bool = False
    scores: np.ndarray | None = None
    ids: np.ndarray | None = None
    error: Exception | None = None


class BatchedSearch:
    """Leader/follower batching: callers' threads do the work, no thread of its own."""

    def __init__(self, search: SearchFunction, max_batch: int = MAX_BATCH):
        self._search = search
        self.max_batch = max_batch
        self._condition = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False

    def search(
        self, vector: np.ndarray, count: int, exclude: int = -1, expand: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top `count` (scores, ids) of one vector, never `exclude`, searched together with concurrent callers
        (with query expansion over `expand` neighbours: one search per expansion in a batch)."""
        request = _Request(np.asarray(vector, dtype=np.float32), count, int(exclude), int(expand))
        with self._condition:
            self._queue.append(request)
        while True:
            with self._condition:
                while self._busy and not request.done:
                    self._condition.wait()
                if request.done:
                    return self._result(request)
                # The index is idle and this request is still queued: lead the next batch.
                self._busy = True
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._run(self._search, batch)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    @staticmethod
    def _run(search: SearchFunction, batch: list[_Request]) -> None:
        """Search a batch, one call per query expansion in it; each request gets its rows, or the error
        (never raised here)."""
        for expand in sorted({r.expand for r in batch}):
            group = [r for r in batch if r.expand == expand]
            try:
                count = max(r.count for r in group)
                excludes = np.asarray([r.exclude for r in group], dtype=np.int64)
                scores, ids = search(np.stack([r.vector for r in group]), count, excludes, expand)
                for row, request in enumerate(group):
                    request.scores, request.ids = scores[row, : request.count], ids[row, : request.count]
            except Exception as exc:
                for request in group:
                    request.error = exc
            finally:
                for request in group:
                    request.done = True

    @staticmethod
    def _result(request: _Request) -> tuple[np.ndarray, np.ndarray]:
        if request.error is not None:
            raise request.error
        assert request.scores is not None and request.ids is not None
        return request.scores, request.ids
