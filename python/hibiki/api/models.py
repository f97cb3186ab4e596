"""The types of the ``/v1`` REST API and of webhooks: one source for server, client and OpenAPI.

The server validates requests and serialises responses with these models,
``/openapi.json`` is generated from them, and :class:`hibiki.api.Client`
sends and parses the same classes. Field names follow Stream's video API
where it has an equivalent (``created_by_id``, ``custom``,
``settings_override``, ``filter_conditions``, ``next``/``prev``) so that code
written against it reads the same.

A call is named by its *type* and *id*; its ``cid`` ``"<type>:<id>"`` is also
the Sora ``channel_id`` its media uses, so any Sora client joins a call by
connecting to that channel.

Example::

    CallRequest(created_by_id="alice", custom={"topic": "standup"},
                members=[MemberRequest(user_id="bob", role="host")])
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "CALL_ID_PATTERN",
    "PROBLEM_CODES",
    "WEBHOOK_EVENT_TYPES",
    "CallEndedNotify",
    "CallRequest",
    "CallResponse",
    "CallSettings",
    "CallSettingsRequest",
    "CallStateResponse",
    "ConnectionResponse",
    "ConnectionStatsResponse",
    "CreateTokenRequest",
    "CreateTokenResponse",
    "DeleteCallResponse",
    "DisconnectResponse",
    "EndCallResponse",
    "GetCallResponse",
    "GetOrCreateCallRequest",
    "GetOrCreateCallResponse",
    "ListConnectionsResponse",
    "MemberRequest",
    "MemberResponse",
    "ParticipantResponse",
    "Problem",
    "QueryCallsRequest",
    "QueryCallsResponse",
    "RequestKeyframeResponse",
    "SendMessageRequest",
    "SendMessageResponse",
    "SortParam",
    "TrackResponse",
    "UpdateCallMembersRequest",
    "UpdateCallMembersResponse",
    "UpdateCallRequest",
    "UpdateCallResponse",
    "WebhookEvent",
    "WebhookEventType",
]

CALL_ID_PATTERN = r"^[A-Za-z0-9_\-]{1,64}$"
"""Call types and ids: letters, digits, ``_`` and ``-``, 1 to 64 of them (no ``:``, which joins them)."""

CallType = Annotated[str, StringConstraints(pattern=CALL_ID_PATTERN)]
CallId = Annotated[str, StringConstraints(pattern=CALL_ID_PATTERN)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=255)]
MemberRole = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
"""A member's role in a call (``"user"``, ``"host"``, ``"admin"``...): free-form lower-case names."""
ConnectionRole = Literal["sendrecv", "sendonly", "recvonly"]
Custom = dict[str, Any]


class _Model(BaseModel):
    # Requests: unknown fields are errors (422), not silently dropped; a typo
    # like "setings_override" must not look like it worked. Strict: 0 is not
    # a boolean and false is not a number.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    # Responses, webhooks and notifies: a newer server may add fields, which an
    # older client must not choke on.
    model_config = ConfigDict(extra="ignore")


# -- settings -----------------------------------------------------------------------------


class CallSettings(_Response):
    """What a call allows; the effective settings of a call."""

    audio: bool = True
    """Participants may send audio. When false, connections get no audio."""
    video: bool = True
    """Participants may send video. When false, connections get no video."""
    max_participants: int | None = Field(default=None, ge=1, le=10_000)
    """At most this many connections at once; a join over the limit is refused (4403). None: no limit."""
    max_duration_seconds: int | None = Field(default=None, ge=1)
    """Each connection is closed this long after it joined (``LIFETIME-EXPIRED``). None: no limit."""


class CallSettingsRequest(_Model):
    """A partial :class:`CallSettings`: the fields given replace the call's."""

    audio: bool | None = None
    video: bool | None = None
    max_participants: int | None = Field(default=None, ge=1, le=10_000)
    max_duration_seconds: int | None = Field(default=None, ge=1)


# -- members ------------------------------------------------------------------------------


class MemberRequest(_Model):
    """A user to make a member of a call, with a role and custom data."""

    user_id: UserId
    role: MemberRole = "user"
    custom: Custom = Field(default_factory=dict)


class MemberResponse(_Response):
    """A member of a call."""

    user_id: str
    role: str
    custom: Custom
    created_at: datetime
    updated_at: datetime


# -- calls --------------------------------------------------------------------------------


class CallRequest(_Model):
    """What a new call is created with (``get_or_create``'s ``data``)."""

    created_by_id: UserId | None = None
    custom: Custom = Field(default_factory=dict)
    members: list[MemberRequest] = Field(default_factory=list, max_length=100)
    settings_override: CallSettingsRequest | None = None


class ParticipantResponse(_Response):
    """A connection in a call now (a participant of its live session)."""

    user_id: str
    """The connection's ``client_id``: the token's ``user_id`` when it joined with one."""
    connection_id: str
    role: ConnectionRole
    joined_at: datetime


class CallResponse(_Response):
    """A call."""

    type: str
    id: str
    cid: str
    """``"<type>:<id>"``, also the Sora ``channel_id`` of the call's media."""
    created_by_id: str | None
    custom: Custom
    settings: CallSettings
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    """When the call was ended; an ended call refuses joins (close 4403 ``call ended``)."""
    participants: list[ParticipantResponse]
    """Who is connected now, oldest first."""


class GetOrCreateCallRequest(_Model):
    """Body of ``POST /v1/calls/{type}/{id}``."""

    data: CallRequest | None = None
    members_limit: int = Field(default=25, ge=0, le=100)
    """How many members the response lists."""


class GetOrCreateCallResponse(_Response):
    call: CallResponse
    members: list[MemberResponse]
    created: bool
    """True when this request created the call."""


class GetCallResponse(_Response):
    call: CallResponse
    members: list[MemberResponse]


class UpdateCallRequest(_Model):
    """Body of ``PATCH /v1/calls/{type}/{id}``: the fields given replace the call's."""

    custom: Custom | None = None
    settings_override: CallSettingsRequest | None = None


class UpdateCallResponse(_Response):
    call: CallResponse
    members: list[MemberResponse]


class UpdateCallMembersRequest(_Model):
    """Body of ``POST /v1/calls/{type}/{id}/members``: add or update, then remove."""

    update_members: list[MemberRequest] = Field(default_factory=list, max_length=100)
    remove_members: list[UserId] = Field(default_factory=list, max_length=100)


class UpdateCallMembersResponse(_Response):
    members: list[MemberResponse]


class EndCallResponse(_Response):
    call: CallResponse
    """The call, with ``ended_at`` set."""
    connection_ids: list[str]
    """The connections that were disconnected."""


class DeleteCallResponse(_Response):
    call: CallResponse
    """The call as it was (ended) just before it was deleted."""


class SortParam(_Model):
    field: Literal["created_at", "updated_at", "cid"]
    direction: Literal[1, -1] = -1
    """1 ascending, -1 descending."""


class QueryCallsRequest(_Model):
    """Body of ``POST /v1/calls``: filter, sort and page through calls.

    ``filter_conditions`` maps a field to a value (equality) or to an
    operator object: ``{"$eq": v}``, ``{"$ne": v}``, ``{"$in": [v, ...]}``,
    and for the timestamps ``$gt``/``$gte``/``$lt``/``$lte`` (ISO 8601).
    Fields: ``type``, ``id``, ``cid``, ``created_by_id``, ``created_at``,
    ``updated_at``, ``ended`` (boolean; ``$eq`` only) and ``custom.<key>``
    (a top-level key of the custom data). Conditions are ANDed::

        {"type": "default", "ended": False, "custom.topic": {"$in": ["a", "b"]}}
    """

    filter_conditions: dict[str, Any] = Field(default_factory=dict)
    sort: list[SortParam] = Field(default_factory=list, max_length=2)
    """Default: newest first (``created_at`` descending)."""
    limit: int = Field(default=25, ge=1, le=100)
    next: str | None = None
    """The ``next`` cursor of the previous page."""
    prev: str | None = None
    """The ``prev`` cursor of the previous page."""


class CallStateResponse(_Response):
    call: CallResponse
    members: list[MemberResponse]


class QueryCallsResponse(_Response):
    calls: list[CallStateResponse]
    next: str | None
    """Cursor of the next page; None on the last page."""
    prev: str | None
    """Cursor of the previous page; None on the first page."""


# -- connections ------------------------------------------------------------------------


class ConnectionResponse(_Response):
    """A live connection of a call."""

    connection_id: str
    user_id: str
    """The connection's ``client_id``."""
    call_cid: str
    role: ConnectionRole
    audio_codec_type: str | None
    """The connection's audio codec, None without audio."""
    video_codec_type: str | None
    connected: bool
    """Media (ICE/DTLS) is up."""
    joined_at: datetime


class ListConnectionsResponse(_Response):
    connections: list[ConnectionResponse]


class DisconnectResponse(_Response):
    connection_ids: list[str]


class SendMessageRequest(_Model):
    """A message pushed to connections: they receive Sora ``{"type": "push", "data": data}``."""

    data: dict[str, Any]


class SendMessageResponse(_Response):
    connection_ids: list[str]
    """The connections the message went to."""


class RequestKeyframeResponse(_Response):
    connection_id: str
    """The sender asked (PLI) for a key frame on each of its video tracks."""


class ConnectionStatsResponse(_Response):
    """The latest W3C-style stats a connection reported (the server asks with every ping)."""

    connection_id: str
    collected_at: datetime | None
    """When the client sent them; None if it has not yet."""
    reports: list[dict[str, Any]]
    """``RTCStatsReport`` entries (``type``, ``id``, ``timestamp``, ...), as the client sent them."""


# -- tokens -----------------------------------------------------------------------------


class CreateTokenRequest(_Model):
    """Body of ``POST /v1/tokens``: a user token made by the server (for clients without the secret)."""

    user_id: UserId
    expiration: int | None = Field(default=3600, ge=1, le=366 * 86400)
    """Seconds until the token expires; None: never (avoid)."""
    call_cids: list[Annotated[str, StringConstraints(min_length=3, max_length=129)]] | None = None
    """The calls (``"<type>:<id>"``) the token may join; None: any."""
    role: ConnectionRole | None = None
    """The only connection role the token may join as; None: any."""


class CreateTokenResponse(_Response):
    token: str
    expires_at: datetime | None


# -- errors ---------------------------------------------------------------------------


PROBLEM_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
}
"""The ``code`` of an error that has no more specific one, by HTTP status."""


class Problem(BaseModel):
    """An error (RFC 9457 ``application/problem+json``) with a stable ``code``.

    Codes: ``bad_request``, ``validation_error``, ``unauthorized``,
    ``forbidden``, ``not_found``, ``call_not_found``, ``connection_not_found``,
    ``call_ended``, ``method_not_allowed``, ``payload_too_large``,
    ``unsupported_media_type``, ``internal_error``.
    """

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None
    """For ``validation_error``: each invalid field (``loc``, ``msg``, ``type``)."""


# -- webhooks and notifies --------------------------------------------------------------

WebhookEventType = Literal[
    "call.created",
    "call.updated",
    "call.ended",
    "call.deleted",
    "call.member_added",
    "call.member_removed",
    "call.participant_joined",
    "call.participant_left",
    "call.track_published",
    "call.track_unpublished",
]
WEBHOOK_EVENT_TYPES: tuple[str, ...] = WebhookEventType.__args__  # type: ignore[attr-defined]


class TrackResponse(_Response):
    """A track a participant publishes."""

    kind: Literal["audio", "video"]
    mid: str
    codec: str | None
    connection_id: str
    user_id: str


class WebhookEvent(_Response):
    """What the server POSTs to each webhook URL.

    Headers: ``X-Signature`` (hex HMAC-SHA256 of the raw body, keyed with the
    API secret), ``X-Webhook-Id`` (this event's ``id``, the same on every
    retry), ``X-Webhook-Attempt`` (1, 2, ...) and ``X-Api-Key`` when the
    server has one. Check the signature with :func:`hibiki.api.verify_webhook`.
    """

    id: str
    """Unique per event; use it to ignore a retry you already handled."""
    type: WebhookEventType
    created_at: datetime
    call_cid: str
    call: CallResponse | None = None
    """The call (for call.* lifecycle events, and participant/track events of a stored call)."""
    participant: ParticipantResponse | None = None
    """For participant_joined/left and track events."""
    track: TrackResponse | None = None
    """For track_published/unpublished."""
    members: list[MemberResponse] | None = None
    """For member_added/removed: the members concerned."""


class CallEndedNotify(_Response):
    """The Sora ``notify`` a connection gets when its call is ended, just before it is disconnected.

    ``{"type": "notify", "event_type": "call.ended", "call_cid": ..., "ended_at": ...}``; the
    WebSocket then closes with 1000 ``CALL-ENDED``.
    """

    type: Literal["notify"] = "notify"
    event_type: Literal["call.ended"] = "call.ended"
    call_cid: str
    ended_at: datetime
