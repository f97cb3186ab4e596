"""B1 fan-out: one publisher to N subscribers through one SFU shard on loopback.

The publisher sends a pre-encoded 720p VP8 loop (~1.5 Mbit/s, 30 fps) and
20 ms Opus packets; N recvonly subscribers receive everything. We measure the
CPU time of the shard thread alone (user + system, so the kernel's loopback
send and receive are included) and divide by the packets it sent, giving
CPU microseconds per egress packet.

The peer figure measured in the same run is the floor: a tight loop of plain
``sendto`` calls of the same packet size on the same machine, which is the
kernel's share of what any SFU pays per egress packet (without SRTP).

Run: ``.venv/bin/python benches/fanout.py --subscribers 1 5 10 20 --seconds 10``
Results are appended to BENCHMARKS.md with ``--write``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hibiki import _core
from hibiki.media import AudioEncoder, VideoEncoder
from hibiki.media.testsrc import test_pattern, tone


def thread_cpu_seconds(name: str) -> float:
    """CPU seconds (user + system) of this process's threads called ``name``."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            if comm != name[:15]:
                continue
            # schedstat: nanoseconds on CPU (user + kernel), unlike the
            # 10 ms ticks of /proc/.../stat.
            total += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except FileNotFoundError:
            continue
    return total


def pre_encode(seconds: float, fps: int) -> list[tuple[bytes, int]]:
    """A loop of encoded 720p VP8 frames (data, rtp_time step)."""
    enc = VideoEncoder("VP8", bitrate=1_500_000, framerate=fps)
    frames = []
    rng = np.random.default_rng(1)
    for i in range(int(seconds * fps)):
        # Camera-like noise so the encoder spends its bitrate like on real video.
        img = test_pattern(i, 1280, 720)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        for f in enc.encode(img, i * 90_000 // fps, force_keyframe=(i == 0)):
            frames.append(f.data)
    return frames


@dataclass
class Result:
    subscribers: int
    seconds: float
    egress_packets: int
    shard_cpu_s: float

    @property
    def us_per_packet(self) -> float:
        return self.shard_cpu_s * 1e6 / max(self.egress_packets, 1)

    @property
    def cpu_share(self) -> float:
        return self.shard_cpu_s / self.seconds

    @property
    def subscribers_per_core(self) -> float:
        # Linear model: CPU grows with subscribers; budget is 85 % of a core.
        return 0.85 * self.subscribers / max(self.cpu_share, 1e-9)


def run(n_subs: int, seconds: float, video: list[bytes], fps: int) -> Result:
    sfu = _core.Sfu("127.0.0.1", 0)
    eng = _core.ClientEngine()
    handles: dict[str, str] = {}

    def join(cid: str, send: bool) -> tuple[str, str | None, str | None]:
        c = sfu.create_connection("bench", cid, send_audio=send, send_video=send, recv=not send)
        h, answer = eng.connect(c.sdp)
        sfu.accept_answer(cid, answer)
        handles[cid] = h
        return h, c.audio_mid, c.video_mid

    def pump() -> int:
        frames = 0
        for e in sfu.poll_events():
            if e.kind == "offer":
                sfu.accept_answer(e.connection, eng.accept_offer(handles[e.connection], e.sdp))
        for e in eng.poll_events(4096):
            if e.kind == "frame":
                frames += 1
        return frames

    pub, amid, vmid = join("PUB", True)
    subs = [join(f"SUB{i}", False)[0] for i in range(n_subs)]
    assert vmid and amid
    # Warm up until every subscriber is connected and receiving.
    audio = AudioEncoder("OPUS", 48_000, 1)
    opus = [f.data for f in audio.encode(tone(440, 48_000, 1, 0, 48_000))]
    deadline = time.monotonic() + 15
    i = 0
    received = 0
    t_next = time.monotonic()
    started = None
    cpu0 = tx0 = 0.0
    while True:
        now = time.monotonic()
        if now >= t_next:
            eng.write_frame(pub, vmid, "VP8", video[i % len(video)], i * 90_000 // fps)
            for k in range(2):  # two 20 ms audio packets per ~33 ms tick, roughly
                j = i * 2 + k
                eng.write_frame(pub, amid, "OPUS", opus[j % len(opus)], j * 960)
            i += 1
            t_next += 1 / fps
        received += pump()
        if started is None:
            if received >= n_subs * 10:
                started = time.monotonic()
                cpu0 = thread_cpu_seconds("hibiki-shard-0")
                tx0 = sum(s.tx_packets for s in sfu.stats())
            elif now > deadline:
                raise RuntimeError("subscribers did not start receiving")
        elif now - started >= seconds:
            break
        time.sleep(max(0.0, min(0.002, t_next - time.monotonic())))
    elapsed = time.monotonic() - started
    cpu = thread_cpu_seconds("hibiki-shard-0") - cpu0
    tx = sum(s.tx_packets for s in sfu.stats()) - tx0
    for h in [pub, *subs]:
        eng.close_connection(h)
    eng.close()
    sfu.close()
    return Result(n_subs, elapsed, int(tx), cpu)


def sendto_floor(size: int = 1200, count: int = 200_000) -> float:
    """CPU microseconds per plain loopback sendto of ``size`` bytes."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"\x80" * size
    addr = rx.getsockname()
    t0 = time.thread_time()
    for k in range(count):
        tx.sendto(payload, addr)
        if k % 64 == 63:
            try:
                while True:
                    rx.recv(2048)
            except BlockingIOError:
                pass
    return (time.thread_time() - t0) * 1e6 / count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()

    video = pre_encode(4.0, args.fps)
    mbps = sum(len(v) for v in video) * 8 / 4.0 / 1e6
    floor = statistics.median(sendto_floor() for _ in range(3))
    rows = []
    for n in args.subscribers:
        r = run(n, args.seconds, video, args.fps)
        rows.append(r)
        print(
            f"N={n:3d}  egress {r.egress_packets / r.seconds:8.0f} pkt/s  shard CPU {100 * r.cpu_share:5.1f} %  "
            f"{r.us_per_packet:6.2f} us/pkt  ({r.us_per_packet / floor:4.1f}x sendto floor)  "
            f"~{r.subscribers_per_core:5.0f} subscribers/core at 85 %",
            flush=True,
        )
    print(f"sendto floor (python loop, kernel + interpreter): {floor:.2f} us/pkt; video loop {mbps:.2f} Mbit/s")
    if args.write:
        cmd = "python benches/fanout.py " + " ".join(sys.argv[1:])
        lines = [
            "",
            f"### B1 fan-out ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
            "",
            f"Command: `{cmd.replace(' --write', '')}`",
            "",
            f"Publisher: pre-encoded 720p VP8 loop at {mbps:.2f} Mbit/s, {args.fps} fps, plus Opus. "
            f"Peer in the same run: plain loopback `sendto` floor {floor:.2f} us/packet.",
            "",
            "| subscribers | egress pkt/s | shard CPU | us / egress pkt | ratio to sendto floor | subscribers/core at 85 % |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r.subscribers} | {r.egress_packets / r.seconds:.0f} | {100 * r.cpu_share:.1f} % | "
                f"{r.us_per_packet:.2f} | {r.us_per_packet / floor:.1f}x | {r.subscribers_per_core:.0f} |"
            )
        with open(Path(__file__).resolve().parent.parent / "BENCHMARKS.md", "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
