"""Authentication of ``connect``: JWT access tokens and the auth webhook (sora-signaling.md §14.1).

Both are off by default (local use). With ``hibiki serve --api-secret SECRET``
every ``connect`` must carry ``metadata.access_token``: a JWT signed with
HS256 and ``SECRET``, of one of two kinds.

A **user token** (:func:`hibiki.api.tokens.create_token`,
``hibiki.api.Client.create_token``) has

* ``user_id`` (required): becomes the connection's ``client_id``;
* ``exp`` (optional): expiry, seconds since the epoch (10 s of clock skew allowed);
* ``call_cids`` (optional): the calls (``"<type>:<id>"`` = channel_id) it may join;
* ``role`` (optional): when present, must equal the ``connect``'s role.

A **Sora-style token** (:func:`create_access_token`, ``hibiki token``) has

* ``channel_id`` (required): must equal the ``connect``'s channel_id;
* ``exp`` (required);
* ``role`` (optional), as above.

Other claims of either kind are payouts: the same override keys as an auth
webhook answer, see :data:`PAYOUT_KEYS` (``client_id``,
``connection_lifetime``, ...). A server token (``"server": true``) is refused.

With ``--auth-webhook URL`` the server POSTs JSON describing the connection
(see :meth:`Authenticator.webhook_body`; header ``sora-connection-id``) and
expects, within ``--auth-webhook-timeout`` seconds (5), HTTP 200 and either
``{"allowed": true, ...payouts}`` or ``{"allowed": false, "reason": "..."}``.
When both are configured the token is checked first and the webhook sees the
request with the token's payouts applied.

Failures become :class:`AuthError` and close the WebSocket (``close_codes``):
4401 with a reason for a rejected client (bad token, ``allowed: false`` with
the webhook's ``reason``), 4503 ``auth webhook failed: ...`` when the webhook
could not give an answer (timeout, connection error, non-200, malformed body).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import jwt

from hibiki.api.tokens import JWT_ALGORITHM, _quiet_key_length, decode_token
from hibiki.server import close_codes
from hibiki.server.validation import (
    ABSENT,
    AUDIO_CODECS,
    MAX_ID_BYTES,
    SIMULCAST_RIDS,
    VIDEO_CODECS,
    ConnectRequest,
    json_type,
)

if TYPE_CHECKING:
    import httpx

    from hibiki._log import ConnectionLogger
    from hibiki.server.settings import ServerSettings

__all__ = [
    "PAYOUT_KEYS",
    "AuthError",
    "AuthResult",
    "Authenticator",
    "apply_payouts",
    "create_access_token",
]

_logger = logging.getLogger("hibiki.server.auth")

MIN_SECRET_BYTES: Final = 32
"""RFC 7518 §3.2: an HS256 key should have at least 256 bits. Shorter secrets work, with a warning."""

# Claims with a meaning of their own; every other claim is read as a payout.
_RESERVED_CLAIMS: Final = frozenset(
    {"channel_id", "user_id", "call_cids", "server", "role", "exp", "nbf", "iat", "iss", "aud", "sub", "jti"}
)

PAYOUT_KEYS: Final = frozenset(
    {
        "client_id",
        "bundle_id",
        "metadata",
        "signaling_notify",
        "signaling_notify_metadata",
        "audio",
        "video",
        "audio_codec_type",
        "video_codec_type",
        "audio_bit_rate",
        "video_bit_rate",
        "connection_lifetime",
        "simulcast",
        "simulcast_rid",
        "simulcast_encodings",
    }
)
"""Overrides an auth webhook answer (or a token claim) may carry and this server applies.

* ``client_id``, ``bundle_id``: strings, replace what the client sent.
* ``metadata``: any JSON; becomes ``offer.metadata`` and ``authz_metadata`` in
  the connection's notifies.
* ``signaling_notify_metadata``: any JSON; replaces the client's (shown to
  others as ``metadata`` in notifies).
* ``signaling_notify``: boolean; false = this connection gets no notifies.
* ``audio``, ``video``: booleans; ``audio_codec_type`` (``OPUS``),
  ``video_codec_type`` (``VP8``, ``VP9``, ``AV1``, ``H264``, ``H265``),
  ``audio_bit_rate`` (6..510 kbps), ``video_bit_rate`` (kbps).
* ``connection_lifetime``: seconds (> 0); then the server closes the
  connection with 1000 ``LIFETIME-EXPIRED``.
* ``simulcast``: boolean; ``simulcast_rid``: ``r0``/``r1``/``r2``, the layer
  this connection receives; ``simulcast_encodings``: the publisher's
  ``encodings`` (an array of objects, ``rid`` ``r0``, ``r1``, ``r2`` in that
  order), sent in the offer instead of the defaults.
"""

_UNSUPPORTED_PAYOUTS: Final = frozenset(
    {
        "audio_opus_params",
        "data_channel_signaling",
        "ignore_disconnect_websocket",
        "data_channels",
        "event_metadata",
        "signaling_notify_ice_connection_state",
        "simulcast_multicodec",
        "simulcast_codecs",
        "spotlight",
        "spotlight_number",
        "spotlight_encodings",
        "rpc_methods",
        "forwarding_filters",
        "audio_streaming_language_code",
    }
)
"""Sora payouts this server knows but does not apply yet: logged and ignored."""


class AuthError(Exception):
    """Authentication failed: the session closes with ``code`` (4401 or 4503) and ``reason``."""

    def __init__(self, reason: str, code: int = close_codes.AUTH_REJECTED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class AuthResult:
    """What authentication decided about a ``connect``."""

    request: ConnectRequest
    """The request with the payouts applied (client_id, media, notify metadata, ...)."""
    authz_metadata: Any = ABSENT
    """The payout ``metadata``: ``offer.metadata`` and notify ``authz_metadata`` (ABSENT if none)."""
    signaling_notify: bool = True
    """False: send this connection no notifies."""
    connection_lifetime: float | None = None
    """Seconds after which the server closes the connection (``LIFETIME-EXPIRED``)."""


# -- payouts -------------------------------------------------------------------------------


def _payout_error(source: str, message: str) -> AuthError:
    if source == "webhook":
        # The webhook is the operator's code: a bad answer is not the client's fault.
        return AuthError(f"auth webhook failed: {message}", close_codes.AUTH_UNAVAILABLE)
    return AuthError(f"invalid access token: {message}")


def _check_id(source: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _payout_error(source, f"{name} must be a non-empty string, got {json_type(value)}")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise _payout_error(source, f"{name} longer than {MAX_ID_BYTES} bytes")
    return value


def _check_bool(source: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _payout_error(source, f"{name} must be a boolean, got {json_type(value)}")
    return value


def _check_enum(source: str, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _payout_error(source, f"{name} must be one of {', '.join(allowed)}")
    return value


def _check_encodings(source: str, value: Any) -> tuple[dict[str, Any], ...]:
    rids = [e.get("rid") if isinstance(e, dict) else None for e in value] if isinstance(value, list) else None
    if rids != list(SIMULCAST_RIDS):
        # libwebrtc silently ignores encodings whose rids differ from the SDP's.
        raise _payout_error(source, f"simulcast_encodings must be objects with rid {', '.join(SIMULCAST_RIDS)} in order")
    return tuple(dict(e) for e in value)


def _check_int(source: str, name: str, value: Any, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _payout_error(source, f"{name} must be an integer in {lo}..{hi}")
    return value


def apply_payouts(
    result: AuthResult, payouts: Mapping[str, Any], source: str, log: ConnectionLogger | logging.Logger = _logger
) -> AuthResult:
    """Return ``result`` with the overrides in ``payouts`` applied.

    ``source`` is ``"token"`` or ``"webhook"``: it decides the close code of a
    payout with a wrong type (4401 ``invalid access token: ...`` or 4503
    ``auth webhook failed: ...``). Keys outside :data:`PAYOUT_KEYS` are
    ignored (Sora payouts not implemented yet are logged).
    """
    req = result.request
    changes: dict[str, Any] = {}
    authz_metadata = result.authz_metadata
    signaling_notify = result.signaling_notify
    lifetime = result.connection_lifetime
    for key, value in payouts.items():
        if key in ("client_id", "bundle_id"):
            changes[key] = _check_id(source, key, value)
        elif key == "metadata":
            authz_metadata = value
        elif key == "signaling_notify_metadata":
            changes[key] = value
        elif key == "signaling_notify":
            signaling_notify = _check_bool(source, key, value)
        elif key in ("audio", "video"):
            changes[key] = _check_bool(source, key, value)
        elif key == "audio_codec_type":
            changes[key] = _check_enum(source, key, value, AUDIO_CODECS)
        elif key == "video_codec_type":
            changes[key] = _check_enum(source, key, value, VIDEO_CODECS)
        elif key == "audio_bit_rate":
            changes[key] = _check_int(source, key, value, 6, 510)
        elif key == "video_bit_rate":
            changes[key] = _check_int(source, key, value, 1, 1_000_000)
        elif key == "simulcast":
            changes[key] = _check_bool(source, key, value)
        elif key == "simulcast_rid":
            changes[key] = _check_enum(source, key, value, SIMULCAST_RIDS)
        elif key == "simulcast_encodings":
            changes[key] = _check_encodings(source, value)
        elif key == "connection_lifetime":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise _payout_error(source, "connection_lifetime must be a number of seconds > 0")
            lifetime = float(value)
        elif key in _UNSUPPORTED_PAYOUTS:
            log.info("auth %s payout %s is not supported yet; ignored", source, key)
        else:
            log.debug("auth %s: ignoring unknown key %s", source, key)
    if changes:
        req = dataclasses.replace(req, **changes)
    return AuthResult(req, authz_metadata, signaling_notify, lifetime)


# -- tokens --------------------------------------------------------------------------------


def create_access_token(
    secret: str,
    channel_id: str,
    *,
    role: str | None = None,
    ttl: float = 3600.0,
    client_id: str | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """Make an access token for ``connect``'s ``metadata.access_token``.

    A JWT (HS256, signed with ``secret``) with ``channel_id``, ``exp`` (``ttl``
    seconds from now), ``iat``, and ``role``/``client_id`` when given; extra
    keyword arguments become claims (payouts such as
    ``connection_lifetime=600``, see :data:`PAYOUT_KEYS`).

    >>> token = create_access_token("a-secret-of-at-least-32-bytes!!!", "room1", role="sendonly")
    """
    if not channel_id:
        raise ValueError("channel_id must not be empty")
    if ttl <= 0:
        raise ValueError(f"ttl must be > 0, got {ttl}")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"channel_id": channel_id, "iat": issued, "exp": issued + math.ceil(ttl)}
    if role is not None:
        payload["role"] = role
    if client_id is not None:
        payload["client_id"] = client_id
    payload.update(claims)
    with _quiet_key_length():
        return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM)


def _describe_jwt_error(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not valid yet (nbf/iat in the future)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim}"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return f"algorithm must be {JWT_ALGORITHM}"
    if isinstance(exc, jwt.DecodeError):
        return "not a JWT"
    return str(exc) or type(exc).__name__


# -- the authenticator -----------------------------------------------------------------------


class Authenticator:
    """Checks ``connect`` messages against the configured token secret and auth webhook."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._http: httpx.AsyncClient | None = None
        self._node_name = socket.gethostname()
        secret = settings.auth_secret
        if secret is not None and len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
            _logger.warning(
                "the auth secret is shorter than %d bytes; use a long random one (e.g. `openssl rand -hex 32`)",
                MIN_SECRET_BYTES,
            )

    @property
    def enabled(self) -> bool:
        """True when a token secret or a webhook is configured."""
        return self.settings.auth_secret is not None or self.settings.auth_webhook_url is not None

    async def aclose(self) -> None:
        """Close the webhook's HTTP client (at server shutdown)."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def authenticate(
        self,
        request: ConnectRequest,
        *,
        connection_id: str,
        channel_counts: Mapping[str, int],
        log: ConnectionLogger | logging.Logger = _logger,
    ) -> AuthResult:
        """Authenticate ``request``; return the result with payouts applied, or raise :class:`AuthError`."""
        result = AuthResult(request)
        if self.settings.auth_secret is not None:
            claims = self.verify_token(request, self.settings.auth_secret)
            payouts = {k: v for k, v in claims.items() if k not in _RESERVED_CLAIMS}
            if "user_id" in claims:
                # The user is who the token says, whatever client_id the client sent.
                payouts.setdefault("client_id", claims["user_id"])
            result = apply_payouts(result, payouts, "token", log)
            log.debug("access token accepted")
        if self.settings.auth_webhook_url is not None:
            body = self.webhook_body(result.request, connection_id=connection_id, channel_counts=channel_counts)
            payouts = await self._ask_webhook(self.settings.auth_webhook_url, body, connection_id, log)
            result = apply_payouts(result, payouts, "webhook", log)
            log.debug("auth webhook allowed the connection")
        return result

    # -- token ---------------------------------------------------------------------------

    @staticmethod
    def verify_token(request: ConnectRequest, secret: str) -> dict[str, Any]:
        """Check ``metadata.access_token`` of ``request``; return its claims."""
        metadata = request.metadata
        if not isinstance(metadata, dict) or "access_token" not in metadata:
            raise AuthError("access token required: put a JWT in metadata.access_token")
        token = metadata["access_token"]
        if not isinstance(token, str):
            raise AuthError(f"invalid access token: must be a string, got {json_type(token)}")
        try:
            claims = decode_token(secret, token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid access token: {_describe_jwt_error(exc)}") from None
        if claims.get("server") is True:
            raise AuthError("invalid access token: a server token cannot join; use a user token")
        if "channel_id" in claims:
            if "exp" not in claims:
                raise AuthError("invalid access token: missing claim exp")
            if claims["channel_id"] != request.channel_id:
                raise AuthError("invalid access token: issued for another channel_id")
        elif "user_id" in claims:
            user_id = claims["user_id"]
            if not isinstance(user_id, str) or not user_id:
                raise AuthError("invalid access token: user_id must be a non-empty string")
            cids = claims.get("call_cids")
            if cids is not None:
                if not isinstance(cids, list) or not all(isinstance(c, str) for c in cids):
                    raise AuthError("invalid access token: call_cids must be a list of strings")
                if request.channel_id not in cids:
                    raise AuthError("invalid access token: not valid for this call")
        else:
            raise AuthError("invalid access token: missing claim user_id (or channel_id)")
        if "role" in claims and claims["role"] != request.role:
            raise AuthError(f"invalid access token: issued for role {str(claims['role'])[:20]}, not {request.role}")
        return claims

    # -- webhook -------------------------------------------------------------------------

    def webhook_body(
        self, request: ConnectRequest, *, connection_id: str, channel_counts: Mapping[str, int]
    ) -> dict[str, Any]:
        """The JSON the auth webhook receives: the connect request plus server context (§14.1).

        Fields: ``timestamp``, ``id`` (unique per request), ``label``
        (``"hibiki"``), ``node_name``, ``version``, ``channel_id``,
        ``connection_id``, ``client_id`` and ``bundle_id`` (the
        connection_id when the client sent none), ``role``, ``multistream``,
        ``simulcast``, ``spotlight``, ``audio``/``video`` (booleans) with
        ``audio_codec_type``/``video_codec_type`` and bit rates when set,
        ``data_channel_signaling``, ``ignore_disconnect_websocket``,
        ``redirect``, ``e2ee`` (false), the channel's four connection
        counters, and when the client sent them ``metadata``,
        ``signaling_notify_metadata``, ``sora_client``, ``environment``,
        ``libwebrtc``.
        """
        from hibiki.server.messages import server_version, timestamp

        body: dict[str, Any] = {
            "timestamp": timestamp(),
            "id": str(uuid.uuid4()),
            "label": "hibiki",
            "node_name": self._node_name,
            "version": server_version(),
            "channel_id": request.channel_id,
            "connection_id": connection_id,
            "client_id": request.client_id or connection_id,
            "bundle_id": request.bundle_id or connection_id,
            "role": request.role,
            "multistream": True,
            "simulcast": request.simulcast,
            "spotlight": request.spotlight,
            "audio": request.audio,
            "video": request.video,
            "data_channel_signaling": request.data_channel_signaling,
            "ignore_disconnect_websocket": request.ignore_disconnect_websocket,
            "redirect": request.redirect,
            "e2ee": False,
            **channel_counts,
        }
        if request.audio:
            body["audio_codec_type"] = request.audio_codec_type
            if request.audio_bit_rate is not None:
                body["audio_bit_rate"] = request.audio_bit_rate
        if request.video:
            body["video_codec_type"] = request.video_codec_type
            if request.video_bit_rate is not None:
                body["video_bit_rate"] = request.video_bit_rate
        if request.metadata is not ABSENT:
            body["metadata"] = request.metadata
        if request.signaling_notify_metadata is not ABSENT:
            body["signaling_notify_metadata"] = request.signaling_notify_metadata
        for name in ("sora_client", "environment", "libwebrtc"):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        return body

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            from hibiki.server.messages import server_version

            self._http = httpx.AsyncClient(
                timeout=self.settings.auth_webhook_timeout,
                headers={"user-agent": f"hibiki/{server_version()}"},
                # A redirect of a POST would be a surprise; an auth endpoint answers itself.
                follow_redirects=False,
            )
        return self._http

    async def _ask_webhook(
        self, url: str, body: dict[str, Any], connection_id: str, log: ConnectionLogger | logging.Logger
    ) -> dict[str, Any]:
        """POST ``body``; return the payouts of an ``allowed: true`` answer or raise :class:`AuthError`."""
        import httpx

        def failed(why: str) -> AuthError:
            log.warning("auth webhook %s failed: %s", url, why)
            return AuthError(f"auth webhook failed: {why}", close_codes.AUTH_UNAVAILABLE)

        started = time.monotonic()
        try:
            response = await self._client().post(url, json=body, headers={"sora-connection-id": connection_id})
        except httpx.TimeoutException:
            raise failed(f"no answer within {self.settings.auth_webhook_timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        log.debug("auth webhook answered %d in %.0f ms", response.status_code, (time.monotonic() - started) * 1000)
        if response.status_code != 200:
            raise failed(f"HTTP {response.status_code}")
        try:
            answer = json.loads(response.content)
        except (ValueError, RecursionError):
            raise failed("the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise failed(f"the answer must be a JSON object, got {json_type(answer)}")
        allowed = answer.get("allowed")
        if not isinstance(allowed, bool):
            raise failed("the answer has no boolean 'allowed'")
        if not allowed:
            reason = answer.get("reason")
            text = reason if isinstance(reason, str) and reason.strip() else "rejected by the auth webhook"
            log.info("auth webhook rejected the connection: %s", text)
            raise AuthError(text)
        return {k: v for k, v in answer.items() if k not in ("allowed", "reason")}
