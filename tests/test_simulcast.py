"""Simulcast through a real ``hibiki serve``: publishers send r0/r1/r2, the SFU forwards one layer per receiver.

Publishers draw the counter test pattern (``hibiki.media.testsrc``) at
1280x720, so each layer has its own size (r0 320x180, r1 640x360, r2
1280x720) and every received picture says which layer and which frame it is.
Peers: Hibiki SDK clients and the official sora-sdk (libwebrtc) client.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hibiki
import httpx
import numpy as np
import pytest
from conftest import ServerProcess, new_channel_id, run, wait_until
from hibiki.media.testsrc import pattern_intact, read_counter, test_pattern
from relay import media_relay
from sora_clients.harness import SoraPeer

WIDTH, HEIGHT, FPS = 1280, 720, 15
SIZES = {"r0": (320, 180), "r1": (640, 360), "r2": (1280, 720)}
"""What the Hibiki SDK sends; libwebrtc rounds heights down to a multiple of 16 (320x176)."""


def same_layer(size: tuple[int, int], expected: tuple[int, int]) -> bool:
    """Whether a picture of ``size`` is of the layer whose nominal size is ``expected``."""
    return size[0] == expected[0] and 0 <= expected[1] - size[1] < 16


class Frames:
    """Every picture a VideoSink delivers: (arrival, counter, intact, size)."""

    def __init__(self, track: hibiki.MediaTrack) -> None:
        self.track = track
        self.lock = threading.Lock()
        self.frames: list[tuple[float, int | None, bool, tuple[int, int]]] = []
        self.sink = hibiki.VideoSink(track)
        self.sink.on_frame = self.on_frame

    def on_frame(self, frame: hibiki.VideoFrame) -> None:
        bgr = frame.data()
        counter = read_counter(bgr)
        intact = counter is not None and layer_intact(bgr, counter)
        with self.lock:
            self.frames.append((time.monotonic(), counter, intact, (frame.width, frame.height)))

    def snapshot(self, since: int = 0) -> list[tuple[float, int | None, bool, tuple[int, int]]]:
        with self.lock:
            return list(self.frames[since:])

    def count(self, size: tuple[int, int] | None = None, since: int = 0) -> int:
        return sum(1 for f in self.snapshot(since) if size is None or same_layer(f[3], size))


def layer_intact(bgr: np.ndarray, counter: int) -> bool:
    """Whether a received picture is the publisher's picture ``counter``, scaled down to its size.

    ``pattern_intact`` draws the pattern at the picture's own size, which is
    not what a downscaled 720p picture looks like; compare with the 720p
    picture averaged over blocks instead (what the encoder's scaler does,
    give or take its filter).
    """
    h, w = bgr.shape[:2]
    if (w, h) == (WIDTH, HEIGHT):
        return pattern_intact(bgr, counter)
    full = test_pattern(counter, WIDTH, HEIGHT)
    if WIDTH % w == 0 and HEIGHT % h == 0:
        f = WIDTH // w
        expected = full.reshape(h, f, w, f, 3).mean(axis=(1, 3))
    else:  # libwebrtc's sizes (320x176): sample the nearest pixels
        ys = ((np.arange(h) + 0.5) * HEIGHT / h).astype(int)
        xs = ((np.arange(w) + 0.5) * WIDTH / w).astype(int)
        expected = full[ys][:, xs].astype(float)
    return float(np.abs(expected - bgr).mean()) < 25.0


def settled(frames: list[tuple[float, int | None, bool, tuple[int, int]]],
            rid: str) -> list[tuple[float, int | None, bool, tuple[int, int]]]:
    """The pictures from the first of layer ``rid`` on: a receiver that joins while the
    publisher's layers are still starting gets the next live layer until then."""
    first = next((i for i, f in enumerate(frames) if same_layer(f[3], SIZES[rid])), len(frames))
    return frames[first:]


def check_layer(frames: list[tuple[float, int | None, bool, tuple[int, int]]], rid: str) -> None:
    """All pictures of layer ``rid``'s size, counters readable and rising, pictures intact."""
    assert frames, f"no {rid} pictures"
    sizes = {f[3] for f in frames}
    assert all(same_layer(size, SIZES[rid]) for size in sizes), f"{rid}: sizes {sizes}"
    counters = [c for _, c, _, _ in frames if c is not None]
    assert len(counters) >= 0.9 * len(frames), f"{rid}: unreadable counters {[f[1] for f in frames]}"
    assert all(b > a for a, b in itertools.pairwise(counters)), f"{rid}: counters {counters}"
    intact = sum(1 for f in frames if f[2])
    assert intact >= 0.9 * len(frames), f"{rid}: only {intact}/{len(frames)} pictures intact"


class Camera:
    """Feeds a VideoSource with the counter pattern at FPS, in real time.

    ``noise`` adds +-6 of sensor-like noise, which makes the encoder spend
    its whole bit rate (the plain pattern compresses to a fraction of it):
    what a camera does, and what bandwidth tests need.
    """

    def __init__(self, source: hibiki.VideoSource, counter_base: int = 0, noise: bool = False) -> None:
        self.source = source
        self.counter = counter_base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        rng = np.random.default_rng(7)
        self.noise = [rng.integers(-6, 7, (HEIGHT, WIDTH, 3), dtype=np.int16) for _ in range(8)] if noise else []

    def picture(self) -> np.ndarray:
        picture = test_pattern(self.counter, WIDTH, HEIGHT)
        if self.noise:
            noisy = picture.astype(np.int16) + self.noise[self.counter % len(self.noise)]
            picture = np.clip(noisy, 0, 255).astype(np.uint8)
        return picture

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.source.on_captured(self.picture())
            self.counter += 1
            next_at += 1.0 / FPS
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Camera:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


@contextmanager
def simulcast_publisher(server: ServerProcess, channel: str, noise: bool = False,
                        **kwargs: Any) -> Iterator[hibiki.Connection]:
    sdk = hibiki.Hibiki()
    video = sdk.create_video_source()
    # The size tells the layer: keep the encoders from scaling a layer down
    # when a loaded machine's estimate dips (r2 at 960x540 looks like no layer).
    kwargs.setdefault("degradation_preference", hibiki.DegradationPreference.MAINTAIN_RESOLUTION)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video, audio=False,
                                simulcast=True, video_bit_rate=2500, **kwargs)
    pub.connect()
    try:
        with Camera(video, counter_base=1000, noise=noise):
            yield pub
    finally:
        pub.disconnect()


def receiver(server: ServerProcess, channel: str, **kwargs: Any) -> tuple[hibiki.Connection, list[Frames]]:
    conn = hibiki.Hibiki().create_connection([server.signaling_url], "recvonly", channel, audio=False, **kwargs)
    logs: list[Frames] = []
    conn.on_track = lambda track: logs.append(Frames(track)) if track.kind == "video" else None
    conn.connect()
    return conn, logs


def test_each_receiver_gets_the_layer_it_asked_for(server: ServerProcess) -> None:
    channel = new_channel_id()
    with simulcast_publisher(server, channel) as pub:
        stats = {c["rid"]: c for c in pub.video_source.send_counters()}  # type: ignore[union-attr]
        assert set(stats) == {"r0", "r1", "r2"}, "three layers encoded from one source"
        assert [stats[r]["scale"] for r in ("r0", "r1", "r2")] == [4.0, 2.0, 1.0]
        receivers = {rid: receiver(server, channel, simulcast_rid=rid) for rid in ("r0", "r1")}
        receivers["default"] = receiver(server, channel)
        try:
            for rid, (_, logs) in receivers.items():
                wait_until(lambda logs=logs: bool(logs) and logs[0].count() >= 20, 20, f"20 pictures at {rid}")
            for rid, (conn, logs) in receivers.items():
                layer = "r2" if rid == "default" else rid
                wait_until(lambda logs=logs, layer=layer: logs[0].count(SIZES[layer]) >= 20, 20, f"20 {layer} pictures")
                check_layer(settled(logs[0].snapshot(), layer), layer)
                assert logs[0].track.decode_errors == 0
                assert logs[0].track.stream_id == pub.connection_id
            outbound = {e["rid"]: e for e in json.loads(pub.get_stats())
                        if e["type"] == "outbound-rtp" and "rid" in e}
            assert {rid: (e["frameWidth"], e["frameHeight"]) for rid, e in outbound.items()} == SIZES
            listed = httpx.post(server.url + "/api", headers={"x-sora-target": "Sora_20201013.ListChannelConnections"},
                                json={"channel_id": channel}, timeout=5).json()
            assert {c["connection_id"]: c["simulcast"] for c in listed}[pub.connection_id] is True
        finally:
            for conn, _ in receivers.values():
                conn.disconnect()


def test_switching_mid_stream_r0_r2_r1(server: ServerProcess) -> None:
    """RPC from the SDK switches layers at keyframes: no decode error, no freeze past a keyframe interval."""
    channel = new_channel_id()
    with simulcast_publisher(server, channel):
        conn, logs = receiver(server, channel, simulcast_rid="r0", data_channel_signaling=True)
        try:
            wait_until(lambda: bool(logs) and logs[0].count(SIZES["r0"]) >= 10, 20, "r0 pictures")
            log = logs[0]
            track = log.track
            wait_until(lambda: track.simulcast_rid == "r0", 5, "simulcast.switched to r0")
            start = len(log.snapshot())
            for rid in ("r2", "r1"):
                mark = len(log.snapshot())
                track.request_simulcast_rid(rid)
                wait_until(lambda rid=rid, mark=mark: log.count(SIZES[rid], since=mark) >= 15, 15, f"{rid} pictures")
                assert track.simulcast_rid == rid
            frames = log.snapshot(start)
            # The layers in order, each switch once: r0 ... r2 ... r1 ...
            order = [rid for rid, _ in itertools.groupby(
                next(r for r, s in SIZES.items() if same_layer(f[3], s)) for f in frames)]
            assert order in (["r0", "r2", "r1"], ["r2", "r1"]), order
            counters = [c for _, c, _, _ in frames if c is not None]
            # One continuous stream: the new layer's first picture may show the
            # same instant as the old layer's last.
            assert all(b >= a for a, b in itertools.pairwise(counters)), counters
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
            assert max(gaps) < 1.0, f"a freeze of {max(gaps):.2f} s during the switches"
            assert track.decode_errors == 0
            assert sum(1 for f in frames if f[2]) >= 0.9 * len(frames)
            # The server refuses what it cannot do, through the same RPC.
            with pytest.raises(hibiki.HibikiError, match="no connection"):
                conn.request_simulcast_rid("r0", "NOSUCHCONNECTION0000000000")
        finally:
            conn.disconnect()


def test_asyncio_face_sees_simulcast_switched(server: ServerProcess) -> None:
    """``async for event in conn`` yields SimulcastSwitched; ``await track.request_simulcast_rid`` switches."""
    channel = new_channel_id()

    async def watch() -> list[tuple[str | None, str | None]]:
        seen: list[tuple[str | None, str | None]] = []
        requested = False
        async with hibiki.connect([server.signaling_url], role="recvonly", channel_id=channel, audio=False,
                                  simulcast_rid="r0", data_channel_signaling=True) as conn:
            async with asyncio.timeout(20):
                async for event in conn:
                    if isinstance(event, hibiki.events.SimulcastSwitched):
                        seen.append((event.previous_rid, event.rid))
                        assert event.track.simulcast_rid == event.rid
                        assert event.message["sender_connection_id"] == event.track.stream_id
                        if event.rid == "r0" and not requested:
                            requested = True
                            await event.track.request_simulcast_rid("r1")
                        elif event.rid == "r1" and requested:
                            frame = await event.track.recv(timeout=5)
                            while (frame.width, frame.height) != SIZES["r1"]:
                                frame = await event.track.recv(timeout=5)
                            return seen
        return seen

    with simulcast_publisher(server, channel):
        seen = run(watch())
    # (Before r0 is live the SFU may start on the next layer: r0 comes first or second.)
    assert "r0" in [rid for _, rid in seen[:2]], seen
    assert seen[-1] == ("r0", "r1"), seen


def test_http_api_switches_and_paused_layers_fall_back(server: ServerProcess) -> None:
    channel = new_channel_id()
    with simulcast_publisher(server, channel) as pub:
        conn, logs = receiver(server, channel)
        notifies: list[str] = []
        conn.on_notify = notifies.append

        def api(target: str, **body: Any) -> httpx.Response:
            return httpx.post(server.url + "/api", headers={"x-sora-target": target},
                              json={"channel_id": channel, **body}, timeout=5)

        try:
            wait_until(lambda: bool(logs) and logs[0].count(SIZES["r2"]) >= 10, 20, "r2 pictures")
            log = logs[0]
            mark = len(log.snapshot())
            r = api("Sora_20251217.RequestSimulcastRid", receiver_connection_id=conn.connection_id, rid="r1",
                    sender_connection_id=pub.connection_id)
            assert r.status_code == 200, r.text
            wait_until(lambda: log.count(SIZES["r1"], since=mark) >= 10, 15, "r1 pictures after the API call")
            wait_until(lambda: any('"current_rid":"r1"' in n.replace(" ", "") for n in notifies), 5,
                       "simulcast.switched notify")
            bad = api("Sora_20251217.RequestSimulcastRid", receiver_connection_id=conn.connection_id, rid="r9")
            assert bad.status_code == 400 and "rid" in bad.json()["detail"]
            missing = api("Sora_20251217.RequestSimulcastRid", receiver_connection_id="NOPE", rid="r0")
            assert missing.status_code == 404

            r = api("Sora_20201005.ResetRtpStream", recv_connection_id=conn.connection_id)
            assert r.status_code == 200, r.text
            mark = len(log.snapshot())
            wait_until(lambda: log.count(SIZES["r2"], since=mark) >= 10, 15, "back to r2 after ResetRtpStream")

            # The publisher pauses r2 (as libwebrtc does when short of bandwidth):
            # the receiver falls back to r1, and comes back when r2 resumes.
            pub.set_simulcast_active("r2", False)
            mark = len(log.snapshot())
            wait_until(lambda: log.count(SIZES["r1"], since=mark) >= 10, 15, "fallback to r1 while r2 is paused")
            pub.set_simulcast_active("r2", True)
            mark = len(log.snapshot())
            wait_until(lambda: log.count(SIZES["r2"], since=mark) >= 10, 15, "r2 again once it resumes")
            assert log.track.decode_errors == 0
        finally:
            conn.disconnect()


# -- the official sora-sdk client (libwebrtc) ---------------------------------------------------


def test_sora_sdk_simulcast_publisher(server: ServerProcess) -> None:
    """libwebrtc applies the offer's encodings and sends three layers; Hibiki receivers get r0 and r2."""
    channel = new_channel_id()
    with SoraPeer.start(
        server.signaling_url, "sendonly", channel, "--send", "--no-audio", "--simulcast",
        "--width", str(WIDTH), "--height", str(HEIGHT), "--fps", str(FPS), "--video-bit-rate", "2500",
        "--counter-base", "3000", name="pub",
    ) as pub:
        pub_id = pub.wait_connected()
        offer = pub.wait_for(lambda e: e["event"] == "set_offer", 5, "the offer")["offer"]
        assert offer["simulcast"] is True and [e["rid"] for e in offer["encodings"]] == ["r0", "r1", "r2"]
        low, low_logs = receiver(server, channel, simulcast_rid="r0")
        high, high_logs = receiver(server, channel, simulcast_rid="r2")
        try:
            wait_until(lambda: bool(low_logs) and low_logs[0].count(SIZES["r0"]) >= 15, 20, "r0 pictures")
            # libwebrtc starts low and adds layers as its bandwidth estimate grows.
            wait_until(lambda: bool(high_logs) and high_logs[0].count(SIZES["r2"]) >= 15, 30, "r2 pictures")
            check_layer([f for f in low_logs[0].snapshot() if same_layer(f[3], SIZES["r0"])], "r0")
            check_layer([f for f in high_logs[0].snapshot() if same_layer(f[3], SIZES["r2"])], "r2")
            assert low_logs[0].track.stream_id == pub_id
            for log in (low_logs[0], high_logs[0]):
                assert log.track.decode_errors == 0
                assert all(c is None or 3000 <= c < 13_000 for _, c, _, _ in log.snapshot())
        finally:
            low.disconnect()
            high.disconnect()
        pub.disconnect()
        pub.assert_clean_exit()


def test_sora_sdk_receiver_with_simulcast_rid(server: ServerProcess) -> None:
    """sora-sdk's simulcast_rid picks the layer it gets from a Hibiki simulcast publisher."""
    channel = new_channel_id()
    with (
        simulcast_publisher(server, channel) as pub,
        SoraPeer.start(server.signaling_url, "recvonly", channel, "--receive", "--simulcast",
                       "--simulcast-rid", "r1", name="sub") as sub,
    ):
        sub.wait_connected()
        # Until the publisher's r1 is live, the SFU may start it on another layer.
        frames = sub.wait_count(lambda e: e["event"] == "video" and e["counter"] is not None
                                and same_layer((e["width"], e["height"]), SIZES["r1"]), 20, 20,
                                "20 decoded r1 pictures")
        last = sub.snapshot("video")[-10:]
        assert all(same_layer((f["width"], f["height"]), SIZES["r1"]) for f in last), last
        counters = [f["counter"] for f in frames]
        assert all(b > a for a, b in itertools.pairwise(counters)), counters
        switched = [m for m in sub.notifies("simulcast.switched") if m["sender_connection_id"] == pub.connection_id]
        assert switched and switched[-1]["current_rid"] == "r1"
        assert sub.disconnect()["code"] == "CLOSE_SUCCEEDED"
        sub.assert_clean_exit()


# -- bandwidth -----------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def layer_of(size: tuple[int, int]) -> str | None:
    return next((rid for rid, s in SIZES.items() if same_layer(size, s)), None)


def test_bandwidth_cap_moves_a_receiver_down_and_back_up(server_factory: Callable[..., ServerProcess]) -> None:
    """Behind a capped link (user-space relay) the receiver settles on a lower layer, and climbs back after."""
    port = free_udp_port()
    server = server_factory("--public-ip", "127.0.0.2", "--rtc-port", str(port))
    channel = new_channel_id()
    with media_relay(port) as relay, simulcast_publisher(server, channel, noise=True):
        # simulcast=True: the server estimates this receiver's bandwidth (TWCC).
        conn, logs = receiver(server, channel, simulcast=True)
        try:
            wait_until(lambda: bool(logs) and logs[0].count(SIZES["r2"]) >= 15, 20, "r2 pictures before the cap")
            log = logs[0]
            relay.down.rate_bps = 800_000  # under r2 (about 1.8 Mbit/s), over r1 (about 0.5)
            capped_at = time.monotonic()
            wait_until(lambda: any(f[0] > capped_at and layer_of(f[3]) in ("r0", "r1") for f in log.snapshot()),
                       5, "a lower layer within 5 s of the cap")
            settled_at = next(f[0] for f in log.snapshot() if f[0] > capped_at and layer_of(f[3]) != "r2")
            time.sleep(4)  # observe: it must stay down, without flapping
            under_cap = [layer_of(f[3]) for f in log.snapshot() if f[0] > settled_at + 1.0]
            assert under_cap and "r2" not in under_cap, f"back on r2 under the cap: {under_cap}"
            changes = sum(1 for a, b in itertools.pairwise(under_cap) if a != b)
            assert changes <= 1, f"flapping under the cap: {under_cap}"

            relay.down.rate_bps = None
            lifted_at = time.monotonic()
            wait_until(lambda: any(f[0] > lifted_at and layer_of(f[3]) == "r2" for f in log.snapshot()),
                       10, "r2 again within 10 s of the cap lifting")
            assert log.track.decode_errors == 0
            print(f"down after {settled_at - capped_at:.1f} s, up after "
                  f"{next(f[0] for f in log.snapshot() if f[0] > lifted_at and layer_of(f[3]) == 'r2') - lifted_at:.1f}"
                  f" s; relay dropped {relay.down.dropped_queue} packets at the cap")
        finally:
            conn.disconnect()


# -- spotlight -------------------------------------------------------------------------------------


SPOT_W, SPOT_H, SPOT_FPS = 640, 360, 10
SPOT_SIZES = {"r0": (160, 90), "r2": (640, 360)}


def test_spotlight_focuses_the_loudest_speakers(server: ServerProcess) -> None:
    """Six speakers, spotlight_number=2: the two loudest come at r2, the rest at r0, and the focus follows."""
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    speakers = []
    for i in range(6):
        video = sdk.create_video_source()
        audio = sdk.create_audio_source(channels=1, sample_rate=48_000)
        conn = sdk.create_connection([server.signaling_url], "sendonly", channel, video_source=video,
                                     audio_source=audio, spotlight=True, video_bit_rate=600,
                                     # The size tells the layer: keep the encoders from
                                     # scaling a layer down when a loaded machine's
                                     # estimate dips (that would look like another layer).
                                     degradation_preference=hibiki.DegradationPreference.MAINTAIN_RESOLUTION)
        conn.connect()
        speakers.append((conn, video, audio))
    loud = {0, 1}
    stop = threading.Event()

    def feed() -> None:
        """Every speaker's camera (its index in the counter) and microphone: a tone when loud, else silence."""
        pictures = [[test_pattern(i * 10_000 + n, SPOT_W, SPOT_H) for n in range(SPOT_FPS)] for i in range(6)]
        tone = (np.sin(np.arange(960) * 2 * np.pi * 440 / 48_000) * 12_000).astype(np.int16).reshape(-1, 1)
        silence = np.zeros_like(tone)
        n, next_at = 0, time.monotonic()
        while not stop.is_set():
            for i, (_, video, audio) in enumerate(speakers):
                audio.on_data(tone if i in loud else silence)
                if n % 2 == 0:  # 20 ms audio, 10 fps video
                    video.on_captured(pictures[i][(n // 2) % SPOT_FPS])
            n += 1
            next_at += 0.02
            stop.wait(max(0.0, next_at - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    viewer = sdk.create_connection([server.signaling_url], "recvonly", channel, audio=False, spotlight=True,
                                   spotlight_number=2)
    sizes: dict[str, tuple[int, int]] = {}
    lock = threading.Lock()

    def on_track(track: hibiki.MediaTrack) -> None:
        if track.kind == "video":
            def on_frame(frame: hibiki.VideoFrame, sender: str = track.stream_id) -> None:
                with lock:
                    sizes[sender] = (frame.width, frame.height)
            sink = hibiki.VideoSink(track)
            sink.on_frame = on_frame
            sinks.append(sink)

    sinks: list[hibiki.VideoSink] = []
    notifies: list[dict[str, Any]] = []
    viewer.on_track = on_track
    viewer.on_notify = lambda text: notifies.append(json.loads(text))
    ids = [conn.connection_id for conn, _, _ in speakers]

    def in_focus() -> set[int]:
        with lock:
            return {i for i, cid in enumerate(ids) if sizes.get(cid) == SPOT_SIZES["r2"]}

    def others_low() -> bool:
        with lock:
            return len(sizes) == 6 and all(sizes[cid] == SPOT_SIZES["r0"] for i, cid in enumerate(ids)
                                           if i not in loud)

    def state() -> str:
        with lock:
            seen = {i: sizes.get(cid) for i, cid in enumerate(ids)}
        told = [(n["event_type"], ids.index(n["connection_id"])) for n in notifies
                if n.get("event_type", "").startswith("spotlight") and n.get("connection_id") in ids]
        return f"speakers {sorted(loud)} in focus; sizes seen {seen}; notifies {told}"

    try:
        viewer.connect()
        wait_until(lambda: in_focus() == loud and others_low(), 20, state)
        focused = {n["connection_id"] for n in notifies if n.get("event_type") == "spotlight.focused"}
        assert focused == {ids[i] for i in loud}
        # Speakers 1 and 4 talk now: the focus follows.
        loud = {1, 4}
        wait_until(lambda: in_focus() == loud and others_low(), 20, state)
        events = [(n["event_type"], n["connection_id"]) for n in notifies if n["event_type"].startswith("spotlight")]
        assert ("spotlight.unfocused", ids[0]) in events and ("spotlight.focused", ids[4]) in events
    finally:
        stop.set()
        feeder.join(5)
        viewer.disconnect()
        for conn, _, _ in speakers:
            conn.disconnect()
