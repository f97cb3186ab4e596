"""The SDK's REST clients (``hibiki.api.Client`` / ``AsyncClient``) against real servers.

Most tests drive a real ``hibiki serve`` with ``--api-secret``/``--api-key``
through every method of the clients, with real SDK connections in the calls
where the method is about connections. A few use a small local HTTP server
instead, to give the clients answers no Hibiki server gives (a proxy's
plain-text 502, a wrong-shaped body) and to see exactly which headers they
send; and a socket that never answers, for timeouts.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import hibiki
import hibiki.api.client as client_module
import httpx
import jwt
import pytest
from conftest import PYTHON_SRC, ServerProcess, free_tcp_port, run, wait_until
from hibiki.api.client import (
    ApiError,
    AsyncCall,
    AsyncClient,
    AsyncVideo,
    Call,
    Client,
    Video,
)
from hibiki.api.models import (
    CallRequest,
    CallSettingsRequest,
    ConnectionStatsResponse,
    DeleteCallResponse,
    EndCallResponse,
    GetCallResponse,
    GetOrCreateCallResponse,
    ListConnectionsResponse,
    MemberRequest,
    Problem,
    QueryCallsResponse,
    SortParam,
    UpdateCallMembersResponse,
    UpdateCallResponse,
)
from hibiki.api.tokens import decode_token

SECRET = "test-api-secret-0123456789abcdef-0123456789"
KEY = "test-api-key"


@pytest.fixture
def secured(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    """A server with an API secret and key (its own database file)."""
    return server_factory("--api-secret", SECRET, "--api-key", KEY, "--database", str(tmp_path / "secured.sqlite3"))


@pytest.fixture
def open_server(server_factory: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    """A server with no secret: the API is open (local development)."""
    return server_factory("--database", str(tmp_path / "open.sqlite3"))


def member_roles(members: list[Any]) -> dict[str, str]:
    return {m.user_id: m.role for m in members}


def problem_of(exc: pytest.ExceptionInfo[ApiError], status: int, code: str) -> Problem:
    """Assert the error is ``status``/``code`` with a matching problem document, and return it."""
    err = exc.value
    assert (err.status, err.code) == (status, code), repr(err)
    assert err.problem is not None, "the server's error was not parsed as a problem document"
    assert (err.problem.status, err.problem.code) == (status, code)
    assert err.detail == err.problem.detail and err.detail
    assert str(status) in str(err) and code in str(err)
    return err.problem


# -- one surface, two faces ---------------------------------------------------------------


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member) and not isinstance(member, type)
    }


@pytest.mark.parametrize(
    ("sync_cls", "async_cls", "only_sync", "only_async"),
    [
        (Call, AsyncCall, set(), set()),
        (Video, AsyncVideo, set(), set()),
        (Client, AsyncClient, {"close"}, {"aclose"}),
    ],
)
def test_sync_and_async_clients_have_the_same_surface(
    sync_cls: type, async_cls: type, only_sync: set[str], only_async: set[str]
) -> None:
    sync_methods, async_methods = _public_methods(sync_cls), _public_methods(async_cls)
    assert set(sync_methods) - only_sync == set(async_methods) - only_async
    for name, signature in sync_methods.items():
        if name in only_sync:
            continue
        assert list(signature.parameters.values()) == list(async_methods[name].parameters.values()), name
        sync_fn, async_fn = getattr(sync_cls, name), getattr(async_cls, name)
        # A request method is a coroutine (or an async generator) on the async face, local ones are not.
        makes_requests = name not in {"call", "rtc_call", "create_token", "create_server_token", "from_env"}
        is_async = inspect.iscoroutinefunction(async_fn) or inspect.isasyncgenfunction(async_fn)
        assert is_async == makes_requests, name
        assert not inspect.iscoroutinefunction(sync_fn), name
        assert (sync_fn.__doc__ or "").strip() and (async_fn.__doc__ or "").strip(), f"{name} has no docstring"
    for prop in ("type", "id", "cid"):
        if sync_cls is Call:
            assert isinstance(getattr(Call, prop), property) and isinstance(getattr(AsyncCall, prop), property)


def test_importing_the_rest_client_does_not_load_the_media_stack() -> None:
    """A web backend that only makes calls and tokens must not pay for codecs and the Rust engine."""
    code = (
        "import sys, hibiki.api.client\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('av', 'numpy', 'websockets')"
        " or m.startswith(('hibiki.client', 'hibiki._core', 'hibiki.media', 'hibiki.api.rtc'))]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(PYTHON_SRC)}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_bad_arguments_fail_before_anything_is_sent() -> None:
    # The port is closed: a request that went out would fail with network_error, not ValueError.
    dead = f"http://127.0.0.1:{free_tcp_port()}"
    with Client(base_url=dead) as client:
        for bad_type, bad_id in [("default", "a:b"), ("", "x"), ("default", "x" * 65), ("de fault", "x"), ("a", "../b")]:
            with pytest.raises(ValueError, match="letters, digits"):
                client.video.call(bad_type, bad_id)
        call = client.video.call("default", "ok_1-2")
        assert (call.type, call.id, call.cid) == ("default", "ok_1-2", "default:ok_1-2")
        with pytest.raises(ValueError):
            call.get_or_create(members_limit=101)
        with pytest.raises(ValueError):
            call.update_call_members(update_members=[{"user_id": "bob", "role": "Not A Role"}])
        with pytest.raises(TypeError, match="list of user ids"):
            call.update_call_members(remove_members="bob")
        with pytest.raises(ValueError):
            client.video.query_calls(limit=0)
        with pytest.raises(ValueError, match="connection_id"):
            call.disconnect("")
        with pytest.raises(ValueError, match="needs the API secret"):
            client.create_token("alice")
        with pytest.raises(ValueError, match="needs the API secret"):
            client.create_server_token()
    for bad_url in ["ws://127.0.0.1:5000", "127.0.0.1:5000", "http://"]:
        with pytest.raises(ValueError, match="base_url"):
            Client(base_url=bad_url)
    with pytest.raises(ValueError, match="api_secret"):
        AsyncClient(api_secret="")


def test_repr_never_shows_the_secret() -> None:
    with Client(api_key=KEY, api_secret=SECRET) as client:
        assert SECRET not in repr(client) and KEY in repr(client)
        assert client.has_api_secret and client.api_secret == SECRET and client.api_key == KEY
        assert client.base_url == "http://127.0.0.1:5000" and client.timeout == 10.0


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIBIKI_API_KEY", "k-env")
    monkeypatch.setenv("HIBIKI_API_SECRET", "s-env")
    monkeypatch.setenv("HIBIKI_BASE_URL", "http://10.0.0.1:7000/")
    with Client.from_env() as client:
        assert (client.api_key, client.api_secret, client.base_url) == ("k-env", "s-env", "http://10.0.0.1:7000")
    monkeypatch.delenv("HIBIKI_API_SECRET")
    monkeypatch.setenv("HIBIKI_AUTH_SECRET", "old-name")  # the server's older variable works too
    client2 = AsyncClient.from_env(base_url="http://h:1")
    assert (client2.api_secret, client2.base_url) == ("old-name", "http://h:1")
    run(client2.aclose())


def test_create_token_makes_user_tokens_the_server_accepts_locally() -> None:
    with Client(api_secret=SECRET) as client:
        token = client.create_token("alice", expiration=600, call_cids=["default:standup"], role="sendonly")
        claims = decode_token(SECRET, token)
        assert claims["user_id"] == "alice" and claims["call_cids"] == ["default:standup"]
        assert claims["role"] == "sendonly" and claims["exp"] - claims["iat"] == 600
        assert "server" not in claims
        server_claims = decode_token(SECRET, client.create_server_token(expiration=60))
        assert server_claims["server"] is True and server_claims["exp"] - server_claims["iat"] == 60
        with pytest.raises(ValueError, match="role"):
            client.create_token("alice", role="admin")


# -- a local HTTP server that answers what a test tells it to -----------------------------


class Recorder:
    """An HTTP server on a free port that records requests and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, str, bytes]] = []
        self.default: tuple[int, str, bytes] = (200, "application/json", b"{}")
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                status, content_type, payload = recorder.answers.pop(0) if recorder.answers else recorder.default
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    try:
        yield rec
    finally:
        rec.close()


def test_auth_headers_and_the_cached_server_token(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder.default = (200, "application/json", b'{"connections": []}')
    with Client(api_key=KEY, api_secret=SECRET, base_url=recorder.url) as client:
        call = client.video.call("default", "c1")
        assert call.list_connections() == ListConnectionsResponse(connections=[])
        call.list_connections()
        first, second = (r["headers"] for r in recorder.requests)
        assert first["X-Api-Key"] == KEY
        scheme, token = first["Authorization"].split(" ", 1)
        assert scheme == "Bearer" and second["Authorization"] == first["Authorization"], "the token is not reused"
        claims = decode_token(SECRET, token)
        assert claims["server"] is True and claims["exp"] - claims["iat"] == client_module.SERVER_TOKEN_TTL_S
        assert first["User-Agent"].startswith("hibiki-python-api/")
        assert recorder.requests[0]["path"] == "/v1/calls/default/c1/connections"

        # Close to its expiry the token is replaced by a new one.
        real_time = time.time
        later = client_module.SERVER_TOKEN_TTL_S - client_module.SERVER_TOKEN_RENEW_S + 1
        monkeypatch.setattr(client_module, "time", types.SimpleNamespace(time=lambda: real_time() + later))
        call.list_connections()
        renewed = recorder.requests[-1]["headers"]["Authorization"].split(" ", 1)[1]
        assert renewed != token
        assert jwt.decode(renewed, SECRET, algorithms=["HS256"], options={"verify_iat": False, "verify_exp": False})[
            "iat"
        ] >= claims["iat"] + later - 1

    # No secret: no token, and the key only when there is one.
    recorder.requests.clear()
    with Client(base_url=recorder.url) as bare, Client(api_key=KEY, base_url=recorder.url) as key_only:
        bare.video.call("default", "c1").list_connections()
        key_only.video.call("default", "c1").list_connections()
    bare_headers, key_headers = (r["headers"] for r in recorder.requests)
    assert "Authorization" not in bare_headers and "X-Api-Key" not in bare_headers
    assert "Authorization" not in key_headers and key_headers["X-Api-Key"] == KEY


def test_request_bodies_send_only_what_was_given(recorder: Recorder) -> None:
    call_json: dict[str, Any] = {
        "type": "default", "id": "c1", "cid": "default:c1", "created_by_id": None, "custom": {},
        "settings": {"audio": True, "video": True, "max_participants": None, "max_duration_seconds": None},
        "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z", "ended_at": None,
        "participants": [],
    }  # fmt: skip
    recorder.default = (200, "application/json", json.dumps({"call": call_json, "members": []}).encode())
    with Client(base_url=recorder.url) as client:
        call = client.video.call("default", "c1")
        call.update(settings_override={"max_participants": 3})
        call.update(custom={"a": 1})
        # A partial update stays partial: no nulls for the settings not given.
        bodies = [json.loads(r["body"]) for r in recorder.requests]
        assert bodies == [{"settings_override": {"max_participants": 3}}, {"custom": {"a": 1}}]
        assert [r["method"] for r in recorder.requests] == ["PATCH", "PATCH"]
        recorder.requests.clear()
        recorder.default = (200, "application/json", json.dumps({"call": call_json, "members": [], "created": True}).encode())
        call.get_or_create(CallRequest(created_by_id="alice"), members_limit=5)
        assert json.loads(recorder.requests[0]["body"]) == {"data": {"created_by_id": "alice"}, "members_limit": 5}
        # Fields from a newer server are ignored, not fatal.
        member = {"user_id": "bob", "role": "user", "custom": {"k": {"nested": 1}},
                  "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}
        newer = {"call": {**call_json, "recording": True}, "members": [member, {**member, "user_id": "eve", "badge": "x"}],
                 "future": 1}
        recorder.default = (200, "application/json", json.dumps(newer).encode())
        got = call.get()
        assert got.call.cid == "default:c1" and [m.user_id for m in got.members] == ["bob", "eve"]
        assert got.members[0].custom == {"k": {"nested": 1}}  # custom data is free-form, never trimmed
        recorder.requests.clear()
        recorder.default = (200, "application/json", b'{"connection_ids": []}')
        call.send_message({"x": 1}, connection_id="a/b?c")
        assert recorder.requests[0]["path"] == "/v1/calls/default/c1/connections/a%2Fb%3Fc/messages"


def test_errors_that_are_not_problem_documents(recorder: Recorder) -> None:
    recorder.answers = [
        (502, "text/plain", b"bad gateway from the proxy"),
        (404, "text/html", b"<html>not here</html>"),
        (200, "application/json", b'{"connections": "not a list"}'),
        (200, "text/plain", b"not json"),
        (404, "application/problem+json",
         json.dumps({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no call default:c1",
                     "code": "call_not_found", "extra": 1}).encode()),
        (599, "text/plain", b""),
    ]  # fmt: skip
    with Client(base_url=recorder.url) as client:
        call = client.video.call("default", "c1")
        with pytest.raises(ApiError) as exc:
            call.list_connections()
        assert (exc.value.status, exc.value.code, exc.value.detail) == (502, "http_error", "bad gateway from the proxy")
        assert exc.value.problem is None and exc.value.method == "GET" and str(exc.value.url).endswith("/connections")
        with pytest.raises(ApiError) as exc:
            call.list_connections()
        assert (exc.value.status, exc.value.code, exc.value.problem) == (404, "not_found", None)
        for _ in range(2):
            with pytest.raises(ApiError) as exc:
                call.list_connections()
            assert (exc.value.status, exc.value.code) == (200, "invalid_response")
            assert "ListConnectionsResponse" in exc.value.detail
        with pytest.raises(ApiError) as exc:
            call.list_connections()
        problem = problem_of(exc, 404, "call_not_found")
        assert problem.detail == "no call default:c1" and problem.model_extra == {"extra": 1}
        copy = pickle.loads(pickle.dumps(exc.value))  # errors cross process boundaries (task queues)
        assert (copy.status, copy.code, copy.detail, copy.problem, copy.url) == (
            404, "call_not_found", "no call default:c1", problem, exc.value.url)
        with pytest.raises(ApiError) as exc:
            call.list_connections()
        assert (exc.value.status, exc.value.code, exc.value.detail) == (599, "http_error", "error")


def test_network_errors_are_api_errors_with_the_cause() -> None:
    refused = f"http://127.0.0.1:{free_tcp_port()}"
    # A listening socket that never accepts: the TCP handshake completes, no answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        black_hole = f"http://127.0.0.1:{hole.getsockname()[1]}"
        with Client(base_url=refused) as client:
            with pytest.raises(ApiError) as exc:
                client.video.query_calls()
            assert (exc.value.status, exc.value.code, exc.value.problem) == (0, "network_error", None)
            assert isinstance(exc.value.__cause__, httpx.ConnectError)
            assert exc.value.method == "POST" and exc.value.url == refused + "/v1/calls"
        with Client(base_url=black_hole, timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(ApiError) as exc:
                client.video.call("default", "x").get()
            assert time.monotonic() - started < 5
            assert exc.value.code == "network_error" and "timed out" in exc.value.detail
            assert isinstance(exc.value.__cause__, httpx.TimeoutException)

        async def async_face() -> None:
            async with AsyncClient(base_url=refused) as client:
                with pytest.raises(ApiError) as exc:
                    await client.video.call("default", "x").end()
                assert exc.value.code == "network_error" and isinstance(exc.value.__cause__, httpx.ConnectError)
            async with AsyncClient(base_url=black_hole, timeout=0.3) as client:
                with pytest.raises(ApiError) as exc:
                    await client.video.query_calls()
                assert isinstance(exc.value.__cause__, httpx.TimeoutException)

        run(async_face(), timeout=20)


# -- against real servers ----------------------------------------------------------------


def test_call_lifecycle_with_the_sync_client(secured: ServerProcess) -> None:
    with Client(api_key=KEY, api_secret=SECRET, base_url=secured.url) as client:
        call = client.video.call("default", "standup")
        before = datetime.now(UTC) - timedelta(seconds=5)
        created = call.get_or_create(
            data=CallRequest(
                created_by_id="alice",
                custom={"topic": "standup"},
                members=[MemberRequest(user_id="bob", role="host"), MemberRequest(user_id="carol")],
                settings_override=CallSettingsRequest(max_participants=5),
            )
        )
        assert isinstance(created, GetOrCreateCallResponse) and created.created
        c = created.call
        assert (c.type, c.id, c.cid, c.created_by_id) == ("default", "standup", "default:standup", "alice")
        assert c.custom == {"topic": "standup"} and c.settings.max_participants == 5 and c.settings.video
        assert c.ended_at is None and c.participants == [] and c.created_at >= before
        assert member_roles(created.members) == {"bob": "host", "carol": "user"}

        # Existing: data (here a plain dict) is ignored.
        again = call.get_or_create(data={"created_by_id": "mallory", "custom": {"topic": "other"}})
        assert not again.created and again.call.created_by_id == "alice" and again.call.custom == {"topic": "standup"}
        got = call.get()
        assert isinstance(got, GetCallResponse) and got.call.cid == "default:standup"
        assert member_roles(got.members) == {"bob": "host", "carol": "user"}
        assert len(call.get(members_limit=1).members) == 1

        updated = call.update(custom={"topic": "retro"}, settings_override={"video": False})
        assert isinstance(updated, UpdateCallResponse)
        assert updated.call.custom == {"topic": "retro"}
        assert updated.call.settings.video is False and updated.call.settings.max_participants == 5  # partial
        assert updated.call.updated_at >= c.updated_at
        assert call.get().call.custom == {"topic": "retro"}

        changed = call.update_call_members(
            update_members=[{"user_id": "dave", "custom": {"seat": 1}}, MemberRequest(user_id="bob", role="user")]
        )
        assert isinstance(changed, UpdateCallMembersResponse)
        assert member_roles(call.get().members) == {"bob": "user", "carol": "user", "dave": "user"}
        call.update_call_members(remove_members=["carol", "nobody"])
        members = call.get().members
        assert member_roles(members) == {"bob": "user", "dave": "user"}
        assert next(m for m in members if m.user_id == "dave").custom == {"seat": 1}

        ended = call.end()
        assert isinstance(ended, EndCallResponse) and ended.connection_ids == []
        assert ended.call.ended_at is not None and call.get().call.ended_at == ended.call.ended_at
        assert call.end().call.ended_at == ended.call.ended_at  # idempotent

        deleted = call.delete()
        assert isinstance(deleted, DeleteCallResponse) and deleted.call.cid == "default:standup"
        with pytest.raises(ApiError) as exc:
            call.get()
        assert "default:standup" in problem_of(exc, 404, "call_not_found").detail
        with pytest.raises(ApiError) as exc:
            call.update(custom={})
        problem_of(exc, 404, "call_not_found")
        # Deleted means gone: get_or_create makes a new one.
        assert call.get_or_create().created


def test_auth_errors_and_server_tokens(secured: ServerProcess, open_server: ServerProcess) -> None:
    def failure(client: Client) -> pytest.ExceptionInfo[ApiError]:
        with client, pytest.raises(ApiError) as exc:
            client.video.query_calls()
        return exc

    problem = problem_of(failure(Client(api_key=KEY, api_secret="another-secret-" + "x" * 32, base_url=secured.url)),
                         401, "unauthorized")  # fmt: skip
    assert "signature" in problem.detail
    assert "API key" in problem_of(failure(Client(api_secret=SECRET, base_url=secured.url)), 401, "unauthorized").detail
    assert "wrong API key" in problem_of(
        failure(Client(api_key="wrong", api_secret=SECRET, base_url=secured.url)), 401, "unauthorized"
    ).detail
    problem_of(failure(Client(base_url=secured.url)), 401, "unauthorized")

    async def async_face() -> None:
        async with AsyncClient(api_key=KEY, api_secret=SECRET, base_url=secured.url) as client:
            assert isinstance(await client.video.query_calls(), QueryCallsResponse)
            answer = await client.request_token("erin", expiration=600, call_cids=["default:a"], role="recvonly")
            claims = decode_token(SECRET, answer.token)
            assert (claims["user_id"], claims["call_cids"], claims["role"]) == ("erin", ["default:a"], "recvonly")
            assert answer.expires_at is not None
            assert abs((answer.expires_at - datetime.now(UTC)).total_seconds() - 600) < 30
        async with AsyncClient(base_url=secured.url) as anonymous:
            with pytest.raises(ApiError) as exc:
                await anonymous.video.call("default", "a").get()
            problem_of(exc, 401, "unauthorized")
        # The open server takes requests without credentials, but cannot make tokens.
        async with AsyncClient(base_url=open_server.url) as client:
            assert (await client.video.call("default", "dev").get_or_create()).created
            with pytest.raises(ApiError) as exc:
                await client.request_token("erin")
            assert "secret" in problem_of(exc, 400, "bad_request").detail

    run(async_face(), timeout=60)


def test_query_calls_filters_and_pages_with_the_async_client(secured: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(api_key=KEY, api_secret=SECRET, base_url=secured.url) as client:
            names = [f"q-{i}" for i in range(7)]
            for i, name in enumerate(names):
                answer = await client.video.call("default", name).get_or_create({"custom": {"batch": "b1", "n": i}})
                assert answer.created
            await client.video.call("other", "q-x").get_or_create({"custom": {"batch": "b2"}})

            by_cid = [SortParam(field="cid", direction=1)]
            seen = [c.call.id async for c in client.video.iter_calls({"custom.batch": "b1"}, by_cid, page_size=3)]
            assert seen == names, "pages skipped or repeated calls"

            first = await client.video.query_calls({"custom.batch": "b1"}, [{"field": "cid", "direction": 1}], limit=3)
            assert [c.call.id for c in first.calls] == names[:3] and first.prev is None and first.next is not None
            second = await client.video.query_calls({"custom.batch": "b1"}, by_cid, limit=3, next=first.next)
            assert [c.call.id for c in second.calls] == names[3:6] and second.prev is not None
            back = await client.video.query_calls({"custom.batch": "b1"}, by_cid, limit=3, prev=second.prev)
            assert [c.call.id for c in back.calls] == names[:3]

            picked = await client.video.query_calls({"custom.n": {"$in": [1, 3]}}, by_cid)
            assert [c.call.id for c in picked.calls] == ["q-1", "q-3"]
            assert [c.call.cid for c in (await client.video.query_calls({"type": "other"})).calls] == ["other:q-x"]

            await client.video.call("default", "q-0").end()
            ended = await client.video.query_calls({"ended": True})
            assert [c.call.cid for c in ended.calls] == ["default:q-0"]
            live = await client.video.query_calls({"ended": False, "custom.batch": "b1"}, by_cid)
            assert [c.call.id for c in live.calls] == names[1:]

            with pytest.raises(ApiError) as exc:
                await client.video.query_calls({"no_such_field": 1})
            assert "no_such_field" in problem_of(exc, 400, "bad_request").detail
            with pytest.raises(ApiError) as exc:
                await client.video.query_calls({"type": {"$regex": "x"}})
            problem_of(exc, 400, "bad_request")
            with pytest.raises(ApiError) as exc:
                await client.video.query_calls(next="not-a-cursor")
            problem_of(exc, 400, "bad_request")

    run(scenario(), timeout=60)


def test_connections_of_a_call_with_the_sync_client(open_server: ServerProcess) -> None:
    """List, push to, inspect and disconnect a real SDK connection (callback face) through the sync client."""
    sdk = hibiki.Hibiki()
    with Client(base_url=open_server.url) as client:
        call = client.video.call("default", "room")
        call.get_or_create()
        assert call.list_connections().connections == []
        viewer = sdk.create_connection([open_server.signaling_url], "recvonly", call.cid, client_id="viewer")
        pushes: list[dict[str, Any]] = []
        closed: list[tuple[int, str]] = []
        viewer.on_push = lambda text: pushes.append(json.loads(text))
        viewer.on_ws_close = lambda code, reason: closed.append((code, reason))
        try:
            viewer.connect()
            connection_id = viewer.connection_id
            assert connection_id
            listed = call.list_connections().connections
            assert [(c.connection_id, c.user_id, c.call_cid, c.role) for c in listed] == [
                (connection_id, "viewer", "default:room", "recvonly")
            ]
            assert [p.connection_id for p in call.get().call.participants] == [connection_id]

            assert call.send_message({"to": "all", "n": [1, 2]}).connection_ids == [connection_id]
            assert call.send_message({"to": "one"}, connection_id=connection_id).connection_ids == [connection_id]
            wait_until(lambda: len(pushes) >= 2, 10, "two pushes")
            assert [p["data"] for p in pushes] == [{"to": "all", "n": [1, 2]}, {"to": "one"}]

            stats = call.connection_stats(connection_id)
            assert isinstance(stats, ConnectionStatsResponse) and stats.connection_id == connection_id
            with pytest.raises(ApiError) as exc:
                call.request_keyframe(connection_id)  # it sends no video
            problem_of(exc, 400, "bad_request")

            assert call.disconnect(connection_id).connection_ids == [connection_id]
            # The server's close frame. (on_disconnect's reason can be the media's DTLS close
            # when it overtakes the frame: an ordering matter of the server and SDK, not of the API.)
            wait_until(lambda: bool(closed), 10, "on_ws_close")
            assert closed == [(1000, "DISCONNECTED-API")]
            wait_until(lambda: call.list_connections().connections == [], 10, "the connection to go")
            for missing in (connection_id, "X" * 26):
                with pytest.raises(ApiError) as exc:
                    call.disconnect(missing)
                problem_of(exc, 404, "connection_not_found")
                with pytest.raises(ApiError) as exc:
                    call.connection_stats(missing)
                problem_of(exc, 404, "connection_not_found")
        finally:
            viewer.disconnect()


async def _next_event(events: AsyncIterator[Any], match: Callable[[Any], bool], what: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        async for event in events:
            if match(event):
                return event
    pytest.fail(f"the connection ended before {what}")


def test_user_token_join_push_stats_keyframe_and_end_with_the_async_client(server_factory: Callable[..., ServerProcess],
                                                                           tmp_path: Path) -> None:  # fmt: skip
    """A user joins with a token from ``create_token``; the async client pushes, reads stats, ends the call."""
    srv = server_factory("--api-secret", SECRET, "--api-key", KEY, "--database", str(tmp_path / "db.sqlite3"),
                         "--ping-interval", "0.5")  # fmt: skip

    async def scenario() -> None:
        async with AsyncClient(api_key=KEY, api_secret=SECRET, base_url=srv.url) as client:
            call = client.video.call("default", "live")
            await call.get_or_create(CallRequest(created_by_id="alice"))
            token = client.create_token("alice", call_cids=[call.cid])
            sdk = hibiki.Hibiki()
            camera = sdk.create_video_source()
            async with hibiki.connect(
                srv.signaling_url, role="sendrecv", channel_id=call.cid, metadata={"access_token": token},
                video_source=camera, audio=False, timeout=15,
            ) as conn:  # fmt: skip
                events = conn.events()
                connection_id = conn.connection_id
                assert connection_id
                listed = (await call.list_connections()).connections
                assert [(c.connection_id, c.user_id) for c in listed] == [(connection_id, "alice")]

                assert (await call.send_message({"hello": "alice"})).connection_ids == [connection_id]
                push = await _next_event(events, lambda e: isinstance(e, hibiki.events.Push), "the push")
                assert push.data == {"hello": "alice"}

                assert (await call.request_keyframe(connection_id)).connection_id == connection_id

                # The server asks for stats with every ping (0.5 s here).
                deadline = time.monotonic() + 10
                while not (stats := await call.connection_stats(connection_id)).reports:
                    assert time.monotonic() < deadline, "no stats within 10 s"
                    await asyncio.sleep(0.1)
                assert stats.collected_at is not None and all("type" in r for r in stats.reports)

                ended = await call.end()
                assert ended.connection_ids == [connection_id] and ended.call.ended_at is not None
                notify = await _next_event(
                    events, lambda e: isinstance(e, hibiki.events.Notify) and e.event_type == "call.ended", "call.ended"
                )
                assert notify.message["call_cid"] == call.cid
                gone = await _next_event(events, lambda e: isinstance(e, hibiki.events.Disconnected), "the close")
                assert (gone.ws_close_code, gone.ws_close_reason) == (1000, "CALL-ENDED")
            assert (await call.end()).connection_ids == []
            await call.delete()
            with pytest.raises(ApiError) as exc:
                await call.get()
            problem_of(exc, 404, "call_not_found")

    run(scenario(), timeout=90)


def test_rtc_call_is_the_join_api_of_both_clients() -> None:
    from hibiki.api.rtc import RtcCall

    with Client(api_secret=SECRET) as client:
        assert isinstance(client.video.rtc_call("default", "x"), RtcCall)
    asynchronous = AsyncClient()
    assert isinstance(asynchronous.video.rtc_call("default", "x"), RtcCall)
    run(asynchronous.aclose())
