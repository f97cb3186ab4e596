"""Video codecs through PyAV (FFmpeg): BGR numpy frames in, encoded frames out, and back.

Codecs are rows of :data:`_VIDEO_CODECS`. A row names the FFmpeg encoders to
try in order of preference (hardware first once there are some: an encoder
that FFmpeg lists but cannot open, such as ``h264_nvenc`` without a GPU, is
skipped), their private options, the decoders to try, and how to spot a
keyframe in the bitstream. Adding VP9, AV1, H.264 or H.265 is adding a row;
the classes below hold no per-codec logic.

The encoder is tuned for real-time conferencing, the way WebRTC stacks drive
libvpx: realtime deadline, no look-ahead, no B-frames, constant bitrate, a
keyframe every couple of seconds and on request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from .frames import VIDEO_CLOCK_RATE, EncodedFrame

__all__ = ["VideoDecoder", "VideoEncoder"]

logger = logging.getLogger(__name__)

# Seconds between periodic keyframes: short enough that a subscriber joining
# without a keyframe request still gets a picture soon, long enough that the
# bitrate is not spent on intra frames.
_KEYFRAME_INTERVAL_S = 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _webrtc_threads(width: int, height: int) -> int:
    """Choose encoder threads for a frame size by libwebrtc's rule for libvpx.

    Threads only where the frame is large and the machine has cores to
    spare: libvpx threads wait on each other row by row, so on a busy 2-core
    box a second thread makes encoding several times slower, not faster
    (measured here: 720p 11 ms/frame with 1 thread, 18-88 ms with 2 while a
    compiler ran on the other core).
    """
    pixels, cores = width * height, _cores()
    if pixels >= 1920 * 1080 and cores > 8:
        return 8
    if pixels > 1280 * 960 and cores >= 6:
        return 3
    if pixels > 640 * 480 and cores >= 3:
        return 3 if cores >= 6 else 2
    return 1


@dataclass(frozen=True, slots=True)
class _EncoderChoice:
    """One FFmpeg encoder able to produce a codec, with its real-time settings."""

    name: str
    """FFmpeg encoder name, e.g. ``"libvpx"``."""
    options: Mapping[str, str] = field(default_factory=dict)
    """Private options of that encoder (``ffmpeg -h encoder=NAME``)."""
    pix_fmt: str = "yuv420p"
    threads: Callable[[int, int], int] = _webrtc_threads
    """Thread count for a ``(width, height)``."""


@dataclass(frozen=True, slots=True)
class _VideoCodecSpec:
    """Everything codec-specific, so that the classes stay generic."""

    encoders: tuple[_EncoderChoice, ...]
    """Tried in order; the first that opens is used."""
    decoders: tuple[str, ...]
    """FFmpeg decoder names, tried in order."""
    is_keyframe: Callable[[bytes], bool | None]
    """Sniffs a frame's bitstream: True/False, or None when it cannot tell."""


def _vp8_is_keyframe(data: bytes) -> bool | None:
    # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame, and a key
    # frame carries the start code 9d 01 2a right after the 3-byte tag.
    if len(data) < 3:
        return None
    return (data[0] & 1) == 0 and data[3:6] == b"\x9d\x01\x2a"


_VIDEO_CODECS: Mapping[str, _VideoCodecSpec] = MappingProxyType(
    {
        "VP8": _VideoCodecSpec(
            encoders=(
                _EncoderChoice(
                    "libvpx",
                    {
                        "deadline": "realtime",
                        # Fastest realtime speed: 720p in a few ms on one core.
                        "cpu-used": "8",
                        "lag-in-frames": "0",
                        # Frames do not depend on probabilities learnt from
                        # earlier ones, so a loss costs less.
                        "error-resilient": "default",
                        # Like libwebrtc: spend the bitrate evenly rather than
                        # overshooting on hard frames and then starving.
                        "undershoot-pct": "100",
                        "overshoot-pct": "15",
                        # Cap keyframe size (percent of an average frame x 100)
                        # so a keyframe does not burst the network.
                        "max-intra-rate": "900",
                        "static-thresh": "1",
                        # Like libwebrtc: rather than blow the bitrate on
                        # content that does not fit (measured: 23 Mbit/s for
                        # 720p noise at a 1.5 Mbit/s target), drop frames when
                        # the rate buffer falls below 30%.
                        "drop-threshold": "30",
                    },
                ),
            ),
            decoders=("vp8", "libvpx"),
            is_keyframe=_vp8_is_keyframe,
        ),
    }
)


def _spec(codec: str) -> _VideoCodecSpec:
    spec = _VIDEO_CODECS.get(codec)
    if spec is None:
        known = ", ".join(sorted(_VIDEO_CODECS))
        raise ValueError(f"unsupported video codec {codec!r} (supported: {known})")
    return spec


class VideoEncoder:
    """Encode BGR frames into :class:`EncodedFrame` s for one video track.

    >>> enc = VideoEncoder("VP8", bitrate=1_500_000)
    >>> frames = enc.encode(bgr, rtp_time=0)

    The FFmpeg context is opened on the first frame and reopened whenever the
    frame size changes (the first frame after that is a keyframe). Not thread
    safe: one encoder per track, used from one thread.
    """

    def __init__(self, codec: str = "VP8", bitrate: int = 1_500_000, framerate: int = 30) -> None:
        """Create an encoder.

        Args:
            codec: Upper-case codec name, e.g. ``"VP8"``.
            bitrate: Target bitrate in bit/s.
            framerate: Nominal frame rate; sets the keyframe interval and the
                rate control's idea of frame duration.

        Raises:
            ValueError: Unknown codec, or a bitrate/framerate that is not positive.
        """
        self._spec = _spec(codec)
        if bitrate <= 0 or framerate <= 0:
            raise ValueError("bitrate and framerate must be > 0")
        self._codec = codec
        self._bitrate = bitrate
        self._framerate = framerate
        self._ctx: av.VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None
        self._keyframe_requested = False
        self._last_pts: int | None = None
        # pts -> rtp_time, for the (codec-dependent) case that a packet comes
        # out later than its frame went in.
        self._rtp_of_pts: dict[int, int] = {}

    @property
    def codec(self) -> str:
        """The codec name given at construction, e.g. ``"VP8"``."""
        return self._codec

    @property
    def encoder_name(self) -> str | None:
        """The FFmpeg encoder in use (e.g. ``"libvpx"``), or None before the first frame."""
        return self._ctx.name if self._ctx is not None else None

    def request_keyframe(self) -> None:
        """Make the next :meth:`encode` produce a keyframe (e.g. on a PLI from the far end)."""
        self._keyframe_requested = True

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        errors: list[str] = []
        for choice in self._spec.encoders:
            if choice.name not in av.codecs_available:
                continue
            ctx = av.CodecContext.create(choice.name, "w")
            assert isinstance(ctx, av.VideoCodecContext)
            ctx.width = width
            ctx.height = height
            ctx.pix_fmt = choice.pix_fmt
            # Timestamps are RTP time itself, so rate control sees the real
            # spacing of frames even when the source runs slower than
            # `framerate`; `framerate` gives it the nominal frame duration.
            ctx.time_base = Fraction(1, VIDEO_CLOCK_RATE)
            ctx.framerate = Fraction(self._framerate, 1)
            ctx.bit_rate = self._bitrate
            ctx.gop_size = self._framerate * _KEYFRAME_INTERVAL_S
            ctx.max_b_frames = 0
            ctx.thread_count = choice.threads(width, height)
            # Frame threading would delay every frame by a frame per thread.
            ctx.thread_type = "SLICE"
            options = {
                # minrate == maxrate == b selects CBR in libvpx (and is
                # harmless elsewhere); a 1 s buffer is what WebRTC allows.
                "minrate": str(self._bitrate),
                "maxrate": str(self._bitrate),
                "bufsize": str(self._bitrate),
                "qmin": "2",
                "qmax": "56",
                **choice.options,
            }
            ctx.options = options
            try:
                ctx.open()
            except av.FFmpegError as exc:
                # Listed but unusable (a hardware encoder without its device):
                # fall through to the next choice.
                logger.debug("video encoder %s did not open: %s", choice.name, exc)
                errors.append(f"{choice.name}: {exc}")
                continue
            logger.debug("opened %s %dx%d at %d bit/s", choice.name, width, height, self._bitrate)
            return ctx
        tried = (
            "; ".join(errors)
            or "none of " + ", ".join(c.name for c in self._spec.encoders) + " is built in"
        )
        raise RuntimeError(f"no usable {self._codec} encoder ({tried})")

    def encode(
        self, bgr: npt.NDArray[np.uint8], rtp_time: int, force_keyframe: bool = False
    ) -> list[EncodedFrame]:
        """Encode one frame.

        Args:
            bgr: ``(height, width, 3)`` uint8 BGR image (OpenCV's layout).
            rtp_time: Capture time in the 90 kHz RTP clock; should increase
                from frame to frame.
            force_keyframe: Make this frame a keyframe.

        Returns:
            The encoded frames this call produced: normally exactly one, with
            ``rtp_time`` of its input frame; none if the encoder dropped the
            frame to hold the bitrate (content far too complex for it).

        Raises:
            ValueError: ``bgr`` is not an HxWx3 uint8 array.
        """
        if not (
            isinstance(bgr, np.ndarray)
            and bgr.dtype == np.uint8
            and bgr.ndim == 3
            and bgr.shape[2] == 3
        ):
            raise ValueError("bgr must be a (height, width, 3) uint8 array")
        height, width = bgr.shape[:2]
        out: list[EncodedFrame] = []
        if self._ctx is None or self._size != (width, height):
            if self._ctx is not None and self._last_pts is not None:
                # Drain what an encoder with look-ahead still holds for the
                # old size (nothing for realtime VP8) before replacing it.
                out = self._packets(self._ctx.encode(None), self._last_pts, rtp_time)
            self._ctx = self._open(width, height)
            self._size = (width, height)
            self._rtp_of_pts.clear()
            self._last_pts = None

        # Wrap the caller's pixels without a copy (from_ndarray would copy
        # 2.7 MB per 720p frame, ~3 ms): encode() below converts them to the
        # encoder's pixel format before returning, so nothing reads the
        # array after this call.
        frame = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(bgr), format="bgr24")
        # Keep pts strictly increasing whatever the caller passes (a repeated
        # or wrapped RTP time must not make the encoder reject the frame).
        pts = (
            rtp_time if self._last_pts is None or rtp_time > self._last_pts else self._last_pts + 1
        )
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = self._ctx.time_base
        self._rtp_of_pts[pts] = rtp_time
        if force_keyframe or self._keyframe_requested:
            # FFmpeg encoders turn an I picture type into a forced keyframe.
            frame.pict_type = PictureType.I
            self._keyframe_requested = False

        # The context converts BGR to its pixel format with a cached swscale
        # context of its own.
        return out + self._packets(self._ctx.encode(frame), pts, rtp_time)

    def _packets(
        self, packets: list[av.Packet[Any]], pts: int, rtp_time: int
    ) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        for packet in packets:
            packet_pts = packet.pts if packet.pts is not None else pts
            out.append(
                EncodedFrame(
                    data=bytes(packet),
                    rtp_time=self._rtp_of_pts.pop(packet_pts, rtp_time),
                    keyframe=packet.is_keyframe,
                )
            )
        # Frames the encoder dropped never come back; forget them so the map
        # cannot grow.
        if len(self._rtp_of_pts) > 64:
            for stale in sorted(self._rtp_of_pts)[:-64]:
                del self._rtp_of_pts[stale]
        return out


class VideoDecoder:
    """Decode :class:`EncodedFrame` payloads of one track into BGR numpy frames.

    Robust by design: corrupt input is logged at debug level and yields no
    picture instead of raising, and delta frames are dropped until a keyframe
    arrives (at the start, after an error, or after :meth:`expect_keyframe`)
    so that the caller never sees the smeared pictures a decoder makes from
    missing references. :attr:`needs_keyframe` tells the caller when to ask
    the sender for one.
    """

    def __init__(self, codec: str = "VP8") -> None:
        """Create a decoder for ``codec`` (e.g. ``"VP8"``).

        Raises:
            ValueError: Unknown codec.
            RuntimeError: FFmpeg has none of the codec's decoders.
        """
        self._spec = _spec(codec)
        self._codec = codec
        self._ctx = self._open()
        self._reformatter = VideoReformatter()
        self._needs_keyframe = True

    def _open(self) -> av.VideoCodecContext:
        for name in self._spec.decoders:
            if name not in av.codecs_available:
                continue
            try:
                ctx = av.CodecContext.create(name, "r")
                assert isinstance(ctx, av.VideoCodecContext)
                # One thread: FFmpeg's VP8 decoder does 720p in about 1.5 ms,
                # and extra threads only contend with the encoder and the
                # engine on small machines. Never frame threads, which would
                # hold back a frame per thread.
                ctx.thread_count = 1
                ctx.thread_type = "SLICE"
                ctx.open()
            except av.FFmpegError as exc:
                logger.debug("video decoder %s did not open: %s", name, exc)
                continue
            return ctx
        raise RuntimeError(
            f"no usable {self._codec} decoder (tried {', '.join(self._spec.decoders)})"
        )

    @property
    def codec(self) -> str:
        """The codec name given at construction, e.g. ``"VP8"``."""
        return self._codec

    @property
    def needs_keyframe(self) -> bool:
        """True while delta frames are being dropped for want of a keyframe."""
        return self._needs_keyframe

    def expect_keyframe(self) -> None:
        """Drop delta frames until the next keyframe; call it when frames were lost."""
        self._needs_keyframe = True

    def decode(self, data: bytes, keyframe: bool | None = None) -> list[npt.NDArray[np.uint8]]:
        """Decode one encoded frame into zero or more ``(height, width, 3)`` uint8 BGR arrays.

        Args:
            data: One encoded frame, as produced by :class:`VideoEncoder` or
                reassembled by the engine.
            keyframe: Whether ``data`` is a keyframe, as the depacketizer
                saw it, or None. Used only for codecs whose bitstream this
                module cannot read; for the others (VP8) the bitstream wins,
                so a wrong flag can never make the decoder skip a keyframe.

        Never raises on bad input: a frame that does not decode is logged at
        debug level and returns ``[]`` (and the decoder then waits for a keyframe).
        """
        if not data:
            # An empty packet would put the FFmpeg decoder into drain mode.
            return []
        sniffed = self._spec.is_keyframe(data)
        if sniffed is not None:
            keyframe = sniffed
        if self._needs_keyframe:
            if keyframe is False:
                logger.debug(
                    "%s decoder: dropping a delta frame while waiting for a keyframe", self._codec
                )
                return []
            # A keyframe (or a frame we cannot classify) resets the wait.
            self._needs_keyframe = False
        try:
            packet = av.Packet(data)
            out: list[npt.NDArray[np.uint8]] = []
            for frame in self._ctx.decode(packet):
                bgr = self._reformatter.reformat(frame, format="bgr24").to_ndarray()
                out.append(np.ascontiguousarray(bgr))
            return out
        except (av.FFmpegError, ValueError) as exc:
            logger.debug(
                "%s decoder: dropping a frame of %d bytes: %s", self._codec, len(data), exc
            )
            self._needs_keyframe = True
            return []
