"""The official sora-sdk client (libwebrtc) against ``hibiki serve``, with content checks.

Each sora-sdk client runs in its own process (``tests/sora_clients/sora_peer.py``)
and reports what it sees as JSON lines. Senders draw the test pattern with a
frame counter (``hibiki.media.testsrc.test_pattern``) and a 440 Hz tone;
receivers read the counter back from every decoded picture and measure the
tone, so a picture or a sound that is stale, garbled or someone else's fails.

* sora-sdk sendonly -> hibiki serve -> sora-sdk recvonly
* sora-sdk sendonly -> hibiki serve -> Hibiki SDK recvonly
* Hibiki SDK sendonly -> hibiki serve -> sora-sdk recvonly
* notifies as sora-sdk sees them (created/updated/destroyed, counts, metadata)

Every wait has a deadline; every sora-sdk process must exit cleanly (the C++
client calls std::terminate on a server message it cannot parse).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable

import hibiki
from conftest import ServerProcess, new_channel_id, wait_until
from hibiki.media.testsrc import (
    dominant_frequency,
    level_dbfs,
    pattern_intact,
    read_counter,
    test_pattern,
    tone,
)
from sora_clients.harness import Event, SoraPeer

WIDTH, HEIGHT, FPS = 320, 240, 15
TONE_HZ = 440.0
AUDIO_RATE = 48_000


def is_video(e: Event) -> bool:
    return e["event"] == "video"


def is_audio(e: Event) -> bool:
    return e["event"] == "audio"


def check_sora_video(frames: list[Event], counter_range: range | None = None) -> None:
    """Counters readable and strictly increasing, pictures intact, size right."""
    counters = [e["counter"] for e in frames]
    assert all(c is not None for c in counters), f"unreadable counters: {counters}"
    assert all(b > a for a, b in itertools.pairwise(counters)), f"counters do not increase: {counters}"
    intact = sum(1 for e in frames if e["intact"])
    assert intact >= 0.9 * len(frames), f"only {intact}/{len(frames)} pictures intact"
    assert {(e["width"], e["height"]) for e in frames} == {(WIDTH, HEIGHT)}
    if counter_range is not None:
        assert all(c in counter_range for c in counters), f"counters {counters[:5]}... not in {counter_range}"


def check_sora_audio(blocks: list[Event]) -> None:
    """Half-second blocks: the tone, loud enough, in (nearly) all of them once it started."""
    sounding = [b for b in blocks if b["level"] > -60]
    assert len(sounding) >= 4, f"too little audio: {blocks}"
    good = [b for b in sounding if abs(b["frequency"] - TONE_HZ) <= 10 and b["level"] > -30]
    assert len(good) >= 0.8 * len(sounding), f"tone not found: {sounding}"


# -- sora-sdk to sora-sdk ------------------------------------------------------------------------


def test_sora_sendonly_to_sora_recvonly(server: ServerProcess) -> None:
    channel = new_channel_id()
    with (
        SoraPeer.start(
            server.signaling_url, "sendonly", channel, "--send", "--counter-base", "1000", name="pub"
        ) as pub,
        SoraPeer.start(server.signaling_url, "recvonly", channel, "--receive", name="sub") as sub,
    ):
        pub_id = pub.wait_connected()
        sub.wait_connected()
        tracks = sub.wait_count(lambda e: e["event"] == "track", 2, 15, "audio and video tracks")
        assert sorted(t["kind"] for t in tracks) == ["audio", "video"]
        assert {t["stream_id"] for t in tracks} == {pub_id}  # msid stream id = sender's connection_id

        frames = sub.wait_count(lambda e: is_video(e) and e["counter"] is not None, 45, 20, "45 decoded frames")
        check_sora_video([e for e in sub.snapshot("video")][:60], range(1000, 1000 + 10_000))
        assert len(frames) >= 45
        blocks = sub.wait_count(lambda e: is_audio(e) and e["level"] > -60, 5, 15, "2.5 s of audio")
        check_sora_audio(blocks)

        # The publisher's offer had its two upstream mids; the receiver's none.
        pub_offer = pub.snapshot("set_offer")[0]["offer"]
        assert set(pub_offer["mid"]) == {"audio", "video"}
        assert sub.snapshot("set_offer")[0]["offer"]["mid"] == {}

        assert sub.disconnect()["code"] == "CLOSE_SUCCEEDED"
        assert pub.disconnect()["code"] == "CLOSE_SUCCEEDED"
        sub.assert_clean_exit()
        pub.assert_clean_exit()
    wait_until(lambda: server.health()["connections"] == 0, 5, "everyone to leave")


# -- sora-sdk to the Hibiki SDK ---------------------------------------------------------------------


class FrameLog:
    """(counter, intact, size) of every picture a Hibiki VideoSink delivers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: list[Event] = []

    def on_frame(self, frame: hibiki.VideoFrame) -> None:
        bgr = frame.data()
        counter = read_counter(bgr)
        intact = counter is not None and pattern_intact(bgr, counter)
        with self.lock:
            self.frames.append({"counter": counter, "intact": intact, "width": frame.width, "height": frame.height})

    def snapshot(self) -> list[Event]:
        with self.lock:
            return list(self.frames)


def test_sora_sendonly_to_hibiki_recvonly(server: ServerProcess) -> None:
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    tracks: list[hibiki.MediaTrack] = []
    sub.on_track = tracks.append
    log = FrameLog()
    with SoraPeer.start(
        server.signaling_url, "sendonly", channel, "--send", "--counter-base", "5000", name="pub"
    ) as pub:
        pub_id = pub.wait_connected()
        try:
            sub.connect()
            wait_until(lambda: {t.kind for t in tracks} == {"audio", "video"}, 15, "audio and video tracks")
            assert {t.stream_id for t in tracks} == {pub_id}
            vtrack = next(t for t in tracks if t.kind == "video")
            atrack = next(t for t in tracks if t.kind == "audio")
            hibiki.VideoSink(vtrack).on_frame = log.on_frame
            asink = hibiki.AudioSink(atrack, output_frequency=16_000, output_channels=1)

            wait_until(lambda: len(log.snapshot()) >= 30, 20, "30 decoded frames from sora-sdk")
            check_sora_video(log.snapshot(), range(5000, 5000 + 10_000))

            asink.read(frames=8_000, timeout=5.0)  # skip the start
            ok, pcm = asink.read(frames=8_000, timeout=5.0)
            assert ok, "no audio from sora-sdk within 5 s"
            measured = dominant_frequency(pcm, 16_000)
            assert abs(measured - TONE_HZ) <= 10, f"expected {TONE_HZ} Hz, measured {measured:.1f} Hz"
            assert level_dbfs(pcm) > -30, f"audio too quiet: {level_dbfs(pcm):.1f} dBFS"
        finally:
            sub.disconnect()
        # The sora-sdk publisher saw the Hibiki subscriber come and go.
        sub_id = sub.connection_id
        pub.wait_for(
            lambda e: (
                e["event"] == "notify"
                and e["message"]["event_type"] == "connection.destroyed"
                and e["message"]["connection_id"] == sub_id
            ),
            10,
            "connection.destroyed about the Hibiki subscriber",
        )
        pub.disconnect()
        pub.assert_clean_exit()


# -- the Hibiki SDK to sora-sdk ---------------------------------------------------------------------


class Feeder:
    """Feeds Hibiki sources with the counter pattern and the tone, in real time."""

    def __init__(self, video: hibiki.VideoSource, audio: hibiki.AudioSource, counter_base: int) -> None:
        self.video, self.audio = video, audio
        self.counter = counter_base
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._guard(self._video), daemon=True),
            threading.Thread(target=self._guard(self._audio), daemon=True),
        ]

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # surfaced by stop()
                self.errors.append(exc)

        return run

    def _video(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            self.video.on_captured(test_pattern(self.counter, WIDTH, HEIGHT))
            self.counter += 1
            next_at += 1.0 / FPS
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def _audio(self) -> None:
        chunk, start = 960, 0
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            self.audio.on_data(tone(TONE_HZ, AUDIO_RATE, 1, start, chunk))
            start += chunk
            next_at += chunk / AUDIO_RATE
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Feeder:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)
        assert not self.errors, f"feeder failed: {self.errors!r}"


def test_hibiki_sendonly_to_sora_recvonly(server: ServerProcess) -> None:
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    video = sdk.create_video_source()
    audio = sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio_source=audio)
    try:
        pub.connect()
        with (
            Feeder(video, audio, counter_base=20_000),
            SoraPeer.start(server.signaling_url, "recvonly", channel, "--receive", name="sub") as sub,
        ):
            sub.wait_connected()
            tracks = sub.wait_count(lambda e: e["event"] == "track", 2, 15, "audio and video tracks")
            assert {t["stream_id"] for t in tracks} == {pub.connection_id}
            sub.wait_count(lambda e: is_video(e) and e["counter"] is not None, 30, 20, "30 decoded frames")
            check_sora_video(sub.snapshot("video"), range(20_000, 30_000))
            check_sora_audio(sub.wait_count(lambda e: is_audio(e) and e["level"] > -60, 5, 15, "2.5 s of audio"))
            assert sub.disconnect()["code"] == "CLOSE_SUCCEEDED"
            sub.assert_clean_exit()
    finally:
        pub.disconnect()


# -- notifies -------------------------------------------------------------------------------------


def test_notifies_as_sora_sdk_sees_them(server_factory: Callable[..., ServerProcess]) -> None:
    """connection.created to itself with data, to the others without; connection.updated; destroyed with counts."""
    server = server_factory("--notify-update-interval", "1")
    channel = new_channel_id()
    with SoraPeer.start(
        server.signaling_url,
        "sendonly",
        channel,
        "--send",
        "--signaling-notify-metadata",
        '{"name": "first"}',
        "--client-id",
        "first-client",
        name="first",
    ) as first:
        first_id = first.wait_connected()
        own = first.notifies("connection.created")[0]
        session_id = first.snapshot("set_offer")[0]["offer"]["session_id"]
        assert own["connection_id"] == first_id and own["session_id"] == session_id
        assert own["data"] == [{"connection_id": first_id, "client_id": "first-client", "metadata": {"name": "first"}}]
        assert (own["channel_connections"], own["channel_sendonly_connections"]) == (1, 1)

        with SoraPeer.start(
            server.signaling_url,
            "recvonly",
            channel,
            "--signaling-notify-metadata",
            '{"name": "second"}',
            name="second",
        ) as second:
            second_id = second.wait_connected()
            mine = [n for n in second.notifies("connection.created") if n["connection_id"] == second_id][0]
            assert [d["connection_id"] for d in mine["data"]] == [first_id, second_id]  # oldest first
            assert mine["data"][0]["metadata"] == {"name": "first"}
            counts = {k: v for k, v in mine.items() if k.startswith("channel_")}
            assert counts == {
                "channel_connections": 2,
                "channel_sendrecv_connections": 0,
                "channel_sendonly_connections": 1,
                "channel_recvonly_connections": 1,
            }
            about_second = first.wait_for(
                lambda e: (
                    e["event"] == "notify"
                    and e["message"]["event_type"] == "connection.created"
                    and e["message"]["connection_id"] == second_id
                ),
                10,
                "connection.created about the second",
            )["message"]
            assert "data" not in about_second
            assert about_second["metadata"] == {"name": "second"} and about_second["role"] == "recvonly"
            assert about_second["client_id"] == second_id  # none given: the connection_id

            # connection.updated about each connection, to everyone, every interval.
            updated = second.wait_for(
                lambda e: (
                    e["event"] == "notify"
                    and e["message"]["event_type"] == "connection.updated"
                    and e["message"]["connection_id"] == first_id
                ),
                10,
                "connection.updated about the first",
            )["message"]
            assert updated["minutes"] == 0 and updated["metadata"] == {"name": "first"}
            assert updated["channel_connections"] == 2

            assert second.disconnect()["code"] == "CLOSE_SUCCEEDED"
            second.assert_clean_exit()

        destroyed = first.wait_for(
            lambda e: e["event"] == "notify" and e["message"]["event_type"] == "connection.destroyed",
            10,
            "connection.destroyed",
        )["message"]
        assert destroyed["connection_id"] == second_id and destroyed["metadata"] == {"name": "second"}
        assert (destroyed["channel_connections"], destroyed["channel_recvonly_connections"]) == (1, 0)
        for message in first.notifies() + second.notifies():
            for key in ("timestamp", "role", "session_id", "client_id", "bundle_id", "connection_id"):
                assert isinstance(message[key], str), (key, message)
            assert isinstance(message["minutes"], int) and isinstance(message["audio"], bool)
            assert message["turn_transport_type"] == "udp"
        first.disconnect()
        first.assert_clean_exit()


def test_signaling_url_race_and_silent_sockets(server: ServerProcess) -> None:
    """sora-sdk opens every signaling URL at once and drops the losers without a word: normal, no errors."""
    channel = new_channel_id()
    urls = [server.signaling_url, server.signaling_url.replace("127.0.0.1", "localhost"), server.signaling_url]
    with SoraPeer.start(urls, "recvonly", channel, name="racer") as peer:
        peer.wait_connected()
        assert peer.disconnect()["code"] == "CLOSE_SUCCEEDED"
        peer.assert_clean_exit()
    wait_until(lambda: server.health()["connections"] == 0 and server.health()["sessions"] == 0, 5, "sockets gone")
    log = server.log_text()
    assert not re.search(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ", log, re.MULTILINE), log[-3000:]
