"""Video codecs through PyAV (FFmpeg): BGR numpy frames in, encoded frames out, and back.

Codecs are rows of :data:`_VIDEO_CODECS`: for each codec, every FFmpeg
encoder that can produce it (software and hardware, see
:mod:`hibiki.media.codecs` for which implementation each belongs to) with
its real-time settings, how to turn sora-sdk's per-codec parameters
(``video_h264_params``...) into encoder options, and how to spot a
keyframe in the bitstream. The classes below hold no per-codec logic.

Encoders are tuned for real-time conferencing, the way WebRTC stacks drive
them: no look-ahead, no B-frames, constant bitrate, a keyframe every two
seconds (of media time) and on request, each frame out of the encoder in the
same call that took it in. What each software encoder does, measured on this
build (FFmpeg 8 in PyAV 18.1), is in ``docs/codecs.md``; in short:

========== ======================================= ===================== ==========================
codec      encoder and settings                     bitrate change         rate control follows
========== ======================================= ===================== ==========================
VP8        libvpx, realtime, cpu-used 8             reopen at a keyframe   timestamps
VP9        libvpx-vp9, realtime, cpu-used 7/8,      reopen at a keyframe   timestamps
           aq-mode 3, row-mt only with threads
AV1        libsvtav1 rtc=1 (low delay, CBR),        reopen at a keyframe   nominal frame rate (*)
           preset 10-12 by size
H.264      libx264 ultrafast zerolatency,           in place, no keyframe  nominal frame rate (*)
           Annex B, SPS/PPS before every IDR        (when lowering)
H.265      libx265 ultrafast zerolatency,           reopen at a keyframe   nominal frame rate (*)
           repeat-headers, closed GOP
========== ======================================= ===================== ==========================

(*) For these the encoder is reopened at the next keyframe with the frame
rate measured from the RTP timestamps when it drifts by more than 25% from
the one it was opened with, so that a source that slows down keeps its
bitrate.

Decoded pictures come back as :class:`DecodedPicture`: the FFmpeg frame
itself, with zero-copy numpy views of its planes and a BGR conversion done
only when asked for (and then once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from av.codec.context import Flags
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from .codecs import (
    Implementation,
    decoder_names,
    encoder_names,
    explain_ffmpeg_error,
    ffmpeg_messages,
    missing_message,
    probe_one,
)
from .frames import VIDEO_CLOCK_RATE, EncodedFrame
from .pixels import bgr_to_frame, frame_to_bgr

__all__ = ["CodecUnavailable", "DecodedPicture", "VideoDecoder", "VideoEncoder"]

logger = logging.getLogger(__name__)

# Seconds between periodic keyframes: short enough that a subscriber joining
# without a keyframe request still gets a picture soon, long enough that the
# bitrate is not spent on intra frames. Counted in media time (RTP), so a
# source that runs at 5 fps still sends one every 2 s, not every 12 s.
_KEYFRAME_INTERVAL_S = 2
_KEYFRAME_INTERVAL = _KEYFRAME_INTERVAL_S * VIDEO_CLOCK_RATE
# Reopen an encoder whose rate control assumes a constant frame rate when
# the measured rate differs by more than this factor from the one it has.
_FRAMERATE_DRIFT = 1.25
# A gap between frames this many times the usual spacing is a pause of the
# source when the next gap is usual again, and a slower source when it is not.
_PAUSE = 4.0

# SVT-AV1 prints a banner of ~15 lines to stderr on every encoder it opens
# unless told otherwise; keep errors only, unless the user chose a level.
os.environ.setdefault("SVT_LOG", "1")


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


def _one_thread(width: int, height: int) -> int:
    # Hardware encoders: the work is on the device; FFmpeg threads only add latency.
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
    sized_options: Callable[[int, int, int], Mapping[str, str]] | None = None
    """More private options from ``(width, height, threads)``: presets by size, thread pools."""
    reconfigures_bitrate: bool = False
    """A new ``bit_rate`` set between frames takes effect without a keyframe
    (measured for libx264; from FFmpeg's source for nvenc and qsv)."""
    follows_timestamps: bool = True
    """Rate control budgets bits per second of timestamps, not per frame at
    the nominal frame rate (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class _VideoCodecSpec:
    """Everything codec-specific, so that the classes stay generic."""

    encoders: tuple[_EncoderChoice, ...]
    """Every encoder of the codec, of every implementation."""
    is_keyframe: Callable[[bytes], bool | None]
    """Sniffs a frame's bitstream: True/False, or None when it cannot tell."""
    no_picture: Callable[[bytes], bool] = lambda _data: False
    """True for a frame that carries decoder configuration (parameter sets,
    SEI) but no picture; see :meth:`VideoDecoder.decode_pictures`."""
    params: Callable[[str, Mapping[str, Any]], Mapping[str, str]] = (
        lambda _name, _params: {}
    )
    """Encoder options for sora-sdk's per-codec parameters (``video_h264_params``...);
    raises ValueError for a value the encoder cannot honour."""

    def encoder(self, name: str) -> _EncoderChoice:
        for choice in self.encoders:
            if choice.name == name:
                return choice
        raise ValueError(f"{name} is not an encoder of this codec")


# -- keyframe sniffers ------------------------------------------------------------------------


def _vp8_is_keyframe(data: bytes) -> bool | None:
    # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame, and a key
    # frame carries the start code 9d 01 2a right after the 3-byte tag.
    if len(data) < 3:
        return None
    return (data[0] & 1) == 0 and data[3:6] == b"\x9d\x01\x2a"


class _Bits:
    """MSB-first bit reader over the start of a buffer (enough for frame headers)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise IndexError("short header")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def _vp9_is_keyframe(data: bytes) -> bool | None:
    # VP9 bitstream spec 6.2, uncompressed_header(): frame_marker (2 bits, =2),
    # profile (low bit, high bit), a reserved bit in profile 3,
    # show_existing_frame, frame_type (0 = KEY_FRAME), show_frame,
    # error_resilient_mode, and for key frames the sync code 49 83 42. In a
    # superframe the first frame decides. (str0m's own sniffer skips a
    # reserved bit for profile 2 too; the spec has it in profile 3 only.)
    try:
        bits = _Bits(data)
        if bits.read(2) != 2:
            return None
        profile = bits.read(1) | (bits.read(1) << 1)
        if profile == 3:
            bits.read(1)
        if bits.read(1):  # show_existing_frame: repeats an old picture
            return False
        if bits.read(1):  # frame_type NON_KEY_FRAME
            return False
        bits.read(2)  # show_frame, error_resilient_mode
        return bits.read(24) == 0x498342 or None
    except IndexError:
        return None


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise IndexError("short leb128")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise IndexError("leb128 too long")


def _av1_is_keyframe(data: bytes) -> bool | None:
    # AV1 spec 5.3/5.9: walk the OBUs. A random access point carries a
    # sequence header (RTP senders put one before every key frame: RFC
    # draft "N" bit) and a frame (header) whose frame_type is KEY_FRAME; any
    # other frame_type is a delta frame. With reduced_still_picture_header
    # every frame is a key frame. Frames without OBU sizes cannot be walked.
    try:
        pos, sequence_header, reduced_still = 0, False, False
        while pos < len(data):
            header = data[pos]
            if header & 0x80:  # forbidden bit: not an OBU stream
                return None
            obu_type, has_extension, has_size = (
                (header >> 3) & 0xF,
                (header >> 2) & 1,
                (header >> 1) & 1,
            )
            pos += 1 + has_extension
            if has_size:
                size, used = _leb128(data, pos)
                pos += used
            else:
                size = len(data) - pos
            payload = data[pos : pos + size]
            pos += size
            if obu_type == 1 and payload:
                # OBU_SEQUENCE_HEADER: seq_profile(3), still_picture(1),
                # reduced_still_picture_header(1), ...
                sequence_header = True
                reduced_still = bool((payload[0] >> 3) & 1)
            elif obu_type in (3, 6) and payload:  # OBU_FRAME_HEADER, OBU_FRAME
                if reduced_still:
                    return sequence_header
                if payload[0] >> 7:  # show_existing_frame
                    return False
                if (payload[0] >> 5) & 3 != 0:  # frame_type other than KEY_FRAME
                    return False
                return True if sequence_header else None
        return None
    except IndexError:
        return None


def _annexb_first_vcl(data: bytes, hevc: bool) -> int | None:
    """NAL unit type of the first VCL NAL unit of an Annex B access unit (None if none)."""
    pos = 0
    while True:
        start = data.find(b"\x00\x00\x01", pos)
        if start < 0 or start + 3 >= len(data):
            return None
        header = data[start + 3]
        if hevc:
            nal_type = (header >> 1) & 0x3F
            if nal_type < 32:  # VCL
                return nal_type
        else:
            nal_type = header & 0x1F
            if 1 <= nal_type <= 5:  # coded slices
                return nal_type
        # Emulation prevention keeps 00 00 01 out of NAL payloads, so the
        # next match is the next NAL unit.
        pos = start + 3


def _annexb_no_picture(data: bytes, hevc: bool) -> bool:
    """True for an Annex B chunk of NAL units none of which is a coded slice."""
    return data.find(b"\x00\x00\x01") >= 0 and _annexb_first_vcl(data, hevc) is None


def _h264_is_keyframe(data: bytes) -> bool | None:
    # An access unit is a keyframe when its slices are IDR slices (type 5);
    # all slices of a picture are of the same kind, so the first decides.
    # Our encoders put SPS (7) and PPS (8) right before each IDR.
    nal_type = _annexb_first_vcl(data, hevc=False)
    return None if nal_type is None else nal_type == 5


def _h265_is_keyframe(data: bytes) -> bool | None:
    # IRAP pictures (BLA 16-18, IDR 19-20, CRA 21) are random access points.
    nal_type = _annexb_first_vcl(data, hevc=True)
    return None if nal_type is None else 16 <= nal_type <= 21


# -- per-codec parameters (sora-sdk's video_*_params) -------------------------------------------


def _vp9_params(name: str, params: Mapping[str, Any]) -> Mapping[str, str]:
    profile = int(params.get("profile_id", 0) or 0)
    if profile != 0:
        # Profile 2 is 10-bit: PyAV's libvpx-vp9 has no high-bit-depth
        # formats, and the pictures are 8-bit BGR anyway.
        raise ValueError(
            f"VP9 profile_id {profile} is not supported: Hibiki encodes VP9 profile 0 (8-bit 4:2:0)"
        )
    return {}


def _av1_params(name: str, params: Mapping[str, Any]) -> Mapping[str, str]:
    profile = int(params.get("profile", 0) or 0)
    if profile != 0:
        raise ValueError(
            f"AV1 profile {profile} is not supported: Hibiki encodes AV1 Main profile (profile 0, 4:2:0)"
        )
    return {}


_H264_PROFILES = {0x42: "baseline", 0x4D: "main", 0x64: "high"}


def _h264_params(name: str, params: Mapping[str, Any]) -> Mapping[str, str]:
    """``{"profile_level_id": "42e01f"}`` -> profile and level options of the H.264 encoder."""
    plid = params.get("profile_level_id")
    if not plid:
        return {}
    try:
        value = int(str(plid), 16)
        if len(str(plid)) != 6:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"h264 profile_level_id must be 6 hex digits, got {plid!r}"
        ) from None
    profile_idc, constraints, level_idc = value >> 16, (value >> 8) & 0xFF, value & 0xFF
    profile = _H264_PROFILES.get(profile_idc)
    if profile is None:
        raise ValueError(
            f"h264 profile_level_id {plid}: profile_idc 0x{profile_idc:02x} is not supported "
            "(Hibiki encodes Constrained Baseline, Baseline, Main and High)"
        )
    # level_idc 11 with constraint_set3 in Baseline is level 1b (RFC 6184 8.1).
    if level_idc == 11 and profile_idc == 0x42 and constraints & 0x10:
        level = "1b"
    else:
        level = (
            f"{level_idc // 10}.{level_idc % 10}"
            if level_idc % 10
            else str(level_idc // 10)
        )
    if name == "libx264":
        # x264 writes the lowest profile the stream fits, and ultrafast's
        # stream fits Baseline; turn on what Main (CABAC) and High (also the
        # 8x8 transform) add, which buys ~10% bitrate for ~25% more time.
        features = {
            "main": {"coder": "cabac"},
            "high": {"coder": "cabac", "8x8dct": "1"},
        }
        return {"profile": profile, "level": level, **features.get(profile, {})}
    if name == "h264_nvenc":
        return {"profile": profile, "level": level}
    if name == "h264_amf":
        return {"profile": "constrained_baseline" if profile == "baseline" else profile}
    if name == "libopenh264":
        return {"profile": "constrained_baseline" if profile == "baseline" else profile}
    if name == "h264_qsv":
        return {"profile": profile}
    return {}  # v4l2m2m: the device decides


# -- encoder rows -------------------------------------------------------------------------------


def _vp9_sized(width: int, height: int, threads: int) -> Mapping[str, str]:
    # libwebrtc's speeds for VP9 realtime: 7 at small sizes (where it is
    # cheap and quality shows), 8 from VGA up. Row multithreading and tile
    # columns only when there are threads to use them (they cost a little
    # compression and, on a busy 2-core box, time).
    options = {"cpu-used": "7" if width * height <= 640 * 480 else "8"}
    if threads > 1:
        options["row-mt"] = "1"
        options["tile-columns"] = str(max(0, min(int(math.log2(threads)), 4)))
    else:
        options["row-mt"] = "0"
    return options


def _svtav1_sized(width: int, height: int, threads: int) -> Mapping[str, str]:
    # rtc=1 is SVT-AV1's real-time mode: low-delay prediction (no frame is
    # held back), no look-ahead, no temporal filtering; it requires CBR
    # (rc=2). Presets by size like libwebrtc's libaom speeds: 10 for small
    # frames, 11 for up to 720p (5-6 ms/frame here), 12 above.
    pixels = width * height
    preset = "10" if pixels <= 640 * 360 else "11" if pixels <= 1280 * 720 else "12"
    return {
        "preset": preset,
        "svtav1-params": f"rtc=1:rc=2:lp={threads}:irefresh-type=2",
    }


def _x265_sized(width: int, height: int, threads: int) -> Mapping[str, str]:
    # repeat-headers: VPS/SPS/PPS before every IRAP picture, so a receiver
    # can start at any keyframe; open-gop=0: keyframes are IDR, not CRA;
    # info=0: no 2 KB "x265 (build...) options:" SEI on every keyframe (it
    # is waste, and str0m splits frames after a NAL unit that big);
    # pools: worker threads (zerolatency already means one frame thread).
    return {
        "x265-params": (
            "repeat-headers=1:annexb=1:open-gop=0:aud=0:info=0:log-level=error"
            f":pools={threads}"
        ),
    }


_NVENC = {
    # Fastest preset, ultra-low-latency tuning, CBR, no frame held back,
    # forced keyframes as IDR; SPS/PPS (or the AV1 sequence header) come
    # before every IDR because the context has no global header.
    "preset": "p1",
    "tune": "ull",
    "rc": "cbr",
    "zerolatency": "1",
    "delay": "0",
    "forced-idr": "1",
    "no-scenecut": "1",
}
_QSV = {"preset": "veryfast", "async_depth": "1", "low_delay_brc": "1"}
_AMF = {"usage": "ultralowlatency", "quality": "speed", "rc": "cbr"}

_VIDEO_CODECS: Mapping[str, _VideoCodecSpec] = MappingProxyType(
    {
        "VP8": _VideoCodecSpec(
            encoders=(
                _EncoderChoice(
                    "libvpx",
                    {
                        "deadline": "realtime",
                        # A positive cpu-used in realtime mode is libvpx's
                        # automatic speed: it picks the speed per frame so
                        # that encoding takes (16 - 8) / 16 of the frame
                        # interval at most, so a slow machine gets a faster,
                        # rougher encode instead of falling behind. (Static
                        # -6, libwebrtc's desktop speed, took 15 % less
                        # CPU at the same PSNR for 720p on a 2-core box, but
                        # cannot speed up when the machine is busy.)
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
                        # libvpx's quantizer range (0-63), as libwebrtc.
                        "qmin": "2",
                        "qmax": "56",
                    },
                ),
                _EncoderChoice(
                    "vp8_v4l2m2m", threads=_one_thread, follows_timestamps=False
                ),
            ),
            is_keyframe=_vp8_is_keyframe,
        ),
        "VP9": _VideoCodecSpec(
            encoders=(
                _EncoderChoice(
                    "libvpx-vp9",
                    {
                        "deadline": "realtime",
                        "lag-in-frames": "0",
                        "error-resilient": "default",
                        # Cyclic refresh, libwebrtc's choice for realtime VP9:
                        # spreads intra refresh over frames.
                        "aq-mode": "3",
                        "frame-parallel": "0",
                        "undershoot-pct": "50",
                        "overshoot-pct": "50",
                        "max-intra-rate": "900",
                        "static-thresh": "1",
                        "drop-threshold": "30",
                        "qmin": "2",
                        "qmax": "56",
                    },
                    sized_options=_vp9_sized,
                ),
                _EncoderChoice(
                    "vp9_qsv",
                    {
                        "preset": "veryfast",
                        "async_depth": "1",
                    },  # no low_delay_brc for VP9
                    pix_fmt="nv12",
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
            ),
            is_keyframe=_vp9_is_keyframe,
            params=_vp9_params,
        ),
        "AV1": _VideoCodecSpec(
            encoders=(
                _EncoderChoice(
                    "libsvtav1", sized_options=_svtav1_sized, follows_timestamps=False
                ),
                _EncoderChoice(
                    "av1_nvenc",
                    _NVENC,
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "av1_qsv",
                    _QSV,
                    pix_fmt="nv12",
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "av1_amf",
                    _AMF,
                    pix_fmt="nv12",
                    threads=_one_thread,
                    follows_timestamps=False,
                ),
            ),
            is_keyframe=_av1_is_keyframe,
            params=_av1_params,
        ),
        "H264": _VideoCodecSpec(
            encoders=(
                _EncoderChoice(
                    "libx264",
                    {
                        "preset": "ultrafast",
                        # zerolatency: no look-ahead, no B-frames, no frame
                        # threads (sliced threads instead): out in the same call.
                        "tune": "zerolatency",
                        "forced-idr": "1",
                        # Annex B with SPS/PPS before every IDR, which the
                        # RTP packetizer and a receiver joining late need.
                        # Not force-cfr=0: rate control by timestamps would
                        # follow the frame rate, but x264 then holds every
                        # frame back until the next one arrives (measured:
                        # one frame of delay), so the frame rate is followed
                        # by reopening instead (follows_timestamps=False).
                        "x264-params": "repeat-headers=1:annexb=1",
                    },
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "h264_nvenc",
                    _NVENC,
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "h264_qsv",
                    {**_QSV, "look_ahead": "0", "forced_idr": "1"},
                    pix_fmt="nv12",
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "h264_amf",
                    {**_AMF, "forced_idr": "1"},
                    pix_fmt="nv12",
                    threads=_one_thread,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "h264_v4l2m2m", threads=_one_thread, follows_timestamps=False
                ),
                _EncoderChoice(
                    "libopenh264",
                    {"allow_skip_frames": "1"},
                    threads=_one_thread,
                    follows_timestamps=False,
                ),
            ),
            is_keyframe=_h264_is_keyframe,
            no_picture=lambda data: _annexb_no_picture(data, hevc=False),
            params=_h264_params,
        ),
        "H265": _VideoCodecSpec(
            encoders=(
                _EncoderChoice(
                    "libx265",
                    {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1"},
                    sized_options=_x265_sized,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "hevc_nvenc",
                    _NVENC,
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "hevc_qsv",
                    {**_QSV, "forced_idr": "1"},
                    pix_fmt="nv12",
                    threads=_one_thread,
                    reconfigures_bitrate=True,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "hevc_amf",
                    {**_AMF, "header_insertion_mode": "idr", "forced_idr": "1"},
                    pix_fmt="nv12",
                    threads=_one_thread,
                    follows_timestamps=False,
                ),
                _EncoderChoice(
                    "hevc_v4l2m2m", threads=_one_thread, follows_timestamps=False
                ),
            ),
            is_keyframe=_h265_is_keyframe,
            no_picture=lambda data: _annexb_no_picture(data, hevc=True),
        ),
    }
)


def _spec(codec: str) -> _VideoCodecSpec:
    spec = _VIDEO_CODECS.get(codec)
    if spec is None:
        known = ", ".join(sorted(_VIDEO_CODECS))
        raise ValueError(f"unsupported video codec {codec!r} (supported: {known})")
    return spec


def _implementation(value: Implementation | str | None) -> Implementation:
    return Implementation.INTERNAL if value is None else Implementation.coerce(value)


class CodecUnavailable(RuntimeError):
    """No FFmpeg codec of the list opened; :attr:`reasons` says why, per codec name."""

    def __init__(self, message: str, reasons: Mapping[str, str]) -> None:
        super().__init__(message)
        self.reasons: dict[str, str] = dict(reasons)
        """FFmpeg codec name -> ``"not built into FFmpeg"`` or ``"did not open: ..."``."""


class VideoEncoder:
    """Encode BGR frames into :class:`EncodedFrame` s for one video track.

    >>> enc = VideoEncoder("H264", bitrate=1_500_000)
    >>> frames = enc.encode(bgr, rtp_time=0)
    >>> enc.set_bitrate(800_000)               # e.g. from a bandwidth estimate

    The FFmpeg context is opened on the first frame and reopened (the first
    frame after that is a keyframe) when the frame size changes, when a
    bitrate change cannot be applied in place (at the next keyframe), and,
    for encoders whose rate control assumes a fixed frame rate, when the
    frame rate measured from ``rtp_time`` drifts (also at a keyframe). Not
    thread safe: one encoder per track, used from one thread.
    """

    def __init__(
        self,
        codec: str = "VP8",
        bitrate: int = 1_500_000,
        framerate: int = 30,
        *,
        params: Mapping[str, Any] | None = None,
        implementation: Implementation | str | None = None,
        _encoders: tuple[str, ...] | None = None,
    ) -> None:
        """Create an encoder.

        Args:
            codec: Upper-case codec name: ``"VP8"``, ``"VP9"``, ``"AV1"``,
                ``"H264"`` or ``"H265"``.
            bitrate: Target bitrate in bit/s.
            framerate: Nominal frame rate: the rate control's idea of frame
                duration until frames arrive. From then on the spacing of
                their timestamps counts, smoothed over about 10 frames; a
                single long gap is a pause of the source, not a frame rate.
            params: sora-sdk's per-codec parameters for this codec, e.g.
                ``{"profile_level_id": "42e01f"}`` (``video_h264_params``),
                ``{"profile_id": 0}`` (``video_vp9_params``) or
                ``{"profile": 0}`` (``video_av1_params``).
            implementation: Which FFmpeg codecs to use
                (:class:`~hibiki.media.codecs.Implementation`; default
                ``INTERNAL``, the software encoders).

        Raises:
            ValueError: Unknown codec or implementation, a bitrate/framerate
                that is not positive, or ``params`` the encoder cannot honour.
            RuntimeError: ``implementation`` has no working encoder for
                ``codec`` on this machine (the message names the FFmpeg
                encoder and why, e.g. ``h264_nvenc did not open: Cannot load
                libcuda.so.1``).
        """
        self._spec = _spec(codec)
        if bitrate <= 0 or framerate <= 0:
            raise ValueError("bitrate and framerate must be > 0")
        self._implementation = _implementation(implementation)
        if _encoders is not None:  # hibiki.media.codecs probes one encoder at a time
            names = _encoders
        else:
            names = encoder_names(codec, self._implementation)
            if self._implementation is not Implementation.INTERNAL:
                # Say now, not on the first frame, that the hardware is missing.
                support = probe_one(codec, self._implementation)
                if not support.can_encode:
                    raise RuntimeError(missing_message(support, "encoder"))
                names = tuple(sorted(names, key=lambda n: n != support.encoder))
        self._choices = tuple(self._spec.encoder(name) for name in names)
        self._params = dict(params or {})
        # Checked here so that a bad parameter fails the caller, not a frame.
        self._param_options = {
            c.name: dict(self._spec.params(c.name, self._params)) for c in self._choices
        }
        self._codec = codec
        self._bitrate = bitrate
        self._framerate = framerate
        self._ctx: av.VideoCodecContext | None = None
        self._choice: _EncoderChoice | None = None
        self._size: tuple[int, int] | None = None
        self._opened_bitrate = bitrate
        self._opened_framerate = float(framerate)
        self._keyframe_requested = False
        self._reopen_pending = False
        self._last_pts: int | None = None
        self._last_key_rtp: int | None = None
        self._last_rtp: int | None = None
        self._mean_spacing: float | None = None  # RTP ticks between frames, smoothed
        self._paused = False  # the last gap was a pause (see _observe)
        self._recent: deque[float] = deque(maxlen=5)  # the last gaps (not pauses)
        self._last_urgent_rtp: int | None = None  # see _framerate_urgent
        self._opened_rtp: int | None = None  # the first frame of the open encoder
        # The encoder was opened at the nominal rate, before one was measured.
        self._framerate_guessed = True
        # pts -> rtp_time, for the (codec-dependent) case that a packet comes
        # out later than its frame went in.
        self._rtp_of_pts: dict[int, int] = {}
        self._scaler = VideoReformatter()  # for encode(size=...): keeps its swscale context

    @staticmethod
    def check_params(
        codec: str,
        params: Mapping[str, Any],
        implementation: Implementation | str | None = None,
    ) -> None:
        """Raise ValueError if an encoder of ``implementation`` cannot honour ``params`` for ``codec``.

        What ``VideoEncoder(codec, params=params, implementation=...)``
        checks, without probing or opening anything (for ``connect`` to fail
        early on, e.g., ``video_vp9_params={"profile_id": 2}``).
        """
        spec = _spec(codec)
        for name in encoder_names(codec, _implementation(implementation)):
            spec.params(name, params)

    @property
    def codec(self) -> str:
        """The codec name given at construction, e.g. ``"VP8"``."""
        return self._codec

    @property
    def implementation(self) -> Implementation:
        """The implementation whose encoders this one uses."""
        return self._implementation

    @property
    def encoder_name(self) -> str | None:
        """The FFmpeg encoder in use (e.g. ``"libvpx"``), or None before the first frame."""
        return (
            self._choice.name
            if self._ctx is not None and self._choice is not None
            else None
        )

    @property
    def bitrate(self) -> int:
        """The target bitrate in bit/s (the latest :meth:`set_bitrate`)."""
        return self._bitrate

    @property
    def framerate(self) -> float:
        """The frame rate the open encoder budgets for: nominal, or measured for fixed-rate encoders."""
        return self._opened_framerate

    def request_keyframe(self) -> None:
        """Make the next :meth:`encode` produce a keyframe (e.g. on a PLI from the far end)."""
        self._keyframe_requested = True

    def set_bitrate(self, bitrate: int) -> bool:
        """Change the target bitrate mid-stream.

        Where the FFmpeg encoder takes a new rate between frames (libx264,
        and per FFmpeg's source nvenc and qsv) a lower bitrate applies from
        the next frame, without a keyframe. Otherwise (libvpx, libvpx-vp9,
        libsvtav1, libx265, and raises above the rate libx264 was opened
        with, which its VBV caps) the encoder is reopened with the new rate
        at the next keyframe: the periodic one (at most 2 s away) or one
        asked for with :meth:`request_keyframe`.

        Returns:
            True if the new rate applies from the next frame, False if it
            waits for the next keyframe.

        Raises:
            ValueError: ``bitrate`` is not positive.
        """
        if bitrate <= 0:
            raise ValueError("bitrate must be > 0")
        self._bitrate = int(bitrate)
        ctx, choice = self._ctx, self._choice
        if ctx is None or choice is None:
            return True  # applies when the encoder opens
        if bitrate == self._opened_bitrate or (
            choice.reconfigures_bitrate and bitrate <= self._opened_bitrate
        ):
            # min/maxrate stay as opened (PyAV cannot set rc_max_rate on an
            # open context), so only a rate under the opened one fits the VBV.
            ctx.bit_rate = self._bitrate
            self._reopen_pending = False
            return True
        self._reopen_pending = True
        return False

    def _open(
        self, width: int, height: int, framerate: float
    ) -> tuple[av.VideoCodecContext, _EncoderChoice]:
        errors: dict[str, str] = {}
        for choice in self._choices:
            if choice.name not in av.codecs_available:
                errors[choice.name] = "not built into FFmpeg"
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
            ctx.framerate = Fraction(framerate).limit_denominator(1001)
            ctx.bit_rate = self._bitrate
            # Keyframes are forced every _KEYFRAME_INTERVAL_S of media time
            # (encode()); the encoder's own interval is only a safety net.
            # Counted at the nominal frame rate, not the one opened with: at
            # a measured rate far below the real one (after a slow spell) it
            # came first, every keyframe was the encoder's own, and the
            # reopen that corrects the rate, which waits for one of ours,
            # never came (x264 stayed at 4-13x its bitrate).
            ctx.gop_size = max(
                1, round(max(framerate, self._framerate) * _KEYFRAME_INTERVAL_S * 2)
            )
            ctx.max_b_frames = 0
            threads = choice.threads(width, height)
            ctx.thread_count = threads
            # Frame threading would delay every frame by a frame per thread.
            ctx.thread_type = "SLICE"
            options = {
                # minrate == maxrate == b selects CBR in libvpx and sets the
                # VBV of x264/x265/SVT-AV1; a 1 s buffer is what WebRTC allows.
                "minrate": str(self._bitrate),
                "maxrate": str(self._bitrate),
                "bufsize": str(self._bitrate),
                **choice.options,
                **(
                    choice.sized_options(width, height, threads)
                    if choice.sized_options
                    else {}
                ),
                **self._param_options.get(choice.name, {}),
            }
            ctx.options = options
            with ffmpeg_messages() as logs:
                try:
                    ctx.open()
                except av.FFmpegError as exc:
                    # Listed but unusable (a hardware encoder without its
                    # device): fall through to the next choice.
                    why = explain_ffmpeg_error(exc, logs)
                    logger.debug("video encoder %s did not open: %s", choice.name, why)
                    errors[choice.name] = f"did not open: {why}"
                    continue
            logger.debug(
                "opened %s %dx%d at %d bit/s, %.3g fps",
                choice.name,
                width,
                height,
                self._bitrate,
                framerate,
            )
            return ctx, choice
        tried = "; ".join(f"{n} {r}" for n, r in errors.items()) or "no encoder to try"
        raise CodecUnavailable(f"no usable {self._codec} encoder ({tried})", errors)

    def _observe(self, rtp_time: int) -> None:
        """Track the frame spacing (in RTP ticks) the source really has."""
        if self._last_rtp is not None and rtp_time > self._last_rtp:
            spacing = float(rtp_time - self._last_rtp)
            mean = self._mean_spacing
            if mean is None:
                self._mean_spacing = spacing
            elif spacing > _PAUSE * mean and not self._paused:
                # A pause is not a frame rate: counted in, it made the next
                # frames look long, and the rate control gave each of them
                # that much time's worth of bits (after a 5 s pause VP8 sent
                # 1.9x its target for a second; x264, x265 and SVT-AV1,
                # reopened at 2 fps, 13-16x). The next gap tells.
                self._paused = True
            elif spacing > _PAUSE * mean:
                # Two long gaps in a row: the source is slower now.
                self._mean_spacing = spacing
                self._paused = False
            else:
                # Smooth over ~10 frames so that jitter does not look like a change.
                self._mean_spacing = 0.9 * mean + 0.1 * spacing
                self._paused = False
            if not self._paused:
                self._recent.append(spacing)
        self._last_rtp = rtp_time

    def _frame_spacing(self) -> float:
        """The source's frame spacing in RTP ticks, smoothed (nominal until measured)."""
        if self._mean_spacing is None:
            return VIDEO_CLOCK_RATE / self._framerate
        return self._mean_spacing

    def _measured_framerate(self) -> float:
        if self._mean_spacing is None:
            return float(self._framerate)
        return min(max(VIDEO_CLOCK_RATE / self._mean_spacing, 1.0), 240.0)

    def _framerate_ratio(self) -> float | None:
        """Measured frame rate / the one the encoder was opened with, where it matters."""
        if (
            self._choice is None
            or self._choice.follows_timestamps
            or self._mean_spacing is None
        ):
            return None
        return self._measured_framerate() / self._opened_framerate

    def _framerate_drifted(self) -> bool:
        ratio = self._framerate_ratio()
        return ratio is not None and (
            ratio > _FRAMERATE_DRIFT or ratio < 1 / _FRAMERATE_DRIFT
        )

    def _framerate_urgent(self, rtp_time: int) -> bool:
        """Whether the encoder's frame rate is wrong enough to reopen now, not at the next keyframe.

        When the source is faster than the encoder thinks, each frame still
        gets the bits of one frame at the opened rate, so it sends that ratio
        over its bitrate until the reopen (measured: x264 2x, SVT-AV1 2.4x
        for the second after a source went from 15 to 30 fps, as the
        adaptation does when the estimate recovers). A keyframe costs less.
        A slower source only undershoots and waits, unless the encoder was
        opened at the nominal rate before any was measured (a 15 fps camera
        was sent at half its bitrate for the first 2 s); that one is
        corrected 0.5 s after the open.
        """
        ratio = self._framerate_ratio()
        if ratio is None or len(self._recent) < 3:  # decide on a few gaps, not one
            return False
        if 1 / _FRAMERATE_DRIFT <= ratio <= _FRAMERATE_DRIFT:
            self._framerate_guessed = False  # the nominal rate was right
            return False
        if ratio > 1:
            # At most one such reopen per quarter interval while a ramp
            # goes on (whatever other keyframes came meanwhile).
            since = self._last_urgent_rtp
        elif self._framerate_guessed:
            since = self._opened_rtp
        else:
            return False
        return since is None or not 0 <= rtp_time - since < _KEYFRAME_INTERVAL // 4

    def encode(
        self,
        bgr: npt.NDArray[np.uint8],
        rtp_time: int,
        force_keyframe: bool = False,
        size: tuple[int, int] | None = None,
    ) -> list[EncodedFrame]:
        """Encode one frame.

        Args:
            bgr: ``(height, width, 3)`` uint8 BGR image (OpenCV's layout).
            rtp_time: Capture time in the 90 kHz RTP clock; should increase
                from frame to frame. Its spacing is the frame rate.
            force_keyframe: Make this frame a keyframe.
            size: ``(width, height)`` to encode at, when the bitrate does not
                carry the captured size (see :mod:`hibiki.media.adaptation`).
                Scaling happens in the same swscale pass as the colour
                conversion, so it costs nothing extra. Even numbers.

        Returns:
            The encoded frames this call produced: normally exactly one, with
            ``rtp_time`` of its input frame; none if the encoder dropped the
            frame to hold the bitrate (content far too complex for it).

        Raises:
            ValueError: ``bgr`` is not an HxWx3 uint8 array.
            RuntimeError: no encoder of the implementation opens at this size.
        """
        if not (
            isinstance(bgr, np.ndarray)
            and bgr.dtype == np.uint8
            and bgr.ndim == 3
            and bgr.shape[2] == 3
        ):
            raise ValueError("bgr must be a (height, width, 3) uint8 array")
        in_height, in_width = bgr.shape[:2]
        width, height = size if size is not None else (in_width, in_height)
        self._observe(rtp_time)
        urgent = self._framerate_urgent(rtp_time)
        if urgent:
            self._last_urgent_rtp = rtp_time
        keyframe = (
            force_keyframe
            or urgent
            or self._keyframe_requested
            or self._last_key_rtp is None
            or not 0 <= rtp_time - self._last_key_rtp < _KEYFRAME_INTERVAL
        )
        self._keyframe_requested = False
        if keyframe:
            # Counted from the decision, not from the encoder's output, so
            # that an encoder that holds a frame back is not asked twice.
            self._last_key_rtp = rtp_time
        out: list[EncodedFrame] = []
        reopen = (
            self._ctx is None
            or self._size != (width, height)
            or (keyframe and (self._reopen_pending or self._framerate_drifted()))
        )
        if reopen:
            if self._ctx is not None:
                # Drain what the old context still holds (nothing for these
                # zero-latency settings) before replacing it.
                out = self._flush(rtp_time)
            choice = self._choice
            measured = choice is not None and not choice.follows_timestamps
            framerate = (
                self._measured_framerate() if measured else float(self._framerate)
            )
            if urgent and framerate > self._opened_framerate and self._recent:
                # The smoothed rate lags a rising source by ~10 frames (it
                # is at 37.5 when a ramp from 30 to 60 fps trips the check,
                # and would need a second reopen 0.5 s later); the last few
                # gaps say where it is now. Too high only undershoots until
                # the next check.
                recent = VIDEO_CLOCK_RATE * len(self._recent) / sum(self._recent)
                framerate = max(framerate, min(recent, 240.0))
            self._ctx, self._choice = self._open(width, height, framerate)
            if self._choice.follows_timestamps:
                framerate = float(self._framerate)
            self._size = (width, height)
            self._opened_bitrate = self._bitrate
            self._opened_framerate = framerate
            self._framerate_guessed = self._mean_spacing is None or not measured
            self._opened_rtp = rtp_time
            self._reopen_pending = False
            self._rtp_of_pts.clear()
            self._last_pts = None

        ctx = self._ctx
        assert ctx is not None
        # Same size into an I420 encoder (the usual case): the Rust core's
        # SIMD conversion, 8x faster than swscale (hibiki.media.pixels).
        frame = (
            bgr_to_frame(bgr, ctx.pix_fmt)
            if bgr.shape[1] == width and bgr.shape[0] == height
            else None
        )
        if frame is None:
            # Wrap the caller's pixels without a copy (from_ndarray would copy
            # 2.7 MB per 720p frame, ~3 ms): the reformat below converts them
            # before returning, so nothing reads the array after this call.
            frame = av.VideoFrame.from_numpy_buffer(
                np.ascontiguousarray(bgr), format="bgr24"
            )
            # Scale (when asked) and convert to the encoder's format in one
            # swscale pass of our own, on one thread: left to the codec
            # context, swscale would start a thread pool per context, which
            # costs more CPU than it saves on small machines (the source has
            # its own worker thread) and outlives the context until garbage
            # collection.
            frame = self._scaler.reformat(
                frame, width=width, height=height, format=ctx.pix_fmt, interpolation="BILINEAR", threads=1
            )
        # The encoder's clock advances by the source's smoothed frame spacing,
        # not by each capture time's own step (libwebrtc feeds libvpx such a
        # clock too). With the capture times, frames dropped unevenly (1 in
        # 10 or 1 in 4, as the adaptation does for 27 or 22.5 fps, or by a
        # camera) made VP8 and VP9 send 1.6x or 1.4x their target bitrate;
        # with this clock they hold it. It also keeps pts strictly increasing whatever the caller
        # passes. Packets still carry their frame's capture time
        # (`_rtp_of_pts`).
        pts = (
            rtp_time
            if self._last_pts is None
            else self._last_pts + max(1, round(self._frame_spacing()))
        )
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = ctx.time_base
        self._rtp_of_pts[pts] = rtp_time
        if keyframe and not reopen:
            # FFmpeg encoders turn an I picture type into a forced keyframe
            # (an IDR with the forced-idr options above). A freshly opened
            # context starts with one anyway.
            frame.pict_type = PictureType.I

        # The context converts BGR to its pixel format with a cached swscale
        # context of its own.
        return out + self._packets(ctx.encode(frame), pts, rtp_time)

    def _flush(self, rtp_time: int) -> list[EncodedFrame]:
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return []
        try:
            # An empty frame drains the encoder; SVT-AV1 also wants it before
            # it is freed ("deinit called without sending EOS").
            return self._packets(ctx.encode(None), self._last_pts or 0, rtp_time)
        except (av.FFmpegError, ValueError) as exc:
            logger.debug(
                "flushing %s: %s", self._choice.name if self._choice else "?", exc
            )
            return []

    def close(self) -> list[EncodedFrame]:
        """Drain and free the FFmpeg encoder; return what it still held (usually nothing).

        The encoder may be used again afterwards: the next frame reopens it
        (as a keyframe).
        """
        return self._flush(self._last_rtp or 0)

    def __del__(self) -> None:
        # Flush on garbage collection too, for SVT-AV1's sake (see _flush);
        # a finalizer must never raise.
        with contextlib.suppress(Exception):
            if getattr(self, "_ctx", None) is not None:
                self._flush(0)

    def _packets(
        self, packets: list[av.Packet[Any]], pts: int, rtp_time: int
    ) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        for packet in packets:
            packet_pts = packet.pts if packet.pts is not None else pts
            encoded = EncodedFrame(
                data=bytes(packet),
                rtp_time=self._rtp_of_pts.pop(packet_pts, rtp_time),
                keyframe=packet.is_keyframe,
            )
            if encoded.keyframe:
                self._last_key_rtp = encoded.rtp_time
            out.append(encoded)
        # Frames the encoder dropped never come back; forget them so the map
        # cannot grow.
        if len(self._rtp_of_pts) > 64:
            for stale in sorted(self._rtp_of_pts)[:-64]:
                del self._rtp_of_pts[stale]
        return out


# -- decoded pictures ------------------------------------------------------------------------------


class _BgrConverter:
    """Converts decoded frames to BGR, from any thread.

    8-bit I420/NV12 (what decoders give) goes through the Rust core's SIMD
    kernels; other layouts (10-bit, 4:4:4) through one cached swscale context.
    """

    __slots__ = ("_lock", "_reformatter")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reformatter = VideoReformatter()

    def convert(self, frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
        """``frame`` as a new C-contiguous ``(height, width, 3)`` uint8 BGR array."""
        fast = frame_to_bgr(frame)  # 8-bit 4:2:0: the Rust core, no lock needed
        if fast is not None:
            return fast
        # The reformatter keeps its swscale context between calls (cheap for
        # a stream of same-size frames) but is not thread safe.
        with self._lock:
            # One swscale thread: see VideoEncoder.encode.
            bgr = self._reformatter.reformat(frame, format="bgr24", threads=1).to_ndarray()
        return np.ascontiguousarray(bgr)


# Pixel formats whose planes are 4:2:0 8-bit, in the two layouts decoders give.
_I420_FORMATS = frozenset({"yuv420p", "yuvj420p"})
_NV12_FORMATS = frozenset({"nv12"})


class DecodedPicture:
    """One decoded picture: the decoder's own frame, with zero-copy plane views and a lazy BGR copy.

    >>> picture = decoder.decode_pictures(data)[0]
    >>> y, u, v = picture.i420()             # numpy views of the decoder's buffers, no copy
    >>> picture.pixel_format, picture.strides
    ('yuv420p', (1280, 640, 640))
    >>> bgr = picture.bgr()                  # converted on first use, then cached

    Software decoders give ``yuv420p`` (I420: Y, U and V planes); hardware
    decoders (cuvid, qsv) give ``nv12`` (Y, then U and V interleaved).

    Lifetime: the plane arrays are views of the frame's buffers and keep the
    frame alive; they are valid as long as you hold them (or this object),
    and read-only, because every sink of a track shares the same picture.
    Copy them (``np.array(y)``) to modify them. Holding many pictures holds
    their buffers: fine for software decoders, whose buffer pools grow, but
    hardware decoders with a fixed number of surfaces may stall; copy what
    you keep for long.
    """

    __slots__ = ("_bgr", "_converter", "_lock", "_planes", "frame")

    def __init__(
        self, frame: av.VideoFrame, converter: _BgrConverter | None = None
    ) -> None:
        """Wrap a decoded ``av.VideoFrame`` (in system memory)."""
        self.frame = frame
        """The decoded ``av.VideoFrame`` itself."""
        self._converter = converter if converter is not None else _BgrConverter()
        self._lock = threading.Lock()
        self._bgr: npt.NDArray[np.uint8] | None = None
        self._planes: tuple[npt.NDArray[Any], ...] | None = None

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.frame.width)

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.frame.height)

    @property
    def pixel_format(self) -> str:
        """FFmpeg's name of the decoded layout: ``"yuv420p"``, ``"nv12"``, ``"yuv420p10le"``..."""
        return str(self.frame.format.name)

    @property
    def strides(self) -> tuple[int, ...]:
        """Bytes from one row to the next, per plane (FFmpeg's line sizes; may exceed the width)."""
        return tuple(int(p.line_size) for p in self.frame.planes)

    @property
    def converted(self) -> bool:
        """True once :meth:`bgr` has made its BGR copy."""
        return self._bgr is not None

    def bgr(self) -> npt.NDArray[np.uint8]:
        """The picture as a ``(height, width, 3)`` uint8 BGR array, converted at most once.

        Thread safe: concurrent first calls convert once and share the result.
        """
        bgr = self._bgr
        if bgr is None:
            with self._lock:
                bgr = self._bgr
                if bgr is None:
                    bgr = self._bgr = self._converter.convert(self.frame)
        return bgr

    def planes(self) -> tuple[npt.NDArray[Any], ...]:
        """Read-only numpy views of the frame's planes, without copying.

        One array per plane, ``(rows, columns)`` for a plane of one
        component and ``(rows, columns, components)`` for interleaved ones:
        ``yuv420p`` gives Y ``(h, w)``, U and V ``(h/2, w/2)``; ``nv12``
        gives Y ``(h, w)`` and UV ``(h/2, w/2, 2)``. 8-bit formats are
        uint8, deeper ones (``yuv420p10le``, ``p010le``) uint16. Rows are
        :attr:`strides` bytes apart, so the arrays are not C-contiguous when
        FFmpeg padded the rows.
        """
        planes = self._planes
        if planes is None:
            planes = self._planes = _plane_views(self.frame)
        return planes

    def i420(
        self,
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """Y, U and V as read-only uint8 views, without copying (for ``nv12``, U and V are strided views).

        Raises:
            ValueError: the picture is not 8-bit 4:2:0 (use :meth:`planes`).
        """
        fmt = self.pixel_format
        planes = self.planes()
        if fmt in _I420_FORMATS:
            return planes[0], planes[1], planes[2]
        if fmt in _NV12_FORMATS:
            uv = planes[1]
            return planes[0], uv[:, :, 0], uv[:, :, 1]
        raise ValueError(
            f"i420() needs an 8-bit 4:2:0 picture; this one is {fmt}: use planes()"
        )

    def __repr__(self) -> str:
        return f"DecodedPicture({self.width}x{self.height} {self.pixel_format})"


def _plane_views(frame: av.VideoFrame) -> tuple[npt.NDArray[Any], ...]:
    fmt = frame.format
    views: list[npt.NDArray[Any]] = []
    for index, plane in enumerate(frame.planes):
        components = [c for c in fmt.components if c.plane == index]
        count = max(1, len(components))
        deep = any(c.bits > 8 for c in components)
        dtype = np.dtype("<u2") if deep else np.dtype(np.uint8)
        rows, columns, line = int(plane.height), int(plane.width), int(plane.line_size)
        if count == 1:
            shape: tuple[int, ...] = (rows, columns)
            strides: tuple[int, ...] = (line, dtype.itemsize)
        else:
            shape = (rows, columns, count)
            strides = (line, count * dtype.itemsize, dtype.itemsize)
        # np.ndarray over the plane's buffer: a view that holds a reference
        # to the plane (and through it the frame), so it stays valid.
        view: npt.NDArray[Any] = np.ndarray(
            shape, dtype=dtype, buffer=memoryview(plane), offset=0, strides=strides
        )
        view.flags.writeable = False
        views.append(view)
    return tuple(views)


class VideoDecoder:
    """Decode :class:`EncodedFrame` payloads of one track into pictures.

    :meth:`decode_pictures` gives :class:`DecodedPicture` s (zero-copy
    planes, BGR on demand); :meth:`decode` gives BGR arrays.

    Robust by design: corrupt input is logged at debug level and yields no
    picture instead of raising, and delta frames are dropped until a keyframe
    arrives (at the start, after an error, or after :meth:`expect_keyframe`)
    so that the caller never sees the smeared pictures a decoder makes from
    missing references. :attr:`needs_keyframe` tells the caller when to ask
    the sender for one.
    """

    def __init__(
        self,
        codec: str = "VP8",
        *,
        implementation: Implementation | str | None = None,
        _decoders: tuple[str, ...] | None = None,
    ) -> None:
        """Create a decoder for ``codec`` (e.g. ``"VP8"``).

        Args:
            codec: Upper-case codec name.
            implementation: Which FFmpeg decoders to use (default
                ``INTERNAL``: FFmpeg's own and dav1d).

        Raises:
            ValueError: Unknown codec or implementation.
            RuntimeError: No decoder of the implementation works here (for
                hardware, the message names the decoder and why, e.g.
                ``h264_cuvid did not open: Cannot load libnvcuvid.so.1``).
        """
        self._spec = _spec(codec)
        self._codec = codec
        self._implementation = _implementation(implementation)
        if _decoders is not None:  # hibiki.media.codecs probes one decoder at a time
            names = _decoders
        else:
            names = decoder_names(codec, self._implementation)
            if self._implementation is not Implementation.INTERNAL:
                # Hardware decoders may open without their device and fail
                # on the first packet; the probe decodes a real frame.
                support = probe_one(codec, self._implementation)
                if not support.can_decode:
                    raise RuntimeError(missing_message(support, "decoder"))
                names = (support.decoder,) if support.decoder else names
        self._ctx = self._open(names)
        self._converter = _BgrConverter()
        self._needs_keyframe = True
        self.errors = 0
        """Frames FFmpeg refused to decode (corrupt, or missing their references)."""
        self._last_error: str | None = None

    def _open(self, names: tuple[str, ...]) -> av.VideoCodecContext:
        errors: dict[str, str] = {}
        for name in names:
            if name not in av.codecs_available:
                errors[name] = "not built into FFmpeg"
                continue
            with ffmpeg_messages() as logs:
                try:
                    ctx = av.CodecContext.create(name, "r")
                    assert isinstance(ctx, av.VideoCodecContext)
                    # One thread: FFmpeg's VP8 decoder does 720p in about 1.5 ms,
                    # and extra threads only contend with the encoder and the
                    # engine on small machines. Never frame threads, which would
                    # hold back a frame per thread.
                    ctx.thread_count = 1
                    ctx.thread_type = "SLICE"
                    # Output each picture as soon as it is decoded: dav1d
                    # would otherwise keep a frame queue, cuvid a display delay.
                    ctx.flags |= Flags.low_delay
                    ctx.open()
                except av.FFmpegError as exc:
                    why = explain_ffmpeg_error(exc, logs)
                    logger.debug("video decoder %s did not open: %s", name, why)
                    errors[name] = f"did not open: {why}"
                    continue
            return ctx
        tried = "; ".join(f"{n} {r}" for n, r in errors.items()) or "no decoder to try"
        raise CodecUnavailable(f"no usable {self._codec} decoder ({tried})", errors)

    @property
    def codec(self) -> str:
        """The codec name given at construction, e.g. ``"VP8"``."""
        return self._codec

    @property
    def implementation(self) -> Implementation:
        """The implementation whose decoders this one uses."""
        return self._implementation

    @property
    def decoder_name(self) -> str:
        """The FFmpeg decoder in use, e.g. ``"vp8"`` or ``"libdav1d"``."""
        return str(self._ctx.name)

    @property
    def needs_keyframe(self) -> bool:
        """True while delta frames are being dropped for want of a keyframe."""
        return self._needs_keyframe

    @property
    def last_error(self) -> str | None:
        """Why the last frame that failed to decode failed (None if none did)."""
        return self._last_error

    def expect_keyframe(self) -> None:
        """Drop delta frames until the next keyframe; call it when frames were lost."""
        self._needs_keyframe = True

    def decode(
        self, data: bytes, keyframe: bool | None = None
    ) -> list[npt.NDArray[np.uint8]]:
        """Decode one encoded frame into zero or more ``(height, width, 3)`` uint8 BGR arrays.

        Each array is a new C-contiguous copy. Use :meth:`decode_pictures`
        for the decoder's planes without conversion. Arguments and error
        handling as :meth:`decode_pictures`.
        """
        return [picture.bgr() for picture in self.decode_pictures(data, keyframe)]

    def decode_pictures(
        self, data: bytes, keyframe: bool | None = None
    ) -> list[DecodedPicture]:
        """Decode one encoded frame into zero or more :class:`DecodedPicture` s (no conversion).

        Args:
            data: One encoded frame, as produced by :class:`VideoEncoder` or
                reassembled by the engine.
            keyframe: Whether ``data`` is a keyframe, as the depacketizer
                saw it, or None. Used only when the bitstream does not tell
                (the sniffers read VP8, VP9, H.264 and H.265 headers, and
                AV1 when a sequence header is present); otherwise the
                bitstream wins, so a wrong flag can never make the decoder
                skip a keyframe.

        Never raises on bad input: a frame that does not decode is logged at
        debug level and returns ``[]`` (and the decoder then waits for a keyframe).
        """
        if not data:
            # An empty packet would put the FFmpeg decoder into drain mode.
            return []
        if self._spec.no_picture(data):
            # Parameter sets/SEI without a slice. str0m 0.25's H.265
            # depacketizer ends a frame at the end of every fragmented NAL
            # unit, so a keyframe whose SEI or VPS/SPS/PPS exceed the MTU
            # arrives as [parameter sets] + [IDR] with the same timestamp,
            # the first flagged as a delta frame. The decoder needs them
            # before the IDR; they neither end nor start the wait for one.
            return self._feed(data)
        sniffed = self._spec.is_keyframe(data)
        if sniffed is not None:
            keyframe = sniffed
        if self._needs_keyframe:
            if keyframe is False:
                logger.debug(
                    "%s decoder: dropping a delta frame while waiting for a keyframe",
                    self._codec,
                )
                return []
            # A keyframe (or a frame we cannot classify) resets the wait.
            self._needs_keyframe = False
        errors = self.errors
        pictures = self._feed(data)
        if sniffed is True and self.errors > errors:
            # Some garbage (dav1d: a cut keyframe, then noise) leaves a
            # decoder that refuses even good keyframes from then on. A
            # keyframe needs nothing from before: retry it on a fresh one.
            logger.debug("%s decoder: a keyframe failed, reopening %s", self._codec, self.decoder_name)
            self._ctx = self._open((self.decoder_name,))
            pictures = self._feed(data)
            if pictures:
                self.errors = errors
                self._needs_keyframe = False
        return pictures

    def _feed(self, data: bytes) -> list[DecodedPicture]:
        try:
            packet = av.Packet(data)
            return [
                DecodedPicture(frame, self._converter)
                for frame in self._ctx.decode(packet)
            ]
        except (av.FFmpegError, ValueError) as exc:
            self._last_error = str(getattr(exc, "strerror", None) or exc)
            self.errors += 1
            logger.debug(
                "%s decoder: dropping a frame of %d bytes: %s",
                self._codec,
                len(data),
                exc,
            )
            self._needs_keyframe = True
            return []
