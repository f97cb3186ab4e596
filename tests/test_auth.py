"""Authentication: JWT access tokens (``--auth-secret``) and the auth webhook (``--auth-webhook``).

Rejections close the WebSocket with 4401 (the client's fault) or 4503 (the
webhook could not answer), with a reason; the official sora-sdk client shows
that reason in ``on_disconnect``. Payouts (client_id, metadata, lifetime, ...)
from a token or the webhook shape the offer and the notifies.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from conftest import (
    PYTHON_SRC,
    Peer,
    ServerProcess,
    connect_and_get_offer,
    connect_message,
    expect_close,
    is_notify,
    new_channel_id,
    open_ws,
    run,
    wait_until,
    with_engine,
)
from hibiki.server.auth import (
    Authenticator,
    AuthError,
    AuthResult,
    apply_payouts,
    create_access_token,
)
from hibiki.server.settings import ServerSettings
from hibiki.server.validation import ConnectRequest
from sora_clients.harness import SoraPeer

SECRET = "test-secret-0123456789abcdef0123456789"  # >= 32 bytes: no short-key warning
AUTH_REJECTED = 4401
AUTH_UNAVAILABLE = 4503


# -- tokens without a server ---------------------------------------------------------------------


def _request(**fields: Any) -> ConnectRequest:
    base: dict[str, Any] = {"role": "sendonly", "channel_id": "room"}
    base.update(fields)
    return ConnectRequest(**base)


def _verify(token: Any, **fields: Any) -> dict[str, Any]:
    return Authenticator.verify_token(_request(metadata={"access_token": token}, **fields), SECRET)


def test_token_round_trip() -> None:
    token = create_access_token(SECRET, "room", role="sendonly", client_id="alice", connection_lifetime=60)
    claims = _verify(token)
    assert claims["channel_id"] == "room" and claims["role"] == "sendonly" and claims["client_id"] == "alice"
    assert 3590 <= claims["exp"] - time.time() <= 3610
    assert claims["connection_lifetime"] == 60


@pytest.mark.parametrize(
    ("token_kwargs", "request_fields", "reason"),
    [
        ({"ttl": 1, "now": time.time() - 100}, {}, "invalid access token: expired"),
        ({"secret": "another-secret-0123456789abcdef012345"}, {}, "invalid access token: bad signature"),
        ({"channel_id": "other"}, {}, "invalid access token: issued for another channel_id"),
        ({"role": "recvonly"}, {}, "invalid access token: issued for role recvonly, not sendonly"),
    ],
)
def test_token_rejections(token_kwargs: dict[str, Any], request_fields: dict[str, Any], reason: str) -> None:
    kwargs: dict[str, Any] = {"secret": SECRET, "channel_id": "room", **token_kwargs}
    token = create_access_token(kwargs.pop("secret"), kwargs.pop("channel_id"), **kwargs)
    with pytest.raises(AuthError) as info:
        _verify(token, **request_fields)
    assert (info.value.code, info.value.reason) == (AUTH_REJECTED, reason)


def test_token_shape_rejections() -> None:
    no_exp = jwt.encode({"channel_id": "room"}, SECRET, algorithm="HS256")
    no_channel = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    none_alg = jwt.encode({"channel_id": "room", "exp": int(time.time()) + 60}, None, algorithm="none")
    cases = [
        (no_exp, "invalid access token: missing claim exp"),
        (no_channel, "invalid access token: missing claim user_id (or channel_id)"),
        (none_alg, "invalid access token: algorithm must be HS256"),
        ("not.a.jwt", "invalid access token: not a JWT"),
        (42, "invalid access token: must be a string, got number"),
    ]
    for token, reason in cases:
        with pytest.raises(AuthError) as info:
            _verify(token)
        assert info.value.reason == reason, token
    for metadata in (None, {}, {"token": "x"}, "access_token"):
        with pytest.raises(AuthError, match="access token required"):
            Authenticator.verify_token(_request(metadata=metadata), SECRET)


def test_payouts() -> None:
    result = apply_payouts(
        AuthResult(_request(client_id="asked", video_codec_type="VP8")),
        {
            "client_id": "given",
            "metadata": {"plan": "pro"},
            "signaling_notify_metadata": {"name": "N"},
            "signaling_notify": False,
            "video": False,
            "audio_bit_rate": 32,
            "connection_lifetime": 30,
            "simulcast": True,
            "simulcast_rid": "r1",
            "spotlight": True,  # known, not supported yet: ignored
            "whatever": 1,  # unknown: ignored
        },
        "webhook",
    )
    req = result.request
    assert (req.client_id, req.video, req.audio_bit_rate) == ("given", False, 32)
    assert (req.simulcast, req.simulcast_rid, req.spotlight) == (True, "r1", False)
    assert req.signaling_notify_metadata == {"name": "N"}
    assert (result.authz_metadata, result.signaling_notify, result.connection_lifetime) == ({"plan": "pro"}, False, 30)
    for payouts, source, code in [
        ({"client_id": 5}, "webhook", AUTH_UNAVAILABLE),
        ({"video_codec_type": "MPEG2"}, "webhook", AUTH_UNAVAILABLE),
        ({"connection_lifetime": 0}, "token", AUTH_REJECTED),
        ({"audio": "yes"}, "token", AUTH_REJECTED),
        ({"simulcast_rid": "r3"}, "webhook", AUTH_UNAVAILABLE),
        ({"simulcast_encodings": [{"rid": "r0"}]}, "webhook", AUTH_UNAVAILABLE),
    ]:
        with pytest.raises(AuthError) as info:
            apply_payouts(AuthResult(_request()), payouts, source)
        assert info.value.code == code, payouts


def test_token_cli() -> None:
    env = {"PYTHONPATH": str(PYTHON_SRC), "HIBIKI_AUTH_SECRET": SECRET}
    cmd = [sys.executable, "-m", "hibiki", "token", "--channel-id", "room", "--role", "sendonly", "--ttl", "60"]
    out = subprocess.run(
        [*cmd, "--client-id", "bob", "--claim", "connection_lifetime=90", "--claim", 'metadata={"a": 1}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    claims = _verify(out.stdout.strip())
    assert (claims["role"], claims["client_id"], claims["connection_lifetime"]) == ("sendonly", "bob", 90)
    assert claims["metadata"] == {"a": 1}
    assert 50 <= claims["exp"] - time.time() <= 70
    no_secret = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(PYTHON_SRC)}, timeout=30)
    assert no_secret.returncode == 2 and "HIBIKI_API_SECRET" in no_secret.stderr


def test_secret_and_webhook_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from hibiki.cli import build_parser

    monkeypatch.setenv("HIBIKI_AUTH_SECRET", SECRET)
    monkeypatch.setenv("HIBIKI_AUTH_WEBHOOK", "http://127.0.0.1:1/auth")
    args = build_parser().parse_args(["serve"])
    assert (args.auth_secret, args.auth_webhook) == (SECRET, "http://127.0.0.1:1/auth")
    assert build_parser().parse_args(["serve", "--auth-secret", "x" * 40]).auth_secret == "x" * 40
    monkeypatch.delenv("HIBIKI_AUTH_SECRET")
    monkeypatch.delenv("HIBIKI_AUTH_WEBHOOK")
    args = build_parser().parse_args(["serve"])
    assert (args.auth_secret, args.auth_webhook) == (None, None)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="auth_webhook_url"):
        ServerSettings(auth_webhook_url="ftp://example.com/")
    with pytest.raises(ValueError, match="auth_secret"):
        ServerSettings(auth_secret="")
    assert SECRET not in repr(ServerSettings(auth_secret=SECRET))


# -- a server with --auth-secret -------------------------------------------------------------------


@pytest.fixture
def secret_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("--auth-secret", SECRET)


def _close_of(server: ServerProcess, **fields: Any) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        ws = await open_ws(server)
        await ws.send(json.dumps(connect_message(**fields)))
        code, reason, received = await expect_close(ws)
        assert received == [], received
        return code, reason

    return run(go())


def test_secret_server_rejects(secret_server: ServerProcess) -> None:
    channel = new_channel_id()
    assert _close_of(secret_server, channel_id=channel) == (
        AUTH_REJECTED,
        "access token required: put a JWT in metadata.access_token",
    )
    expired = create_access_token(SECRET, channel, ttl=1, now=time.time() - 60)
    assert _close_of(secret_server, channel_id=channel, metadata={"access_token": expired}) == (
        AUTH_REJECTED,
        "invalid access token: expired",
    )
    other = create_access_token(SECRET, "another-channel")
    assert _close_of(secret_server, channel_id=channel, metadata={"access_token": other}) == (
        AUTH_REJECTED,
        "invalid access token: issued for another channel_id",
    )
    wrong_role = create_access_token(SECRET, channel, role="recvonly")
    assert _close_of(secret_server, role="sendonly", channel_id=channel, metadata={"access_token": wrong_role}) == (
        AUTH_REJECTED,
        "invalid access token: issued for role recvonly, not sendonly",
    )
    assert secret_server.health()["connections"] == 0
    assert "authentication failed: 4401" in secret_server.log_text()


def test_secret_server_admits_and_applies_claims(secret_server: ServerProcess) -> None:
    channel = new_channel_id()
    token = create_access_token(SECRET, channel, role="sendrecv", client_id="from-token", metadata={"tier": "gold"})

    async def go() -> None:
        ws, offer = await connect_and_get_offer(
            secret_server, "sendrecv", channel, client_id="asked", metadata={"access_token": token}
        )
        assert offer["client_id"] == "from-token"
        assert offer["metadata"] == {"tier": "gold"}  # handed out by the token, as a webhook would
        await ws.send(json.dumps({"type": "disconnect"}))
        assert await expect_close(ws) == (1000, "TYPE-DISCONNECT", [])

    run(go())


def test_connection_lifetime_and_authz_metadata(secret_server: ServerProcess) -> None:
    """A token's connection_lifetime ends the connection with 1000 LIFETIME-EXPIRED; its metadata is authz_metadata."""
    channel = new_channel_id()
    short = create_access_token(SECRET, channel, connection_lifetime=2, metadata={"who": "short"})
    long = create_access_token(SECRET, channel, signaling_notify_metadata={"name": "L"})

    async def body(engine: Any) -> None:
        stays = await Peer.join(engine, secret_server, channel, metadata={"access_token": long})
        leaves = await Peer.join(engine, secret_server, channel, metadata={"access_token": short})
        created = await stays.wait_for(is_notify("connection.created", leaves))
        assert created["authz_metadata"] == {"who": "short"}
        assert "metadata" not in created  # the connect metadata (the token!) is never shown
        own = await leaves.wait_for(is_notify("connection.created", leaves))
        assert own["data"] == [
            {"connection_id": stays.connection_id, "client_id": stays.connection_id, "metadata": {"name": "L"}},
            {
                "connection_id": leaves.connection_id,
                "client_id": leaves.connection_id,
                "authz_metadata": {"who": "short"},
            },
        ]
        started = time.monotonic()
        assert await leaves.wait_closed(timeout=10) == (1000, "LIFETIME-EXPIRED")
        assert 1.0 < time.monotonic() - started < 4.0
        await stays.wait_for(is_notify("connection.destroyed", leaves))
        assert stays.closed is None
        assert await stays.disconnect() == (1000, "TYPE-DISCONNECT")

    run(with_engine(body))


# -- the auth webhook --------------------------------------------------------------------------------


class Webhook:
    """A tiny auth webhook in this process: records requests, answers with ``respond(body)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.respond: Callable[[Any], tuple[int, bytes, float]] = lambda body: (200, b'{"allowed": true}', 0.0)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                body = json.loads(raw)
                hook.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, answer, delay = hook.respond(body)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the server gave up waiting (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/auth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, doc: Any, status: int = 200, delay: float = 0.0) -> None:
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.respond = lambda body: (status, payload, delay)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


def test_webhook_request_and_payouts(server_factory: Callable[..., ServerProcess], webhook: Webhook) -> None:
    server = server_factory("--auth-webhook", webhook.url)
    channel = new_channel_id()
    webhook.answer(
        {
            "allowed": True,
            "client_id": "hooked",
            "metadata": {"room": "blue"},
            "signaling_notify_metadata": {"display": "H"},
            "video_codec_type": "VP8",
            "audio": False,
        }
    )

    async def go() -> None:
        ws, offer = await connect_and_get_offer(
            server,
            "sendonly",
            channel,
            metadata={"access_token": "opaque"},
            signaling_notify_metadata={"display": "asked"},
            video={"codec_type": "VP9", "bit_rate": 500},
        )
        assert offer["client_id"] == "hooked"
        assert offer["metadata"] == {"room": "blue"}
        assert offer["audio"] is False and offer["video_codec_type"] == "VP8"
        assert set(offer["mid"]) == {"video"}, offer["mid"]
        headers, body = webhook.requests[-1]
        assert headers["sora-connection-id"] == offer["connection_id"]
        assert headers["content-type"] == "application/json"
        expected_subset = {
            "label": "hibiki",
            "channel_id": channel,
            "connection_id": offer["connection_id"],
            "client_id": offer["connection_id"],  # none asked: the default
            "bundle_id": offer["connection_id"],
            "role": "sendonly",
            "multistream": True,
            "simulcast": False,
            "spotlight": False,
            "audio": True,
            "audio_codec_type": "OPUS",
            "video": True,
            "video_codec_type": "VP9",
            "video_bit_rate": 500,
            "metadata": {"access_token": "opaque"},
            "signaling_notify_metadata": {"display": "asked"},
            "data_channel_signaling": False,
            "ignore_disconnect_websocket": False,
            "redirect": False,
            "e2ee": False,
            "channel_connections": 0,
            "sora_client": "hibiki tests",
            "environment": "pytest",
        }
        assert {k: body.get(k) for k in expected_subset} == expected_subset
        for name in ("timestamp", "id", "node_name", "version"):
            assert isinstance(body[name], str) and body[name], name
        await ws.send(json.dumps({"type": "disconnect"}))
        assert await expect_close(ws) == (1000, "TYPE-DISCONNECT", [])

    run(go())


@pytest.mark.parametrize(
    ("answer", "status", "expected"),
    [
        ({"allowed": False, "reason": "banned user"}, 200, (AUTH_REJECTED, "banned user")),
        ({"allowed": False}, 200, (AUTH_REJECTED, "rejected by the auth webhook")),
        ({"allowed": True}, 500, (AUTH_UNAVAILABLE, "auth webhook failed: HTTP 500")),
        ({"allowed": True}, 403, (AUTH_UNAVAILABLE, "auth webhook failed: HTTP 403")),
        (b"<html>", 200, (AUTH_UNAVAILABLE, "auth webhook failed: the answer is not JSON")),
        ([True], 200, (AUTH_UNAVAILABLE, "auth webhook failed: the answer must be a JSON object, got array")),
        ({"allowed": "yes"}, 200, (AUTH_UNAVAILABLE, "auth webhook failed: the answer has no boolean 'allowed'")),
        (
            {"allowed": True, "client_id": 7},
            200,
            (AUTH_UNAVAILABLE, "auth webhook failed: client_id must be a non-empty string, got number"),
        ),
    ],
)
def test_webhook_rejections(
    server_factory: Callable[..., ServerProcess],
    webhook: Webhook,
    answer: Any,
    status: int,
    expected: tuple[int, str],
) -> None:
    server = server_factory("--auth-webhook", webhook.url)
    webhook.answer(answer, status)
    assert _close_of(server) == expected
    assert server.health()["connections"] == 0


def test_webhook_timeout_and_unreachable(server_factory: Callable[..., ServerProcess], webhook: Webhook) -> None:
    slow = server_factory("--auth-webhook", webhook.url, "--auth-webhook-timeout", "0.5")
    webhook.answer({"allowed": True}, delay=2.0)
    started = time.monotonic()
    assert _close_of(slow) == (AUTH_UNAVAILABLE, "auth webhook failed: no answer within 0.5 s")
    assert time.monotonic() - started < 2.0

    dead = server_factory("--auth-webhook", "http://127.0.0.1:9/auth")  # discard port: refused
    code, reason = _close_of(dead)
    assert code == AUTH_UNAVAILABLE and reason.startswith("auth webhook failed: ConnectError"), reason


def test_client_leaves_while_webhook_thinks(server_factory: Callable[..., ServerProcess], webhook: Webhook) -> None:
    """Closing during AUTHING is clean: nothing joins, no traceback, the server keeps serving."""
    server = server_factory("--auth-webhook", webhook.url)
    webhook.answer({"allowed": True}, delay=1.5)

    async def go() -> None:
        ws = await open_ws(server)
        await ws.send(json.dumps(connect_message()))
        await ws.close()
        ws2 = await open_ws(server)
        await ws2.send(json.dumps(connect_message()))
        await ws2.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        assert await expect_close(ws2) == (1000, "TYPE-DISCONNECT", [])

    run(go())
    time.sleep(2.0)  # the webhook answers for both; the sessions are gone by then
    assert server.health()["connections"] == 0
    webhook.answer({"allowed": True})
    run(_offer_then_disconnect(server))


async def _offer_then_disconnect(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    ws, offer = await connect_and_get_offer(server, **fields)
    await ws.send(json.dumps({"type": "disconnect"}))
    assert await expect_close(ws) == (1000, "TYPE-DISCONNECT", [])
    return offer


def test_token_then_webhook(server_factory: Callable[..., ServerProcess], webhook: Webhook) -> None:
    """Both configured: the token is checked first, the webhook sees its payouts and has the last word."""
    server = server_factory("--auth-secret", SECRET, "--auth-webhook", webhook.url)
    channel = new_channel_id()
    token = create_access_token(SECRET, channel, client_id="token-client")
    assert _close_of(server, channel_id=channel) == (
        AUTH_REJECTED,
        "access token required: put a JWT in metadata.access_token",
    )
    assert webhook.requests == []  # a bad token never reaches the webhook
    webhook.answer({"allowed": True, "metadata": {"hook": 1}})
    offer = run(_offer_then_disconnect(server, channel_id=channel, metadata={"access_token": token}))
    assert offer["client_id"] == "token-client" and offer["metadata"] == {"hook": 1}
    assert webhook.requests[-1][1]["client_id"] == "token-client"


def test_signaling_notify_false(server_factory: Callable[..., ServerProcess], webhook: Webhook) -> None:
    server = server_factory("--auth-webhook", webhook.url)
    channel = new_channel_id()

    async def body(engine: Any) -> None:
        webhook.answer({"allowed": True})
        loud = await Peer.join(engine, server, channel)
        webhook.answer({"allowed": True, "signaling_notify": False})
        quiet = await Peer.join(engine, server, channel)
        await loud.wait_for(is_notify("connection.created", quiet))
        await asyncio.sleep(0.5)
        assert [m for m in quiet.messages if m["type"] == "notify"] == []
        assert await quiet.disconnect() == (1000, "TYPE-DISCONNECT")
        assert await loud.disconnect() == (1000, "TYPE-DISCONNECT")

    run(with_engine(body))


# -- the official client -------------------------------------------------------------------------------


def test_sora_sdk_sees_the_rejection_reason(server_factory: Callable[..., ServerProcess], webhook: Webhook) -> None:
    """sora-sdk's on_disconnect carries our close code and reason (token and webhook rejections)."""
    server = server_factory("--auth-secret", SECRET)
    channel = new_channel_id()
    with SoraPeer.start(server.signaling_url, "recvonly", channel, name="no-token") as peer:
        event = peer.wait_disconnect(15)
        assert event["code"] == "WEBSOCKET_ONCLOSE"
        assert "wscode=4401" in event["message"], event
        assert "access token required: put a JWT in metadata.access_token" in event["message"], event
        peer.assert_clean_exit()
    assert peer.snapshot("set_offer") == []

    hooked = server_factory("--auth-webhook", webhook.url)
    webhook.answer({"allowed": False, "reason": "channel is full"})
    with SoraPeer.start(hooked.signaling_url, "recvonly", channel, name="webhook-no") as peer:
        event = peer.wait_disconnect(15)
        assert event["code"] == "WEBSOCKET_ONCLOSE"
        assert "wscode=4401 wsreason=channel is full" in event["message"], event
        peer.assert_clean_exit()


def test_sora_sdk_with_token_and_lifetime(server_factory: Callable[..., ServerProcess]) -> None:
    """A valid token admits sora-sdk; connection_lifetime ends it with CLOSE_SUCCEEDED LIFETIME-EXPIRED."""
    server = server_factory("--auth-secret", SECRET)
    channel = new_channel_id()
    token = create_access_token(SECRET, channel, role="recvonly", client_id="sora-1", connection_lifetime=3)
    metadata = json.dumps({"access_token": token})
    with SoraPeer.start(server.signaling_url, "recvonly", channel, "--metadata", metadata, name="token") as peer:
        peer.wait_connected()
        created = peer.notifies("connection.created")[0]
        assert created["client_id"] == "sora-1"
        wait_until(lambda: server.health()["connections"] == 1, 5, "the connection on the server")
        event = peer.wait_disconnect(15)
        assert event["code"] == "CLOSE_SUCCEEDED", event
        assert "LIFETIME-EXPIRED" in event["message"], event
        assert {"code": 1000, "reason": "LIFETIME-EXPIRED"}.items() <= peer.snapshot("ws_close")[0].items()
        peer.assert_clean_exit()
    wait_until(lambda: server.health()["connections"] == 0, 5, "the connection to leave")
