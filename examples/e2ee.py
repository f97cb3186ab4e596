"""End-to-end encrypted audio and video: the SFU forwards frames it cannot read.

Everyone started with the same key sees and hears everyone else; a
participant with another key (or none) receives frames it cannot decode.
Start a server, then two (or more) of these with one key::

    hibiki serve &
    KEY=$(python -c "import os; print(os.urandom(16).hex())")
    python examples/e2ee.py --url ws://127.0.0.1:5000/signaling --channel secret --key $KEY &
    python examples/e2ee.py --url ws://127.0.0.1:5000/signaling --channel secret --key $KEY \\
        --counter-base 100000 --frequency 660

Each publishes the test pattern (frame counter ``--counter-base`` upward)
and a ``--frequency`` Hz tone, encrypted with AES-GCM by
:class:`hibiki.client.e2ee.FrameCryptor` (which frame bytes stay in the clear,
and why, is in that module's doc), and decrypts what it receives. VP8 is
asked for, since the cryptor refuses codecs it has no clear-header rule for.

Prints one JSON object per line: ``connected``; ``received`` once a second
per sender with the pictures decoded, the last frame counter read back
(null when the picture is not the test pattern), how many were intact, the
dominant frequency and level of the last second of audio, and the cryptor's
counters (``decrypt_failures`` grows when someone uses another key);
``disconnected`` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import hibiki
import numpy as np
from hibiki.client.e2ee import FrameCryptor
from hibiki.media.testsrc import dominant_frequency, level_dbfs, pattern_intact, read_counter, test_pattern, tone

AUDIO_RATE = 48_000
CHUNK = 960  # 20 ms
REPORT_RATE = 16_000


_stdout_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout.

    Callbacks run on the SDK's threads: the lock keeps their lines whole
    (``print`` writes the text and its newline separately).
    """
    line = json.dumps({"event": event, **fields})
    with _stdout_lock:
        print(line, flush=True)


class Peer:
    """What arrives from one sender: decoded pictures and audio."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pictures = 0
        self.intact = 0
        self.counter: int | None = None
        self.audio: list[np.ndarray] = []

    def on_frame(self, frame: hibiki.VideoFrame) -> None:  # the track's decoder thread
        bgr = frame.data()
        counter = read_counter(bgr)
        with self.lock:
            self.pictures += 1
            self.counter = counter
            self.intact += counter is not None and pattern_intact(bgr, counter)

    def on_audio(self, pcm: np.ndarray) -> None:
        with self.lock:
            self.audio.append(pcm)

    def report(self) -> dict[str, Any]:
        with self.lock:
            pcm = np.concatenate(self.audio)[-REPORT_RATE:] if self.audio else np.zeros((0, 1), np.int16)
            self.audio = [pcm]
            return {"pictures": self.pictures, "intact": self.intact, "counter": self.counter,
                    "frequency": round(dominant_frequency(pcm, REPORT_RATE), 1) if len(pcm) else None,
                    "level": round(level_dbfs(pcm), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", action="append", required=True, help="signaling URL (repeat it for several)")
    parser.add_argument("--channel", required=True, help="channel id")
    parser.add_argument("--key", required=True, help="shared AES key, 32, 48 or 64 hex digits")
    parser.add_argument("--role", default="sendrecv", choices=["sendrecv", "sendonly", "recvonly"])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to stay")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--frequency", type=float, default=440.0, help="tone frequency (Hz)")
    parser.add_argument("--counter-base", type=int, default=0, help="first frame counter of the test pattern")
    args = parser.parse_args()

    cryptor = FrameCryptor(args.key)
    sdk = hibiki.Hibiki()
    sending = args.role != "recvonly"
    camera = sdk.create_video_source() if sending else None
    mic = sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE) if sending else None
    conn = sdk.create_connection(
        args.url, args.role, args.channel, video_codec_type="VP8", audio_source=mic, video_source=camera,
        # Sending: every frame is encrypted after encoding, before packetizing.
        audio_frame_transformer=cryptor.sender("audio") if sending else None,
        video_frame_transformer=cryptor.sender("video") if sending else None,
    )
    peers: dict[str, Peer] = {}
    keep: list[Any] = []

    def on_track(track: hibiki.MediaTrack) -> None:  # the SDK's callback thread
        # Receiving: decrypt before decoding. Set it before the sinks so that
        # nothing undecrypted reaches them.
        track.set_frame_transformer(cryptor.receiver(track.kind))
        peer = peers.setdefault(track.stream_id, Peer())
        if track.kind == "video":
            sink: Any = hibiki.VideoSink(track)
            sink.on_frame = peer.on_frame
        else:
            sink = hibiki.AudioSink(track, output_frequency=REPORT_RATE, output_channels=1)
            sink.on_data = peer.on_audio
        keep.append(sink)

    closed = threading.Event()

    def on_disconnect(code: hibiki.SignalingErrorCode, message: str) -> None:
        emit("disconnected", code=code.name, message=message)
        closed.set()

    conn.on_track = on_track
    conn.on_disconnect = on_disconnect
    try:
        conn.connect()
    except hibiki.ConnectionError as exc:
        emit("error", message=str(exc))
        return 1
    emit("connected", connection_id=conn.connection_id)

    def capture() -> None:  # a camera and a microphone would go here
        counter, start, next_video, next_audio = args.counter_base, 0, time.monotonic(), time.monotonic()
        while not closed.is_set():
            now = time.monotonic()
            if camera is not None and now >= next_video:
                camera.on_captured(test_pattern(counter, args.width, args.height))
                counter += 1
                next_video += 1 / args.fps
            if mic is not None and now >= next_audio:
                mic.on_data(tone(args.frequency, AUDIO_RATE, 1, start, CHUNK))
                start += CHUNK
                next_audio += CHUNK / AUDIO_RATE
            closed.wait(max(0.0, min(next_video, next_audio) - time.monotonic()))

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    deadline = time.monotonic() + args.duration
    try:
        while not closed.is_set() and time.monotonic() < deadline:
            closed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            for stream_id, peer in list(peers.items()):
                emit("received", stream_id=stream_id, **peer.report(), encrypted=cryptor.frames_encrypted,
                     decrypted=cryptor.frames_decrypted, decrypt_failures=cryptor.decrypt_failures)
    finally:
        conn.disconnect()
        closed.set()
        thread.join(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
