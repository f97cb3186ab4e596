"""The ``/v1`` connections API (``hibiki.server.rest.connections``) against a real server.

Real clients are connected: Hibiki SDK connections (``hibiki.connect``) for
push, disconnect, key frames and inbound stats, the official sora-sdk client
for libwebrtc's outbound stats, and raw signaling peers (``conftest.Peer``)
where the test must control exactly what the client answers to a stats ping.
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import hibiki
import httpx
from conftest import Peer, ServerProcess, run, wait_until, with_engine
from hibiki.api.models import ConnectionStatsResponse, ListConnectionsResponse
from hibiki.api.tokens import create_server_token, create_token
from sora_clients.harness import SoraPeer

SECRET = "connections-secret-0123456789abcdef0123"
API_KEY = "connections-key"
PING = ("--ping-interval", "0.5")
"""Stats ride on pings: a short interval makes them arrive quickly."""


def new_call() -> tuple[str, str]:
    """A (type, id) no other test uses; its cid is the channel the clients join."""
    return "default", f"conn-{uuid.uuid4().hex[:10]}"


def base(server: ServerProcess, call: tuple[str, str]) -> str:
    return f"{server.url}/v1/calls/{call[0]}/{call[1]}"


def cid_of(call: tuple[str, str]) -> str:
    return f"{call[0]}:{call[1]}"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A problem+json answer with ``status`` and the stable ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    doc = response.json()
    assert doc["status"] == status and doc["code"] == code, doc
    assert isinstance(doc["title"], str) and doc["title"]
    assert isinstance(doc["detail"], str) and doc["detail"]
    return dict(doc)


async def listed(http: httpx.AsyncClient, url: str) -> ListConnectionsResponse:
    r = await http.get(url + "/connections")
    assert r.status_code == 200, r.text
    return ListConnectionsResponse.model_validate(r.json())


async def stats_of(http: httpx.AsyncClient, url: str, connection_id: str | None) -> ConnectionStatsResponse:
    assert connection_id, "not connected"
    r = await http.get(f"{url}/connections/{connection_id}/stats")
    assert r.status_code == 200, r.text
    return ConnectionStatsResponse.model_validate(r.json())


async def poll(
    probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Await ``probe()`` until ``accept`` takes its result; fail with the last one after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        last = await probe()
        if accept(last):
            return last
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r:.2000}")
        await asyncio.sleep(0.1)


class Events:
    """The events of one Hibiki connection, pumped into a queue so waits can time out.

    (Cancelling ``anext()`` on the connection's event generator would close
    the generator; a pump task keeps it open across waits.)
    """

    def __init__(self, conn: hibiki.Connection) -> None:
        self.conn = conn
        self.seen: list[Any] = []
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self.conn.events():
            await self._queue.put(event)

    async def next(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The next event matching ``predicate`` (the ones skipped stay in :attr:`seen`)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._queue.get()
                    self.seen.append(event)
                    if predicate(event):
                        return event
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s; events: {self.seen}") from None

    def close(self) -> None:
        self._task.cancel()


def is_push(event: Any) -> bool:
    return isinstance(event, hibiki.events.Push)


@contextlib.asynccontextmanager
async def sdk(server: ServerProcess, call: tuple[str, str], role: str, **kwargs: Any) -> AsyncIterator[
    tuple[hibiki.Connection, Events]
]:
    """A connected Hibiki SDK connection to the call's channel, and its events."""
    conn = await hibiki.connect(server.signaling_url, role=role, channel_id=cid_of(call), timeout=15, **kwargs)
    events = Events(conn)
    try:
        yield conn, events
    finally:
        events.close()
        await conn.disconnect()


class VideoFeeder:
    """Feeds a video source with pictures in real time from a thread (the encoder needs them)."""

    def __init__(self, source: hibiki.VideoSource, fps: float = 15.0) -> None:
        self.source, self.fps = source, fps
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from hibiki.media.testsrc import test_pattern

        counter = 0
        next_at = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.source.on_captured(test_pattern(counter, 320, 240))
                counter += 1
                next_at += 1.0 / self.fps
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - surfaced by __exit__
            self.errors.append(exc)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(5)
        assert not self.errors, f"feeder failed: {self.errors!r}"


# -- list, push, disconnect -------------------------------------------------------------------


def test_list_push_and_disconnect_with_sdk_clients(server: ServerProcess) -> None:
    """Two SDK clients: listed oldest first; a call push reaches both, a connection push only
    its target; DELETE closes that one with 1000 DISCONNECTED-API and the other stays."""
    call = new_call()
    url = base(server, call)

    async def go() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await listed(http, url)).connections == []  # nobody there, no call stored: empty, not 404

            async with (
                sdk(server, call, "recvonly", client_id="alice") as (alice, alice_events),
                sdk(server, call, "sendrecv", client_id="bob", video_codec_type="VP8") as (bob, bob_events),
            ):
                result = await poll(
                    lambda: listed(http, url),
                    lambda r: len(r.connections) == 2 and all(c.connected for c in r.connections),
                    10, "both connections listed as connected")
                first, second = result.connections
                assert (first.connection_id, first.user_id, first.role) == (alice.connection_id, "alice", "recvonly")
                assert (second.connection_id, second.user_id, second.role) == (bob.connection_id, "bob", "sendrecv")
                assert first.call_cid == second.call_cid == cid_of(call)
                assert second.video_codec_type == "VP8" and second.audio_codec_type == "OPUS"
                assert first.joined_at <= second.joined_at
                assert abs(datetime.now(UTC) - first.joined_at) < timedelta(minutes=1)
                # Another call's channel is not this one.
                other = base(server, (call[0], call[1] + "-other"))
                assert (await listed(http, other)).connections == []

                data = {"text": "こんにちは", "n": [1, 2.5, True, None], "nested": {"a": {"b": "c"}}}
                r = await http.post(url + "/messages", json={"data": data})
                assert r.status_code == 200, r.text
                assert r.json() == {"connection_ids": [alice.connection_id, bob.connection_id]}
                for events in (alice_events, bob_events):
                    push = await events.next(is_push, 5, "the call push")
                    assert push.data == data

                # To alice only: bob's next push must be the call-wide one that follows.
                r = await http.post(f"{url}/connections/{alice.connection_id}/messages",
                                    json={"data": {"only": "alice"}})
                assert r.status_code == 200 and r.json() == {"connection_ids": [alice.connection_id]}
                r = await http.post(url + "/messages", json={"data": {"to": "all"}})
                assert r.status_code == 200
                assert (await alice_events.next(is_push, 5, "alice's own push")).data == {"only": "alice"}
                assert (await alice_events.next(is_push, 5, "the second call push")).data == {"to": "all"}
                assert (await bob_events.next(is_push, 5, "the second call push")).data == {"to": "all"}

                r = await http.delete(f"{url}/connections/{alice.connection_id}")
                assert r.status_code == 200, r.text
                assert r.json() == {"connection_ids": [alice.connection_id]}
                gone = await alice_events.next(
                    lambda e: isinstance(e, hibiki.events.Disconnected), 10, "alice's Disconnected")
                # The server's close frame. (The SDK's `code` can say PEER_CONNECTION_STATE_FAILED
                # when the media's DTLS close overtakes that frame: a server/SDK ordering matter,
                # not this API's; the close frame is what the API promises.)
                assert (gone.ws_close_code, gone.ws_close_reason) == (1000, "DISCONNECTED-API"), gone
                destroyed = await bob_events.next(
                    lambda e: isinstance(e, hibiki.events.Notify) and e.event_type == "connection.destroyed",
                    10, "bob's connection.destroyed about alice")
                assert destroyed.connection_id == alice.connection_id

                remaining = await listed(http, url)
                assert [c.connection_id for c in remaining.connections] == [bob.connection_id]
                assert_problem(await http.delete(f"{url}/connections/{alice.connection_id}"),
                               404, "connection_not_found")
                assert bob.connected  # untouched by the others' fate
            await poll(lambda: listed(http, url), lambda r: r.connections == [], 10, "everyone to leave")

    run(go())


# -- errors and auth --------------------------------------------------------------------------


def test_errors_are_problem_documents(server: ServerProcess) -> None:
    """Unknown connections are 404 connection_not_found on every route; bad paths and bodies 422;
    a push too big for a signaling message 413; nothing crashes the server."""
    call = new_call()
    url = base(server, call)
    missing = "WCJC78EWK935N7P7Z8FYAKFW9M"
    with httpx.Client(timeout=10) as http:
        for method, path, body in (
            ("DELETE", f"/connections/{missing}", None),
            ("POST", f"/connections/{missing}/messages", {"data": {}}),
            ("POST", f"/connections/{missing}/keyframe", None),
            ("GET", f"/connections/{missing}/stats", None),
        ):
            doc = assert_problem(http.request(method, url + path, json=body), 404, "connection_not_found")
            assert missing in doc["detail"] and cid_of(call) in doc["detail"]

        # Call types and ids are CALL_ID_PATTERN: no ':' (it joins them), at most 64 characters.
        for bad in (f"{server.url}/v1/calls/a:b/c/connections", f"{server.url}/v1/calls/t/{'x' * 65}/connections"):
            assert_problem(http.get(bad), 422, "validation_error")
        assert_problem(http.get(f"{url}/connections/{'C' * 65}/stats"), 422, "validation_error")

        bodies: list[dict[str, Any]] = [{"data": [1, 2]}, {"data": "text"}, {}, {"data": {}, "extra": 1}]
        for body in bodies:
            doc = assert_problem(http.post(url + "/messages", json=body), 422, "validation_error")
            assert doc["errors"], doc
        assert_problem(http.post(url + "/messages", content=b"{not json", headers={"content-type": "application/json"}),
                       422, "validation_error")
        # Python's parser takes NaN and Infinity; clients' parsers do not: never pushed.
        for raw in (b'{"data": {"x": NaN}}', b'{"data": {"x": [-Infinity]}}'):
            r = http.post(url + "/messages", content=raw, headers={"content-type": "application/json"})
            assert "NaN" in assert_problem(r, 422, "validation_error")["detail"]

        # The server's largest signaling message is 64 KiB by default.
        doc = assert_problem(http.post(url + "/messages", json={"data": {"blob": "x" * 70_000}}), 413, "payload_too_large")
        assert "65536" in doc["detail"]
        r = http.post(url + "/messages", json={"data": {"blob": "x" * 60_000}})
        assert r.status_code == 200 and r.json() == {"connection_ids": []}

        # Documented in the OpenAPI document with their problem answers.
        spec = http.get(server.url + "/openapi.json").json()
        paths = spec["paths"]
        for path, method in (
            ("/v1/calls/{type}/{id}/connections", "get"),
            ("/v1/calls/{type}/{id}/connections/{connection_id}", "delete"),
            ("/v1/calls/{type}/{id}/messages", "post"),
            ("/v1/calls/{type}/{id}/connections/{connection_id}/messages", "post"),
            ("/v1/calls/{type}/{id}/connections/{connection_id}/keyframe", "post"),
            ("/v1/calls/{type}/{id}/connections/{connection_id}/stats", "get"),
        ):
            operation = paths[path][method]
            assert operation["tags"] == ["connections"], operation
            assert {"200", "401", "403", "404", "422"} <= set(operation["responses"]), operation["responses"]
            assert "application/problem+json" in operation["responses"]["404"]["content"]
        assert "413" in paths["/v1/calls/{type}/{id}/messages"]["post"]["responses"]
    assert server.alive()


def test_auth_server_token_and_api_key(server_factory: Callable[..., ServerProcess]) -> None:
    """With a secret and a key: no token 401, a user token 403, a wrong key 401; a server token
    and the key list a client that joined with a user token (its user_id as user_id)."""
    server = server_factory("--api-secret", SECRET, "--api-key", API_KEY, *PING)
    call = new_call()
    url = base(server, call)
    good = {"Authorization": f"Bearer {create_server_token(SECRET)}", "X-Api-Key": API_KEY}

    async def go() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            assert_problem(await http.get(url + "/connections", headers={"X-Api-Key": API_KEY}), 401, "unauthorized")
            user = create_token(SECRET, "mallory")
            r = await http.get(url + "/connections", headers={"Authorization": f"Bearer {user}", "X-Api-Key": API_KEY})
            assert_problem(r, 403, "forbidden")
            r = await http.get(url + "/connections", headers={**good, "X-Api-Key": "wrong"})
            assert_problem(r, 401, "unauthorized")
            forged = create_server_token("another-secret-0123456789abcdef0123456")
            r = await http.post(url + "/messages", json={"data": {}},
                                headers={"Authorization": f"Bearer {forged}", "X-Api-Key": API_KEY})
            assert_problem(r, 401, "unauthorized")

            token = create_token(SECRET, "carol", call_cids=[cid_of(call)])
            async with sdk(server, call, "recvonly", metadata={"access_token": token}) as (carol, events):
                http.headers.update(good)
                result = await poll(lambda: listed(http, url), lambda r: len(r.connections) == 1, 10, "carol listed")
                assert result.connections[0].user_id == "carol"
                r = await http.post(f"{url}/connections/{carol.connection_id}/messages", json={"data": {"k": 1}})
                assert r.status_code == 200, r.text
                assert (await events.next(is_push, 5, "the push")).data == {"k": 1}
                stats = await poll(lambda: stats_of(http, url, carol.connection_id),
                                   lambda s: s.collected_at is not None, 10, "carol's stats")
                assert stats.connection_id == carol.connection_id

    run(go())


# -- key frames -------------------------------------------------------------------------------


def test_keyframe_request_reaches_the_publishers_source(server: ServerProcess) -> None:
    """POST .../keyframe makes the SFU send a PLI that reaches the SDK publisher's video source;
    a connection that sends no video gets 400."""
    call = new_call()
    url = base(server, call)
    factory = hibiki.Hibiki()
    source = factory.create_video_source()
    requests: list[float] = []
    forward = source.request_keyframe

    def counting(rid: str | None = None) -> None:
        requests.append(time.monotonic())
        forward(rid)

    # The connection calls video_source.request_keyframe(rid) on a PLI for its video mid.
    source.request_keyframe = counting  # type: ignore[method-assign]

    async def go() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            with VideoFeeder(source):
                async with (
                    sdk(server, call, "sendonly", video_source=source, audio=False, video_codec_type="VP8") as (pub, _),
                    sdk(server, call, "recvonly", audio=False) as (sub, sub_events),
                ):
                    added = await sub_events.next(lambda e: isinstance(e, hibiki.events.TrackAdded), 10,
                                                  "the video track")
                    await added.track.recv(timeout=10)  # media flows: the SFU knows the sender's video
                    r = await http.post(f"{url}/connections/{sub.connection_id}/keyframe")
                    assert_problem(r, 400, "bad_request")

                    # The start asks for key frames too (a new subscriber); wait until that is over.
                    async def quiet() -> int:
                        before = len(requests)
                        await asyncio.sleep(1.0)
                        return len(requests) - before

                    await poll(quiet, lambda n: n == 0, 15, "no key frame requests for a second")
                    before = len(requests)
                    r = await http.post(f"{url}/connections/{pub.connection_id}/keyframe")
                    assert r.status_code == 200, r.text
                    assert r.json() == {"connection_id": pub.connection_id}

                    async def count() -> int:
                        return len(requests)

                    await poll(count, lambda n: n > before, 5, "the source to get a key frame request")

    run(go())


# -- stats ------------------------------------------------------------------------------------


def _rtp(stats: ConnectionStatsResponse, kind: str, direction: str) -> dict[str, Any] | None:
    for entry in stats.reports:
        if entry.get("type") == f"{direction}-rtp" and entry.get("kind") == kind:
            return entry
    return None


def test_stats_from_sdk_subscriber_over_websocket_and_data_channels(server_factory: Callable[..., ServerProcess]) -> None:
    """A receiving SDK client's stats (inbound-rtp with frames received) come back and stay fresh,
    whether it answers WebSocket stats pings or, after switching to DataChannel signaling,
    req-stats on the stats channel."""
    server = server_factory(*PING)
    call = new_call()
    url = base(server, call)
    factory = hibiki.Hibiki()
    source = factory.create_video_source()

    async def go() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            with VideoFeeder(source):
                async with sdk(server, call, "sendonly", video_source=source, audio=False,
                               video_codec_type="VP8") as (pub, _):
                    for dc in (False, True):
                        extra: dict[str, Any] = {"data_channel_signaling": True} if dc else {}
                        async with sdk(server, call, "recvonly", audio=False, **extra) as (sub, events):
                            if dc:
                                await events.next(lambda e: isinstance(e, hibiki.events.Switched), 10, "Switched")

                            def receiving(s: ConnectionStatsResponse) -> bool:
                                entry = _rtp(s, "video", "inbound")
                                return entry is not None and int(entry.get("framesReceived", 0)) > 0

                            first = await poll(lambda: stats_of(http, url, sub.connection_id), receiving, 15,
                                               f"inbound-rtp video with frames (dc={dc})")
                            assert first.connection_id == sub.connection_id
                            assert first.collected_at is not None
                            assert abs(datetime.now(UTC) - first.collected_at) < timedelta(seconds=30)
                            entry = _rtp(first, "video", "inbound")
                            assert entry is not None and entry["timestamp"] > 0 and entry["id"]
                            # Later pings bring later reports: more frames, a later collection time.
                            n = int(entry["framesReceived"])
                            def more_frames(s: ConnectionStatsResponse, n: int = n) -> bool:
                                return int((_rtp(s, "video", "inbound") or {}).get("framesReceived", 0)) > n

                            later = await poll(lambda: stats_of(http, url, sub.connection_id), more_frames, 10,
                                               "a later report")
                            assert later.collected_at is not None and later.collected_at > first.collected_at
                            if dc:
                                # Not a WebSocket pong: the answer to req-stats on the stats channel.
                                line = next(x for x in server.log_text().splitlines()
                                            if str(sub.connection_id) in x and "stats over the data channel" in x)
                                assert int(line.rsplit(":", 1)[1].split()[0]) > 0, line
                    # The publisher reports what it sends (and, with no received tracks, no inbound-rtp).
                    def sending(s: ConnectionStatsResponse) -> bool:
                        entry = _rtp(s, "video", "outbound")
                        return entry is not None and int(entry.get("framesEncoded", 0)) > 10

                    pub_stats = await poll(lambda: stats_of(http, url, pub.connection_id), sending, 10,
                                           "the publisher's outbound-rtp")
                    assert _rtp(pub_stats, "video", "inbound") is None
                    out = _rtp(pub_stats, "video", "outbound")
                    assert out is not None and out["bytesSent"] > 1000 and out["pliCount"] >= 0
                    codecs = {e["id"]: e for e in pub_stats.reports if e.get("type") == "codec"}
                    assert codecs[out["codecId"]]["mimeType"] == "video/VP8"

    run(go())


def test_stats_from_sora_sdk_sender_have_outbound_rtp_and_count_plis(server_factory: Callable[..., ServerProcess]) -> None:
    """The official client answers stats pings with libwebrtc's report: outbound-rtp for audio and
    video. A keyframe request through the API raises its pliCount there."""
    server = server_factory(*PING)
    call = new_call()
    url = base(server, call)
    with SoraPeer.start(server.signaling_url, "sendonly", cid_of(call), "--send", name="sender") as peer:
        connection_id = peer.wait_connected()

        async def go() -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                def sending(s: ConnectionStatsResponse) -> bool:
                    video, audio = _rtp(s, "video", "outbound"), _rtp(s, "audio", "outbound")
                    return bool(video and audio and video.get("framesEncoded", 0) > 0 and audio.get("packetsSent", 0) > 0)

                stats = await poll(lambda: stats_of(http, url, connection_id), sending, 20,
                                   "outbound-rtp audio and video with data sent")
                types = {entry.get("type") for entry in stats.reports}
                assert {"outbound-rtp", "codec", "transport"} <= types, types

                def plis(s: ConnectionStatsResponse) -> int:
                    return int((_rtp(s, "video", "outbound") or {}).get("pliCount", 0))

                # Settle: the start asks for key frames too.
                async def settled() -> int:
                    a = plis(await stats_of(http, url, connection_id))
                    await asyncio.sleep(1.5)
                    return plis(await stats_of(http, url, connection_id)) - a

                await poll(settled, lambda d: d == 0, 20, "pliCount to stop moving")
                before = plis(await stats_of(http, url, connection_id))
                r = await http.post(f"{url}/connections/{connection_id}/keyframe")
                assert r.status_code == 200, r.text
                await poll(lambda: stats_of(http, url, connection_id), lambda s: plis(s) > before, 10,
                           f"pliCount above {before} in the API's stats")

        run(go())
        peer.disconnect()
        peer.assert_clean_exit()


def test_stats_absent_and_hostile_reports(server_factory: Callable[..., ServerProcess]) -> None:
    """A client that answers pings without stats has none (null collected_at, no reports); a
    report with NaN, non-objects and deep nesting is kept sanitised and still served as JSON."""
    server = server_factory(*PING)
    call = new_call()
    url = base(server, call)

    async def body(engine: Any) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            plain = await Peer.join(engine, server, cid_of(call))
            hostile = await Peer.join(engine, server, cid_of(call), answer_pings=False)
            ping = await hostile.wait_for(lambda m: m["type"] == "ping")
            assert ping == {"type": "ping", "stats": True}
            deep: Any = 1
            for _ in range(50):
                deep = {"d": deep}
            # Python's json accepts NaN/Infinity; the server must not pass them on.
            text = json.dumps({"type": "pong", "stats": [
                {"id": "A", "type": "inbound-rtp", "kind": "audio", "jitter": float("nan"), "x": [float("inf")],
                 "deep": deep},
                5, "text", None, [1],
            ]})
            await hostile.ws.send(text)
            stats = await poll(lambda: stats_of(http, url, hostile.connection_id),
                               lambda s: s.collected_at is not None, 5, "the hostile report")
            (entry,) = stats.reports
            assert entry["id"] == "A" and entry["jitter"] is None and entry["x"] == [None]
            depth, node = 0, entry["deep"]
            while isinstance(node, dict):
                node, depth = node["d"], depth + 1
            assert node is None and depth < 50

            # Several pings later the plain one still has nothing, and says so.
            await plain.wait_for(lambda m: sum(x["type"] == "ping" for x in plain.messages) >= 3)
            none = await stats_of(http, url, plain.connection_id)
            assert (none.collected_at, none.reports) == (None, [])

            await plain.disconnect()
            await hostile.disconnect()
            # Gone with its connection.
            r = await http.get(f"{url}/connections/{hostile.connection_id}/stats")
            assert_problem(r, 404, "connection_not_found")

    run(with_engine(body))
    wait_until(lambda: server.health()["connections"] == 0, 5, "the peers to leave")
