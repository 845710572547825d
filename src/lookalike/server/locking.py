"""Locks for the server: a fair readers-writer lock for the index, a first-come-first-served semaphore.

A readers-writer lock allows many searches at once, but none while the index is being changed.

faiss indexes may be searched from many threads at once, but not while vectors are
added or removed; `Collection` only serialises writers among themselves.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class _Waiter:
    __slots__ = ("writer", "granted")

    def __init__(self, writer: bool):
        self.writer = writer
        self.granted = False


class ReadWriteLock:
    """Fair: served in arrival order, readers that arrive one after another sharing the lock.

    A reader waits only for a writer that is inside or arrived before it, a writer for everyone
    that arrived before it. So neither side starves: a steady stream of writes delays a search by
    at most the writes queued ahead of it, and a steady stream of searches cannot hold a write off.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer_active = False
        self._queue: deque[_Waiter] = deque()

    @contextmanager
    def reading(self) -> Iterator[None]:
        self._acquire(writer=False)
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._admit()

    @contextmanager
    def writing(self) -> Iterator[None]:
        self._acquire(writer=True)
        try:
            yield
        finally:
            with self._condition:
                self._writer_active = False
                self._admit()

    def _acquire(self, writer: bool) -> None:
        with self._condition:
            if not self._queue and not self._writer_active and not (writer and self._readers):
                if writer:
                    self._writer_active = True
                else:
                    self._readers += 1
                return
            waiter = _Waiter(writer)
            self._queue.append(waiter)
            while not waiter.granted:
                self._condition.wait()

    def _admit(self) -> None:
        """Let in, from the head of the queue, whoever may enter now (called with the condition held)."""
        admitted = False
        while self._queue and not self._writer_active:
            head = self._queue[0]
            if head.writer:
                if self._readers:
                    break
                self._writer_active = True
            else:
                self._readers += 1
            head.granted = True
            self._queue.popleft()
            admitted = True
        if admitted:
            self._condition.notify_all()


class FifoSemaphore:
    """A counting semaphore that serves waiters in arrival order.

    `threading.Semaphore` lets a newcomer take a slot before a thread that was woken for
    it, which sends that thread to the back of the queue again: under load some requests
    then wait many times longer than others.
    """

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("a semaphore needs at least one slot")
        self._lock = threading.Lock()
        self._slots = slots
        self._free = slots
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            handover = threading.Lock()
            handover.acquire()
            self._waiters.append(handover)
        handover.acquire()  # released by `release`, which hands its slot straight to us

    @property
    def taken(self) -> int:
        """Slots taken now (a snapshot: it may change as soon as it is read)."""
        return self._slots - self._free

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1

    def __enter__(self) -> FifoSemaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
