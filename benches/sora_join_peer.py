"""The peer side of benches/join_time.py: the official sora-sdk client joins.

Runs in its own process (as every sora-sdk client in this project does):
``python benches/sora_join_peer.py URL CHANNEL JOINS`` joins CHANNEL JOINS
times as recvonly, each timed from ``connect()`` to the first frame its
``SoraVideoSink`` delivers, and prints one JSON line per join.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from sora_sdk import Sora, SoraVideoSink


def main() -> int:
    url, channel, joins = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sora = Sora()
    for _ in range(joins):
        first = threading.Event()
        closed = threading.Event()
        conn = sora.create_connection(signaling_urls=[url], role="recvonly", channel_id=channel, audio=False, video=True)
        sinks = []

        def on_track(track, first=first, sinks=sinks):  # type: ignore[no-untyped-def]
            if track.kind == "video":
                sink = SoraVideoSink(track)
                sink.on_frame = lambda frame: first.set()
                sinks.append(sink)

        conn.on_track = on_track
        conn.on_disconnect = lambda code, msg, closed=closed: closed.set()
        t0 = time.perf_counter()
        conn.connect()
        ok = first.wait(10)
        ms = (time.perf_counter() - t0) * 1000
        print(json.dumps({"ok": ok, "ms": ms}), flush=True)
        conn.disconnect()
        closed.wait(5)
        del sinks[:]
    return 0


if __name__ == "__main__":
    sys.exit(main())
