"""The HTTP API, Sora style: push to and disconnect connections, list them, request key frames.

Request
    ``POST /api`` (or ``POST /``, where Sora's API listener answers, so that
    tools written for Sora only need the port changed) with the header
    ``x-sora-target: <target>`` and a JSON object body (may be empty for
    ``ListConnections``). When the server has an auth secret (``hibiki serve
    --auth-secret``), the request needs ``Authorization: Bearer <secret>``.

Response
    200 with a JSON body on success. Errors are ``application/problem+json``
    (RFC 9457) with ``type`` (``about:blank``), ``title`` (the HTTP status
    phrase), ``status`` and ``detail`` (what to fix), plus ``target`` when the
    target is known:

    * 400: no or unknown ``x-sora-target``, a body that is not a JSON object,
      a missing field or one of the wrong type;
    * 401: missing or wrong bearer secret (with ``WWW-Authenticate: Bearer``);
    * 404: the channel has no connections, or no connection matches;
    * 405: a method other than POST; 413: a body over 1 MiB;
    * 500: a bug in the server (logged with a traceback).

    No CORS headers are sent: with auth off, any web page could otherwise
    drive a local server's API. Put a proxy in front for browser use.

Targets (:data:`ACTIONS` is the table)

=====================================  ==========================================  ===================================
Target                                 Body                                        Effect and 200 answer
=====================================  ==========================================  ===================================
Sora_20151104.DisconnectChannel        ``channel_id``                              close every connection of the
                                                                                   channel; ``{channel_id,
                                                                                   connection_ids}``
Sora_20151104.DisconnectConnection     ``channel_id``, ``connection_id``           close one connection; same answer
Sora_20151104.DisconnectClient         ``channel_id``, ``client_id``               close every connection with that
                                                                                   client_id; same answer
Sora_20201120.DisconnectChannelByRole  ``channel_id``, ``role``                    close the connections with that
                                                                                   role; same answer (may be empty)
Sora_20160711.PushChannel              ``channel_id``, ``data`` (object)           ``{"type":"push","data":data}`` to
                                                                                   every connection; ``{channel_id,
                                                                                   data, connection_ids}``
Sora_20160711.PushConnection           ``channel_id``, ``connection_id``, ``data``  to one connection; same answer
Sora_20160711.PushClient               ``channel_id``, ``client_id``, ``data``      to every connection with that
                                                                                   client_id; same answer
Sora_20201120.PushChannelByRole        ``channel_id``, ``role``, ``data``           to the connections with that role;
                                                                                   same answer (may be empty)
Sora_20201013.ListConnections          (none)                                      a JSON array of connections
Sora_20201013.ListChannelConnections   ``channel_id``                              the channel's connections (``[]``
                                                                                   for an unknown channel)
Sora_20241218.RequestKeyFrame          ``channel_id``, ``connection_id``           the SFU asks that sender for a key
                                                                                   frame (PLI); ``{}``
Sora_20251217.RequestSimulcastRid      ``channel_id``, ``receiver_connection_id``,  the receiver gets layer ``rid``
                                       ``rid`` (none/r0/r1/r2/auto),               (none, r0, r1, r2, auto) of the
                                       ``sender_connection_id``?                   sender's (or every sender's)
                                                                                   simulcast video from its next
                                                                                   keyframe; ``{}``. Also as
                                                                                   ``Sora_20251210.*``
Sora_20201005.RequestRtpStream         ``channel_id``, ``recv_connection_id``,     the same, older names
                                       ``rid``, ``send_connection_id``?
Sora_20201005.ResetRtpStream           ``channel_id``, ``recv_connection_id``,     back to the layer asked for at
                                       ``send_connection_id``?                     connect (r2 if none); ``{}``
=====================================  ==========================================  ===================================

A disconnected client sees a WebSocket close 1000 ``DISCONNECTED-API`` (the
official client: ``on_disconnect(CLOSE_SUCCEEDED, "...DISCONNECTED-API...")``);
the others get ``connection.destroyed``. Connections are those that received
their offer, whether or not their media is up yet.

A connection in a list::

    {"channel_id", "session_id", "connection_id", "client_id", "bundle_id", "role",
     "multistream": true, "simulcast": bool, "spotlight": bool,
     "audio": {"codec_type": "OPUS"} | false, "video": {"codec_type", "bit_rate"?} | false,
     "connected": bool (media up), "created_time": microseconds since the epoch}
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hibiki._log import ConnectionLogger
from hibiki.server import close_codes, simulcast
from hibiki.server.channel import Channel, Member
from hibiki.server.hub import Hub
from hibiki.server.validation import ROLES, json_type

__all__ = ["ACTIONS", "Action", "ApiError", "handle_api_request"]

log = logging.getLogger("hibiki.server.api")

MAX_BODY_BYTES: Final = 1024 * 1024
TARGET_HEADER: Final = "x-sora-target"

Body = dict[str, Any]


class ApiError(Exception):
    """A request the API refuses: becomes a problem+json response."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class Action:
    """One ``x-sora-target``: its handler and what it does."""

    target: str
    run: Callable[[Hub, Body], Any]
    summary: str


ACTIONS: dict[str, Action] = {}
"""Every target the API answers, by ``x-sora-target`` value."""


def _action(target: str, summary: str) -> Callable[[Callable[[Hub, Body], Any]], Callable[[Hub, Body], Any]]:
    def register(fn: Callable[[Hub, Body], Any]) -> Callable[[Hub, Body], Any]:
        assert target not in ACTIONS, target
        ACTIONS[target] = Action(target, fn, summary)
        return fn

    return register


# -- body fields -------------------------------------------------------------------------------


def _str_field(body: Body, name: str) -> str:
    if name not in body:
        raise ApiError(400, f"missing field: {name}")
    value = body[name]
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"invalid {name}: must be a non-empty string, got {json_type(value)}")
    return value


def _role_field(body: Body) -> str:
    role = _str_field(body, "role")
    if role not in ROLES:
        raise ApiError(400, f"invalid role: {role[:40]!r} (expected sendrecv, sendonly or recvonly)")
    return role


def _data_field(body: Body) -> dict[str, Any]:
    if "data" not in body:
        raise ApiError(400, "missing field: data")
    data = body["data"]
    # Clients parse push data as an object (the JS SDK types it so); anything
    # else would be a trap for them.
    if not isinstance(data, dict):
        raise ApiError(400, f"invalid data: must be a JSON object, got {json_type(data)}")
    return data


def _channel(hub: Hub, body: Body) -> Channel:
    channel_id = _str_field(body, "channel_id")
    channel = hub.registry.get(channel_id)
    if channel is None:
        raise ApiError(404, f"channel {channel_id[:60]!r} has no connections")
    return channel


def _connection(hub: Hub, body: Body) -> list[Member]:
    channel = _channel(hub, body)
    connection_id = _str_field(body, "connection_id")
    member = channel.members.get(connection_id)
    if member is None:
        raise ApiError(404, f"no connection {connection_id[:60]!r} in channel {channel.channel_id[:60]!r}")
    return [member]


def _client(hub: Hub, body: Body) -> list[Member]:
    channel = _channel(hub, body)
    client_id = _str_field(body, "client_id")
    members = [m for m in channel.members_oldest_first() if m.client_id == client_id]
    if not members:
        raise ApiError(404, f"no connection with client_id {client_id[:60]!r} in channel {channel.channel_id[:60]!r}")
    return members


def _by_role(hub: Hub, body: Body) -> list[Member]:
    channel = _channel(hub, body)
    role = _role_field(body)
    return [m for m in channel.members_oldest_first() if m.role == role]


def _whole_channel(hub: Hub, body: Body) -> list[Member]:
    return _channel(hub, body).members_oldest_first()


# -- actions -----------------------------------------------------------------------------------


def _disconnect(members: list[Member], body: Body) -> dict[str, Any]:
    for member in members:
        member.handle.server_disconnect(close_codes.DISCONNECTED_API)
    return {"channel_id": body["channel_id"], "connection_ids": [m.connection_id for m in members]}


def _push(members: list[Member], body: Body, data: dict[str, Any]) -> dict[str, Any]:
    for member in members:
        member.handle.push(data)
    return {"channel_id": body["channel_id"], "data": data, "connection_ids": [m.connection_id for m in members]}


@_action("Sora_20151104.DisconnectChannel", "close every connection of a channel")
def disconnect_channel(hub: Hub, body: Body) -> dict[str, Any]:
    """Close every connection of ``channel_id`` with 1000 ``DISCONNECTED-API``."""
    return _disconnect(_whole_channel(hub, body), body)


@_action("Sora_20151104.DisconnectConnection", "close one connection")
def disconnect_connection(hub: Hub, body: Body) -> dict[str, Any]:
    """Close ``connection_id`` of ``channel_id``."""
    return _disconnect(_connection(hub, body), body)


@_action("Sora_20151104.DisconnectClient", "close the connections with a client_id")
def disconnect_client(hub: Hub, body: Body) -> dict[str, Any]:
    """Close every connection of ``channel_id`` whose client_id is ``client_id``."""
    return _disconnect(_client(hub, body), body)


@_action("Sora_20201120.DisconnectChannelByRole", "close the connections with a role")
def disconnect_channel_by_role(hub: Hub, body: Body) -> dict[str, Any]:
    """Close every connection of ``channel_id`` whose role is ``role``."""
    return _disconnect(_by_role(hub, body), body)


@_action("Sora_20160711.PushChannel", "push to every connection of a channel")
def push_channel(hub: Hub, body: Body) -> dict[str, Any]:
    """Send ``data`` to every connection of ``channel_id``."""
    data = _data_field(body)
    return _push(_whole_channel(hub, body), body, data)


@_action("Sora_20160711.PushConnection", "push to one connection")
def push_connection(hub: Hub, body: Body) -> dict[str, Any]:
    """Send ``data`` to ``connection_id``."""
    data = _data_field(body)
    return _push(_connection(hub, body), body, data)


@_action("Sora_20160711.PushClient", "push to the connections with a client_id")
def push_client(hub: Hub, body: Body) -> dict[str, Any]:
    """Send ``data`` to every connection of ``channel_id`` whose client_id is ``client_id``."""
    data = _data_field(body)
    return _push(_client(hub, body), body, data)


@_action("Sora_20201120.PushChannelByRole", "push to the connections with a role")
def push_channel_by_role(hub: Hub, body: Body) -> dict[str, Any]:
    """Send ``data`` to every connection of ``channel_id`` whose role is ``role``."""
    data = _data_field(body)
    return _push(_by_role(hub, body), body, data)


def _connection_info(channel: Channel, member: Member) -> dict[str, Any]:
    audio: dict[str, Any] | bool = False
    if member.audio_codec_type is not None:
        audio = {"codec_type": member.audio_codec_type}
    video: dict[str, Any] | bool = False
    if member.video_codec_type is not None:
        video = {"codec_type": member.video_codec_type}
        if member.video_bit_rate is not None:
            video["bit_rate"] = member.video_bit_rate
    return {
        "channel_id": channel.channel_id,
        "session_id": channel.session_id,
        "connection_id": member.connection_id,
        "client_id": member.client_id,
        "bundle_id": member.bundle_id,
        "role": member.role,
        "multistream": True,
        "simulcast": member.simulcast,
        "spotlight": member.spotlight,
        "audio": audio,
        "video": video,
        "connected": member.connected,
        "created_time": member.created_time_us,
    }


@_action("Sora_20201013.ListConnections", "list every connection")
def list_connections(hub: Hub, body: Body) -> list[dict[str, Any]]:
    """Every connection of every channel."""
    return [
        _connection_info(channel, member)
        for channel in hub.registry.channels()
        for member in channel.members_oldest_first()
    ]


@_action("Sora_20201013.ListChannelConnections", "list the connections of a channel")
def list_channel_connections(hub: Hub, body: Body) -> list[dict[str, Any]]:
    """The connections of ``channel_id`` (empty for a channel without connections)."""
    channel = hub.registry.get(_str_field(body, "channel_id"))
    if channel is None:
        return []
    return [_connection_info(channel, member) for member in channel.members_oldest_first()]


@_action("Sora_20241218.RequestKeyFrame", "ask a sender for a key frame")
def request_key_frame(hub: Hub, body: Body) -> dict[str, Any]:
    """Make the SFU send a PLI to ``connection_id``'s video tracks."""
    (member,) = _connection(hub, body)
    if member.role == "recvonly" or member.video_codec_type is None:
        raise ApiError(400, f"connection {member.connection_id} does not send video")
    try:
        hub.bridge.sfu.request_keyframe(member.connection_id)
    except ValueError as exc:
        # The data plane no longer knows it: it is on its way out.
        raise ApiError(404, f"connection {member.connection_id} is closing ({exc})") from None
    return {}


def _request_rid(hub: Hub, body: Body, receiver_field: str, sender_field: str, rid: str) -> dict[str, Any]:
    channel = _channel(hub, body)
    receiver_id = _str_field(body, receiver_field)
    receiver = channel.members.get(receiver_id)
    if receiver is None:
        raise ApiError(404, f"no connection {receiver_id[:60]!r} in channel {channel.channel_id[:60]!r}")
    sender_id = _str_field(body, sender_field) if sender_field in body else None
    if sender_id is not None and sender_id not in channel.members:
        raise ApiError(404, f"no connection {sender_id[:60]!r} in channel {channel.channel_id[:60]!r}")
    if receiver.role == "sendonly":
        raise ApiError(400, f"connection {receiver_id} is sendonly and receives nothing")
    try:
        receiver.handle.request_simulcast_rid(rid, sender_id)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return {}


def _rid_field(body: Body) -> str:
    rid = _str_field(body, "rid")
    if rid not in ("none", "auto", *simulcast.RIDS):
        raise ApiError(400, f"invalid rid: {rid[:20]!r} (expected none, r0, r1, r2 or auto)")
    return rid


@_action("Sora_20251217.RequestSimulcastRid", "choose the simulcast layer a receiver gets")
def request_simulcast_rid(hub: Hub, body: Body) -> dict[str, Any]:
    """Switch ``receiver_connection_id`` to layer ``rid`` of one sender (or all)."""
    return _request_rid(hub, body, "receiver_connection_id", "sender_connection_id", _rid_field(body))


# Sora's documentation has shown this API under two version strings.
ACTIONS["Sora_20251210.RequestSimulcastRid"] = dataclasses.replace(
    ACTIONS["Sora_20251217.RequestSimulcastRid"], target="Sora_20251210.RequestSimulcastRid")


@_action("Sora_20201005.RequestRtpStream", "choose the simulcast layer a receiver gets (older name)")
def request_rtp_stream(hub: Hub, body: Body) -> dict[str, Any]:
    """The pre-2025 form of RequestSimulcastRid."""
    return _request_rid(hub, body, "recv_connection_id", "send_connection_id", _rid_field(body))


@_action("Sora_20201005.ResetRtpStream", "give a receiver back the simulcast layer it connected with")
def reset_rtp_stream(hub: Hub, body: Body) -> dict[str, Any]:
    """Undo RequestRtpStream: the layer from the connect message (``r2`` if none)."""
    channel = _channel(hub, body)
    receiver = channel.members.get(_str_field(body, "recv_connection_id"))
    rid = receiver.simulcast_rid if receiver is not None and receiver.simulcast_rid else simulcast.DEFAULT_RID
    return _request_rid(hub, body, "recv_connection_id", "send_connection_id", rid)


# -- the endpoint --------------------------------------------------------------------------------


def _problem(status: int, detail: str, target: str | None, headers: dict[str, str] | None = None) -> Response:
    doc: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if target is not None:
        doc["target"] = target
    return JSONResponse(doc, status_code=status, media_type="application/problem+json", headers=headers)


def _check_auth(request: Request, secret: str | None) -> None:
    if secret is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="hibiki"'}
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing Authorization: Bearer <secret>", challenge)
    # Constant time: the secret also signs access tokens.
    if not hmac.compare_digest(token.strip().encode("utf-8"), secret.encode("utf-8")):
        raise ApiError(401, "wrong bearer secret", challenge)


async def _read_body(request: Request) -> Body:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"body over {MAX_BODY_BYTES} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"body over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "body is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, got {json_type(body)}")
    return body


async def handle_api_request(request: Request, hub: Hub) -> Response:
    """Answer one API request (see the module docstring)."""
    target = request.headers.get(TARGET_HEADER)
    known = target if target in ACTIONS else None
    # Bound to the request's channel/connection once the body is read, so the
    # API's log lines sit with the sessions' ones.
    alog = ConnectionLogger(log)
    try:
        if request.method != "POST":
            raise ApiError(405, f"use POST, not {request.method}", {"Allow": "POST"})
        _check_auth(request, hub.settings.auth_secret)
        if target is None:
            raise ApiError(400, f"missing {TARGET_HEADER} header (e.g. Sora_20160711.PushChannel)")
        action = ACTIONS.get(target)
        if action is None:
            raise ApiError(400, f"unknown {TARGET_HEADER}: {target[:80]!r}")
        body = await _read_body(request)
        alog.bind(channel_id=_log_id(body, "channel_id"), connection_id=_log_id(body, "connection_id"))
        result = action.run(hub, body)
    except ApiError as exc:
        level = logging.WARNING if exc.status == 401 else logging.INFO
        alog.log(level, "API %s: %d %s", target or "-", exc.status, exc.detail)
        return _problem(exc.status, exc.detail, known, exc.headers)
    except Exception:
        # A bug here: answer in the documented format, keep the server going.
        alog.exception("API %s failed", target)
        return _problem(500, "internal error (see the server log)", known)
    alog.info("API %s%s", target, _summary(body, result))
    return JSONResponse(result)


def _log_id(body: Body, name: str) -> str:
    value = body.get(name)
    return value[:60] if isinstance(value, str) and value else "-"


def _summary(body: Body, result: Any) -> str:
    """What a request did, for the log (never its data)."""
    parts = [f" {k}={str(body[k])[:60]}" for k in ("client_id", "role") if k in body]
    if isinstance(result, dict) and "connection_ids" in result:
        parts.append(f" -> {len(result['connection_ids'])} connection(s)")
    elif isinstance(result, list):
        parts.append(f" -> {len(result)} listed")
    return "".join(parts)
