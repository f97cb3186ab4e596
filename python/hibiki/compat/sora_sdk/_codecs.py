"""Video codec capability and preference: sora-sdk's codec-engine API over Hibiki's FFmpeg codecs.

sora-sdk chooses, per codec, which engine encodes and decodes (libwebrtc's
own, OpenH264, Intel VPL, NVIDIA, AMD). Hibiki's codecs all run through
FFmpeg, and :mod:`hibiki.media.codecs` maps each engine onto FFmpeg codecs:
``INTERNAL`` is the software codecs (libvpx, SVT-AV1/dav1d, x264, x265,
FFmpeg's decoders), ``NVIDIA_VIDEO_CODEC_SDK`` nvenc/cuvid, ``INTEL_VPL``
qsv, ``AMD_AMF`` amf, ``CISCO_OPENH264`` libopenh264.
:func:`get_video_codec_capability` reports what this process can really
open (each codec is probed once per process), and a
:class:`SoraVideoCodecPreference` that asks for an engine this machine
lacks makes ``Sora(...)`` raise ``RuntimeError`` naming what is missing,
as sora-sdk does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hibiki.media.codecs import Implementation, missing_message, probe, probe_one

from ._base import no_constructor, wrap
from ._enums import SoraVideoCodecImplementation, SoraVideoCodecType

__all__ = [
    "SoraVideoCodecCapability",
    "SoraVideoCodecPreference",
    "check_preference",
    "create_video_codec_preference_from_implementation",
    "get_video_codec_capability",
]

logger = logging.getLogger("hibiki.compat")

# The order sora-sdk lists codecs in.
_CODEC_ORDER = (SoraVideoCodecType.VP8, SoraVideoCodecType.VP9, SoraVideoCodecType.H264,
                SoraVideoCodecType.H265, SoraVideoCodecType.AV1)


def _impl_name(impl: SoraVideoCodecImplementation) -> str:
    # sora-sdk's JSON spells engines in lower case ("internal", "intel_vpl").
    return impl.name.lower()


class SoraVideoCodecCapability:
    """What each codec engine can encode and decode (from :func:`get_video_codec_capability`)."""

    _engines: list[SoraVideoCodecCapability.Engine]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    @property
    def engines(self) -> list[SoraVideoCodecCapability.Engine]:
        return list(self._engines)

    def to_json(self) -> object:
        """``{"engines": [{"name", "codecs": [{"type", "encoder", "decoder", "parameters"}], "parameters"}]}``."""
        return {"engines": [engine._json() for engine in self._engines]}

    class Parameters:
        """Engine details (library versions, device names); all None for Hibiki's FFmpeg engine."""

        _values: dict[str, Any]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            no_constructor(self)

        def _get(self, name: str) -> Any:
            return self._values.get(name)

        @property
        def version(self) -> str | None:
            return self._get("version")

        @property
        def openh264_path(self) -> str | None:
            return self._get("openh264_path")

        @property
        def vpl_impl(self) -> str | None:
            return self._get("vpl_impl")

        @property
        def vpl_impl_value(self) -> int | None:
            return self._get("vpl_impl_value")

        @property
        def nvcodec_gpu_device_name(self) -> str | None:
            return self._get("nvcodec_gpu_device_name")

        @property
        def amf_runtime_version(self) -> str | None:
            return self._get("amf_runtime_version")

        @property
        def amf_embedded_version(self) -> str | None:
            return self._get("amf_embedded_version")

        def _json(self) -> dict[str, Any]:
            return {k: v for k, v in self._values.items() if v is not None}

    class Codec:
        """One codec of an engine: whether it can encode and decode."""

        _type: SoraVideoCodecType
        _encoder: bool
        _decoder: bool
        _parameters: SoraVideoCodecCapability.Parameters

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            no_constructor(self)

        @property
        def type(self) -> SoraVideoCodecType:
            return self._type

        @property
        def encoder(self) -> bool:
            return self._encoder

        @property
        def decoder(self) -> bool:
            return self._decoder

        @property
        def parameters(self) -> SoraVideoCodecCapability.Parameters:
            return self._parameters

        def _json(self) -> dict[str, Any]:
            return {"type": self._type.name, "encoder": self._encoder, "decoder": self._decoder,
                    "parameters": self._parameters._json()}

    class Engine:
        """A codec engine and its codecs."""

        _name: SoraVideoCodecImplementation
        _codecs: list[SoraVideoCodecCapability.Codec]
        _parameters: SoraVideoCodecCapability.Parameters

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            no_constructor(self)

        @property
        def name(self) -> SoraVideoCodecImplementation:
            return self._name

        @property
        def codecs(self) -> list[SoraVideoCodecCapability.Codec]:
            return list(self._codecs)

        @property
        def parameters(self) -> SoraVideoCodecCapability.Parameters:
            return self._parameters

        def _json(self) -> dict[str, Any]:
            return {"name": _impl_name(self._name), "codecs": [c._json() for c in self._codecs],
                    "parameters": self._parameters._json()}


def _parameters(**values: Any) -> SoraVideoCodecCapability.Parameters:
    return wrap(SoraVideoCodecCapability.Parameters, _values=values)


def get_video_codec_capability(openh264: str | None = None) -> SoraVideoCodecCapability:
    """Which video codecs this process can encode and decode, per engine.

    As in sora-sdk, ``INTERNAL`` is always listed and another engine only
    when it can encode or decode at least one codec here (an NVIDIA engine
    on a machine with an NVIDIA GPU...). Each engine is Hibiki's mapping
    onto FFmpeg (:mod:`hibiki.media.codecs`), probed by opening every
    encoder and decoding a frame with every decoder, once per process.
    Differences: ``INTERNAL`` includes H.264 (x264 / FFmpeg's decoder) and
    H.265 (x265 / FFmpeg's decoder), which libwebrtc's software engine
    lacks; ``openh264`` is accepted and not used (``CISCO_OPENH264`` means
    FFmpeg's libopenh264, listed when FFmpeg has it); engine parameters
    (versions, device names) are all None.
    """
    capability = probe()
    engines = []
    for impl in SoraVideoCodecImplementation:
        entries = [capability.get(codec_type.name, Implementation.coerce(impl)) for codec_type in _CODEC_ORDER]
        if impl != SoraVideoCodecImplementation.INTERNAL and not any(
            e.can_encode or e.can_decode for e in entries
        ):
            continue
        codecs = [
            wrap(SoraVideoCodecCapability.Codec, _type=codec_type, _encoder=entry.can_encode,
                 _decoder=entry.can_decode, _parameters=_parameters())
            for codec_type, entry in zip(_CODEC_ORDER, entries, strict=True)
        ]
        engines.append(wrap(SoraVideoCodecCapability.Engine, _name=impl, _codecs=codecs,
                            _parameters=_parameters()))
    return wrap(SoraVideoCodecCapability, _engines=engines)


class SoraVideoCodecPreference:
    """Which engine encodes and decodes each codec; give it to ``Sora(video_codec_preference=...)``.

    Same behaviour as sora-sdk: :meth:`merge` lets the other preference's
    set engines win, :meth:`get_or_add` appends a codec with no engine.
    """

    class Parameters:
        """Per-codec engine parameters (none are defined in sora-sdk 2025.4)."""

        def __init__(self) -> None:
            pass

    class Codec:
        """A codec and the engines chosen for encoding and decoding it (None: not used)."""

        def __init__(self, type: SoraVideoCodecType | None = None,
                     encoder: SoraVideoCodecImplementation | None = None,
                     decoder: SoraVideoCodecImplementation | None = None,
                     parameters: SoraVideoCodecPreference.Parameters | None = None) -> None:
            # sora-sdk declares two overloads, Codec() and Codec(type, ...); one
            # signature with an optional type accepts both. Codec() leaves the
            # type unset, and reading it then fails, as in sora-sdk.
            self._type = None if type is None else SoraVideoCodecType(type)
            self._encoder = None if encoder is None else SoraVideoCodecImplementation(encoder)
            self._decoder = None if decoder is None else SoraVideoCodecImplementation(decoder)
            self._parameters = parameters if parameters is not None else SoraVideoCodecPreference.Parameters()

        @property
        def type(self) -> SoraVideoCodecType:
            if self._type is None:
                raise ValueError("0 is not a valid SoraVideoCodecType (this Codec's type was never set)")
            return self._type

        @type.setter
        def type(self, arg: SoraVideoCodecType, /) -> None:
            self._type = SoraVideoCodecType(arg)

        @property
        def encoder(self) -> SoraVideoCodecImplementation | None:
            return self._encoder

        @encoder.setter
        def encoder(self, arg: SoraVideoCodecImplementation, /) -> None:
            self._encoder = None if arg is None else SoraVideoCodecImplementation(arg)

        @property
        def decoder(self) -> SoraVideoCodecImplementation | None:
            return self._decoder

        @decoder.setter
        def decoder(self, arg: SoraVideoCodecImplementation, /) -> None:
            self._decoder = None if arg is None else SoraVideoCodecImplementation(arg)

        @property
        def parameters(self) -> SoraVideoCodecPreference.Parameters:
            return self._parameters

        @parameters.setter
        def parameters(self, arg: SoraVideoCodecPreference.Parameters, /) -> None:
            self._parameters = arg

        def _json(self) -> dict[str, Any]:
            return {
                "type": self.type.name,
                "encoder": None if self._encoder is None else _impl_name(self._encoder),
                "decoder": None if self._decoder is None else _impl_name(self._decoder),
                "parameters": {},
            }

        def __repr__(self) -> str:
            kind = "?" if self._type is None else self._type.name
            return f"<SoraVideoCodecPreference.Codec {kind} encoder={self._encoder} decoder={self._decoder}>"

    def __init__(self, codecs: Sequence[SoraVideoCodecPreference.Codec] = []) -> None:
        self._codecs: list[SoraVideoCodecPreference.Codec] = list(codecs)

    @property
    def codecs(self) -> list[SoraVideoCodecPreference.Codec]:
        return list(self._codecs)

    @codecs.setter
    def codecs(self, arg: Sequence[SoraVideoCodecPreference.Codec], /) -> None:
        self._codecs = list(arg)

    def to_json(self) -> object:
        """``{"codecs": [{"type", "encoder", "decoder", "parameters"}]}`` with engines in lower case."""
        return {"codecs": [codec._json() for codec in self._codecs]}

    def find(self, arg: SoraVideoCodecType, /) -> int | None:
        """The index of codec ``arg`` in :attr:`codecs`, or None."""
        for i, codec in enumerate(self._codecs):
            if codec._type == arg:
                return i
        return None

    def get_or_add(self, arg: SoraVideoCodecType, /) -> int:
        """The index of codec ``arg``, appending it (with no engine) if absent."""
        index = self.find(arg)
        if index is None:
            self._codecs.append(SoraVideoCodecPreference.Codec(SoraVideoCodecType(arg)))
            index = len(self._codecs) - 1
        return index

    def has_implementation(self, arg: SoraVideoCodecImplementation, /) -> bool:
        """True when some codec is encoded or decoded by engine ``arg``."""
        return any(arg in (c._encoder, c._decoder) for c in self._codecs)

    def merge(self, arg: SoraVideoCodecPreference, /) -> None:
        """Take ``arg``'s choices: its set encoders/decoders override ours; its new codecs are appended."""
        for other in arg._codecs:
            mine = self._codecs[self.get_or_add(other.type)]
            if other._encoder is not None:
                mine._encoder = other._encoder
            if other._decoder is not None:
                mine._decoder = other._decoder


def create_video_codec_preference_from_implementation(
    arg0: SoraVideoCodecCapability, arg1: SoraVideoCodecImplementation, /
) -> SoraVideoCodecPreference:
    """A preference using engine ``arg1`` for every codec it can handle in capability ``arg0``.

    Like sora-sdk, every codec of that engine is listed, with ``None`` where
    the engine cannot encode or decode it.
    """
    preference = SoraVideoCodecPreference()
    for engine in arg0.engines:
        if engine.name != arg1:
            continue
        for codec in engine.codecs:
            preference._codecs.append(SoraVideoCodecPreference.Codec(
                codec.type, arg1 if codec.encoder else None, arg1 if codec.decoder else None))
    return preference


def check_preference(preference: SoraVideoCodecPreference | None) -> None:
    """Refuse a preference this process cannot honour (``Sora(video_codec_preference=...)``).

    Every engine named for a codec is probed (once per process) for that
    codec and role.

    Raises:
        RuntimeError: an engine cannot encode/decode its codec here; the
            message names the FFmpeg codec that failed and why, e.g.
            ``no H264 encoder with NVIDIA_VIDEO_CODEC_SDK: h264_nvenc did not
            open: Cannot load libcuda.so.1 (NVIDIA_VIDEO_CODEC_SDK needs an
            NVIDIA GPU ...)``, as sora-sdk raises ``RuntimeError`` for an
            engine it cannot use.
        TypeError: it is not a :class:`SoraVideoCodecPreference`.
    """
    if preference is None:
        return
    if not isinstance(preference, SoraVideoCodecPreference):
        raise TypeError(f"video_codec_preference must be a SoraVideoCodecPreference, "
                        f"got {type(preference).__name__}")
    for codec in preference._codecs:
        for role, impl in (("encoder", codec._encoder), ("decoder", codec._decoder)):
            if impl is None:
                continue
            support = probe_one(codec.type.name, Implementation.coerce(impl))
            if not (support.can_encode if role == "encoder" else support.can_decode):
                raise RuntimeError(f"video_codec_preference: {missing_message(support, role)}")
