"""``/v1/calls/{type}/{id}/connections`` and messages: the live connections of a call.

A call's media channel is ``"<type>:<id>"``; these routes act on whoever is
connected to that channel now, whether or not the call is stored (any Sora
client may join any channel on an open server). They are the ``/v1`` face of
what the Sora-style ``/api`` does (list, disconnect, push, key frame), plus
the stats each client reports:

* ``GET    .../connections``: the channel's connections, oldest first;
* ``DELETE .../connections/{connection_id}``: close it (1000 ``DISCONNECTED-API``);
* ``POST   .../messages``: push ``{"type": "push", "data": data}`` to every connection;
* ``POST   .../connections/{connection_id}/messages``: push to one connection;
* ``POST   .../connections/{connection_id}/keyframe``: ask the sender for a key frame (PLI);
* ``GET    .../connections/{connection_id}/stats``: the latest W3C stats the client sent.

Stats: the server asks for them with every keep-alive ping (Sora's
``{"type": "ping", "stats": true}``, or ``req-stats`` on the ``stats`` data
channel once signaling switched) and keeps the latest answer per connection,
so they are at most one ping interval (``--ping-interval``) old.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam

from hibiki.api.models import (
    ConnectionResponse,
    ConnectionStatsResponse,
    DisconnectResponse,
    ListConnectionsResponse,
    Problem,
    RequestKeyframeResponse,
    SendMessageRequest,
    SendMessageResponse,
)
from hibiki.server import close_codes
from hibiki.server.channel import Member
from hibiki.server.hub import Hub
from hibiki.server.rest.deps import CallIdParam, CallTypeParam, get_hub
from hibiki.server.rest.errors import PROBLEM_MEDIA_TYPE, PROBLEM_RESPONSES, ApiProblem
from hibiki.server.rest.security import ServerAuth
from hibiki.server.session import SignalingSession

__all__ = ["router"]

ConnectionId = Annotated[
    str,
    # Server-made ids are 26 characters; the bound only keeps junk out of logs and details.
    PathParam(min_length=1, max_length=64, description="The connection's ``connection_id``."),
]
HubDep = Annotated[Hub, Depends(get_hub)]

_PAYLOAD_TOO_LARGE: Final[dict[int | str, dict[str, Any]]] = {
    413: {
        "model": Problem,
        "description": HTTPStatus(413).phrase,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
}

router = APIRouter(tags=["connections"], dependencies=[ServerAuth], responses=PROBLEM_RESPONSES)
"""The routes of this module (included under ``/v1`` by :func:`hibiki.server.rest.build_v1_router`)."""


def _cid(call_type: str, call_id: str) -> str:
    """The call's cid, which is also its media channel_id."""
    return f"{call_type}:{call_id}"


def _members(hub: Hub, cid: str) -> list[Member]:
    """The channel's connections, oldest first (none when nobody is connected)."""
    channel = hub.registry.get(cid)
    return [] if channel is None else channel.members_oldest_first()


def _member(hub: Hub, cid: str, connection_id: str) -> Member:
    """One connection of the channel, or a 404 ``connection_not_found``."""
    channel = hub.registry.get(cid)
    member = None if channel is None else channel.members.get(connection_id)
    if member is None:
        raise ApiProblem(404, "connection_not_found", f"no connection {connection_id!r} in call {cid}")
    return member


def _check_push(hub: Hub, data: dict[str, Any]) -> None:
    """Refuse a push that clients could not take: NaN/Infinity (422) or too big (413).

    Python's JSON parser (and so the request body) accepts ``NaN`` and
    ``Infinity``, which are not JSON: browsers and libsora fail to parse a
    message holding them. The push travels as one WebSocket (or data channel)
    message; clients limit what they accept, and one that gets more than its
    limit drops the connection. The server's own limit for client messages is
    the safe bound.
    """
    try:
        text = json.dumps({"type": "push", "data": data}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ApiProblem(422, "validation_error", "data: NaN and Infinity are not JSON numbers") from None
    limit = hub.settings.max_message_bytes
    size = len(text.encode())
    if size > limit:
        raise ApiProblem(
            413, "payload_too_large", f"the push message would be {size} bytes; the limit is {limit} (--max-message-bytes)"
        )


def _push(members: list[Member], data: dict[str, Any]) -> SendMessageResponse:
    for member in members:
        member.handle.push(data)
    return SendMessageResponse(connection_ids=[m.connection_id for m in members])


@router.get(
    "/calls/{type}/{id}/connections",
    response_model=ListConnectionsResponse,
    summary="List the call's connections",
    operation_id="list_connections",
)
async def list_connections(call_type: CallTypeParam, call_id: CallIdParam, hub: HubDep) -> ListConnectionsResponse:
    """The connections in the call's channel now, oldest first (in every state: ``connected`` says
    whether media is up). Empty when nobody is connected, stored call or not."""
    cid = _cid(call_type, call_id)
    return ListConnectionsResponse(
        connections=[
            ConnectionResponse(
                connection_id=m.connection_id,
                user_id=m.client_id,
                call_cid=cid,
                role=m.role,
                audio_codec_type=m.audio_codec_type,
                video_codec_type=m.video_codec_type,
                connected=m.connected,
                joined_at=m.created_at,
            )
            for m in _members(hub, cid)
        ]
    )


@router.delete(
    "/calls/{type}/{id}/connections/{connection_id}",
    response_model=DisconnectResponse,
    summary="Disconnect a connection",
    operation_id="disconnect_connection",
)
async def disconnect_connection(
    call_type: CallTypeParam, call_id: CallIdParam, connection_id: ConnectionId, hub: HubDep
) -> DisconnectResponse:
    """Close the connection from the server: its WebSocket closes with 1000 ``DISCONNECTED-API``
    (sora-sdk reports ``CLOSE_SUCCEEDED``) and the others get ``connection.destroyed``.
    Nothing stops it from joining again (end the call for that)."""
    member = _member(hub, _cid(call_type, call_id), connection_id)
    member.handle.server_disconnect(close_codes.DISCONNECTED_API)
    return DisconnectResponse(connection_ids=[member.connection_id])


@router.post(
    "/calls/{type}/{id}/messages",
    response_model=SendMessageResponse,
    summary="Push a message to every connection of the call",
    operation_id="send_call_message",
    responses=_PAYLOAD_TOO_LARGE,
)
async def send_call_message(
    call_type: CallTypeParam, call_id: CallIdParam, body: SendMessageRequest, hub: HubDep
) -> SendMessageResponse:
    """Every connection of the call gets ``{"type": "push", "data": data}`` (sora-sdk's ``on_push``,
    hibiki's ``Push`` event). ``connection_ids`` lists them; empty when nobody is connected."""
    _check_push(hub, body.data)
    return _push(_members(hub, _cid(call_type, call_id)), body.data)


@router.post(
    "/calls/{type}/{id}/connections/{connection_id}/messages",
    response_model=SendMessageResponse,
    summary="Push a message to one connection",
    operation_id="send_connection_message",
    responses=_PAYLOAD_TOO_LARGE,
)
async def send_connection_message(
    call_type: CallTypeParam, call_id: CallIdParam, connection_id: ConnectionId, body: SendMessageRequest, hub: HubDep
) -> SendMessageResponse:
    """The connection gets ``{"type": "push", "data": data}``."""
    member = _member(hub, _cid(call_type, call_id), connection_id)
    _check_push(hub, body.data)
    return _push([member], body.data)


@router.post(
    "/calls/{type}/{id}/connections/{connection_id}/keyframe",
    response_model=RequestKeyframeResponse,
    summary="Ask a sender for a key frame",
    operation_id="request_keyframe",
)
async def request_keyframe(
    call_type: CallTypeParam, call_id: CallIdParam, connection_id: ConnectionId, hub: HubDep
) -> RequestKeyframeResponse:
    """The SFU sends a PLI on each of the connection's video tracks; its encoder answers with a key
    frame. 400 ``bad_request`` when the connection sends no video (recvonly, or video off)."""
    member = _member(hub, _cid(call_type, call_id), connection_id)
    if member.role == "recvonly" or member.video_codec_type is None:
        raise ApiProblem(400, "bad_request", f"connection {connection_id} sends no video")
    try:
        hub.bridge.sfu.request_keyframe(member.connection_id)
    except ValueError as exc:
        # The data plane has already forgotten it: it is on its way out.
        raise ApiProblem(404, "connection_not_found", f"connection {connection_id} is closing ({exc})") from None
    return RequestKeyframeResponse(connection_id=member.connection_id)


@router.get(
    "/calls/{type}/{id}/connections/{connection_id}/stats",
    response_model=ConnectionStatsResponse,
    summary="The connection's latest stats",
    operation_id="get_connection_stats",
)
async def get_connection_stats(
    call_type: CallTypeParam, call_id: CallIdParam, connection_id: ConnectionId, hub: HubDep
) -> ConnectionStatsResponse:
    """The W3C ``RTCStatsReport`` entries the client sent last (``inbound-rtp``, ``outbound-rtp``,
    ``candidate-pair``... as it reported them) and when they arrived. The server asks with every
    ping, so they are at most one ping interval old; ``reports`` is empty and ``collected_at`` null
    until the client first answered (or when it never reports stats)."""
    member = _member(hub, _cid(call_type, call_id), connection_id)
    session = member.handle
    if not isinstance(session, SignalingSession) or session.last_stats is None:
        return ConnectionStatsResponse(connection_id=member.connection_id, collected_at=None, reports=[])
    # record_stats, the only writer of last_stats, already made the entries safe to serialise.
    return ConnectionStatsResponse(
        connection_id=member.connection_id, collected_at=session.last_stats_at, reports=session.last_stats
    )
