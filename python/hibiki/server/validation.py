"""Parsing and validation of client → server signaling messages.

Every function here raises :class:`SignalingError` with a reason precise enough
for a developer to fix the client (it becomes the WebSocket close reason, code
4490). Unknown *fields* are ignored (clients of newer Sora versions add some);
unknown *message types* are errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from hibiki.server import close_codes

if TYPE_CHECKING:
    from hibiki.server.datachannel import ChannelEntry

__all__ = [
    "ABSENT",
    "AUDIO_CODECS",
    "MESSAGE_TYPES",
    "ROLES",
    "VIDEO_CODECS",
    "ConnectRequest",
    "SignalingError",
    "parse_message",
    "validate_candidate",
    "validate_connect",
    "validate_sdp_message",
]

Role = Literal["sendrecv", "sendonly", "recvonly"]
ROLES: Final = ("sendrecv", "sendonly", "recvonly")
VIDEO_CODECS: Final = ("VP8", "VP9", "AV1", "H264", "H265")
AUDIO_CODECS: Final = ("OPUS",)
DEFAULT_VIDEO_CODEC: Final = "VP8"  # Sora defaults to VP9; our data plane implements VP8 first.
DEFAULT_AUDIO_CODEC: Final = "OPUS"
SIMULCAST_RIDS: Final = ("r0", "r1", "r2")
REQUEST_RIDS: Final = ("none", "r0", "r1", "r2")
MAX_ID_BYTES: Final = 255

MESSAGE_TYPES: Final = frozenset({"connect", "answer", "re-answer", "candidate", "pong", "disconnect", "stats"})
"""Message types a client may send over the WebSocket."""


class _Absent:
    """Marks a JSON field that was not present (``None`` would be JSON null)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent()


class SignalingError(Exception):
    """A client error: the session is closed with ``code`` and ``reason``."""

    def __init__(self, reason: str, code: int = close_codes.SIGNALING_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class ConnectRequest:
    """A validated ``connect`` message (sora-signaling.md §5.1)."""

    role: Role
    channel_id: str
    client_id: str | None = None
    bundle_id: str | None = None
    audio: bool = True
    video: bool = True
    audio_codec_type: str = DEFAULT_AUDIO_CODEC
    video_codec_type: str = DEFAULT_VIDEO_CODEC
    audio_bit_rate: int | None = None
    video_bit_rate: int | None = None
    opus_params: dict[str, Any] | None = None
    """``audio.opus_params``: the fmtp keys the offer carries, type-checked."""
    metadata: Any = ABSENT
    signaling_notify_metadata: Any = ABSENT
    simulcast: bool = False
    simulcast_rid: str | None = None
    """The layer this receiver wants from simulcast senders (``simulcast_request_rid``,
    else ``simulcast_rid``): ``none``, ``r0``, ``r1`` or ``r2``; None: the server's default."""
    simulcast_encodings: tuple[dict[str, Any], ...] | None = None
    """Encodings for this simulcast publisher (auth payout ``simulcast_encodings``)."""
    spotlight: bool = False
    spotlight_number: int | None = None
    spotlight_focus_rid: str | None = None
    spotlight_unfocus_rid: str | None = None
    data_channel_signaling: bool = False
    ignore_disconnect_websocket: bool = False
    data_channels: tuple[ChannelEntry, ...] = ()
    """Messaging channels (``#`` labels) the client asked for."""
    redirect: bool = False
    sora_client: str | None = None
    environment: str | None = None
    libwebrtc: str | None = None
    ignored: tuple[str, ...] = field(default=())
    """Requested features this server does not implement yet (logged, answered as off)."""

    @property
    def send_audio(self) -> bool:
        """The client publishes audio."""
        return self.role != "recvonly" and self.audio

    @property
    def send_video(self) -> bool:
        """The client publishes video."""
        return self.role != "recvonly" and self.video

    @property
    def recv(self) -> bool:
        """The client subscribes to the channel's other tracks."""
        return self.role != "sendonly"

    @property
    def send_simulcast(self) -> bool:
        """The client publishes its video as simulcast layers (spotlight senders always do)."""
        return (self.simulcast or self.spotlight) and self.send_video


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    """A JSON rendering of ``value`` short enough for a close reason."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_message(text: str) -> dict[str, Any]:
    """Parse one text frame into a JSON object with a string ``type``."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SignalingError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise SignalingError("invalid JSON: nested too deeply") from None
    if not isinstance(msg, dict):
        raise SignalingError(f"message must be a JSON object, got {json_type(msg)}")
    if "type" not in msg:
        raise SignalingError("missing field: type")
    mtype = msg["type"]
    if not isinstance(mtype, str):
        raise SignalingError(f"invalid type: must be a string, got {json_type(mtype)}")
    if mtype not in MESSAGE_TYPES:
        raise SignalingError(f"unknown message type: {_clip(mtype)}")
    return msg


# -- typed field accessors -------------------------------------------------------------


def _opt_str(msg: dict[str, Any], name: str, *, max_bytes: int | None = None) -> str | None:
    if name not in msg:
        return None
    value = msg[name]
    if not isinstance(value, str):
        raise SignalingError(f"invalid {name}: must be a string, got {json_type(value)}")
    if max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
        raise SignalingError(f"invalid {name}: longer than {max_bytes} bytes")
    return value


def _opt_bool(msg: dict[str, Any], name: str) -> bool | None:
    if name not in msg:
        return None
    value = msg[name]
    if not isinstance(value, bool):
        raise SignalingError(f"invalid {name}: must be a boolean, got {json_type(value)}")
    return value


def _opt_int(msg: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    if name not in msg:
        return None
    value = msg[name]
    # bool is an int subclass in Python; JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool):
        raise SignalingError(f"invalid {name}: must be an integer, got {json_type(value)}")
    if not lo <= value <= hi:
        raise SignalingError(f"invalid {name}: {value} is out of range {lo}..{hi}")
    return value


def _opt_enum(msg: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _opt_str(msg, name)
    if value is not None and value not in allowed:
        raise SignalingError(f"invalid {name}: {_short(value)} (expected one of {', '.join(allowed)})")
    return value


def _opt_type(msg: dict[str, Any], name: str, kind: type, kind_name: str) -> Any:
    if name not in msg:
        return ABSENT
    value = msg[name]
    if not isinstance(value, kind):
        raise SignalingError(f"invalid {name}: must be an {kind_name}, got {json_type(value)}")
    return value


def _media(
    msg: dict[str, Any],
    name: Literal["audio", "video"],
    codecs: tuple[str, ...],
    default_codec: str,
    bit_rate_range: tuple[int, int],
    param_objects: tuple[str, ...],
) -> tuple[bool, str, int | None]:
    """Validate ``audio``/``video``: absent, a boolean or an options object."""
    if name not in msg:
        return True, default_codec, None
    value = msg[name]
    if isinstance(value, bool):
        return value, default_codec, None
    if not isinstance(value, dict):
        raise SignalingError(f"invalid {name}: must be a boolean or an object, got {json_type(value)}")
    codec = _opt_str(value, "codec_type")
    if codec is not None and codec not in codecs:
        raise SignalingError(f"invalid {name}.codec_type: {_short(codec)} (expected one of {', '.join(codecs)})")
    if "bit_rate" in value:
        bit_rate = value["bit_rate"]
        if not isinstance(bit_rate, int) or isinstance(bit_rate, bool):
            raise SignalingError(f"invalid {name}.bit_rate: must be an integer, got {json_type(bit_rate)}")
        lo, hi = bit_rate_range
        if not lo <= bit_rate <= hi:
            raise SignalingError(f"invalid {name}.bit_rate: {bit_rate} is out of range {lo}..{hi}")
    else:
        bit_rate = None
    for params in param_objects:
        if params in value and not isinstance(value[params], dict):
            raise SignalingError(f"invalid {name}.{params}: must be an object, got {json_type(value[params])}")
    return True, codec or default_codec, bit_rate


# Opus fmtp keys the offer honours, with their JSON types (the others Sora
# documents, e.g. maxplaybackrate, are accepted and left to the codecs).
_OPUS_FMTP: Final = {
    "stereo": bool, "sprop_stereo": bool, "useinbandfec": bool, "usedtx": bool, "minptime": int,
}


def _opus_params(msg: dict[str, Any]) -> dict[str, Any] | None:
    audio = msg.get("audio")
    params = audio.get("opus_params") if isinstance(audio, dict) else None
    if not params:
        return None
    out: dict[str, Any] = {}
    for key, kind in _OPUS_FMTP.items():
        if key not in params or params[key] is None:
            continue
        value = params[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SignalingError(f"invalid audio.opus_params.{key}: must be {kind.__name__}, got {json_type(value)}")
        if key == "minptime" and isinstance(value, int) and not 3 <= value <= 120:
            raise SignalingError(f"invalid audio.opus_params.minptime: {value} is out of range 3..120")
        out[key] = value
    return out or None


def validate_connect(msg: dict[str, Any]) -> ConnectRequest:
    """Validate a ``connect`` message and return what it asks for."""
    if "role" not in msg:
        raise SignalingError("missing field: role")
    role = msg["role"]
    if not isinstance(role, str) or role not in ROLES:
        raise SignalingError(f"invalid role: {_short(role)} (expected sendrecv, sendonly or recvonly)")

    if "channel_id" not in msg:
        raise SignalingError("missing field: channel_id")
    channel_id = msg["channel_id"]
    if not isinstance(channel_id, str):
        raise SignalingError(f"invalid channel_id: must be a string, got {json_type(channel_id)}")
    if not channel_id:
        raise SignalingError("invalid channel_id: must not be empty")
    if len(channel_id.encode("utf-8")) > MAX_ID_BYTES:
        raise SignalingError(f"invalid channel_id: longer than {MAX_ID_BYTES} bytes")

    # The C++ client omits empty ids; an empty one means "use the default".
    client_id = _opt_str(msg, "client_id", max_bytes=MAX_ID_BYTES) or None
    bundle_id = _opt_str(msg, "bundle_id", max_bytes=MAX_ID_BYTES) or None

    multistream = _opt_bool(msg, "multistream")
    if multistream is False:
        raise SignalingError("multistream false is not supported")

    audio, audio_codec, audio_bit_rate = _media(
        msg, "audio", AUDIO_CODECS, DEFAULT_AUDIO_CODEC, (6, 510), ("opus_params",)
    )
    video, video_codec, video_bit_rate = _media(
        msg,
        "video",
        VIDEO_CODECS,
        DEFAULT_VIDEO_CODEC,
        (1, 1_000_000),
        ("vp9_params", "av1_params", "h264_params", "h265_params"),
    )

    simulcast = bool(_opt_bool(msg, "simulcast"))
    simulcast_rid = _opt_enum(msg, "simulcast_rid", SIMULCAST_RIDS)
    # The newer field wins when a client sends both.
    simulcast_rid = _opt_enum(msg, "simulcast_request_rid", REQUEST_RIDS) or simulcast_rid
    spotlight = bool(_opt_bool(msg, "spotlight"))
    spotlight_number = _opt_int(msg, "spotlight_number", 1, 8)
    spotlight_rids: dict[str, str | None] = {}
    for rid_field in ("spotlight_focus_rid", "spotlight_unfocus_rid"):
        spotlight_rids[rid_field] = _opt_enum(msg, rid_field, REQUEST_RIDS)
        if rid_field in msg and not spotlight:
            # Real Sora closes with 4490 here too (sora-signaling.md §5.1).
            raise SignalingError(f"{rid_field} requires spotlight: true")

    data_channel_signaling = bool(_opt_bool(msg, "data_channel_signaling"))
    ignore_disconnect_websocket = bool(_opt_bool(msg, "ignore_disconnect_websocket"))
    # Imported here: datachannel imports SignalingError from this module.
    from hibiki.server.datachannel import parse_data_channels

    data_channels = tuple(parse_data_channels(msg.get("data_channels")))
    _opt_type(msg, "forwarding_filter", dict, "object")
    _opt_type(msg, "forwarding_filters", list, "array")
    _opt_str(msg, "audio_streaming_language_code")
    _opt_str(msg, "sdp")  # JS SDK only: a capability offer we don't need
    redirect = bool(_opt_bool(msg, "redirect"))
    if _opt_bool(msg, "e2ee"):
        raise SignalingError("e2ee is not supported")

    ignored = tuple(
        name
        for name, wanted in (
            ("forwarding_filters", "forwarding_filters" in msg or "forwarding_filter" in msg),
        )
        if wanted
    )

    return ConnectRequest(
        opus_params=_opus_params(msg),
        role=role,  # type: ignore[arg-type]  # checked against ROLES above
        channel_id=channel_id,
        client_id=client_id,
        bundle_id=bundle_id,
        audio=audio,
        video=video,
        audio_codec_type=audio_codec,
        video_codec_type=video_codec,
        audio_bit_rate=audio_bit_rate,
        video_bit_rate=video_bit_rate,
        metadata=msg.get("metadata", ABSENT),
        signaling_notify_metadata=msg.get("signaling_notify_metadata", ABSENT),
        simulcast=simulcast,
        simulcast_rid=simulcast_rid,
        spotlight=spotlight,
        spotlight_number=spotlight_number,
        spotlight_focus_rid=spotlight_rids["spotlight_focus_rid"],
        spotlight_unfocus_rid=spotlight_rids["spotlight_unfocus_rid"],
        data_channel_signaling=data_channel_signaling,
        ignore_disconnect_websocket=ignore_disconnect_websocket,
        data_channels=data_channels,
        redirect=redirect,
        sora_client=_opt_str(msg, "sora_client"),
        environment=_opt_str(msg, "environment"),
        libwebrtc=_opt_str(msg, "libwebrtc"),
        ignored=ignored,
    )


def validate_sdp_message(msg: dict[str, Any]) -> str:
    """Return the ``sdp`` of an ``answer``/``re-answer``."""
    mtype = msg["type"]
    if "sdp" not in msg:
        raise SignalingError(f"invalid {mtype}: missing field: sdp")
    sdp = msg["sdp"]
    if not isinstance(sdp, str):
        raise SignalingError(f"invalid {mtype}: sdp must be a string, got {json_type(sdp)}")
    if not sdp.strip():
        raise SignalingError(f"invalid {mtype}: sdp is empty")
    return sdp


def validate_candidate(msg: dict[str, Any]) -> str | None:
    """Return the candidate line of a ``candidate`` message, or None for an end-of-candidates marker.

    Accepts the C++ form ``{"candidate": "candidate:..."}`` and the JS form
    (``RTCIceCandidate.toJSON()``: plus ``sdpMid``, ``sdpMLineIndex``,
    ``usernameFragment``, which BUNDLE makes irrelevant).
    """
    if "candidate" not in msg:
        raise SignalingError("invalid candidate: missing field: candidate")
    cand = msg["candidate"]
    if not isinstance(cand, str):
        raise SignalingError(f"invalid candidate: candidate must be a string, got {json_type(cand)}")
    cand = cand.strip()
    if cand.startswith("a="):
        cand = cand[2:]
    if not cand:
        return None  # browsers signal end-of-candidates with an empty string
    if not cand.startswith("candidate:"):
        raise SignalingError(f"invalid candidate: must start with 'candidate:', got {_short(cand)}")
    return cand
