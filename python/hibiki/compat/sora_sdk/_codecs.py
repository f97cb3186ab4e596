"""Video codec capability and preference: sora-sdk's codec-engine API over Hibiki's FFmpeg codecs.

sora-sdk chooses, per codec, which engine encodes and decodes (libwebrtc's
own, OpenH264, Intel VPL, NVIDIA, AMD). Hibiki's codecs all run through
FFmpeg (:mod:`hibiki.media`); here they are the ``INTERNAL`` engine, and
:func:`get_video_codec_capability` reports which of them this process can
actually open. Hardware engines are not offered yet: a
:class:`SoraVideoCodecPreference` that asks for one makes ``Sora(...)``
raise ``NotImplementedError`` (sora-sdk raises ``RuntimeError`` for an
engine it cannot use; ``NotImplementedError`` is a ``RuntimeError``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

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


@functools.cache
def _ffmpeg_support(codec: str) -> tuple[bool, bool]:
    """(can encode, can decode) ``codec`` with hibiki.media in this process; probed once."""
    from hibiki.media import VideoDecoder, VideoEncoder

    try:
        VideoEncoder(codec=codec).encode(np.zeros((64, 64, 3), dtype=np.uint8), 0)
        encoder = True
    except Exception as exc:  # noqa: BLE001 - a probe: whatever FFmpeg raises means "not available"
        logger.debug("no %s encoder: %s", codec, exc)
        encoder = False
    try:
        VideoDecoder(codec=codec)
        decoder = True
    except Exception as exc:  # noqa: BLE001 - as above
        logger.debug("no %s decoder: %s", codec, exc)
        decoder = False
    return encoder, decoder


def get_video_codec_capability(openh264: str | None = None) -> SoraVideoCodecCapability:
    """Which video codecs this process can encode and decode, per engine.

    Differs from sora-sdk: there is one engine, ``INTERNAL``, standing for
    Hibiki's FFmpeg codecs (probed by opening them); ``openh264`` is accepted
    and not used (FFmpeg provides H.264 when Hibiki supports it), and no
    hardware engines are listed yet.
    """
    codecs = []
    for codec_type in _CODEC_ORDER:
        encoder, decoder = _ffmpeg_support(codec_type.name)
        codecs.append(wrap(SoraVideoCodecCapability.Codec, _type=codec_type, _encoder=encoder,
                           _decoder=decoder, _parameters=_parameters()))
    engine = wrap(SoraVideoCodecCapability.Engine, _name=SoraVideoCodecImplementation.INTERNAL,
                  _codecs=codecs, _parameters=_parameters())
    return wrap(SoraVideoCodecCapability, _engines=[engine])


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

    Raises:
        NotImplementedError: it names a hardware/OpenH264 engine (not in Hibiki yet).
        RuntimeError: it asks the FFmpeg engine for a codec it cannot encode/decode here.
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
            if impl != SoraVideoCodecImplementation.INTERNAL:
                raise NotImplementedError(
                    f"video_codec_preference: the {impl.name} engine ({codec.type.name} {role}) is not "
                    "available in Hibiki yet; only INTERNAL (FFmpeg software codecs) is"
                )
            can_encode, can_decode = _ffmpeg_support(codec.type.name)
            if not (can_encode if role == "encoder" else can_decode):
                raise RuntimeError(
                    f"video_codec_preference: no {codec.type.name} {role} is available in this process"
                )
