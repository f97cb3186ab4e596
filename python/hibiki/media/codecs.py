"""Which FFmpeg codec implements each video codec, per implementation, and what this process can open.

sora-sdk lets a program choose, per codec, the *implementation* that
encodes and decodes it (its ``SoraVideoCodecImplementation``: libwebrtc's
own, OpenH264, Intel VPL, NVIDIA, AMD). Hibiki's codecs all run through
FFmpeg, so an implementation here is a family of FFmpeg codecs:

============================  ==========================================  ==========================
Implementation                encoders                                    decoders
============================  ==========================================  ==========================
``INTERNAL`` (software)       libvpx, libvpx-vp9, libsvtav1, libx264,     vp8, vp9, libdav1d, h264,
                              libx265                                     hevc (FFmpeg's own), libvpx
``NVIDIA_VIDEO_CODEC_SDK``    h264_nvenc, hevc_nvenc, av1_nvenc           \\*_cuvid (all five codecs)
``INTEL_VPL``                 h264_qsv, hevc_qsv, av1_qsv, vp9_qsv        \\*_qsv (all five codecs)
``AMD_AMF``                   h264_amf, hevc_amf, av1_amf                 h264/hevc/av1/vp9_amf
``RASPI_V4L2M2M``             h264_v4l2m2m, hevc_v4l2m2m, vp8_v4l2m2m     \\*_v4l2m2m (not AV1)
``CISCO_OPENH264``            libopenh264 (H.264 only)                    libopenh264
============================  ==========================================  ==========================

A name in this table is only a candidate: PyAV's wheel lists the hardware
codecs whether or not the machine has the hardware (``h264_nvenc`` is
"available" on a laptop without an NVIDIA GPU) and has no libopenh264 at
all. :func:`probe` therefore really opens every encoder (and encodes one
small frame) and really decodes a frame with every decoder, once per
process, and says for each (codec, implementation) what works and, when
nothing does, why.

This module imports PyAV only when it probes, so that the name tables and
:class:`CodecPreference` cost nothing to import.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CODECS",
    "CodecCapability",
    "CodecPreference",
    "CodecProbe",
    "CodecSupport",
    "Implementation",
    "decoder_names",
    "encoder_names",
    "missing_message",
    "probe",
    "probe_one",
]

logger = logging.getLogger(__name__)

CODECS: tuple[str, ...] = ("VP8", "VP9", "AV1", "H264", "H265")
"""The video codecs Hibiki encodes and decodes, by their signaling names."""


class Implementation(str, enum.Enum):
    """A family of FFmpeg codecs: sora-sdk's ``SoraVideoCodecImplementation`` mapped onto FFmpeg.

    The values are sora-sdk's JSON spellings (``"internal"``,
    ``"nvidia_video_codec_sdk"``...), so ``Implementation("intel_vpl")``
    reads what ``SoraVideoCodecPreference.to_json()`` writes.
    ``RASPI_V4L2M2M`` has no sora-sdk counterpart (libwebrtc has no
    V4L2 M2M codecs; Sora's C++ SDK has a separate Raspberry Pi build).
    """

    INTERNAL = "internal"
    """Software: libvpx, libvpx-vp9, SVT-AV1 + dav1d, x264, x265 and FFmpeg's own decoders."""
    NVIDIA_VIDEO_CODEC_SDK = "nvidia_video_codec_sdk"
    """NVENC encoders and NVDEC (cuvid) decoders."""
    INTEL_VPL = "intel_vpl"
    """Intel Quick Sync through oneVPL (FFmpeg's ``*_qsv``)."""
    AMD_AMF = "amd_amf"
    """AMD's Advanced Media Framework (FFmpeg's ``*_amf``)."""
    RASPI_V4L2M2M = "raspi_v4l2m2m"
    """V4L2 memory-to-memory codecs (Raspberry Pi and other SoCs)."""
    CISCO_OPENH264 = "cisco_openh264"
    """Cisco's OpenH264 (FFmpeg's ``libopenh264``), when FFmpeg was built with it."""

    @classmethod
    def coerce(cls, value: Implementation | str | Any) -> Implementation:
        """An :class:`Implementation` from itself, its value or name (any case), or a sora-sdk enum member.

        Raises:
            ValueError: not an implementation.
        """
        if isinstance(value, Implementation):
            return value
        # sora-sdk's (and hibiki.compat's) SoraVideoCodecImplementation is an
        # IntEnum whose member names are our names in upper case.
        name = getattr(value, "name", value)
        if isinstance(name, str):
            key = name.strip().lower()
            for member in cls:
                if key in (member.value, member.name.lower()):
                    return member
        known = ", ".join(m.value for m in cls)
        raise ValueError(
            f"unknown video codec implementation {value!r} (known: {known})"
        )


# What each implementation needs, for error messages: the part a user can act on.
_NEEDS: Mapping[Implementation, str] = {
    Implementation.INTERNAL: "INTERNAL uses the software codecs built into PyAV's FFmpeg",
    Implementation.NVIDIA_VIDEO_CODEC_SDK: (
        "NVIDIA_VIDEO_CODEC_SDK needs an NVIDIA GPU with NVENC/NVDEC and its driver "
        "(libcuda.so.1, libnvidia-encode.so.1, libnvcuvid.so.1)"
    ),
    Implementation.INTEL_VPL: (
        "INTEL_VPL needs an Intel GPU with Quick Sync, the oneVPL GPU runtime (libmfx-gen) "
        "and access to /dev/dri"
    ),
    Implementation.AMD_AMF: "AMD_AMF needs an AMD GPU and the AMF runtime (libamfrt64.so.1)",
    Implementation.RASPI_V4L2M2M: (
        "RASPI_V4L2M2M needs a V4L2 memory-to-memory codec device (/dev/video*), e.g. on a Raspberry Pi"
    ),
    Implementation.CISCO_OPENH264: (
        "CISCO_OPENH264 needs an FFmpeg built with libopenh264 (PyAV's wheel has none)"
    ),
}

_I, _N, _Q, _A, _V, _O = (
    Implementation.INTERNAL,
    Implementation.NVIDIA_VIDEO_CODEC_SDK,
    Implementation.INTEL_VPL,
    Implementation.AMD_AMF,
    Implementation.RASPI_V4L2M2M,
    Implementation.CISCO_OPENH264,
)

# FFmpeg encoder names, in order of preference within an implementation.
# Software has one tuned encoder per codec (hibiki.media.video holds the
# tuning). Gaps are real: NVENC has no VP8/VP9, Quick Sync no VP8 encoder,
# V4L2 M2M no VP9/AV1 encoder in FFmpeg.
_ENCODERS: Mapping[tuple[str, Implementation], tuple[str, ...]] = {
    ("VP8", _I): ("libvpx",),
    ("VP9", _I): ("libvpx-vp9",),
    ("AV1", _I): ("libsvtav1",),
    ("H264", _I): ("libx264",),
    ("H265", _I): ("libx265",),
    ("H264", _N): ("h264_nvenc",),
    ("H265", _N): ("hevc_nvenc",),
    ("AV1", _N): ("av1_nvenc",),
    ("VP9", _Q): ("vp9_qsv",),
    ("AV1", _Q): ("av1_qsv",),
    ("H264", _Q): ("h264_qsv",),
    ("H265", _Q): ("hevc_qsv",),
    ("AV1", _A): ("av1_amf",),
    ("H264", _A): ("h264_amf",),
    ("H265", _A): ("hevc_amf",),
    ("VP8", _V): ("vp8_v4l2m2m",),
    ("H264", _V): ("h264_v4l2m2m",),
    ("H265", _V): ("hevc_v4l2m2m",),
    ("H264", _O): ("libopenh264",),
}

# FFmpeg decoder names, in order of preference within an implementation.
# FFmpeg's own VP8/VP9 decoders come before libvpx's (faster, and what
# libwebrtc-free stacks use). FFmpeg's own "av1" decoder only drives
# hardware acceleration and decodes nothing in software (the probe says so),
# so dav1d is the software AV1 decoder.
_DECODERS: Mapping[tuple[str, Implementation], tuple[str, ...]] = {
    ("VP8", _I): ("vp8", "libvpx"),
    ("VP9", _I): ("vp9", "libvpx-vp9"),
    ("AV1", _I): ("libdav1d", "av1"),
    ("H264", _I): ("h264",),
    ("H265", _I): ("hevc",),
    ("VP8", _N): ("vp8_cuvid",),
    ("VP9", _N): ("vp9_cuvid",),
    ("AV1", _N): ("av1_cuvid",),
    ("H264", _N): ("h264_cuvid",),
    ("H265", _N): ("hevc_cuvid",),
    ("VP8", _Q): ("vp8_qsv",),
    ("VP9", _Q): ("vp9_qsv",),
    ("AV1", _Q): ("av1_qsv",),
    ("H264", _Q): ("h264_qsv",),
    ("H265", _Q): ("hevc_qsv",),
    ("VP9", _A): ("vp9_amf",),
    ("AV1", _A): ("av1_amf",),
    ("H264", _A): ("h264_amf",),
    ("H265", _A): ("hevc_amf",),
    ("VP8", _V): ("vp8_v4l2m2m",),
    ("VP9", _V): ("vp9_v4l2m2m",),
    ("H264", _V): ("h264_v4l2m2m",),
    ("H265", _V): ("hevc_v4l2m2m",),
    ("H264", _O): ("libopenh264",),
}


def _check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(
            f"unsupported video codec {codec!r} (supported: {', '.join(CODECS)})"
        )
    return codec


def encoder_names(
    codec: str, implementation: Implementation | str = Implementation.INTERNAL
) -> tuple[str, ...]:
    """FFmpeg encoder names that implement ``codec`` (e.g. ``"H264"``) for ``implementation``.

    Empty when the implementation has no encoder for the codec (NVENC and VP8).
    Whether FFmpeg has them and they open is :func:`probe`'s business.

    Raises:
        ValueError: unknown codec or implementation.
    """
    return _ENCODERS.get(
        (_check_codec(codec), Implementation.coerce(implementation)), ()
    )


def decoder_names(
    codec: str, implementation: Implementation | str = Implementation.INTERNAL
) -> tuple[str, ...]:
    """FFmpeg decoder names that implement ``codec`` for ``implementation`` (see :func:`encoder_names`)."""
    return _DECODERS.get(
        (_check_codec(codec), Implementation.coerce(implementation)), ()
    )


# -- probing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecProbe:
    """What happened when one FFmpeg codec was tried."""

    name: str
    """FFmpeg codec name, e.g. ``"h264_nvenc"``."""
    ok: bool
    """It opened and encoded (encoders) or decoded (decoders) a real frame."""
    reason: str | None = None
    """Why not, when not ``ok``: ``"not built into FFmpeg"``, ``"did not open: ..."``, ``"did not decode: ..."``."""


@dataclass(frozen=True, slots=True)
class CodecSupport:
    """Whether one codec can be encoded and decoded with one implementation in this process."""

    codec: str
    implementation: Implementation
    encoders: tuple[CodecProbe, ...]
    """Every encoder of the implementation, in order of preference, and how each fared."""
    decoders: tuple[CodecProbe, ...]
    """Likewise for decoders."""

    @property
    def encoder(self) -> str | None:
        """The FFmpeg encoder that would be used (the first that works), or None."""
        return next((p.name for p in self.encoders if p.ok), None)

    @property
    def decoder(self) -> str | None:
        """The FFmpeg decoder that would be used, or None."""
        return next((p.name for p in self.decoders if p.ok), None)

    @property
    def can_encode(self) -> bool:
        """True when some encoder of this implementation works here."""
        return self.encoder is not None

    @property
    def can_decode(self) -> bool:
        """True when some decoder of this implementation works here."""
        return self.decoder is not None

    @property
    def encoder_reason(self) -> str | None:
        """Why encoding does not work (None when it does)."""
        return (
            None
            if self.can_encode
            else _why(self.codec, self.implementation, "encoder", self.encoders)
        )

    @property
    def decoder_reason(self) -> str | None:
        """Why decoding does not work (None when it does)."""
        return (
            None
            if self.can_decode
            else _why(self.codec, self.implementation, "decoder", self.decoders)
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (for logs, ``hibiki`` CLI output and docs)."""
        return {
            "codec": self.codec,
            "implementation": self.implementation.value,
            "encoder": self.encoder,
            "decoder": self.decoder,
            "encoder_reason": self.encoder_reason,
            "decoder_reason": self.decoder_reason,
            "tried": {
                "encoders": {p.name: p.reason or "ok" for p in self.encoders},
                "decoders": {p.name: p.reason or "ok" for p in self.decoders},
            },
        }


def _why(
    codec: str, impl: Implementation, role: str, probes: tuple[CodecProbe, ...]
) -> str:
    if not probes:
        return f"{impl.name} has no {codec} {role}"
    return "; ".join(f"{p.name} {p.reason}" for p in probes)


def missing_message(support: CodecSupport, role: str) -> str:
    """The error text for a (codec, implementation) that cannot ``role`` (``"encoder"``/``"decoder"``).

    E.g. ``"no H264 encoder with NVIDIA_VIDEO_CODEC_SDK: h264_nvenc did not
    open: Cannot load libcuda.so.1 (NVIDIA_VIDEO_CODEC_SDK needs an NVIDIA GPU ...)"``.
    """
    reason = support.encoder_reason if role == "encoder" else support.decoder_reason
    impl = support.implementation
    if not (support.encoders if role == "encoder" else support.decoders):
        return f"no {support.codec} {role} with {impl.name}: {reason}"  # no hardware would help
    return f"no {support.codec} {role} with {impl.name}: {reason} ({_NEEDS[impl]})"


@dataclass(frozen=True, slots=True)
class CodecCapability:
    """:func:`probe`'s answer: a :class:`CodecSupport` for every (codec, implementation)."""

    entries: tuple[CodecSupport, ...]

    def get(
        self, codec: str, implementation: Implementation | str = Implementation.INTERNAL
    ) -> CodecSupport:
        """The entry for ``codec`` and ``implementation``.

        Raises:
            ValueError: unknown codec or implementation.
        """
        impl = Implementation.coerce(implementation)
        _check_codec(codec)
        return next(
            e for e in self.entries if e.codec == codec and e.implementation is impl
        )

    def can_encode(
        self, codec: str, implementation: Implementation | str = Implementation.INTERNAL
    ) -> bool:
        """Shortcut for ``get(codec, implementation).can_encode``."""
        return self.get(codec, implementation).can_encode

    def can_decode(
        self, codec: str, implementation: Implementation | str = Implementation.INTERNAL
    ) -> bool:
        """Shortcut for ``get(codec, implementation).can_decode``."""
        return self.get(codec, implementation).can_decode

    def implementations(self) -> list[Implementation]:
        """Implementations that encode or decode at least one codec here (INTERNAL always first)."""
        return [
            i
            for i in Implementation
            if any(
                e.implementation is i and (e.can_encode or e.can_decode)
                for e in self.entries
            )
        ]

    def to_json(self) -> list[dict[str, Any]]:
        """Every entry as :meth:`CodecSupport.to_json`."""
        return [e.to_json() for e in self.entries]


_FFMPEG_LOG_LOCK = threading.Lock()
_FFMPEG_LOG_USERS = 0
_FFMPEG_LOG_SAVED: int | None = None


@contextlib.contextmanager
def ffmpeg_messages() -> Iterator[list[tuple[int, str, str]]]:
    """Collect FFmpeg's error messages logged by this thread inside the block.

    PyAV keeps FFmpeg quiet by default, and its exceptions carry only the
    errno text ("Operation not permitted"); the useful words ("Cannot load
    libcuda.so.1") are an FFmpeg log line. So, while any thread is inside
    this block, FFmpeg logging is raised to ERROR (never lowered) and the
    lines of the calling thread are captured; the previous level comes back
    when the last such block ends.
    """
    import av.logging

    global _FFMPEG_LOG_USERS, _FFMPEG_LOG_SAVED
    with _FFMPEG_LOG_LOCK:
        if _FFMPEG_LOG_USERS == 0:
            _FFMPEG_LOG_SAVED = av.logging.get_level()
            if _FFMPEG_LOG_SAVED is None or _FFMPEG_LOG_SAVED < av.logging.ERROR:
                av.logging.set_level(av.logging.ERROR)
        _FFMPEG_LOG_USERS += 1
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        with _FFMPEG_LOG_LOCK:
            _FFMPEG_LOG_USERS -= 1
            if _FFMPEG_LOG_USERS == 0 and av.logging.get_level() != _FFMPEG_LOG_SAVED:
                av.logging.set_level(_FFMPEG_LOG_SAVED)


def explain_ffmpeg_error(exc: BaseException, logs: list[tuple[int, str, str]]) -> str:
    """One line for a failed FFmpeg call: its last error log lines if any, else the exception."""
    import av.logging

    lines = [
        msg.strip()
        for level, _name, msg in logs
        if level <= av.logging.ERROR and msg.strip()
    ]
    if lines:
        # The last two: e.g. "Cannot load libcuda.so.1" then "Nvenc unloaded"
        # is noise, but "DLL libamfrt64.so.1 failed to open" + "Failed to
        # create hardware device context" both help; keep them short.
        return "; ".join(dict.fromkeys(lines[-2:]))
    return str(getattr(exc, "strerror", None) or exc)


_PROBE_SIZE = (256, 144)
_cache_lock = threading.Lock()
_support_cache: dict[tuple[str, Implementation], CodecSupport] = {}
_pair_locks: dict[tuple[str, Implementation], threading.Lock] = {}
_reference_cache: dict[str, list[Any] | str] = {}
_reference_lock = threading.Lock()


def _reference_stream(codec: str) -> list[Any] | str:
    """Two encoded frames (a keyframe, then a delta) from a working software encoder, or why there are none."""
    with _reference_lock:
        cached = _reference_cache.get(codec)
        if cached is not None:
            return cached
        from .testsrc import test_pattern
        from .video import VideoEncoder

        width, height = _PROBE_SIZE
        result: list[Any] | str
        try:
            encoder = VideoEncoder(
                codec, bitrate=300_000, implementation=Implementation.INTERNAL
            )
            frames: list[Any] = []
            for i in range(2):
                frames += encoder.encode(test_pattern(i, width, height), i * 3000)
            encoder.close()
            result = (
                frames
                if frames and frames[0].keyframe
                else f"the software {codec} encoder made no keyframe"
            )
        except Exception as exc:  # noqa: BLE001 - any failure means "no reference stream"
            result = f"no software {codec} encoder to make a test stream ({exc})"
        _reference_cache[codec] = result
        return result


def _not_built(name: str, mode: Literal["r", "w"]) -> CodecProbe | None:
    """A failed probe if FFmpeg lacks ``name`` in ``mode`` (``"w"`` encoder, ``"r"`` decoder)."""
    import av

    if name not in av.codecs_available:
        return CodecProbe(name, False, "not built into FFmpeg")
    try:
        av.codec.Codec(name, mode)
    except Exception:  # noqa: BLE001 - listed, but only the other way round
        return CodecProbe(name, False, f"not built into FFmpeg (as an {'encoder' if mode == 'w' else 'decoder'})")
    return None


def _probe_encoder(codec: str, name: str) -> CodecProbe:
    from .testsrc import test_pattern
    from .video import CodecUnavailable, VideoEncoder

    missing = _not_built(name, "w")
    if missing is not None:
        return missing
    width, height = _PROBE_SIZE
    encoder = VideoEncoder(codec, bitrate=300_000, _encoders=(name,))
    try:
        packets = encoder.encode(test_pattern(0, width, height), 0)
        # Hardware encoders may hold the first frame back; a flush gets it.
        packets += encoder.close()
    except CodecUnavailable as exc:
        return CodecProbe(name, False, exc.reasons.get(name, str(exc)))
    except Exception as exc:  # noqa: BLE001 - a probe: any failure is "does not work"
        return CodecProbe(name, False, f"did not encode: {exc}")
    if not packets:
        return CodecProbe(name, False, "opened but produced no frame")
    return CodecProbe(name, True)


def _probe_decoder(codec: str, name: str) -> CodecProbe:
    from .testsrc import read_counter
    from .video import CodecUnavailable, VideoDecoder

    missing = _not_built(name, "r")
    if missing is not None:
        return missing
    stream = _reference_stream(codec)
    if isinstance(stream, str):
        return CodecProbe(name, False, f"not tested: {stream}")
    with ffmpeg_messages() as logs:
        try:
            decoder = VideoDecoder(codec, _decoders=(name,))
        except CodecUnavailable as exc:
            return CodecProbe(name, False, exc.reasons.get(name, str(exc)))
        pictures = []
        for frame in stream:
            pictures += decoder.decode(frame.data, frame.keyframe)
        error = decoder.last_error or "no picture came out"
    if not pictures:
        # Some decoders (qsv) open without their device and fail on the
        # first packet; FFmpeg's log says why better than the errno.
        return CodecProbe(
            name,
            False,
            f"did not decode: {explain_ffmpeg_error(RuntimeError(error), logs)}",
        )
    if read_counter(pictures[0]) != 0:
        return CodecProbe(name, False, "decoded a wrong picture")
    return CodecProbe(name, True)


def probe_one(
    codec: str,
    implementation: Implementation | str = Implementation.INTERNAL,
    force: bool = False,
) -> CodecSupport:
    """Probe one (codec, implementation): open its encoders and decoders for real. Cached per process.

    Raises:
        ValueError: unknown codec or implementation.
    """
    key = (_check_codec(codec), Implementation.coerce(implementation))
    with _cache_lock:
        lock = _pair_locks.setdefault(key, threading.Lock())
    with lock:  # one probe per pair at a time; others wait for its answer
        with _cache_lock:
            if not force and key in _support_cache:
                return _support_cache[key]
        support = CodecSupport(
            codec=key[0],
            implementation=key[1],
            encoders=tuple(_probe_encoder(key[0], n) for n in encoder_names(*key)),
            decoders=tuple(_probe_decoder(key[0], n) for n in decoder_names(*key)),
        )
        with _cache_lock:
            _support_cache[key] = support
        logger.debug(
            "video codec probe %s/%s: encoder %s, decoder %s",
            key[0],
            key[1].value,
            support.encoder or support.encoder_reason,
            support.decoder or support.decoder_reason,
        )
        return support


def probe(force: bool = False) -> CodecCapability:
    """Open every encoder and decoder of every (codec, implementation) once, and say what works.

    Encoders encode one 256x144 test frame; decoders decode a keyframe and
    a delta frame made by the codec's software encoder and must give back
    the test picture. Results are cached per process (``force=True``
    probes again, e.g. after plugging in a device). Pairs are probed in
    parallel threads: a hardware codec that fails takes milliseconds, the
    software ones tens of milliseconds each.
    """
    pairs = [(c, i) for c in CODECS for i in Implementation]
    if force:
        with _reference_lock:
            _reference_cache.clear()
    with ThreadPoolExecutor(
        max_workers=4, thread_name_prefix="hibiki-codec-probe"
    ) as pool:
        entries = list(pool.map(lambda pair: probe_one(pair[0], pair[1], force), pairs))
    return CodecCapability(tuple(entries))


# -- preference --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecPreference:
    """Which implementation encodes and decodes each codec (the rest use INTERNAL).

    Give it to ``Hibiki(video_codec_preference=...)`` or
    ``Connection(video_codec_preference=...)``; :meth:`coerce` also takes
    the shorter forms::

        Hibiki(video_codec_preference="nvidia_video_codec_sdk")    # every codec NVIDIA can do
        Hibiki(video_codec_preference={"H264": Implementation.INTEL_VPL})
        Hibiki(video_codec_preference=sora_sdk_preference)           # SoraVideoCodecPreference
    """

    encoders: Mapping[str, Implementation] = field(default_factory=dict)
    """Codec -> implementation of its encoder."""
    decoders: Mapping[str, Implementation] = field(default_factory=dict)
    """Codec -> implementation of its decoder."""

    def encoder(self, codec: str) -> Implementation:
        """The implementation that encodes ``codec`` (INTERNAL unless set)."""
        return self.encoders.get(codec.upper(), Implementation.INTERNAL)

    def decoder(self, codec: str) -> Implementation:
        """The implementation that decodes ``codec`` (INTERNAL unless set)."""
        return self.decoders.get(codec.upper(), Implementation.INTERNAL)

    @classmethod
    def coerce(cls, value: Any) -> CodecPreference | None:
        """Read a preference from any accepted form; None stays None.

        Accepted: a :class:`CodecPreference`; an :class:`Implementation` (or
        its value/name) for every codec and direction it handles on this
        machine (probed: NVIDIA then decodes VP8 with cuvid and encodes it
        in software; a GPU without AV1 NVENC encodes AV1 in software); a
        mapping codec -> implementation (both directions, checked by
        :meth:`check`); or
        anything with sora-sdk's ``to_json()`` shape
        ``{"codecs": [{"type", "encoder", "decoder"}]}``
        (``SoraVideoCodecPreference``).

        Raises:
            ValueError: unknown codec or implementation.
            TypeError: none of these forms.
            RuntimeError: an implementation given alone works for no codec here.
        """
        if value is None or isinstance(value, CodecPreference):
            return value
        encoders: dict[str, Implementation] = {}
        decoders: dict[str, Implementation] = {}
        if isinstance(value, (str, enum.Enum)):
            # "Use this implementation wherever it works here": probe its
            # codecs, keep those that work (an NVIDIA GPU without AV1 NVENC
            # still encodes H.264), and refuse only when none does.
            impl = Implementation.coerce(value)
            supports = [probe_one(codec, impl) for codec in CODECS]
            for support in supports:
                if support.can_encode:
                    encoders[support.codec] = impl
                if support.can_decode:
                    decoders[support.codec] = impl
            if not encoders and not decoders:
                # H.264 first: the codec every implementation has, the likeliest question.
                ordered = sorted(supports, key=lambda s: s.codec != "H264")
                detail = next(
                    (missing_message(s, "encoder") for s in ordered if s.encoders),
                    f"{impl.name} has no codecs",
                )
                raise RuntimeError(
                    f"{impl.name} cannot encode or decode any codec here: {detail}"
                )
        elif isinstance(value, Mapping):
            for codec, impl in value.items():
                name = _check_codec(str(getattr(codec, "name", codec)).upper())
                encoders[name] = decoders[name] = Implementation.coerce(impl)
        elif callable(getattr(value, "to_json", None)):
            doc = value.to_json()
            for entry in doc.get("codecs", []) if isinstance(doc, Mapping) else []:
                name = _check_codec(str(entry["type"]).upper())
                if entry.get("encoder"):
                    encoders[name] = Implementation.coerce(entry["encoder"])
                if entry.get("decoder"):
                    decoders[name] = Implementation.coerce(entry["decoder"])
        else:
            raise TypeError(
                "video_codec_preference must be an Implementation, its name, a mapping codec -> "
                f"implementation, a CodecPreference or a SoraVideoCodecPreference; got {type(value).__name__}"
            )
        return cls(encoders, decoders)

    def check(self) -> None:
        """Make sure every non-INTERNAL choice works here (probing those pairs).

        Raises:
            RuntimeError: a chosen implementation cannot encode/decode its
                codec here; the message names the FFmpeg codec and why
                (:func:`missing_message`).
        """
        for role, table in (("encoder", self.encoders), ("decoder", self.decoders)):
            for codec, impl in table.items():
                support = probe_one(codec, impl)
                works = support.can_encode if role == "encoder" else support.can_decode
                if not works:
                    raise RuntimeError(missing_message(support, role))
