"""The Sora-style HTTP API (``hibiki.server.api``): push, disconnect, list, key frames, errors.

Raw WebSocket clients that stop at the offer are enough for most targets
(a connection is listed, pushed to and disconnected from its offer on); the
notifies others see need real media connections (``conftest.Peer``), and the
official sora-sdk client proves push and API disconnect reach its callbacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from conftest import (
    Peer,
    ServerProcess,
    connect_and_get_offer,
    expect_close,
    is_notify,
    new_channel_id,
    recv_json,
    run,
    wait_until,
    with_engine,
)
from hibiki.server.api import ACTIONS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sora_clients.harness import SoraPeer

SECRET = "api-secret-0123456789abcdef0123456789ab"


def api(
    server: ServerProcess,
    target: str | None,
    body: Any = None,
    *,
    path: str = "/api",
    secret: str | None = None,
    raw: bytes | None = None,
    method: str = "POST",
) -> httpx.Response:
    """Call the API like Sora's tools do."""
    headers = {"content-type": "application/json"}
    if target is not None:
        headers["x-sora-target"] = target
    if secret is not None:
        headers["authorization"] = f"Bearer {secret}"
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    return httpx.request(method, server.url + path, headers=headers, content=content, timeout=10)


def assert_problem(response: httpx.Response, status: int, detail_start: str) -> dict[str, Any]:
    """An RFC 9457 problem document with ``status`` and a ``detail`` starting with ``detail_start``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    doc = response.json()
    assert doc["type"] == "about:blank"
    assert doc["status"] == status
    assert isinstance(doc["title"], str) and doc["title"]
    assert doc["detail"].startswith(detail_start), doc
    return dict(doc)


def test_target_table() -> None:
    assert set(ACTIONS) == {
        "Sora_20151104.DisconnectChannel",
        "Sora_20151104.DisconnectConnection",
        "Sora_20151104.DisconnectClient",
        "Sora_20201120.DisconnectChannelByRole",
        "Sora_20160711.PushChannel",
        "Sora_20160711.PushConnection",
        "Sora_20160711.PushClient",
        "Sora_20201120.PushChannelByRole",
        "Sora_20201013.ListConnections",
        "Sora_20201013.ListChannelConnections",
        "Sora_20241218.RequestKeyFrame",
        "Sora_20251217.RequestSimulcastRid",
        "Sora_20251210.RequestSimulcastRid",
        "Sora_20201005.RequestRtpStream",
        "Sora_20201005.ResetRtpStream",
    }


def test_errors(server: ServerProcess) -> None:
    assert_problem(api(server, None, {}), 400, "missing x-sora-target header")
    doc = assert_problem(api(server, "Sora_20990101.Nope", {}), 400, "unknown x-sora-target: 'Sora_20990101.Nope'")
    assert "target" not in doc
    push = "Sora_20160711.PushChannel"
    assert_problem(api(server, push, raw=b"{nope"), 400, "body is not JSON: ")
    assert_problem(api(server, push, raw=b"\xff\xfe"), 400, "body is not")
    doc = assert_problem(api(server, push, [1, 2]), 400, "body must be a JSON object, got array")
    assert doc["target"] == push
    assert_problem(api(server, push, {"data": {}}), 400, "missing field: channel_id")
    assert_problem(api(server, push, {"channel_id": 5, "data": {}}), 400, "invalid channel_id: must be a non-empty")
    assert_problem(api(server, push, {"channel_id": "c"}), 400, "missing field: data")
    assert_problem(api(server, push, {"channel_id": "c", "data": "text"}), 400, "invalid data: must be a JSON object")
    assert_problem(api(server, push, {"channel_id": "nobody-here", "data": {}}), 404, "channel 'nobody-here' has no")
    by_role = "Sora_20201120.PushChannelByRole"
    assert_problem(api(server, by_role, {"channel_id": "c", "role": "boss", "data": {}}), 404, "channel 'c'")
    get = api(server, push, method="GET")
    assert_problem(get, 405, "use POST, not GET")
    assert get.headers["allow"] == "POST"
    assert_problem(api(server, push, raw=b" " * (1024 * 1024 + 1)), 413, "body over")
    # The root path answers POST like /api (Sora's API listener); GET is the web page.
    assert_problem(api(server, push, {"channel_id": "x", "data": {}}, path="/"), 404, "channel 'x'")
    assert api(server, "Sora_20201013.ListConnections", path="/").json() == []
    page = httpx.get(server.url + "/", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/web/app.js">' in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{server.url}/web/{asset}", timeout=5)
        assert r.status_code == 200 and kind in r.headers["content-type"], (asset, r.headers)
    assert httpx.get(server.url + "/web/nope.js", timeout=5).status_code == 404
    assert "Traceback" not in server.log_text()


def test_bearer_secret(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--auth-secret", SECRET)
    target = "Sora_20201013.ListConnections"
    missing = api(server, target, {})
    assert_problem(missing, 401, "missing Authorization: Bearer <secret>")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(api(server, target, {}, secret="wrong"), 401, "wrong bearer secret")
    # Auth comes first: an unknown target does not tell an anonymous caller anything.
    assert_problem(api(server, "Sora_20990101.Nope", {}), 401, "missing Authorization")
    ok = api(server, target, {}, secret=SECRET)
    assert ok.status_code == 200 and ok.json() == []


def test_list_connections(server: ServerProcess) -> None:
    channel, other = new_channel_id(), new_channel_id()

    async def go() -> None:
        ws1, offer1 = await connect_and_get_offer(server, "sendonly", channel, client_id="cam", video={"bit_rate": 800})
        ws2, offer2 = await connect_and_get_offer(server, "recvonly", channel, audio=False)
        ws3, offer3 = await connect_and_get_offer(server, "sendrecv", other)
        listed = api(server, "Sora_20201013.ListChannelConnections", {"channel_id": channel}).json()
        assert [c["connection_id"] for c in listed] == [offer1["connection_id"], offer2["connection_id"]]
        first = listed[0]
        assert first == {
            "channel_id": channel,
            "session_id": offer1["session_id"],
            "connection_id": offer1["connection_id"],
            "client_id": "cam",
            "bundle_id": offer1["connection_id"],
            "role": "sendonly",
            "multistream": True,
            "simulcast": False,
            "spotlight": False,
            "audio": {"codec_type": "OPUS"},
            "video": {"codec_type": "VP8", "bit_rate": 800},
            "connected": False,  # stopped at the offer: no media
            "created_time": first["created_time"],
        }
        assert abs(first["created_time"] / 1e6 - time.time()) < 30
        assert listed[1]["audio"] is False and listed[1]["role"] == "recvonly"
        everything = api(server, "Sora_20201013.ListConnections").json()
        assert {c["connection_id"] for c in everything} == {
            offer1["connection_id"],
            offer2["connection_id"],
            offer3["connection_id"],
        }
        assert api(server, "Sora_20201013.ListChannelConnections", {"channel_id": "empty"}).json() == []
        for ws in (ws1, ws2, ws3):
            await ws.close()

    run(go())


async def _next_push(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    msg = await recv_json(ws, timeout)
    assert msg["type"] == "push", msg
    return msg


async def _no_message(ws: Any, wait: float = 0.3) -> None:
    try:
        msg = await recv_json(ws, wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected message {msg}")


def test_push_targets(server: ServerProcess) -> None:
    channel = new_channel_id()

    async def go() -> None:
        ws_a, offer_a = await connect_and_get_offer(server, "sendonly", channel, client_id="alice")
        ws_b, offer_b = await connect_and_get_offer(server, "recvonly", channel, client_id="bob")
        ws_c, _ = await connect_and_get_offer(server, "recvonly", channel, client_id="bob")
        everyone = (ws_a, ws_b, ws_c)

        data = {"text": "hello", "n": [1, 2, {"deep": None}]}
        answer = api(server, "Sora_20160711.PushChannel", {"channel_id": channel, "data": data})
        assert answer.status_code == 200
        assert answer.json()["data"] == data and len(answer.json()["connection_ids"]) == 3
        for ws in everyone:
            assert await _next_push(ws) == {"type": "push", "data": data}

        body = {"channel_id": channel, "connection_id": offer_b["connection_id"], "data": {"to": "b"}}
        assert api(server, "Sora_20160711.PushConnection", body).json()["connection_ids"] == [offer_b["connection_id"]]
        assert (await _next_push(ws_b))["data"] == {"to": "b"}

        body = {"channel_id": channel, "client_id": "bob", "data": {"to": "bobs"}}
        assert len(api(server, "Sora_20160711.PushClient", body).json()["connection_ids"]) == 2
        assert (await _next_push(ws_b))["data"] == {"to": "bobs"}
        assert (await _next_push(ws_c))["data"] == {"to": "bobs"}

        body = {"channel_id": channel, "role": "sendonly", "data": {"to": "senders"}}
        assert api(server, "Sora_20201120.PushChannelByRole", body).json()["connection_ids"] == [
            offer_a["connection_id"]
        ]
        assert (await _next_push(ws_a))["data"] == {"to": "senders"}
        body = {"channel_id": channel, "role": "sendrecv", "data": {"to": "nobody"}}
        assert api(server, "Sora_20201120.PushChannelByRole", body).json()["connection_ids"] == []
        for ws in everyone:
            await _no_message(ws)

        missing = {"channel_id": channel, "connection_id": "X" * 26, "data": {}}
        assert_problem(api(server, "Sora_20160711.PushConnection", missing), 404, f"no connection {'X' * 26!r}")
        missing = {"channel_id": channel, "client_id": "carol", "data": {}}
        assert_problem(api(server, "Sora_20160711.PushClient", missing), 404, "no connection with client_id 'carol'")
        for ws in everyone:
            await ws.close()

    run(go())


def test_disconnect_targets(server: ServerProcess) -> None:
    channel = new_channel_id()

    async def go() -> None:
        conns = [
            await connect_and_get_offer(server, role, channel, client_id=client)
            for role, client in [
                ("sendonly", "a"),
                ("recvonly", "b"),
                ("recvonly", "b"),
                ("sendrecv", "c"),
                ("sendrecv", "d"),
            ]
        ]
        (ws0, o0), (ws1, _), (ws2, _), (ws3, _), (ws4, _) = conns

        r = api(
            server, "Sora_20151104.DisconnectConnection", {"channel_id": channel, "connection_id": o0["connection_id"]}
        )
        assert r.status_code == 200 and r.json() == {"channel_id": channel, "connection_ids": [o0["connection_id"]]}
        assert await expect_close(ws0) == (1000, "DISCONNECTED-API", [])

        r = api(server, "Sora_20151104.DisconnectClient", {"channel_id": channel, "client_id": "b"})
        assert len(r.json()["connection_ids"]) == 2
        for ws in (ws1, ws2):
            assert await expect_close(ws) == (1000, "DISCONNECTED-API", [])

        r = api(server, "Sora_20201120.DisconnectChannelByRole", {"channel_id": channel, "role": "recvonly"})
        assert r.status_code == 200 and r.json()["connection_ids"] == []
        await _no_message(ws3)

        assert server.health()["connections"] == 2
        r = api(server, "Sora_20151104.DisconnectChannel", {"channel_id": channel})
        assert len(r.json()["connection_ids"]) == 2
        for ws in (ws3, ws4):
            assert await expect_close(ws) == (1000, "DISCONNECTED-API", [])
        wait_until(lambda: server.health()["connections"] == 0, 5, "everyone to leave")
        assert_problem(api(server, "Sora_20151104.DisconnectChannel", {"channel_id": channel}), 404, "channel")

    run(go())


def test_disconnect_notifies_the_others_and_keyframe(server: ServerProcess) -> None:
    """With media up: the others see connection.destroyed; RequestKeyFrame accepts senders only."""
    channel = new_channel_id()

    async def body(engine: Any) -> None:
        sender = await Peer.join(engine, server, channel, role="sendonly")
        watcher = await Peer.join(engine, server, channel, role="recvonly")
        await watcher.wait_for(is_notify("connection.created", watcher))
        await sender.wait_for(is_notify("connection.created", watcher))

        key = {"channel_id": channel, "connection_id": sender.connection_id}
        r = api(server, "Sora_20241218.RequestKeyFrame", key)
        assert r.status_code == 200 and r.json() == {}
        key = {"channel_id": channel, "connection_id": watcher.connection_id}
        assert_problem(api(server, "Sora_20241218.RequestKeyFrame", key), 400, "connection")

        listed = api(server, "Sora_20201013.ListChannelConnections", {"channel_id": channel}).json()
        assert [c["connected"] for c in listed] == [True, True]

        r = api(
            server, "Sora_20151104.DisconnectConnection", {"channel_id": channel, "connection_id": sender.connection_id}
        )
        assert r.status_code == 200
        assert await sender.wait_closed() == (1000, "DISCONNECTED-API")
        destroyed = await watcher.wait_for(is_notify("connection.destroyed", sender))
        assert destroyed["channel_connections"] == 1
        assert watcher.closed is None
        assert await watcher.disconnect() == (1000, "TYPE-DISCONNECT")

    run(with_engine(body))


def test_push_is_not_sent_before_the_offer_or_after_close(server: ServerProcess) -> None:
    """A closed connection is gone from the API at once; pushing to it is a 404, not a crash."""
    channel = new_channel_id()

    async def go() -> None:
        ws, offer = await connect_and_get_offer(server, "recvonly", channel)
        await ws.send(json.dumps({"type": "disconnect"}))
        assert await expect_close(ws) == (1000, "TYPE-DISCONNECT", [])
        body = {"channel_id": channel, "connection_id": offer["connection_id"], "data": {}}
        assert api(server, "Sora_20160711.PushConnection", body).status_code == 404
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()

    run(go())


# -- the official client --------------------------------------------------------------------------------


def test_sora_sdk_push_and_api_disconnect(server: ServerProcess) -> None:
    """Push reaches sora-sdk's on_push; an API disconnect reaches on_disconnect as CLOSE_SUCCEEDED DISCONNECTED-API."""
    channel = new_channel_id()
    with SoraPeer.start(server.signaling_url, "recvonly", channel, "--client-id", "viewer", name="viewer") as peer:
        cid = peer.wait_connected()
        data = {"message": "こんにちは", "list": [1, 2.5, True, None], "nested": {"a": {"b": "c"}}}
        r = api(server, "Sora_20160711.PushChannel", {"channel_id": channel, "data": data})
        assert r.status_code == 200
        push = peer.wait_for(lambda e: e["event"] == "push", 10, "on_push")
        assert push["message"] == {"type": "push", "data": data}
        r = api(server, "Sora_20160711.PushClient", {"channel_id": channel, "client_id": "viewer", "data": {"n": 2}})
        assert r.status_code == 200
        peer.wait_count(lambda e: e["event"] == "push", 2, 10, "second push")

        r = api(server, "Sora_20151104.DisconnectConnection", {"channel_id": channel, "connection_id": cid})
        assert r.status_code == 200
        event = peer.wait_disconnect(10)
        assert event["code"] == "CLOSE_SUCCEEDED", event
        assert "DISCONNECTED-API" in event["message"], event
        assert peer.snapshot("ws_close")[0]["code"] == 1000
        peer.assert_clean_exit()
    wait_until(lambda: server.health()["connections"] == 0, 5, "the connection to leave")


def test_sora_sdk_request_keyframe_raises_pli_count(server: ServerProcess) -> None:
    """RequestKeyFrame makes the sender's outbound video pliCount rise (the official test's check)."""
    channel = new_channel_id()
    with SoraPeer.start(server.signaling_url, "sendonly", channel, "--send", name="sender") as peer:
        cid = peer.wait_connected()

        def pli_count() -> int:
            for entry in peer.stats():
                if entry.get("type") == "outbound-rtp" and entry.get("kind") == "video":
                    return int(entry.get("pliCount", 0))
            return -1

        wait_until(lambda: pli_count() >= 0, 10, "outbound video stats")
        time.sleep(1.0)  # let any keyframe requests of the start settle
        before = pli_count()
        r = api(server, "Sora_20241218.RequestKeyFrame", {"channel_id": channel, "connection_id": cid})
        assert r.status_code == 200, r.text
        wait_until(lambda: pli_count() > before, 10, f"pliCount to rise above {before}")
        peer.disconnect()
        peer.assert_clean_exit()


# -- fuzzing ---------------------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["channel_id", "connection_id", "client_id", "role", "data"]
bodies = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values | st.just("ch"), max_size=5)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from([*ACTIONS, "Sora_x", ""]), body=bodies | json_values)
def test_fuzz_api(server: ServerProcess, target: str, body: Any) -> None:
    """Any target and body: 200, or a 400/404 problem document; never a 500 (the fixture checks for tracebacks)."""
    r = api(server, target, body)
    assert r.status_code in (200, 400, 404), (r.status_code, r.text)
    if r.status_code != 200:
        doc = r.json()
        assert doc["status"] == r.status_code and isinstance(doc["detail"], str) and doc["detail"]
