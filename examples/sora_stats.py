"""stats: publish and receive, and print ``get_stats()`` every second, sora-sdk style.

A sora-sdk program: only the import says Hibiki. Change
``hibiki.compat.sora_sdk`` to ``sora_sdk`` and it runs on the official SDK.

    hibiki serve &
    python examples/sora_stats.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id sora

``get_stats()`` returns a JSON array of W3C RTCStats objects (``codec``,
``outbound-rtp``, ``inbound-rtp``, ``transport``...). Each second this prints
one line ``{"event": "stats", "report": [...]}`` with the whole array, and a
short summary of the RTP entries on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from hibiki.compat.sora_sdk import Sora, SoraSignalingErrorCode
from hibiki.media.testsrc import test_pattern, tone

SAMPLE_RATE = 48000


_stdout_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout.

    Callbacks run on the SDK's threads: the lock keeps their lines whole
    (``print`` writes the text and its newline separately).
    """
    line = json.dumps({"event": event, **fields})
    with _stdout_lock:
        print(line, flush=True)


def summary(report: list[dict[str, Any]]) -> str:
    """One human line: bytes and frames per RTP stream."""
    parts = []
    for stats in report:
        if stats.get("type") in ("outbound-rtp", "inbound-rtp"):
            direction = "out" if stats["type"] == "outbound-rtp" else "in"
            count = stats.get("bytesSent", stats.get("bytesReceived"))
            frames = stats.get("framesEncoded", stats.get("framesDecoded"))
            parts.append(f"{direction}/{stats.get('kind')}: {count} B" + (f", {frames} frames" if frames else ""))
    return "; ".join(parts) or "no RTP streams yet"


class Stats:
    def __init__(self, signaling_urls: list[str], channel_id: str, role: str) -> None:
        self._role = role
        self._sora = Sora()
        sources: dict[str, Any] = {}
        self._video_source = self._audio_source = None
        if role != "recvonly":
            self._video_source = self._sora.create_video_source()
            self._audio_source = self._sora.create_audio_source(1, SAMPLE_RATE)
            sources = {"video_source": self._video_source, "audio_source": self._audio_source}
        self._connection = self._sora.create_connection(
            signaling_urls=signaling_urls,
            role=role,
            channel_id=channel_id,
            audio=True,
            video=True,
            **sources,
        )
        self._connection.on_set_offer = self._on_set_offer
        self._connection.on_notify = self._on_notify
        self._connection.on_disconnect = self._on_disconnect
        self._connection_id: str | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()

    def _on_set_offer(self, raw_offer: str) -> None:
        offer = json.loads(raw_offer)
        if offer["type"] == "offer":
            self._connection_id = offer["connection_id"]

    def _on_notify(self, raw_message: str) -> None:
        message = json.loads(raw_message)
        if (
            message["type"] == "notify"
            and message["event_type"] == "connection.created"
            and message["connection_id"] == self._connection_id
        ):
            self._connected.set()

    def _on_disconnect(self, error_code: SoraSignalingErrorCode, message: str) -> None:
        emit("disconnected", code=error_code.name, message=message)
        self._closed.set()

    def _publish(self) -> None:
        # 320x240 at 15 fps and a 440 Hz tone, paced by the clock.
        assert self._video_source is not None and self._audio_source is not None
        counter = start = 0
        chunk = SAMPLE_RATE // 100
        next_video = next_audio = time.monotonic()
        while not self._closed.is_set():
            now = time.monotonic()
            if now >= next_video:
                self._video_source.on_captured(test_pattern(counter, 320, 240))
                counter += 1
                next_video += 1 / 15
            if now >= next_audio:
                self._audio_source.on_data(tone(440.0, SAMPLE_RATE, 1, start, chunk))
                start += chunk
                next_audio += chunk / SAMPLE_RATE
            time.sleep(max(0.0, min(next_video, next_audio) - time.monotonic()))

    def run(self, duration: float) -> int:
        self._connection.connect()
        if not self._connected.wait(10):
            emit("error", message="not connected within 10 s")
            self._connection.disconnect()
            return 1
        emit("connected", connection_id=self._connection_id)
        if self._role != "recvonly":
            threading.Thread(target=self._publish, daemon=True).start()
        deadline = time.monotonic() + duration
        try:
            while not self._closed.is_set() and time.monotonic() < deadline:
                self._closed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                report = json.loads(self._connection.get_stats())
                emit("stats", report=report)
                print(summary(report), file=sys.stderr, flush=True)
        finally:
            self._connection.disconnect()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling-url", action="append", required=True,
                        help="signaling URL (repeat it for several)")
    parser.add_argument("--channel-id", required=True)
    parser.add_argument("--role", choices=("sendrecv", "sendonly", "recvonly"), default="sendrecv")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    args = parser.parse_args()
    return Stats(args.signaling_url, args.channel_id, args.role).run(args.duration)


if __name__ == "__main__":
    sys.exit(main())
