"""A small bounded buffer that threads fill and both threads and coroutines read.

Decoder workers (plain threads) produce frames; users consume them either by
blocking (``sink.get(timeout)``, callback face) or by awaiting
(``await track.recv()``, asyncio face) on *their* event loop, which is not the
SDK loop. Waiting coroutines are woken with ``loop.call_soon_threadsafe``, so a
reader's loop never polls and the producer never blocks. :class:`LoopWaiters`
is that wake-up on its own, for other thread-fed state that coroutines await
(an audio sink's samples, a played-out source's queue).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

from .errors import TrackEnded

__all__ = ["FrameBuffer", "LoopWaiters"]

T = TypeVar("T")
R = TypeVar("R")

_CLOSED = object()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class LoopWaiters:
    """Coroutines, each on its own event loop, waiting for threads to change some state.

    The owner keeps it under its own lock: a coroutine checks the state and
    calls :meth:`add` under that lock (so a change right after the check
    finds it), then awaits the future outside it and :meth:`discard` s it
    when done; a thread that changes the state calls :meth:`wake` under the
    lock. Woken coroutines check the state again: one wake-up may serve
    several waits, or none.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __bool__(self) -> bool:
        return bool(self._entries)

    def add(self) -> asyncio.Future[None]:
        """A future on the running loop, resolved by the next :meth:`wake`."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._entries.append((loop, fut))
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        """Forget ``fut`` (woken, timed out or cancelled)."""
        self._entries = [e for e in self._entries if e[1] is not fut]

    async def until(self, lock: threading.Lock | threading.Condition, ready: Callable[[], R | None]) -> R:
        """Await until ``ready()``, called under ``lock``, returns something other than None; return that.

        Between checks this waits for a :meth:`wake`; wrap it in
        ``asyncio.timeout`` for a deadline.
        """
        while True:
            with lock:
                result = ready()
                if result is not None:
                    return result
                fut = self.add()
            try:
                await fut
            finally:
                with lock:
                    self.discard(fut)

    def wake(self) -> None:
        """Resolve every waiting future, each on its own loop; forget them."""
        entries, self._entries = self._entries, []
        for loop, fut in entries:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                # The waiter's loop was closed meanwhile; nobody is waiting anymore.
                pass


class FrameBuffer(Generic[T]):
    """Bounded FIFO; when full the oldest item is dropped (latest wins).

    ``close()`` ends it: readers get what is left, then :class:`TrackEnded`.

    Items sit in a :class:`queue.SimpleQueue`, whose blocking ``get`` is done
    in C: a frame handed to a blocked reader costs one lock hand-over, where
    a :class:`threading.Condition` costs a dozen Python-level steps on each
    side (40 us per 20 ms audio frame on a small VM, B6 in BENCHMARKS.md).
    Closing puts a sentinel behind the last item, which every reader that
    meets it puts back for the next one.
    """

    def __init__(self, maxlen: int, what: str = "frame") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._maxlen = max(1, maxlen)
        # Serializes producers with close() (so nothing lands behind the
        # sentinel) and guards the coroutine waiters; readers never take it
        # to block.
        self._lock = threading.Lock()
        self._waiters = LoopWaiters()
        self._closed = False
        self._what = what
        self.dropped = 0
        """How many items were pushed out because nobody read them in time."""

    def __len__(self) -> int:
        # After close() the sentinel is in the queue for good.
        return max(0, self._queue.qsize() - (1 if self._closed else 0))

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Add ``item`` (any thread). Never blocks."""
        with self._lock:
            if self._closed:
                return
            self._queue.put(item)
            if self._queue.qsize() > self._maxlen:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:  # a reader took it meanwhile
                    pass
            if self._waiters:
                self._waiters.wake()

    def clear(self) -> None:
        while self.get_nowait() is not None:
            pass

    def close(self) -> None:
        """End the buffer; blocked and awaiting readers wake up."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_CLOSED)
            self._waiters.wake()

    def _ended(self) -> TrackEnded:
        self._queue.put(_CLOSED)  # for the next reader
        return TrackEnded(f"no more {self._what}s: the track has ended")

    def get(self, timeout: float | None = None) -> T:
        """Block until an item is available and return it.

        Raises TimeoutError after ``timeout`` seconds (None: wait forever) and
        TrackEnded once the buffer is closed and empty.
        """
        try:
            item = self._queue.get(timeout=None if timeout is None else max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError(f"no {self._what} within {timeout} s") from None
        if item is _CLOSED:
            raise self._ended()
        return cast(T, item)

    def get_nowait(self) -> T | None:
        """Return the oldest item, or None when empty (or closed and empty)."""
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._queue.put(_CLOSED)
            return None
        return cast(T, item)

    async def aget(self, timeout: float | None = None) -> T:
        """Await an item on the running loop (any loop, any thread).

        Same outcomes as :meth:`get`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                pass
            else:
                if item is _CLOSED:
                    raise self._ended()
                return cast(T, item)
            with self._lock:
                # Checked again under the lock: a put() or close() before this
                # point is seen here, one after it finds the waiter.
                if self._queue.qsize() > 0:
                    continue
                fut = self._waiters.add()
            try:
                if deadline is None:
                    await fut
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise TimeoutError(f"no {self._what} within {timeout} s")
                    try:
                        async with asyncio.timeout(remaining):
                            await fut
                    except TimeoutError:
                        raise TimeoutError(f"no {self._what} within {timeout} s") from None
            finally:
                with self._lock:
                    self._waiters.discard(fut)
