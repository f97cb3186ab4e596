"""``hibiki demo``: publish a test pattern and a tone, subscribe, and measure what arrives.

One command shows the whole stack working end to end::

    hibiki demo                      # starts its own `hibiki serve`, runs 10 s
    hibiki demo --duration 30 --width 640 --height 360
    hibiki demo --server ws://127.0.0.1:5000/signaling --channel my-room

A *publisher* (role ``sendonly``) sends a moving colour-bar pattern with a
visible frame counter (:func:`hibiki.media.testsrc.test_pattern`) and a 440 Hz
tone. A *subscriber* (role ``recvonly``) decodes both and prints, once per
second: video frame rate and resolution, audio level and frequency, and the
end-to-end latency (it reads the counter from each decoded picture and looks
up when the publisher captured that frame; both run in this process, so the
clocks agree). It uses the callback face, the one sora-sdk users know.

Exit status: 0 when both video and audio arrived, 1 otherwise, 2 on a setup
error (server would not start, connection failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["main"]

TONE_HZ = 440.0
SAMPLE_RATE = 48_000
AUDIO_CHUNK = 960  # 20 ms


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hibiki demo",
        description="Publish a test pattern and a 440 Hz tone, subscribe to them, and print "
        "frame rate, resolution, audio level/frequency and end-to-end latency.",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds to run (default %(default)s)")
    p.add_argument("--channel", default=None, help="channel id (default: a random one)")
    p.add_argument("--width", type=int, default=1280, help="video width (default %(default)s)")
    p.add_argument("--height", type=int, default=720, help="video height (default %(default)s)")
    p.add_argument("--fps", type=float, default=30.0, help="video frame rate (default %(default)s)")
    p.add_argument("--bitrate", type=int, default=1500, help="video bitrate in kbps (default %(default)s)")
    p.add_argument(
        "--server",
        default=None,
        help="signaling URL (ws://HOST:PORT/signaling) or http://HOST:PORT of a running "
        "`hibiki serve`; default: start one for the demo",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show the SDK's log")
    return p


# -- the server ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _LocalServer:
    """A ``hibiki serve`` subprocess for the demo's lifetime."""

    def __init__(self, verbose: bool) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "hibiki", "serve", "--port", str(self.port),
               "--log-level", "info" if verbose else "warning", "--database", ":memory:"]
        # Its own process group: Ctrl-C in the terminal reaches the demo, which
        # then stops the server itself, in order, after disconnecting.
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        self.signaling_url = f"ws://127.0.0.1:{self.port}/signaling"

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`hibiki serve` exited with status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200 and json.loads(r.read() or b"{}").get("status") == "ok":
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"`hibiki serve` did not answer {url} within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _signaling_url(server: str) -> str:
    if server.startswith(("ws://", "wss://")):
        return server
    if server.startswith(("http://", "https://")):
        base = "ws" + server[4:]
        return base.rstrip("/") + "/signaling"
    return f"ws://{server.rstrip('/')}/signaling"


# -- measurements --------------------------------------------------------------------------------


@dataclass
class _Stats:
    """What the subscriber saw. Updated on decoder threads, read by the main thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    video_frames: int = 0
    video_frames_window: int = 0
    resolution: tuple[int, int] | None = None
    unreadable: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    window_latencies_ms: list[float] = field(default_factory=list)
    audio_samples: int = 0
    audio_window: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=100))  # <= 2 s
    levels: list[float] = field(default_factory=list)
    frequencies: list[float] = field(default_factory=list)
    first_video_at: float | None = None
    first_audio_at: float | None = None


class _Demo:
    def __init__(self, args: argparse.Namespace, signaling_url: str) -> None:
        import hibiki

        self.args = args
        self.url = signaling_url
        self.channel = args.channel or f"demo-{uuid.uuid4().hex[:8]}"
        self.sdk = hibiki.Hibiki()
        self.video = self.sdk.create_video_source()
        self.audio = self.sdk.create_audio_source(channels=1, sample_rate=SAMPLE_RATE)
        self.publisher = self.sdk.create_connection(
            signaling_urls=[self.url], role="sendonly", channel_id=self.channel,
            video_source=self.video, audio_source=self.audio, video_bit_rate=args.bitrate,
        )
        self.subscriber = self.sdk.create_connection(
            signaling_urls=[self.url], role="recvonly", channel_id=self.channel,
        )
        self.subscriber.on_track = self._on_track
        self.subscriber.on_disconnect = self._on_disconnect
        self.publisher.on_disconnect = self._on_disconnect
        self.stats = _Stats()
        self.sinks: list[Any] = []
        # counter -> capture time; bounded so a long run does not grow it.
        self.captured: OrderedDict[int, float] = OrderedDict()
        self.captured_lock = threading.Lock()
        self.stop = threading.Event()
        self.started = time.monotonic()

    # -- subscriber side (SDK threads) --

    def _on_track(self, track: Any) -> None:
        import hibiki

        print(f"  subscriber: new {track.kind} track from {track.stream_id}", flush=True)
        sink: Any
        if track.kind == "video":
            sink = hibiki.VideoSink(track)
            sink.on_frame = self._on_video_frame
        else:
            sink = hibiki.AudioSink(track, output_frequency=SAMPLE_RATE, output_channels=1)
            sink.on_data = self._on_audio
        self.sinks.append(sink)

    def _on_video_frame(self, frame: Any) -> None:
        from hibiki.media.testsrc import read_counter

        now = time.monotonic()
        counter = read_counter(frame.data())
        with self.captured_lock:
            captured = self.captured.get(counter) if counter is not None else None
        with self.stats.lock:
            s = self.stats
            s.video_frames += 1
            s.video_frames_window += 1
            s.resolution = (frame.width, frame.height)
            if s.first_video_at is None:
                s.first_video_at = now
            if captured is None:
                s.unreadable += 1
            else:
                ms = (now - captured) * 1000
                s.latencies_ms.append(ms)
                s.window_latencies_ms.append(ms)

    def _on_audio(self, pcm: np.ndarray) -> None:
        with self.stats.lock:
            self.stats.audio_samples += len(pcm)
            self.stats.audio_window.append(pcm)
            if self.stats.first_audio_at is None:
                self.stats.first_audio_at = time.monotonic()

    def _on_disconnect(self, code: Any, message: str) -> None:
        if not self.stop.is_set():
            print(f"  disconnected: {code.name}: {message}", flush=True)
            self.stop.set()

    # -- publisher side (our threads) --

    def _produce_video(self) -> None:
        from hibiki.media.testsrc import test_pattern

        interval = 1.0 / self.args.fps
        next_at = time.monotonic()
        counter = 0
        while not self.stop.is_set():
            frame = test_pattern(counter, self.args.width, self.args.height)
            now = time.monotonic()
            with self.captured_lock:
                self.captured[counter] = now
                while len(self.captured) > 600:
                    self.captured.popitem(last=False)
            self.video.on_captured(frame, now)
            counter += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay < -1.0:  # far behind (machine too busy): do not burst to catch up
                next_at = time.monotonic()
            elif delay > 0:
                self.stop.wait(delay)

    def _produce_audio(self) -> None:
        from hibiki.media.testsrc import tone

        next_at = time.monotonic()
        start = 0
        while not self.stop.is_set():
            self.audio.on_data(tone(TONE_HZ, SAMPLE_RATE, 1, start, AUDIO_CHUNK, amplitude=0.3))
            start += AUDIO_CHUNK
            next_at += AUDIO_CHUNK / SAMPLE_RATE
            delay = next_at - time.monotonic()
            if delay < -1.0:
                next_at = time.monotonic()
            elif delay > 0:
                self.stop.wait(delay)

    # -- report --

    def _report_second(self, elapsed: float) -> None:
        from hibiki.media.testsrc import dominant_frequency, level_dbfs

        with self.stats.lock:
            s = self.stats
            fps = s.video_frames_window
            s.video_frames_window = 0
            lat = s.window_latencies_ms
            s.window_latencies_ms = []
            res = s.resolution if fps else None
            # Only what arrived during this second: a stream that stalls shows as waiting.
            pcm = np.concatenate(list(s.audio_window)) if s.audio_window else None
            s.audio_window.clear()
        video = f"video {fps:3d} fps {res[0]}x{res[1]}" if res else "video   0 fps (waiting)"
        latency = f"latency {statistics.median(lat):6.1f} ms" if lat else "latency      -"
        if pcm is not None and len(pcm) >= SAMPLE_RATE // 10:
            level, freq = level_dbfs(pcm), dominant_frequency(pcm, SAMPLE_RATE)
            with self.stats.lock:
                self.stats.levels.append(level)
                self.stats.frequencies.append(freq)
            audio = f"audio {level:6.1f} dBFS {freq:6.1f} Hz"
        else:
            audio = "audio   - (waiting)"
        print(f"[{elapsed:5.1f} s] {video} | {audio} | {latency}", flush=True)

    def run(self) -> int:
        print(f"Hibiki demo: channel {self.channel} at {self.url}", flush=True)
        t0 = time.monotonic()
        self.publisher.connect()
        print(f"  publisher connected ({self.publisher.connection_id}) in "
              f"{(time.monotonic() - t0) * 1000:.0f} ms", flush=True)
        producers = [threading.Thread(target=self._produce_video, name="demo-video", daemon=True),
                     threading.Thread(target=self._produce_audio, name="demo-audio", daemon=True)]
        for p in producers:
            p.start()
        t1 = time.monotonic()
        self.subscriber.connect()
        print(f"  subscriber connected ({self.subscriber.connection_id}) in "
              f"{(time.monotonic() - t1) * 1000:.0f} ms", flush=True)
        joined_at = time.monotonic()
        end = time.monotonic() + self.args.duration
        next_report = time.monotonic() + 1.0
        try:
            while not self.stop.is_set() and time.monotonic() < end:
                self.stop.wait(max(0.0, min(next_report, end) - time.monotonic()))
                if time.monotonic() >= next_report:
                    self._report_second(time.monotonic() - joined_at)
                    next_report += 1.0
        except KeyboardInterrupt:
            print("\nInterrupted.", flush=True)
        finally:
            self.stop.set()
            for p in producers:
                p.join(2.0)
        return self._summary(joined_at)

    def _summary(self, joined_at: float) -> int:
        s = self.stats
        with s.lock:
            lat = sorted(s.latencies_ms)
            video_ok = s.video_frames > 0
            audio_ok = s.audio_samples > 0
            run_s = max(time.monotonic() - joined_at, 1e-9)
            print("\nSummary", flush=True)
            if s.first_video_at is not None:
                print(f"  first video frame {1000 * (s.first_video_at - joined_at):.0f} ms after the "
                      "subscriber connected")
            print(f"  video: {s.video_frames} frames ({s.video_frames / run_s:.1f} fps average)"
                  + (f", {s.resolution[0]}x{s.resolution[1]}" if s.resolution else ""))
            if lat:
                p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
                print(f"  latency: median {statistics.median(lat):.1f} ms, p95 {p95:.1f} ms, "
                      f"max {lat[-1]:.1f} ms over {len(lat)} frames")
            if s.unreadable:
                print(f"  {s.unreadable} frames without a readable counter")
            expected = run_s
            if audio_ok and s.audio_samples / SAMPLE_RATE < 0.8 * expected:
                print(f"  WARNING: only {s.audio_samples / SAMPLE_RATE:.1f} s of audio arrived in "
                      f"{expected:.1f} s: the audio stream stalled")
            if video_ok and s.video_frames < 0.5 * self.args.fps * expected:
                print(f"  WARNING: only {s.video_frames} video frames arrived in {expected:.1f} s "
                      f"at {self.args.fps:g} fps: the video stream stalled or the machine is too slow")
            print(f"  audio: {s.audio_samples / SAMPLE_RATE:.1f} s received"
                  + (f", {statistics.median(s.levels):.1f} dBFS, {statistics.median(s.frequencies):.1f} Hz"
                     if s.levels else ""))
        ok = video_ok and audio_ok
        print("  result: " + ("OK, video and audio arrived" if ok else
                              "FAILED: " + ", ".join(n for n, good in (("no video", video_ok),
                                                                       ("no audio", audio_ok)) if not good)))
        return 0 if ok else 1

    def close(self) -> None:
        self.stop.set()
        for conn in (self.subscriber, self.publisher):
            try:
                conn.disconnect()
            except Exception as exc:  # best effort while shutting down
                print(f"  disconnect failed: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status (0: video and audio arrived)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.width % 2 or args.height % 2 or args.width < 64 or args.height < 48:
        print("hibiki demo: width and height must be even, at least 64x48", file=sys.stderr)
        return 2
    if args.fps <= 0 or args.duration <= 0:
        print("hibiki demo: --fps and --duration must be > 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")

    import hibiki

    server: _LocalServer | None = None
    demo: _Demo | None = None
    try:
        if args.server:
            url = _signaling_url(args.server)
        else:
            server = _LocalServer(args.verbose)
            print(f"Starting `hibiki serve` on port {server.port} ...", flush=True)
            server.wait_healthy()
            url = server.signaling_url
        demo = _Demo(args, url)
        return demo.run()
    except KeyboardInterrupt:
        print("\nInterrupted.", flush=True)
        return 130
    except (hibiki.ConnectionError, RuntimeError) as exc:
        print(f"hibiki demo: {exc}", file=sys.stderr)
        return 2
    finally:
        # Ctrl-C during cleanup would leave the server running; finish first.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is \
            threading.main_thread() else None
        try:
            if demo is not None:
                demo.close()
            if server is not None:
                server.stop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
