"""What the client engine thread costs a voice agent: Opus sent and received on one connection.

A real ``hibiki serve`` runs as a subprocess; two peer processes join one
channel with ``role="sendrecv"``, audio only, each sending a 440 Hz tone
through ``AudioSource.on_data`` at 50 packets/s and taking the other's
frames in ``AudioStreamSink.on_frame``. After a warm-up each peer reads its
engine thread's CPU time and scheduler runs (``/proc/self/task/*/schedstat``)
over the window and prints them per packet sent. The engine is the only
thread measured: it is what ``crates/engine/src/client/slack.rs`` changes
(B6 in BENCHMARKS.md covers the whole process of a sender and a receiver).

Run: ``.venv/bin/python benches/voice_engine.py`` (``--runs 3`` for more).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def engine_thread() -> tuple[float, int]:
    """(CPU seconds, times scheduled in) of this process's client engine thread."""
    from media_cpu_peer import thread_cpu

    for name, cpu, runs in thread_cpu().values():
        if name.startswith("hibiki-client"):
            return cpu, runs
    raise RuntimeError("no hibiki-client engine thread in this process")


def peer(url: str, channel: str, warmup: float, seconds: float) -> None:
    """One sendrecv audio peer; prints its engine figures as one line."""
    import hibiki
    from media_cpu_peer import audio_chunks

    chunks = audio_chunks()
    sdk = hibiki.Hibiki()
    source = sdk.create_audio_source(2, 48000)
    received = [0]
    sinks: list[Any] = []

    def on_track(track: Any) -> None:
        if track.kind == "audio":
            sink = hibiki.AudioStreamSink(track)
            sink.on_frame = lambda frame: received.__setitem__(0, received[0] + 1)
            sinks.append(sink)

    conn = sdk.create_connection([url], role="sendrecv", channel_id=channel, audio_source=source,
                                 audio=True, video=False)
    conn.on_track = on_track
    conn.connect()
    sent = 0
    start: tuple[tuple[float, int], int, int] | None = None
    t0 = next_at = time.monotonic()
    while time.monotonic() - t0 < warmup + seconds:
        source.on_data(chunks[sent % len(chunks)])
        sent += 1
        if start is None and time.monotonic() - t0 >= warmup:
            start = (engine_thread(), received[0], sent)
        next_at += 0.02
        time.sleep(max(0.0, next_at - time.monotonic()))
    assert start is not None
    (cpu1, runs1), (cpu0, runs0) = engine_thread(), start[0]
    n, got = sent - start[2], received[0] - start[1]
    conn.disconnect()
    if got < n * 0.9:
        raise SystemExit(f"received {got} of the other peer's {n} packets")
    print(f"sent {n}, received {got}: engine {(cpu1 - cpu0) * 1e6 / n:.0f} us and "
          f"{(runs1 - runs0) / n:.2f} wake-ups per packet sent", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--peer", nargs=2, metavar=("URL", "CHANNEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    if args.peer:
        peer(*args.peer, args.warmup, args.seconds)
        return 0
    from join_time import start_server

    proc, url = start_server()
    try:
        for run in range(args.runs):
            cmd = [sys.executable, __file__, "--peer", url, f"voice-{run}", "--warmup", str(args.warmup),
                   "--seconds", str(args.seconds)]
            peers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
            for i, p in enumerate(peers):
                out, _ = p.communicate(timeout=args.warmup + args.seconds + 60)
                print(f"run {run + 1}, peer {i + 1}: {out.strip()}", flush=True)
                if p.returncode:
                    return p.returncode
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
