"""DataChannel signaling and messaging with the official sora-sdk client.

Each sora-sdk client runs in its own process (tests/sora_clients/sora_peer.py)
against a real ``hibiki serve``; the Hibiki SDK takes part as the other side.
Every wait has a deadline; messages are checked byte for byte.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import hibiki
import pytest
from conftest import ServerProcess, new_channel_id
from sora_clients.harness import SoraPeer


def dc_args(ignore: bool, *channels: str) -> list[str]:
    args = ["--data-channel-signaling", "--ignore-disconnect-websocket", "true" if ignore else "false"]
    for c in channels:
        args += ["--data-channel", c]
    return args


def wait(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("ignore", [False, True], ids=["hybrid", "datachannel-only"])
def test_sora_sdk_switches_renegotiates_and_disconnects_cleanly(server: ServerProcess, ignore: bool) -> None:
    channel = new_channel_id()
    with SoraPeer.start(
        server.signaling_url, "recvonly", channel, "--receive", *dc_args(ignore, "#chat:sendrecv"), name="sub"
    ) as sub:
        sub.wait_connected()
        switched = sub.wait_for(lambda e: e["event"] == "switched", 15, "switched")
        assert switched["message"] == {"type": "switched", "ignore_disconnect_websocket": ignore}
        # sora-sdk reports every listed label, system ones included.
        opened = {e["label"] for e in sub.wait_count(lambda e: e["event"] == "data_channel", 6, 10, "on_data_channel")}
        assert opened == {"signaling", "notify", "push", "stats", "rpc", "#chat"}, opened
        if ignore:
            sub.wait_for(lambda e: e["event"] == "ws_close", 10, "the client's own WebSocket close")
        # A publisher joins after the switch: the re-offer must travel on the
        # signaling data channel and the media must arrive.
        with SoraPeer.start(server.signaling_url, "sendonly", channel, "--send", name="pub") as pub:
            pub.wait_connected()
            sub.wait_for(
                lambda e: e["event"] == "signaling"
                and e["signaling_type"] == "DATACHANNEL"
                and e["direction"] == "RECEIVED"
                and e["message_type"] == "re-offer",
                15,
                "a re-offer over the signaling data channel",
            )
            counters = [
                e["counter"]
                for e in sub.wait_count(lambda e: e["event"] == "video" and e["counter"] is not None, 10, 20, "video")
            ]
            assert counters == sorted(counters) and counters[-1] > counters[0]
            # The notify about the publisher came over the notify channel too.
            sub.wait_for(
                lambda e: e["event"] == "notify" and e["message"].get("connection_id") == pub.wait_connected(),
                10,
                "connection.created of the publisher",
            )
        done = sub.disconnect()
        assert done["code"] == "CLOSE_SUCCEEDED", done
        expected = "DataChannel" if ignore else "DC signaling is enabled"
        assert expected in done["message"], done
    assert "Traceback" not in server.log_text()


def test_messaging_between_sora_sdk_and_hibiki_both_ways(server: ServerProcess) -> None:
    channel = new_channel_id()
    got: list[tuple[str, bytes]] = []
    opened = threading.Event()
    sdk = hibiki.Hibiki()
    conn = sdk.create_connection(
        [server.signaling_url],
        role="recvonly",
        channel_id=channel,
        data_channel_signaling=True,
        data_channels=[{"label": "#chat", "direction": "sendrecv", "header": [{"type": "sender_connection_id"}]}],
    )
    conn.on_message = lambda label, data: got.append((label, bytes(data)))
    conn.on_data_channel = lambda label: opened.set() if label == "#chat" else None
    conn.connect()
    try:
        assert opened.wait(15), "hibiki client: #chat did not open"
        with SoraPeer.start(
            server.signaling_url, "recvonly", channel, *dc_args(False, "#chat:sendrecv:compress"), name="sora"
        ) as sora:
            sora_id = sora.wait_connected()
            sora.wait_for(lambda e: e["event"] == "data_channel" and e["label"] == "#chat", 15, "#chat open")
            # sora-sdk -> Hibiki: compressed on the sender's side, plain with
            # the 26-byte sender header on ours.
            sora._command("send #chat hello from sora")
            sent = sora.wait_for(lambda e: e["event"] == "sent", 10, "send_data_channel result")
            assert sent["ok"] is True
            wait(lambda: got, 10, "message at the Hibiki client")
            assert got[0] == ("#chat", sora_id.encode() + b"hello from sora")
            # Hibiki -> sora-sdk (which asked for compression: the server
            # recompresses, the client decompresses).
            assert conn.send_data_channel("#chat", b"hello from hibiki")
            msg = sora.wait_for(lambda e: e["event"] == "message", 10, "message at sora-sdk")
            assert msg == {**msg, "label": "#chat", "data": "hello from hibiki"}
            done = sora.disconnect()
            assert done["code"] == "CLOSE_SUCCEEDED", done
    finally:
        conn.disconnect()


@pytest.mark.parametrize("ignore", [False, True], ids=["hybrid", "datachannel-only"])
def test_api_push_and_disconnect_over_data_channels(server: ServerProcess, ignore: bool) -> None:
    import httpx

    channel = new_channel_id()
    with SoraPeer.start(server.signaling_url, "recvonly", channel, *dc_args(ignore), name="sora") as sora:
        cid = sora.wait_connected()
        sora.wait_for(lambda e: e["event"] == "switched", 15, "switched")
        r = httpx.post(
            server.url + "/api",
            headers={"x-sora-target": "Sora_20160711.PushConnection"},
            json={"channel_id": channel, "connection_id": cid, "data": {"n": 1}},
        )
        assert r.status_code == 200, r.text
        push = sora.wait_for(lambda e: e["event"] == "push", 10, "push over the push channel")
        assert push["message"] == {"type": "push", "data": {"n": 1}}
        r = httpx.post(
            server.url + "/api",
            headers={"x-sora-target": "Sora_20151104.DisconnectConnection"},
            json={"channel_id": channel, "connection_id": cid},
        )
        assert r.status_code == 200, r.text
        done = sora.wait_disconnect(15)
        assert done["code"] == "CLOSE_SUCCEEDED", done
        assert "DISCONNECTED-API" in done["message"], done


def test_req_stats_over_the_stats_channel(server_factory: Any) -> None:
    """After switched the server asks for stats on `stats`; sora-sdk answers there with W3C reports."""
    server = server_factory("--ping-interval", "0.5")
    channel = new_channel_id()
    with SoraPeer.start(server.signaling_url, "sendonly", channel, "--send", *dc_args(False), name="sora") as sora:
        sora.wait_connected()
        sora.wait_for(lambda e: e["event"] == "switched", 15, "switched")
        wait(lambda: "stats over the data channel" in server.log_text(), 10, "a stats report over the data channel")
        line = next(x for x in server.log_text().splitlines() if "stats over the data channel" in x)
        assert int(line.rsplit(":", 1)[1].split()[0]) > 0, line
        sora.disconnect()
