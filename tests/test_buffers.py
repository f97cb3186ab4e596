"""FrameBuffer: the buffer between a track's decoder thread and its readers (threads and coroutines)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hibiki import TrackEnded
from hibiki.client.buffers import FrameBuffer


def test_fifo_with_the_oldest_dropped_when_full() -> None:
    buf: FrameBuffer[int] = FrameBuffer(3)
    for i in range(5):
        buf.put(i)
    assert len(buf) == 3 and buf.dropped == 2
    assert [buf.get(0.1) for _ in range(3)] == [2, 3, 4]
    assert buf.get_nowait() is None and len(buf) == 0
    with pytest.raises(TimeoutError, match="frame within"):
        buf.get(0.05)


def test_close_lets_every_reader_drain_then_ends_them_all() -> None:
    buf: FrameBuffer[int] = FrameBuffer(10, what="audio frame")
    buf.put(1)
    buf.put(2)
    buf.close()
    buf.put(3)  # after close: ignored
    assert len(buf) == 2 and buf.closed
    assert buf.get(0.1) == 1 and buf.get_nowait() == 2
    for _ in range(3):  # every later read ends, not just the first
        with pytest.raises(TrackEnded, match="no more audio frames"):
            buf.get(0.1)
        assert buf.get_nowait() is None
    assert len(buf) == 0
    buf.clear()
    with pytest.raises(TrackEnded):
        buf.get(None)


def test_a_blocked_reader_wakes_for_a_put_and_for_close() -> None:
    buf: FrameBuffer[str] = FrameBuffer(2)
    got: list[object] = []

    def reader() -> None:
        got.append(buf.get(5.0))
        try:
            buf.get(5.0)
        except TrackEnded as exc:
            got.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)  # let it block first; the outcome does not depend on it
    buf.put("a")
    buf.close()
    t.join(5.0)
    assert not t.is_alive()
    assert got[0] == "a" and isinstance(got[1], TrackEnded)


def test_coroutines_on_their_own_loop_are_woken_by_a_thread() -> None:
    buf: FrameBuffer[int] = FrameBuffer(4)

    async def main() -> list[object]:
        out: list[object] = []
        with pytest.raises(TimeoutError):
            await buf.aget(0.05)

        def produce() -> None:
            time.sleep(0.05)
            for i in range(3):
                buf.put(i)
            buf.close()

        threading.Thread(target=produce).start()
        while True:
            try:
                out.append(await buf.aget(5.0))
            except TrackEnded:
                break
        return out

    assert asyncio.run(main()) == [0, 1, 2]
