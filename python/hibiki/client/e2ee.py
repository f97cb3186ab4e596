"""End-to-end encryption of media with a shared key, built on encoded-frame transforms.

Every encoded frame is encrypted with AES-GCM by the sender's transformer
and decrypted by the receiver's, so the SFU (and anyone between) forwards
frames it cannot read, while everyone holding the key sees and hears the
media as usual::

    from hibiki.client.e2ee import FrameCryptor

    cryptor = FrameCryptor(bytes.fromhex(KEY_HEX))     # 16, 24 or 32 bytes
    conn = sdk.create_connection(urls, "sendrecv", "room", video_codec_type="VP8",
                                 audio_source=mic, video_source=camera,
                                 audio_frame_transformer=cryptor.sender("audio"),
                                 video_frame_transformer=cryptor.sender("video"))

    def on_track(track):                                 # before the sinks
        track.set_frame_transformer(cryptor.receiver(track.kind))

(:meth:`FrameCryptor.encrypt` / :meth:`FrameCryptor.decrypt` work on the
frames of sora-sdk's transformers as well, e.g. inside
``SoraVideoFrameTransformer.on_transform``.) It needs the ``cryptography``
package: ``pip install hibiki[e2ee]``.

Frame format (``header`` stays in the clear, see below)::

    header | AES-GCM(key, iv, rest, aad = header | n) incl. 16-byte tag | iv (12 bytes) | n (1 byte)

``n`` is the length of the clear header; it and the header are
authenticated (a changed header fails decryption). The 96-bit IV is a
random 64-bit salt chosen per :class:`FrameCryptor` followed by a 32-bit
frame counter (a new salt when it wraps), independent of SSRCs, so senders
sharing a key do not reuse IVs (a collision needs two of them drawing the
same 64-bit salt).

What stays in the clear, per codec, and why:

* **VP8**: the first 10 bytes of a keyframe, 3 of a delta frame (the frame
  tag, and on keyframes the start code and the picture size). The
  packetizer, the SFU and the depacketizer read the frame tag to tell
  keyframes (which subscribers must start with); the receiver's metadata
  reads the size. The decoder reads the rest, which only key holders get.
* **Opus**: the first byte (the TOC: mode, bandwidth, frame count), which
  RTP-level tools and receivers use to tell DTX and packet duration.
* Anything else (VP9, H.264, H.265, AV1, other audio) is **refused**: its
  packetizer needs more of the bitstream in the clear (H.264 NAL unit
  headers, VP9/AV1 descriptors), so such frames are dropped, never sent
  unencrypted, and an error is logged once per codec. Ask for VP8 with
  ``video_codec_type="VP8"``.

This protects the content of frames, not their sizes and timing, and has no
key rotation or replay protection (an SFU could replay or drop frames).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Literal, Protocol, overload

import numpy as np

from .transform import AudioFrameTransformer, FrameTransformer, VideoFrameTransformer

__all__ = ["CLEAR_BYTES", "FrameCryptor", "UnsupportedCodecError", "clear_header_length"]

logger = logging.getLogger("hibiki.client")

IV_BYTES = 12
TAG_BYTES = 16
_TRAILER_BYTES = IV_BYTES + 1  # the IV, then the clear header's length

CLEAR_BYTES: dict[str, tuple[int, int]] = {"VP8": (10, 3), "OPUS": (1, 1)}
"""Codec -> (clear bytes of a keyframe, of any other frame). Codecs not listed are refused."""


class UnsupportedCodecError(ValueError):
    """A frame of a codec whose clear-header rule is not known: it is not encrypted (nor sent)."""


class _Frame(Protocol):
    """What a cryptor needs of a frame: Hibiki's or sora-sdk's transformable frames both have it."""

    def get_data(self) -> Any: ...

    def set_data(self, arg: Any, /) -> None: ...

    @property
    def mine_type(self) -> str: ...


def _codec_of(frame: _Frame) -> str:
    mime = str(getattr(frame, "mime_type", None) or frame.mine_type)
    return mime.partition("/")[2].upper()


def clear_header_length(codec: str, data: bytes, keyframe: bool | None = None) -> int:
    """How many leading bytes of a frame stay in the clear (see the module doc).

    VP8 keyframes are told from the frame tag (bit 0 of the first byte is 0)
    when ``keyframe`` is None. Never more than the frame's length.

    Raises:
        UnsupportedCodecError: for a codec without a rule.
    """
    codec = codec.upper()
    rule = CLEAR_BYTES.get(codec)
    if rule is None:
        raise UnsupportedCodecError(
            f"E2EE does not handle {codec or 'unknown'} frames (only {', '.join(CLEAR_BYTES)}); "
            "they are dropped rather than sent unencrypted")
    if codec == "VP8" and keyframe is None:
        keyframe = bool(data) and not data[0] & 1
    return min(len(data), rule[0] if keyframe else rule[1])


class FrameCryptor:
    """AES-GCM for encoded frames with one shared key; makes sending and receiving transformers.

    >>> cryptor = FrameCryptor(os.urandom(16))
    >>> wire = cryptor.encrypt_bytes(vp8_frame, "VP8")
    >>> cryptor.decrypt_bytes(wire) == vp8_frame
    True

    Args:
        key: 16, 24 or 32 bytes (AES-128/192/256), or the same as a hex string.

    Counters: ``frames_encrypted``, ``frames_decrypted``, ``decrypt_failures``
    (wrong key, corrupted or unencrypted frames: dropped) and ``refused``
    (frames of codecs without a clear-header rule: dropped).
    """

    def __init__(self, key: bytes | str) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("hibiki.client.e2ee needs the cryptography package: pip install 'hibiki[e2ee]'") \
                from exc
        raw = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        if len(raw) not in (16, 24, 32):
            raise ValueError(f"the key must be 16, 24 or 32 bytes (AES-128/192/256), got {len(raw)}")
        self._aead = AESGCM(raw)
        self._lock = threading.Lock()
        self._salt = os.urandom(8)
        self._counter = 0
        self._refused_codecs: set[str] = set()
        self._warned_decrypt = False
        self.frames_encrypted = 0
        self.frames_decrypted = 0
        self.decrypt_failures = 0
        self.refused = 0

    def _next_iv(self) -> bytes:
        with self._lock:
            if self._counter > 0xFFFF_FFFF:
                # 2**32 frames (years of media): a fresh salt keeps IVs unique.
                self._salt, self._counter = os.urandom(8), 0
            iv = self._salt + self._counter.to_bytes(4, "big")
            self._counter += 1
        return iv

    # -- bytes ---------------------------------------------------------------------------------

    def encrypt_bytes(self, data: bytes, codec: str, keyframe: bool | None = None) -> bytes:
        """The encrypted form of one encoded frame of ``codec`` (``"VP8"``, ``"OPUS"``).

        Raises:
            UnsupportedCodecError: ``codec`` has no clear-header rule.
        """
        n = clear_header_length(codec, data, keyframe)
        header = data[:n]
        iv = self._next_iv()
        sealed = self._aead.encrypt(iv, data[n:], header + bytes([n]))
        return header + sealed + iv + bytes([n])

    def decrypt_bytes(self, data: bytes) -> bytes:
        """The original frame from its encrypted form.

        Raises:
            ValueError: not an encrypted frame, a wrong key, or tampered with.
        """
        from cryptography.exceptions import InvalidTag

        if len(data) < _TRAILER_BYTES + TAG_BYTES:
            raise ValueError(f"too short for an encrypted frame ({len(data)} bytes)")
        n = data[-1]
        if n > len(data) - _TRAILER_BYTES - TAG_BYTES:
            raise ValueError("not an encrypted frame (bad header length)")
        header, iv = data[:n], data[-_TRAILER_BYTES:-1]
        try:
            body = self._aead.decrypt(iv, data[n:-_TRAILER_BYTES], header + bytes([n]))
        except InvalidTag:
            raise ValueError("the frame does not decrypt: wrong key, or not encrypted, or altered") from None
        return header + body

    # -- frames ---------------------------------------------------------------------------------

    def encrypt(self, frame: _Frame) -> bool:
        """Encrypt a transformable frame in place (``set_data``). False: refused, do not send it.

        Works on Hibiki's frames and on sora-sdk's (``SoraTransformable*Frame``).
        """
        codec = _codec_of(frame)
        try:
            # VP8 keyframes are told from the bitstream itself, which is what
            # the packetizer and the depacketizer go by as well.
            out = self.encrypt_bytes(bytes(frame.get_data()), codec)
        except UnsupportedCodecError as exc:
            self.refused += 1
            if codec not in self._refused_codecs:
                self._refused_codecs.add(codec)
                logger.error("%s", exc)
            return False
        frame.set_data(np.frombuffer(out, dtype=np.uint8))  # sora-sdk's set_data takes arrays only
        self.frames_encrypted += 1
        return True

    def decrypt(self, frame: _Frame) -> bool:
        """Decrypt a transformable frame in place. False: it does not decrypt, drop it."""
        try:
            out = self.decrypt_bytes(bytes(frame.get_data()))
        except ValueError as exc:
            self.decrypt_failures += 1
            if not self._warned_decrypt:
                self._warned_decrypt = True
                logger.warning("E2EE: dropping frames that do not decrypt (%s)", exc)
            return False
        frame.set_data(np.frombuffer(out, dtype=np.uint8))
        self.frames_decrypted += 1
        return True

    # -- transformers ---------------------------------------------------------------------------------

    @overload
    def sender(self, kind: Literal["audio"]) -> AudioFrameTransformer: ...

    @overload
    def sender(self, kind: Literal["video"]) -> VideoFrameTransformer: ...

    def sender(self, kind: Literal["audio", "video"]) -> FrameTransformer:
        """A transformer that encrypts what it sees: for ``create_connection(..._frame_transformer=)``
        or ``source.set_frame_transformer``. Refused frames are dropped."""
        transformer = _transformer(kind)

        def on_transform(frame: Any) -> None:
            if self.encrypt(frame):
                transformer.enqueue(frame)

        transformer.on_transform = on_transform
        return transformer

    @overload
    def receiver(self, kind: Literal["audio"]) -> AudioFrameTransformer: ...

    @overload
    def receiver(self, kind: Literal["video"]) -> VideoFrameTransformer: ...

    def receiver(self, kind: Literal["audio", "video"]) -> FrameTransformer:
        """A transformer that decrypts what it sees: for ``track.set_frame_transformer``.
        Frames that do not decrypt are dropped (the video decoder then waits for a keyframe)."""
        transformer = _transformer(kind)

        def on_transform(frame: Any) -> None:
            if self.decrypt(frame):
                transformer.enqueue(frame)

        transformer.on_transform = on_transform
        return transformer

    def __repr__(self) -> str:
        return (f"<FrameCryptor encrypted={self.frames_encrypted} decrypted={self.frames_decrypted} "
                f"failures={self.decrypt_failures} refused={self.refused}>")


def _transformer(kind: str) -> FrameTransformer:
    if kind == "audio":
        return AudioFrameTransformer()
    if kind == "video":
        return VideoFrameTransformer()
    raise ValueError(f"kind must be 'audio' or 'video', got {kind!r}")
