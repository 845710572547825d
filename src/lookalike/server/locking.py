"""Locks for the server: a readers-writer lock for the index, a first-come-first-served semaphore.

A readers-writer lock allows many searches at once, but none while the index is being changed.

faiss indexes may be searched from many threads at once, but not while vectors are
added or removed; `Collection` only serialises writers among themselves.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """Writer-preferring: once a writer waits, new readers queue behind it, so writes never starve."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer_active = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            while self._writer_active or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writer_active or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writer_active = True
        try:
            yield
        finally:
            with self._condition:
                self._writer_active = False
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
