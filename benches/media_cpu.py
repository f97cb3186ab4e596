"""B6 client media pipeline: CPU per sent and per received stream, SDK vs raw PyAV vs aiortc.

For every video codec asked for (``--codecs``, default VP8 VP9 AV1 H264 H265)
and for Opus audio (48 kHz stereo, 20 ms), measured in one run:

- **raw**: a plain PyAV loop, in this process, that encodes the same
  pre-rendered pictures with the very codec context the SDK opens (taken
  from a ``VideoEncoder`` / ``AudioEncoder`` after one frame through the
  public API: same encoder, options, threads; keyframes every 2 s as the SDK
  forces them), then, in a loop of its own at the stream's rate, decodes what
  came out with the SDK's decoder context and converts it to BGR (video) or
  int16 (audio), as SDK users get it. This is the codec's own cost: the
  floor for the SDK. Decoding gets its own paced loop because a subscriber
  wakes for every frame: decoding right after the encode, in the same wake,
  finds the CPU and caches warm and costs less (for Opus about a third
  less); that figure is kept in the notes.
- **Hibiki SDK**: a real ``hibiki serve`` subprocess on loopback, one
  publisher process pushing the pictures at 30 fps through
  ``VideoSource.on_captured`` (PCM through ``AudioSource.on_data``) and one
  recvonly subscriber process taking decoded frames from a ``VideoSink``
  (``AudioSink``). Each process's whole CPU time (all threads, user + system)
  over a window of ``--seconds`` after ``--warmup`` is divided by the frames
  it handled. The publisher's pacing loop alone (measured before connecting)
  and the subscriber's sampled frame checks are taken out.
- **aiortc 1.16**: the same workload by an aiortc publisher and an aiortc
  subscriber, each in its own process, connected to the same ``hibiki
  serve`` through benches/aiortc_peer.py (Sora signaling for aiortc), for the
  codecs aiortc has (VP8, H.264, Opus). aiortc's encoders are started at our
  bitrate (its defaults are lower); its codec settings are its own, so the raw
  loop is also run with aiortc's codec contexts to tell codec settings from
  pipeline overhead.

Frames are verified: subscribers number every frame by its RTP time (lost
ones show as gaps) and read the frame counter drawn in sampled pictures
(``read_counter``), which must match the number; audio checks the tone.

Besides SDK / raw, each process's CPU is split by thread
(``/proc/self/task/*/schedstat``): "outside the codec threads" is what the
SDK (or aiortc) spends beside its encoder/decoder workers (the frame copy,
the engine thread, the asyncio loop), a figure that does not move when the
codec itself runs slower in the pipeline than alone on a busy machine.
``--perf DIR`` also records a ``perf`` cpu-clock profile of every child
during its window and writes a per-thread summary next to it (that run's
figures are then inflated by the sampling).

Run: ``.venv/bin/python benches/media_cpu.py`` (``--codecs VP8 H264``,
``--seconds 20``; ``--write`` replaces the B6 section of BENCHMARKS.md).
Codecs the SDK cannot open yet are skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import av
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from join_time import start_server
from media_cpu_peer import (
    AUDIO_FRAME,
    AUDIO_RATE,
    audio_chunks,
    patch_aiortc_bitrate,
    video_frames,
)
from media_cpu_peer import paced as paced_ticks
from pipeline_floor import receive_floor, send_floor

ALL_CODECS = ["VP8", "VP9", "AV1", "H264", "H265"]
AIORTC_CODECS = {"VP8", "H264"}
WIDTH, HEIGHT = 1280, 720
TARGET_OVERHEAD = 1.15
TARGET_VS_AIORTC = 2.0


# -- raw PyAV loops ----------------------------------------------------------------------------


def _paced(n: int, rate: float, paced: bool) -> Iterator[int]:
    return iter(paced_ticks(n, rate)) if paced else iter(range(n))


@dataclass
class Raw:
    label: str
    enc_ms: float = 0.0
    dec_ms: float = 0.0  # decode + conversion to BGR / int16, in a paced loop of its own
    dec_only_ms: float = 0.0  # decode, no conversion, in a paced loop of its own
    dec_after_enc_ms: float = 0.0  # decode + conversion right after the encode, in the same wake
    mbps: float = 0.0
    frames: int = 0
    encoder: str = ""
    decoder: str = ""


def find_context(obj: Any, kind: type) -> Any:
    """The opened PyAV codec context an SDK codec object holds (whatever the attribute is called)."""
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names += list(getattr(klass, "__slots__", ()))
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, kind):
            return value
    raise RuntimeError(f"no {kind.__name__} found in {type(obj).__name__}: the bench needs updating")


def sdk_video_contexts(codec: str, bitrate: int, fps: int, first: np.ndarray) -> tuple[Any, Callable[[], Any], str]:
    """The SDK's own 720p encoder context, a maker of fresh SDK decoder contexts, and the encoder's name.

    The encoder is opened through the public API (one frame encoded), so the
    context is exactly what the SDK runs: encoder choice, options, threads.
    Raises ValueError/RuntimeError when the SDK cannot do ``codec``.
    """
    from hibiki.media import VideoDecoder, VideoEncoder

    enc = VideoEncoder(codec, bitrate=bitrate, framerate=fps)
    if not enc.encode(first, 0, force_keyframe=True):
        raise RuntimeError("the SDK encoder gave no frame for the first picture")
    ctx = find_context(enc, av.VideoCodecContext)
    # Keep the encoder object alive with its context (its finalizer flushes it).
    _keep.append(enc)

    def decoder() -> Any:
        return find_context(VideoDecoder(codec), av.VideoCodecContext)

    return ctx, decoder, ctx.name


_keep: list[Any] = []


def paced_decode(dec: Any, packets: list[bytes], rate: float, paced: bool,
                 convert: Callable[[Any], object]) -> tuple[float, int]:
    """Decode ``packets`` with ``dec`` at ``rate`` per second, passing each decoded frame to ``convert``.

    Returns the process CPU seconds the decode and conversion calls took, and the frames decoded.
    """
    cpu, frames = 0.0, 0
    for i in _paced(len(packets), rate, paced):
        t = time.process_time()
        for decoded in dec.decode(av.Packet(packets[i])):
            convert(decoded)
            frames += 1
        cpu += time.process_time() - t
    return cpu, frames


def raw_video(label: str, enc_ctx: Any, decoder: Callable[[], Any], frames: list[np.ndarray], n: int, fps: int,
              paced: bool, start: int = 0, key_interval: int | None = None) -> Raw:
    """The plain PyAV loops: encode the pictures, then decode what came out (to BGR, and without conversion).

    Each loop runs at the frame rate (``paced``), as the SDK's threads do, so
    caches and clocks are as cold or warm as there: encoding (each packet
    also decoded to BGR right after, in the same wake, for the notes), then
    decoding to BGR, then decoding only, each with a fresh decoder from
    ``decoder()``. Decode calls are timed with the process CPU clock; the
    encoder gets the rest of its loop's process CPU, which includes work its
    own threads do between calls (SVT-AV1).
    """
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    tb = Fraction(1, 90_000)
    packets: list[bytes] = []
    after_cpu = 0.0
    after_dec = decoder()
    total = time.process_time()
    for i in _paced(n, fps, paced):
        k = i + start
        frame = av.VideoFrame.from_numpy_buffer(frames[k % len(frames)], format="bgr24")
        frame.pts = k * (90_000 // fps)
        frame.time_base = tb
        if i == 0 or (key_interval and i % key_interval == 0):
            # A keyframe to start with and then every 2 s of media, as the
            # SDK's VideoEncoder forces them (aiortc: only on request).
            frame.pict_type = av.video.frame.PictureType.I
        for packet in enc_ctx.encode(frame):
            data = bytes(packet)
            packets.append(data)
            t = time.process_time()
            for picture in after_dec.decode(av.Packet(data)):
                np.ascontiguousarray(reformatter.reformat(picture, format="bgr24").to_ndarray())
            after_cpu += time.process_time() - t
    enc_cpu = time.process_time() - total - after_cpu
    dec_cpu, pictures = paced_decode(decoder(), packets, fps, paced,
                                     lambda p: np.ascontiguousarray(reformatter.reformat(p, format="bgr24").to_ndarray()))
    dec_only_cpu, _ = paced_decode(decoder(), packets, fps, paced, lambda p: None)
    return Raw(
        label, enc_ms=enc_cpu * 1e3 / n, dec_ms=dec_cpu * 1e3 / max(pictures, 1),
        dec_only_ms=dec_only_cpu * 1e3 / max(pictures, 1), dec_after_enc_ms=after_cpu * 1e3 / max(len(packets), 1),
        mbps=sum(map(len, packets)) * 8 / (n / fps) / 1e6, frames=pictures, encoder=enc_ctx.name,
        decoder=after_dec.name,
    )


def aiortc_video_contexts(codec: str, bitrate: int, first: np.ndarray) -> tuple[Any, Callable[[], Any]]:
    """aiortc's own encoder context (opened by its encoder class on one frame) and a maker of its decoder contexts."""
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    patch_aiortc_bitrate(bitrate, 64_000)
    frame = av.VideoFrame.from_ndarray(first, format="bgr24")
    frame.pts = 0
    frame.time_base = Fraction(1, 90_000)
    if codec == "VP8":
        enc: Any = Vp8Encoder()
        enc.encode(frame, True)
        dec = "libvpx"
    else:
        enc = H264Encoder()
        enc.encode(frame, True)
        dec = "h264"
    return enc.codec, lambda: av.CodecContext.create(dec, "r")


def audio_frame(pcm: np.ndarray, index: int) -> av.AudioFrame:
    """The ``index``-th 20 ms chunk as a PyAV frame, as the raw loops feed the encoder."""
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = index * AUDIO_FRAME
    frame.time_base = Fraction(1, AUDIO_RATE)
    return frame


def to_int16(decoded: Any) -> np.ndarray:
    """A decoded PyAV audio frame as int16 (samples, 2), as SDK users get PCM."""
    a = decoded.to_ndarray()
    a = a.T if decoded.format.is_planar else a.reshape(-1, 2)
    if a.dtype.kind == "f":
        a = np.clip(np.rint(a * 32767.0), -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(a)


def raw_audio(label: str, enc_ctx: Any, decoder: Callable[[], Any], chunks: list[np.ndarray], n: int,
              paced: bool) -> Raw:
    """Opus: encode ``n`` 20 ms chunks, then decode the packets to int16 (samples, 2) in a loop of their own.

    Paced like :func:`raw_video`; each packet is also decoded right after its
    encode, in the same wake, for the notes.
    """
    packets: list[bytes] = []
    after_cpu = 0.0
    after_dec = decoder()

    total = time.process_time()
    for i in _paced(n, AUDIO_RATE / AUDIO_FRAME, paced):
        # The context already took one chunk, at index 0.
        for packet in enc_ctx.encode(audio_frame(chunks[i % len(chunks)], i + 1)):
            data = bytes(packet)
            packets.append(data)
            t = time.process_time()
            for decoded in after_dec.decode(av.Packet(data)):
                to_int16(decoded)
            after_cpu += time.process_time() - t
    enc_cpu = time.process_time() - total - after_cpu
    dec = decoder()
    dec_cpu, got = paced_decode(dec, packets, AUDIO_RATE / AUDIO_FRAME, paced, to_int16)
    return Raw(label, enc_ms=enc_cpu * 1e3 / n, dec_ms=dec_cpu * 1e3 / max(got, 1), dec_only_ms=float("nan"),
               dec_after_enc_ms=after_cpu * 1e3 / max(len(packets), 1),
               mbps=sum(map(len, packets)) * 8 / (n * AUDIO_FRAME / AUDIO_RATE) / 1e6, frames=got,
               encoder=enc_ctx.name, decoder=dec.name)


# -- pipeline runs (child processes) ------------------------------------------------------------


class Child:
    """A media_cpu_peer.py process and its JSON-lines stdout."""

    def __init__(self, role: str, url: str, channel: str, media: str, args: argparse.Namespace, extra: list[str] | None = None) -> None:
        self.role = role
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"b6-{role}-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [sys.executable, str(HERE / "media_cpu_peer.py"), role, "--url", url, "--channel", channel,
               "--media", media, "--fps", str(args.fps), "--bitrate", str(args.bitrate),
               "--audio-bitrate", str(args.audio_bitrate), "--noise", str(args.noise), *(extra or [])]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        self.lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.role}: no {event!r} within {timeout:.0f} s; log: {self.tail()}") from None
            if msg is None:
                raise RuntimeError(f"{self.role} exited (rc {self.proc.poll()}) before {event!r}; log: {self.tail()}")
            if msg.get("event") == "error":
                raise RuntimeError(f"{self.role}: {msg.get('error')}; log: {self.tail()}")
            if msg.get("event") == event:
                return msg

    def send(self, cmd: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def tail(self, n: int = 1500) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def close(self) -> None:
        self.send("quit")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        os.unlink(self.log.name)


def run_pipeline(impl: str, media: str, url: str, args: argparse.Namespace, sub: list[str] | None = None,
                 second: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``_run_pipeline``, tried a second time if it fails (a busy shared box can miss a start-up deadline)."""
    try:
        return _run_pipeline(impl, media, url, args, sub, second)
    except RuntimeError as exc:
        print(f"  {impl} {media} run failed, trying once more: {str(exc)[:300]}", flush=True)
        return _run_pipeline(impl, media, url, args, sub, second)


def _run_pipeline(impl: str, media: str, url: str, args: argparse.Namespace, sub: list[str] | None = None,
                  second: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """One publisher and one subscriber (extra flags ``sub``), plus a second subscriber (result
    ``sub2``) started with the flags ``second`` when given; returns their window results."""
    channel = f"b6-{impl}-{media}-{os.getpid()}-{time.monotonic_ns()}"
    children: dict[str, Child] = {}
    try:
        children["sub"] = Child(f"{impl}-sub", url, channel, media, args, sub)
        if second is not None:
            children["sub2"] = Child(f"{impl}-sub", url, channel, media, args, second)
        time.sleep(0.5)
        children["pub"] = Child(f"{impl}-pub", url, channel, media, args)
        for c in children.values():
            c.expect("ready", 60)
        time.sleep(args.warmup)
        perfs = start_perf(children, impl, media, args) if args.perf else {}
        for c in children.values():
            c.send("start")
        time.sleep(args.seconds)
        for c in children.values():
            c.send("stop")
        results = {k: c.expect("result", 30) for k, c in children.items()}
        if perfs:
            stop_perf(perfs, results)
        return results
    finally:
        for c in children.values():
            c.close()


def start_perf(children: dict[str, Child], impl: str, media: str, args: argparse.Namespace) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    """``perf record`` (cpu-clock, call graphs) on each child for the window."""
    out = {}
    Path(args.perf).mkdir(parents=True, exist_ok=True)
    for key, c in children.items():
        data = Path(args.perf) / f"{media}-{impl}-{key}.data"
        proc = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-p", str(c.proc.pid), "-o", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        out[key] = (proc, data)
    time.sleep(0.3)
    return out


def stop_perf(perfs: dict[str, tuple[subprocess.Popen[bytes], Path]], results: dict[str, dict[str, Any]]) -> None:
    """Stop the recordings and write, next to each, a per-thread summary of the hottest symbols."""
    import signal

    for proc, _ in perfs.values():
        proc.send_signal(signal.SIGINT)
    for key, (proc, data) in perfs.items():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            continue
        names = results.get(key, {}).get("tid_names", {})

        def report(sort: str, limit: str, data: Path = data, names: dict[str, str] = names) -> dict[str, list[tuple[float, str]]]:
            text = subprocess.run(
                ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none", "--sort", sort,
                 "--percent-limit", limit],
                capture_output=True, text=True, check=False,
            ).stdout
            rows: dict[str, list[tuple[float, str]]] = {}
            for line in text.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+(\d+):\S*\s+(.*)", line)
                if m:
                    thread = names.get(m[2], f"tid {m[2]}")
                    rows.setdefault(thread, []).append((float(m[1]), re.sub(r"\s+", " ", m[3].strip())))
            return rows

        by_dso, by_sym = report("pid,dso", "0"), report("pid,sym", "0.4")
        lines = [(f"perf cpu-clock profile of {data.name}: share of the process's samples, by thread, "
                 "then by library and hottest symbols")]
        for thread, rows in sorted(by_dso.items(), key=lambda kv: -sum(p for p, _ in kv[1])):
            total = sum(p for p, _ in rows)
            if total < 0.5:
                continue
            lines.append(f"{thread}: {total:.1f} %")
            lines += [f"    {p:5.1f} %  {what}" for p, what in sorted(rows, reverse=True)[:8] if p >= 0.2]
            syms = sorted(by_sym.get(thread, []), reverse=True)[:8]
            if syms:
                lines.append("    hottest symbols:")
                lines += [f"      {p:5.1f} %  {what}" for p, what in syms]
        data.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        print(f"  perf: {data.with_suffix('.txt')}", flush=True)


# -- figures --------------------------------------------------------------------------------------


@dataclass
class Row:
    media: str
    raw: Raw | None = None
    pub: dict[str, Any] | None = None
    sub: dict[str, Any] | None = None
    sub2: dict[str, Any] | None = None
    """The second Hibiki subscriber: video reads `VideoFrame.planes()` (beside the first), audio takes
    `AudioStreamSink.on_frame` (in a run of its own)."""
    aio_raw: Raw | None = None
    aio_pub: dict[str, Any] | None = None
    aio_sub: dict[str, Any] | None = None
    direct: Raw | None = None
    """Audio: libopus driven directly, as the SDK does, in paced loops."""
    floor: dict[str, dict[str, float]] = field(default_factory=dict)
    """Audio: ms per packet by thread for the thread shapes of pipeline_floor.py ("send 1", "receive 3"...)."""
    notes: list[str] = field(default_factory=list)

    @property
    def audio(self) -> bool:
        return self.media == "OPUS"


def send_ms(pub: dict[str, Any] | None) -> float | None:
    if not pub or not pub.get("frames_in"):
        return None
    return (pub["cpu_s"] - pub.get("pacing_cpu_s", 0.0)) * 1e3 / pub["frames_in"]


def recv_ms(sub: dict[str, Any] | None) -> float | None:
    if not sub or not sub.get("frames"):
        return None
    return (sub["cpu_s"] - sub.get("check_cpu_s", 0.0)) * 1e3 / sub["frames"]


# Threads that run the codec itself: the SDK's encoder/decoder workers, aiortc's
# encoder executor and decoder threads, and unnamed native codec/swscale threads.
CODEC_THREADS = re.compile(r"^(hibiki-(video|audio)-(source|track)|asyncio_N|ThreadPoolExecutor.*|"
                           r"(video|audio)-decoder|native \(codec/swscale\))$")


def outside_codec_ms(res: dict[str, Any] | None, frames_key: str) -> float | None:
    """CPU per frame in the threads that are not the codec's: the SDK's own cost, whatever the codec did.

    Unlike SDK - raw, this does not move when the codec runs slower in the
    pipeline than alone (cache and CPU contention on a shared box). The
    publisher's pacing loop and the subscriber's frame checks (when not on
    the decoder thread) are taken out.
    """
    if not res or not res.get(frames_key):
        return None
    cpu = sum(v for k, v in res["threads"].items() if not CODEC_THREADS.match(k))
    cpu -= res.get("pacing_cpu_s", 0.0)
    if "bench-audio-reader" in res["threads"]:
        cpu -= res.get("check_cpu_s", 0.0)
    return max(cpu, 0.0) * 1e3 / res[frames_key]


def fmt_share(ms: float | None, of: float | None, audio: bool) -> str:
    if ms is None or of is None or not of:
        return "-"
    return f"{fmt_cost(ms, audio)} ({100 * ms / of:.0f} %)"


def fmt_cost(ms: float | None, audio: bool) -> str:
    if ms is None or math.isnan(ms):
        return "-"
    return f"{ms * 1e3:.0f} us" if audio else f"{ms:.2f} ms"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def core_share(ms: float | None, rate: float) -> str:
    return "-" if ms is None else f"{ms * rate / 10:.1f} %"


def sub_verdict(sub: dict[str, Any] | None) -> str:
    if not sub:
        return "-"
    return (f"{sub['frames']} recv, {sub['gaps']} missing, counters {sub['ok']}/{sub['checked']} ok"
            + (f", {sub['unreadable']} unreadable" if sub.get("unreadable") else ""))


def pub_frames(pub: dict[str, Any] | None) -> str:
    if not pub:
        return "-"
    return (f"{pub['frames_in']} / {pub.get('frames_encoded', '-')} / {pub.get('frames_sent', '-')} / "
            f"{pub.get('frames_dropped', '-')}")


def thread_breakdown(res: dict[str, Any], frames: int, audio: bool) -> str:
    """Each busy thread's CPU per frame, and how often per frame it was scheduled in (its wake-ups)."""
    parts = []
    runs = res.get("thread_runs", {})
    for name, cpu in res["threads"].items():
        if cpu * 1e3 / max(frames, 1) < (0.002 if audio else 0.01):
            continue
        woke = f" ({runs[name] / max(frames, 1):.1f} runs)" if name in runs else ""
        parts.append(f"{name} {fmt_cost(cpu * 1e3 / max(frames, 1), audio)}{woke}")
    return ", ".join(parts)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} vCPU {model}, Linux {platform.release()}, Python {platform.python_version()}, PyAV {av.__version__}"


def render(rows: list[Row], args: argparse.Namespace, cmd: str, skipped: list[str], loadavg: tuple[float, float]) -> str:
    import aiortc

    out = [
        f"### B6 client media pipeline ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
        "",
        f"Command: `{cmd}`",
        "",
        (f"Machine: {machine()}; aiortc {aiortc.__version__}. Load average before / after the run: "
        f"{loadavg[0]:.2f} / {loadavg[1]:.2f}."),
        "",
        (f"Workload: 1280x720 at {args.fps} fps, the `testsrc` pattern with its frame counter plus +-{args.noise} "
        f"sensor noise, {60} pre-rendered pictures cycled; video target {args.bitrate / 1e6:.1f} Mbit/s; Opus 48 kHz "
        f"stereo 20 ms at {args.audio_bitrate // 1000} kbit/s. Window {args.seconds:.0f} s after {args.warmup:.0f} s of "
        "warm-up. CPU = user + system of the whole process (all threads) per frame handled; video in ms per "
        "frame, audio in us per 20 ms packet; \"core\" = share of one core for one stream."),
        "",
        "**Sending: SDK vs the codec alone** (target: SDK / raw <= 1.15)",
        "",
        ("| media | encoder | raw encode | SDK send | SDK / raw | outside the codec threads (% of raw) | "
        "SDK core per stream | Mbit/s raw / SDK | frames in / encoded / sent / queue-dropped |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.raw is None:
            continue
        rate = AUDIO_RATE / AUDIO_FRAME if r.audio else args.fps
        s = send_ms(r.pub)
        sdk_mbps = (r.pub["bytes_sent"] * 8 / r.pub["wall_s"] / 1e6) if r.pub else None
        out.append(
            f"| {r.media} | {r.raw.encoder} | {fmt_cost(r.raw.enc_ms, r.audio)} | {fmt_cost(s, r.audio)} | "
            f"{fmt_ratio(s, r.raw.enc_ms)} | {fmt_share(outside_codec_ms(r.pub, 'frames_in'), r.raw.enc_ms, r.audio)} | "
            f"{core_share(s, rate)} | {r.raw.mbps:.2f} / {'-' if sdk_mbps is None else f'{sdk_mbps:.2f}'} | "
            f"{pub_frames(r.pub)} |"
        )
    out += [
        "",
        ("**Receiving: SDK vs the codec alone** (target: SDK / raw <= 1.15); BGR as `VideoFrame.data()` gives it "
        "in a `VideoSink.on_frame` callback; int16 audio frames pulled with `track.get()` by a reader thread of "
        "the subscriber's own. A second subscriber in the same run takes the decoder's planes instead "
        "(`VideoFrame.planes()`, no conversion); for Opus, a second run takes the frames in "
        "`AudioStreamSink.on_frame` on the decoder thread, as sora-sdk programs receive audio"),
        "",
        ("| media | decoder | raw decode+convert | SDK receive | SDK / raw | outside the codec threads (% of raw) | "
        "SDK core per stream | raw decode only | SDK receive, planes / on_frame | SDK / raw | received |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.raw is None:
            continue
        rate = AUDIO_RATE / AUDIO_FRAME if r.audio else args.fps
        v, vp = recv_ms(r.sub), recv_ms(r.sub2)
        dec_only = r.raw.dec_ms if r.audio else r.raw.dec_only_ms
        out.append(
            f"| {r.media} | {r.raw.decoder} | {fmt_cost(r.raw.dec_ms, r.audio)} | {fmt_cost(v, r.audio)} | "
            f"{fmt_ratio(v, r.raw.dec_ms)} | {fmt_share(outside_codec_ms(r.sub, 'frames'), r.raw.dec_ms, r.audio)} | "
            f"{core_share(v, rate)} | {fmt_cost(dec_only, r.audio)} | {fmt_cost(vp, r.audio)} | "
            f"{fmt_ratio(vp, dec_only)} | {sub_verdict(r.sub)} |"
        )
    aio = [r for r in rows if r.aio_pub or r.aio_sub]
    if aio:
        out += [
            "",
            (f"**Hibiki vs aiortc {aiortc.__version__}**, same workload, same server, same run "
            f"(target: aiortc / Hibiki >= {TARGET_VS_AIORTC:.0f})"),
            "",
            ("| media | Hibiki send | aiortc send | aiortc / Hibiki | Hibiki receive | aiortc receive | aiortc / Hibiki | "
            "aiortc raw encode / decode (its codec settings) | aiortc send / its raw | aiortc recv / its raw | "
            "outside the codec threads, Hibiki / aiortc: send | receive | aiortc Mbit/s | aiortc received |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in aio:
            hs, hr = send_ms(r.pub), recv_ms(r.sub)
            a_s, a_r = send_ms(r.aio_pub), recv_ms(r.aio_sub)
            mbps = r.aio_pub["bytes_sent"] * 8 / r.aio_pub["wall_s"] / 1e6 if r.aio_pub else None
            raw = r.aio_raw
            out.append(
                f"| {r.media} | {fmt_cost(hs, r.audio)} | {fmt_cost(a_s, r.audio)} | {fmt_ratio(a_s, hs)} | "
                f"{fmt_cost(hr, r.audio)} | {fmt_cost(a_r, r.audio)} | {fmt_ratio(a_r, hr)} | "
                f"{fmt_cost(raw.enc_ms if raw else None, r.audio)} / {fmt_cost(raw.dec_ms if raw else None, r.audio)} | "
                f"{fmt_ratio(a_s, raw.enc_ms if raw else None)} | {fmt_ratio(a_r, raw.dec_ms if raw else None)} | "
                f"{fmt_cost(outside_codec_ms(r.pub, 'frames_in'), r.audio)} / "
                f"{fmt_cost(outside_codec_ms(r.aio_pub, 'frames_in'), r.audio)} | "
                f"{fmt_cost(outside_codec_ms(r.sub, 'frames'), r.audio)} / "
                f"{fmt_cost(outside_codec_ms(r.aio_sub, 'frames'), r.audio)} | "
                f"{'-' if mbps is None else f'{mbps:.2f}'} | {sub_verdict(r.aio_sub)} |"
            )
    for r in rows:
        if r.audio and r.raw and r.direct and r.floor:
            out += render_audio_floor(r)
    out += ["", ("Where the CPU goes, per frame, by thread (`/proc/<pid>/task/*/schedstat`; \"runs\": times the "
                 "thread was scheduled in per frame, about its wake-ups):"), ""]
    for r in rows:
        for who, res, frames_key in (("Hibiki publisher", r.pub, "frames_in"), ("Hibiki subscriber", r.sub, "frames"),
                                     (f"Hibiki subscriber ({'on_frame' if r.audio else 'planes'})", r.sub2, "frames"),
                                     ("aiortc publisher", r.aio_pub, "frames_in"), ("aiortc subscriber", r.aio_sub, "frames")):
            if res:
                extra = ""
                if frames_key == "frames_in" and res.get("pacing_cpu_s"):
                    extra = f" (pacing loop, taken out: {fmt_cost(res['pacing_cpu_s'] * 1e3 / res['frames_in'], r.audio)})"
                if res.get("check_cpu_s"):
                    extra = f" (frame checks, taken out: {fmt_cost(res['check_cpu_s'] * 1e3 / max(res['frames'], 1), r.audio)})"
                out.append(f"- {r.media} {who}: {thread_breakdown(res, res[frames_key], r.audio)}{extra}")
    notes = [n for r in rows for n in r.notes] + skipped + [
        ("Windows of publisher and subscriber are opened by the same command but do not cover exactly the same "
        "frames (pipeline latency), so frame counts differ by a few; \"missing\" are holes in the RTP timestamps "
        "the subscriber saw (frames the encoder's rate control dropped, or lost); \"counters\" are sampled "
        "pictures whose drawn frame counter matched their RTP position (audio: the 440 Hz tone was found)."),
        ("Raw loops run at the stream's rate (30 fps, 50 packets/s) like the SDK, so caches are as cold as in the "
        "pipeline; the hot back-to-back figures above show how much that matters (most for Opus). Raw decoding has "
        "a paced loop of its own, as a subscriber wakes for each frame; until 2026-12-07 it was timed right after "
        "each encode, in the same wake, which is cheaper (the \"right after the encode\" figures above) and made "
        "the receive ratios look worse than they are."),
        ("Hibiki figures include everything the process does: the `on_captured`/`on_data` copy, the encoder or "
        "decoder worker, the Rust engine thread (packetize, SRTP, UDP, RTCP), the SDK's asyncio loop and the user "
        "callback; only the publisher's empty pacing loop and the subscriber's sampled counter reads are taken out."),
        ("aiortc: VP8/H.264/Opus encoders started at the same bitrate by patching `DEFAULT_BITRATE` "
        "(`aiortc.codecs.vpx`, `aiortc.codecs.h264`) and `OpusEncoder`'s `bit_rate`; its codec settings are "
        "its own (VP8 cpu-used -6 and no periodic keyframes, H.264 libx264 default preset with zerolatency, "
        "Opus voip), hence the second raw column. The aiortc user code (numpy -> `av.VideoFrame` in `recv()`, "
        "`to_ndarray(format=\"bgr24\")` on receive) is counted, as Hibiki's copy in `on_captured` is; its "
        "pacing (an `asyncio.sleep` in `recv()`) is not taken out. aiortc joins `hibiki serve` through "
        "benches/aiortc_peer.py (Sora signaling: connect, offer/answer, candidates, re-offer, ping/pong)."),
    ]
    if notes:
        out += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


def render_audio_floor(r: Row) -> list[str]:
    """Opus: what the codec path and the shape of a pipeline cost before any WebRTC, beside the SDK and aiortc."""
    assert r.raw is not None and r.direct is not None

    def line(what: str, send: float | None, recv: float | None) -> str:
        return (f"| {what} | {fmt_cost(send, True)} | {fmt_ratio(send, r.raw.enc_ms)} | {fmt_cost(recv, True)} | "
                f"{fmt_ratio(recv, r.raw.dec_ms)} |")

    def total(key: str) -> float | None:
        return sum(r.floor[key].values()) if key in r.floor else None

    def split(key: str) -> str:
        return " + ".join(f"{fmt_cost(v, True)}" for v in r.floor.get(key, {}).values())

    return [
        "",
        ("**Opus: the codec path and the shape of the pipeline** (`benches/pipeline_floor.py`, same run; per 20 ms "
         "packet, each thread's own CPU with its wake-ups; ratios to the raw PyAV loop of the target)"),
        "",
        "| Opus | send | / raw PyAV | receive | / raw PyAV |",
        "|---|---|---|---|---|",
        line("raw PyAV loop (FFmpeg's libopus wrapper; the target's baseline)", r.raw.enc_ms, r.raw.dec_ms),
        line("libopus driven directly, as the SDK does (same packets), paced loop", r.direct.enc_ms, r.direct.dec_ms),
        line("one thread: codec + UDP socket", total("send 1"), total("receive 1")),
        (line(f"three threads, the SDK's shape: caller -> codec -> network ({split('send 3')}) / network -> codec "
              f"-> reader, as `track.get()` ({split('receive 3')})", total("send 3"), total("receive 3"))),
        (line(f"two threads, network -> codec + the user's callback ({split('receive 2')})", None,
              total("receive 2"))),
        line("Hibiki SDK (the tables above; receive: `track.get()` in a reader thread)", send_ms(r.pub), recv_ms(r.sub)),
        line("Hibiki SDK, receive in `AudioStreamSink.on_frame` (a second run)", None, recv_ms(r.sub2)),
        line("aiortc (the tables above)", send_ms(r.aio_pub), recv_ms(r.aio_sub)),
    ]


def write_section(text: str) -> None:
    path = HERE.parent / "BENCHMARKS.md"
    doc = path.read_text()
    begin, end = "<!-- B6:begin -->", "<!-- B6:end -->"
    block = f"{begin}\n{text}{end}\n"
    if begin in doc and end in doc:
        doc = re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", lambda _: block, doc, flags=re.DOTALL)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    path.write_text(doc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", nargs="*", default=ALL_CODECS, type=str.upper,
                    help="video codecs (default: all five; none: audio only)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window per pipeline run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of media before the window opens")
    ap.add_argument("--raw-seconds", type=float, default=8.0, help="length of the raw PyAV loops (video)")
    ap.add_argument("--unpaced", action="store_true", help="run the raw loops back to back instead of at the frame rate")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=1_500_000)
    ap.add_argument("--audio-bitrate", type=int, default=64_000)
    ap.add_argument("--noise", type=int, default=6)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--no-aiortc", action="store_true")
    ap.add_argument("--write", action="store_true", help="replace the B6 section of BENCHMARKS.md")
    ap.add_argument("--perf", metavar="DIR", help="record `perf` cpu-clock profiles of the Hibiki/aiortc processes "
                    "during each window into DIR (inflates the figures of that run)")
    args = ap.parse_args()

    import hibiki

    load0 = os.getloadavg()[0]
    frames = video_frames(noise=args.noise)
    planes = hasattr(hibiki.VideoFrame, "planes")
    proc, url = start_server()
    rows: list[Row] = []
    skipped: list[str] = []
    if not planes:
        skipped.append("`VideoFrame.planes()` does not exist yet: only the BGR receive path is measured.")
    try:
        for codec in args.codecs:
            rows.append(run_video(codec, url, frames, args, planes, skipped))
        if not args.no_audio:
            rows.append(run_audio(url, args))
    finally:
        proc.terminate()
        proc.wait(10)
    cmd = "python benches/media_cpu.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    text = render(rows, args, cmd.strip(), skipped, (load0, os.getloadavg()[0]))
    print()
    print(text)
    if args.write:
        write_section(text)
    return 0


def run_video(codec: str, url: str, frames: list[np.ndarray], args: argparse.Namespace, planes: bool,
              skipped: list[str]) -> Row:
    row = Row(codec)
    n_raw = int(args.raw_seconds * args.fps)
    try:
        enc_ctx, decoder, name = sdk_video_contexts(codec, args.bitrate, args.fps, frames[0])
    except (ValueError, RuntimeError, av.FFmpegError) as exc:
        msg = f"{codec}: SDK not measured, it cannot open this codec yet ({exc})."
        print(msg, flush=True)
        skipped.append(msg)
    else:
        print(f"{codec}: raw PyAV loops with the SDK's {name} context, {n_raw} frames at {args.fps} fps...", flush=True)
        row.raw = raw_video("raw", enc_ctx, decoder, frames, n_raw, args.fps, not args.unpaced, start=1,
                            key_interval=2 * args.fps)
        print(f"  raw: encode {row.raw.enc_ms:.2f} ms/frame, decode+BGR {row.raw.dec_ms:.2f} ms "
              f"(decode only {row.raw.dec_only_ms:.2f}; right after the encode {row.raw.dec_after_enc_ms:.2f}), "
              f"{row.raw.mbps:.2f} Mbit/s", flush=True)
        note = (f"{codec}: raw decode+BGR right after each encode, in the same wake: "
                f"{row.raw.dec_after_enc_ms:.2f} ms per frame")
        if not args.unpaced:
            hot = raw_video("hot", *sdk_video_contexts(codec, args.bitrate, args.fps, frames[0])[:2], frames, n_raw,
                            args.fps, False, start=1, key_interval=2 * args.fps)
            note += (f"; the raw loops run back to back (hot caches, not paced at {args.fps} fps): encode "
                     f"{hot.enc_ms:.2f} ms, decode+BGR {hot.dec_ms:.2f} ms, decode only {hot.dec_only_ms:.2f} ms per frame")
        row.notes.append(note + ".")
        print(f"{codec}: Hibiki publisher -> hibiki serve -> Hibiki subscriber, {args.seconds:.0f} s...", flush=True)
        try:
            res = run_pipeline("hibiki", codec, url, args, second=["--planes"] if planes else None)
            row.pub, row.sub, row.sub2 = res["pub"], res["sub"], res.get("sub2")
            print(f"  SDK: send {send_ms(row.pub):.2f} ms/frame ({fmt_ratio(send_ms(row.pub), row.raw.enc_ms)}x raw), "
                  f"receive {recv_ms(row.sub) or float('nan'):.2f} ms/frame ({fmt_ratio(recv_ms(row.sub), row.raw.dec_ms)}x raw); "
                  f"{sub_verdict(row.sub)}", flush=True)
            print(f"  publisher threads: {thread_breakdown(row.pub, row.pub['frames_in'], False)}", flush=True)
            print(f"  subscriber threads: {thread_breakdown(row.sub, row.sub['frames'], False)}", flush=True)
        except RuntimeError as exc:
            row.notes.append(f"{codec}: the SDK pipeline run failed: {exc}")
            print(f"  SDK run failed: {exc}", flush=True)
    if codec in AIORTC_CODECS and not args.no_aiortc:
        print(f"{codec}: raw PyAV loop with aiortc's codec contexts...", flush=True)
        actx, adecoder = aiortc_video_contexts(codec, args.bitrate, frames[0])
        row.aio_raw = raw_video("aiortc raw", actx, adecoder, frames, n_raw, args.fps, not args.unpaced, start=1)
        print(f"  aiortc raw: encode {row.aio_raw.enc_ms:.2f} ms/frame, decode+BGR {row.aio_raw.dec_ms:.2f} ms, "
              f"{row.aio_raw.mbps:.2f} Mbit/s", flush=True)
        print(f"{codec}: aiortc publisher -> hibiki serve -> aiortc subscriber, {args.seconds:.0f} s...", flush=True)
        try:
            res = run_pipeline("aiortc", codec, url, args)
            row.aio_pub, row.aio_sub = res["pub"], res["sub"]
            print(f"  aiortc: send {send_ms(row.aio_pub):.2f} ms/frame, receive {recv_ms(row.aio_sub) or float('nan'):.2f} ms/frame; "
                  f"{sub_verdict(row.aio_sub)}; target bitrate {row.aio_pub.get('target_bitrate')}", flush=True)
            print(f"  publisher threads: {thread_breakdown(row.aio_pub, row.aio_pub['frames_in'], False)}", flush=True)
            print(f"  subscriber threads: {thread_breakdown(row.aio_sub, row.aio_sub['frames'], False)}", flush=True)
        except RuntimeError as exc:
            row.notes.append(f"{codec}: the aiortc run failed: {exc}")
            print(f"  aiortc run failed: {exc}", flush=True)
    return row


@contextlib.contextmanager
def _through_ffmpeg() -> Iterator[None]:
    """Make the SDK's Opus classes open FFmpeg's libopus wrapper instead of driving libopus directly."""
    from hibiki.media import libopus

    load = libopus.load
    libopus.load = lambda: None
    try:
        yield
    finally:
        libopus.load = load


def sdk_audio_contexts(bitrate: int, first: np.ndarray) -> tuple[Any, Callable[[], Any]]:
    """The SDK's Opus encoder as a PyAV context (48 kHz stereo) and a maker of its decoder contexts.

    The SDK drives libopus directly; opened with libopus hidden, the same
    classes set FFmpeg's libopus wrapper up the same way (the packets are
    byte for byte the same: tests/test_audio.py), which is the raw PyAV loop.
    """
    from hibiki.media import AudioDecoder, AudioEncoder

    def decoder() -> Any:
        with _through_ffmpeg():
            return find_context(AudioDecoder("OPUS", 2), av.AudioCodecContext)

    with _through_ffmpeg():
        enc = AudioEncoder("OPUS", AUDIO_RATE, 2, bitrate)
    enc.encode(first)
    _keep.append(enc)
    return find_context(enc, av.AudioCodecContext), decoder


def raw_libopus(bitrate: int, chunks: list[np.ndarray], n: int) -> Raw:
    """The SDK's libopus encoder and decoder states, driven directly as the SDK does, in paced loops."""
    from hibiki.media import AudioDecoder, AudioEncoder, libopus

    enc = find_context(AudioEncoder("OPUS", AUDIO_RATE, 2, bitrate), libopus.Encoder)
    rate = AUDIO_RATE / AUDIO_FRAME
    packets: list[bytes] = []
    t = time.process_time()
    for i in _paced(n, rate, True):
        packets.append(enc.encode(chunks[i % len(chunks)]))
    enc_cpu = time.process_time() - t
    dec = find_context(AudioDecoder("OPUS", 2), libopus.Decoder)
    dec_cpu = 0.0
    for i in _paced(n, rate, True):
        t = time.process_time()
        dec.decode(packets[i])
        dec_cpu += time.process_time() - t
    return Raw("libopus", enc_ms=enc_cpu * 1e3 / n, dec_ms=dec_cpu * 1e3 / n, frames=n,
               encoder="libopus (ctypes)", decoder="libopus (ctypes)")


def measure_audio_floor(row: Row, args: argparse.Namespace, chunks: list[np.ndarray], n: int) -> None:
    """The SDK's codec path alone, then inside the thread shapes of pipeline_floor.py (no WebRTC)."""
    from hibiki.media import AudioDecoder, AudioEncoder

    row.direct = raw_libopus(args.audio_bitrate, chunks, n)
    enc = AudioEncoder("OPUS", AUDIO_RATE, 2, args.audio_bitrate)
    packets = [f.data for i in range(n) for f in enc.encode(chunks[i % len(chunks)])]
    for threads in (1, 3):
        enc = AudioEncoder("OPUS", AUDIO_RATE, 2, args.audio_bitrate)
        cpu = send_floor(lambda pcm: [f.data for f in enc.encode(pcm)], chunks, n, threads)
        row.floor[f"send {threads}"] = {k: v * 1e3 for k, v in cpu.items()}
    for threads in (1, 2, 3):
        dec = AudioDecoder("OPUS", 2)
        cpu = receive_floor(lambda data: [dec.decode(data)], packets, threads)
        row.floor[f"receive {threads}"] = {k: v * 1e3 for k, v in cpu.items()}
    print(f"  libopus direct: encode {row.direct.enc_ms * 1e3:.0f} us, decode {row.direct.dec_ms * 1e3:.0f} us; "
          + "; ".join(f"{k} thread(s) {sum(v.values()) * 1e3:.0f} us" for k, v in row.floor.items()), flush=True)


def run_audio(url: str, args: argparse.Namespace) -> Row:
    row = Row("OPUS")
    chunks = audio_chunks()
    n = int(args.raw_seconds * AUDIO_RATE / AUDIO_FRAME)
    row.raw = raw_audio("raw", *sdk_audio_contexts(args.audio_bitrate, chunks[0]), chunks, n, not args.unpaced)
    print(f"OPUS: raw encode {row.raw.enc_ms * 1e3:.0f} us/packet, decode {row.raw.dec_ms * 1e3:.0f} us "
          f"(right after the encode {row.raw.dec_after_enc_ms * 1e3:.0f} us), {row.raw.mbps * 1e3:.0f} kbit/s", flush=True)
    note = f"OPUS: raw decode right after each encode, in the same wake: {row.raw.dec_after_enc_ms * 1e3:.0f} us per packet"
    if not args.unpaced:
        hot = raw_audio("hot", *sdk_audio_contexts(args.audio_bitrate, chunks[0]), chunks, n, False)
        note += (f"; the raw loops run back to back (hot caches, not paced at 50 packets/s): encode "
                 f"{hot.enc_ms * 1e3:.0f} us, decode {hot.dec_ms * 1e3:.0f} us per packet")
    row.notes.append(note + ".")
    if not args.unpaced:
        measure_audio_floor(row, args, chunks, n)
    try:
        res = run_pipeline("hibiki", "OPUS", url, args)
        row.pub, row.sub = res["pub"], res["sub"]
        # The callback subscriber runs on its own, after: two receivers side
        # by side on 2 cores preempt each other at every packet (both were
        # scheduled in twice as often), which for a 20 ms Opus packet costs
        # as much as the difference being measured.
        try:
            row.sub2 = run_pipeline("hibiki", "OPUS", url, args, sub=["--callback"])["sub"]
        except RuntimeError as exc:
            row.notes.append(f"OPUS: the on_frame subscriber's run failed: {exc}")
        print(f"  SDK: send {(send_ms(row.pub) or 0) * 1e3:.0f} us/packet, receive {(recv_ms(row.sub) or 0) * 1e3:.0f} us "
              f"(in on_frame: {(recv_ms(row.sub2) or 0) * 1e3:.0f} us); {sub_verdict(row.sub)}", flush=True)
        print(f"  publisher threads: {thread_breakdown(row.pub, row.pub['frames_in'], True)}", flush=True)
        print(f"  subscriber threads: {thread_breakdown(row.sub, row.sub['frames'], True)}", flush=True)
    except RuntimeError as exc:
        row.notes.append(f"OPUS: the SDK pipeline run failed: {exc}")
        print(f"  SDK run failed: {exc}", flush=True)
    if not args.no_aiortc:
        from aiortc.codecs.opus import OpusDecoder, OpusEncoder

        patch_aiortc_bitrate(args.bitrate, args.audio_bitrate)
        row.aio_raw = raw_audio("aiortc raw", OpusEncoder().codec, lambda: OpusDecoder().codec, chunks, n,
                                not args.unpaced)
        try:
            res = run_pipeline("aiortc", "OPUS", url, args)
            row.aio_pub, row.aio_sub = res["pub"], res["sub"]
            print(f"  aiortc: send {(send_ms(row.aio_pub) or 0) * 1e3:.0f} us/packet, receive {(recv_ms(row.aio_sub) or 0) * 1e3:.0f} us; "
                  f"{sub_verdict(row.aio_sub)}", flush=True)
        except RuntimeError as exc:
            row.notes.append(f"OPUS: the aiortc run failed: {exc}")
            print(f"  aiortc run failed: {exc}", flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
