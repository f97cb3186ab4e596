"""End-to-end media through a real ``hibiki serve``: real codecs, content checked.

Video is the test pattern with a frame counter (``hibiki.media.testsrc``):
the receiver reads the counter back from every decoded picture, checks it
increases and that the colour bars match it (a garbled or stale picture
fails). Audio is a sine tone whose frequency the receiver measures, so a
participant's audio is told apart from another's.

Both faces of the SDK are exercised: the callback face (sora-sdk style
``create_connection``/``on_track``/sinks) and the asyncio face
(``async with hibiki.connect``, ``async for event``, ``await track.recv()``).
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hibiki
import numpy as np
import pytest
from conftest import new_channel_id, run, wait_until
from hibiki.media.testsrc import (
    dominant_frequency,
    level_dbfs,
    pattern_intact,
    read_counter,
    tone,
)

WIDTH, HEIGHT, FPS = 320, 240, 15
AUDIO_RATE = 48_000
CHUNK = 960  # 20 ms


class Feeder:
    """Feeds a video source with the counter pattern and an audio source with a tone, in real time.

    ``counter_base`` offsets the counter so that receivers can tell which
    publisher a picture came from.
    """

    def __init__(
        self,
        video: hibiki.VideoSource | None,
        audio: hibiki.AudioSource | None,
        *,
        frequency: float = 440.0,
        counter_base: int = 0,
        fps: float = FPS,
    ) -> None:
        self.video, self.audio = video, audio
        self.frequency = frequency
        self.counter = counter_base
        self.fps = fps
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def _video_loop(self) -> None:
        from hibiki.media.testsrc import test_pattern

        assert self.video is not None
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            self.video.on_captured(test_pattern(self.counter, WIDTH, HEIGHT))
            self.counter += 1
            next_at += 1.0 / self.fps
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def _audio_loop(self) -> None:
        assert self.audio is not None
        next_at = time.monotonic()
        start = 0
        while not self.stop_event.is_set():
            self.audio.on_data(tone(self.frequency, AUDIO_RATE, 1, start, CHUNK))
            start += CHUNK
            next_at += CHUNK / AUDIO_RATE
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run_it() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by stop()
                self.errors.append(exc)

        return run_it

    def start(self) -> Feeder:
        if self.video is not None:
            self.threads.append(threading.Thread(target=self._guard(self._video_loop), daemon=True))
        if self.audio is not None:
            self.threads.append(threading.Thread(target=self._guard(self._audio_loop), daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)
        assert not self.errors, f"feeder failed: {self.errors!r}"


@contextmanager
def feeding(*feeders: Feeder) -> Iterator[None]:
    for f in feeders:
        f.start()
    try:
        yield
    finally:
        for f in feeders:
            f.stop()


class FrameLog:
    """Collects (counter, intact) for every picture a VideoSink delivers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: list[tuple[int | None, bool, tuple[int, int]]] = []

    def on_frame(self, frame: hibiki.VideoFrame) -> None:
        bgr = frame.data()
        counter = read_counter(bgr)
        intact = counter is not None and pattern_intact(bgr, counter)
        with self.lock:
            self.frames.append((counter, intact, (frame.width, frame.height)))

    def snapshot(self) -> list[tuple[int | None, bool, tuple[int, int]]]:
        with self.lock:
            return list(self.frames)


def check_video(frames: list[tuple[int | None, bool, tuple[int, int]]], counter_range: range | None = None) -> None:
    """Counters readable and strictly increasing, pictures intact, size right."""
    assert frames, "no video frames"
    assert all(c is not None for c, _, _ in frames), f"unreadable counters: {[c for c, _, _ in frames]}"
    counters = [c for c, _, _ in frames if c is not None]
    assert all(b > a for a, b in itertools.pairwise(counters)), f"counters do not increase: {counters}"
    intact = sum(1 for _, ok, _ in frames if ok)
    assert intact >= 0.9 * len(frames), f"only {intact}/{len(frames)} pictures intact"
    assert {size for _, _, size in frames} == {(WIDTH, HEIGHT)}
    if counter_range is not None:
        assert all(c in counter_range for c in counters), f"counters {counters[:5]}... not in {counter_range}"


def check_tone(pcm: np.ndarray, sample_rate: int, frequency: float) -> None:
    measured = dominant_frequency(pcm, sample_rate)
    assert abs(measured - frequency) <= 10, f"expected {frequency} Hz, measured {measured:.1f} Hz"
    assert level_dbfs(pcm) > -30, f"audio too quiet: {level_dbfs(pcm):.1f} dBFS"


# -- callback face ------------------------------------------------------------------------------


def test_sendonly_to_recvonly_callback_face(server: Any) -> None:
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video, audio = sdk.create_video_source(), sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    tracks: list[hibiki.MediaTrack] = []
    notifies: list[str] = []
    disconnects: list[tuple[hibiki.SignalingErrorCode, str]] = []
    sub.on_track = tracks.append
    sub.on_notify = notifies.append
    sub.on_disconnect = lambda code, msg: disconnects.append((code, msg))
    log = FrameLog()
    try:
        pub.connect()
        assert pub.connected and pub.connection_id
        with feeding(Feeder(video, audio)):
            sub.connect()
            assert sub.connected
            wait_until(lambda: {t.kind for t in tracks} == {"audio", "video"}, 10, "audio and video tracks")
            assert all(t.stream_id == pub.connection_id for t in tracks), [t.stream_id for t in tracks]
            vtrack = next(t for t in tracks if t.kind == "video")
            atrack = next(t for t in tracks if t.kind == "audio")
            sink = hibiki.VideoSink(vtrack)
            sink.on_frame = log.on_frame
            asink = hibiki.AudioSink(atrack, output_frequency=16_000, output_channels=1)
            formats: list[tuple[int, int]] = []
            asink.on_format = lambda rate, ch: formats.append((rate, ch))

            wait_until(lambda: len(log.snapshot()) >= 30, 15, "30 decoded video frames")
            check_video(log.snapshot())
            frame = sink.get(timeout=2.0)  # the pull API sees the same pictures
            assert read_counter(frame.data()) is not None

            ok, first = asink.read(frames=8_000, timeout=5.0)
            assert ok and first.shape == (8_000, 1) and first.dtype == np.int16
            ok, pcm = asink.read(frames=8_000, timeout=5.0)
            assert ok, "no audio within 5 s"
            check_tone(pcm, 16_000, 440.0)
            assert formats == [(16_000, 1)]
        wait_until(
            lambda: any('"connection.created"' in n and (sub.connection_id or "?") in n for n in notifies),
            5, "connection.created notify about ourselves",
        )
    finally:
        sub.disconnect()
        pub.disconnect()
    assert disconnects == [(hibiki.SignalingErrorCode.CLOSE_SUCCEEDED,
                            "Succeeded to close WebSocket (DC signaling is not enabled)")]
    assert sub.ws_close_code == 1000 and sub.ws_close_reason == "TYPE-DISCONNECT"


@dataclass
class Participant:
    conn: hibiki.Connection
    freq: float
    feeder: Feeder
    removed: list[hibiki.MediaTrack] = field(default_factory=list)

    def received(self) -> set[tuple[str, str]]:
        """(kind, sender connection_id) of every track it receives now."""
        return {(t.kind, t.stream_id) for t in self.conn.tracks}


def test_three_sendrecv_participants_receive_each_other(server: Any) -> None:
    """Each of three sendrecv participants gets the other two's video and audio, and only theirs."""
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    people: list[Participant] = []
    for i, freq in enumerate([440.0, 660.0, 880.0]):
        video = sdk.create_video_source()
        audio = sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
        conn = sdk.create_connection([server.signaling_url], "sendrecv", channel,
                                     video_source=video, audio_source=audio)
        p = Participant(conn, freq, Feeder(video, audio, frequency=freq, counter_base=(i + 1) * 100_000, fps=10))
        conn.on_remove_track = p.removed.append
        people.append(p)
    try:
        for p in people:
            p.feeder.start()
            p.conn.connect()
        ids = [p.conn.connection_id or "" for p in people]
        assert len(set(ids)) == 3

        for i, p in enumerate(people):
            expected = {(k, ids[j]) for k in ("audio", "video") for j in range(3) if j != i}
            wait_until(lambda p=p, expected=expected: p.received() == expected, 15,  # type: ignore[misc]
                       f"participant {i} to receive the other two's audio and video")

        # Content: every received video track carries its sender's counters,
        # every audio track its sender's tone.
        logs: dict[tuple[int, str], FrameLog] = {}
        audio_sinks: dict[tuple[int, str], hibiki.AudioSink] = {}
        for i, p in enumerate(people):
            for t in p.conn.tracks:
                if t.kind == "video":
                    log = logs[(i, t.stream_id)] = FrameLog()
                    hibiki.VideoSink(t).on_frame = log.on_frame
                else:
                    audio_sinks[(i, t.stream_id)] = hibiki.AudioSink(t, output_frequency=16_000, output_channels=1)
        for (i, sender), log in logs.items():
            wait_until(lambda log=log: len(log.snapshot()) >= 10, 15,  # type: ignore[misc]
                       f"10 frames from {sender} at participant {i}")
            j = ids.index(sender)
            check_video(log.snapshot(), range((j + 1) * 100_000, (j + 2) * 100_000))
        for (i, sender), asink in audio_sinks.items():
            asink.read(frames=4_000, timeout=5.0)  # skip the start
            ok, pcm = asink.read(frames=8_000, timeout=5.0)
            assert ok, f"no audio from {sender} at participant {i}"
            check_tone(pcm, 16_000, people[ids.index(sender)].freq)

        # The third leaves: the others' tracks from it go away (re-offer), theirs stay.
        leaver = people[2]
        leaver.feeder.stop()
        leaver.conn.disconnect()
        for i in (0, 1):
            p = people[i]
            expected = {(k, ids[1 - i]) for k in ("audio", "video")}
            wait_until(lambda p=p, expected=expected: p.received() == expected, 10,  # type: ignore[misc]
                       f"participant {i} to drop the leaver's tracks")
            wait_until(lambda p=p: len(p.removed) == 2, 5, "on_remove_track for both tracks")  # type: ignore[misc]
            assert {(t.kind, t.stream_id) for t in p.removed} == {(k, ids[2]) for k in ("audio", "video")}
            assert all(t.ended for t in p.removed)
    finally:
        for p in people:
            p.feeder.stop_event.set()
            p.conn.disconnect()
        for p in people:
            p.feeder.stop()


def test_late_joiner_gets_first_frame_quickly(server: Any, record_property: Callable[[str, Any], None]) -> None:
    """A subscriber joining mid-stream decodes its first picture in well under 2 s.

    At 10 fps the encoder's periodic keyframe comes only every 6 s (its GOP
    is 60 frames), so this needs the keyframe request (PLI) path to work.
    """
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video = sdk.create_video_source()
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio=False)
    first: list[float] = []
    got_first = threading.Event()

    def on_track(track: hibiki.MediaTrack) -> None:
        if track.kind == "video":
            def on_frame(frame: hibiki.VideoFrame) -> None:
                if not first:
                    first.append(time.monotonic())
                    got_first.set()
            hibiki.VideoSink(track).on_frame = on_frame

    sub = sdk.create_connection([server.signaling_url], "recvonly", channel, audio=False)
    sub.on_track = on_track
    feeder = Feeder(video, None, fps=10)
    try:
        pub.connect()
        with feeding(feeder):
            # Join in the middle of a GOP, well after the first keyframe.
            wait_until(lambda: feeder.counter >= 25, 10, "the publisher to send 2.5 s of video")
            t0 = time.monotonic()
            sub.connect()
            connected_at = time.monotonic()
            assert got_first.wait(5.0), "no decoded frame within 5 s of joining"
        join_to_frame = first[0] - t0
        track = next(t for t in sub.tracks if t.kind == "video")
        track_to_frame = (track.first_frame_at or 0) - track.created_at
        record_property("join_to_first_frame_ms", round(join_to_frame * 1000))
        record_property("connect_ms", round((connected_at - t0) * 1000))
        record_property("track_to_first_frame_ms", round(track_to_frame * 1000))
        print(f"\nlate joiner: connect {1000 * (connected_at - t0):.0f} ms, first frame "
              f"{1000 * join_to_frame:.0f} ms after connect() was called "
              f"({1000 * track_to_frame:.0f} ms after the track appeared)")
        assert join_to_frame < 2.0, f"first frame took {join_to_frame:.2f} s"
    finally:
        sub.disconnect()
        pub.disconnect()


def test_media_keeps_flowing(server: Any) -> None:
    """Audio and video still arrive after 8 s, not only at the start.

    Guards against streams that stall after a while (e.g. when the sender
    stops repeating the MID header extension, which str0m does after ~5 s).
    """
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video, audio = sdk.create_video_source(), sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    log = FrameLog()
    sinks: dict[str, Any] = {}

    def on_track(track: hibiki.MediaTrack) -> None:
        if track.kind == "video":
            sink = hibiki.VideoSink(track)
            sink.on_frame = log.on_frame
            sinks["video"] = sink
        else:
            sinks["audio"] = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)

    sub.on_track = on_track
    try:
        pub.connect()
        with feeding(Feeder(video, audio)):
            sub.connect()
            wait_until(lambda: len(sinks) == 2, 10, "both sinks")
            started = time.monotonic()
            while time.monotonic() - started < 8.0:
                ok, pcm = sinks["audio"].read(frames=1_600, timeout=2.0)  # 100 ms at a time
                assert ok, f"audio stopped {time.monotonic() - started:.1f} s after joining"
            ok, pcm = sinks["audio"].read(frames=8_000, timeout=2.0)
            assert ok, "audio stopped after 8 s"
            check_tone(pcm, 16_000, 440.0)
            n = len(log.snapshot())
            wait_until(lambda: len(log.snapshot()) >= n + 10, 5, "video 8 s after joining")
            check_video(log.snapshot()[-10:])
    finally:
        sub.disconnect()
        pub.disconnect()


# -- asyncio face ---------------------------------------------------------------------------------


def test_sendonly_to_recvonly_async_face(server: Any) -> None:
    channel = new_channel_id()
    video, audio = hibiki.VideoSource(), hibiki.AudioSource(channels=1, sample_rate=AUDIO_RATE)

    async def main() -> None:
        async with hibiki.connect(server.signaling_url, role="sendonly", channel_id=channel,
                                  video_source=video, audio_source=audio) as pub:
            assert pub.connected
            with feeding(Feeder(video, audio)):
                async with hibiki.connect([server.signaling_url], role="recvonly", channel_id=channel) as sub:
                    seen: list[str] = []
                    tracks: dict[str, hibiki.MediaTrack] = {}
                    # TrackAdded may come before Connected: tracks appear when
                    # the SDP is applied, Connected once ICE/DTLS are up.
                    async with asyncio.timeout(10):
                        async for event in sub:
                            seen.append(type(event).__name__)
                            if isinstance(event, hibiki.events.TrackAdded):
                                tracks[event.track.kind] = event.track
                            elif isinstance(event, hibiki.events.Connected):
                                assert event.connection_id == sub.connection_id
                            if len(tracks) == 2 and "Connected" in seen:
                                break
                    assert all(t.stream_id == pub.connection_id for t in tracks.values())
                    assert sub.tracks and set(sub.tracks) == set(tracks.values())

                    frames = []
                    for _ in range(20):
                        frame = await tracks["video"].recv(timeout=5.0)
                        assert isinstance(frame, hibiki.VideoFrame)
                        bgr = frame.data()
                        counter = read_counter(bgr)
                        frames.append((counter, counter is not None and pattern_intact(bgr, counter),
                                       (frame.width, frame.height)))
                    check_video(frames)

                    chunks: list[np.ndarray] = []
                    while sum(len(c) for c in chunks) < AUDIO_RATE:  # 1 s
                        aframe = await tracks["audio"].recv(timeout=5.0)
                        assert isinstance(aframe, hibiki.AudioFrame) and aframe.sample_rate == AUDIO_RATE
                        chunks.append(aframe.data())
                    check_tone(np.concatenate(chunks[10:]), AUDIO_RATE, 440.0)
                assert sub.state == "closed"
                assert sub.disconnect_code == hibiki.SignalingErrorCode.CLOSE_SUCCEEDED
                # What was decoded before the end can still be read; then the track says it ended.
                with pytest.raises(hibiki.TrackEnded):
                    for _ in range(10):
                        await tracks["video"].recv(timeout=1.0)

    run(main(), timeout=60)


def test_leaver_tracks_disappear_async_face(server: Any) -> None:
    """When a publisher leaves, subscribers get TrackRemoved (via re-offer) for its tracks."""
    channel = new_channel_id()
    video, audio = hibiki.VideoSource(), hibiki.AudioSource(channels=1, sample_rate=AUDIO_RATE)

    async def main() -> None:
        pub = await hibiki.connect(server.signaling_url, role="sendonly", channel_id=channel,
                                   video_source=video, audio_source=audio)
        with feeding(Feeder(video, audio)):
            async with hibiki.connect(server.signaling_url, role="recvonly", channel_id=channel) as sub:
                events = sub.events()
                added: list[hibiki.MediaTrack] = []
                async with asyncio.timeout(10):
                    async for event in events:
                        if isinstance(event, hibiki.events.TrackAdded):
                            added.append(event.track)
                            if len(added) == 2:
                                break
                await added[0].recv(timeout=5.0)  # media flows before the leave

                t0 = time.monotonic()
                await pub.disconnect()
                assert pub.state == "closed"
                removed: list[hibiki.MediaTrack] = []
                destroyed = False
                async with asyncio.timeout(10):
                    # The same iterator: events that came meanwhile are queued in it.
                    async for event in events:
                        if isinstance(event, hibiki.events.TrackRemoved):
                            removed.append(event.track)
                        elif isinstance(event, hibiki.events.Notify) and \
                                event.event_type == "connection.destroyed" and event.connection_id == pub.connection_id:
                            destroyed = True
                        if len(removed) == 2:
                            break
                elapsed = time.monotonic() - t0
                assert {t.kind for t in removed} == {"audio", "video"}
                assert all(t.stream_id == pub.connection_id and t.ended for t in removed)
                assert sub.tracks == []
                assert elapsed < 5.0, f"tracks took {elapsed:.2f} s to go"
                print(f"\nleaver's tracks removed {1000 * elapsed:.0f} ms after its disconnect "
                      f"(connection.destroyed notify seen before that: {destroyed})")
                await events.aclose()

    run(main(), timeout=60)


def test_both_faces_share_one_connection(server: Any) -> None:
    """Callbacks and the async iterator observe the same Connection and tracks."""
    channel = new_channel_id()
    video = hibiki.VideoSource()
    sdk = hibiki.Hibiki()
    pub = sdk.create_connection(server.signaling_url, "sendonly", channel, video_source=video, audio=False)
    sub = sdk.create_connection(server.signaling_url, "recvonly", channel, audio=False)
    from_callback: list[hibiki.MediaTrack] = []
    sub.on_track = from_callback.append

    async def main() -> None:
        await pub.connect()  # connect() returns an awaitable inside a coroutine
        await sub.connect_async()
        async with asyncio.timeout(10):
            async for event in sub:  # a late consumer first gets the current state
                if isinstance(event, hibiki.events.TrackAdded):
                    track = event.track
                    break
        frame = await track.recv(timeout=5.0)
        assert read_counter(frame.data()) is not None
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_until(lambda: len(from_callback) == 1, 5, "on_track"))
        assert from_callback[0] is track
        await sub.disconnect()
        await pub.disconnect()

    with feeding(Feeder(video, None)):
        run(main(), timeout=60)
    assert sub.state == pub.state == "closed"
