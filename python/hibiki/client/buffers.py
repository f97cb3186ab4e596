"""A small bounded buffer that threads fill and both threads and coroutines read.

Decoder workers (plain threads) produce frames; users consume them either by
blocking (``sink.get(timeout)``, callback face) or by awaiting
(``await track.recv()``, asyncio face) on *their* event loop, which is not the
SDK loop. Waiting coroutines are woken with ``loop.call_soon_threadsafe``, so a
reader's loop never polls and the producer never blocks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Generic, TypeVar

from .errors import TrackEnded

__all__ = ["FrameBuffer"]

T = TypeVar("T")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class FrameBuffer(Generic[T]):
    """Bounded FIFO; when full the oldest item is dropped (latest wins).

    ``close()`` ends it: readers get what is left, then :class:`TrackEnded`.
    """

    def __init__(self, maxlen: int, what: str = "frame") -> None:
        self._items: deque[T] = deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closed = False
        self._what = what
        self.dropped = 0
        """How many items were pushed out because nobody read them in time."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Add ``item`` (any thread). Never blocks."""
        with self._cond:
            if self._closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            waiters, self._waiters = self._waiters, []
        self._wake_all(waiters)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def close(self) -> None:
        """End the buffer; blocked and awaiting readers wake up."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        self._wake_all(waiters)

    @staticmethod
    def _wake_all(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                # The reader's loop was closed meanwhile; nobody is waiting anymore.
                pass

    def get(self, timeout: float | None = None) -> T:
        """Block until an item is available and return it.

        Raises TimeoutError after ``timeout`` seconds (None: wait forever) and
        TrackEnded once the buffer is closed and empty.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    raise TrackEnded(f"no more {self._what}s: the track has ended")
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no {self._what} within {timeout} s")
                    self._cond.wait(remaining)
            return self._items.popleft()

    def get_nowait(self) -> T | None:
        """Return the oldest item, or None when empty."""
        with self._cond:
            return self._items.popleft() if self._items else None

    async def aget(self, timeout: float | None = None) -> T:
        """Await an item on the running loop (any loop, any thread).

        Same outcomes as :meth:`get`.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise TrackEnded(f"no more {self._what}s: the track has ended")
                fut: asyncio.Future[None] = loop.create_future()
                entry = (loop, fut)
                self._waiters.append(entry)
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
                with self._cond:
                    if entry in self._waiters:
                        self._waiters.remove(entry)
