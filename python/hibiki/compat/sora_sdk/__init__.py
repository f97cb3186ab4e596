"""sora-sdk's Python API on top of Hibiki: run a sora-sdk program by changing one import.

::

    # from sora_sdk import Sora, SoraVideoSink
    from hibiki.compat.sora_sdk import Sora, SoraVideoSink

Every public name of ``sora-sdk`` 2025.4 is here with the same signature
(parameter names, defaults, positional-only markers), enum members and
values, and callback semantics. The classes are thin adapters over the
Hibiki SDK (:mod:`hibiki`): ``Sora`` over :class:`hibiki.Hibiki`,
``SoraConnection`` over :class:`hibiki.Connection`, sinks over
:class:`hibiki.VideoSink` / :class:`hibiki.AudioSink` /
:class:`hibiki.AudioStreamSink`, ``SoraVAD`` over :class:`hibiki.VAD`, and so on; each
adapter exposes the Hibiki object under it (``hibiki_connection``,
``hibiki_track``, ``hibiki_source``) for the features sora-sdk lacks
(asyncio face, ``await track.recv()``).

Where behaviour differs from sora-sdk, the class or function says so in its
docstring. In short:

* Media runs through FFmpeg (:mod:`hibiki.media`), not libwebrtc: codec
  implementations map onto FFmpeg's encoders and decoders
  (:mod:`hibiki.media.codecs`; NVIDIA is nvenc/cuvid, Intel VPL is qsv, AMD
  is amf), which ``get_video_codec_capability()`` probes by opening them;
  asking for one that does not open raises ``RuntimeError`` naming what is
  missing. ``get_stats()`` reports what Hibiki counts, in W3C form, rather
  than libwebrtc's full report.
* Not implemented yet, raising ``NotImplementedError`` with a message:
  sinks on local sources.
* Encoded-frame transforms run ``on_transform`` on one Hibiki thread per
  transformer (sora-sdk: on libwebrtc's threads).
* ``SoraVAD`` runs the Silero model (:class:`hibiki.VAD`) instead of
  libwebrtc's RNN VAD: the same 0..1 speech probability, different numbers.
* Accepted and ignored with a ``UserWarning`` when set: forwarding
  filters, TLS client certificates, proxy credentials.
* Callbacks run on one SDK thread (``hibiki-callbacks``), in order; media
  callbacks (``on_frame``, ``on_data``) on the track's decoder thread.
"""

from __future__ import annotations

from ._codecs import (
    SoraVideoCodecCapability,
    SoraVideoCodecPreference,
    create_video_codec_preference_from_implementation,
    get_video_codec_capability,
)
from ._connection import Sora, SoraConnection
from ._enums import (
    SoraDegradationPreference,
    SoraLoggingSeverity,
    SoraSignalingDirection,
    SoraSignalingErrorCode,
    SoraSignalingType,
    SoraTrackState,
    SoraTransformableAudioFrameType,
    SoraTransformableFrameDirection,
    SoraVideoCodecImplementation,
    SoraVideoCodecType,
)
from ._logging import enable_libwebrtc_log, rtc_log
from ._sinks import (
    SoraAudioFrame,
    SoraAudioSink,
    SoraAudioSinkImpl,
    SoraAudioStreamSink,
    SoraAudioStreamSinkImpl,
    SoraVAD,
    SoraVideoFrame,
    SoraVideoSink,
    SoraVideoSinkImpl,
)
from ._tracks import (
    SoraAudioSource,
    SoraMediaTrack,
    SoraTrackInterface,
    SoraVideoSource,
)
from ._transform import (
    SoraAudioFrameTransformer,
    SoraFrameTransformer,
    SoraTransformableAudioFrame,
    SoraTransformableFrame,
    SoraTransformableVideoFrame,
    SoraVideoFrameTransformer,
)

__version__ = "2025.4.0"
"""The sora-sdk release whose API this module mirrors."""

__all__ = [
    "Sora",
    "SoraAudioFrame",
    "SoraAudioFrameTransformer",
    "SoraAudioSink",
    "SoraAudioSinkImpl",
    "SoraAudioSource",
    "SoraAudioStreamSink",
    "SoraAudioStreamSinkImpl",
    "SoraConnection",
    "SoraDegradationPreference",
    "SoraFrameTransformer",
    "SoraLoggingSeverity",
    "SoraMediaTrack",
    "SoraSignalingDirection",
    "SoraSignalingErrorCode",
    "SoraSignalingType",
    "SoraTrackInterface",
    "SoraTrackState",
    "SoraTransformableAudioFrame",
    "SoraTransformableAudioFrameType",
    "SoraTransformableFrame",
    "SoraTransformableFrameDirection",
    "SoraTransformableVideoFrame",
    "SoraVAD",
    "SoraVideoCodecCapability",
    "SoraVideoCodecImplementation",
    "SoraVideoCodecPreference",
    "SoraVideoCodecType",
    "SoraVideoFrame",
    "SoraVideoFrameTransformer",
    "SoraVideoSink",
    "SoraVideoSinkImpl",
    "SoraVideoSource",
    "create_video_codec_preference_from_implementation",
    "enable_libwebrtc_log",
    "get_video_codec_capability",
    "rtc_log",
]


def _present_as_this_module() -> None:
    # sora-sdk's classes all report one module (sora_sdk.sora_sdk_ext); make
    # ours report hibiki.compat.sora_sdk rather than the private submodules,
    # in reprs, error messages and pickles (all of them import from here).
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) or callable(obj):
            obj.__module__ = __name__
            for nested in vars(obj).values() if isinstance(obj, type) else ():
                if isinstance(nested, type) and nested.__qualname__.startswith(obj.__qualname__ + "."):
                    nested.__module__ = __name__


_present_as_this_module()
