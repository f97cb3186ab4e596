"""Bad input never crashes the server or touches another session.

Each bad input gets the documented WebSocket close code and reason (see
``hibiki.server.close_codes``), and the server keeps serving: garbage on the
UDP media port included.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from conftest import (
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

SIGNALING_ERROR = 4490


async def _send_and_close(server: ServerProcess, *frames: str | bytes) -> tuple[int, str]:
    ws = await open_ws(server)
    for frame in frames:
        try:
            await ws.send(frame)
        except websockets.ConnectionClosed as exc:
            # The server may close (e.g. 1009) before a huge frame is fully written.
            assert exc.rcvd is not None, "dropped without a close frame"
            return exc.rcvd.code, exc.rcvd.reason
    code, reason, _ = await expect_close(ws)
    return code, reason


def _send_expect(server: ServerProcess, frames: list[str | bytes], code: int, reason: str) -> None:
    got = run(_send_and_close(server, *frames))
    assert got[0] == code, f"expected close {code} {reason!r}, got {got}"
    assert got[1].startswith(reason), f"expected close {code} {reason!r}, got {got}"


def _expect_offer_still_served(server: ServerProcess) -> None:
    """A well-behaved client still gets an offer, and /health is fine."""

    async def go() -> None:
        ws, offer = await connect_and_get_offer(server)
        assert offer["sdp"]
        await ws.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        code, reason, _ = await expect_close(ws)
        assert (code, reason) == (1000, "TYPE-DISCONNECT")

    run(go())
    assert server.health()["status"] == "ok"


# -- message-level errors ----------------------------------------------------------------

BAD_MESSAGES: list[tuple[str, str | bytes, str]] = [
    ("malformed json", "{not json", "invalid JSON: "),
    ("truncated json", '{"type": "connect", ', "invalid JSON: "),
    ("empty frame", "", "invalid JSON: "),
    ("array", "[1, 2]", "message must be a JSON object, got array"),
    ("number", "42", "message must be a JSON object, got number"),
    ("string", '"connect"', "message must be a JSON object, got string"),
    ("null", "null", "message must be a JSON object, got null"),
    ("no type", "{}", "missing field: type"),
    ("numeric type", '{"type": 1}', "invalid type: must be a string, got number"),
    ("null type", '{"type": null}', "invalid type: must be a string, got null"),
    ("unknown type", '{"type": "hello"}', "unknown message type: hello"),
    ("legacy update", '{"type": "update", "sdp": "v=0"}', "unknown message type: update"),
    ("binary frame", b'{"type": "connect"}', "binary frames are not supported"),
    ("deep nesting", "[" * 30_000 + "]" * 30_000, "invalid JSON: "),
]


@pytest.mark.parametrize("frame,reason", [(f, r) for _, f, r in BAD_MESSAGES], ids=[n for n, _, _ in BAD_MESSAGES])
def test_bad_message_closes_4490(server: ServerProcess, frame: str | bytes, reason: str) -> None:
    _send_expect(server, [frame], SIGNALING_ERROR, reason)
    _expect_offer_still_served(server)


def _connect(**fields: Any) -> str:
    return json.dumps(connect_message(**fields))


def _connect_without(name: str) -> str:
    msg = connect_message()
    del msg[name]
    return json.dumps(msg)


BAD_CONNECTS: list[tuple[str, str, str]] = [
    ("no channel_id", _connect_without("channel_id"), "missing field: channel_id"),
    ("no role", _connect_without("role"), "missing field: role"),
    ("empty channel_id", _connect(channel_id=""), "invalid channel_id: must not be empty"),
    ("numeric channel_id", _connect(channel_id=5), "invalid channel_id: must be a string, got number"),
    ("long channel_id", _connect(channel_id="x" * 256), "invalid channel_id: longer than 255 bytes"),
    ("multibyte channel_id", _connect(channel_id="é" * 128), "invalid channel_id: longer than 255 bytes"),
    ("bad role", _connect(role="publisher"), "invalid role: "),
    ("numeric role", _connect(role=1), "invalid role: "),
    ("numeric client_id", _connect(client_id=7), "invalid client_id: must be a string, got number"),
    ("long bundle_id", _connect(bundle_id="b" * 256), "invalid bundle_id: longer than 255 bytes"),
    ("multistream false", _connect(multistream=False), "multistream false is not supported"),
    ("multistream string", _connect(multistream="yes"), "invalid multistream: must be a boolean"),
    (
        "focus rid without spotlight",
        _connect(spotlight_focus_rid="r1"),
        "spotlight_focus_rid requires spotlight: true",
    ),
    (
        "unfocus rid without spotlight",
        _connect(spotlight_unfocus_rid="none", spotlight=False),
        "spotlight_unfocus_rid requires spotlight: true",
    ),
    ("video codec", _connect(video={"codec_type": "VP7"}), "invalid video.codec_type: "),
    ("audio codec", _connect(audio={"codec_type": "AAC"}), "invalid audio.codec_type: "),
    ("opus stereo type", _connect(audio={"opus_params": {"stereo": "yes"}}),
     "invalid audio.opus_params.stereo: must be bool"),
    ("opus minptime range", _connect(audio={"opus_params": {"minptime": 1000}}),
     "invalid audio.opus_params.minptime: 1000 is out of range"),
    ("video string", _connect(video="yes"), "invalid video: must be a boolean or an object, got string"),
    ("video bit_rate", _connect(video={"bit_rate": "fast"}), "invalid video.bit_rate: must be an integer"),
    ("audio bit_rate range", _connect(audio={"bit_rate": 9999}), "invalid audio.bit_rate: 9999 is out of range"),
    ("simulcast_rid", _connect(simulcast_rid="r9"), "invalid simulcast_rid: "),
    ("data_channels", _connect(data_channels={}), "invalid data_channels: must be an array"),
    ("e2ee", _connect(e2ee=True), "e2ee is not supported"),
]


@pytest.mark.parametrize("frame,reason", [(f, r) for _, f, r in BAD_CONNECTS], ids=[n for n, _, _ in BAD_CONNECTS])
def test_bad_connect_closes_4490(server: ServerProcess, frame: str, reason: str) -> None:
    _send_expect(server, [frame], SIGNALING_ERROR, reason)
    assert server.health()["connections"] == 0


def test_all_bad_inputs_on_one_server(server: ServerProcess) -> None:
    """Every bad input above, one after the other and concurrently, against one server."""

    async def go() -> None:
        frames = [f for _, f, _ in BAD_MESSAGES] + [f for _, f, _ in BAD_CONNECTS]
        results = await asyncio.gather(*(_send_and_close(server, f) for f in frames))
        for frame, (code, _) in zip(frames, results, strict=False):
            assert code == SIGNALING_ERROR, (frame[:80], code)

    run(go())
    _expect_offer_still_served(server)
    assert server.health()["connections"] == 0


def test_opus_params_shape_the_offer_fmtp(server: ServerProcess) -> None:
    """``audio.opus_params`` stereo/usedtx reach the offer's Opus fmtp; without them they are absent."""

    async def fmtp(audio: dict[str, object] | bool) -> str:
        ws = await open_ws(server)
        await ws.send(_connect(audio=audio))
        msg = await recv_json(ws)
        await ws.close()
        assert msg["type"] == "offer", msg
        sdp: str = msg["sdp"]
        pt = next(line.split()[0].split(":")[1] for line in sdp.splitlines()
                  if line.startswith("a=rtpmap:") and "opus/48000" in line.lower())
        return next(line for line in sdp.splitlines() if line.startswith(f"a=fmtp:{pt} "))

    async def go() -> None:
        stereo = await fmtp({"opus_params": {"stereo": True, "sprop_stereo": True, "usedtx": True}})
        assert "stereo=1" in stereo and "sprop-stereo=1" in stereo and "usedtx=1" in stereo, stereo
        plain = await fmtp(True)
        assert "stereo=1" not in plain and "usedtx=1" not in plain, plain

    run(go())


def test_unsupported_codec_name_is_refused_cleanly(server: ServerProcess) -> None:
    """A valid codec name the data plane may not implement: an offer, or 4490 with the SFU's message."""

    async def go() -> None:
        for codec in ("VP9", "AV1", "H264", "H265"):
            ws = await open_ws(server)
            await ws.send(_connect(video={"codec_type": codec}))
            try:
                msg = await recv_json(ws)
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == SIGNALING_ERROR, (codec, exc.rcvd)
                assert exc.rcvd.reason, codec
                continue
            assert msg["type"] == "offer"
            assert msg["video_codec_type"] == codec
            await ws.close()

    run(go())
    _expect_offer_still_served(server)


def test_oversized_message_closes_1009(server: ServerProcess) -> None:
    big = json.dumps(connect_message(metadata={"pad": "x" * 70_000}))
    _send_expect(server, [big], 1009, "message too big")
    # Past the WebSocket layer's own limit (1 MiB) the close code is the same.
    huge = json.dumps(connect_message(metadata={"pad": "x" * 2_000_000}))
    code, _ = run(_send_and_close(server, huge))
    assert code == 1009
    _expect_offer_still_served(server)


def test_message_just_under_the_limit_is_accepted(server: ServerProcess) -> None:
    async def go() -> None:
        msg = connect_message(metadata={"pad": ""})
        pad = 64 * 1024 - len(json.dumps(msg).encode()) - 16
        msg["metadata"]["pad"] = "x" * pad
        ws = await open_ws(server)
        await ws.send(json.dumps(msg))
        assert (await recv_json(ws))["type"] == "offer"
        await ws.close()

    run(go())


def test_invalid_utf8_text_frame(server: ServerProcess) -> None:
    """A text frame that is not UTF-8 is closed by the WebSocket layer (1007), without a traceback."""

    async def go() -> int:
        ws = await open_ws(server)
        await ws.send(b'{"type": "\xff\xfe"}', text=True)
        code, _, _ = await expect_close(ws)
        return code

    assert run(go()) == 1007
    _expect_offer_still_served(server)


def test_unexpected_messages_for_the_state(server: ServerProcess) -> None:
    answer = json.dumps({"type": "answer", "sdp": "v=0\r\n"})
    reanswer = json.dumps({"type": "re-answer", "sdp": "v=0\r\n"})
    candidate = json.dumps({"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"})
    # Before connect.
    _send_expect(server, [answer], SIGNALING_ERROR, "unexpected message answer in state WS_OPEN")
    _send_expect(server, [reanswer], SIGNALING_ERROR, "unexpected message re-answer in state WS_OPEN")
    _send_expect(server, [candidate], SIGNALING_ERROR, "unexpected message candidate in state WS_OPEN")

    async def after_offer(frame: str) -> tuple[int, str]:
        ws, _ = await connect_and_get_offer(server)
        await ws.send(frame)
        code, reason, _ = await expect_close(ws)
        return code, reason

    assert run(after_offer(_connect())) == (SIGNALING_ERROR, "unexpected message connect in state OFFER_SENT")
    assert run(after_offer(reanswer)) == (SIGNALING_ERROR, "unexpected message re-answer in state OFFER_SENT")
    wait_until(lambda: server.health()["connections"] == 0, what="connections to be cleaned up")


@pytest.mark.parametrize(
    "answer",
    [
        {"type": "answer", "sdp": "this is not an SDP"},
        {"type": "answer", "sdp": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"},
        {"type": "answer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 50},
    ],
    ids=["garbage", "no media", "repeated"],
)
def test_answer_with_garbage_sdp_closes_4490(server: ServerProcess, answer: dict[str, Any]) -> None:
    async def go() -> tuple[int, str]:
        ws, _ = await connect_and_get_offer(server)
        await ws.send(json.dumps(answer))
        code, reason, _ = await expect_close(ws)
        return code, reason

    code, reason = run(go())
    assert code == SIGNALING_ERROR
    assert reason and "\n" not in reason  # the data plane's message, on one line
    wait_until(lambda: server.health()["connections"] == 0, what="connections to be cleaned up")
    _expect_offer_still_served(server)


@pytest.mark.parametrize(
    "answer,reason",
    [
        ({"type": "answer"}, "invalid answer: missing field: sdp"),
        ({"type": "answer", "sdp": 1}, "invalid answer: sdp must be a string, got number"),
        ({"type": "answer", "sdp": "  "}, "invalid answer: sdp is empty"),
    ],
)
def test_answer_without_sdp_closes_4490(server: ServerProcess, answer: dict[str, Any], reason: str) -> None:
    async def go() -> tuple[int, str]:
        ws, _ = await connect_and_get_offer(server)
        await ws.send(json.dumps(answer))
        code, got, _ = await expect_close(ws)
        return code, got

    assert run(go()) == (SIGNALING_ERROR, reason)


def test_bad_candidates(server: ServerProcess) -> None:
    """Malformed candidate messages close with 4490; an unusable candidate line is only logged."""

    async def go() -> None:
        # Structurally wrong: 4490.
        for msg, reason in [
            ({"type": "candidate"}, "invalid candidate: missing field: candidate"),
            ({"type": "candidate", "candidate": 5}, "invalid candidate: candidate must be a string, got number"),
            ({"type": "candidate", "candidate": "hello"}, "invalid candidate: must start with 'candidate:'"),
        ]:
            ws, _ = await connect_and_get_offer(server)
            await ws.send(json.dumps(msg))
            code, got, _ = await expect_close(ws)
            assert code == SIGNALING_ERROR and got.startswith(reason), (msg, code, got)

        # A candidate line the data plane cannot use (trickled before the
        # answer, so it is only held) and end-of-candidates: the session goes on.
        ws, _ = await connect_and_get_offer(server)
        for cand in ["candidate:garbage", "candidate:1 1 udp x y z typ host", ""]:
            await ws.send(json.dumps({"type": "candidate", "candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}))
        await ws.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        code, got, msgs = await expect_close(ws)
        assert (code, got, msgs) == (1000, "TYPE-DISCONNECT", [])

    run(go())


def test_garbage_candidates_after_answer_are_not_fatal(server: ServerProcess) -> None:
    """Candidates the data plane rejects after the answer are logged, the session goes on."""
    from hibiki._core import ClientEngine

    engine = ClientEngine()

    async def go() -> None:
        ws, offer = await connect_and_get_offer(server)
        _, answer = engine.connect(offer["sdp"])
        await ws.send(json.dumps({"type": "answer", "sdp": answer}))
        for cand in [
            "candidate:garbage",
            "candidate:1 1 udp x y z typ host",
            "candidate:1 1 tcp 1 999.1.1.1 9 typ host tcptype active",
            "candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host",
            "a=candidate:" + "x" * 5000,
        ]:
            await ws.send(json.dumps({"type": "candidate", "candidate": cand}))
        await ws.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        code, reason, msgs = await expect_close(ws)
        assert (code, reason) == (1000, "TYPE-DISCONNECT")
        assert all(m["type"] in ("notify", "re-offer", "ping") for m in msgs), msgs

    try:
        run(go())
    finally:
        engine.close()
    wait_until(lambda: server.health()["connections"] == 0, what="the connection to leave")


def test_connect_timeout(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--connect-timeout", "0.5")

    async def go() -> tuple[int, str, float]:
        loop = asyncio.get_running_loop()
        ws = await open_ws(server)
        start = loop.time()
        code, reason, _ = await expect_close(ws, timeout=5)
        return code, reason, loop.time() - start

    code, reason, elapsed = run(go())
    assert (code, reason) == (SIGNALING_ERROR, "connect timeout")
    assert 0.3 < elapsed < 4.0


def test_close_reasons_fit_a_close_frame(server: ServerProcess) -> None:
    """Long values are cut so every close reason fits in 123 bytes (checked by expect_close)."""
    frames = [
        json.dumps({"type": "x" * 1000}),
        _connect(role="é" * 500),
        _connect(video={"codec_type": "日本" * 300}),
        _connect(channel_id=["x" * 500]),
    ]
    for frame in frames:
        code, reason = run(_send_and_close(server, frame))
        assert code == SIGNALING_ERROR
        assert len(reason.encode()) <= 123


# -- isolation ---------------------------------------------------------------------------


def test_garbage_from_one_connection_does_not_affect_another(server: ServerProcess) -> None:
    async def go() -> None:
        channel = new_channel_id()
        good, good_offer = await connect_and_get_offer(server, channel_id=channel)
        bad, bad_offer = await connect_and_get_offer(server, channel_id=channel)
        assert good_offer["session_id"] == bad_offer["session_id"]

        await bad.send(b"\x00\x01binary garbage")
        code, _, _ = await expect_close(bad)
        assert code == SIGNALING_ERROR

        # The good one is untouched: no message, socket alive, signaling works.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(good.recv(), 0.3)
        await asyncio.wait_for(await good.ping(), 5)
        await good.send(json.dumps({"type": "pong"}))
        await good.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        code, reason, msgs = await expect_close(good)
        assert (code, reason, msgs) == (1000, "TYPE-DISCONNECT", [])

    run(go())
    wait_until(lambda: server.health()["connections"] == 0, what="connections to be cleaned up")


def test_abrupt_tcp_close_cleans_up(server: ServerProcess) -> None:
    """A client that vanishes without a close frame leaves its channel."""

    async def go() -> None:
        ws, _ = await connect_and_get_offer(server)
        assert server.health()["connections"] == 1
        ws.transport.abort()  # RST, no close frame

    run(go())
    wait_until(lambda: server.health()["connections"] == 0, what="the vanished connection to be cleaned up")
    _expect_offer_still_served(server)


def test_silent_sockets_are_harmless(server: ServerProcess) -> None:
    """Clients race several URLs and close the losers without a word (sora-signaling.md §3.5)."""

    async def go() -> None:
        sockets = await asyncio.gather(*(open_ws(server) for _ in range(20)))
        await asyncio.gather(*(ws.close() for ws in sockets))
        for ws in sockets:
            assert ws.close_code == 1000

    run(go())
    wait_until(lambda: server.health()["sessions"] == 0, what="silent sessions to end")
    assert " ERROR " not in server.log_text()
    _expect_offer_still_served(server)


# -- garbage on the media port -----------------------------------------------------------


def _garbage_datagrams() -> list[bytes]:
    rng = os.urandom
    stun_header = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, rng(12))
    stun_bad_attr = struct.pack("!HHI12s", 0x0001, 8, 0x2112A442, rng(12)) + struct.pack("!HH", 0x0006, 200) + b"ab"
    stun_username = (
        struct.pack("!HHI12s", 0x0001, 12, 0x2112A442, rng(12)) + struct.pack("!HH", 0x0006, 8) + b"ufrg:abc"
    )
    rtp = bytes([0x80, 0x60]) + struct.pack("!HII", 1, 1234, 0xDEADBEEF) + rng(100)
    rtcp = bytes([0x81, 200]) + struct.pack("!HI", 6, 0xDEADBEEF) + rng(20)
    dtls_hello = bytes([0x16, 0xFE, 0xFD]) + rng(10) + b"\x00\x40" + rng(64)
    return [
        b"",
        b"\x00",
        rng(1),
        rng(20),
        rng(1200),
        rng(65000),
        stun_header[:10],  # truncated STUN
        stun_header,
        stun_bad_attr,
        stun_username,
        rtp,
        rtp[:5],
        rtcp,
        dtls_hello,
        dtls_hello[:7],
        bytes([0x17, 0xFE, 0xFD]) + rng(50),  # DTLS application data without a session
    ]


def test_udp_garbage_does_not_kill_the_server(server: ServerProcess) -> None:
    ports = server.rtc_ports
    assert ports, "health must list the RTC ports"

    async def go() -> None:
        # A session with a pending offer, so the data plane has ICE state to confuse.
        ws, _offer = await connect_and_get_offer(server)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _ in range(20):
                for port in ports:
                    for datagram in _garbage_datagrams():
                        try:
                            sock.sendto(datagram, ("127.0.0.1", port))
                        except OSError:
                            pass  # e.g. 65000 bytes over a small loopback MTU
        finally:
            sock.close()
        # The session is untouched: no message for it, and it still works.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
        await ws.send(json.dumps({"type": "disconnect"}))
        code, reason, _ = await expect_close(ws)
        assert (code, reason) == (1000, "TYPE-DISCONNECT")

    run(go())
    assert server.alive()
    assert server.health()["status"] == "ok"
    _expect_offer_still_served(server)


def test_answer_timeout(server_factory: Callable[..., ServerProcess]) -> None:
    """A client that takes the offer and never answers is closed, and its connection released."""
    server = server_factory("--answer-timeout", "0.5")

    async def go() -> tuple[int, str]:
        ws, _ = await connect_and_get_offer(server)
        code, reason, _ = await expect_close(ws, timeout=5)
        return code, reason

    assert run(go()) == (SIGNALING_ERROR, "answer timeout")
    assert server.health()["connections"] == 0


def test_media_that_never_comes_up_is_closed(server_factory: Callable[..., ServerProcess]) -> None:
    """A valid answer but no ICE/DTLS (the peer vanished): closed with 4492, connection released."""
    from hibiki._core import ClientEngine

    server = server_factory("--answer-timeout", "1")
    engine = ClientEngine()

    async def go() -> tuple[int, str]:
        ws, offer = await connect_and_get_offer(server)
        handle, answer = engine.connect(offer["sdp"])
        engine.close_connection(handle)  # no ICE will ever answer ours
        await ws.send(json.dumps({"type": "answer", "sdp": answer}))
        code, reason, _ = await expect_close(ws, timeout=10)
        return code, reason

    try:
        code, reason = run(go())
    finally:
        engine.close()
    assert code == 4492 and reason.startswith("media connection"), (code, reason)
    assert server.health()["connections"] == 0
