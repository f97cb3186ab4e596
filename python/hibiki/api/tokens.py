"""User and server tokens: JWTs (HS256) signed with the API secret.

A **user token** lets a client join calls over signaling: it goes in the
Sora ``connect`` message's ``metadata.access_token``. Its claims:

* ``user_id`` (required): becomes the connection's ``client_id``;
* ``iat``, ``exp`` (``exp`` optional but recommended);
* ``call_cids`` (optional): the calls (``"<type>:<id>"``) it may join; absent = any;
* ``role`` (optional): the only connection role (``sendrecv``, ``sendonly``,
  ``recvonly``) it may join as.

A **server token** (``{"server": true, "iat": ...}``) authenticates calls to
the ``/v1`` REST API (``Authorization: Bearer <token>``); it cannot join calls.

>>> secret = "a-long-random-secret-of-32-bytes-or-more"
>>> token = create_token(secret, "alice", expiration=3600, call_cids=["default:standup"])
>>> decode_token(secret, token)["user_id"]
'alice'
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable
from typing import Any, Final

import jwt

__all__ = ["JWT_ALGORITHM", "JWT_LEEWAY_S", "create_server_token", "create_token", "decode_token"]

JWT_ALGORITHM: Final = "HS256"
JWT_LEEWAY_S: Final = 10.0
"""Clock skew tolerated on ``exp``/``nbf``/``iat``: tokens are often made on another machine."""


class _quiet_key_length(warnings.catch_warnings):
    """Silence PyJWT's short-key warning per call; the server warns once at startup instead."""

    def __enter__(self) -> None:
        super().__enter__()
        category = getattr(getattr(jwt, "warnings", None), "InsecureKeyLengthWarning", None)
        if category is not None:
            warnings.simplefilter("ignore", category)


def _encode(secret: str, payload: dict[str, Any]) -> str:
    if not secret:
        raise ValueError("the API secret must not be empty")
    with _quiet_key_length():
        return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM)


def create_token(
    secret: str,
    user_id: str,
    *,
    expiration: float | None = 3600.0,
    call_cids: Iterable[str] | None = None,
    role: str | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A user token for ``user_id``, valid ``expiration`` seconds (None: no ``exp``).

    ``call_cids`` limits it to those calls, ``role`` to one connection role.
    Extra keyword arguments become claims (for example Sora payouts such as
    ``connection_lifetime=600``).
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("user_id must be a non-empty string")
    if role is not None and role not in ("sendrecv", "sendonly", "recvonly"):
        raise ValueError(f"role must be sendrecv, sendonly or recvonly, got {role!r}")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"user_id": user_id, "iat": issued}
    if expiration is not None:
        if not expiration > 0:
            raise ValueError(f"expiration must be > 0 seconds, got {expiration}")
        payload["exp"] = issued + math.ceil(expiration)
    if call_cids is not None:
        cids = list(call_cids)
        for cid in cids:
            if not isinstance(cid, str) or ":" not in cid:
                raise ValueError(f"call_cids must be '<type>:<id>' strings, got {cid!r}")
        payload["call_cids"] = cids
    if role is not None:
        payload["role"] = role
    payload.update(claims)
    return _encode(secret, payload)


def create_server_token(secret: str, *, expiration: float | None = None, now: float | None = None) -> str:
    """A server token for the REST API (``Authorization: Bearer <token>``)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {"server": True, "iat": issued}
    if expiration is not None:
        payload["exp"] = issued + math.ceil(expiration)
    return _encode(secret, payload)


def decode_token(secret: str, token: str, *, require: Iterable[str] = ()) -> dict[str, Any]:
    """Verify ``token``'s signature and times and return its claims.

    Raises ``jwt.PyJWTError`` subclasses (``ExpiredSignatureError``,
    ``InvalidSignatureError``, ``DecodeError``...) when it is not valid.
    """
    with _quiet_key_length():
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": list(require), "verify_aud": False},
            leeway=JWT_LEEWAY_S,
        )
    return claims
