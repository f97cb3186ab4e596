"""Sora signaling over WebSocket, up to the offer, against a real ``hibiki serve``.

What needs a WebRTC peer to answer (connection.created, re-offers, media) is
tested with the client; here: the offer's shape and types (sora-signaling.md
§5.3, §13), disconnect, harmless silent sockets, and a fuzz test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import websockets
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
    recv_json,
    run,
    wait_until,
    with_engine,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROLES = ["sendrecv", "sendonly", "recvonly"]
CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _assert_id(value: Any) -> None:
    assert isinstance(value, str) and len(value) == 26 and set(value) <= CROCKFORD, value


def assert_offer_types(offer: dict[str, Any]) -> None:
    """Every field of the minimal offer (§5.3), with the JSON type the C++ client needs."""
    assert offer["type"] == "offer"
    assert isinstance(offer["sdp"], str) and offer["sdp"].startswith("v=0")
    _assert_id(offer["connection_id"])
    _assert_id(offer["session_id"])
    for name in ("client_id", "bundle_id", "channel_id", "version"):
        assert isinstance(offer[name], str) and offer[name], name
    config = offer["config"]
    assert isinstance(config, dict)
    assert isinstance(config["iceServers"], list)
    for server in config["iceServers"]:
        assert isinstance(server["urls"], list) and all(isinstance(u, str) for u in server["urls"])
        assert isinstance(server["username"], str) and isinstance(server["credential"], str)
    assert config["iceTransportPolicy"] in ("all", "relay")
    assert isinstance(offer["mid"], dict)
    assert set(offer["mid"]) <= {"audio", "video"}
    assert all(isinstance(v, str) for v in offer["mid"].values())
    assert offer["multistream"] is True
    assert isinstance(offer["spotlight"], bool)
    assert isinstance(offer["simulcast"], bool)
    if offer["simulcast"]:
        # libwebrtc ignores encodings whose rids differ from the SDP's (§8).
        assert [e["rid"] for e in offer["encodings"]] == ["r0", "r1", "r2"]
        assert all(isinstance(e["maxBitrate"], int) and e["active"] is True for e in offer["encodings"])
        assert "a=simulcast:recv r0;r1;r2" in offer["sdp"]
    for name in ("data_channel_signaling", "ignore_disconnect_websocket"):
        assert isinstance(offer[name], bool), name
    for entry in offer.get("data_channels", []):
        # The C++ client reads these with throwing accessors (§5.3).
        assert isinstance(entry["label"], str) and isinstance(entry["compress"], bool), entry
        assert entry["direction"] in ("sendrecv", "sendonly", "recvonly"), entry
    assert isinstance(offer["audio"], bool) and isinstance(offer["video"], bool)
    if offer["audio"]:
        assert offer["audio_codec_type"] == "OPUS"
    if offer["video"]:
        assert isinstance(offer["video_codec_type"], str)


def media_sections(sdp: str) -> list[dict[str, Any]]:
    """The m-lines of an SDP: kind, mid, direction."""
    sections: list[dict[str, Any]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append({"kind": line[2:].split()[0], "mid": None, "direction": None})
        elif sections and line.startswith("a=mid:"):
            sections[-1]["mid"] = line[len("a=mid:") :].strip()
        elif sections and line.strip() in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            sections[-1]["direction"] = line.strip()[2:]
    return sections


# -- the offer ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_offer_fields(server: ServerProcess, role: str) -> None:
    channel = new_channel_id()

    async def go() -> dict[str, Any]:
        ws, offer = await connect_and_get_offer(server, role=role, channel_id=channel)
        await ws.close()
        return offer

    offer = run(go())
    assert_offer_types(offer)
    assert offer["channel_id"] == channel
    # Defaults: client_id and bundle_id are the connection_id (§2).
    assert offer["client_id"] == offer["connection_id"]
    assert offer["bundle_id"] == offer["connection_id"]
    assert offer["config"] == {"iceServers": [], "iceTransportPolicy": "all"}
    assert offer["audio"] is True and offer["video"] is True
    assert offer["video_codec_type"] == "VP8"


@pytest.mark.parametrize("role", ROLES)
def test_offer_sdp(server: ServerProcess, role: str) -> None:
    async def go() -> dict[str, Any]:
        ws, offer = await connect_and_get_offer(server, role=role)
        await ws.close()
        return offer

    offer = run(go())
    sdp = offer["sdp"]
    assert "\r\n" in sdp, "SDP lines end with CRLF"
    assert re.search(r"^a=group:BUNDLE", sdp, re.M), sdp
    # Our candidates are in the SDP: the server never sends `candidate` (§5.5).
    assert re.search(r"^a=candidate:\S+ 1 (udp|UDP) ", sdp, re.M), sdp
    assert re.search(r"^a=ice-ufrag:", sdp, re.M) and re.search(r"^a=ice-pwd:", sdp, re.M)
    assert re.search(r"^a=fingerprint:", sdp, re.M)
    assert re.search(r"^a=setup:actpass", sdp, re.M)

    sections = media_sections(sdp)
    mids = offer["mid"]
    if role == "recvonly":
        assert mids == {}
    else:
        # Upstream m-lines first, audio then video, recvonly on our side (§13.2).
        assert set(mids) == {"audio", "video"}
        assert sections[0] == {"kind": "audio", "mid": mids["audio"], "direction": "recvonly"}, sections
        assert sections[1] == {"kind": "video", "mid": mids["video"], "direction": "recvonly"}, sections
        bundle = re.search(r"^a=group:BUNDLE (.*)$", sdp, re.M)
        assert bundle is not None
        assert {mids["audio"], mids["video"]} <= set(bundle.group(1).split())


@pytest.mark.parametrize(
    "fields,expect_mids",
    [
        ({"audio": False}, {"video"}),
        ({"video": False}, {"audio"}),
        ({"audio": {"codec_type": "OPUS", "bit_rate": 64}, "video": False}, {"audio"}),
        ({"video": {"codec_type": "VP8", "bit_rate": 1000}}, {"audio", "video"}),
    ],
)
def test_offer_follows_media_flags(server: ServerProcess, fields: dict[str, Any], expect_mids: set[str]) -> None:
    async def go() -> dict[str, Any]:
        ws, offer = await connect_and_get_offer(server, role="sendonly", **fields)
        await ws.close()
        return offer

    offer = run(go())
    assert_offer_types(offer)
    assert set(offer["mid"]) == expect_mids
    assert offer["audio"] is ("audio" in expect_mids)
    assert offer["video"] is ("video" in expect_mids)
    assert ("audio_codec_type" in offer) is ("audio" in expect_mids)
    assert ("video_codec_type" in offer) is ("video" in expect_mids)
    kinds = [s["kind"] for s in media_sections(offer["sdp"]) if s["direction"] == "recvonly"]
    assert sorted(kinds) == sorted(expect_mids)
    if isinstance(fields.get("audio"), dict):
        assert offer["audio_bit_rate"] == 64
    if isinstance(fields.get("video"), dict):
        assert offer["video_bit_rate"] == 1000


def test_client_and_bundle_id_are_echoed(server: ServerProcess) -> None:
    async def go() -> dict[str, Any]:
        ws, offer = await connect_and_get_offer(
            server,
            client_id="alice",
            bundle_id="bundle-1",
            metadata={"access_token": "x"},
            signaling_notify_metadata={"name": "Alice"},
            sora_client="Sora Python SDK 2025.4.0",
            libwebrtc="Shiguredo-Build M139",
        )
        await ws.close()
        return offer

    offer = run(go())
    assert offer["client_id"] == "alice"
    assert offer["bundle_id"] == "bundle-1"
    assert offer["connection_id"] not in ("alice", "bundle-1")


def test_simulcast_spotlight_and_data_channels_are_granted(server: ServerProcess) -> None:
    """Simulcast, spotlight and DC signaling are granted; unknown fields are ignored."""

    async def go() -> dict[str, Any]:
        ws, offer = await connect_and_get_offer(
            server,
            simulcast=True,
            spotlight=True,
            spotlight_number=2,
            spotlight_focus_rid="r2",
            data_channel_signaling=True,
            ignore_disconnect_websocket=True,
            data_channels=[{"label": "#chat", "direction": "sendrecv"}],
            multistream=True,
            redirect=True,
            forwarding_filters=[],
            sdp="v=0\r\n",  # the JS SDK's capability offer
            some_future_field={"x": 1},
        )
        await ws.close()
        return offer

    offer = run(go())
    assert_offer_types(offer)
    assert offer["simulcast"] is True and offer["spotlight"] is True
    assert [e["scaleResolutionDownBy"] for e in offer["encodings"]] == [4.0, 2.0, 1.0]
    assert offer["data_channel_signaling"] is True and offer["ignore_disconnect_websocket"] is True
    labels = [d["label"] for d in offer["data_channels"]]
    assert labels == ["signaling", "notify", "push", "stats", "rpc", "#chat"], labels


def test_session_id_per_channel(server: ServerProcess) -> None:
    async def go() -> None:
        channel = new_channel_id()
        a, offer_a = await connect_and_get_offer(server, channel_id=channel)
        b, offer_b = await connect_and_get_offer(server, channel_id=channel, role="recvonly")
        c, offer_c = await connect_and_get_offer(server)  # another channel
        assert offer_a["session_id"] == offer_b["session_id"]
        assert offer_c["session_id"] != offer_a["session_id"]
        assert len({offer_a["connection_id"], offer_b["connection_id"], offer_c["connection_id"]}) == 3
        health = server.health()
        assert (health["connections"], health["channels"]) == (3, 2)
        for ws in (a, b, c):
            await ws.close()
        # The channel emptied: a new session starts.
        wait_until(lambda: server.health()["connections"] == 0, what="connections to leave")
        d, offer_d = await connect_and_get_offer(server, channel_id=channel)
        assert offer_d["session_id"] != offer_a["session_id"]
        await d.close()

    run(go())


def test_connection_ids_are_unique(server: ServerProcess) -> None:
    async def go() -> set[str]:
        results = await asyncio.gather(*(connect_and_get_offer(server) for _ in range(30)))
        for ws, _ in results:
            await ws.close()
        return {offer["connection_id"] for _, offer in results}

    assert len(run(go())) == 30


def test_crockford_ids() -> None:
    from hibiki.server.ids import crockford_b32encode, new_connection_id

    # RFC 4648 base32 is the same bit layout with another alphabet.
    rfc, crockford = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    for data in (bytes(16), b"\xff" * 16, bytes(range(16)), b"\x12\x34" * 8):
        expected = base64.b32encode(data).decode().rstrip("=").translate(str.maketrans(rfc, crockford))
        assert crockford_b32encode(data) == expected
    assert crockford_b32encode(b"\xff" * 16) == "Z" * 25 + "W"
    ids = {new_connection_id() for _ in range(1000)}
    assert len(ids) == 1000
    for cid in ids:
        _assert_id(cid)


# -- health, disconnect, silent sockets --------------------------------------------------


def test_health(server: ServerProcess) -> None:
    health = server.health()
    assert health["status"] == "ok"
    assert health["connections"] == 0 and health["channels"] == 0
    assert isinstance(health["rtc_ports"], list) and health["rtc_ports"]
    assert all(isinstance(p, int) and 0 < p < 65536 for p in health["rtc_ports"])


@pytest.mark.parametrize("before_connect", [False, True], ids=["after-offer", "before-connect"])
def test_disconnect(server: ServerProcess, before_connect: bool) -> None:
    async def go() -> tuple[int, str, list[dict[str, Any]]]:
        if before_connect:
            ws = await open_ws(server)
        else:
            ws, _ = await connect_and_get_offer(server)
            assert server.health()["connections"] == 1
        await ws.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        return await expect_close(ws)

    assert run(go()) == (1000, "TYPE-DISCONNECT", [])
    assert server.health()["connections"] == 0


def test_client_close_leaves_channel(server: ServerProcess) -> None:
    async def go() -> None:
        ws, _ = await connect_and_get_offer(server)
        await ws.close()

    run(go())
    wait_until(lambda: server.health()["connections"] == 0, what="the connection to leave")


def test_liveness_messages_before_connected_are_harmless(server: ServerProcess) -> None:
    async def go() -> None:
        ws, _ = await connect_and_get_offer(server)
        await ws.send(json.dumps({"type": "pong"}))
        await ws.send(json.dumps({"type": "stats", "reports": []}))
        await ws.send(json.dumps({"type": "candidate", "candidate": ""}))  # end-of-candidates
        await ws.send(json.dumps({"type": "disconnect"}))
        assert await expect_close(ws) == (1000, "TYPE-DISCONNECT", [])

    run(go())


def test_sockets_that_never_speak(server: ServerProcess) -> None:
    """Open-and-close without a message is normal (§3.5): no error in the log, nothing left behind."""

    async def go() -> None:
        for _ in range(5):
            ws = await open_ws(server)
            await ws.close()
        sockets = await asyncio.gather(*(open_ws(server) for _ in range(10)))
        for ws in sockets:
            ws.transport.abort()

    run(go())
    wait_until(lambda: server.health()["sessions"] == 0, what="the silent sessions to end")
    log = server.log_text()
    assert " ERROR " not in log and " WARNING " not in log, log


def test_server_shutdown_with_open_sessions(server_factory: Callable[..., ServerProcess]) -> None:
    """SIGINT with sessions open: clients get a close frame, the server exits cleanly (fixture checks)."""
    server = server_factory()

    async def go() -> None:
        ws, _ = await connect_and_get_offer(server)
        idle = await open_ws(server)
        await asyncio.to_thread(server.stop)
        for sock in (ws, idle):
            code, _, _ = await expect_close(sock, timeout=10)
            assert code in (1001, 1012), code

    run(go())
    assert server.proc.returncode == 0


def test_python_m_hibiki_help() -> None:
    env = {"PYTHONPATH": str(PYTHON_SRC)}
    out = subprocess.run(
        [sys.executable, "-m", "hibiki", "serve", "--help"], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "--rtc-port" in out.stdout and "--public-ip" in out.stdout


# -- fuzzing -----------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
MESSAGE_TYPES = ["connect", "answer", "re-answer", "candidate", "pong", "disconnect", "stats", "offer", "x"]
CONNECT_FIELDS = [
    "role",
    "channel_id",
    "client_id",
    "bundle_id",
    "multistream",
    "simulcast",
    "simulcast_rid",
    "spotlight",
    "spotlight_number",
    "spotlight_focus_rid",
    "spotlight_unfocus_rid",
    "metadata",
    "signaling_notify_metadata",
    "audio",
    "video",
    "data_channel_signaling",
    "ignore_disconnect_websocket",
    "data_channels",
    "redirect",
    "e2ee",
]
field_values = (
    json_values
    | st.sampled_from(["sendrecv", "sendonly", "recvonly", "VP8", "VP9", "H264", "OPUS", "r0", "none", "", "x" * 300])
    | st.fixed_dictionaries(
        {}, optional={"codec_type": st.sampled_from(["VP8", "AV1", "OPUS", "bad"]), "bit_rate": json_values}
    )
)

random_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=5).flatmap(
    lambda d: st.sampled_from(MESSAGE_TYPES).map(lambda t: {**d, "type": t}) | st.just(d)
)


@st.composite
def mutated_connects(draw: st.DrawFn) -> dict[str, Any]:
    msg = connect_message(role=draw(st.sampled_from(ROLES)))
    for name in draw(st.lists(st.sampled_from(sorted(msg)), max_size=2, unique=True)):
        if name != "type":
            del msg[name]
    for name in draw(st.lists(st.sampled_from(CONNECT_FIELDS), max_size=4, unique=True)):
        msg[name] = draw(field_values)
    return msg


def _check_response(server: ServerProcess, message: dict[str, Any]) -> None:
    async def go() -> None:
        ws = await open_ws(server)
        await ws.send(json.dumps(message))
        # Liveness messages before connect get no answer: don't wait long for one.
        silent_ok = message.get("type") in ("pong", "stats")
        try:
            reply = await recv_json(ws, timeout=0.5 if silent_ok else 10.0)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "dropped without a close frame"
            if message.get("type") == "disconnect":
                assert (exc.rcvd.code, exc.rcvd.reason) == (1000, "TYPE-DISCONNECT")
            else:
                assert exc.rcvd.code in (4490, 1009), (exc.rcvd, message)
                assert exc.rcvd.reason
            return
        except TimeoutError:
            assert silent_ok, f"no answer to {message}"
            await ws.close()
            return
        assert reply["type"] == "offer", reply
        assert message.get("type") == "connect"
        assert_offer_types(reply)
        await ws.send(json.dumps({"type": "disconnect"}))
        assert await expect_close(ws) == (1000, "TYPE-DISCONNECT", [])

    run(go())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=random_objects | mutated_connects())
def test_fuzz_signaling(server: ServerProcess, message: dict[str, Any]) -> None:
    """Whatever a client sends, it gets an offer or a close with a code and reason; never 1011."""
    _check_response(server, message)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(random_objects | mutated_connects(), min_size=20, max_size=40))
def test_fuzz_in_parallel_leaves_server_healthy(server: ServerProcess, batch: list[dict[str, Any]]) -> None:
    """A burst of random messages on parallel sockets: the server ends clean and keeps serving."""

    async def one(msg: dict[str, Any]) -> None:
        ws = await open_ws(server)
        await ws.send(json.dumps(msg))
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            await asyncio.wait_for(ws.recv(), 2)
        await ws.close()

    async def go() -> None:
        await asyncio.gather(*(one(m) for m in batch))

    run(go())
    wait_until(lambda: server.health()["connections"] == 0, what="fuzz connections to leave")

    async def still_serving() -> None:
        ws, _ = await connect_and_get_offer(server)
        await ws.close()

    run(still_serving())


# -- with a real WebRTC peer (conftest.Peer) -----------------------------------------------

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def test_connection_notifies(server: ServerProcess) -> None:
    """connection.created to everyone including the newcomer (with `data`), destroyed to the rest (§5.7)."""
    channel = new_channel_id()

    async def body(engine: Any) -> None:
        a = await Peer.join(engine, server, channel, role="sendrecv", signaling_notify_metadata={"name": "A"})
        created_a = await a.wait_for(is_notify("connection.created", a))
        session_id = a.offer["session_id"]
        assert created_a == {
            "type": "notify",
            "event_type": "connection.created",
            "timestamp": created_a["timestamp"],
            "role": "sendrecv",
            "session_id": session_id,
            "client_id": a.connection_id,
            "bundle_id": a.connection_id,
            "connection_id": a.connection_id,
            "audio": True,
            "video": True,
            "minutes": 0,
            "channel_connections": 1,
            "channel_sendrecv_connections": 1,
            "channel_sendonly_connections": 0,
            "channel_recvonly_connections": 0,
            "turn_transport_type": "udp",
            "metadata": {"name": "A"},
            "data": [{"connection_id": a.connection_id, "client_id": a.connection_id, "metadata": {"name": "A"}}],
        }
        assert TIMESTAMP.match(created_a["timestamp"]), created_a["timestamp"]
        # Nothing is sent between the offer and the answer: the first message after the offer is this notify.
        assert a.messages[0]["type"] == "notify"

        b = await Peer.join(engine, server, channel, role="recvonly", client_id="bob", audio=False)
        created_b_self = await b.wait_for(is_notify("connection.created", b))
        assert created_b_self["data"] == [
            {"connection_id": a.connection_id, "client_id": a.connection_id, "metadata": {"name": "A"}},
            {"connection_id": b.connection_id, "client_id": "bob"},  # no notify metadata: no key
        ]
        assert "metadata" not in created_b_self
        assert (created_b_self["role"], created_b_self["audio"], created_b_self["video"]) == ("recvonly", False, True)
        assert created_b_self["session_id"] == session_id
        counts = {k: v for k, v in created_b_self.items() if k.startswith("channel_")}
        assert counts == {
            "channel_connections": 2,
            "channel_sendrecv_connections": 1,
            "channel_sendonly_connections": 0,
            "channel_recvonly_connections": 1,
        }
        created_b_for_a = await a.wait_for(is_notify("connection.created", b))
        assert "data" not in created_b_for_a
        assert {k: v for k, v in created_b_for_a.items() if k.startswith("channel_")} == counts
        assert server.health()["connections"] == 2

        assert await b.disconnect() == (1000, "TYPE-DISCONNECT")
        destroyed = await a.wait_for(is_notify("connection.destroyed", b))
        assert destroyed["client_id"] == "bob" and destroyed["role"] == "recvonly"
        assert (destroyed["channel_connections"], destroyed["channel_recvonly_connections"]) == (1, 0)
        assert isinstance(destroyed["minutes"], int)
        # Exactly once each.
        assert len(a.notifies("connection.created", b.connection_id)) == 1
        assert len(a.notifies("connection.destroyed", b.connection_id)) == 1
        assert len(a.notifies("connection.created", a.connection_id)) == 1

        await a.ws.close()
        await a.wait_closed()
        assert a.notifies("connection.destroyed", a.connection_id) == []
        wait_until(lambda: server.health()["connections"] == 0, what="everyone to leave")

    run(with_engine(body))


def test_ping_pong_and_ping_timeout(server_factory: Callable[..., ServerProcess]) -> None:
    """Pings every interval after CONNECTED; a client that stops answering is closed with 4491."""
    server = server_factory("--ping-interval", "0.25", "--ping-timeout", "1.5")
    channel = new_channel_id()

    async def body(engine: Any) -> None:
        good = await Peer.join(engine, server, channel)
        silent = await Peer.join(engine, server, channel, answer_pings=False)
        code, reason = await silent.wait_closed(timeout=10)
        assert (code, reason) == (4491, "ping timeout")
        pings = [m for m in silent.messages if m["type"] == "ping"]
        assert len(pings) >= 2 and all(p == {"type": "ping", "stats": True} for p in pings)
        # The one that answers is still there, and saw the other leave.
        await good.wait_for(is_notify("connection.destroyed", silent))
        assert good.closed is None
        assert len([m for m in good.messages if m["type"] == "ping"]) >= 4
        assert await good.disconnect() == (1000, "TYPE-DISCONNECT")

    run(with_engine(body))
