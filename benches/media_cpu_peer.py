"""One side of benches/media_cpu.py (B6), in a process of its own.

``python benches/media_cpu_peer.py ROLE --url URL --channel CH --media VP8``
with ROLE one of ``hibiki-pub``, ``hibiki-sub``, ``aiortc-pub``,
``aiortc-sub`` and ``--media`` a video codec or ``OPUS``.

Publishers push the pre-rendered test content (:func:`video_frames`,
:func:`audio_chunks`) in real time; subscribers count, time-stamp and check
what they get. The process talks to the orchestrator in JSON lines: it prints
``{"event": "ready"}`` once media flows (publisher: connected and sending;
subscriber: a few frames received), then on ``start`` and ``stop`` lines read
from stdin it snapshots its CPU time, and after ``stop`` prints
``{"event": "result", ...}`` with the window's figures; ``quit`` ends it.

CPU is the whole process (``time.process_time()``: every thread, user +
system, nanosecond resolution) and, for attribution, each thread's
``/proc/self/task/<tid>/schedstat``, summed by thread name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

FPS = 30
VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_FRAME = 960  # 20 ms
CYCLE = 60  # distinct pre-rendered pictures, cycled
TONE_HZ = 440.0  # 440 whole periods per second: a 1 s loop joins without a click


# -- test content (shared with media_cpu.py's raw loops) --------------------------------


def video_frames(n: int = CYCLE, width: int = 1280, height: int = 720, noise: int = 6) -> list[np.ndarray]:
    """``n`` BGR test pictures, counters 0..n-1, with camera-like sensor noise.

    The noise (uniform +-``noise``) makes the encoder spend its bitrate as on
    a camera picture; a clean test pattern is so easy that VP8 stays at half
    its target bitrate. The digits stay readable (``read_counter``).
    """
    from hibiki.media.testsrc import test_pattern

    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = test_pattern(i, width, height)
        if noise:
            img = np.clip(
                img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape, dtype=np.int16), 0, 255
            ).astype(np.uint8)
        out.append(np.ascontiguousarray(img))
    return out


def audio_chunks(seconds: int = 1, channels: int = 2) -> list[np.ndarray]:
    """20 ms int16 stereo chunks of a 440 Hz tone plus a little noise, one second's worth."""
    from hibiki.media.testsrc import tone

    rng = np.random.default_rng(2)
    total = AUDIO_RATE * seconds
    pcm = tone(TONE_HZ, AUDIO_RATE, channels, 0, total, amplitude=0.3).astype(np.int32)
    pcm += rng.integers(-300, 301, pcm.shape)
    pcm = np.clip(pcm, -32768, 32767).astype(np.int16)
    return [np.ascontiguousarray(pcm[i : i + AUDIO_FRAME]) for i in range(0, total, AUDIO_FRAME)]


# -- CPU accounting ------------------------------------------------------------------------


def thread_cpu() -> dict[int, tuple[str, float, int]]:
    """tid -> (thread name, CPU seconds so far, times scheduled in so far) for this process.

    The third figure (schedstat's run count) is how often the thread went onto
    a CPU: about its wake-ups, which cost on a VM even when the work is small.

    Python threads are named by their ``threading`` name (Python 3.11 does
    not give them to the OS, so their ``comm`` is just ``python``); native
    threads (the Rust engine, codec helpers) by their ``comm``.
    """
    py_names = {t.native_id: t.name for t in threading.enumerate()}
    py_names[threading.main_thread().native_id] = "main"
    out: dict[int, tuple[str, float, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = py_names.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            if comm == "python":
                # Native threads nobody named: swscale workers (PyAV's
                # reformat uses threads=auto), OpenBLAS (numpy), codec helpers.
                comm = "native (codec/swscale)"
            ns, _, runs = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[:3]
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(tid)] = (comm, int(ns) / 1e9, int(runs))
    return out


def thread_delta(a: dict[int, tuple[str, float, int]],
                 b: dict[int, tuple[str, float, int]]) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds and run counts per thread name between two snapshots (threads born in between count from 0)."""
    cpu_by: dict[str, float] = {}
    runs_by: dict[str, int] = {}
    for tid, (comm, cpu, runs) in b.items():
        # Group numbered workers (asyncio executor threads...) by their stem.
        name = re.sub(r"_\d+$", "_N", comm)
        _, cpu0, runs0 = a.get(tid, (comm, 0.0, 0))
        cpu_by[name] = cpu_by.get(name, 0.0) + cpu - cpu0
        runs_by[name] = runs_by.get(name, 0) + runs - runs0
    order = sorted(cpu_by, key=lambda k: -cpu_by[k])
    return {k: round(cpu_by[k], 6) for k in order}, {k: runs_by[k] for k in order}


class Window:
    """CPU snapshots at ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.th0: dict[int, tuple[str, float, int]] = {}
        self.th1: dict[int, tuple[str, float, int]] = {}

    def start(self) -> None:
        self.th0 = thread_cpu()
        self.cpu0 = time.process_time()
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self.t1 = time.monotonic()
        self.cpu1 = time.process_time()
        self.th1 = thread_cpu()

    def result(self) -> dict[str, Any]:
        threads, runs = thread_delta(self.th0, self.th1)
        return {
            "wall_s": self.t1 - self.t0,
            "cpu_s": self.cpu1 - self.cpu0,
            "threads": threads,
            "thread_runs": runs,
            "tid_names": {str(tid): name for tid, (name, *_) in self.th1.items()},
        }


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Control:
    """Reads ``start``/``stop``/``quit`` from stdin on a thread; calls back."""

    def __init__(self, on_start: Any, on_stop: Any) -> None:
        self.quit = threading.Event()
        self._on_start, self._on_stop = on_start, on_stop
        threading.Thread(target=self._run, name="bench-control", daemon=True).start()

    def _run(self) -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "start":
                self._on_start()
            elif cmd == "stop":
                self._on_stop()
            elif cmd == "quit":
                break
        self.quit.set()


def paced(n: int, rate: float) -> Iterator[int]:
    """Yield 0..n-1, one every 1/``rate`` s on a steady schedule (late ticks catch up)."""
    nxt = time.monotonic()
    for i in range(n):
        yield i
        nxt += 1 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))


def pacing_cost(rate: float, seconds: float = 1.5) -> float:
    """CPU seconds per tick of a :func:`paced` loop with no work in it (taken out of a paced caller's figure)."""
    ticks = max(1, round(rate * seconds))
    t_cpu = time.thread_time()
    for _ in paced(ticks, rate):
        pass
    return (time.thread_time() - t_cpu) / ticks


class Checker:
    """Subscriber-side verification: frame index from the RTP time, counter from the picture.

    ``index`` = frames since the first one, from the RTP timestamp (the
    publishers stamp frame *i* at exactly ``i / fps``), so gaps are lost or
    dropped frames. Every ``every``-th picture's counter is read and must be
    ``(first counter + index) % 60``. The checking CPU is measured here so the
    orchestrator can take it out of the subscriber's figure.
    """

    def __init__(self, step: int, every: int) -> None:
        self.step = step
        self.every = every
        self.first_rtp: int | None = None
        self.first_counter: int | None = None
        self.frames = 0
        self.last_index = -1
        self.gaps = 0  # missing frame indices
        self.reordered = 0
        self.checked = 0
        self.ok = 0
        self.bad = 0
        self.unreadable = 0
        self.check_cpu = 0.0
        self.lock = threading.Lock()

    def video(self, rtp: int, picture_fn: Any) -> None:
        with self.lock:
            if self.first_rtp is None:
                self.first_rtp = rtp
            index = ((rtp - self.first_rtp) % (1 << 32) + self.step // 2) // self.step
            if index > self.last_index:
                self.gaps += max(0, index - self.last_index - 1) if self.last_index >= 0 else 0
                self.last_index = index
            else:
                self.reordered += 1
            self.frames += 1
            if self.frames % self.every != 1:
                return
        from hibiki.media.testsrc import read_counter

        t = time.thread_time()
        counter = read_counter(picture_fn())
        with self.lock:
            self.checked += 1
            if counter is None:
                self.unreadable += 1
            else:
                if self.first_counter is None:
                    self.first_counter = (counter - index) % CYCLE
                if counter == (self.first_counter + index) % CYCLE:
                    self.ok += 1
                else:
                    self.bad += 1
            self.check_cpu += time.thread_time() - t

    def audio(self, rtp: int, pcm_fn: Any) -> None:
        with self.lock:
            if self.first_rtp is None:
                self.first_rtp = rtp
            index = ((rtp - self.first_rtp) % (1 << 32)) // self.step
            if index > self.last_index:
                if self.last_index >= 0:
                    self.gaps += max(0, index - self.last_index - 1)
                self.last_index = index
            else:
                self.reordered += 1
            self.frames += 1
            if self.frames % self.every != 1:
                return
        from hibiki.media.testsrc import dominant_frequency

        t = time.thread_time()
        pcm = pcm_fn()
        freq = dominant_frequency(pcm, AUDIO_RATE) if len(pcm) >= 480 else 0.0
        with self.lock:
            self.checked += 1
            if abs(freq - TONE_HZ) < 15:
                self.ok += 1
            else:
                self.bad += 1
            self.check_cpu += time.thread_time() - t

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "frames": self.frames, "gaps": self.gaps, "reordered": self.reordered,
                "checked": self.checked, "ok": self.ok, "bad": self.bad,
                "unreadable": self.unreadable, "check_cpu_s": self.check_cpu,
            }


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: (b[k] - a[k]) if isinstance(b[k], (int, float)) else b[k] for k in b}


# -- Hibiki roles ----------------------------------------------------------------------------


def hibiki_pub(args: argparse.Namespace) -> None:
    import hibiki

    video = args.media != "OPUS"
    content = video_frames(noise=args.noise) if video else audio_chunks()
    rate = args.fps if video else AUDIO_RATE / AUDIO_FRAME
    per_tick = pacing_cost(rate)
    sdk = hibiki.Hibiki()
    if video:
        source: Any = sdk.create_video_source()
        conn = sdk.create_connection(
            [args.url], role="sendonly", channel_id=args.channel, video_source=source,
            audio=False, video=True, video_codec_type=args.media, video_bit_rate=args.bitrate // 1000,
        )
    else:
        source = sdk.create_audio_source(channels=2, sample_rate=AUDIO_RATE)
        conn = sdk.create_connection(
            [args.url], role="sendonly", channel_id=args.channel, audio_source=source,
            audio=True, video=False, audio_bit_rate=args.bitrate // 1000,
        )
    conn.connect()
    win = Window()
    state: dict[str, Any] = {"ticks": 0, "window_ticks": None}
    counters0: dict[str, Any] = {}

    def counters() -> dict[str, Any]:
        sent = source.send_counters()
        return {
            "frames_in": source.frames_in, "frames_encoded": source.frames_encoded,
            "frames_dropped": source.frames_dropped,
            "frames_sent": sum(c["frames_sent"] for c in sent),
            "bytes_sent": sum(c["bytes_sent"] for c in sent),
            "ticks": state["ticks"],
        }

    def on_start() -> None:
        counters0.update(counters())
        win.start()

    def on_stop() -> None:
        win.stop()
        c = diff(counters0, counters())
        res = win.result()
        res.update(c)
        res["pacing_cpu_s"] = per_tick * c["ticks"]
        res["pacing_us_per_tick"] = per_tick * 1e6
        res["codec"] = next((a["codec"] for a in source.send_counters()), None)
        emit({"event": "result", **res})

    ctl = Control(on_start, on_stop)
    t0 = time.monotonic()
    nxt = t0
    i = 0
    ready = False
    while not ctl.quit.is_set():
        if video:
            source.on_captured(content[i % len(content)], timestamp=t0 + i / args.fps)
        else:
            source.on_data(content[i % len(content)])
        i += 1
        state["ticks"] = i
        if not ready and source.frames_encoded > 0:
            ready = True
            emit({"event": "ready"})
        nxt += 1 / rate
        time.sleep(max(0.0, nxt - time.monotonic()))
    conn.disconnect()


def hibiki_sub(args: argparse.Namespace) -> None:
    import hibiki

    video = args.media != "OPUS"
    check = Checker(VIDEO_CLOCK // args.fps if video else AUDIO_FRAME, every=15 if video else 25)
    planes = bool(args.planes and hasattr(hibiki.VideoFrame, "planes"))
    tracks: list[Any] = []
    sinks: list[Any] = []

    def on_track(track: Any) -> None:
        tracks.append(track)
        if track.kind == "video" and video:
            sink = hibiki.VideoSink(track)
            if planes:
                # The planes path: take the decoder's planes; BGR is only
                # made for the sampled counter checks (their CPU is taken out).
                def on_frame(f: Any) -> None:
                    f.planes()
                    check.video(f.rtp_time, f.data)
            else:
                # BGR as users take it (VideoFrame.data() converts on first
                # use in newer SDKs, in the decoder thread in older ones).
                def on_frame(f: Any) -> None:
                    bgr = f.data()
                    check.video(f.rtp_time, lambda: bgr)
            sink.on_frame = on_frame
            sinks.append(sink)
        elif track.kind == "audio" and not video and args.callback:
            # Take decoded frames in a callback on the track's decoder thread,
            # as sora-sdk programs do (``SoraAudioStreamSink.on_frame``).
            audio_sink = hibiki.AudioStreamSink(track)
            audio_sink.on_frame = lambda f: check.audio(f.rtp_time, f.data)
            sinks.append(audio_sink)
        elif track.kind == "audio" and not video:
            # Pull decoded frames (with their RTP time) from a thread of our
            # own: ``track.get()``, the blocking form of ``await track.recv()``.
            def pull(track: Any = track) -> None:
                while True:
                    try:
                        frame = track.get(timeout=1.0)
                    except TimeoutError:
                        continue
                    except Exception:  # noqa: BLE001 - TrackEnded: the connection is closing
                        return
                    # AudioFrame.data is an attribute in older SDKs, a method in newer ones.
                    check.audio(frame.rtp_time, lambda f=frame: f.data() if callable(f.data) else f.data)

            threading.Thread(target=pull, name="bench-audio-reader", daemon=True).start()

    sdk = hibiki.Hibiki()
    conn = sdk.create_connection([args.url], role="recvonly", channel_id=args.channel)
    conn.on_track = on_track
    conn.connect()
    win = Window()
    c0: dict[str, Any] = {}

    def counters() -> dict[str, Any]:
        c = check.snapshot()
        c["encoded_received"] = sum(t.frames_received for t in tracks)
        c["frames_decoded"] = sum(t.frames_decoded for t in tracks)
        c["keyframe_requests"] = sum(t.keyframe_requests for t in tracks)
        c["bytes_received"] = sum(t.bytes_received for t in tracks)
        return c

    def on_start() -> None:
        c0.update(counters())
        win.start()

    def on_stop() -> None:
        win.stop()
        res = win.result()
        res.update(diff(c0, counters()))
        res["planes"] = planes
        res["codec"] = next((t.codec for t in tracks if t.codec), None)
        emit({"event": "result", **res})

    ctl = Control(on_start, on_stop)
    deadline = time.monotonic() + 20
    while check.frames < 10:
        if time.monotonic() > deadline:
            emit({"event": "error", "error": f"no media after 20 s ({counters()})"})
            return
        time.sleep(0.05)
    emit({"event": "ready"})
    ctl.quit.wait()
    conn.disconnect()


# -- aiortc roles -----------------------------------------------------------------------------


def patch_aiortc_bitrate(video_bps: int, audio_bps: int) -> None:
    """Make aiortc's encoders start at our bitrate (its defaults: VP8 0.5, H.264 1, Opus 96 kbit/s).

    VP8/H.264 read the module constant ``DEFAULT_BITRATE`` when an encoder is
    created; Opus sets ``bit_rate`` in ``__init__`` before the codec opens.
    A REMB from the server can still move the video target afterwards
    (aiortc clamps it to 0.25-1.5 Mbit/s for VP8, 0.5-3 for H.264).
    """
    from aiortc.codecs import h264, opus, vpx

    vpx.DEFAULT_BITRATE = video_bps
    h264.DEFAULT_BITRATE = video_bps
    orig = opus.OpusEncoder.__init__

    def init(self: Any) -> None:
        orig(self)
        self.codec.bit_rate = audio_bps

    opus.OpusEncoder.__init__ = init  # type: ignore[method-assign]


def aiortc_pub(args: argparse.Namespace) -> None:
    import asyncio

    import av
    from aiortc import MediaStreamTrack
    from aiortc_peer import SoraAiortcPeer

    patch_aiortc_bitrate(args.bitrate, args.audio_bitrate)
    video = args.media != "OPUS"
    content = video_frames(noise=args.noise) if video else audio_chunks()
    rate = args.fps if video else AUDIO_RATE / AUDIO_FRAME
    state = {"ticks": 0, "sent": 0}

    class Track(MediaStreamTrack):
        """The same pictures/PCM, paced in ``recv`` as aiortc's own tracks do."""

        kind = "video" if video else "audio"

        def __init__(self) -> None:
            super().__init__()
            self.i = 0
            self.t0: float | None = None

        async def recv(self) -> Any:
            if self.t0 is None:
                self.t0 = time.monotonic()
            wait = self.t0 + self.i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            i = self.i
            self.i += 1
            state["ticks"] = self.i
            if video:
                # What an aiortc user does with a numpy picture.
                picture = av.VideoFrame.from_ndarray(content[i % len(content)], format="bgr24")
                picture.pts = i * (VIDEO_CLOCK // args.fps)
                picture.time_base = Fraction(1, VIDEO_CLOCK)
                return picture
            pcm = content[i % len(content)]
            chunk = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
            chunk.sample_rate = AUDIO_RATE
            chunk.pts = i * AUDIO_FRAME
            chunk.time_base = Fraction(1, AUDIO_RATE)
            return chunk

    async def main() -> None:
        loop = asyncio.get_running_loop()
        track = Track()
        peer = SoraAiortcPeer(
            args.url, args.channel, "sendonly",
            video_track=track if video else None, audio_track=None if video else track,
            audio=not video, video=video, video_codec_type=args.media if video else None,
            video_bit_rate=args.bitrate // 1000 if video else None,
            audio_bit_rate=args.audio_bitrate // 1000 if not video else None,
        )
        await peer.connect()
        win = Window()
        c0: dict[str, Any] = {}
        assert peer.pc is not None
        sender = next(s for s in peer.pc.getSenders() if s.track is track)

        async def counters() -> dict[str, Any]:
            stats = await sender.getStats()
            out = {"ticks": state["ticks"], "frames_in": state["ticks"], "packets_sent": 0, "bytes_sent": 0}
            for s in stats.values():
                if s.type == "outbound-rtp":
                    out["packets_sent"] += s.packetsSent
                    out["bytes_sent"] += s.bytesSent
            return out

        done = asyncio.Event()

        async def start() -> None:
            c0.update(await counters())
            win.start()

        async def stop() -> None:
            win.stop()
            c = diff(c0, await counters())
            res = win.result()
            res.update(c)
            res["pacing_cpu_s"] = 0.0
            enc = getattr(sender, "_RTCRtpSender__encoder", None)
            res["target_bitrate"] = getattr(enc, "target_bitrate", None)
            res["codec"] = type(enc).__name__ if enc else None
            emit({"event": "result", **res})

        ctl = Control(lambda: asyncio.run_coroutine_threadsafe(start(), loop),
                      lambda: asyncio.run_coroutine_threadsafe(stop(), loop))
        while state["ticks"] < 5:
            await asyncio.sleep(0.05)
        emit({"event": "ready"})
        await loop.run_in_executor(None, ctl.quit.wait)
        done.set()
        await peer.disconnect()

    asyncio.run(main())


def aiortc_sub(args: argparse.Namespace) -> None:
    import asyncio

    from aiortc.mediastreams import MediaStreamError
    from aiortc_peer import SoraAiortcPeer

    video = args.media != "OPUS"
    check = Checker(VIDEO_CLOCK // args.fps if video else AUDIO_FRAME, every=15 if video else 25)

    async def consume(track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video" and video:
                    # What an aiortc user does to get a BGR picture.
                    bgr = frame.to_ndarray(format="bgr24")
                    check.video(frame.pts, lambda bgr=bgr: bgr)
                elif track.kind == "audio" and not video:
                    pcm = frame.to_ndarray().reshape(-1, 2)
                    check.audio(frame.pts, lambda pcm=pcm: pcm)
        except MediaStreamError:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        peer = SoraAiortcPeer(args.url, args.channel, "recvonly")
        tasks = []
        peer.on_track = lambda t: tasks.append(asyncio.ensure_future(consume(t)))
        await peer.connect()
        win = Window()
        c0: dict[str, Any] = {}

        def start() -> None:
            c0.update(check.snapshot())
            win.start()

        def stop() -> None:
            win.stop()
            res = win.result()
            res.update(diff(c0, check.snapshot()))
            emit({"event": "result", **res})

        ctl = Control(lambda: loop.call_soon_threadsafe(start), lambda: loop.call_soon_threadsafe(stop))
        deadline = time.monotonic() + 20
        while check.frames < 10:
            if time.monotonic() > deadline:
                emit({"event": "error", "error": f"no media after 20 s ({check.snapshot()})"})
                return
            await asyncio.sleep(0.05)
        emit({"event": "ready"})
        await loop.run_in_executor(None, ctl.quit.wait)
        await peer.disconnect()

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=["hibiki-pub", "hibiki-sub", "aiortc-pub", "aiortc-sub"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--channel", required=True)
    ap.add_argument("--media", default="VP8", help="video codec, or OPUS for audio")
    ap.add_argument("--fps", type=int, default=FPS)
    ap.add_argument("--bitrate", type=int, default=1_500_000, help="video bit/s (audio: --audio-bitrate)")
    ap.add_argument("--audio-bitrate", type=int, default=64_000)
    ap.add_argument("--noise", type=int, default=6)
    ap.add_argument("--planes", action="store_true", help="subscriber reads VideoFrame.planes() if it exists")
    ap.add_argument("--callback", action="store_true",
                    help="audio subscriber takes frames in AudioStreamSink.on_frame instead of track.get()")
    args = ap.parse_args()
    if args.media == "OPUS" and args.role.startswith("hibiki"):
        args.bitrate = args.audio_bitrate
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    {"hibiki-pub": hibiki_pub, "hibiki-sub": hibiki_sub, "aiortc-pub": aiortc_pub, "aiortc-sub": aiortc_sub}[
        args.role
    ](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
