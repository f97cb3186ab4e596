"""Python clients of the ``/v1`` REST API: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both have the same surface; the async one's request methods are coroutines::

    from hibiki.api import Client
    from hibiki.api.models import CallRequest, MemberRequest

    with Client(api_key="KEY", api_secret="SECRET", base_url="http://127.0.0.1:5000") as client:
        call = client.video.call("default", "standup")
        response = call.get_or_create(
            data=CallRequest(created_by_id="alice", members=[MemberRequest(user_id="bob")])
        )
        print(response.created, response.call.cid)
        token = client.create_token("bob", call_cids=[call.cid])  # give this to bob's app
        call.end()

    async with AsyncClient(api_secret="SECRET") as client:
        page = await client.video.query_calls(filter_conditions={"ended": False}, limit=10)

Authentication: with ``api_secret``, every request carries
``Authorization: Bearer <server token>`` (a JWT made locally with the secret,
cached and renewed before it expires); with ``api_key``, also
``X-Api-Key``. Without a secret no token is sent, which is what a server run
without ``--api-secret`` (local development) expects.

Errors: every non-2xx answer raises :class:`ApiError` with the problem
document's ``status``, ``code`` and ``detail``. Network failures (refused
connection, timeout, broken connection) raise :class:`ApiError` too, with
``status=0`` and ``code="network_error"`` and the httpx exception as
``__cause__``, so one ``except ApiError`` handles everything the API can do
to a caller. Arguments that are wrong before anything is sent (a call id
with a ``:``, a token without a secret) raise :class:`ValueError`.

Responses are parsed into the models of :mod:`hibiki.api.models`, the same
classes the server validates and serialises with. Request arguments that are
models also accept plain dicts of the same shape.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from hibiki.api import tokens
from hibiki.api.models import (
    CALL_ID_PATTERN,
    PROBLEM_CODES,
    CallRequest,
    CallSettingsRequest,
    CallStateResponse,
    ConnectionStatsResponse,
    CreateTokenRequest,
    CreateTokenResponse,
    DeleteCallResponse,
    DisconnectResponse,
    EndCallResponse,
    GetCallResponse,
    GetOrCreateCallRequest,
    GetOrCreateCallResponse,
    ListConnectionsResponse,
    MemberRequest,
    Problem,
    QueryCallsRequest,
    QueryCallsResponse,
    RequestKeyframeResponse,
    SendMessageRequest,
    SendMessageResponse,
    SortParam,
    UpdateCallMembersRequest,
    UpdateCallMembersResponse,
    UpdateCallRequest,
    UpdateCallResponse,
)

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.api.rtc import RtcCall

__all__ = [
    "DEFAULT_BASE_URL",
    "ApiError",
    "AsyncCall",
    "AsyncClient",
    "AsyncVideo",
    "Call",
    "Client",
    "Video",
]

DEFAULT_BASE_URL: Final = "http://127.0.0.1:5000"
"""Where ``hibiki serve`` listens by default."""

SERVER_TOKEN_TTL_S: Final = 3600
"""Lifetime of the server tokens the clients make for themselves."""
SERVER_TOKEN_RENEW_S: Final = 300
"""Renew the cached server token this long before it expires: the server's
clock may run ahead of ours (it only tolerates 10 s), and a request may sit in
a queue for a while before it is checked."""

_CALL_ID_RE: Final = re.compile(CALL_ID_PATTERN)
_USER_AGENT: Final = "hibiki-python-api"
_PROBLEM_DETAIL_MAX: Final = 500


M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


# -- errors ----------------------------------------------------------------------------


class ApiError(Exception):
    """A ``/v1`` request failed: the server answered an error, or could not be reached.

    Attributes:
        status: the HTTP status (``404``...), or ``0`` when no answer came
            (then ``code`` is ``"network_error"`` and ``__cause__`` is the
            httpx exception).
        code: the stable error code of the problem document
            (``"call_not_found"``, ``"unauthorized"``, ``"validation_error"``...,
            see :class:`~hibiki.api.models.Problem`); for an answer that is
            not a problem document, the usual code of its status
            (``"not_found"``...) or ``"http_error"``; ``"invalid_response"``
            when a 2xx answer does not have the documented shape.
        detail: a human-readable explanation.
        problem: the parsed problem document, None when there was none.
        method, url: the request that failed.

    >>> try:
    ...     client.video.call("default", "nope").get()
    ... except ApiError as exc:
    ...     if exc.code != "call_not_found":
    ...         raise
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        problem: Problem | None = None,
        *,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem
        self.method = method
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields are not in ``args``: without this, unpickling (a
        # worker process, a task queue) would fail or lose them.
        return (_rebuild_api_error, (self.status, self.code, self.detail, self.problem, self.method, self.url))

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        status = f"HTTP {self.status} " if self.status else ""
        return f"{status}{self.code}: {self.detail}{where}"

    def __repr__(self) -> str:
        return f"ApiError(status={self.status!r}, code={self.code!r}, detail={self.detail!r})"


def _rebuild_api_error(
    status: int, code: str, detail: str, problem: Problem | None, method: str | None, url: str | None
) -> ApiError:
    return ApiError(status, code, detail, problem, method=method, url=url)


def _error_from_response(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` of a non-2xx answer, from its problem document when it has one."""
    status = response.status_code
    method, url = response.request.method, str(response.request.url)
    problem: Problem | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        try:
            problem = Problem.model_validate(body)
        except ValidationError:
            problem = None
    if problem is not None:
        return ApiError(status, problem.code, problem.detail, problem, method=method, url=url)
    # Not ours (a reverse proxy, a load balancer): keep what it said, bounded.
    text = response.text.strip()[:_PROBLEM_DETAIL_MAX]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return ApiError(status, PROBLEM_CODES.get(status, "http_error"), text or phrase, method=method, url=url)


def _network_error(method: str, url: str, exc: Exception) -> ApiError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({type(exc).__name__}: {reason})"
    else:
        reason = f"{type(exc).__name__}: {reason}"
    return ApiError(0, "network_error", reason, method=method, url=url)


# -- requests, described once for both clients -----------------------------------------


@dataclass(frozen=True, slots=True)
class _Op(Generic[R]):
    """One API request and the model of its answer; both clients run these."""

    method: Literal["GET", "POST", "PATCH", "DELETE"]
    path: str
    response_model: type[R]
    body: BaseModel | None = None
    params: Mapping[str, str | int] | None = None

    def json(self) -> dict[str, Any] | None:
        # exclude_unset: send what the caller gave, so the server applies its own
        # defaults and a partial update stays partial (an explicit None is kept).
        return None if self.body is None else self.body.model_dump(mode="json", exclude_unset=True)

    def parse(self, response: httpx.Response) -> R:
        if not response.is_success:
            raise _error_from_response(response)
        try:
            return _validate_leniently(self.response_model, response.json())
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            raise ApiError(
                response.status_code,
                "invalid_response",
                f"the answer is not a {self.response_model.__name__}: {exc}"[:_PROBLEM_DETAIL_MAX],
                method=self.method,
                url=str(response.request.url),
            ) from exc


def _validate_leniently(model: type[R], data: Any) -> R:
    """``model.model_validate(data)``, ignoring fields the models do not know.

    The models forbid unknown fields (right for requests: a typo must not pass
    silently), but a newer server may answer with fields this SDK predates;
    those are dropped so that an older client keeps working. Any other
    mismatch still raises.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        extras = [err["loc"] for err in exc.errors() if err["type"] == "extra_forbidden"]
        if not extras or len(extras) != len(exc.errors()):
            raise
    for loc in extras:
        _drop(data, loc)
    return model.model_validate(data)


def _drop(data: Any, loc: tuple[int | str, ...]) -> None:
    """Delete the item at path ``loc`` of nested dicts and lists, if it is there."""
    for part in loc[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(data, dict):
        data.pop(loc[-1], None)


def _as_model(model: type[M], value: M | Mapping[str, Any]) -> M:
    """``value`` if it is already a ``model``, else ``model.model_validate(value)``."""
    if isinstance(value, model):
        return value
    if isinstance(value, Mapping):
        return model.model_validate(dict(value))
    raise TypeError(f"expected a {model.__name__} or a dict, got {type(value).__name__}")


def _check_call_part(what: str, value: str) -> str:
    if not isinstance(value, str) or not _CALL_ID_RE.fullmatch(value):
        raise ValueError(f"a call {what} is 1 to 64 letters, digits, '_' or '-', got {value!r}")
    return value


def _segment(value: str, what: str) -> str:
    # Connection ids come from the server, but a path segment is quoted anyway
    # so that no value can reach another route ("../", "?", "/").
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return quote(value, safe="")


class _CallOps:
    """The requests about one call (``/v1/calls/{type}/{id}...``)."""

    def __init__(self, type: str, id: str) -> None:
        self.type = _check_call_part("type", type)
        self.id = _check_call_part("id", id)
        self.path = f"/v1/calls/{type}/{id}"

    def get_or_create(self, data: CallRequest | Mapping[str, Any] | None, members_limit: int) -> _Op[GetOrCreateCallResponse]:
        body = GetOrCreateCallRequest(
            data=None if data is None else _as_model(CallRequest, data), members_limit=members_limit
        )
        return _Op("POST", self.path, GetOrCreateCallResponse, body)

    def get(self, members_limit: int) -> _Op[GetCallResponse]:
        return _Op("GET", self.path, GetCallResponse, params={"members_limit": members_limit})

    def update(
        self, custom: Mapping[str, Any] | None, settings_override: CallSettingsRequest | Mapping[str, Any] | None
    ) -> _Op[UpdateCallResponse]:
        fields: dict[str, Any] = {}
        if custom is not None:
            fields["custom"] = dict(custom)
        if settings_override is not None:
            fields["settings_override"] = _as_model(CallSettingsRequest, settings_override)
        return _Op("PATCH", self.path, UpdateCallResponse, UpdateCallRequest(**fields))

    def update_call_members(
        self, update_members: Iterable[MemberRequest | Mapping[str, Any]], remove_members: Iterable[str]
    ) -> _Op[UpdateCallMembersResponse]:
        if isinstance(remove_members, str):
            # A lone user id would otherwise be read as a list of one-letter ids.
            raise TypeError("remove_members is a list of user ids, not a string")
        body = UpdateCallMembersRequest(
            update_members=[_as_model(MemberRequest, m) for m in update_members],
            remove_members=list(remove_members),
        )
        return _Op("POST", f"{self.path}/members", UpdateCallMembersResponse, body)

    def end(self) -> _Op[EndCallResponse]:
        return _Op("POST", f"{self.path}/end", EndCallResponse)

    def delete(self) -> _Op[DeleteCallResponse]:
        return _Op("DELETE", self.path, DeleteCallResponse)

    def list_connections(self) -> _Op[ListConnectionsResponse]:
        return _Op("GET", f"{self.path}/connections", ListConnectionsResponse)

    def disconnect(self, connection_id: str) -> _Op[DisconnectResponse]:
        return _Op("DELETE", f"{self.path}/connections/{_segment(connection_id, 'connection_id')}", DisconnectResponse)

    def send_message(self, data: Mapping[str, Any], connection_id: str | None) -> _Op[SendMessageResponse]:
        body = SendMessageRequest(data=dict(data))
        if connection_id is None:
            return _Op("POST", f"{self.path}/messages", SendMessageResponse, body)
        path = f"{self.path}/connections/{_segment(connection_id, 'connection_id')}/messages"
        return _Op("POST", path, SendMessageResponse, body)

    def request_keyframe(self, connection_id: str) -> _Op[RequestKeyframeResponse]:
        path = f"{self.path}/connections/{_segment(connection_id, 'connection_id')}/keyframe"
        return _Op("POST", path, RequestKeyframeResponse)

    def connection_stats(self, connection_id: str) -> _Op[ConnectionStatsResponse]:
        path = f"{self.path}/connections/{_segment(connection_id, 'connection_id')}/stats"
        return _Op("GET", path, ConnectionStatsResponse)


def _query_calls_op(
    filter_conditions: Mapping[str, Any] | None,
    sort: Sequence[SortParam | Mapping[str, Any]] | None,
    limit: int,
    next: str | None,
    prev: str | None,
) -> _Op[QueryCallsResponse]:
    fields: dict[str, Any] = {"limit": limit}
    if filter_conditions is not None:
        fields["filter_conditions"] = dict(filter_conditions)
    if sort is not None:
        fields["sort"] = [_as_model(SortParam, s) for s in sort]
    if next is not None:
        fields["next"] = next
    if prev is not None:
        fields["prev"] = prev
    return _Op("POST", "/v1/calls", QueryCallsResponse, QueryCallsRequest(**fields))


def _token_op(
    user_id: str, expiration: int | None, call_cids: Sequence[str] | None, role: str | None
) -> _Op[CreateTokenResponse]:
    body = CreateTokenRequest.model_validate(
        {"user_id": user_id, "expiration": expiration, "call_cids": None if call_cids is None else list(call_cids), "role": role}
    )
    return _Op("POST", "/v1/tokens", CreateTokenResponse, body)


# -- what both clients share: configuration and authentication -------------------------


class _ClientBase:
    """Configuration, tokens and auth headers, shared by :class:`Client` and :class:`AsyncClient`."""

    def __init__(self, api_key: str | None, api_secret: str | None, base_url: str, timeout: float) -> None:
        if api_secret is not None and not api_secret:
            raise ValueError("api_secret must not be empty (pass None for a server without a secret)")
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL of the server, got {base_url!r}")
        self._api_key = api_key or None
        self._api_secret = api_secret
        self._base_url = str(base_url).rstrip("/")
        self._timeout = float(timeout)
        self._token_lock = threading.Lock()  # the sync client may be shared by threads
        self._server_token: str | None = None
        self._server_token_renew_at = 0.0

    @property
    def base_url(self) -> str:
        """The server's base URL (``http://host:port``), without a trailing ``/``."""
        return self._base_url

    @property
    def api_key(self) -> str | None:
        """The API key sent in ``X-Api-Key``, if any."""
        return self._api_key

    @property
    def api_secret(self) -> str | None:
        """The API secret tokens are signed with, if the client has it."""
        return self._api_secret

    @property
    def has_api_secret(self) -> bool:
        """True when the client can make tokens (it was given the API secret)."""
        return self._api_secret is not None

    @property
    def timeout(self) -> float:
        """Seconds each request may take (connect, send, receive) before it fails with ``network_error``."""
        return self._timeout

    def _require_secret(self, what: str) -> str:
        if self._api_secret is None:
            raise ValueError(f"{what} needs the API secret: create the client with api_secret=...")
        return self._api_secret

    def create_token(
        self,
        user_id: str,
        expiration: float | None = 3600,
        call_cids: Iterable[str] | None = None,
        role: str | None = None,
        **claims: Any,
    ) -> str:
        """A user token for ``user_id`` (made locally; needs the API secret).

        The user's client joins with it in the Sora ``connect`` message's
        ``metadata.access_token``: it becomes the connection's ``client_id``.
        ``expiration`` is in seconds (None: never, avoid); ``call_cids``
        (``"<type>:<id>"``, e.g. ``call.cid``) limits the calls it may join;
        ``role`` (``"sendrecv"``, ``"sendonly"``, ``"recvonly"``) the role it
        may join as. Extra keyword arguments become claims.
        """
        return tokens.create_token(
            self._require_secret("create_token"),
            user_id,
            expiration=expiration,
            call_cids=call_cids,
            role=role,
            **claims,
        )

    def create_server_token(self, expiration: float | None = SERVER_TOKEN_TTL_S) -> str:
        """A new server token (``Authorization: Bearer ...`` of the ``/v1`` API), e.g. for curl.

        The client makes and renews its own; this is for other programs.
        """
        return tokens.create_server_token(self._require_secret("create_server_token"), expiration=expiration)

    def _auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._api_key is not None:
            headers["X-Api-Key"] = self._api_key
        if self._api_secret is not None:
            headers["Authorization"] = f"Bearer {self._cached_server_token()}"
        return headers

    def _cached_server_token(self) -> str:
        # Signing is cheap but not free; one token serves every request until
        # it nears its expiry.
        now = time.time()
        with self._token_lock:
            if self._server_token is None or now >= self._server_token_renew_at:
                assert self._api_secret is not None
                self._server_token = tokens.create_server_token(self._api_secret, expiration=SERVER_TOKEN_TTL_S, now=now)
                self._server_token_renew_at = int(now) + SERVER_TOKEN_TTL_S - SERVER_TOKEN_RENEW_S
            return self._server_token

    def _default_headers(self) -> dict[str, str]:
        from hibiki import __version__

        return {"User-Agent": f"{_USER_AGENT}/{__version__}", "Accept": "application/json, application/problem+json"}

    @classmethod
    def from_env(cls, base_url: str | None = None, timeout: float = 10.0) -> Self:
        """A client configured from ``HIBIKI_API_KEY``, ``HIBIKI_API_SECRET`` and ``HIBIKI_BASE_URL``."""
        return cls(
            api_key=os.environ.get("HIBIKI_API_KEY") or None,
            api_secret=os.environ.get("HIBIKI_API_SECRET") or os.environ.get("HIBIKI_AUTH_SECRET") or None,
            base_url=base_url or os.environ.get("HIBIKI_BASE_URL") or DEFAULT_BASE_URL,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        # Never the secret: reprs end up in logs.
        secret = "set" if self._api_secret is not None else None
        return f"{type(self).__name__}(base_url={self._base_url!r}, api_key={self._api_key!r}, api_secret={secret!r})"


# -- the blocking client ----------------------------------------------------------------


class _CallIdentity:
    """What names a call, shared by :class:`Call` and :class:`AsyncCall`."""

    def __init__(self, type: str, id: str) -> None:
        self._ops = _CallOps(type, id)

    @property
    def type(self) -> str:
        """The call type (``"default"``...)."""
        return self._ops.type

    @property
    def id(self) -> str:
        """The call id."""
        return self._ops.id

    @property
    def cid(self) -> str:
        """``"<type>:<id>"``: also the Sora ``channel_id`` its media uses."""
        return f"{self._ops.type}:{self._ops.id}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cid!r})"


class Call(_CallIdentity):
    """One call of a :class:`Client`: ``client.video.call(type, id)``. Makes no request by itself."""

    def __init__(self, client: Client, type: str, id: str) -> None:
        super().__init__(type, id)
        self._client = client

    def get_or_create(
        self, data: CallRequest | Mapping[str, Any] | None = None, members_limit: int = 25
    ) -> GetOrCreateCallResponse:
        """Create the call with ``data``, or get it if it exists (then ``data`` is ignored); ``created`` tells which."""
        return self._client._send(self._ops.get_or_create(data, members_limit))

    def get(self, members_limit: int = 25) -> GetCallResponse:
        """The call, its live participants and up to ``members_limit`` members. ``call_not_found`` if none."""
        return self._client._send(self._ops.get(members_limit))

    def update(
        self,
        custom: Mapping[str, Any] | None = None,
        settings_override: CallSettingsRequest | Mapping[str, Any] | None = None,
    ) -> UpdateCallResponse:
        """Replace the call's ``custom`` data and/or some of its settings (None: leave as is)."""
        return self._client._send(self._ops.update(custom, settings_override))

    def update_call_members(
        self,
        update_members: Iterable[MemberRequest | Mapping[str, Any]] = (),
        remove_members: Iterable[str] = (),
    ) -> UpdateCallMembersResponse:
        """Add or update members (user id, role, custom), then remove the user ids in ``remove_members``."""
        return self._client._send(self._ops.update_call_members(update_members, remove_members))

    def end(self) -> EndCallResponse:
        """End the call: every connection gets a ``call.ended`` notify and is closed; later joins are refused."""
        return self._client._send(self._ops.end())

    def delete(self) -> DeleteCallResponse:
        """End the call if it is live, then delete it and its members."""
        return self._client._send(self._ops.delete())

    def list_connections(self) -> ListConnectionsResponse:
        """The call's live connections, oldest first."""
        return self._client._send(self._ops.list_connections())

    def disconnect(self, connection_id: str) -> DisconnectResponse:
        """Close one connection (``DISCONNECTED-API``); ``connection_not_found`` if it is not in the call."""
        return self._client._send(self._ops.disconnect(connection_id))

    def send_message(self, data: Mapping[str, Any], connection_id: str | None = None) -> SendMessageResponse:
        """Push ``data`` to every connection of the call, or to one (Sora ``{"type": "push", "data": ...}``)."""
        return self._client._send(self._ops.send_message(data, connection_id))

    def request_keyframe(self, connection_id: str) -> RequestKeyframeResponse:
        """Ask a sending connection for a key frame on each of its video tracks."""
        return self._client._send(self._ops.request_keyframe(connection_id))

    def connection_stats(self, connection_id: str) -> ConnectionStatsResponse:
        """The latest stats report the connection sent (the server asks with every ping)."""
        return self._client._send(self._ops.connection_stats(connection_id))


class Video:
    """``client.video``: calls and their queries."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def call(self, type: str, id: str) -> Call:
        """The call ``type:id`` (no request is made; raises ValueError for an invalid type or id)."""
        return Call(self._client, type, id)

    def query_calls(
        self,
        filter_conditions: Mapping[str, Any] | None = None,
        sort: Sequence[SortParam | Mapping[str, Any]] | None = None,
        limit: int = 25,
        next: str | None = None,
        prev: str | None = None,
    ) -> QueryCallsResponse:
        """One page of calls matching ``filter_conditions`` (see :class:`~hibiki.api.models.QueryCallsRequest`).

        Pass the answer's ``next`` (or ``prev``) to get the following (or previous) page.
        """
        return self._client._send(_query_calls_op(filter_conditions, sort, limit, next, prev))

    def iter_calls(
        self,
        filter_conditions: Mapping[str, Any] | None = None,
        sort: Sequence[SortParam | Mapping[str, Any]] | None = None,
        page_size: int = 25,
    ) -> Iterator[CallStateResponse]:
        """Every matching call, fetching pages of ``page_size`` as needed."""
        cursor: str | None = None
        while True:
            page = self.query_calls(filter_conditions, sort, limit=page_size, next=cursor)
            yield from page.calls
            if page.next is None or not page.calls:
                return
            cursor = page.next

    def rtc_call(self, type: str, id: str) -> RtcCall:
        """The call ``type:id`` for joining it with media: ``rtc_call(...).join(user_id)`` (see :mod:`hibiki.api.rtc`)."""
        # Imported here: the media stack is heavy, and only joins need it.
        from hibiki.api.rtc import RtcCall

        return RtcCall(self._client, type, id)


class Client(_ClientBase):
    """A blocking client of the ``/v1`` API (thread-safe; one per application is enough).

    Args:
        api_key: sent in ``X-Api-Key`` (the server's ``--api-key``).
        api_secret: the server's ``--api-secret``: signs the client's server
            token and :meth:`create_token`'s user tokens. None for a server
            without a secret.
        base_url: the server (``http://host:port``).
        timeout: seconds each request may take.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        api_secret: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(api_key, api_secret, base_url, timeout)
        self._http = httpx.Client(base_url=self._base_url, timeout=self._timeout, headers=self._default_headers())
        self.video = Video(self)
        """Calls: ``client.video.call(type, id)``, ``client.video.query_calls(...)``."""

    def request_token(
        self,
        user_id: str,
        expiration: int | None = 3600,
        call_cids: Sequence[str] | None = None,
        role: str | None = None,
    ) -> CreateTokenResponse:
        """Have the server make a user token (``POST /v1/tokens``); :meth:`create_token` does it locally."""
        return self._send(_token_op(user_id, expiration, call_cids, role))

    def _send(self, op: _Op[R]) -> R:
        try:
            response = self._http.request(op.method, op.path, json=op.json(), params=op.params, headers=self._auth_headers())
        except httpx.HTTPError as exc:
            raise _network_error(op.method, self._base_url + op.path, exc) from exc
        return op.parse(response)

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- the asyncio client -----------------------------------------------------------------


class AsyncCall(_CallIdentity):
    """One call of an :class:`AsyncClient`: :class:`Call` with coroutine methods."""

    def __init__(self, client: AsyncClient, type: str, id: str) -> None:
        super().__init__(type, id)
        self._client = client

    async def get_or_create(
        self, data: CallRequest | Mapping[str, Any] | None = None, members_limit: int = 25
    ) -> GetOrCreateCallResponse:
        """Create the call with ``data``, or get it if it exists (then ``data`` is ignored); ``created`` tells which."""
        return await self._client._send(self._ops.get_or_create(data, members_limit))

    async def get(self, members_limit: int = 25) -> GetCallResponse:
        """The call, its live participants and up to ``members_limit`` members. ``call_not_found`` if none."""
        return await self._client._send(self._ops.get(members_limit))

    async def update(
        self,
        custom: Mapping[str, Any] | None = None,
        settings_override: CallSettingsRequest | Mapping[str, Any] | None = None,
    ) -> UpdateCallResponse:
        """Replace the call's ``custom`` data and/or some of its settings (None: leave as is)."""
        return await self._client._send(self._ops.update(custom, settings_override))

    async def update_call_members(
        self,
        update_members: Iterable[MemberRequest | Mapping[str, Any]] = (),
        remove_members: Iterable[str] = (),
    ) -> UpdateCallMembersResponse:
        """Add or update members (user id, role, custom), then remove the user ids in ``remove_members``."""
        return await self._client._send(self._ops.update_call_members(update_members, remove_members))

    async def end(self) -> EndCallResponse:
        """End the call: every connection gets a ``call.ended`` notify and is closed; later joins are refused."""
        return await self._client._send(self._ops.end())

    async def delete(self) -> DeleteCallResponse:
        """End the call if it is live, then delete it and its members."""
        return await self._client._send(self._ops.delete())

    async def list_connections(self) -> ListConnectionsResponse:
        """The call's live connections, oldest first."""
        return await self._client._send(self._ops.list_connections())

    async def disconnect(self, connection_id: str) -> DisconnectResponse:
        """Close one connection (``DISCONNECTED-API``); ``connection_not_found`` if it is not in the call."""
        return await self._client._send(self._ops.disconnect(connection_id))

    async def send_message(self, data: Mapping[str, Any], connection_id: str | None = None) -> SendMessageResponse:
        """Push ``data`` to every connection of the call, or to one (Sora ``{"type": "push", "data": ...}``)."""
        return await self._client._send(self._ops.send_message(data, connection_id))

    async def request_keyframe(self, connection_id: str) -> RequestKeyframeResponse:
        """Ask a sending connection for a key frame on each of its video tracks."""
        return await self._client._send(self._ops.request_keyframe(connection_id))

    async def connection_stats(self, connection_id: str) -> ConnectionStatsResponse:
        """The latest stats report the connection sent (the server asks with every ping)."""
        return await self._client._send(self._ops.connection_stats(connection_id))


class AsyncVideo:
    """``async_client.video``: calls and their queries."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def call(self, type: str, id: str) -> AsyncCall:
        """The call ``type:id`` (no request is made; raises ValueError for an invalid type or id)."""
        return AsyncCall(self._client, type, id)

    async def query_calls(
        self,
        filter_conditions: Mapping[str, Any] | None = None,
        sort: Sequence[SortParam | Mapping[str, Any]] | None = None,
        limit: int = 25,
        next: str | None = None,
        prev: str | None = None,
    ) -> QueryCallsResponse:
        """One page of calls matching ``filter_conditions`` (see :class:`~hibiki.api.models.QueryCallsRequest`).

        Pass the answer's ``next`` (or ``prev``) to get the following (or previous) page.
        """
        return await self._client._send(_query_calls_op(filter_conditions, sort, limit, next, prev))

    async def iter_calls(
        self,
        filter_conditions: Mapping[str, Any] | None = None,
        sort: Sequence[SortParam | Mapping[str, Any]] | None = None,
        page_size: int = 25,
    ) -> AsyncIterator[CallStateResponse]:
        """Every matching call, fetching pages of ``page_size`` as needed (``async for``)."""
        cursor: str | None = None
        while True:
            page = await self.query_calls(filter_conditions, sort, limit=page_size, next=cursor)
            for call in page.calls:
                yield call
            if page.next is None or not page.calls:
                return
            cursor = page.next

    def rtc_call(self, type: str, id: str) -> RtcCall:
        """The call ``type:id`` for joining it with media: ``rtc_call(...).join(user_id)`` (see :mod:`hibiki.api.rtc`)."""
        # Imported here: the media stack is heavy, and only joins need it.
        from hibiki.api.rtc import RtcCall

        return RtcCall(self._client, type, id)


class AsyncClient(_ClientBase):
    """An asyncio client of the ``/v1`` API: :class:`Client`'s surface, with coroutine request methods.

    Use it with ``async with``, or ``await client.aclose()``. Token methods
    (:meth:`create_token`, :meth:`create_server_token`) are local and not coroutines.
    """

    def __init__(
        self,
        api_key: str | None = None,
        api_secret: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(api_key, api_secret, base_url, timeout)
        self._http = httpx.AsyncClient(base_url=self._base_url, timeout=self._timeout, headers=self._default_headers())
        self.video = AsyncVideo(self)
        """Calls: ``client.video.call(type, id)``, ``await client.video.query_calls(...)``."""

    async def request_token(
        self,
        user_id: str,
        expiration: int | None = 3600,
        call_cids: Sequence[str] | None = None,
        role: str | None = None,
    ) -> CreateTokenResponse:
        """Have the server make a user token (``POST /v1/tokens``); :meth:`create_token` does it locally."""
        return await self._send(_token_op(user_id, expiration, call_cids, role))

    async def _send(self, op: _Op[R]) -> R:
        try:
            response = await self._http.request(
                op.method, op.path, json=op.json(), params=op.params, headers=self._auth_headers()
            )
        except httpx.HTTPError as exc:
            raise _network_error(op.method, self._base_url + op.path, exc) from exc
        return op.parse(response)

    async def aclose(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
