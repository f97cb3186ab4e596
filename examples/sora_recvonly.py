"""recvonly: receive every track of a channel with sinks, sora-sdk style.

A sora-sdk program: only the import says Hibiki. Change
``hibiki.compat.sora_sdk`` to ``sora_sdk`` and it runs on the official SDK.

    hibiki serve &
    python examples/sora_sendonly.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id sora &
    python examples/sora_recvonly.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id sora

``on_track`` attaches a ``SoraVideoSink`` to video tracks and a
``SoraAudioSink`` (16 kHz mono) to audio tracks. Prints one JSON object per
line: ``connected``, ``track`` per track, then once a second ``received``
with the frame count, the last frame counter read back from the picture
(``hibiki.media.testsrc.read_counter``; null if the picture is not the test
pattern), the picture size and the dominant frequency of the last second of
audio; ``disconnected`` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import numpy as np
from hibiki.compat.sora_sdk import (
    Sora,
    SoraAudioSink,
    SoraMediaTrack,
    SoraSignalingErrorCode,
    SoraVideoFrame,
    SoraVideoSink,
)
from hibiki.media.testsrc import dominant_frequency, level_dbfs, read_counter

OUTPUT_FREQUENCY = 16000


_stdout_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout.

    Callbacks run on the SDK's threads: the lock keeps their lines whole
    (``print`` writes the text and its newline separately).
    """
    line = json.dumps({"event": event, **fields})
    with _stdout_lock:
        print(line, flush=True)


class RecvOnly:
    def __init__(self, signaling_urls: list[str], channel_id: str) -> None:
        self._sora = Sora()
        self._connection = self._sora.create_connection(
            signaling_urls=signaling_urls,
            role="recvonly",
            channel_id=channel_id,
            audio=True,
            video=True,
        )
        self._connection.on_set_offer = self._on_set_offer
        self._connection.on_notify = self._on_notify
        self._connection.on_disconnect = self._on_disconnect
        self._connection.on_track = self._on_track

        self._connection_id: str | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        # Sinks stop when garbage collected: keep them (and their tracks).
        self._sinks: list[Any] = []
        self._audio_sinks: list[SoraAudioSink] = []
        self._lock = threading.Lock()
        self._frames = 0
        self._counter: int | None = None
        self._size: tuple[int, int] | None = None
        self._audio: list[np.ndarray] = []

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
        self._connected.clear()
        self._closed.set()

    def _on_track(self, track: SoraMediaTrack) -> None:
        emit("track", kind=track.kind, stream_id=track.stream_id)
        if track.kind == "video":
            video_sink = SoraVideoSink(track)
            video_sink.on_frame = self._on_frame
            self._sinks.append(video_sink)
        elif track.kind == "audio":
            # Polled with read() from run(), not the on_data callback: the real
            # sora-sdk 2025.4 builds on_data's array without holding the GIL,
            # which can corrupt the interpreter (seen as a rare abort at exit).
            audio_sink = SoraAudioSink(track, OUTPUT_FREQUENCY, 1)
            with self._lock:
                self._audio_sinks.append(audio_sink)
            self._sinks.append(audio_sink)

    def _on_frame(self, frame: SoraVideoFrame) -> None:
        # On the decoder thread: read the counter and let the picture go.
        picture = frame.data()
        counter = read_counter(picture)
        with self._lock:
            self._frames += 1
            self._size = (int(picture.shape[1]), int(picture.shape[0]))
            if counter is not None:
                self._counter = counter

    def _drain_audio(self) -> None:
        with self._lock:
            sinks = list(self._audio_sinks)
        for sink in sinks:
            ok, pcm = sink.read(0)  # whatever is buffered, without waiting
            if ok and len(pcm):
                with self._lock:
                    self._audio.append(pcm[:, 0].copy())

    def _report(self) -> None:
        with self._lock:
            audio, self._audio = self._audio, []
            frames, counter, size = self._frames, self._counter, self._size
        samples = np.concatenate(audio) if audio else np.zeros(0, dtype=np.int16)
        emit(
            "received",
            video_frames=frames,
            counter=counter,
            width=size[0] if size else None,
            height=size[1] if size else None,
            audio_samples=len(samples),
            audio_frequency=round(dominant_frequency(samples, OUTPUT_FREQUENCY), 1) if len(samples) else None,
            audio_level=round(level_dbfs(samples), 1),
        )

    def run(self, duration: float) -> int:
        self._connection.connect()
        if not self._connected.wait(10):
            emit("error", message="not connected within 10 s")
            self._connection.disconnect()
            return 1
        emit("connected", connection_id=self._connection_id)
        deadline = time.monotonic() + duration
        next_report = time.monotonic() + 1.0
        try:
            while not self._closed.is_set() and time.monotonic() < deadline:
                self._closed.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                self._drain_audio()
                if time.monotonic() >= next_report or time.monotonic() >= deadline:
                    next_report += 1.0
                    self._report()
        finally:
            self._connection.disconnect()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling-url", action="append", required=True,
                        help="signaling URL (repeat it for several)")
    parser.add_argument("--channel-id", required=True)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to receive")
    args = parser.parse_args()
    return RecvOnly(args.signaling_url, args.channel_id).run(args.duration)


if __name__ == "__main__":
    sys.exit(main())
