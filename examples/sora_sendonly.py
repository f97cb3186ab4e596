"""sendonly: publish a test pattern and a tone, sora-sdk style.

A sora-sdk program: only the import says Hibiki. Change
``hibiki.compat.sora_sdk`` to ``sora_sdk`` and it runs on the official SDK.

    hibiki serve &
    python examples/sora_sendonly.py --signaling-url ws://127.0.0.1:5000/signaling \\
        --channel-id sora --duration 10

Video: ``hibiki.media.testsrc.test_pattern`` pictures (colour bars and a
frame counter that ``sora_recvonly.py`` reads back). Audio: a sine tone
(440 Hz by default) as 16-bit PCM in 10 ms chunks. Prints one JSON object per
line: ``connected``, ``sent`` once a second, then ``disconnected``.
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

_stdout_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout.

    Callbacks run on the SDK's threads: the lock keeps their lines whole
    (``print`` writes the text and its newline separately).
    """
    line = json.dumps({"event": event, **fields})
    with _stdout_lock:
        print(line, flush=True)


class SendOnly:
    def __init__(
        self,
        signaling_urls: list[str],
        channel_id: str,
        width: int,
        height: int,
        fps: float,
        frequency: float,
        sample_rate: int = 48000,
        channels: int = 1,
    ) -> None:
        self._width, self._height, self._fps = width, height, fps
        self._frequency, self._sample_rate, self._channels = frequency, sample_rate, channels

        self._sora = Sora()
        self._video_source = self._sora.create_video_source()
        self._audio_source = self._sora.create_audio_source(channels, sample_rate)
        self._connection = self._sora.create_connection(
            signaling_urls=signaling_urls,
            role="sendonly",
            channel_id=channel_id,
            audio=True,
            video=True,
            audio_source=self._audio_source,
            video_source=self._video_source,
        )
        self._connection.on_set_offer = self._on_set_offer
        self._connection.on_notify = self._on_notify
        self._connection.on_disconnect = self._on_disconnect

        self._connection_id: str | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._frames = 0
        self._samples = 0

    # Callbacks run on the SDK's threads: keep them short.

    def _on_set_offer(self, raw_offer: str) -> None:
        offer = json.loads(raw_offer)
        if offer["type"] == "offer":
            self._connection_id = offer["connection_id"]

    def _on_notify(self, raw_message: str) -> None:
        message = json.loads(raw_message)
        # Connected once the server announces our own connection.
        if (
            message["type"] == "notify"
            and message["event_type"] == "connection.created"
            and message["connection_id"] == self._connection_id
        ):
            self._connected.set()

    def _on_disconnect(self, error_code: SoraSignalingErrorCode, message: str) -> None:
        emit("disconnected", code=error_code.name, message=message)
        self._connected.clear()
        self._closed.set()

    # Capture loops: a camera and a microphone would go here.

    def _video_loop(self) -> None:
        counter = 0
        next_at = time.monotonic()
        while not self._closed.is_set():
            self._video_source.on_captured(test_pattern(counter, self._width, self._height))
            counter += 1
            self._frames += 1
            next_at += 1.0 / self._fps
            time.sleep(max(0.0, next_at - time.monotonic()))

    def _audio_loop(self) -> None:
        chunk = self._sample_rate // 100  # 10 ms
        start = 0
        next_at = time.monotonic()
        while not self._closed.is_set():
            self._audio_source.on_data(tone(self._frequency, self._sample_rate, self._channels, start, chunk))
            start += chunk
            self._samples += chunk
            next_at += chunk / self._sample_rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def run(self, duration: float) -> int:
        self._connection.connect()
        if not self._connected.wait(10):
            emit("error", message="not connected within 10 s")
            self._connection.disconnect()
            return 1
        emit("connected", connection_id=self._connection_id)
        threads = [threading.Thread(target=self._video_loop, daemon=True),
                   threading.Thread(target=self._audio_loop, daemon=True)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + duration
        try:
            while not self._closed.is_set() and time.monotonic() < deadline:
                self._closed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                emit("sent", video_frames=self._frames, audio_ms=self._samples * 1000 // self._sample_rate)
        finally:
            self._connection.disconnect()
        for thread in threads:
            thread.join(2)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling-url", action="append", required=True,
                        help="signaling URL (repeat it for several)")
    parser.add_argument("--channel-id", required=True)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to publish")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frequency", type=float, default=440.0, help="tone frequency (Hz)")
    args = parser.parse_args()
    sendonly = SendOnly(args.signaling_url, args.channel_id, args.width, args.height, args.fps, args.frequency)
    return sendonly.run(args.duration)


if __name__ == "__main__":
    sys.exit(main())
