"""User tokens (``hibiki.api.create_token``) at signaling ``connect``, and the call admission rules.

With ``--api-secret`` a client joins only with a user token signed with the
secret, only the calls its ``call_cids`` name, only as the role its ``role``
claim grants; its ``user_id`` becomes the connection's client_id. Everything
refused closes the WebSocket with 4401 and a reason that says what is wrong.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
from conftest import ServerProcess, connect_and_get_offer, connect_message, expect_close, open_ws, run
from hibiki.api.tokens import create_server_token, create_token, decode_token
from hibiki.server.auth import Authenticator, AuthError
from hibiki.server.validation import ConnectRequest

SECRET = "api-secret-0123456789abcdef0123456789abc"
KEY = "test-api-key"
CID = "default:standup"


def _verify(token: str, channel_id: str = CID, role: str = "sendrecv") -> dict[str, Any]:
    request = ConnectRequest(role=role, channel_id=channel_id, metadata={"access_token": token})  # type: ignore[arg-type]
    return Authenticator.verify_token(request, SECRET)


def test_user_token_claims() -> None:
    token = create_token(SECRET, "alice", expiration=600, call_cids=[CID], role="sendrecv")
    claims = decode_token(SECRET, token)
    assert claims["user_id"] == "alice" and claims["call_cids"] == [CID] and claims["role"] == "sendrecv"
    assert 590 <= claims["exp"] - time.time() <= 610 and abs(claims["iat"] - time.time()) < 5
    assert _verify(token)["user_id"] == "alice"
    # No call_cids: any call; no expiration: no exp claim (accepted, as Stream's are).
    forever = create_token(SECRET, "bob", expiration=None)
    assert "exp" not in decode_token(SECRET, forever)
    assert _verify(forever, channel_id="other:call")["user_id"] == "bob"


@pytest.mark.parametrize(
    ("token", "role", "reason"),
    [
        (create_token(SECRET, "alice", expiration=1, now=time.time() - 100), "sendrecv", "expired"),
        (create_token(SECRET, "alice", call_cids=["default:other"]), "sendrecv", "not valid for this call"),
        (create_token("another-secret-0123456789abcdef0123456", "alice"), "sendrecv", "bad signature"),
        (create_token(SECRET, "alice", role="recvonly"), "sendrecv", "issued for role recvonly, not sendrecv"),
        (create_server_token(SECRET), "sendrecv", "a server token cannot join; use a user token"),
        (jwt.encode({"user_id": ""}, SECRET, algorithm="HS256"), "sendrecv", "user_id must be a non-empty string"),
        (jwt.encode({"user_id": "a", "call_cids": CID}, SECRET, algorithm="HS256"), "sendrecv",
         "call_cids must be a list of strings"),
    ],
    ids=["expired", "wrong-call", "forged", "wrong-role", "server-token", "empty-user", "bad-cids"],
)
def test_user_token_rejections(token: str, role: str, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        _verify(token, role=role)
    assert (info.value.code, info.value.reason) == (4401, f"invalid access token: {reason}")


def test_create_token_argument_errors() -> None:
    with pytest.raises(ValueError, match="user_id"):
        create_token(SECRET, "")
    with pytest.raises(ValueError, match="role"):
        create_token(SECRET, "a", role="admin")
    with pytest.raises(ValueError, match="call_cids"):
        create_token(SECRET, "a", call_cids=["nocolon"])
    with pytest.raises(ValueError, match="expiration"):
        create_token(SECRET, "a", expiration=0)


# -- against a real server ---------------------------------------------------------------------


async def _rejected(server: ServerProcess, token: str | None, channel_id: str = CID, role: str = "sendrecv") -> str:
    ws = await open_ws(server)
    fields: dict[str, Any] = {"metadata": {"access_token": token}} if token is not None else {}
    await ws.send(json.dumps(connect_message(role, channel_id, **fields)))
    code, reason, _ = await expect_close(ws)
    assert code == 4401, (code, reason)
    return reason


def test_signaling_with_user_tokens(server_factory: Any) -> None:
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)

    async def body() -> None:
        # Missing, expired, wrong call, forged, wrong role: refused, each with its reason.
        assert "access token required" in await _rejected(server, None)
        expired = create_token(SECRET, "alice", expiration=1, now=time.time() - 100)
        assert await _rejected(server, expired) == "invalid access token: expired"
        other = create_token(SECRET, "alice", call_cids=["default:other"])
        assert await _rejected(server, other) == "invalid access token: not valid for this call"
        forged = create_token("forged-secret-0123456789abcdef01234567", "alice", call_cids=[CID])
        assert await _rejected(server, forged) == "invalid access token: bad signature"
        viewer = create_token(SECRET, "alice", call_cids=[CID], role="recvonly")
        assert await _rejected(server, viewer) == "invalid access token: issued for role recvonly, not sendrecv"

        # The right token joins, as the user it names (whatever client_id the client sent).
        good = create_token(SECRET, "alice", call_cids=[CID], role="recvonly")
        ws, offer = await connect_and_get_offer(
            server, "recvonly", CID, client_id="mallory", metadata={"access_token": good}
        )
        assert offer["client_id"] == "alice"
        await ws.close()

    run(body())


def test_token_endpoint_tokens_join(server_factory: Any) -> None:
    """A token made by ``POST /v1/tokens`` (for clients without the secret) joins its call only."""
    server = server_factory("--api-secret", SECRET, "--api-key", KEY)
    headers = {"authorization": f"Bearer {create_server_token(SECRET)}", "x-api-key": KEY}
    r = httpx.post(
        server.url + "/v1/tokens",
        json={"user_id": "carol", "call_cids": [CID], "expiration": 120},
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    claims = decode_token(SECRET, token)
    assert claims["user_id"] == "carol" and claims["call_cids"] == [CID]

    async def body() -> None:
        ws, offer = await connect_and_get_offer(server, "sendrecv", CID, metadata={"access_token": token})
        assert offer["client_id"] == "carol"
        await ws.close()
        assert await _rejected(server, token, channel_id="default:elsewhere") == (
            "invalid access token: not valid for this call"
        )

    run(body())


def test_token_cli_makes_user_tokens() -> None:
    import subprocess
    import sys

    from conftest import PYTHON_SRC

    env = {"PYTHONPATH": str(PYTHON_SRC), "HIBIKI_API_SECRET": SECRET}
    cmd = [sys.executable, "-m", "hibiki", "token", "--user-id", "erin", "--call-cid", CID, "--role", "recvonly"]
    out = subprocess.run([*cmd, "--ttl", "60"], capture_output=True, text=True, env=env, timeout=30, check=True)
    claims = decode_token(SECRET, out.stdout.strip())
    assert (claims["user_id"], claims["call_cids"], claims["role"]) == ("erin", [CID], "recvonly")
    assert 50 <= claims["exp"] - time.time() <= 70
    assert _verify(out.stdout.strip(), role="recvonly")["user_id"] == "erin"
    bad = subprocess.run([*cmd[:6], "--call-cid", "nocolon"], capture_output=True, text=True, env=env, timeout=30,
                         check=False)
    assert bad.returncode == 2 and "call_cids" in bad.stderr
