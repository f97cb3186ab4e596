"""End-to-end encryption (``hibiki.client.e2ee``) over encoded-frame transforms, through a real server.

* Units: the frame format (clear header per codec, then AES-GCM with the
  tag, then IV and header length), round trips on real VP8 and Opus frames,
  tampering, wrong keys, unique IVs, refused codecs; the engine-side VP8
  keyframe detection still works on encrypted frames.
* Through ``hibiki serve``: two Hibiki clients with the same key exchange
  encrypted audio and video and decode them with content checked (frame
  counters in each sender's range, intact colour bars, each sender's tone);
  a third client without the key receives the frames but decodes no valid
  picture or tone, and its decoders survive. The SFU never sees plaintext:
  what the keyless client received is exactly what the SFU forwarded, and
  none of it equals, or shares an 8-byte run beyond the clear header with,
  any frame the senders had before encryption (while the keyed receiver's
  decrypted frames are byte for byte the senders' originals).
* With the official sora-sdk (libwebrtc, its own frame transformers running
  the same ``FrameCryptor``): encrypted media both ways between it and a
  Hibiki client, content checked on both sides.
* ``examples/e2ee.py``: two instances with one key see each other; one with
  another key decodes nothing.

Every wait has a deadline.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hibiki
import numpy as np
import pytest
from conftest import PYTHON_SRC, REPO, new_channel_id, wait_until
from hibiki.client.e2ee import (
    CLEAR_BYTES,
    FrameCryptor,
    UnsupportedCodecError,
    clear_header_length,
)
from hibiki.client.transform import (
    FrameTransformer,
    TransformableAudioFrame,
    TransformableVideoFrame,
    vp8_keyframe_size,
)
from hibiki.media.testsrc import test_pattern, tone
from test_media_flow import (
    AUDIO_RATE,
    HEIGHT,
    WIDTH,
    Feeder,
    FrameLog,
    check_tone,
    check_video,
    feeding,
)

pytest.importorskip("cryptography")

KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
TRAILER = 13  # 12-byte IV + 1 byte of header length


def vp8_frames(n: int = 4) -> list[Any]:
    from hibiki.media import VideoEncoder

    encoder = VideoEncoder("VP8")
    return [f for i in range(n) for f in encoder.encode(test_pattern(i, WIDTH, HEIGHT), i * 6000)]


def opus_packets(n: int = 5) -> list[bytes]:
    from hibiki.media import AudioEncoder

    encoder = AudioEncoder("OPUS", AUDIO_RATE, 1)
    return [f.data for f in encoder.encode(tone(440.0, AUDIO_RATE, 1, 0, 960 * n))]


# -- units ------------------------------------------------------------------------------------------


def test_frame_format_and_round_trips() -> None:
    from hibiki.media.video import (
        _vp8_is_keyframe,  # what decides keyframes on both ends
    )

    cryptor = FrameCryptor(KEY)
    frames = vp8_frames()
    assert frames[0].keyframe and not frames[1].keyframe
    for f in frames:
        wire = cryptor.encrypt_bytes(f.data, "VP8")
        n = 10 if f.keyframe else 3
        assert wire[:n] == f.data[:n] and wire[-1] == n
        assert len(wire) == len(f.data) + 16 + TRAILER
        assert wire[n:-TRAILER - 16] != f.data[n:]
        assert cryptor.decrypt_bytes(wire) == f.data
        # The clear header is enough for the keyframe test and the picture size.
        assert _vp8_is_keyframe(wire) is f.keyframe
        assert vp8_keyframe_size(wire) == ((WIDTH, HEIGHT) if f.keyframe else None)
    for packet in opus_packets():
        wire = cryptor.encrypt_bytes(packet, "OPUS")
        assert wire[:1] == packet[:1] and wire[-1] == 1 and cryptor.decrypt_bytes(wire) == packet

    # Tampering anywhere (header, ciphertext, tag, IV, length), another key, plaintext: all refused.
    wire = cryptor.encrypt_bytes(frames[0].data, "VP8")
    for i in (0, 9, 10, len(wire) - TRAILER - 1, len(wire) - 2, len(wire) - 1):
        bad = bytearray(wire)
        bad[i] ^= 0x01
        with pytest.raises(ValueError):
            cryptor.decrypt_bytes(bytes(bad))
    with pytest.raises(ValueError, match="wrong key"):
        FrameCryptor(OTHER_KEY).decrypt_bytes(wire)
    with pytest.raises(ValueError):
        cryptor.decrypt_bytes(frames[1].data)
    with pytest.raises(ValueError):
        cryptor.decrypt_bytes(b"\x00" * 5)

    # IVs: salt per cryptor, counter per frame; never repeated.
    ivs = {cryptor.encrypt_bytes(b"\x01\x02\x03\x04", "OPUS")[-TRAILER:-1] for _ in range(500)}
    ivs |= {FrameCryptor(KEY).encrypt_bytes(b"\x01\x02", "OPUS")[-TRAILER:-1] for _ in range(50)}
    assert len(ivs) == 550

    assert FrameCryptor(KEY.hex()).decrypt_bytes(wire) == frames[0].data  # hex keys
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        FrameCryptor(b"short")
    assert set(CLEAR_BYTES) == {"VP8", "OPUS"}
    assert clear_header_length("VP8", b"\x00\x01") == 2  # never past the end
    with pytest.raises(UnsupportedCodecError, match="H264"):
        clear_header_length("H264", b"\x00\x00\x00\x01\x67")


def test_frames_in_place_and_refused_codecs() -> None:
    cryptor = FrameCryptor(KEY)
    key = vp8_frames(1)[0]
    frame = TransformableVideoFrame(key.data, codec="VP8", is_key_frame=True)
    assert cryptor.encrypt(frame) and frame.get_data().tobytes() != key.data
    assert cryptor.decrypt(frame) and frame.get_data().tobytes() == key.data
    assert not cryptor.decrypt(frame)  # not encrypted any more: refused, counted
    assert cryptor.decrypt_failures == 1

    vp9 = TransformableVideoFrame(b"\x82\x49\x83\x42\x00" * 20, codec="VP9", is_key_frame=True)
    assert not cryptor.encrypt(vp9) and cryptor.refused == 1
    assert vp9.get_data().tobytes() == b"\x82\x49\x83\x42\x00" * 20  # untouched, and the sender drops it
    audio = TransformableAudioFrame(opus_packets(1)[0], codec="OPUS")
    assert cryptor.encrypt(audio) and cryptor.decrypt(audio)
    with pytest.raises(ValueError):
        cryptor.sender("data")  # type: ignore[call-overload]


# -- through a server -------------------------------------------------------------------------------


class Tap:
    """Wraps a transformer's on_transform: records each frame's data before (and after) it runs."""

    def __init__(self, transformer: FrameTransformer) -> None:
        self.transformer = transformer
        self.inner = transformer.on_transform
        assert self.inner is not None
        self.lock = threading.Lock()
        self.before: list[bytes] = []
        self.after: list[bytes] = []
        transformer.on_transform = self.on_transform

    def on_transform(self, frame: Any) -> None:
        data = frame.get_data().tobytes()
        assert self.inner is not None
        self.inner(frame)
        with self.lock:
            self.before.append(data)
            self.after.append(frame.get_data().tobytes())

    def frames(self) -> tuple[list[bytes], list[bytes]]:
        with self.lock:
            return list(self.before), list(self.after)


def pass_through(kind: str) -> FrameTransformer:
    from hibiki.client.transform import AudioFrameTransformer, VideoFrameTransformer

    transformer = VideoFrameTransformer() if kind == "video" else AudioFrameTransformer()
    transformer.on_transform = transformer.enqueue
    return transformer


def runs(frames: list[bytes], header: Any, trailer: int = 0) -> np.ndarray:
    """Every 8-byte run of the frames' bytes after ``header(frame)`` (and before ``trailer``), as uint64."""
    out = [np.zeros(0, dtype="<u8")]
    for f in frames:
        body = np.frombuffer(f, dtype=np.uint8)[header(f):len(f) - trailer]
        if len(body) >= 8:
            out.append(np.lib.stride_tricks.sliding_window_view(body, 8).copy().view("<u8").ravel())
    return np.unique(np.concatenate(out))


def tone_fraction(pcm: np.ndarray, sample_rate: int, frequency: float) -> float:
    """Share of the signal's power within 15 Hz of ``frequency`` (0 for silence)."""
    x = pcm[:, 0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)))) ** 2
    total = spectrum.sum()
    if total < 1e-3:
        return 0.0
    freqs = np.fft.rfftfreq(len(x), 1 / sample_rate)
    return float(spectrum[np.abs(freqs - frequency) <= 15].sum() / total)


class Member:
    """One client of the channel: its connection, what it sent (plaintext) and what it got."""

    def __init__(self, server: Any, channel: str, key: bytes | None, *, send: bool, base: int = 0,
                 frequency: float = 440.0) -> None:
        sdk = hibiki.Hibiki()
        self.cryptor = FrameCryptor(key) if key is not None else None
        self.base, self.frequency = base, frequency
        self.sent: dict[str, Tap] = {}
        kwargs: dict[str, Any] = {}
        self.feeder: Feeder | None = None
        if send:
            assert self.cryptor is not None
            video, audio = sdk.create_video_source(), sdk.create_audio_source(channels=1, sample_rate=AUDIO_RATE)
            for kind in ("video", "audio"):
                self.sent[kind] = Tap(self.cryptor.sender(kind))  # type: ignore[arg-type]
            kwargs = {"video_source": video, "audio_source": audio,
                      "video_frame_transformer": self.sent["video"].transformer,
                      "audio_frame_transformer": self.sent["audio"].transformer}
            self.feeder = Feeder(video, audio, frequency=frequency, counter_base=base)
        self.conn = sdk.create_connection([server.signaling_url], "sendrecv" if send else "recvonly", channel,
                                          video_codec_type="VP8", **kwargs)
        self.received: dict[tuple[str, str], Tap] = {}  # (kind, sender connection_id)
        self.logs: dict[str, FrameLog] = {}
        self.audio: dict[str, list[np.ndarray]] = {}
        self.tracks: list[hibiki.MediaTrack] = []
        self.sinks: list[Any] = []
        self.conn.on_track = self.on_track

    def on_track(self, track: hibiki.MediaTrack) -> None:
        self.tracks.append(track)
        # Keyed: decrypt; keyless: pass frames through unchanged, recording what came over the wire.
        transformer = self.cryptor.receiver(track.kind) if self.cryptor else pass_through(track.kind)  # type: ignore[arg-type]
        self.received[(track.kind, track.stream_id)] = Tap(transformer)
        track.set_frame_transformer(transformer)
        if track.kind == "video":
            log = self.logs[track.stream_id] = FrameLog()
            sink: Any = hibiki.VideoSink(track)
            sink.on_frame = log.on_frame
        else:
            chunks = self.audio[track.stream_id] = []
            sink = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)
            sink.on_data = chunks.append
        self.sinks.append(sink)

    def pcm(self, sender: str) -> np.ndarray:
        chunks = list(self.audio.get(sender, []))
        return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.int16)

    def wire(self, kind: str, sender: str) -> list[bytes]:
        return self.received[(kind, sender)].frames()[0]


def header_of(kind: str) -> Any:
    """The clear header length of a plaintext frame."""
    if kind == "audio":
        return lambda f: 1
    return lambda f: 10 if not f[0] & 1 else 3


@pytest.fixture
def members(server: Any) -> Iterator[list[Member]]:
    channel = new_channel_id()
    a = Member(server, channel, KEY, send=True, base=100_000, frequency=440.0)
    b = Member(server, channel, KEY, send=True, base=200_000, frequency=660.0)
    c = Member(server, channel, None, send=False)
    everyone = [a, b, c]
    try:
        yield everyone
    finally:
        for m in everyone:
            if m.feeder is not None:
                m.feeder.stop_event.set()
            m.conn.disconnect()
        for m in everyone:
            if m.feeder is not None:
                m.feeder.stop()


def test_encrypted_media_through_the_sfu(members: list[Member]) -> None:
    a, b, c = members
    for m in (a, b):
        assert m.feeder is not None
        m.feeder.start()
        m.conn.connect()
    c.conn.connect()
    ids = {m: m.conn.connection_id or "" for m in (a, b)}
    for viewer, sender in ((a, b), (b, a)):
        wait_until(lambda v=viewer, s=sender: ids[s] in v.logs and len(v.logs[ids[s]].snapshot()) >= 30,  # type: ignore[misc]
                   20, "30 decrypted pictures each way")
    for sender in (a, b):
        wait_until(lambda s=sender: ("video", ids[s]) in c.received and len(c.wire("video", ids[s])) >= 30,  # type: ignore[misc]
                   20, "30 encrypted video frames at the client without the key")
    wait_until(lambda: all(len(m.pcm(ids[s])) >= 24_000 for m, s in ((a, b), (b, a), (c, a), (c, b))), 15,
               "1.5 s of audio everywhere")
    # The keyless client's decoders are alive and well before anyone leaves.
    assert all(t._thread.is_alive() and not t.ended for t in c.tracks)  # type: ignore[attr-defined]
    for m in (a, b):
        assert m.feeder is not None
        m.feeder.stop()

    # Keyed receivers: each other's pictures (counters in the sender's range) and tone.
    for viewer, sender in ((a, b), (b, a)):
        check_video(viewer.logs[ids[sender]].snapshot(), range(sender.base, sender.base + 100_000))
        check_tone(viewer.pcm(ids[sender])[-8_000:], 16_000, sender.frequency)
        assert viewer.cryptor is not None and viewer.cryptor.decrypt_failures == 0

    # The keyless receiver got frames but no valid picture and no tone.
    for sender in (a, b):
        assert len(c.wire("video", ids[sender])) >= 30 and len(c.wire("audio", ids[sender])) >= 50
        pictures = c.logs[ids[sender]].snapshot()
        assert not any(intact for _, intact, _ in pictures), "a picture decoded without the key"
        assert not any(counter is not None and sender.base <= counter < sender.base + 100_000
                       for counter, _, _ in pictures)
        pcm = c.pcm(ids[sender])
        for start in range(0, len(pcm) - 8_000, 8_000):
            fraction = tone_fraction(pcm[start:start + 8_000], 16_000, sender.frequency)
            assert fraction < 0.2, f"{sender.frequency} Hz audible without the key ({fraction:.2f})"
    # (The control: the same measure on the keyed receiver's audio finds the tone.)
    assert tone_fraction(b.pcm(ids[a])[-8_000:], 16_000, a.frequency) > 0.8

    # The SFU never saw plaintext.
    for sender, other in ((a, b), (b, a)):
        for kind in ("video", "audio"):
            plaintext = sender.sent[kind].frames()[0]
            encrypted = sender.sent[kind].frames()[1]
            wire = c.wire(kind, ids[sender])
            assert set(wire) <= set(encrypted), f"{kind}: the SFU forwarded frames the sender did not encrypt"
            assert not set(wire) & set(plaintext), f"{kind}: a plaintext frame went over the wire"
            shared = np.intersect1d(runs(wire, lambda f: f[-1], TRAILER), runs(plaintext, header_of(kind)))
            assert shared.size == 0, f"{kind}: {shared.size} 8-byte runs of plaintext on the wire"
            # Control: the keyed receiver decrypted exactly the sender's frames, and
            # the same comparison finds them.
            decrypted = other.received[(kind, ids[sender])].frames()[1]
            assert len(decrypted) >= 30 and set(decrypted) <= set(plaintext)
            assert np.intersect1d(runs(decrypted, header_of(kind)), runs(plaintext, header_of(kind))).size > 1000


# -- with the official sora-sdk ------------------------------------------------------------------------


HAS_SORA_SDK = importlib.util.find_spec("sora_sdk") is not None


@pytest.mark.skipif(not HAS_SORA_SDK, reason="sora-sdk is not installed (pip install sora-sdk==2025.4.0)")
def test_encrypted_media_with_the_official_sora_sdk(server: Any) -> None:
    """sora-sdk's SoraVideoFrameTransformer/SoraAudioFrameTransformer and Hibiki's transformers, one key."""
    from sora_clients.harness import SoraPeer

    channel = new_channel_id()
    hib = Member(server, channel, KEY, send=True, base=100_000, frequency=440.0)
    assert hib.feeder is not None
    with SoraPeer.start(server.signaling_url, "sendrecv", channel, "--send", "--receive", "--e2ee-key", KEY.hex(),
                        "--counter-base", "300000", "--frequency", "660", name="sora") as peer:
        sora_id = peer.wait_connected()
        try:
            with feeding(hib.feeder):
                hib.conn.connect()
                # sora-sdk decrypts and decodes Hibiki's media...
                frames = peer.wait_count(lambda e: e["event"] == "video", 30, 20, "30 pictures at sora-sdk")
                blocks = peer.wait_count(lambda e: e["event"] == "audio" and e["level"] > -60, 4, 15,
                                         "2 s of audio at sora-sdk")
                # ...and Hibiki sora-sdk's.
                wait_until(lambda: sora_id in hib.logs and len(hib.logs[sora_id].snapshot()) >= 30, 20,
                           "30 pictures from sora-sdk")
                wait_until(lambda: len(hib.pcm(sora_id)) >= 24_000, 15, "1.5 s of audio from sora-sdk")
        finally:
            hib.conn.disconnect()
        e2ee = peer.wait_for(lambda e: e["event"] == "e2ee" and e["decrypted"] > 0, 5, "e2ee counters")
        peer.disconnect()
        peer.assert_clean_exit()
    counters = [e["counter"] for e in frames]
    assert all(c is not None and 100_000 <= c < 200_000 for c in counters), counters
    assert all(b > a for a, b in itertools.pairwise(counters)) and sum(e["intact"] for e in frames) >= 27
    assert all(abs(b["frequency"] - 440.0) <= 10 for b in blocks[-2:]), blocks
    assert e2ee["decrypt_failures"] == 0 and e2ee["encrypted"] > 0 and e2ee["refused"] == 0, e2ee
    assert not [e for e in peer.events if e["event"] == "error"]
    check_video(hib.logs[sora_id].snapshot(), range(300_000, 400_000))
    check_tone(hib.pcm(sora_id)[-8_000:], 16_000, 660.0)
    assert hib.cryptor is not None and hib.cryptor.decrypt_failures == 0
    # What sora-sdk sent was encrypted: nothing Hibiki received decoded without its transformer.
    wire = hib.wire("video", sora_id)
    assert all(f[-1] in (3, 10) and len(f) > 29 for f in wire)


# -- the example ----------------------------------------------------------------------------------


def run_example(server: Any, channel: str, key: bytes, *extra: str, tmp_path: Path, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PYTHON_SRC), os.environ.get("PYTHONPATH", ""))
                                                       if p), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "e2ee.py"), "--url", server.signaling_url, "--channel", channel,
         # Long enough that all three overlap for several seconds even when
         # their start-up (imports, connect) is slow on a loaded machine.
         "--key", key.hex(), "--duration", "12", *extra],
        stdout=subprocess.PIPE, stderr=open(tmp_path / f"{tag}.err", "w"), text=True, env=env, cwd=REPO)


def test_example_two_participants_one_key_and_an_outsider(server: Any, tmp_path: Path) -> None:
    channel = new_channel_id()
    procs = {
        "a": run_example(server, channel, KEY, tmp_path=tmp_path, tag="a"),
        "b": run_example(server, channel, KEY, "--counter-base", "100000", "--frequency", "660", tmp_path=tmp_path,
                         tag="b"),
        "outsider": run_example(server, channel, OTHER_KEY, "--role", "recvonly", tmp_path=tmp_path, tag="outsider"),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for name, proc in procs.items():
            stdout, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{name}: rc {proc.returncode}\n{(tmp_path / f'{name}.err').read_text()}"
            out[name] = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    def last(name: str) -> dict[str, dict[str, Any]]:
        return {e["stream_id"]: e for e in out[name] if e["event"] == "received"}

    ids = {name: next(e["connection_id"] for e in out[name] if e["event"] == "connected") for name in out}
    for viewer, sender, base, frequency in (("a", "b", 100_000, 660.0), ("b", "a", 0, 440.0)):
        seen = last(viewer)[ids[sender]]
        assert seen["pictures"] >= 20 and seen["intact"] >= 0.9 * seen["pictures"], seen
        assert base <= seen["counter"] < base + 100_000 and abs(seen["frequency"] - frequency) <= 10, seen
        assert seen["decrypt_failures"] == 0
    outside = last("outsider")
    assert set(outside) == {ids["a"], ids["b"]}
    assert all(e["pictures"] == 0 and e["decrypted"] == 0 and e["level"] == -120.0 for e in outside.values()), outside
    assert max(e["decrypt_failures"] for e in outside.values()) > 100
    assert all(e["event"] != "error" for lines in out.values() for e in lines)
