"""Outgoing webhooks: signing, retries, ordering, isolation from slow receivers, and real server events.

The receiver is a real HTTP server (``http.server`` in a thread on a free
port) that records every request and answers what the test tells it to. A
"black hole" is a TCP listener that accepts connections and never answers.

In-process tests drive :class:`hibiki.server.webhooks.WebhookDispatcher`
directly; the others start ``hibiki serve`` with ``--webhook-url`` and check
what a REST call or a real SDK client joining and leaving makes it send.
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from conftest import ServerProcess, run, wait_until
from hibiki.api.models import (
    CallResponse,
    CallSettings,
    ParticipantResponse,
    TrackResponse,
    WebhookEvent,
)
from hibiki.api.tokens import create_server_token, create_token
from hibiki.api.webhook import (
    WebhookSignatureError,
    parse_webhook,
    sign_webhook,
    verify_webhook,
)
from hibiki.server.settings import ServerSettings
from hibiki.server.webhooks import (
    MAX_BACKOFF_S,
    WebhookDispatcher,
    backoff_delay,
    display_url,
)
from pydantic import ValidationError

SECRET = "webhook-test-secret-0123456789abcdef-0123456789"
API_KEY = "webhook-test-key"


# -- a local receiver ----------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes
    at: float
    """time.monotonic() when it arrived."""

    @property
    def event_id(self) -> str:
        return self.headers.get("x-webhook-id", "")

    @property
    def attempt(self) -> int:
        return int(self.headers.get("x-webhook-attempt", "0"))

    def json(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc

    def event(self) -> WebhookEvent:
        """The body checked against the signature and parsed (fails the test if either is wrong)."""
        return parse_webhook(self.body, self.headers.get("x-signature", ""), SECRET)


Responder = Callable[[Received], int]
"""Decides the status of a request (it may also delay, to simulate a slow receiver)."""


class Receiver:
    """A webhook receiver on 127.0.0.1: records requests, answers ``respond(request)`` (200 by default)."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or (lambda _: 200)
        self.requests: list[Received] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver would

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                got = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length), time.monotonic()
                )
                status = receiver.respond(got)
                with receiver._cond:
                    receiver.requests.append(got)
                    receiver._cond.notify_all()
                payload = b'{"ok": true}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/hook?token=secret-in-query"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="webhook receiver", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.requests)

    def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0, what: str = "") -> list[Received]:
        """Block until ``predicate(requests)``; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.requests):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"timed out after {timeout} s waiting for {what or 'webhooks'}; got {self._summary()}")
                self._cond.wait(remaining)
            return list(self.requests)

    async def wait_async(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0, what: str = ""
    ) -> list[Received]:
        """:meth:`wait` without blocking the event loop (polls; the loop may be the sender)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.snapshot()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what or 'webhooks'}; got {self._summary()}")
            await asyncio.sleep(0.01)

    def wait_event(self, event_type: str, timeout: float = 10.0, **match: Any) -> Received:
        """The first request carrying an event of ``event_type`` whose fields match (dotted paths)."""
        found: list[Received] = []

        def pred(reqs: list[Received]) -> bool:
            found[:] = [r for r in reqs if _matches(r.json(), event_type, match)]
            return bool(found)

        self.wait(pred, timeout, f"{event_type} {match}")
        return found[0]

    def types(self) -> list[str]:
        """Event types of the requests, in arrival order (first attempts only)."""
        return [r.json()["type"] for r in self.snapshot() if r.attempt == 1]

    def _summary(self) -> list[str]:
        return [f"{r.json().get('type')} attempt {r.attempt}" for r in self.requests]


def _lookup(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


def _matches(doc: dict[str, Any], event_type: str, match: dict[str, Any]) -> bool:
    return doc.get("type") == event_type and all(_lookup(doc, k.replace("__", ".")) == v for k, v in match.items())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rcv = Receiver()
    try:
        yield rcv
    finally:
        rcv.close()


class BlackHole:
    """A TCP listener that accepts connections, reads what comes, and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/never"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="black hole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # Held open and never answered; what the client wrote stays unread.
            self._held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


def scripted(statuses: list[int]) -> Responder:
    """Per event id: answer ``statuses[attempt - 1]`` (the last one from then on)."""

    def respond(req: Received) -> int:
        return statuses[min(req.attempt, len(statuses)) - 1]

    return respond


# -- in-process helpers ---------------------------------------------------------------------


def settings(*urls: str, **fields: Any) -> ServerSettings:
    """Server settings with webhooks to ``urls``, signed with SECRET, fast retries."""
    fields.setdefault("auth_secret", SECRET)
    fields.setdefault("webhook_backoff", 0.05)
    fields.setdefault("webhook_timeout", 2.0)
    fields.setdefault("webhook_max_attempts", 4)
    return ServerSettings(webhook_urls=tuple(urls), **fields)


def sample_call(cid: str = "default:standup") -> CallResponse:
    now = datetime.now(UTC)
    kind, _, ident = cid.partition(":")
    return CallResponse(
        type=kind,
        id=ident,
        cid=cid,
        created_by_id="alice",
        custom={"topic": "webhooks"},
        settings=CallSettings(),
        created_at=now,
        updated_at=now,
        ended_at=None,
        participants=[],
    )


# -- verify_webhook / parse_webhook ----------------------------------------------------------


def test_sign_webhook_is_hmac_sha256_of_the_body() -> None:
    body = b'{"id":"x","type":"call.created"}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign_webhook(body, SECRET) == expected
    assert sign_webhook(body.decode(), SECRET) == expected, "a str body is its UTF-8 bytes"
    with pytest.raises(ValueError, match="secret"):
        sign_webhook(body, "")


def test_verify_webhook_accepts_only_the_right_signature() -> None:
    body = json.dumps({"type": "call.created", "call_cid": "a:b"}).encode()
    good = sign_webhook(body, SECRET)
    assert verify_webhook(body, good, SECRET)
    assert verify_webhook(body, good.upper(), SECRET), "hex digits in either case"
    assert verify_webhook(body, f" {good}\n", SECRET), "surrounding whitespace from a header is ignored"
    assert not verify_webhook(body + b" ", good, SECRET), "a changed body"
    assert not verify_webhook(body, good, SECRET + "x"), "another secret"
    assert not verify_webhook(body, good[:-1], SECRET), "a truncated signature"
    for bad in ("", "zz", "é" * 64, None):
        assert not verify_webhook(body, bad, SECRET), repr(bad)
    with pytest.raises(ValueError, match="secret"):
        verify_webhook(body, good, "")


def test_parse_webhook_checks_the_signature_before_parsing() -> None:
    event = WebhookEvent(id="e1", type="call.created", created_at=datetime.now(UTC), call_cid="default:x")
    body = event.model_dump_json().encode()
    parsed = parse_webhook(body, sign_webhook(body, SECRET), SECRET)
    assert parsed == event
    import hibiki.api

    assert hibiki.api.parse_webhook is parse_webhook and hibiki.api.verify_webhook is verify_webhook
    with pytest.raises(WebhookSignatureError) as info:
        parse_webhook(body, sign_webhook(body, "another-secret"), SECRET)
    assert isinstance(info.value, ValueError), "callers catching ValueError catch it too"
    # A correctly signed body that is not an event is a ValueError, not a signature error.
    junk = b'{"hello": "world"}'
    with pytest.raises(ValidationError):
        parse_webhook(junk, sign_webhook(junk, SECRET), SECRET)


def test_backoff_doubles_from_the_first_delay_and_is_capped() -> None:
    assert [backoff_delay(0.5, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(0.5, 7) == MAX_BACKOFF_S == 30.0
    assert backoff_delay(0.5, 10_000) == MAX_BACKOFF_S, "no float overflow for absurd attempt counts"


def test_logged_urls_lose_their_query_and_credentials() -> None:
    assert display_url("http://user:pw@127.0.0.1:8080/hook?token=t#frag") == "http://127.0.0.1:8080/hook"
    assert display_url("https://[::1]:9443/a") == "https://[::1]:9443/a"
    hooks = WebhookDispatcher(settings("https://example.com/x?key=k"))
    assert hooks.display_urls == ["https://example.com/x"]


# -- the dispatcher, in process --------------------------------------------------------------


def test_delivers_a_signed_event_with_its_headers(receiver: Receiver) -> None:
    async def body() -> None:
        hooks = WebhookDispatcher(settings(receiver.url, api_key=API_KEY))
        hooks.start()
        call = sample_call()
        participant = ParticipantResponse(
            user_id="alice", connection_id="C1", role="sendrecv", joined_at=datetime.now(UTC)
        )
        track = TrackResponse(kind="video", mid="1", codec="VP8", connection_id="C1", user_id="alice")
        before = datetime.now(UTC)
        hooks.emit("call.track_published", call_cid=call.cid, call=call, participant=participant, track=track)
        (req,) = await receiver.wait_async(lambda r: len(r) >= 1, what="one delivery")
        await hooks.aclose()

        assert req.path == "/hook?token=secret-in-query"
        assert req.headers["content-type"] == "application/json"
        assert req.headers["x-api-key"] == API_KEY
        assert req.attempt == 1
        assert verify_webhook(req.body, req.headers["x-signature"], SECRET)
        event = req.event()
        assert event.id == req.event_id and uuid.UUID(event.id).version == 4
        assert event.type == "call.track_published"
        assert event.call_cid == "default:standup"
        assert event.call == call and event.participant == participant and event.track == track
        assert event.members is None
        assert before <= event.created_at <= datetime.now(UTC)
        assert event.created_at.utcoffset() == timedelta(0), "created_at is UTC"
        assert (hooks.delivered, hooks.failed, hooks.dropped, hooks.pending) == (1, 0, 0, 0)

    run(body())


def test_unsigned_without_an_api_secret(receiver: Receiver) -> None:
    async def body() -> None:
        hooks = WebhookDispatcher(settings(receiver.url, auth_secret=None))
        hooks.start()
        hooks.emit("call.created", call_cid="default:open", call=sample_call("default:open"))
        (req,) = await receiver.wait_async(lambda r: len(r) >= 1)
        await hooks.aclose()
        assert "x-signature" not in req.headers, "nothing to sign with: no signature at all"
        assert "x-api-key" not in req.headers
        assert req.json()["call_cid"] == "default:open"

    run(body())


def test_retries_after_failures_with_the_same_id_and_growing_delays() -> None:
    rcv = Receiver(scripted([500, 500, 200]))
    try:

        async def body() -> None:
            hooks = WebhookDispatcher(settings(rcv.url, webhook_backoff=0.2))
            hooks.start()
            hooks.emit("call.ended", call_cid="default:retry")
            reqs = await rcv.wait_async(lambda r: len(r) >= 3, what="three attempts")
            await hooks.aclose()
            assert [r.attempt for r in reqs] == [1, 2, 3]
            assert len({r.event_id for r in reqs}) == 1, "a retry is the same event"
            assert len({r.body for r in reqs}) == 1, "and the same bytes"
            assert all(verify_webhook(r.body, r.headers["x-signature"], SECRET) for r in reqs)
            gaps = [b.at - a.at for a, b in itertools.pairwise(reqs)]
            assert gaps[0] >= 0.2 * 0.9 and gaps[1] >= 0.4 * 0.9, f"backoff 0.2 s then 0.4 s, got {gaps}"
            assert (hooks.delivered, hooks.failed) == (1, 0)

        run(body())
    finally:
        rcv.close()


def test_gives_up_after_max_attempts_and_carries_on() -> None:
    failing = {"on": True}
    rcv = Receiver(lambda _: 503 if failing["on"] else 200)
    try:

        async def body() -> None:
            hooks = WebhookDispatcher(settings(rcv.url, webhook_max_attempts=3))
            hooks.start()
            hooks.emit("call.created", call_cid="default:a")
            await rcv.wait_async(lambda r: len(r) >= 3)
            deadline = time.monotonic() + 5
            while hooks.failed == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert hooks.failed == 1
            failing["on"] = False
            hooks.emit("call.created", call_cid="default:b")
            reqs = await rcv.wait_async(lambda r: len(r) >= 4)
            await hooks.aclose()
            assert [(r.json()["call_cid"], r.attempt) for r in reqs] == [
                ("default:a", 1),
                ("default:a", 2),
                ("default:a", 3),
                ("default:b", 1),
            ], "exactly max_attempts tries, then the next event"
            assert (hooks.delivered, hooks.failed) == (1, 1)

        run(body())
    finally:
        rcv.close()


def test_events_reach_a_url_in_order_even_when_one_is_retried() -> None:
    first_fails: dict[str, int] = {}

    def respond(req: Received) -> int:
        # The first event fails twice; a sender that let later events overtake it would be caught.
        if req.json()["call_cid"] == "default:0":
            first_fails[req.event_id] = first_fails.get(req.event_id, 0) + 1
            return 500 if first_fails[req.event_id] <= 2 else 200
        return 200

    rcv = Receiver(respond)
    try:

        async def body() -> None:
            hooks = WebhookDispatcher(settings(rcv.url))
            hooks.start()
            for i in range(6):
                hooks.emit("call.updated", call_cid=f"default:{i}")
            reqs = await rcv.wait_async(lambda r: len(r) >= 8, what="6 events + 2 retries")
            await hooks.aclose()
            assert [r.json()["call_cid"] for r in reqs] == ["default:0"] * 3 + [f"default:{i}" for i in range(1, 6)]

        run(body())
    finally:
        rcv.close()


def test_a_slow_answer_is_a_failure_and_is_retried() -> None:
    slow_once = threading.Event()

    def respond(req: Received) -> int:
        if req.attempt == 1:
            # Answer long after the sender's timeout (bounded, so the thread ends).
            slow_once.wait(3.0)
        return 200

    rcv = Receiver(respond)
    try:

        async def body() -> None:
            hooks = WebhookDispatcher(settings(rcv.url, webhook_timeout=0.3))
            hooks.start()
            started = time.monotonic()
            hooks.emit("call.created", call_cid="default:slow")
            await rcv.wait_async(lambda r: any(x.attempt == 2 for x in r), what="a second attempt")
            assert time.monotonic() - started < 2.5, "the retry came after the timeout, not after the slow answer"
            slow_once.set()
            deadline = time.monotonic() + 5
            while hooks.delivered == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await hooks.aclose()
            assert hooks.delivered == 1

        run(body())
    finally:
        slow_once.set()
        rcv.close()


def test_a_dead_url_does_not_hold_back_another(receiver: Receiver, black_hole: BlackHole) -> None:
    async def body() -> None:
        hooks = WebhookDispatcher(settings(black_hole.url, receiver.url, webhook_timeout=30.0), close_grace=0.2)
        hooks.start()
        started = time.monotonic()
        for i in range(5):
            hooks.emit("call.created", call_cid=f"default:{i}")
        reqs = await receiver.wait_async(lambda r: len(r) >= 5, timeout=5)
        assert time.monotonic() - started < 3, "the live receiver got everything at once"
        assert [r.json()["call_cid"] for r in reqs] == [f"default:{i}" for i in range(5)]
        wait_until(lambda: black_hole.accepted >= 1, 5, "the sender to try the dead URL too")
        closing = time.monotonic()
        await hooks.aclose()
        assert time.monotonic() - closing < 2, "close waits only its short grace for the dead URL"

    run(body())


def test_emit_never_blocks_and_a_full_queue_drops(black_hole: BlackHole, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        hooks = WebhookDispatcher(settings(black_hole.url, webhook_timeout=30.0), max_queue=10, close_grace=0.1)
        hooks.start()
        call = sample_call()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="hibiki.server.webhooks"):
            for _ in range(2000):
                hooks.emit("call.updated", call_cid=call.cid, call=call)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"2000 emits took {elapsed:.2f} s"
        # Up to 10 queued and one in flight; the rest dropped, with a warning.
        assert 2000 - 11 <= hooks.dropped <= 2000 - 10
        assert hooks.pending <= 11
        drops = [r for r in caplog.records if "queue" in r.getMessage() and "full" in r.getMessage()]
        assert 1 <= len(drops) <= 2, "one warning per interval, not one per event"
        assert "default:standup" in drops[0].getMessage(), "logs name the call"
        assert "secret-in-query" not in caplog.text
        closing = time.monotonic()
        await hooks.aclose()
        assert time.monotonic() - closing < 1.5
        hooks.emit("call.updated", call_cid=call.cid)  # after close: dropped quietly

    run(body())


def test_emit_with_a_bad_event_logs_and_does_not_raise(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        hooks = WebhookDispatcher(settings(receiver.url))
        hooks.start()
        with caplog.at_level(logging.ERROR, logger="hibiki.server.webhooks"):
            hooks.emit("call.exploded", call_cid="default:bad")
        assert "call.exploded" in caplog.text and "default:bad" in caplog.text
        hooks.emit("call.created", call_cid="default:good")
        reqs = await receiver.wait_async(lambda r: len(r) >= 1)
        await hooks.aclose()
        assert [r.json()["call_cid"] for r in reqs] == ["default:good"]

    run(body())


def test_without_urls_everything_is_a_no_op() -> None:
    hooks = WebhookDispatcher(settings())
    assert not hooks.enabled
    hooks.emit("call.created", call_cid="default:x")  # no loop needed, nothing happens
    assert hooks.pending == 0 and hooks.dropped == 0

    async def body() -> None:
        hooks.start()
        await hooks.aclose()

    run(body())


def test_events_before_start_are_sent_and_close_flushes(receiver: Receiver) -> None:
    async def body() -> None:
        hooks = WebhookDispatcher(settings(receiver.url))
        hooks.emit("call.created", call_cid="default:early")
        hooks.start()
        for i in range(3):
            hooks.emit("call.updated", call_cid=f"default:{i}")
        await hooks.aclose()  # the grace lets the queued ones go out
        assert hooks.delivered == 4
        assert [r.json()["call_cid"] for r in receiver.snapshot()] == ["default:early"] + [
            f"default:{i}" for i in range(3)
        ]

    run(body())


def test_connection_refused_is_retried(receiver: Receiver) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{closed_port}/hook"

    async def body() -> None:
        hooks = WebhookDispatcher(settings(dead, receiver.url, webhook_max_attempts=2, webhook_backoff=0.05))
        hooks.start()
        hooks.emit("call.created", call_cid="default:refused")
        await receiver.wait_async(lambda r: len(r) >= 1)
        deadline = time.monotonic() + 5
        while hooks.failed == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await hooks.aclose()
        assert (hooks.delivered, hooks.failed) == (1, 1)

    run(body())


# -- a real server ------------------------------------------------------------------------


def api_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {create_server_token(SECRET)}", "x-api-key": API_KEY}


def start_with_webhooks(server_factory: Callable[..., ServerProcess], *urls: str, **opts: str) -> ServerProcess:
    args = ["--api-secret", SECRET, "--api-key", API_KEY, "--webhook-backoff", opts.get("backoff", "0.2")]
    for url in urls:
        args += ["--webhook-url", url]
    if "timeout" in opts:
        args += ["--webhook-timeout", opts["timeout"]]
    return server_factory(*args)


def new_call_id() -> str:
    return f"wh-{uuid.uuid4().hex[:12]}"


def test_rest_call_lifecycle_sends_signed_webhooks(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    srv = start_with_webhooks(server_factory, receiver.url)
    call_id = new_call_id()
    cid = f"default:{call_id}"
    with httpx.Client(base_url=srv.url, headers=api_headers(), timeout=10) as http:
        r = http.post(
            f"/v1/calls/default/{call_id}",
            json={"data": {"created_by_id": "alice", "custom": {"topic": "hooks"}, "members": [{"user_id": "bob"}]}},
        )
        assert r.status_code == 201, r.text
        created = receiver.wait_event("call.created", call_cid=cid)
        r = http.post(f"/v1/calls/default/{call_id}", json={})
        assert r.status_code == 200, "get_or_create of an existing call creates nothing"
        r = http.post(f"/v1/calls/default/{call_id}/members", json={"update_members": [{"user_id": "carol"}]})
        assert r.status_code == 200, r.text
        added = receiver.wait_event("call.member_added", call_cid=cid)
        r = http.post(f"/v1/calls/default/{call_id}/end")
        assert r.status_code == 200, r.text
        ended = receiver.wait_event("call.ended", call_cid=cid)
        r = http.delete(f"/v1/calls/default/{call_id}")
        assert r.status_code == 200, r.text
        deleted = receiver.wait_event("call.deleted", call_cid=cid)

    for req in (created, added, ended, deleted):
        assert req.headers["x-api-key"] == API_KEY
        assert req.attempt == 1
        req.event()  # signature and schema
    event = created.event()
    assert event.call is not None and event.call.created_by_id == "alice" and event.call.custom == {"topic": "hooks"}
    assert event.call.ended_at is None
    member_event = added.event()
    assert [m.user_id for m in member_event.members or []] == ["carol"]
    ended_event = ended.event()
    assert ended_event.call is not None and ended_event.call.ended_at is not None
    assert deleted.event().call is not None
    for_this_call = [t for r in receiver.snapshot() if (doc := r.json())["call_cid"] == cid for t in [doc["type"]]]
    assert for_this_call.count("call.created") == 1, "the second get_or_create sent no call.created"
    order = [for_this_call.index(t) for t in ("call.created", "call.member_added", "call.ended", "call.deleted")]
    assert order == sorted(order), f"events in the order they happened: {for_this_call}"


def test_server_retries_a_failing_receiver(server_factory: Callable[..., ServerProcess]) -> None:
    rcv = Receiver(scripted([500, 500, 200]))
    try:
        srv = start_with_webhooks(server_factory, rcv.url, backoff="0.2")
        call_id = new_call_id()
        r = httpx.post(f"{srv.url}/v1/calls/default/{call_id}", json={}, headers=api_headers(), timeout=10)
        assert r.status_code == 201, r.text
        reqs = rcv.wait(
            lambda rs: any(x.attempt == 3 for x in rs),
            timeout=10,
            what="the third attempt",
        )
        attempts = [x for x in reqs if x.json()["type"] == "call.created"]
        assert [x.attempt for x in attempts] == [1, 2, 3]
        assert len({x.event_id for x in attempts}) == 1
        assert all(x.event().call_cid == f"default:{call_id}" for x in attempts), "every attempt is signed"
        assert attempts[1].at - attempts[0].at >= 0.18 and attempts[2].at - attempts[1].at >= 0.36
        log = srv.log_text()
        assert f"default:{call_id}" in log and "attempt 1 of" in log, "the failures are logged with the call"
        assert "secret-in-query" not in log, "logs show webhook URLs without their query"
    finally:
        rcv.close()


def _feed(video: Any, audio: Any, stop: threading.Event) -> None:
    """Push pictures and 20 ms audio chunks in real time until ``stop``."""
    from hibiki.media.testsrc import test_pattern, tone

    n = 0
    while not stop.is_set():
        video.on_captured(test_pattern(n, 160, 120))
        audio.on_data(tone(440.0, 48_000, 1, n * 2880, 2880))
        n += 1
        stop.wait(0.06)  # about 16 pictures a second, audio at its real rate


def test_participant_and_track_webhooks_from_a_real_client(
    server_factory: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    import hibiki

    srv = start_with_webhooks(server_factory, receiver.url)
    call_id = new_call_id()
    cid = f"default:{call_id}"
    r = httpx.post(f"{srv.url}/v1/calls/default/{call_id}", json={}, headers=api_headers(), timeout=10)
    assert r.status_code == 201, r.text
    token = create_token(SECRET, "alice", call_cids=[cid])

    sdk = hibiki.Hibiki()
    video = sdk.create_video_source()
    audio = sdk.create_audio_source(channels=1, sample_rate=48_000)
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(video, audio, stop), daemon=True)

    async def body() -> str:
        async with hibiki.connect(
            srv.signaling_url,
            role="sendonly",
            channel_id=cid,
            metadata={"access_token": token},
            video_source=video,
            audio_source=audio,
            timeout=10,
        ) as conn:
            feeder.start()
            connection_id = conn.connection_id
            assert connection_id
            await asyncio.to_thread(
                receiver.wait,
                lambda rs: sum(_matches(x.json(), "call.track_published", {}) for x in rs) >= 2,
                10,
                "audio and video track_published",
            )
        return str(connection_id)

    try:
        connection_id = run(body(), timeout=30)
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5)
    receiver.wait_event("call.participant_left", participant__connection_id=connection_id)

    events = [r.event() for r in receiver.snapshot() if r.json()["call_cid"] == cid]
    joined = events[[e.type for e in events].index("call.participant_joined")]
    assert joined.participant is not None
    assert (joined.participant.user_id, joined.participant.connection_id) == ("alice", connection_id)
    assert joined.participant.role == "sendonly"
    assert joined.call is not None and joined.call.cid == cid
    published = [e for e in events if e.type == "call.track_published"]
    assert sorted(e.track.kind for e in published if e.track) == ["audio", "video"]
    for e in published:
        assert e.track is not None and e.track.connection_id == connection_id and e.track.user_id == "alice"
    unpublished = [e for e in events if e.type == "call.track_unpublished"]
    assert {e.track.mid for e in unpublished if e.track} == {e.track.mid for e in published if e.track}
    # A receiver learns of a participant before its tracks, and of its tracks' end before it leaves.
    flow = [e.type for e in events if e.type != "call.created"]
    assert flow == [
        "call.participant_joined",
        "call.track_published",
        "call.track_published",
        "call.track_unpublished",
        "call.track_unpublished",
        "call.participant_left",
    ], flow


def test_a_dead_receiver_never_delays_signaling(
    server_factory: Callable[..., ServerProcess], black_hole: BlackHole
) -> None:
    import hibiki

    # Open mode (no secret, so no REST auth) and a 30 s webhook timeout: a
    # join that waited for its participant_joined delivery would take 30 s.
    srv = server_factory("--webhook-url", black_hole.url, "--webhook-timeout", "30")
    channel = f"default:{new_call_id()}"

    async def body() -> list[float]:
        times = []
        for _ in range(3):
            started = time.monotonic()
            async with hibiki.connect(srv.signaling_url, role="recvonly", channel_id=channel, timeout=10):
                times.append(time.monotonic() - started)
                # Stay until the server has seen us connected and started a
                # delivery: a client that leaves at once may be gone before the
                # server's side of the media is up, and then it was no participant.
                deadline = time.monotonic() + 10
                while black_hole.accepted < 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        return times

    times = run(body(), timeout=60)
    assert max(times) < 5.0, f"joins took {times} s with a black-hole webhook"
    assert black_hole.accepted >= 1, "the server never tried delivering to the black hole"
    # Teardown checks the server still stops within 10 s with deliveries stuck.
