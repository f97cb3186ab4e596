"""``/v1/tokens``: user tokens made by the server, for clients that do not hold the API secret."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from hibiki.api.models import CALL_ID_PATTERN, CreateTokenRequest, CreateTokenResponse
from hibiki.api.tokens import create_token
from hibiki.server.hub import Hub
from hibiki.server.rest.deps import get_hub
from hibiki.server.rest.errors import PROBLEM_RESPONSES, ApiProblem
from hibiki.server.rest.security import ServerAuth

__all__ = ["router"]

router = APIRouter(tags=["tokens"], dependencies=[ServerAuth], responses=PROBLEM_RESPONSES)
"""The token routes, relative to ``/v1``."""

_PART = CALL_ID_PATTERN.removeprefix("^").removesuffix("$")
_CID = re.compile(rf"^{_PART}:{_PART}$")


@router.post("/tokens", response_model=CreateTokenResponse, operation_id="create_token", summary="Create a user token")
async def create_user_token(body: CreateTokenRequest, hub: Annotated[Hub, Depends(get_hub)]) -> CreateTokenResponse:
    """A user token (JWT HS256 signed with the API secret) for `user_id`.

    The client puts it in its `connect` message's `metadata.access_token`.
    `call_cids` limits the calls it may join, `role` the connection role.
    A server without an API secret cannot sign tokens (400).
    """
    secret = hub.settings.auth_secret
    if not secret:
        raise ApiProblem(
            400,
            "bad_request",
            "the server has no API secret (start it with --api-secret) so it cannot sign tokens; "
            "without one it admits every client",
        )
    for i, cid in enumerate(body.call_cids or ()):
        if not _CID.match(cid):
            raise ApiProblem(400, "bad_request", f"call_cids[{i}]: {cid[:70]!r} is not '<type>:<id>'")
    try:
        body.user_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiProblem(400, "bad_request", "user_id: not valid Unicode text (lone surrogate)") from None
    # One clock reading for both the token's iat/exp and expires_at, so they agree.
    now = int(time.time())
    token = create_token(
        secret, body.user_id, expiration=body.expiration, call_cids=body.call_cids, role=body.role, now=now
    )
    expires_at = None if body.expiration is None else datetime.fromtimestamp(now + body.expiration, UTC)
    return CreateTokenResponse(token=token, expires_at=expires_at)
