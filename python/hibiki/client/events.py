"""What happens to a connection, as enums (callback face) and typed events (asyncio face).

The enums mirror sora-sdk's ``SoraSignalingErrorCode``, ``SoraSignalingType``
and ``SoraSignalingDirection`` (same names, same integer values), so code
written for sora-sdk compares and prints them the same way.

The dataclasses are what ``async for event in conn`` yields::

    async for event in conn:
        match event:
            case hibiki.events.TrackAdded(track=track):
                print("new", track.kind, "track from", track.stream_id)
            case hibiki.events.Disconnected(code=code, reason=reason):
                print("gone:", code.name, reason)
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .tracks import MediaTrack

__all__ = [
    "Connected",
    "ConnectionEvent",
    "DataChannelOpen",
    "Disconnected",
    "Message",
    "Notify",
    "Push",
    "SignalingDirection",
    "SignalingErrorCode",
    "SignalingType",
    "SimulcastSwitched",
    "Switched",
    "TrackAdded",
    "TrackRemoved",
]


class _NamedIntEnum(enum.IntEnum):
    # Python 3.11 prints IntEnum members as bare numbers; a log line saying
    # "SignalingErrorCode.CLOSE_SUCCEEDED" is more useful than "0".
    __str__ = enum.Enum.__str__


class SignalingErrorCode(_NamedIntEnum):
    """Why a connection ended (sora-sdk's ``SoraSignalingErrorCode``)."""

    CLOSE_SUCCEEDED = 0
    """Closed normally: our ``disconnect()``, or the server closed with 1000."""
    CLOSE_FAILED = 1
    """We asked to disconnect but the server did not close in time."""
    INTERNAL_ERROR = 2
    """A bug or unexpected state in the SDK (the message says what)."""
    INVALID_PARAMETER = 3
    """Bad arguments (e.g. an empty URL list) or a malformed server message."""
    WEBSOCKET_HANDSHAKE_FAILED = 4
    """No signaling URL could be opened."""
    WEBSOCKET_ONCLOSE = 5
    """The server closed the WebSocket with a non-1000 code (e.g. 4490)."""
    WEBSOCKET_ONERROR = 6
    """The WebSocket broke without a close frame (network error, server crash)."""
    PEER_CONNECTION_STATE_FAILED = 7
    """The media connection (ICE/DTLS) failed or timed out."""
    ICE_FAILED = 8
    """Setting up the media connection from the offer failed."""


class SignalingType(_NamedIntEnum):
    """Which path a signaling message took (sora-sdk's ``SoraSignalingType``)."""

    WEBSOCKET = 0
    DATACHANNEL = 1


class SignalingDirection(_NamedIntEnum):
    """Whether we sent or received a signaling message (sora-sdk's ``SoraSignalingDirection``)."""

    SENT = 0
    RECEIVED = 1


@dataclass(frozen=True)
class Connected:
    """ICE and DTLS are up; media flows from here on."""

    connection_id: str


@dataclass(frozen=True)
class TrackAdded:
    """A remote track appeared; ``track.stream_id`` is the sender's connection_id."""

    track: MediaTrack


@dataclass(frozen=True)
class TrackRemoved:
    """A remote track went away (its sender left or unpublished)."""

    track: MediaTrack


@dataclass(frozen=True)
class SimulcastSwitched:
    """The server now forwards another simulcast layer of ``track`` (``rid``: ``r0``..``r2``, None: none).

    Follows the server's ``simulcast.switched`` notify (the raw message is
    ``message``); ``track.simulcast_rid`` already says the new layer. The
    first picture of the new layer is a keyframe at its resolution.
    """

    track: MediaTrack
    rid: str | None
    previous_rid: str | None
    message: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class Notify:
    """A ``notify`` message from the server (``connection.created``, ``connection.destroyed``...)."""

    message: dict[str, Any]

    @property
    def event_type(self) -> str | None:
        """The notify's ``event_type``, e.g. ``"connection.created"``."""
        value = self.message.get("event_type")
        return value if isinstance(value, str) else None

    @property
    def connection_id(self) -> str | None:
        """The connection the notify is about, when it is about one."""
        value = self.message.get("connection_id")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        return json.dumps(self.message)


@dataclass(frozen=True)
class Push:
    """A ``push`` message from the server; ``data`` is what the push API was given."""

    data: Any
    message: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Switched:
    """The server switched signaling to DataChannels (``{"type": "switched"}``, §5.10).

    From here on re-offers, notifies and pushes arrive over DataChannels. With
    ``ignore_disconnect_websocket`` the SDK has closed the WebSocket itself
    (``on_ws_close(1000, "SELF-CLOSED")``) and the connection lives on over
    DataChannels only.
    """

    ignore_disconnect_websocket: bool
    message: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataChannelOpen:
    """A data channel the application can use is open: a ``#`` messaging label or ``rpc``.

    ``await conn.send_message(label, data)`` works from here on.
    """

    label: str


@dataclass(frozen=True)
class Message:
    """A message on a ``#`` messaging label (or a raw JSON-RPC message on ``rpc``).

    ``data`` is exactly what sora-sdk's ``on_message`` gets: decompressed when
    the label is compressed, and including the 26-byte sender connection_id
    when the label was requested with ``header=[{"type": "sender_connection_id"}]``.
    In that case ``sender_connection_id`` holds that id and ``payload`` the
    bytes after it; otherwise ``payload`` is ``data``.
    """

    label: str
    data: bytes
    sender_connection_id: str | None = None

    @property
    def payload(self) -> bytes:
        """The message without its sender header."""
        return self.data[len(self.sender_connection_id):] if self.sender_connection_id else self.data


@dataclass(frozen=True)
class Disconnected:
    """The connection is closed; this is always the last event.

    ``code`` says how (``CLOSE_SUCCEEDED`` for a normal close), ``reason`` is
    the message also given to ``on_disconnect``, and ``ws_close_code`` /
    ``ws_close_reason`` are the server's WebSocket close frame when there was one.
    """

    code: SignalingErrorCode
    reason: str
    ws_close_code: int | None = None
    ws_close_reason: str | None = None


ConnectionEvent = (
    Connected | TrackAdded | TrackRemoved | SimulcastSwitched | Notify | Push | Switched | DataChannelOpen
    | Message | Disconnected
)
"""Anything ``async for event in conn`` can yield."""
