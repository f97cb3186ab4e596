"""Join time: ``connect()`` to the first decoded video frame at a subscriber.

A real ``hibiki serve`` runs as a subprocess; one publisher sends the 720p
test pattern at 30 fps; then ``--joins`` recvonly subscribers join one after
another, each timed from the call to ``connect()`` until its first decoded
frame reaches a ``VideoSink``, and leave again.

Run: ``.venv/bin/python benches/join_time.py --joins 50`` (``--write``
appends the figures to BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import hibiki
from hibiki.media.testsrc import test_pattern


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hibiki", "serve", "--port", str(port), "--log-level", "warning", "--database", ":memory:"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc, f"ws://127.0.0.1:{port}/signaling"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("hibiki serve did not start")


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--joins", type=int, default=50)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--no-peer", action="store_true", help="skip the sora-sdk client peer run")
    args = ap.parse_args()

    proc, url = start_server()
    sdk = hibiki.Hibiki()
    camera = sdk.create_video_source()
    publisher = sdk.create_connection([url], role="sendonly", channel_id="join-bench", video_source=camera, audio=False)
    publisher.connect()
    stop = threading.Event()

    def capture() -> None:
        n = 0
        frames = [test_pattern(i, 1280, 720) for i in range(30)]
        next_t = time.monotonic()
        while not stop.is_set():
            camera.on_captured(frames[n % 30])
            n += 1
            next_t += 1 / 30
            time.sleep(max(0.0, next_t - time.monotonic()))

    threading.Thread(target=capture, daemon=True).start()
    times: list[float] = []
    failures = 0
    try:
        for _ in range(args.joins):
            first = threading.Event()
            conn = sdk.create_connection([url], role="recvonly", channel_id="join-bench")
            sinks = []

            def on_track(track: hibiki.MediaTrack) -> None:
                if track.kind == "video":
                    sink = hibiki.VideoSink(track)
                    sink.on_frame = lambda frame: first.set()
                    sinks.append(sink)

            conn.on_track = on_track
            t0 = time.perf_counter()
            conn.connect()
            if first.wait(10):
                times.append((time.perf_counter() - t0) * 1000)
            else:
                failures += 1
            conn.disconnect()
        peer: list[float] = []
        peer_failures = 0
        if not args.no_peer:
            # The same joins by the official sora-sdk client (libwebrtc), in
            # its own process, against the same server and publisher.
            out = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("sora_join_peer.py")), url, "join-bench", str(args.joins)],
                capture_output=True,
                text=True,
                timeout=30 + 15 * args.joins,
            )
            for line in out.stdout.splitlines():
                row = json.loads(line)
                if row["ok"]:
                    peer.append(row["ms"])
                else:
                    peer_failures += 1
    finally:
        stop.set()
        publisher.disconnect()
        proc.terminate()
        proc.wait(10)

    p50, p95 = statistics.median(times), percentile(times, 95)
    print(f"hibiki SDK: joins {len(times)} ok, {failures} failed; connect() -> first decoded frame: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {max(times):.0f} ms")
    rows = [("Hibiki SDK", times, failures)]
    if peer:
        q50, q95 = statistics.median(peer), percentile(peer, 95)
        print(f"sora-sdk:   joins {len(peer)} ok, {peer_failures} failed; p50 {q50:.0f} ms, p95 {q95:.0f} ms; ratio hibiki/sora p50 {p50 / q50:.2f}")
        rows.append(("sora-sdk 2025.4.0 (peer)", peer, peer_failures))
    if args.write:
        cmd = "python benches/join_time.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        text = "\n".join(
            [
                "",
                f"### Join time ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
                "",
                f"Command: `{cmd}`",
                "",
                "| client | joins | failed | p50 | p95 | max |",
                "|---|---|---|---|---|---|",
                *[
                    f"| {name} | {len(t)} | {f} | {statistics.median(t):.0f} ms | {percentile(t, 95):.0f} ms | {max(t):.0f} ms |"
                    for name, t, f in rows
                ],
                "",
            ]
        )
        if peer:
            text += f"Ratio of p50 join times, Hibiki SDK / sora-sdk: {p50 / statistics.median(peer):.2f}\n"
        with open(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", "a") as fh:
            fh.write(text)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
