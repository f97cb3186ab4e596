"""The queue and clock behind a played-out audio source: PCM waits here until its turn to go out.

A voice agent gets speech from its TTS much faster than real time, often
seconds at once. Sent as it comes, it would reach receivers as a burst that
their jitter buffers squeeze or drop. An :class:`~hibiki.AudioSource` made
with ``queue_size_ms`` puts what it is given here instead, and its worker
takes one packet's worth every packet interval, when :class:`PacketClock`
says; what is not there yet is silence, so the stream keeps time while
nobody speaks.

The queue bounds how far ahead a producer may run (``limit`` samples): a
put waits while that much is queued, so the producer is paced by the
playout. :meth:`PlayoutQueue.clear` drops everything not yet sent, which is
how an agent stops talking when the user interrupts it (barge-in). A queue
nobody takes from (the source is not sending) is closed: it discards what
it is given, so no producer waits for a playout that will not happen.

Producers may be threads (``put``, ``wait_empty``, blocking) or coroutines
(``put_async``, ``wait_empty_async``): a waiting coroutine is woken through
its loop's ``call_soon_threadsafe``, never by blocking the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from .buffers import LoopWaiters

__all__ = ["PacketClock", "PlayoutQueue"]


class PlayoutQueue:
    """Int16 PCM ``[samples, channels]`` in order, taken out in slices of any size.

    >>> q = PlayoutQueue(channels=1, limit=16_000)
    >>> q.put(np.ones((48_000, 1), np.int16))    # room: goes in whole, even past the limit
    True
    >>> pcm, queued = q.take(320)                # the worker's slice, silence where short
    >>> pcm.shape, queued
    ((320, 1), 320)

    Thread safe; every method may be called from any thread.
    """

    def __init__(self, channels: int, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 sample, got {limit}")
        self.channels = channels
        self.limit = limit
        """A put waits while at least this many samples are queued."""
        self._chunks: deque[np.ndarray] = deque()
        self._head = 0  # samples of _chunks[0] already taken
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        # Coroutines waiting for room or for the end (put_async, wait_empty_async).
        self._waiters = LoopWaiters()

    @property
    def queued(self) -> int:
        """Samples (per channel) waiting to be taken."""
        return self._queued

    @property
    def closed(self) -> bool:
        """True while the queue discards what it is given (see :meth:`close`)."""
        return self._closed

    # -- producers ---------------------------------------------------------------------

    def _has_room(self) -> bool:
        return self._queued < self.limit or self._closed

    def _is_empty(self) -> bool:
        return self._queued == 0

    def _append_locked(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self._chunks.append(pcm)
            self._queued += len(pcm)

    def put(self, pcm: np.ndarray, timeout: float | None = None) -> bool:
        """Queue ``pcm`` once fewer than ``limit`` samples wait; the chunk goes in whole.

        Returns False, queuing nothing, when ``timeout`` seconds passed first
        or the queue is closed. ``pcm`` is kept, not copied: hand over an
        array nobody changes.
        """
        with self._cond:
            if not self._cond.wait_for(self._has_room, timeout) or self._closed:
                return False
            self._append_locked(pcm)
            return True

    async def put_async(self, pcm: np.ndarray) -> bool:
        """Like :meth:`put` without a timeout, awaiting room without blocking the event loop."""
        await self._until(self._has_room, None)
        with self._cond:
            if self._closed:
                return False
            # Another producer may have filled it since the wake-up: the chunk
            # still goes in, as it would have a moment earlier.
            self._append_locked(pcm)
            return True

    def open(self) -> None:
        """Accept audio again (someone takes from the queue now)."""
        with self._cond:
            self._closed = False

    def close(self) -> None:
        """Clear the queue and discard what is given until :meth:`open`; every waiter returns."""
        with self._cond:
            self._closed = True
        self.clear()

    def wait_empty(self, timeout: float | None = None) -> bool:
        """Block until everything queued was taken (or cleared); False on timeout."""
        with self._cond:
            return self._cond.wait_for(self._is_empty, timeout)

    async def wait_empty_async(self, timeout: float | None = None) -> bool:
        """Like :meth:`wait_empty`, without blocking the event loop."""
        try:
            await self._until(self._is_empty, timeout)
        except TimeoutError:
            return False
        return True

    async def _until(self, holds: Callable[[], bool], timeout: float | None) -> None:
        """Return once ``holds()`` is true; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._waiters.until(self._cond, lambda: True if holds() else None)

    # -- the consumer ------------------------------------------------------------------

    def take(self, samples: int) -> tuple[np.ndarray, int]:
        """The next ``samples`` samples, padded with silence; and how many were queued audio.

        Always returns an array of exactly ``samples`` rows.
        """
        out = np.zeros((samples, self.channels), np.int16)
        filled = 0
        with self._cond:
            while filled < samples and self._chunks:
                chunk = self._chunks[0]
                n = min(samples - filled, len(chunk) - self._head)
                out[filled:filled + n] = chunk[self._head:self._head + n]
                filled += n
                self._head += n
                if self._head == len(chunk):
                    self._chunks.popleft()
                    self._head = 0
            self._queued -= filled
            if filled:
                self._changed_locked()
        return out, filled

    def clear(self) -> int:
        """Drop everything queued; returns how many samples that was."""
        with self._cond:
            dropped = self._queued
            self._chunks.clear()
            self._head = 0
            self._queued = 0
            self._changed_locked()
        return dropped

    def _changed_locked(self) -> None:
        self._cond.notify_all()
        if self._waiters:
            self._waiters.wake()


class PacketClock:
    """When each packet of a paced stream is due: every ``period`` seconds from the first.

    After a stall longer than ``max_late`` (a suspended machine, a long GC
    pause) the clock starts again from now instead of sending the missed
    packets in a burst: a burst is what pacing is there to prevent.
    """

    def __init__(self, period: float, max_late: float = 0.2) -> None:
        self.period = period
        self.max_late = max_late
        self._start = time.monotonic()
        self.ticks = 0
        """Packets due so far (the one being waited for not included)."""

    def next_due(self) -> float:
        """The monotonic time at which the next packet is due."""
        return self._start + (self.ticks + 1) * self.period

    def tick(self, now: float) -> None:
        """Count the packet that was due; restart the clock if it is far behind ``now``."""
        self.ticks += 1
        if now - (self._start + self.ticks * self.period) > self.max_late:
            self._start = now - self.ticks * self.period
