"""Fuzzing the signaling never disturbs other connections' media.

A Hibiki publisher and subscriber exchange video through a real
``hibiki serve`` while hypothesis throws random and mutated signaling
messages at the same server (before and after a valid ``connect``, so the
mutated ``answer``/``candidate`` paths run too). Each bad socket must end
with a close code; the subscriber must keep receiving frames whose counter
keeps increasing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import Any

import hibiki
import pytest
import websockets
from conftest import ServerProcess, connect_message, open_ws, run
from hibiki.media.testsrc import read_counter, test_pattern
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
after_connect = st.fixed_dictionaries(
    {"type": st.sampled_from(["answer", "re-answer", "candidate", "pong", "disconnect", "connect", "bogus"])},
    optional={"sdp": json_values | st.text(max_size=200), "candidate": json_values | st.text(max_size=80)},
)


class Stream:
    """A publisher drawing the counter and a subscriber reading it back."""

    def __init__(self, url: str) -> None:
        self.sdk = hibiki.Hibiki()
        self.camera = self.sdk.create_video_source()
        self.pub = self.sdk.create_connection([url], role="sendonly", channel_id="fuzz-media", video_source=self.camera, audio=False)
        self.sub = self.sdk.create_connection([url], role="recvonly", channel_id="fuzz-media")
        self.counters: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sub.on_track = self._on_track

    def _on_track(self, track: hibiki.MediaTrack) -> None:
        if track.kind == "video":
            sink = hibiki.VideoSink(track)
            sink.on_frame = self._on_frame
            self._sink = sink

    def _on_frame(self, frame: Any) -> None:
        n = read_counter(frame.data())
        if n is not None:
            with self.lock:
                self.counters.append(n)

    def start(self) -> None:
        self.pub.connect()
        self.sub.connect()
        threading.Thread(target=self._capture, daemon=True).start()

    def _capture(self) -> None:
        n = 0
        while not self.stop.is_set():
            self.camera.on_captured(test_pattern(n, 320, 240))
            n += 1
            time.sleep(1 / 30)

    def count_since(self, mark: int) -> list[int]:
        with self.lock:
            return self.counters[mark:]

    def close(self) -> None:
        self.stop.set()
        self.sub.disconnect()
        self.pub.disconnect()


@pytest.fixture
def stream(server: ServerProcess) -> Any:
    s = Stream(server.signaling_url)
    s.start()
    deadline = time.monotonic() + 10
    while not s.count_since(0):
        assert time.monotonic() < deadline, "media did not start"
        time.sleep(0.05)
    yield s
    s.close()


async def _poke(server: ServerProcess, messages: list[Any]) -> None:
    """Send a valid connect, then the fuzzed messages; expect a close, not a hang."""
    ws = await open_ws(server)
    try:
        await ws.send(json.dumps(connect_message("sendrecv", "fuzz-media")))
        for m in messages:
            await ws.send(m if isinstance(m, str) else json.dumps(m))
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            while True:
                await asyncio.wait_for(ws.recv(), 3)
    finally:
        await ws.close()
    assert ws.close_code is not None


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(after_connect | st.text(max_size=50), min_size=1, max_size=5))
def test_fuzzed_sessions_in_the_channel_leave_media_flowing(
    server: ServerProcess, stream: Stream, messages: list[Any]
) -> None:
    mark = len(stream.count_since(0))
    run(_poke(server, messages), timeout=30)
    # The subscriber keeps receiving, and the counter keeps going up.
    deadline = time.monotonic() + 5
    while len(stream.count_since(mark)) < 5:
        assert time.monotonic() < deadline, "media stopped while the signaling was fuzzed"
        time.sleep(0.05)
    recent = stream.count_since(mark)
    assert all(b > a for a, b in zip(recent, recent[1:])), recent
    assert server.health()["status"] == "ok"
