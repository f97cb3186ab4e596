"""Builders for server → client signaling messages.

The official C++ client reads some fields with throwing accessors: a missing
field or one of the wrong JSON type terminates the client process
(sora-signaling.md §1, §5.3). So every builder here emits exact JSON types and
never ``null`` where the client expects a value.

Notifies (sora-signaling.md §5.7) about a connection (the *subject*) carry:
``type`` ``"notify"``, ``event_type``, ``timestamp`` (RFC 3339 µs), ``role``,
``session_id``, ``client_id``, ``bundle_id``, ``connection_id``, ``audio``,
``video`` (booleans), ``minutes`` (whole minutes since the subject came up),
``channel_connections`` and the three per-role counters (connected
connections, after the event), ``turn_transport_type`` (``"udp"``), and when
set: ``metadata`` (the subject's ``signaling_notify_metadata``) and
``authz_metadata`` (the ``metadata`` its authentication handed out). The
connect ``metadata`` (``authn_metadata`` in Sora) is never shown to others:
it usually holds the access token.

* ``connection.created``: to every connection of the channel when the
  subject's media comes up, the subject included; the subject's own copy has
  ``data``: ``[{connection_id, client_id, metadata?, authz_metadata?}]`` for
  every connected connection, oldest first, itself last.
* ``connection.updated``: every ``ServerSettings.notify_update_interval``
  seconds (60 by default) of the subject's life, to the whole channel.
* ``connection.destroyed``: to the others when the subject leaves.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hibiki.server.channel import Channel, Member
from hibiki.server.validation import ABSENT, ConnectRequest

__all__ = [
    "connection_created",
    "connection_destroyed",
    "connection_updated",
    "dumps",
    "offer",
    "ping",
    "push",
    "re_offer",
    "redirect",
    "server_version",
    "timestamp",
]


def dumps(message: dict[str, Any]) -> str:
    """Serialise a message as one compact JSON text frame."""
    assert isinstance(message.get("type"), str), "every server message needs a string type"
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def timestamp(when: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2024-01-01T00:00:00.000000Z``."""
    when = when or datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def server_version() -> str:
    """This server's version string, for ``offer.version``."""
    try:
        from hibiki import __version__

        return str(__version__)
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        return version("hibiki")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


_VERSION = server_version()


def offer(
    *,
    request: ConnectRequest,
    sdp: str,
    connection_id: str,
    client_id: str,
    bundle_id: str,
    session_id: str,
    audio_mid: str | None,
    video_mid: str | None,
    metadata: Any = ABSENT,
) -> dict[str, Any]:
    """The one ``offer`` of a session (sora-signaling.md §5.3, minimal WebSocket-only form).

    ``metadata`` is what authentication handed out (the auth webhook's
    ``metadata``); it is left out when there is none.
    """
    mid: dict[str, str] = {}
    if audio_mid is not None:
        mid["audio"] = audio_mid
    if video_mid is not None:
        mid["video"] = video_mid
    msg: dict[str, Any] = {
        "type": "offer",
        "sdp": sdp,
        "connection_id": connection_id,
        "client_id": client_id,
        "bundle_id": bundle_id,
        "channel_id": request.channel_id,
        "session_id": session_id,
        # username/credential are read unconditionally by the C++ client for
        # each entry; with no entries there is nothing to get wrong.
        "config": {"iceServers": [], "iceTransportPolicy": "all"},
        "mid": mid,
        "multistream": True,
        # Features not implemented yet are answered as off: the client then
        # behaves as if it had not asked (no encodings, WebSocket signaling).
        "simulcast": False,
        "spotlight": False,
        "data_channel_signaling": False,
        "ignore_disconnect_websocket": False,
        "audio": request.audio,
        "video": request.video,
        "version": _VERSION,
    }
    if metadata is not ABSENT:
        msg["metadata"] = metadata
    if request.audio:
        msg["audio_codec_type"] = request.audio_codec_type
        if request.audio_bit_rate is not None:
            msg["audio_bit_rate"] = request.audio_bit_rate
    if request.video:
        msg["video_codec_type"] = request.video_codec_type
        if request.video_bit_rate is not None:
            msg["video_bit_rate"] = request.video_bit_rate
    return msg


def re_offer(sdp: str) -> dict[str, Any]:
    """A renegotiation offer."""
    return {"type": "re-offer", "sdp": sdp}


def redirect(location: str) -> dict[str, Any]:
    """Send the client to another node (§5.2); ``location`` is an absolute ws(s) URL."""
    return {"type": "redirect", "location": location}


def push(data: dict[str, Any]) -> dict[str, Any]:
    """A push message (§5.8): ``data`` is the JSON object given to the Push API."""
    return {"type": "push", "data": data}


def ping(stats: bool = False) -> dict[str, Any]:
    """A keep-alive ping; the client answers ``{"type":"pong"}``, with its stats when ``stats``."""
    return {"type": "ping", "stats": stats}


def _connection_event(event_type: str, channel: Channel, subject: Member, now: float | None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "notify",
        "event_type": event_type,
        "timestamp": timestamp(),
        "role": subject.role,
        "session_id": channel.session_id,
        "client_id": subject.client_id,
        "bundle_id": subject.bundle_id,
        "connection_id": subject.connection_id,
        "audio": subject.audio,
        "video": subject.video,
        "minutes": subject.minutes(now),
        **channel.counts(),
        "turn_transport_type": "udp",
    }
    if subject.notify_metadata is not ABSENT:
        msg["metadata"] = subject.notify_metadata
    if subject.authz_metadata is not ABSENT:
        msg["authz_metadata"] = subject.authz_metadata
    return msg


def connection_created(channel: Channel, subject: Member, *, for_self: bool) -> dict[str, Any]:
    """``notify`` ``connection.created`` about ``subject``.

    The subject's own copy has ``data``: every connected member of the channel,
    oldest first, the subject itself last (it is the newest).
    """
    msg = _connection_event("connection.created", channel, subject, None)
    if for_self:
        data = []
        for member in channel.connected_members():
            item: dict[str, Any] = {"connection_id": member.connection_id, "client_id": member.client_id}
            if member.notify_metadata is not ABSENT:
                item["metadata"] = member.notify_metadata
            if member.authz_metadata is not ABSENT:
                item["authz_metadata"] = member.authz_metadata
            data.append(item)
        msg["data"] = data
    return msg


def connection_updated(channel: Channel, subject: Member) -> dict[str, Any]:
    """``notify`` ``connection.updated`` about ``subject``: sent periodically with its ``minutes``."""
    return _connection_event("connection.updated", channel, subject, None)


def connection_destroyed(channel: Channel, subject: Member) -> dict[str, Any]:
    """``notify`` ``connection.destroyed`` about ``subject`` (counts after it left)."""
    return _connection_event("connection.destroyed", channel, subject, None)
