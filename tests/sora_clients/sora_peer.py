"""One official sora-sdk client, driven by the tests; reports what it sees as JSON lines.

Run as a subprocess (each sora-sdk client in its own process: libwebrtc owns
threads and global state, and a crash must not take pytest down)::

    python tests/sora_clients/sora_peer.py --url ws://127.0.0.1:5000/signaling \
        --role recvonly --channel-id room --receive

stdout: one JSON object per line, ``{"event": ..., "t": seconds since start, ...}``:

* ``set_offer`` ``{connection_id, offer}`` (the offer without its ``sdp``)
* ``connected`` ``{connection_id}`` - its own ``connection.created`` arrived
* ``notify`` / ``push`` ``{message}`` - the parsed JSON the SDK handed over
* ``signaling`` ``{direction, message_type}`` - on_signaling_message
* ``track`` ``{kind, stream_id}``
* ``video`` ``{counter, intact, width, height}`` - each decoded picture, read
  with ``hibiki.media.testsrc.read_counter``/``pattern_intact``
* ``audio`` ``{frequency, level}`` - every 0.5 s of received audio (16 kHz mono, dBFS)
* ``ws_close`` ``{code, reason}``, ``disconnect`` ``{code, message}``
* ``stats`` ``{rtp}`` - the inbound-rtp/outbound-rtp entries of ``get_stats()``
* ``error`` ``{message}``, and ``exit`` ``{reason}`` last.

* ``data_channel`` ``{label}``, ``message`` ``{label, data}`` (latin-1 text),
  ``switched`` ``{message}``, ``sent`` ``{label, ok}``

stdin: ``send LABEL TEXT`` calls ``send_data_channel``;
``stats`` reports ``get_stats()``; ``disconnect`` makes it call
``conn.disconnect()`` and exit; end of input or ``--duration`` seconds also
end it (after a disconnect).

Publishing (``--send``): ``test_pattern(counter, W, H)`` frames at ``--fps``
and a ``--frequency`` Hz tone, both in real time.

End-to-end encryption (``--e2ee-key HEX``): sora-sdk's own frame
transformers (``SoraAudioFrameTransformer``/``SoraVideoFrameTransformer``)
encrypt what it sends and decrypt what it receives with
``hibiki.client.e2ee.FrameCryptor`` (numpy and ``cryptography`` only, no
PyAV); ``e2ee`` ``{encrypted, decrypted, decrypt_failures, refused}`` is
reported every 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np
from sora_sdk import (
    Sora,
    SoraAudioFrameTransformer,
    SoraAudioSink,
    SoraMediaTrack,
    SoraSignalingErrorCode,
    SoraVideoCodecImplementation,
    SoraVideoFrameTransformer,
    SoraVideoSink,
    create_video_codec_preference_from_implementation,
    get_video_codec_capability,
)


def _load_testsrc() -> Any:
    """Load ``hibiki/media/testsrc.py`` by path, without the ``hibiki.media`` package.

    The package imports PyAV, whose bundled FFmpeg/libvpx/opus would share the
    process with libwebrtc's own copies; the test signals need only numpy.
    """
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "python" / "hibiki" / "media" / "testsrc.py"
    spec = importlib.util.spec_from_file_location("hibiki_testsrc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_testsrc = _load_testsrc()
dominant_frequency = _testsrc.dominant_frequency
level_dbfs = _testsrc.level_dbfs
pattern_intact = _testsrc.pattern_intact
read_counter = _testsrc.read_counter
test_pattern = _testsrc.test_pattern
tone = _testsrc.tone

START = time.monotonic()
_print_lock = threading.Lock()
AUDIO_RATE = 48_000
SINK_RATE = 16_000


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line (from any thread)."""
    line = json.dumps({"event": event, "t": round(time.monotonic() - START, 3), **fields})
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", action="append", required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--channel-id", required=True)
    p.add_argument("--client-id")
    p.add_argument("--metadata", type=json.loads)
    p.add_argument("--signaling-notify-metadata", type=json.loads)
    p.add_argument("--video-codec", default="VP8")
    p.add_argument("--openh264", help="path of libopenh264: H.264 through Cisco's OpenH264, the rest INTERNAL")
    p.add_argument("--no-audio", action="store_true")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--send", action="store_true", help="publish the test pattern and a tone")
    p.add_argument("--receive", action="store_true", help="attach sinks to received tracks and report content")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--frequency", type=float, default=440.0)
    p.add_argument("--counter-base", type=int, default=0)
    p.add_argument("--duration", type=float, default=60.0, help="hard limit on the whole run")
    p.add_argument("--e2ee-key", help="encrypt/decrypt media with this AES key (hex), see hibiki.client.e2ee")
    p.add_argument("--data-channel-signaling", action="store_true")
    p.add_argument("--simulcast", action="store_true", help="connect with simulcast: true")
    p.add_argument("--simulcast-rid", help="the layer to receive from simulcast senders (r0, r1, r2)")
    p.add_argument("--video-bit-rate", type=int, help="video.bit_rate in kbps")
    p.add_argument("--ignore-disconnect-websocket", choices=["true", "false"])
    p.add_argument(
        "--data-channel",
        action="append",
        default=[],
        help="LABEL:DIRECTION[:compress][:header] (repeatable), a messaging channel to ask for",
    )
    return p.parse_args(argv)


def openh264_options(library: str) -> dict[str, Any]:
    """``Sora(...)`` arguments for H.264 through OpenH264 and the built-in codecs for the rest.

    ``openh264=`` alone only loads the library: sora-sdk 2025.4 still answers
    without H.264 until the codec preference names CISCO_OPENH264 for it.
    """
    capability = get_video_codec_capability(openh264=library)
    preference = create_video_codec_preference_from_implementation(
        capability, SoraVideoCodecImplementation.INTERNAL)
    preference.merge(create_video_codec_preference_from_implementation(
        capability, SoraVideoCodecImplementation.CISCO_OPENH264))
    return {"openh264": library, "video_codec_preference": preference}


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sora = Sora(**openh264_options(args.openh264)) if args.openh264 else Sora()
        self.stop = threading.Event()
        self.disconnected = threading.Event()
        self.connection_id: str | None = None
        self.keep: list[Any] = []  # tracks and sinks must stay referenced
        self.threads: list[threading.Thread] = []
        self.video_source = None
        self.audio_source = None
        kwargs: dict[str, Any] = {}
        if args.send:
            if not args.no_video:
                self.video_source = self.sora.create_video_source()
                kwargs["video_source"] = self.video_source
            if not args.no_audio:
                self.audio_source = self.sora.create_audio_source(1, AUDIO_RATE)
                kwargs["audio_source"] = self.audio_source
        self.cryptor: Any = None
        if args.e2ee_key:
            from hibiki.client.e2ee import (
                FrameCryptor,  # numpy + cryptography: safe beside libwebrtc
            )

            self.cryptor = FrameCryptor(args.e2ee_key)
            if args.send:
                kwargs["audio_frame_transformer"] = self.transformer(SoraAudioFrameTransformer(), self.cryptor.encrypt)
                kwargs["video_frame_transformer"] = self.transformer(SoraVideoFrameTransformer(), self.cryptor.encrypt)
        for name in ("client_id", "metadata", "signaling_notify_metadata"):
            value = getattr(args, name)
            if value is not None:
                kwargs[name] = value
        if args.data_channel_signaling:
            kwargs["data_channel_signaling"] = True
        if args.simulcast:
            kwargs["simulcast"] = True
        if args.simulcast_rid:
            kwargs["simulcast_rid"] = args.simulcast_rid
        if args.video_bit_rate:
            kwargs["video_bit_rate"] = args.video_bit_rate
        if args.ignore_disconnect_websocket is not None:
            kwargs["ignore_disconnect_websocket"] = args.ignore_disconnect_websocket == "true"
        if args.data_channel:
            channels = []
            for spec in args.data_channel:
                label, direction, *flags = spec.split(":")
                entry: dict[str, Any] = {"label": label, "direction": direction}
                if "compress" in flags:
                    entry["compress"] = True
                if "header" in flags:
                    entry["header"] = [{"type": "sender_connection_id"}]
                channels.append(entry)
            kwargs["data_channels"] = channels
        self.conn = self.sora.create_connection(
            signaling_urls=args.url,
            role=args.role,
            channel_id=args.channel_id,
            audio=not args.no_audio,
            video=not args.no_video,
            video_codec_type=args.video_codec,
            **kwargs,
        )
        self.conn.on_set_offer = self.on_set_offer
        self.conn.on_notify = self.on_notify
        self.conn.on_push = self.on_push
        self.conn.on_track = self.on_track
        self.conn.on_ws_close = lambda code, reason: emit("ws_close", code=code, reason=reason)
        self.conn.on_disconnect = self.on_disconnect
        self.conn.on_signaling_message = self.on_signaling_message
        self.conn.on_data_channel = lambda label: emit("data_channel", label=label)
        self.conn.on_message = lambda label, data: emit("message", label=label, data=data.decode("latin-1"))
        self.conn.on_switched = lambda text: emit("switched", message=json.loads(text))

    def transformer(self, transformer: Any, crypt: Any) -> Any:
        """``transformer`` with an on_transform that runs ``crypt(frame)`` and enqueues the frame when it worked."""

        def on_transform(frame: Any) -> None:
            try:
                if crypt(frame):
                    transformer.enqueue(frame)
            except Exception as exc:
                emit("error", message=f"on_transform: {type(exc).__name__}: {exc}")

        transformer.on_transform = on_transform
        self.keep.append(transformer)
        return transformer

    def e2ee_reporter(self) -> None:
        while not self.stop.wait(2.0):
            c = self.cryptor
            emit("e2ee", encrypted=c.frames_encrypted, decrypted=c.frames_decrypted,
                 decrypt_failures=c.decrypt_failures, refused=c.refused)

    # -- callbacks (sora-sdk threads) -------------------------------------------------------

    def on_set_offer(self, text: str) -> None:
        offer = json.loads(text)
        self.connection_id = offer.get("connection_id")
        emit("set_offer", connection_id=self.connection_id, offer={k: v for k, v in offer.items() if k != "sdp"})

    def on_notify(self, text: str) -> None:
        msg = json.loads(text)
        emit("notify", message=msg)
        if msg.get("event_type") == "connection.created" and msg.get("connection_id") == self.connection_id:
            emit("connected", connection_id=self.connection_id)

    def on_push(self, text: str) -> None:
        emit("push", message=json.loads(text))

    def on_signaling_message(self, kind: Any, direction: Any, text: str) -> None:
        try:
            mtype = json.loads(text).get("type")
        except ValueError:
            mtype = None
        emit("signaling", signaling_type=kind.name, direction=direction.name, message_type=mtype)

    def on_disconnect(self, code: SoraSignalingErrorCode, message: str) -> None:
        emit("disconnect", code=code.name, message=message)
        self.disconnected.set()
        self.stop.set()

    def on_track(self, track: SoraMediaTrack) -> None:
        emit("track", kind=track.kind, stream_id=track.stream_id)
        if not self.args.receive:
            return
        self.keep.append(track)
        if self.cryptor is not None:  # before the sinks: nothing undecrypted reaches them
            kind = SoraVideoFrameTransformer() if track.kind == "video" else SoraAudioFrameTransformer()
            track.set_frame_transformer(self.transformer(kind, self.cryptor.decrypt))
        if track.kind == "video":
            sink = SoraVideoSink(track)
            sink.on_frame = self.on_video_frame
            self.keep.append(sink)
        elif track.kind == "audio":
            asink = SoraAudioSink(track, SINK_RATE, 1)
            self.keep.append(asink)
            self.start_thread(lambda: self.audio_poller(asink))

    def on_video_frame(self, frame: Any) -> None:
        bgr = frame.data()
        counter = read_counter(bgr)
        intact = counter is not None and pattern_intact(bgr, counter)
        emit("video", counter=counter, intact=bool(intact), width=int(bgr.shape[1]), height=int(bgr.shape[0]))

    # -- threads ----------------------------------------------------------------------------

    def start_thread(self, fn: Any) -> None:
        def guarded() -> None:
            try:
                fn()
            except Exception as exc:  # reported, not fatal to the peer
                emit("error", message=f"{type(exc).__name__}: {exc}")

        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        self.threads.append(t)

    def audio_poller(self, sink: Any) -> None:
        """Collect received audio and report every 0.5 s of it.

        sora-sdk 2025.4.0 offers two ways to get audio out of SoraAudioSink,
        and both hurt: ``read(frames, timeout)`` waits for the samples while
        holding the GIL (every other callback of the process stalls), and the
        ``on_data`` callback builds its numpy array on libwebrtc's audio thread
        without the GIL (nanobind allocates with PyMem_Malloc), which corrupts
        the Python heap: random segfaults in whatever Python code runs next.
        ``read(0)`` takes what is buffered without waiting: poll it.
        """
        chunks: list[Any] = []
        samples = 0
        while not self.stop.is_set():
            ok, pcm = sink.read(0)
            if ok:
                chunks.append(np.array(pcm[:, 0], dtype=np.int16))
                samples += len(pcm)
            while samples >= SINK_RATE // 2:
                block = np.concatenate(chunks)
                report, rest = block[: SINK_RATE // 2], block[SINK_RATE // 2 :]
                chunks, samples = [rest], len(rest)
                emit(
                    "audio",
                    frequency=round(dominant_frequency(report, SINK_RATE), 1),
                    level=round(level_dbfs(report), 1),
                )
            self.stop.wait(0.05)

    def video_feeder(self) -> None:
        assert self.video_source is not None
        a = self.args
        counter = a.counter_base
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.video_source.on_captured(test_pattern(counter, a.width, a.height))
            counter += 1
            next_at += 1.0 / a.fps
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def audio_feeder(self) -> None:
        assert self.audio_source is not None
        chunk = AUDIO_RATE // 100  # 10 ms, what libwebrtc's audio device works in
        start = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            pcm = np.ascontiguousarray(tone(self.args.frequency, AUDIO_RATE, 1, start, chunk))
            self.audio_source.on_data(pcm)
            start += chunk
            next_at += chunk / AUDIO_RATE
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def stdin_reader(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "disconnect":
                break
            if command == "stats":
                self.report_stats()
            if command.startswith("send "):
                # send LABEL TEXT
                _, label, text = command.split(" ", 2)
                ok = self.conn.send_data_channel(label, text.encode())
                emit("sent", label=label, ok=bool(ok))
        self.stop.set()

    def report_stats(self) -> None:
        try:
            report = json.loads(self.conn.get_stats())
        except Exception as exc:  # not connected yet, ...
            emit("error", message=f"get_stats failed: {type(exc).__name__}: {exc}")
            return
        rtp = [s for s in report if isinstance(s, dict) and s.get("type") in ("outbound-rtp", "inbound-rtp")]
        emit("stats", rtp=rtp)

    # -- main -------------------------------------------------------------------------------

    def run(self) -> str:
        deadline = START + self.args.duration
        if self.video_source is not None:
            self.start_thread(self.video_feeder)
        if self.audio_source is not None:
            self.start_thread(self.audio_feeder)
        threading.Thread(target=self.stdin_reader, daemon=True).start()
        if self.cryptor is not None:
            self.start_thread(self.e2ee_reporter)
        self.conn.connect()
        while not self.stop.wait(0.1):
            if time.monotonic() > deadline:
                break
        if self.disconnected.is_set():
            return "disconnected by the server"
        # Blocks until on_disconnect (the client waits for the server's close frame).
        self.conn.disconnect()
        if not self.disconnected.wait(10):
            emit("error", message="no on_disconnect within 10 s of disconnect()")
            return "disconnect hung"
        return "deadline" if time.monotonic() > deadline else "asked to disconnect"


def main() -> None:
    args = parse_args()
    reason = Peer(args).run()
    emit("exit", reason=reason)
    # Skip interpreter teardown: libwebrtc's threads and nanobind's leak checks
    # add nothing to what the test checks and can make exit slow or noisy.
    os._exit(0)


if __name__ == "__main__":
    main()
