"""Encoded-frame transforms (``hibiki.client.transform``): sora-sdk's API and meaning, through a real server.

* Units (no server): frames (read-only data, ``set_data`` types, 32-bit RTP
  timestamps over 64-bit ones), the worker (order, late enqueue from another
  thread, stale and lost frames, a full queue, exceptions, short-circuiting).
* Through ``hibiki serve``: a sending transformer flips a byte after the
  codec header and a receiving one flips it back, and the pictures (frame
  counter, colour bars) and the 440 Hz tone come out intact; what the
  receiver's transformer sees is exactly what the sender's produced (the
  changed bytes went over the wire); the metadata is sane (payload types of
  the SDP, SSRCs, RTP timestamps, keyframe flags and sizes, directions).
  Short-circuiting, enqueueing later from another thread, a transformer that
  never enqueues (media stops, the connection does not) and an
  ``on_transform`` that raises (logged, media goes on).
* The sora-sdk compat classes: the same through ``hibiki.compat.sora_sdk``
  with sora-sdk's own test program shape (a trailer appended and stripped).

Every wait has a deadline.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import hibiki
import hibiki.compat.sora_sdk as compat
import numpy as np
import pytest
from conftest import new_channel_id, wait_until
from hibiki.client.transform import (
    AudioFrameTransformer,
    FrameTransformer,
    TransformableAudioFrame,
    TransformableAudioFrameType,
    TransformableFrameDirection,
    TransformableVideoFrame,
    VideoFrameTransformer,
    _Route,
    vp8_keyframe_size,
)
from hibiki.media.testsrc import test_pattern, tone
from test_media_flow import (
    AUDIO_RATE,
    HEIGHT,
    WIDTH,
    Feeder,
    FrameLog,
    check_tone,
    check_video,
    feeding,
)

NTP_1970 = 2_208_988_800 << 32  # the Unix epoch as an NTP UQ32.32 timestamp


# -- units ------------------------------------------------------------------------------------


def test_frames_data_and_metadata() -> None:
    frame = TransformableVideoFrame(b"\x00\x01\x02", rtp_timestamp=(1 << 32) + 5, codec="VP8",
                                    direction=TransformableFrameDirection.SENDER, is_key_frame=True, frame_id=7)
    data = frame.get_data()
    assert data.dtype == np.uint8 and data.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        data[0] = 9  # read-only, like sora-sdk's
    frame.set_data(np.array([4, 5], dtype=np.uint8))
    assert frame.get_data().tolist() == [4, 5]
    frame.set_data(b"\x06")
    assert frame.get_data().tolist() == [6]
    with pytest.raises(TypeError):
        frame.set_data(np.array([1, 2], dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        frame.set_data(np.zeros((2, 2), dtype=np.uint8))
    assert frame.mine_type == frame.mime_type == "video/VP8"
    assert frame.direction == TransformableFrameDirection.SENDER
    assert frame.is_key_frame and frame.frame_id == 7 and frame.frame_dependencies.tolist() == []
    # 32-bit RTP timestamps over Hibiki's 64-bit ones: setting keeps the nearest extension.
    assert frame.rtp_timestamp == 5 and frame.rtp_time == (1 << 32) + 5
    frame.rtp_timestamp = 0xFFFF_FFF0  # 21 ticks earlier, across the wrap
    assert frame.rtp_time == (1 << 32) - 16 and frame.rtp_timestamp == 0xFFFF_FFF0
    with pytest.raises(ValueError):
        frame.rtp_timestamp = -1
    delta = TransformableVideoFrame(b"\x01", codec="VP8", is_key_frame=False, frame_id=8)
    assert delta.frame_dependencies.tolist() == [7] and delta.width == delta.height == 0
    audio = TransformableAudioFrame(b"\x78\x01\x02", codec="OPUS")
    assert audio.mine_type == "audio/opus" and audio.type == TransformableAudioFrameType.SPEECH
    assert TransformableAudioFrame(b"\x78", codec="OPUS").type == TransformableAudioFrameType.CN  # DTX
    assert audio.sequence_number is None and audio.contributing_sources.tolist() == []

    transformer = VideoFrameTransformer()
    with pytest.raises(ValueError, match="did not come from on_transform"):
        transformer.enqueue(frame)
    with pytest.raises(TypeError):
        transformer.enqueue(b"data")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FrameTransformer()


def test_vp8_keyframe_size_from_the_bitstream() -> None:
    from hibiki.media import VideoEncoder

    encoder = VideoEncoder("VP8")
    frames = [f for i in range(3) for f in encoder.encode(test_pattern(i, 320, 240), i * 3000)]
    assert frames[0].keyframe and vp8_keyframe_size(frames[0].data) == (320, 240)
    assert not frames[1].keyframe and vp8_keyframe_size(frames[1].data) is None


class ListRoute(_Route):
    """A route whose output is a list: what went on, and whether a gap preceded it."""

    def __init__(self, transformer: FrameTransformer) -> None:
        super().__init__(transformer, transformer.kind, "OPUS")
        self.out: list[tuple[bytes, bool]] = []

    def feed(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self._hand_over(TransformableAudioFrame._build(
                bytes([i % 256]) * 3, payload_type=111, ssrc=1, rtp_time=i * 960,
                direction=TransformableFrameDirection.SENDER, codec="OPUS", metadata={}))

    def _output(self, frame: Any, gap: bool) -> None:
        self.out.append((frame._data, gap))


def test_worker_order_late_enqueue_loss_overflow_errors_and_short_circuit(caplog: pytest.LogCaptureFixture) -> None:
    # Order and the thread: on_transform runs on the transformer's own thread.
    threads: set[str] = set()
    held: list[Any] = []
    transformer = AudioFrameTransformer()

    def hold(frame: TransformableAudioFrame) -> None:
        threads.add(threading.current_thread().name)
        held.append(frame)

    transformer.on_transform = hold
    route = ListRoute(transformer)
    route.feed(10)
    wait_until(lambda: len(held) == 10, 5, "10 frames in on_transform")
    assert threads == {"hibiki-audio-transform"}
    assert [f.get_data()[0] for f in held] == list(range(10))

    # Enqueued later, from another thread, in order: all go on, no gap.
    t = threading.Thread(target=lambda: list(map(transformer.enqueue, held[:5])))
    t.start()
    t.join(5)
    assert [(d[0], gap) for d, gap in route.out] == [(i, False) for i in range(5)]
    # Frame 6 skips 5 (a gap); 5 afterwards is stale and dropped; twice is ignored.
    transformer.enqueue(held[6])
    transformer.enqueue(held[5])
    transformer.enqueue(held[6])
    assert [(d[0], gap) for d, gap in route.out][5:] == [(6, True)]
    assert route.frames_stale == 1

    # A full queue drops frames rather than growing: on_transform blocks.
    gate = threading.Event()
    def blocked(frame: TransformableAudioFrame) -> None:
        gate.wait(5)
        transformer.enqueue(frame)

    transformer.on_transform = blocked
    route2 = ListRoute(transformer)
    before = transformer.frames_dropped
    fed = transformer._queue_max + 10
    route2.feed(fed, start=100)
    dropped = transformer.frames_dropped - before
    assert dropped >= 9  # the worker may have taken one or two meanwhile
    gate.set()
    wait_until(lambda: len(route2.out) == fed - dropped, 5, "the queue to drain")
    values = [d[0] for d, _ in route2.out]
    assert values[0] == 100 and all(b > a for a, b in itertools.pairwise(values))
    # What the full queue dropped shows up as gaps, and nothing else does.
    assert [gap for _, gap in route2.out][1:] == [b != a + 1 for a, b in itertools.pairwise(values)]

    # Exceptions are logged and the pipeline goes on; a frame enqueued before raising still goes.
    calls = itertools.count()

    def flaky(frame: TransformableAudioFrame) -> None:
        n = next(calls)
        if n % 2:
            transformer.enqueue(frame)
            raise RuntimeError("after enqueue")
        raise RuntimeError("before enqueue")

    transformer.on_transform = flaky
    route3 = ListRoute(transformer)
    with caplog.at_level(logging.ERROR, logger="hibiki.client"):
        route3.feed(6, start=50)
        wait_until(lambda: transformer.errors >= 6, 5, "six errors")
    assert [d[0] for d, _ in route3.out] == [51, 53, 55]
    assert sum("on_transform raised" in r.getMessage() for r in caplog.records) == 3  # then every 100th

    # Short-circuiting: on_transform is not called any more, frames go on unchanged and in order.
    late_calls: list[Any] = []
    transformer.on_transform = late_calls.append
    transformer.start_short_circuiting()
    route4 = ListRoute(transformer)
    route4.feed(20, start=200)
    wait_until(lambda: len(route4.out) == 20, 5, "20 short-circuited frames")
    assert [d[0] for d, _ in route4.out] == [(200 + i) % 256 for i in range(20)]
    assert transformer.short_circuiting and transformer.frames_short_circuited == 20 and late_calls == []


def test_transformers_check_their_kind() -> None:
    source = hibiki.VideoSource()
    with pytest.raises(TypeError, match="VideoFrameTransformer"):
        source.set_frame_transformer(AudioFrameTransformer())  # type: ignore[arg-type]
    transformer = VideoFrameTransformer()
    source.set_frame_transformer(transformer)
    assert source.frame_transformer is transformer
    source.set_frame_transformer(None)
    with pytest.raises(TypeError, match="audio_frame_transformer"):
        hibiki.Hibiki().create_connection(["ws://127.0.0.1:9/signaling"], "sendonly", "x",
                                          audio_frame_transformer=transformer)  # type: ignore[arg-type]


# -- through a server ------------------------------------------------------------------------------


def clear_bytes(frame: Any) -> int:
    """Codec header bytes a transform leaves alone: VP8 10 (keyframe) or 3, Opus 1 (the TOC)."""
    if frame.mime_type == "audio/opus":
        return 1
    return 10 if frame.is_key_frame else 3


def flipped(frame: Any) -> np.ndarray:
    """The frame's data with the first byte after the clear header inverted (its own inverse)."""
    data = frame.get_data().copy()
    i = clear_bytes(frame)
    if len(data) > i:
        data[i] ^= 0xFF
    return data


class Recorder:
    """A transformer's on_transform that records frames (data before and after) and applies ``change``."""

    def __init__(self, transformer: FrameTransformer, change: Callable[[Any], np.ndarray] | None = None) -> None:
        self.transformer = transformer
        self.change = change
        self.lock = threading.Lock()
        self.before: list[bytes] = []
        self.after: list[bytes] = []
        self.meta: list[dict[str, Any]] = []
        transformer.on_transform = self.on_transform

    def on_transform(self, frame: Any) -> None:
        data = frame.get_data().tobytes()
        if self.change is not None:
            frame.set_data(self.change(frame))
        meta = {name: getattr(frame, name) for name in (
            "payload_type", "ssrc", "rtp_timestamp", "direction", "mine_type", "mime_type")}
        if isinstance(frame, TransformableVideoFrame):
            meta.update({name: getattr(frame, name) for name in (
                "is_key_frame", "frame_id", "width", "height", "spatial_index", "temporal_index")})
            meta["frame_dependencies"] = frame.frame_dependencies.tolist()
        else:
            meta.update({name: getattr(frame, name) for name in (
                "sequence_number", "absolute_capture_timestamp", "type", "audio_level", "receive_time")})
        with self.lock:
            self.before.append(data)
            self.after.append(frame.get_data().tobytes())
            self.meta.append(meta)
        self.transformer.enqueue(frame)

    def snapshot(self) -> tuple[list[bytes], list[bytes], list[dict[str, Any]]]:
        with self.lock:
            return list(self.before), list(self.after), list(self.meta)


def sdp_payload_type(sdp: str, codec: str) -> int:
    """The payload type an SDP maps to ``codec`` (the tests use one per codec)."""
    types = {int(pt) for pt in re.findall(rf"a=rtpmap:(\d+) {codec}/", sdp, re.IGNORECASE)}
    assert len(types) == 1, f"{codec}: {types}"
    return types.pop()


def test_transforms_change_the_bytes_on_the_wire_and_back(server: Any) -> None:
    """Send side flips a byte after the header, receive side flips it back: content intact, metadata sane."""
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video, audio = sdk.create_video_source(), sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
    vt, at = VideoFrameTransformer(), AudioFrameTransformer()
    send_v, send_a = Recorder(vt, flipped), Recorder(at, flipped)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio,
                                video_frame_transformer=vt, audio_frame_transformer=at)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    recv: dict[str, Recorder] = {}
    log = FrameLog()
    sinks: dict[str, Any] = {}

    def on_track(track: hibiki.MediaTrack) -> None:
        # The transformer first, then the sink: no frame reaches the sink untransformed.
        transformer = VideoFrameTransformer() if track.kind == "video" else AudioFrameTransformer()
        recv[track.kind] = Recorder(transformer, flipped)
        track.set_frame_transformer(transformer)
        if track.kind == "video":
            sinks["video"] = sink = hibiki.VideoSink(track)
            sink.on_frame = log.on_frame
        else:
            sinks["audio"] = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)

    sub.on_track = on_track
    try:
        pub.connect()
        with feeding(Feeder(video, audio)):
            sub.connect()
            wait_until(lambda: len(sinks) == 2, 10, "both tracks")
            wait_until(lambda: len(log.snapshot()) >= 30, 15, "30 decoded pictures")
            check_video(log.snapshot())
            sinks["audio"].read(frames=4_000, timeout=5.0)  # skip the start
            ok, pcm = sinks["audio"].read(frames=8_000, timeout=5.0)
            assert ok, "no audio"
            check_tone(pcm, 16_000, 440.0)
    finally:
        sub.disconnect()
        pub.disconnect()

    engine_has_ssrc = hasattr(pub._hub.engine if pub._hub else None, "send_info")  # the lead's engine API
    for kind, sent, codec in (("video", send_v, "VP8"), ("audio", send_a, "OPUS")):
        before, after, meta = sent.snapshot()
        r_before, r_after, r_meta = recv[kind].snapshot()
        assert len(r_before) >= 20, f"{kind}: only {len(r_before)} frames through the receiver's transformer"
        # The wire carried the transformed bytes: every frame the receiving
        # transformer saw is one the sending transformer produced, none is an original.
        assert set(r_before) <= set(after), f"{kind}: received frames the sender's transformer did not produce"
        assert not set(r_before) & (set(before) - set(after)), f"{kind}: an untransformed frame got through"
        assert set(r_after) <= set(before)  # and the receiver restored the originals

        pt = sdp_payload_type(pub.offer["sdp"], codec)  # type: ignore[index]
        rpt = sdp_payload_type(sub.offer["sdp"], codec)  # type: ignore[index]
        mime = "video/VP8" if kind == "video" else "audio/opus"
        assert {m["payload_type"] for m in meta} == {pt}
        assert {m["payload_type"] for m in r_meta} == {rpt}
        assert {m["mine_type"] for m in meta + r_meta} == {m["mime_type"] for m in meta + r_meta} == {mime}
        assert {m["direction"] for m in meta} == {TransformableFrameDirection.SENDER}
        assert {m["direction"] for m in r_meta} == {TransformableFrameDirection.RECEIVER}
        for m_list in (meta, r_meta):
            stamps = [m["rtp_timestamp"] for m in m_list]
            assert all(b > a for a, b in itertools.pairwise(stamps)), f"{kind}: rtp_timestamp not increasing"
        if engine_has_ssrc:
            assert all(m["ssrc"] for m in meta), f"{kind}: send-side ssrc 0"
        if any(m["ssrc"] for m in r_meta):  # the engine reports received SSRCs
            assert len({m["ssrc"] for m in r_meta}) == 1 and all(m["ssrc"] for m in r_meta)

    _, _, meta = send_v.snapshot()
    _, _, r_meta = recv["video"].snapshot()
    assert meta[0]["is_key_frame"], "the first frame sent is not a keyframe"
    assert r_meta[0]["is_key_frame"], "the first frame received is not a keyframe"
    for m in meta + r_meta:
        expected = (WIDTH, HEIGHT) if m["is_key_frame"] else (0, 0)
        assert (m["width"], m["height"]) == expected, m
        assert m["spatial_index"] == 0 and m["temporal_index"] == 0
    ids = [m["frame_id"] for m in meta]
    assert ids == list(range(1, len(ids) + 1))
    assert all(m["frame_dependencies"] == ([] if m["is_key_frame"] else [m["frame_id"] - 1]) for m in meta)

    _, _, meta = send_a.snapshot()
    _, _, r_meta = recv["audio"].snapshot()
    assert [b["rtp_timestamp"] - a["rtp_timestamp"] for a, b in itertools.pairwise(meta[:20])] == [960] * 19
    assert {m["type"] for m in meta} == {TransformableAudioFrameType.SPEECH}  # a tone: no DTX
    assert all(m["sequence_number"] is None and m["absolute_capture_timestamp"] > NTP_1970 for m in meta)
    times = [m["receive_time"] for m in r_meta]
    assert all(isinstance(t, int) for t in times) and times == sorted(times)
    assert all(m["receive_time"] is None for m in meta)


def test_short_circuit_and_enqueue_later_from_another_thread(server: Any) -> None:
    """Frames held and enqueued 100 ms later by another thread decode; after short-circuiting, on_transform rests."""
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video = sdk.create_video_source()
    transformer = VideoFrameTransformer()
    held: list[tuple[float, Any]] = []
    lock = threading.Condition()
    calls = [0]
    stop = threading.Event()

    def on_transform(frame: TransformableVideoFrame) -> None:
        calls[0] += 1
        with lock:
            held.append((time.monotonic() + 0.1, frame))
            lock.notify()

    def releaser() -> None:  # enqueues each frame 100 ms after it came, in order
        while not stop.is_set():
            with lock:
                while not held and not stop.is_set():
                    lock.wait(0.1)
                if stop.is_set():
                    return
                due, frame = held[0]
            time.sleep(max(0.0, due - time.monotonic()))
            with lock:
                held.pop(0)
            transformer.enqueue(frame)

    transformer.on_transform = on_transform
    thread = threading.Thread(target=releaser, daemon=True)
    thread.start()
    video.set_frame_transformer(transformer)  # the source's own: every connection it is sent on
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio=False)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel, audio=False)
    log = FrameLog()
    sinks: list[hibiki.VideoSink] = []

    def on_track(track: hibiki.MediaTrack) -> None:
        sink = hibiki.VideoSink(track)
        sink.on_frame = log.on_frame
        sinks.append(sink)

    sub.on_track = on_track
    try:
        pub.connect()
        with feeding(Feeder(video, None)):
            sub.connect()
            wait_until(lambda: len(log.snapshot()) >= 15, 15, "15 pictures through the delayed transform")
            check_video(log.snapshot())
            transformer.start_short_circuiting()
            n_calls = calls[0]
            n_frames = len(log.snapshot())
            wait_until(lambda: len(log.snapshot()) >= n_frames + 15, 15, "15 pictures after short-circuiting")
            assert calls[0] <= n_calls + 1, "on_transform still called after start_short_circuiting"
            check_video(log.snapshot())
    finally:
        stop.set()
        sub.disconnect()
        pub.disconnect()
        thread.join(5)


def test_a_transformer_that_never_enqueues_stops_media_not_the_connection(server: Any) -> None:
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video, audio = sdk.create_video_source(), sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
    swallowed: list[Any] = []
    transformer = VideoFrameTransformer(swallowed.append)  # keeps every frame, never enqueues
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio,
                                video_frame_transformer=transformer)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    log = FrameLog()
    sinks: dict[str, Any] = {}
    tracks: dict[str, hibiki.MediaTrack] = {}

    def on_track(track: hibiki.MediaTrack) -> None:
        tracks[track.kind] = track
        if track.kind == "video":
            sinks["video"] = sink = hibiki.VideoSink(track)
            sink.on_frame = log.on_frame
        else:
            sinks["audio"] = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)

    sub.on_track = on_track
    try:
        pub.connect()
        with feeding(Feeder(video, audio)):
            sub.connect()
            wait_until(lambda: len(sinks) == 2, 10, "both tracks")
            ok, pcm = sinks["audio"].read(frames=16_000, timeout=5.0)  # 1 s of audio goes on meanwhile
            assert ok
            check_tone(pcm[8_000:], 16_000, 440.0)
            wait_until(lambda: len(swallowed) > 20, 10, "frames swallowed by the transformer")
            assert tracks["video"].frames_received == 0 and log.snapshot() == []
            assert pub.connected and sub.connected

            # The same transformer starts passing frames: video comes (after a keyframe).
            transformer.on_transform = transformer.enqueue
            wait_until(lambda: len(log.snapshot()) >= 15, 15, "pictures once frames are enqueued")
            check_video(log.snapshot())
    finally:
        sub.disconnect()
        pub.disconnect()


def test_exceptions_in_on_transform_are_logged_and_media_goes_on(server: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Sending audio raises after each enqueue; receiving video raises (dropping the frame) now and then."""
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video, audio = sdk.create_video_source(), sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
    send_audio = AudioFrameTransformer()

    def raise_after(frame: TransformableAudioFrame) -> None:
        send_audio.enqueue(frame)
        raise ValueError("boom after enqueue")

    send_audio.on_transform = raise_after
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio,
                                audio_frame_transformer=send_audio)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    recv_video = VideoFrameTransformer()
    calls = [0]

    def sometimes(frame: TransformableVideoFrame) -> None:
        calls[0] += 1
        if calls[0] in (5, 6, 7, 40):  # lost delta frames: the decoder must wait for a keyframe
            raise KeyError("boom before enqueue")
        recv_video.enqueue(frame)

    recv_video.on_transform = sometimes
    log = FrameLog()
    sinks: dict[str, Any] = {}

    def on_track(track: hibiki.MediaTrack) -> None:
        if track.kind == "video":
            track.set_frame_transformer(recv_video)
            sinks["video"] = sink = hibiki.VideoSink(track)
            sink.on_frame = log.on_frame
        else:
            sinks["audio"] = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)

    sub.on_track = on_track
    try:
        with caplog.at_level(logging.ERROR, logger="hibiki.client"):
            pub.connect()
            with feeding(Feeder(video, audio)):
                sub.connect()
                wait_until(lambda: len(sinks) == 2, 10, "both tracks")
                wait_until(lambda: calls[0] > 60 and len(log.snapshot()) >= 30, 20,
                           "60 frames through the receiving transformer")
                sinks["audio"].read(frames=4_000, timeout=5.0)
                ok, pcm = sinks["audio"].read(frames=8_000, timeout=5.0)
                assert ok
                check_tone(pcm, 16_000, 440.0)
    finally:
        sub.disconnect()
        pub.disconnect()
    check_video(log.snapshot())  # no picture decoded from missing references
    assert send_audio.errors >= 50 and recv_video.errors == 4
    messages = [r.getMessage() for r in caplog.records if "on_transform raised" in r.getMessage()]
    assert any("AudioFrameTransformer" in m for m in messages) and any("VideoFrameTransformer" in m for m in messages)
    assert all(r.exc_info is not None for r in caplog.records if "on_transform raised" in r.getMessage())


# -- sora-sdk compat ---------------------------------------------------------------------------------


class PictureOf:
    """What FrameLog reads from a hibiki.VideoFrame, for a sora-sdk SoraVideoFrame's array."""

    def __init__(self, bgr: np.ndarray) -> None:
        self._bgr = bgr
        self.height, self.width = int(bgr.shape[0]), int(bgr.shape[1])

    def data(self) -> np.ndarray:
        return self._bgr


def test_sora_sdk_names_and_shapes() -> None:
    """The compat classes are sora-sdk's (the full stub check is in test_compat.py) and Hibiki's."""
    assert issubclass(compat.SoraVideoFrameTransformer, compat.SoraFrameTransformer)
    assert issubclass(compat.SoraVideoFrameTransformer, VideoFrameTransformer)
    assert issubclass(compat.SoraAudioFrameTransformer, AudioFrameTransformer)
    assert issubclass(compat.SoraTransformableVideoFrame, compat.SoraTransformableFrame)
    assert issubclass(compat.SoraTransformableAudioFrame, TransformableAudioFrame)
    for cls in (compat.SoraFrameTransformer, compat.SoraTransformableFrame, compat.SoraTransformableVideoFrame,
                compat.SoraTransformableAudioFrame):
        with pytest.raises(TypeError, match="no constructor"):
            cls()
    transformer = compat.SoraVideoFrameTransformer()
    assert transformer.on_transform is None
    frame = compat.SoraTransformableVideoFrame._create(b"\x00\x01", is_key_frame=True, width=64, codec="VP8")
    assert frame.mine_type == "video/VP8" and frame.is_key_frame and frame.width == 64
    assert isinstance(frame.direction, compat.SoraTransformableFrameDirection)
    audio = compat.SoraTransformableAudioFrame._create(b"\x78\x00\x00", codec="OPUS")
    assert audio.type is compat.SoraTransformableAudioFrameType.SPEECH
    with pytest.raises(TypeError):
        compat.Sora().create_connection(["ws://127.0.0.1:9/signaling"], "sendonly", "x",
                                        video_frame_transformer=compat.SoraAudioFrameTransformer())  # type: ignore[arg-type]


def test_sora_sdk_style_program_appends_and_strips_a_trailer(server: Any) -> None:
    """sora-sdk's own encoded-transform test, through the compat module: a b"sora" trailer on every frame."""
    channel = new_channel_id()
    sora = compat.Sora()
    video = sora.create_video_source()
    audio = sora.create_audio_source(1, AUDIO_RATE)
    seen: dict[str, list[Any]] = {"send_video": [], "send_audio": [], "recv_video": [], "recv_audio": []}
    trailer = np.frombuffer(b"sora", dtype=np.uint8)

    def appender(transformer: Any, key: str) -> Callable[[Any], None]:
        def on_transform(frame: Any) -> None:
            seen[key].append(frame)
            frame.set_data(np.append(frame.get_data(), trailer))
            transformer.enqueue(frame)
        return on_transform

    def stripper(transformer: Any, key: str) -> Callable[[Any], None]:
        def on_transform(frame: Any) -> None:
            data = np.asarray(frame.get_data(), dtype=np.uint8)
            assert data[-4:].tobytes() == b"sora"
            seen[key].append(frame)
            frame.set_data(data[:-4])
            transformer.enqueue(frame)
        return on_transform

    vt, at = compat.SoraVideoFrameTransformer(), compat.SoraAudioFrameTransformer()
    vt.on_transform, at.on_transform = appender(vt, "send_video"), appender(at, "send_audio")
    pub = sora.create_connection([server.signaling_url], "sendonly", channel, audio_source=audio, video_source=video,
                                 audio_frame_transformer=at, video_frame_transformer=vt)
    sub = sora.create_connection([server.signaling_url], "recvonly", channel)
    keep: list[Any] = []
    log = FrameLog()
    pcm_chunks: list[np.ndarray] = []

    def on_track(track: compat.SoraMediaTrack) -> None:
        transformer = compat.SoraVideoFrameTransformer() if track.kind == "video" else compat.SoraAudioFrameTransformer()
        transformer.on_transform = stripper(transformer, f"recv_{track.kind}")
        track.set_frame_transformer(transformer)
        keep.extend([track, transformer])
        if track.kind == "video":
            vsink = compat.SoraVideoSink(track)
            vsink.on_frame = lambda frame: log.on_frame(PictureOf(frame.data()))  # type: ignore[arg-type]
            keep.append(vsink)
        else:
            asink = compat.SoraAudioSink(track, 16_000, 1)
            asink.on_data = lambda pcm: pcm_chunks.append(np.array(pcm, copy=True))
            keep.append(asink)

    sub.on_track = on_track
    disconnected = threading.Event()
    sub.on_disconnect = lambda code, msg: disconnected.set()
    stop = threading.Event()

    def feed() -> None:
        start, counter, next_at = 0, 0, time.monotonic()
        while not stop.is_set():
            video.on_captured(test_pattern(counter, WIDTH, HEIGHT))
            for _ in range(4):  # 10 ms chunks, as sora-sdk programs send them
                audio.on_data(tone(440.0, AUDIO_RATE, 1, start, 480))
                start += 480
            counter += 1
            next_at += 1 / 25
            stop.wait(max(0.0, next_at - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        pub.connect()
        wait_until(lambda: pub.hibiki_connection.connected, 10, "the publisher")
        feeder.start()
        sub.connect()
        wait_until(lambda: len(log.snapshot()) >= 20 and sum(map(len, pcm_chunks)) >= 16_000, 20,
                   "20 pictures and 1 s of audio")
    finally:
        stop.set()
        sub.disconnect()
        pub.disconnect()
        feeder.join(5)
    check_video(log.snapshot())
    check_tone(np.concatenate(pcm_chunks)[-8_000:], 16_000, 440.0)
    for key, frames in seen.items():
        assert frames, key
        wanted = compat.SoraTransformableVideoFrame if "video" in key else compat.SoraTransformableAudioFrame
        assert all(type(f) is wanted for f in frames), key
        direction = (compat.SoraTransformableFrameDirection.SENDER if key.startswith("send")
                     else compat.SoraTransformableFrameDirection.RECEIVER)
        assert all(f.direction is direction for f in frames), key
