"""``redirect`` (sora-signaling.md §3.4): a node sends clients of a channel it does not hold elsewhere.

Two real servers: A runs with ``--redirect PATTERN=<B's signaling URL>``. A
client of a matching channel gets ``{"type":"redirect","location":...}`` and a
close 1000 ``REDIRECT`` from A, connects to B with ``"redirect": true`` and is
served there. A connect that was already redirected is never bounced again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from conftest import (
    PYTHON_SRC,
    ServerProcess,
    connect_and_get_offer,
    connect_message,
    expect_close,
    new_channel_id,
    open_ws,
    recv_json,
    run,
    wait_until,
)
from hibiki.server.placement import StaticPlacement, check_location, parse_redirect_rule
from hibiki.server.validation import ConnectRequest
from sora_clients.harness import SoraPeer


def test_static_placement() -> None:
    placement = StaticPlacement([("room-*", "ws://b:5000/signaling"), ("x?", "wss://c/signaling")])
    assert placement(ConnectRequest("sendonly", "room-1")) == "ws://b:5000/signaling"
    assert placement(ConnectRequest("sendonly", "xy")) == "wss://c/signaling"
    assert placement(ConnectRequest("sendonly", "xyz")) is None
    assert parse_redirect_rule("a*=ws://h:1/signaling?x=1") == ("a*", "ws://h:1/signaling?x=1")
    for bad in ("no-equals", "=ws://h/", "a=http://h/", "a=ws://"):
        with pytest.raises(ValueError):
            parse_redirect_rule(bad)
    with pytest.raises(ValueError):
        check_location("/relative")


def test_bad_redirect_option_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hibiki", "serve", "--redirect", "room=http://x/"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(PYTHON_SRC)},
        timeout=30,
    )
    assert out.returncode == 2 and "ws:// or wss://" in out.stderr


@pytest.fixture
def pair(server_factory: Callable[..., ServerProcess]) -> tuple[ServerProcess, ServerProcess]:
    """(A, B): A sends channels 'moved-*' to B."""
    b = server_factory()
    a = server_factory("--redirect", f"moved-*={b.signaling_url}")
    return a, b


def test_redirect_with_a_raw_client(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    channel = "moved-" + new_channel_id()

    async def go() -> None:
        ws = await open_ws(a)
        await ws.send(json.dumps(connect_message("sendrecv", channel)))
        code, reason, received = await expect_close(ws)
        assert received == [{"type": "redirect", "location": b.signaling_url}]
        assert (code, reason) == (1000, "REDIRECT")
        assert a.health()["connections"] == 0

        # What the client does next: the same connect, marked, to the location.
        ws_b, offer = await connect_and_get_offer(b, "sendrecv", channel, redirect=True)
        assert offer["channel_id"] == channel
        assert b.health()["connections"] == 1

        # A connect that already followed a redirect is not sent on again.
        ws_loop = await open_ws(a)
        await ws_loop.send(json.dumps(connect_message("sendrecv", channel, redirect=True)))
        code, reason, received = await expect_close(ws_loop)
        assert received == []
        assert (code, reason) == (4490, f"redirect loop: already redirected, placement says {b.signaling_url}")

        # Channels that match no rule are served by A itself.
        ws_a, _ = await connect_and_get_offer(a, "recvonly", new_channel_id())
        assert a.health()["connections"] == 1
        for sock in (ws_b, ws_a):
            await sock.send(json.dumps({"type": "disconnect"}))
            assert await expect_close(sock) == (1000, "TYPE-DISCONNECT", [])

    run(go())


def test_redirect_before_anything_else(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """The redirect is the only message (the C++ client drops anything else before the offer)."""
    a, b = pair

    async def go() -> dict[str, Any]:
        ws = await open_ws(a)
        await ws.send(json.dumps(connect_message("sendonly", "moved-x")))
        msg = await recv_json(ws)
        await expect_close(ws)
        return msg

    msg = run(go())
    assert msg == {"type": "redirect", "location": b.signaling_url}
    assert isinstance(msg["location"], str)


def test_sora_sdk_follows_the_redirect(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """The official client connects to A, is redirected, and ends up connected on B."""
    a, b = pair
    channel = "moved-" + new_channel_id()
    with SoraPeer.start(a.signaling_url, "sendonly", channel, "--send", name="redirected") as peer:
        cid = peer.wait_connected(20)
        received = [e["message_type"] for e in peer.snapshot("signaling") if e["direction"] == "RECEIVED"]
        assert received[:2] == ["redirect", "offer"], received
        sent = [e["message_type"] for e in peer.snapshot("signaling") if e["direction"] == "SENT"]
        assert sent.count("connect") == 2, sent
        assert b.health()["connections"] == 1 and a.health()["connections"] == 0
        assert "connect: role=sendonly" in b.log_text() and "(redirected)" in b.log_text()
        assert cid in b.log_text()
        event = peer.disconnect()
        assert event["code"] == "CLOSE_SUCCEEDED", event
        peer.assert_clean_exit()
    wait_until(lambda: b.health()["connections"] == 0, 5, "the connection to leave B")


def test_hibiki_client_follows_the_redirect_and_races_urls(pair: tuple[ServerProcess, ServerProcess]) -> None:
    """The Hibiki SDK races its signaling URLs (one dead), is redirected from A, and connects on B."""
    import socket

    import hibiki

    a, b = pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}/signaling"  # nothing listens there
    channel = "moved-" + new_channel_id()
    sdk = hibiki.Hibiki()
    conn = sdk.create_connection([dead, a.signaling_url], role="recvonly", channel_id=channel)
    seen: list[tuple[str, str]] = []
    conn.on_signaling_message = lambda kind, direction, text: seen.append((direction.name, json.loads(text)["type"]))
    conn.connect()
    try:
        assert b.health()["connections"] == 1 and a.health()["connections"] == 0
        assert conn.connection_id is not None and conn.connection_id in b.log_text()
        received = [t for d, t in seen if d == "RECEIVED"]
        assert received[:2] == ["redirect", "offer"], seen
        assert [t for d, t in seen if d == "SENT"].count("connect") == 2, seen
    finally:
        conn.disconnect()
    wait_until(lambda: b.health()["connections"] == 0, 5, "the connection to leave B")
