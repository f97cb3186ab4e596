"""B3 meeting: N participants, each publishing simulcast and receiving everyone else, through one SFU shard.

Every participant sends a pre-encoded VP8 simulcast loop (r0 320x180, r1
640x360, r2 1280x720, camera-like noise, a keyframe every second) and 20 ms
Opus packets, and receives the N-1 others with a grid policy: one of them
(the next participant, as if pinned) at r2, the rest at r0. We measure the
shard thread's CPU (user + system, /proc schedstat), what it sends, and at
the receivers every video frame's arrival, counting freezes (an arrival gap
over max(3 frame intervals, 1 interval + 150 ms), the W3C ``freezeCount``
rule).

The peer in the same run is B1's case at the same fan-out: one publisher of
the r2 loop without simulcast to N-1 subscribers (benches/fanout.py's
workload). A consumer is one participant's receipt of another's audio and
video (B1: one subscriber); "CPU per consumer" is the shard's CPU divided by
them, the issue's figure. CPU per egress packet is given beside it: a
simulcast publisher sends three layers where one is forwarded, so per packet
the meeting pays more for its ingress.

Run: ``.venv/bin/python benches/meeting.py --participants 4 8 16 --seconds 20``
(``--write`` appends the table to BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fanout import thread_cpu_seconds
from hibiki import _core
from hibiki.media import AudioEncoder, VideoEncoder
from hibiki.media.testsrc import test_pattern, tone
from hibiki.simulcast import RIDS

LAYERS = {"r0": (320, 180, 150_000), "r1": (640, 360, 500_000), "r2": (1280, 720, 1_500_000)}
SHARD = "hibiki-shard-0"


def pre_encode(seconds: float, fps: int) -> dict[str, list[bytes]]:
    """A loop of encoded VP8 frames per layer, all from the same pictures, keyframes every second."""
    encoders = {rid: VideoEncoder("VP8", bitrate=rate, framerate=fps) for rid, (_, _, rate) in LAYERS.items()}
    loops: dict[str, list[bytes]] = {rid: [] for rid in LAYERS}
    rng = np.random.default_rng(1)
    for i in range(int(seconds * fps)):
        img = test_pattern(i, 1280, 720)
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape, dtype=np.int16), 0, 255)
        img = img.astype(np.uint8)
        for rid, (w, h, _) in LAYERS.items():
            frames = encoders[rid].encode(img, i * 90_000 // fps, force_keyframe=(i % fps == 0), size=(w, h))
            loops[rid].append(b"".join(f.data for f in frames))
    return loops


@dataclass
class Receipts:
    """Arrival times of each received video stream, for freezes."""

    last: dict[tuple[str, str], float] = field(default_factory=dict)
    gaps: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    bytes: int = 0
    after_loss: int = 0
    """Frames the receivers' engine marked non-contiguous (packets were lost before them)."""

    def frame(self, handle: str, mid: str, size: int, now: float) -> None:
        key = (handle, mid)
        if key in self.last:
            self.gaps.setdefault(key, []).append(now - self.last[key])
        self.last[key] = now
        self.bytes += size

    def freezes(self, fps: int) -> int:
        interval = 1.0 / fps
        limit = max(3 * interval, interval + 0.150)
        return sum(1 for gaps in self.gaps.values() for g in gaps if g > limit)


@dataclass
class Result:
    label: str
    participants: int
    seconds: float
    consumers: int
    egress_packets: int
    shard_cpu_s: float
    receipts: Receipts
    fps: int
    client_engine_share: float = 0.0
    """The client engine thread hosting every participant: a share of one core."""
    python_share: float = 0.0
    """The benchmark's own Python (writing frames, reading events)."""
    send_dropped: int = 0
    """Datagrams the shard dropped on a full socket send buffer."""

    @property
    def us_per_packet(self) -> float:
        return self.shard_cpu_s * 1e6 / max(self.egress_packets, 1)

    @property
    def cpu_share(self) -> float:
        return self.shard_cpu_s / self.seconds

    @property
    def cpu_per_consumer(self) -> float:
        """Percent of a core per consumer (one participant's audio and video to one other)."""
        return 100 * self.cpu_share / max(self.consumers, 1)

    @property
    def egress_mbps(self) -> float:
        """Video payload delivered to the receivers, Mbit/s."""
        return self.receipts.bytes * 8 / self.seconds / 1e6

    @property
    def freezes_per_minute(self) -> float:
        return self.receipts.freezes(self.fps) * 60 / self.seconds


def run(n: int, seconds: float, loops: dict[str, list[bytes]], opus: list[bytes], fps: int,
        simulcast: bool) -> Result:
    """The meeting (``simulcast``) or B1's fan-out at the same size (one r2 publisher to n-1 subscribers)."""
    sfu = _core.Sfu("127.0.0.1", 0)
    eng = _core.ClientEngine()
    handles: dict[str, str] = {}
    ids: list[str] = []
    mids: dict[str, tuple[str | None, str | None]] = {}
    publishers = range(n) if simulcast else range(1)

    for i in range(n):
        cid = f"P{i:02d}"
        sends = i in publishers
        c = sfu.create_connection(
            "meeting", cid, send_audio=sends, send_video=sends, recv=simulcast or i > 0,
            simulcast_rids=list(RIDS) if simulcast else None, simulcast_layer=0)
        h, answer = eng.connect(c.sdp)
        sfu.accept_answer(cid, answer)
        handles[cid] = h
        ids.append(cid)
        mids[cid] = (c.audio_mid, c.video_mid)
    # As the SDK does: let each publisher's bandwidth estimator probe for what
    # it sends, or its pacer holds keyframes back.
    sent_bps = sum(LAYERS[rid][2] for rid in RIDS) if simulcast else LAYERS["r2"][2]
    for p in publishers:
        eng.set_desired_bitrate(handles[ids[p]], int(sent_bps * 1.5) + 64_000)
    if simulcast:
        # Grid: everyone at r0, the next participant (the pinned tile) at r2.
        for i, cid in enumerate(ids):
            sfu.set_simulcast_layer(cid, ids[(i + 1) % n], 2)

    receipts = Receipts()

    estimates: dict[str, int] = {}

    def pump(now: float, measuring: bool) -> int:
        frames = 0
        for e in sfu.poll_events():
            if e.kind == "offer" and e.sdp is not None:
                sfu.accept_answer(e.connection, eng.accept_offer(handles[e.connection], e.sdp))
        for e in eng.poll_events(8192):
            if e.kind == "bitrate":
                estimates[e.connection] = int(e.bitrate or 0)
            elif e.kind == "frame" and e.media == "video":
                frames += 1
                if measuring:
                    receipts.frame(e.connection, e.mid or "", len(e.data or b""), now)
                    if e.contiguous is False:
                        receipts.after_loss += 1
        return frames

    video_consumers = len(publishers) * (n - 1)
    consumers = video_consumers  # each with its audio
    i = 0
    t_next = time.monotonic()
    deadline = t_next + 60
    received = 0
    started: float | None = None
    cpu0 = tx0 = dropped0 = 0.0
    while True:
        now = time.monotonic()
        if now >= t_next:
            for p in publishers:
                cid = ids[p]
                amid, vmid = mids[cid]
                assert amid and vmid
                if simulcast:
                    # Each publisher at its own point of the loop: cameras do
                    # not send their keyframes in step.
                    k = i + p * 7
                    for rid in RIDS:
                        eng.write_frame(handles[cid], vmid, "VP8", loops[rid][k % len(loops[rid])],
                                        i * 90_000 // fps, None, rid)
                else:
                    eng.write_frame(handles[cid], vmid, "VP8", loops["r2"][i % len(loops["r2"])], i * 90_000 // fps)
                for k in range(round(50 / fps * (i + 1)) - round(50 / fps * i)):  # 20 ms packets
                    j = round(50 / fps * i) + k
                    eng.write_frame(handles[cid], amid, "OPUS", opus[j % len(opus)], j * 960, None, None, -30)
            i += 1
            t_next += 1 / fps
        received += pump(now, started is not None)
        if started is None:
            # Every video consumer has frames, and a second has passed for the
            # pinned tiles to reach r2.
            # Measure the SFU, not a publisher pacing what it sends above its
            # own bandwidth estimate (the SDK's encoders would follow the
            # estimate; these pre-encoded loops cannot): wait until every
            # publisher's estimate carries its layers.
            ready = all(estimates.get(handles[ids[p]], 0) >= sent_bps * 1.1 for p in publishers)
            if received >= video_consumers * fps * 2 and ready:
                started = time.monotonic()
                cpu0 = thread_cpu_seconds(SHARD)
                client0 = thread_cpu_seconds("hibiki-client-engine")
                proc0 = time.process_time()
                tx0 = sum(s.tx_packets for s in sfu.stats())
                dropped0 = sum(s.send_dropped for s in sfu.stats())
            elif now > deadline:
                raise RuntimeError(f"only {received} frames received and estimates {estimates} after 60 s")
        elif now - started >= seconds:
            break
        time.sleep(max(0.0, min(0.002, t_next - time.monotonic())))
    elapsed = time.monotonic() - started
    cpu = thread_cpu_seconds(SHARD) - cpu0
    client_cpu = thread_cpu_seconds("hibiki-client-engine") - client0
    proc_cpu = time.process_time() - proc0
    tx = sum(s.tx_packets for s in sfu.stats()) - tx0
    dropped = sum(s.send_dropped for s in sfu.stats()) - dropped0
    for h in handles.values():
        eng.close_connection(h)
    eng.close()
    sfu.close()
    label = "meeting, simulcast grid" if simulcast else "B1 fan-out, same size"
    return Result(label, n, elapsed, consumers, int(tx), cpu, receipts, fps, client_cpu / elapsed,
                  (proc_cpu - cpu - client_cpu) / elapsed, int(dropped))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--write", action="store_true", help="append the results to BENCHMARKS.md")
    args = ap.parse_args()

    loops = pre_encode(4.0, args.fps)
    rates = {rid: sum(map(len, frames)) * 8 / 4.0 / 1e6 for rid, frames in loops.items()}
    opus = [f.data for f in AudioEncoder("OPUS", 48_000, 1).encode(tone(440, 48_000, 1, 0, 48_000))]
    rows: list[tuple[Result, Result]] = []
    for n in args.participants:
        meeting = run(n, args.seconds, loops, opus, args.fps, simulcast=True)
        peer = run(n, args.seconds, loops, opus, args.fps, simulcast=False)
        rows.append((meeting, peer))
        for r in (meeting, peer):
            print(f"N={n:2d} {r.label:24s} consumers {r.consumers:4d}  shard CPU {100 * r.cpu_share:5.1f} %  "
                  f"{r.cpu_per_consumer:.3f} %/consumer  {r.us_per_packet:6.2f} us/pkt  "
                  f"egress {r.egress_mbps:6.1f} Mbit/s  freezes {r.freezes_per_minute:.1f}/min  "
                  f"(clients' engine {100 * r.client_engine_share:.0f} %, python {100 * r.python_share:.0f} %, "
                  f"{r.send_dropped} send drops)",
                  flush=True)
        print(f"      meeting / B1: CPU per consumer {meeting.cpu_per_consumer / peer.cpu_per_consumer:.2f}, "
              f"per egress packet {meeting.us_per_packet / peer.us_per_packet:.2f}", flush=True)
    layer_rates = ", ".join(f"{rid} {rate:.2f}" for rid, rate in rates.items())
    print(f"layer loops (Mbit/s): {layer_rates}")
    if args.write:
        cmd = "python benches/meeting.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        lines = [
            "",
            "<!-- B3:begin -->",
            f"### B3 meeting with simulcast ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
            "",
            f"Command: `{cmd}`, with `_core` built by `maturin develop --release`.",
            "",
            f"Each participant publishes VP8 simulcast ({layer_rates} Mbit/s, {args.fps} fps, keyframe every "
            "second) and Opus, and receives every other participant: one at r2 (the pinned tile), the rest at "
            "r0. Peer in the same run: B1's fan-out at the same size (one r2 publisher, N-1 subscribers). "
            "Shard CPU from /proc schedstat; freezes are video arrival gaps over max(3 frame intervals, "
            "1 interval + 150 ms), counted at the receivers.",
            "",
            "| N | consumers | shard CPU | CPU per consumer (% of a core) | B1 per subscriber, same run "
            "| ratio (target <= 1.2) | us / egress pkt | B1 us / egress pkt | ratio per packet "
            "| egress video Mbit/s | freezes / min (target 0) | frames after a loss |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m, p in rows:
            lines.append(
                f"| {m.participants} | {m.consumers} | {100 * m.cpu_share:.1f} % | {m.cpu_per_consumer:.3f} "
                f"| {p.cpu_per_consumer:.3f} | {m.cpu_per_consumer / p.cpu_per_consumer:.2f} "
                f"| {m.us_per_packet:.2f} | {p.us_per_packet:.2f} | {m.us_per_packet / p.us_per_packet:.2f} "
                f"| {m.egress_mbps:.1f} | {m.freezes_per_minute:.1f} | {m.receipts.after_loss} |"
            )
        lines.append("<!-- B3:end -->")
        path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
        text = path.read_text()
        if "<!-- B3:begin -->" in text:
            head, rest = text.split("<!-- B3:begin -->", 1)
            text = head.rstrip("\n") + "\n" + rest.split("<!-- B3:end -->", 1)[1].lstrip("\n")
        path.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
