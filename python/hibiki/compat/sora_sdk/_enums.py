"""sora-sdk's enums: the same names, members, integer values and member order.

They are separate classes from :mod:`hibiki.events`' enums (so that ``repr``
and ``type(x).__name__`` read as in sora-sdk), but both are ``IntEnum``: a
``SoraSignalingErrorCode`` compares equal to the Hibiki
``SignalingErrorCode`` of the same value, and converting is ``Cls(int(x))``.
"""

from __future__ import annotations

import enum

__all__ = [
    "SoraDegradationPreference",
    "SoraLoggingSeverity",
    "SoraSignalingDirection",
    "SoraSignalingErrorCode",
    "SoraSignalingType",
    "SoraTrackState",
    "SoraTransformableAudioFrameType",
    "SoraTransformableFrameDirection",
    "SoraVideoCodecImplementation",
    "SoraVideoCodecType",
]


class _SoraIntEnum(enum.IntEnum):
    # sora-sdk's enums (nanobind) print as "Class.MEMBER" with str(), repr()
    # and in f-strings, whereas Python 3.11's IntEnum prints the bare number.
    # Programs log these values, so print them the way sora-sdk does. (IntEnum
    # keeps int.__format__, which uses __str__ for an empty format spec.)
    __str__ = enum.Enum.__str__
    __repr__ = enum.Enum.__str__


class SoraSignalingErrorCode(_SoraIntEnum):
    """Why a connection ended; the first argument of ``on_disconnect``."""

    CLOSE_SUCCEEDED = 0
    CLOSE_FAILED = 1
    INTERNAL_ERROR = 2
    INVALID_PARAMETER = 3
    WEBSOCKET_HANDSHAKE_FAILED = 4
    WEBSOCKET_ONCLOSE = 5
    WEBSOCKET_ONERROR = 6
    PEER_CONNECTION_STATE_FAILED = 7
    ICE_FAILED = 8


class SoraSignalingType(_SoraIntEnum):
    """The path a signaling message took (``on_signaling_message``)."""

    WEBSOCKET = 0
    DATACHANNEL = 1


class SoraDegradationPreference(_SoraIntEnum):
    """What a sender gives up first under load.

    Accepted by ``create_connection``; Hibiki's encoder does not act on it yet
    (a ``UserWarning`` says so).
    """

    DISABLED = 0
    BALANCED = 3
    MAINTAIN_FRAMERATE = 1
    MAINTAIN_RESOLUTION = 2


class SoraSignalingDirection(_SoraIntEnum):
    """Whether a signaling message was sent or received (``on_signaling_message``)."""

    SENT = 0
    RECEIVED = 1


class SoraTrackState(_SoraIntEnum):
    """A track's ``state``."""

    LIVE = 0
    ENDED = 1


class SoraLoggingSeverity(_SoraIntEnum):
    """Log severities of :func:`enable_libwebrtc_log` and :func:`rtc_log`."""

    VERBOSE = 0
    INFO = 1
    WARNING = 2
    ERROR = 3
    NONE = 4


class SoraTransformableFrameDirection(_SoraIntEnum):
    """Whether a transformable frame is being sent or was received."""

    UNKNOWN = 0
    RECEIVER = 1
    SENDER = 2


class SoraTransformableAudioFrameType(_SoraIntEnum):
    """The kind of an audio transformable frame."""

    EMPTY = 0
    SPEECH = 1
    CN = 2


class SoraVideoCodecImplementation(_SoraIntEnum):
    """A video codec engine.

    In Hibiki every codec runs through FFmpeg, and each engine is a family
    of FFmpeg codecs (:class:`hibiki.media.codecs.Implementation`, same
    names in lower case): ``INTERNAL`` the software ones (libvpx,
    SVT-AV1/dav1d, x264, x265, FFmpeg's decoders), ``NVIDIA_VIDEO_CODEC_SDK``
    nvenc/cuvid, ``INTEL_VPL`` qsv, ``AMD_AMF`` amf, ``CISCO_OPENH264``
    libopenh264. Which of them work here is probed on first use
    (:func:`get_video_codec_capability`).
    """

    INTERNAL = 0
    CISCO_OPENH264 = 1
    INTEL_VPL = 2
    NVIDIA_VIDEO_CODEC_SDK = 3
    AMD_AMF = 4


class SoraVideoCodecType(_SoraIntEnum):
    """A video codec (values as in sora-sdk, not in name order)."""

    VP8 = 1
    VP9 = 2
    H264 = 4
    H265 = 5
    AV1 = 3
