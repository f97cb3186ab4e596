"""Authentication of ``/v1`` requests: the API key and a server token.

With an API secret configured (``hibiki serve --api-secret``), every request
needs ``Authorization: Bearer <server token>``: a JWT signed with the secret
whose claims include ``"server": true`` (:func:`hibiki.api.tokens.create_server_token`;
user tokens are refused with 403). With an API key configured as well, the
request must also carry it in ``X-Api-Key`` (or the ``api_key`` query
parameter). With no secret the API is open (local development; the server
says so in its log).
"""

from __future__ import annotations

import hmac
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from hibiki.api.tokens import decode_token
from hibiki.server.rest.errors import ApiProblem

__all__ = ["ServerAuth", "require_server"]

_bearer = HTTPBearer(auto_error=False, description="A server token: JWT (HS256) with `server: true`, signed with the API secret.")
_api_key = APIKeyHeader(name="X-Api-Key", auto_error=False, description="The server's API key, when it has one.")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hibiki"'}


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the server token has expired"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the server token's signature is wrong (signed with another secret?)"
    if isinstance(exc, jwt.DecodeError):
        return "the bearer token is not a JWT"
    return f"invalid server token: {exc}"


async def require_server(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> None:
    """FastAPI dependency: refuse the request unless it is authenticated as the server."""
    settings = request.app.state.settings
    secret: str | None = settings.auth_secret
    if secret is None:
        return
    expected_key: str | None = settings.api_key
    if expected_key is not None:
        given = api_key or request.query_params.get("api_key")
        if not given:
            raise ApiProblem(401, "unauthorized", "missing API key: send it in X-Api-Key", _CHALLENGE)
        if not hmac.compare_digest(given.encode(), expected_key.encode()):
            raise ApiProblem(401, "unauthorized", "wrong API key", _CHALLENGE)
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiProblem(401, "unauthorized", "missing Authorization: Bearer <server token>", _CHALLENGE)
    try:
        claims = decode_token(secret, credentials.credentials)
    except jwt.PyJWTError as exc:
        raise ApiProblem(401, "unauthorized", _describe(exc), _CHALLENGE) from None
    if claims.get("server") is not True:
        raise ApiProblem(403, "forbidden", "a user token cannot use the server API; use a server token")


ServerAuth = Depends(require_server)
"""``dependencies=[ServerAuth]`` on a router or route."""
