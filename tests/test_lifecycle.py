"""Connection lifecycle: no leaks over many cycles, clear failures, idempotent disconnect."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from typing import Any

import hibiki
import psutil
import pytest
from conftest import free_tcp_port, new_channel_id, run, wait_until
from hibiki.client.loop import dispatch_callback
from hibiki.media.testsrc import read_counter, test_pattern, tone

CYCLES = 20
THREAD_TOLERANCE = 0
FD_TOLERANCE = 4
RSS_TOLERANCE_MB = 40.0


def _one_cycle(server: Any, sdk: hibiki.Hibiki) -> None:
    """Publish video+audio, receive and decode at least one picture, then leave."""
    channel = new_channel_id()
    video = sdk.create_video_source()
    audio = sdk.create_audio_source(channels=1, sample_rate=48_000)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    got = threading.Event()

    def on_frame(frame: hibiki.VideoFrame) -> None:
        if read_counter(frame.data()) is not None:
            got.set()

    def on_track(track: hibiki.MediaTrack) -> None:
        if track.kind == "video":
            hibiki.VideoSink(track).on_frame = on_frame

    sub.on_track = on_track
    try:
        pub.connect()
        sub.connect()
        deadline = time.monotonic() + 10
        counter = 0
        while not got.is_set():
            assert time.monotonic() < deadline, "no decoded picture within 10 s"
            video.on_captured(test_pattern(counter, 160, 120))
            audio.on_data(tone(440, 48_000, 1, counter * 960, 960))
            counter += 1
            got.wait(0.02)
    finally:
        sub.disconnect()
        pub.disconnect()
    assert sub.state == pub.state == "closed"


def _sdk_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("hibiki-"))


def _native_threads() -> dict[str, int]:
    """Threads of this process by their OS name (FFmpeg's and Rust's included)."""
    names: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        names[name] = names.get(name, 0) + 1
    return names


def _measure(proc: psutil.Process) -> tuple[int, int, float]:
    gc.collect()
    return proc.num_threads(), proc.num_fds(), proc.memory_info().rss / 2**20


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.timeout(300)
def test_connect_disconnect_cycles_do_not_leak(server: Any) -> None:
    proc = psutil.Process()
    sdk = hibiki.Hibiki()
    _one_cycle(server, sdk)  # warm-up: engine, SDK threads, codec libraries
    # Per-connection workers (source encoders, track decoders) end just after
    # disconnect() returns; wait for them rather than race them.
    wait_until(lambda: _sdk_threads() == ["hibiki-callbacks", "hibiki-loop"], 5, "SDK workers to exit")
    threads0, fds0, rss0 = _measure(proc)
    names0 = _native_threads()
    t0 = time.monotonic()
    for _ in range(CYCLES):
        _one_cycle(server, sdk)
    per_cycle = (time.monotonic() - t0) / CYCLES
    wait_until(lambda: _sdk_threads() == ["hibiki-callbacks", "hibiki-loop"], 5, "SDK workers to exit")
    settled = _wait_for(lambda: proc.num_threads() <= threads0 + THREAD_TOLERANCE, 5)
    assert settled, f"threads grew: {names0} -> {_native_threads()}; Python threads: {sorted(t.name for t in threading.enumerate())}"
    threads1, fds1, rss1 = _measure(proc)
    print(f"\n{CYCLES} cycles, {per_cycle * 1000:.0f} ms each: threads {threads0}->{threads1}, "
          f"fds {fds0}->{fds1}, rss {rss0:.1f}->{rss1:.1f} MiB")
    assert threads1 <= threads0 + THREAD_TOLERANCE
    assert fds1 <= fds0 + FD_TOLERANCE, f"open fds grew from {fds0} to {fds1}"
    assert rss1 - rss0 <= RSS_TOLERANCE_MB, f"RSS grew by {rss1 - rss0:.1f} MiB"


def test_connect_to_dead_url_raises_clearly() -> None:
    url = f"ws://127.0.0.1:{free_tcp_port()}/signaling"  # nothing listens there
    conn = hibiki.Hibiki().create_connection([url], "recvonly", new_channel_id())
    calls: list[tuple[hibiki.SignalingErrorCode, str]] = []
    done = threading.Event()

    def on_disconnect(code: hibiki.SignalingErrorCode, msg: str) -> None:
        calls.append((code, msg))
        done.set()

    conn.on_disconnect = on_disconnect
    t0 = time.monotonic()
    with pytest.raises(hibiki.ConnectionError) as info:
        conn.connect()
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, f"took {elapsed:.1f} s to fail"
    err = info.value
    assert isinstance(err, ConnectionError)  # the builtin too
    assert err.code == hibiki.SignalingErrorCode.WEBSOCKET_HANDSHAKE_FAILED
    assert url in str(err) and "refused" in str(err).lower(), str(err)
    assert done.wait(5.0)
    assert calls == [(hibiki.SignalingErrorCode.WEBSOCKET_HANDSHAKE_FAILED, err.reason)]
    assert conn.state == "closed"
    conn.disconnect()  # harmless after a failed connect


def test_dead_url_async_face_and_url_race(server: Any) -> None:
    """A dead URL fails fast; with a good URL in the list, the good one wins."""
    dead = f"ws://127.0.0.1:{free_tcp_port()}/signaling"

    async def main() -> None:
        with pytest.raises(hibiki.ConnectionError, match="could not open a signaling WebSocket"):
            async with asyncio.timeout(5):
                await hibiki.connect(dead, role="recvonly", channel_id=new_channel_id())
        async with asyncio.timeout(15):
            async with hibiki.connect([dead, server.signaling_url], role="recvonly",
                                      channel_id=new_channel_id()) as conn:
                assert conn.connected and conn.signaling_url == server.signaling_url

    run(main(), timeout=30)


def test_wrong_path_raises_clearly(server: Any) -> None:
    conn = hibiki.Hibiki().create_connection([server.url.replace("http", "ws") + "/nope"], "recvonly",
                                             new_channel_id())
    with pytest.raises(hibiki.ConnectionError, match=r"HTTP 40[34]"):
        conn.connect(timeout=5)


def test_bad_arguments_raise_before_connecting() -> None:
    sdk = hibiki.Hibiki()
    with pytest.raises(ValueError, match="role"):
        sdk.create_connection(["ws://127.0.0.1:1/signaling"], "publisher", "room")
    with pytest.raises(ValueError, match="signaling_urls"):
        sdk.create_connection([], "recvonly", "room")
    with pytest.raises(ValueError, match="ws://"):
        sdk.create_connection(["http://127.0.0.1/signaling"], "recvonly", "room")
    with pytest.warns(UserWarning, match="forwarding_filters"):
        sdk.create_connection(["ws://127.0.0.1:1/signaling"], "recvonly", "room", forwarding_filters=[{}])
    with pytest.raises(ValueError, match="needs spotlight=True"):
        sdk.create_connection(["ws://127.0.0.1:1/signaling"], "recvonly", "room", spotlight_focus_rid="r1")
    with pytest.raises(ValueError, match="simulcast_rid"):
        sdk.create_connection(["ws://127.0.0.1:1/signaling"], "recvonly", "room", simulcast_rid="r7")


def test_disconnect_is_idempotent(server: Any) -> None:
    sdk = hibiki.Hibiki()
    conn = sdk.create_connection([server.signaling_url], "recvonly", new_channel_id())
    calls: list[hibiki.SignalingErrorCode] = []
    conn.on_disconnect = lambda code, msg: calls.append(code)
    conn.connect()
    assert conn.connected
    t0 = time.monotonic()
    conn.disconnect()
    first = time.monotonic() - t0
    conn.disconnect()
    conn.disconnect()

    async def again() -> None:
        await conn.disconnect()
        await conn.disconnect_async()

    run(again(), timeout=10)
    assert first < 3.5, f"disconnect took {first:.2f} s"
    assert conn.state == "closed" and not conn.connected
    # Callbacks run in order on one thread: once a marker queued now has run,
    # every on_disconnect the disconnects above could have caused has run too.
    flushed = threading.Event()
    dispatch_callback(flushed.set)
    assert flushed.wait(5)
    assert calls == [hibiki.SignalingErrorCode.CLOSE_SUCCEEDED]
    with pytest.raises(hibiki.HibikiError, match="create a new one"):
        conn.connect()

    never = sdk.create_connection([server.signaling_url], "recvonly", new_channel_id())
    never.disconnect()  # never connected: returns at once
    never.disconnect()
    assert never.state == "closed"


def test_user_callback_exceptions_do_not_break_the_sdk(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    conn = hibiki.Hibiki().create_connection([server.signaling_url], "recvonly", new_channel_id())

    def boom(*args: object) -> None:
        raise RuntimeError("user bug")

    conn.on_notify = boom
    conn.on_set_offer = boom
    conn.on_signaling_message = boom
    conn.connect()
    wait_until(lambda: "user bug" in caplog.text, 5, "the exception to be logged")
    assert conn.connected
    conn.disconnect()
    assert conn.disconnect_code == hibiki.SignalingErrorCode.CLOSE_SUCCEEDED
