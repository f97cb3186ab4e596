"""The SDK's side of DataChannel signaling and messaging (sora-signaling.md §3.2, §3.3, §4.1, §5.5-5.12, §6, §7).

``hibiki serve`` does not speak DataChannel signaling yet, so these tests run
the client against :class:`MiniSora`: a small Sora-style signaling server
written here with ``websockets.serve`` on top of the real data plane,
``hibiki._core.Sfu``. Only the JSON signaling is hand-written; SCTP, the data
channels the server opens, messaging between connections (with the sender
header) and renegotiation are the real engine.

What is checked, each with a deadline:

* ``connect`` carries ``data_channel_signaling``, ``ignore_disconnect_websocket``
  and ``data_channels``; bad ``data_channels`` fail at creation;
* ``switched`` with ``ignore_disconnect_websocket`` false (DataChannel +
  WebSocket) and true (DataChannel only: ``on_ws_close(1000, "SELF-CLOSED")``);
* ``on_data_channel`` for the offer's ``#`` labels only; ``on_switched``;
* notify/push/req-stats/re-offer/close arriving over DataChannels, re-answer
  and disconnect leaving over the ``signaling`` DataChannel, WS ping still
  answered on the WebSocket; ``on_signaling_message`` for the DataChannel path;
* zlib on compressed labels in both directions, as seen on the wire; a
  non-zlib payload on a compressed label is dropped without harm;
* messaging between two Hibiki clients through the Sfu, with the 26-byte
  sender header;
* the three disconnect modes end without a hang, with sora-sdk's
  ``on_disconnect`` texts, and the timeout paths when the server ignores us.

Server-to-client DataChannel messages need ``Sfu.send_data`` and closing the
client's channels needs ``Sfu.close_channels``. If the extension was built
without them, server sends go through a *puppet*: a hidden connection in the
same channel whose system labels are messaging labels, so the Sfu forwards
its messages to the client (only for tests with one client per channel), and
the tests that need ``close_channels`` are skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

import hibiki
import pytest
import websockets
from conftest import new_channel_id, run
from hibiki._core import ClientEngine, Event, Sfu
from hibiki.client.connection import (
    DISCONNECT_SUCCEEDED_DC_AND_WS,
    DISCONNECT_SUCCEEDED_DC_ONLY,
)
from hibiki.client.events import DataChannelOpen, Message, Switched
from hibiki.server.ids import new_connection_id
from websockets.asyncio.server import ServerConnection

if TYPE_CHECKING:
    from hibiki._core import DataChannelSpec  # a TypedDict of the stub only

SYSTEM_LABELS = ("signaling", "notify", "push", "stats")
HAS_SFU_SEND = hasattr(Sfu, "send_data")
HAS_SFU_CLOSE = hasattr(Sfu, "close_channels")
needs_close_channels = pytest.mark.skipif(
    not HAS_SFU_CLOSE, reason="hibiki._core.Sfu.close_channels is not in this build of the extension")

DCSignalingType = hibiki.SignalingType
DCDirection = hibiki.SignalingDirection
Code = hibiki.SignalingErrorCode


# -- the signaling server ----------------------------------------------------------------


def _zlib_ok(data: bytes) -> bool:
    try:
        zlib.decompress(data)
    except zlib.error:
        return False
    return True


class Session:
    """One client on :class:`MiniSora`: its WebSocket, Sfu connection and what it sent."""

    def __init__(self, server: MiniSora, ws: ServerConnection, connect: dict[str, Any]) -> None:
        self.server = server
        self.ws = ws
        self.connect = connect
        self.cid = new_connection_id()
        self.channel_id: str = connect["channel_id"]
        self.dc_signaling = connect.get("data_channel_signaling") is True
        self.ignore_ws = connect.get("ignore_disconnect_websocket") is True
        self.compressed: dict[str, bool] = {}
        self.sfu_open: set[str] = set()
        self.sfu_closed: set[str] = set()
        self.switched = False
        self.ws_messages: list[dict[str, Any]] = []
        self.ws_close: tuple[int, str] | None = None
        """(code, reason) of the client's close frame, (1006, "") for a drop."""
        self.ws_closed = asyncio.Event()
        self.rx: list[tuple[str, bytes, bytes]] = []
        """(label, wire bytes, decoded payload) of every DataChannel message the client sent us."""
        self.rx_event = asyncio.Event()
        self.puppet: str | None = None
        self.puppet_handle: str | None = None
        self.puppet_open: set[str] = set()
        self.ended = False

    # -- helpers for tests --------------------------------------------------------------

    def send(self, label: str, message: dict[str, Any] | bytes) -> bool:
        """Send on the client's DataChannel ``label`` (zlib when the offer says so)."""
        payload = json.dumps(message).encode() if isinstance(message, dict) else message
        if self.compressed.get(label):
            payload = zlib.compress(payload)
        if self.puppet_handle is not None:
            return self.server.puppets.send_data(self.puppet_handle, label, payload)
        return self.server.sfu.send_data(self.cid, label, payload)

    def close_channels(self) -> None:
        if HAS_SFU_CLOSE:
            self.server.sfu.close_channels(self.cid)

    async def received(self, label: str, kind: str | None = None, timeout: float = 5.0) -> tuple[bytes, Any]:
        """The first message the client sent on ``label`` (and of JSON ``type`` ``kind``): (wire, payload)."""
        async with asyncio.timeout(timeout):
            while True:
                for lab, wire, payload in self.rx:
                    if lab != label:
                        continue
                    if kind is None:
                        return wire, payload
                    msg = json.loads(payload)
                    if msg.get("type") == kind:
                        return wire, msg
                self.rx_event.clear()
                await self.rx_event.wait()

    async def ws_received(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for msg in self.ws_messages:
                    if msg.get("type") == kind:
                        return msg
                await asyncio.sleep(0.02)

    # -- the exchange -------------------------------------------------------------------

    async def run(self) -> None:
        specs: list[DataChannelSpec] = []
        offer_channels: list[dict[str, Any]] = []
        puppet_mode = self.dc_signaling and self.server.needs_server_send and not HAS_SFU_SEND
        if self.dc_signaling:
            for label in self.server.system_labels:
                compress = label in self.server.compress
                self.compressed[label] = compress
                # In puppet mode the system labels are messaging labels, so the
                # Sfu forwards between the client and its puppet.
                specs.append({"label": label, "messaging": puppet_mode})
                offer_channels.append({"label": label, "compress": compress, "direction": "sendrecv"})
            for entry in self.connect.get("data_channels") or []:
                direction = entry["direction"]
                header = entry.get("header") or []
                specs.append({
                    "label": entry["label"],
                    "ordered": entry.get("ordered", True),
                    "max_packet_life_time": entry.get("max_packet_life_time"),
                    "max_retransmits": entry.get("max_retransmits"),
                    "protocol": entry.get("protocol", ""),
                    "send": direction in ("sendrecv", "sendonly"),
                    "recv": direction in ("sendrecv", "recvonly"),
                    "header": any(h.get("type") == "sender_connection_id" for h in header),
                })
                self.compressed[entry["label"]] = entry.get("compress") is True
                offer_channels.append({"label": entry["label"], "compress": entry.get("compress") is True,
                                       "direction": direction, **({"header": header} if header else {})})
        role = self.connect["role"]
        self.server.sessions[self.cid] = self
        created = self.server.sfu.create_connection(
            self.channel_id, self.cid,
            send_audio=role != "recvonly" and self.connect.get("audio") is not False,
            send_video=role != "recvonly" and self.connect.get("video") is not False,
            recv=role != "sendonly",
            data_channels=specs or None,
        )
        if puppet_mode:
            self._start_puppet()
        offer = {
            "type": "offer", "sdp": created.sdp, "connection_id": self.cid, "client_id": self.cid,
            "channel_id": self.channel_id, "config": {"iceServers": []},
            "mid": {k: v for k, v in (("audio", created.audio_mid), ("video", created.video_mid)) if v},
            "multistream": True, "data_channel_signaling": self.dc_signaling,
            "ignore_disconnect_websocket": self.ignore_ws,
        }
        if offer_channels:
            offer["data_channels"] = offer_channels
        await self.ws.send(json.dumps(offer))
        try:
            async for frame in self.ws:
                msg = json.loads(frame)
                self.ws_messages.append(msg)
                if msg["type"] in ("answer", "re-answer"):
                    self.server.sfu.accept_answer(self.cid, msg["sdp"])
                elif msg["type"] == "disconnect":
                    await self.ws.close(1000, "TYPE-DISCONNECT")
        except websockets.ConnectionClosed:
            pass
        rcvd = self.ws.protocol.close_rcvd
        self.ws_close = (rcvd.code, rcvd.reason) if rcvd is not None else (1006, "")
        self.ws_closed.set()
        if self.switched and self.ignore_ws:
            return  # DataChannel only: the connection lives on without its WebSocket (§3.3)
        if self.switched:
            await asyncio.sleep(1.0)  # a client may still say why over the signaling DataChannel
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.server.sfu.close_connection(self.cid)
        if self.puppet is not None:
            self.server.sfu.close_connection(self.puppet)

    def _start_puppet(self) -> None:
        self.puppet = new_connection_id()
        created = self.server.sfu.create_connection(
            self.channel_id, self.puppet, send_audio=False, send_video=False, recv=False,
            data_channels=[{"label": label, "messaging": True} for label in self.server.system_labels])
        handle, answer = self.server.puppets.connect(created.sdp)
        self.server.sfu.accept_answer(self.puppet, answer)
        self.puppet_handle = handle
        self.server.puppet_sessions[handle] = self

    def _maybe_switch(self) -> None:
        """Send ``switched`` once every system channel is open (§4.2)."""
        if self.switched or not self.dc_signaling or not self.server.auto_switch:
            return
        if not self.sfu_open.issuperset(SYSTEM_LABELS):
            return
        if self.puppet is not None and not self.puppet_open.issuperset(SYSTEM_LABELS):
            return
        self.switched = True
        asyncio.ensure_future(self.ws.send(json.dumps(
            {"type": "switched", "ignore_disconnect_websocket": self.ignore_ws})))

    def on_sfu_event(self, event: Event) -> None:
        if event.kind == "channel_open":
            self.sfu_open.add(event.label or "")
            self._maybe_switch()
        elif event.kind == "channel_close":
            self.sfu_closed.add(event.label or "")
        elif event.kind == "channel_data":
            self.on_client_data(event.label or "", event.data or b"")
        elif event.kind == "offer" and event.sdp:
            reoffer = {"type": "re-offer", "sdp": event.sdp}
            if self.switched:
                self.send("signaling", reoffer)
            else:
                asyncio.ensure_future(self.ws.send(json.dumps(reoffer)))

    def on_puppet_event(self, event: Event) -> None:
        if event.kind == "channel_open":
            self.puppet_open.add(event.label or "")
            self._maybe_switch()
        elif event.kind == "channel_data":
            self.on_client_data(event.label or "", event.data or b"")

    def on_client_data(self, label: str, wire: bytes) -> None:
        payload = zlib.decompress(wire) if self.compressed.get(label) else wire
        self.rx.append((label, wire, payload))
        self.rx_event.set()
        if label != "signaling":
            return
        msg = json.loads(payload)
        if msg["type"] == "re-answer":
            self.server.sfu.accept_answer(self.cid, msg["sdp"])
        elif msg["type"] == "disconnect" and not self.server.ignore_dc_disconnect:
            asyncio.ensure_future(self._dc_disconnect())

    async def _dc_disconnect(self) -> None:
        """The client's ``disconnect`` over DataChannel: close the WS (if any) with TYPE-DISCONNECT and every DC."""
        if not self.ws_closed.is_set():
            await self.ws.close(1000, "TYPE-DISCONNECT")
        self.close_channels()
        await asyncio.sleep(1.0)  # let the stream resets reach the client before the connection goes
        self.end()


class MiniSora:
    """A Sora-style signaling server for one test, on the real ``Sfu``.

    ``compress``: system labels offered with ``compress: true``.
    ``needs_server_send``: the test sends DataChannel messages to clients
    (uses a puppet connection when ``Sfu.send_data`` is missing).
    ``ignore_dc_disconnect``: do nothing on a DataChannel ``disconnect`` (timeout paths).
    ``auto_switch``: send ``switched`` once the system channels are open.
    ``rpc``: also open the ``rpc`` channel (§9).
    """

    def __init__(self, *, compress: frozenset[str] = frozenset(), needs_server_send: bool = False,
                 ignore_dc_disconnect: bool = False, auto_switch: bool = True, rpc: bool = False) -> None:
        self.compress = compress
        self.system_labels = (*SYSTEM_LABELS, "rpc") if rpc else SYSTEM_LABELS
        self.needs_server_send = needs_server_send
        self.ignore_dc_disconnect = ignore_dc_disconnect
        self.auto_switch = auto_switch
        self.sfu = Sfu("127.0.0.1", 0)
        self.puppets = ClientEngine()
        self.sessions: dict[str, Session] = {}
        self.puppet_sessions: dict[str, Session] = {}
        self.url = ""
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sfu.fileno(), self._drain_sfu)
        self._loop.add_reader(self.puppets.fileno(), self._drain_puppets)
        self._server = await websockets.serve(self._handle, "127.0.0.1", 0, compression=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/signaling"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        assert self._loop is not None
        self._loop.remove_reader(self.sfu.fileno())
        self._loop.remove_reader(self.puppets.fileno())
        self.sfu.close()
        self.puppets.close()

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            connect = json.loads(await asyncio.wait_for(ws.recv(), 5))
        except (TimeoutError, websockets.ConnectionClosed):
            return
        await Session(self, ws, connect).run()

    def _drain_sfu(self) -> None:
        for event in self.sfu.poll_events(1024):
            session = self.sessions.get(event.connection)
            if session is not None:
                session.on_sfu_event(event)

    def _drain_puppets(self) -> None:
        for event in self.puppets.poll_events(1024):
            session = self.puppet_sessions.get(event.connection)
            if session is not None:
                session.on_puppet_event(event)

    async def session_of(self, conn: hibiki.Connection, timeout: float = 5.0) -> Session:
        async with asyncio.timeout(timeout):
            while conn.connection_id not in self.sessions:
                await asyncio.sleep(0.01)
        return self.sessions[conn.connection_id or ""]


# -- the client side ----------------------------------------------------------------------


class Recorder:
    """Every sora-sdk style callback of a connection, recorded thread-safely."""

    def __init__(self, conn: hibiki.Connection) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._cond = threading.Condition()
        for name in ("on_switched", "on_data_channel", "on_message", "on_rpc", "on_notify", "on_push",
                     "on_ws_close", "on_disconnect", "on_signaling_message"):
            setattr(conn, name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(*args: Any) -> None:
            with self._cond:
                self.calls.append((name, args))
                self._cond.notify_all()
        return record

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self._cond:
            return [args for n, args in self.calls if n == name]

    async def wait(self, name: str, pred: Callable[..., bool] = lambda *a: True,
                   timeout: float = 5.0) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while True:
            for args in self.of(name):
                if pred(*args):
                    return args
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} matching within {timeout} s; calls: {self.calls}")
            await asyncio.sleep(0.02)


def dc_connection(url: str, channel_id: str, *, ignore_ws: bool, role: str = "recvonly",
                  data_channels: list[dict[str, Any]] | None = None,
                  disconnect_wait_timeout: float | None = None) -> hibiki.Connection:
    return hibiki.Hibiki().create_connection(
        [url], role, channel_id, audio=False, video=False,
        data_channel_signaling=True, ignore_disconnect_websocket=ignore_ws,
        data_channels=data_channels, disconnect_wait_timeout=disconnect_wait_timeout,
    )


async def wait_switched(conn: hibiki.Connection, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not conn.switched:
            await asyncio.sleep(0.02)


# -- tests ----------------------------------------------------------------------------------


def test_connect_message_and_argument_validation() -> None:
    conn = hibiki.Hibiki().create_connection(
        ["ws://127.0.0.1:9/signaling"], "sendrecv", "room",
        data_channel_signaling=True, ignore_disconnect_websocket=False,
        data_channels=[{"label": "#chat", "direction": "sendrecv", "compress": True, "ordered": False,
                        "max_retransmits": 0, "header": [{"type": "sender_connection_id"}],
                        "max_packet_life_time": None}],
    )
    msg = conn._connect_message
    assert msg["data_channel_signaling"] is True
    assert msg["ignore_disconnect_websocket"] is False
    assert msg["data_channels"] == [{"label": "#chat", "direction": "sendrecv", "ordered": False,
                                     "max_retransmits": 0, "compress": True,
                                     "header": [{"type": "sender_connection_id"}]}]
    plain = hibiki.Hibiki().create_connection(["ws://127.0.0.1:9/signaling"], "sendrecv", "room")
    assert not {"data_channel_signaling", "ignore_disconnect_websocket", "data_channels"} & set(plain._connect_message)
    sdk = hibiki.Hibiki()
    with pytest.raises(ValueError, match="direction"):
        sdk.create_connection(["ws://h/s"], "sendrecv", "r", data_channels=[{"label": "#a"}])
    with pytest.raises(ValueError, match="label"):
        sdk.create_connection(["ws://h/s"], "sendrecv", "r", data_channels=[{"direction": "sendrecv"}])
    with pytest.raises(TypeError, match="compress"):
        sdk.create_connection(["ws://h/s"], "sendrecv", "r",
                              data_channels=[{"label": "#a", "direction": "sendrecv", "compress": "yes"}])
    with pytest.raises(TypeError, match="max_retransmits"):
        sdk.create_connection(["ws://h/s"], "sendrecv", "r",
                              data_channels=[{"label": "#a", "direction": "sendrecv", "max_retransmits": True}])
    with pytest.warns(UserWarning, match="unknown key"):
        sdk.create_connection(["ws://h/s"], "sendrecv", "r",
                              data_channels=[{"label": "#a", "direction": "sendrecv", "colour": 1}])


@pytest.mark.timeout(60)
def test_switched_keeping_the_websocket_then_disconnect() -> None:
    """DataChannel + WebSocket: switched, WS ping still answered, disconnect over DC, the server closes the WS."""

    async def main() -> None:
        async with MiniSora() as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=False,
                                 data_channels=[{"label": "#chat", "direction": "sendrecv"}])
            rec = Recorder(conn)
            await conn.connect()
            session = await server.session_of(conn)
            assert session.connect["data_channel_signaling"] is True
            assert session.connect["ignore_disconnect_websocket"] is False
            await wait_switched(conn)
            raw = (await rec.wait("on_switched"))[0]
            assert json.loads(raw) == {"type": "switched", "ignore_disconnect_websocket": False}
            assert conn.websocket_connected
            # on_data_channel: once per label the offer lists, system labels
            # included, as the real sora-sdk 2025.4 does.
            for want in ("signaling", "notify", "push", "stats", "#chat"):
                await rec.wait("on_data_channel", lambda lab, want=want: lab == want)
            await asyncio.sleep(0.2)
            assert sorted(x[0] for x in rec.of("on_data_channel")) == ["#chat", "notify", "push", "signaling", "stats"]
            assert conn.open_data_channels >= {"signaling", "notify", "push", "stats", "#chat"}

            # The WebSocket is still answered after switched.
            await session.ws.send(json.dumps({"type": "ping"}))
            assert (await session.ws_received("pong")) == {"type": "pong"}

            t0 = time.monotonic()
            await conn.disconnect()
            elapsed = time.monotonic() - t0
            _, msg = await session.received("signaling", "disconnect", timeout=1)
            assert msg == {"type": "disconnect", "reason": "NO-ERROR"}
            assert not any(m["type"] == "disconnect" for m in session.ws_messages), "disconnect went over the WS"
            assert elapsed < 3, f"disconnect took {elapsed:.1f} s"
            assert conn.disconnect_code == Code.CLOSE_SUCCEEDED
            assert conn.disconnect_reason == DISCONNECT_SUCCEEDED_DC_AND_WS
            assert await rec.wait("on_disconnect") == (Code.CLOSE_SUCCEEDED, DISCONNECT_SUCCEEDED_DC_AND_WS)
            assert await rec.wait("on_ws_close") == (1000, "TYPE-DISCONNECT")
            sent_dc = [a for a in rec.of("on_signaling_message")
                       if a[0] == DCSignalingType.DATACHANNEL and a[1] == DCDirection.SENT]
            assert [json.loads(a[2])["type"] for a in sent_dc] == ["disconnect"]
            reported = [json.loads(a[2])["type"] for a in rec.of("on_signaling_message")]
            assert "switched" not in reported and "ping" not in reported and "pong" not in reported

    run(main(), timeout=50)


@pytest.mark.timeout(60)
def test_server_messages_over_datachannels_with_zlib() -> None:
    """notify, push, req-stats, re-offer on (compressed) DCs; re-answer back on the DC; WS stats ping -> stats DC."""

    async def main() -> None:
        compress = frozenset({"signaling", "notify", "stats"})  # push stays plain
        async with MiniSora(compress=compress, needs_server_send=True) as server:
            channel = new_channel_id()
            conn = dc_connection(server.url, channel, ignore_ws=False)
            rec = Recorder(conn)
            events: list[Any] = []

            async def collect() -> None:
                async for event in conn:
                    events.append(event)

            collector = asyncio.ensure_future(collect())
            await conn.connect()
            session = await server.session_of(conn)
            await wait_switched(conn)
            # The event reaches the collector task a moment after conn.switched is set.
            deadline = time.monotonic() + 5
            while not any(isinstance(e, Switched) for e in events) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert any(isinstance(e, Switched) and not e.ignore_disconnect_websocket for e in events), events

            notify = {"type": "notify", "event_type": "connection.created", "connection_id": conn.connection_id}
            assert session.send("notify", notify)
            assert json.loads((await rec.wait("on_notify"))[0]) == notify
            assert conn.self_notified
            push = {"type": "push", "data": {"hello": "world"}}
            assert session.send("push", push)
            assert json.loads((await rec.wait("on_push"))[0]) == push

            # req-stats -> stats on the stats DC, compressed on the wire.
            assert session.send("stats", {"type": "req-stats"})
            wire, stats = await session.received("stats", "stats")
            assert _zlib_ok(wire) and isinstance(stats["reports"], list)
            assert any(r.get("type") == "data-channel" and r.get("label") == "notify" and r["messagesReceived"] >= 1
                       for r in stats["reports"]), stats
            # A WS ping asking for stats is answered on the stats DC once switched (§5.9).
            session.rx.clear()
            await session.ws.send(json.dumps({"type": "ping", "stats": True}))
            await session.received("stats", "stats")
            assert not any(m["type"] == "pong" for m in session.ws_messages)

            # Renegotiation: a publisher joins; the re-offer goes out on the signaling DC,
            # the re-answer must come back there (zlib) and be applied (a track appears).
            audio = hibiki.Hibiki().create_audio_source(1, 48_000)
            publisher = hibiki.Hibiki().create_connection([server.url], "sendonly", channel, video=False,
                                                          audio_source=audio)
            await publisher.connect()
            wire, answer = await session.received("signaling", "re-answer")
            assert _zlib_ok(wire) and answer["sdp"].startswith("v=0")
            assert not any(m["type"] == "re-answer" for m in session.ws_messages)
            track = await conn.wait_for_track("audio", timeout=5)
            assert track.stream_id == publisher.connection_id
            for kind, direction in (("re-offer", DCDirection.RECEIVED), ("re-answer", DCDirection.SENT)):
                await rec.wait("on_signaling_message", lambda path, d, text, k=kind, want=direction:
                               path == DCSignalingType.DATACHANNEL and d == want and json.loads(text)["type"] == k)

            # Plain JSON on a compressed label is dropped, not fatal (libsora would crash, §6.4).
            session.compressed["notify"] = False
            assert session.send("notify", {"type": "notify", "event_type": "raw"})
            session.compressed["notify"] = True
            assert session.send("notify", {"type": "notify", "event_type": "after"})
            await rec.wait("on_notify", lambda text: json.loads(text)["event_type"] == "after")
            assert not any(json.loads(a[0]).get("event_type") == "raw" for a in rec.of("on_notify"))
            assert conn.connected

            await publisher.disconnect()
            await conn.disconnect()
            assert conn.disconnect_code == Code.CLOSE_SUCCEEDED, conn.disconnect_reason
            wire, _ = await session.received("signaling", "disconnect")
            assert _zlib_ok(wire), "disconnect on a compressed signaling channel must be zlib"
            await asyncio.wait_for(collector, 5)

    run(main(), timeout=50)


@pytest.mark.timeout(60)
def test_switched_dropping_the_websocket() -> None:
    """DataChannel only: the SDK closes the WS itself (SELF-CLOSED), the connection lives on, messages still flow."""

    async def main() -> None:
        async with MiniSora(needs_server_send=True) as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=True, disconnect_wait_timeout=2.0,
                                 data_channels=[{"label": "#chat", "direction": "sendrecv"}])
            rec = Recorder(conn)
            await conn.connect()
            session = await server.session_of(conn)
            await wait_switched(conn)
            assert await rec.wait("on_ws_close") == (1000, "SELF-CLOSED")
            await asyncio.wait_for(session.ws_closed.wait(), 5)
            assert session.ws_close == (1000, "")  # a normal close frame, not a drop
            assert not conn.websocket_connected and conn.connected
            assert json.loads((await rec.wait("on_switched"))[0])["ignore_disconnect_websocket"] is True
            # Signaling goes on over DataChannels only.
            assert session.send("push", {"type": "push", "data": 1})
            await rec.wait("on_push")
            assert conn.send_data_channel("#chat", b"still here")
            assert conn.connected and conn.state == "connected"
            await conn.disconnect()
            _, msg = await session.received("signaling", "disconnect")
            assert msg == {"type": "disconnect", "reason": "NO-ERROR"}
            # on_ws_close is not reported a second time.
            assert rec.of("on_ws_close") == [(1000, "SELF-CLOSED")]

    run(main(), timeout=50)


@needs_close_channels
@pytest.mark.timeout(60)
def test_datachannel_only_disconnect_succeeds_when_the_channels_close() -> None:
    async def main() -> None:
        async with MiniSora() as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=True)
            rec = Recorder(conn)
            await conn.connect()
            await wait_switched(conn)
            await rec.wait("on_ws_close")
            t0 = time.monotonic()
            await asyncio.to_thread(conn.disconnect)  # the blocking face
            elapsed = time.monotonic() - t0
            assert elapsed < 3, f"disconnect took {elapsed:.1f} s"
            assert (conn.disconnect_code, conn.disconnect_reason) == (Code.CLOSE_SUCCEEDED,
                                                                      DISCONNECT_SUCCEEDED_DC_ONLY)
            assert await rec.wait("on_disconnect") == (Code.CLOSE_SUCCEEDED, DISCONNECT_SUCCEEDED_DC_ONLY)

    run(main(), timeout=50)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore_ws", [False, True], ids=["dc+ws", "dc-only"])
def test_disconnect_times_out_when_the_server_ignores_it(ignore_ws: bool) -> None:
    """No hang: CLOSE_FAILED after disconnect_wait_timeout; 4999 while a WebSocket was involved."""

    async def main() -> None:
        async with MiniSora(ignore_dc_disconnect=True) as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=ignore_ws, disconnect_wait_timeout=1.0)
            rec = Recorder(conn)
            await conn.connect()
            await wait_switched(conn)
            if ignore_ws:
                await rec.wait("on_ws_close")
            t0 = time.monotonic()
            await conn.disconnect()
            elapsed = time.monotonic() - t0
            assert 0.9 < elapsed < 3.0, f"disconnect took {elapsed:.2f} s"
            assert conn.disconnect_code == Code.CLOSE_FAILED
            assert "DISCONNECT-WAIT-TIMEOUT-ERROR" in (conn.disconnect_reason or "")
            if ignore_ws:
                assert "DataChannel" in (conn.disconnect_reason or "")
                assert rec.of("on_ws_close") == [(1000, "SELF-CLOSED")]
            else:
                assert await rec.wait("on_ws_close") == (4999, "DISCONNECT-WAIT-TIMEOUT-ERROR")

    run(main(), timeout=50)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore_ws", [False, True], ids=["dc+ws", "dc-only"])
def test_server_close_message_over_datachannel(ignore_ws: bool) -> None:
    """``{"type":"close"}`` on the signaling DC then the channels close: CLOSE_SUCCEEDED with the reason."""

    async def main() -> None:
        async with MiniSora(needs_server_send=True, compress=frozenset({"signaling"})) as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=ignore_ws, disconnect_wait_timeout=2.0)
            rec = Recorder(conn)
            await conn.connect()
            session = await server.session_of(conn)
            await wait_switched(conn)
            if ignore_ws:
                await rec.wait("on_ws_close")
            close = {"type": "close", "code": 1000, "reason": "DISCONNECTED-API"}
            t0 = time.monotonic()
            assert session.send("signaling", close)
            session.close_channels()
            if not ignore_ws:
                await session.ws.close(1000, "DISCONNECTED-API")
            code, reason = await rec.wait("on_disconnect", timeout=5)
            elapsed = time.monotonic() - t0
            assert code == Code.CLOSE_SUCCEEDED and "DISCONNECTED-API" in reason, reason
            assert conn.close_message == close
            if HAS_SFU_CLOSE or not ignore_ws:  # else: the channels never close, the timeout ends it
                assert elapsed < 1.5, f"took {elapsed:.1f} s to notice the close"
            if not ignore_ws:
                assert (await rec.wait("on_ws_close")) == (1000, "DISCONNECTED-API")
            received = [json.loads(a[2]) for a in rec.of("on_signaling_message")
                        if a[:2] == (DCSignalingType.DATACHANNEL, DCDirection.RECEIVED)]
            assert received == [close]
            session.end()

    run(main(), timeout=50)


@pytest.mark.timeout(90)
def test_messaging_between_two_hibiki_clients() -> None:
    """'#' labels through the Sfu: sender header, zlib both ways, directions, bad zlib dropped; both faces."""

    async def main() -> None:
        async with MiniSora() as server:
            channel = new_channel_id()
            a = dc_connection(server.url, channel, ignore_ws=False, role="sendrecv", data_channels=[
                {"label": "#chat", "direction": "sendrecv"},
                {"label": "#zip", "direction": "sendrecv", "compress": True},
                {"label": "#feed", "direction": "sendonly"},
            ])
            b = dc_connection(server.url, channel, ignore_ws=True, role="sendrecv", disconnect_wait_timeout=2.0,
                              data_channels=[
                {"label": "#chat", "direction": "sendrecv", "header": [{"type": "sender_connection_id"}]},
                {"label": "#zip", "direction": "sendrecv", "compress": True},
                {"label": "#feed", "direction": "recvonly"},
            ])
            rec_a, rec_b = Recorder(a), Recorder(b)
            b_events: list[Any] = []

            async def collect() -> None:
                async for event in b:
                    b_events.append(event)

            await a.connect()
            collector = asyncio.ensure_future(collect())
            await b.connect()
            for conn in (a, b):
                for label in ("#chat", "#zip", "#feed"):
                    await conn.wait_for_data_channel(label, timeout=5)
            await wait_switched(a)
            await wait_switched(b)
            for label in ("#chat", "#zip", "#feed"):
                await rec_b.wait("on_data_channel", lambda lab, want=label: lab == want)
            assert {"#chat", "#feed", "#zip"} <= {x[0] for x in rec_b.of("on_data_channel")}

            # Callback face: A -> B with the sender header on B's side.
            assert a.send_data_channel("#chat", b"hello b")
            label, data = await rec_b.wait("on_message", lambda lab, d: lab == "#chat")
            assert data == (a.connection_id or "").encode() + b"hello b"
            async with asyncio.timeout(5):
                while not any(isinstance(e, Message) and e.label == "#chat" for e in b_events):
                    await asyncio.sleep(0.02)
            msg = next(e for e in b_events if isinstance(e, Message) and e.label == "#chat")
            assert msg.sender_connection_id == a.connection_id and msg.payload == b"hello b"
            # asyncio face, B -> A, no header on A's side.
            await b.send_message("#chat", b"hello a")
            assert await rec_a.wait("on_message", lambda lab, d: lab == "#chat") == ("#chat", b"hello a")

            # zlib both ways (both clients compress '#zip'; the Sfu forwards the bytes as they are).
            big = bytes(range(256)) * 64
            assert a.send_data_channel("#zip", big)
            assert (await rec_b.wait("on_message", lambda lab, d: lab == "#zip"))[1] == big
            await b.send_message("#zip", b"z" * 1000)
            assert (await rec_a.wait("on_message", lambda lab, d: lab == "#zip"))[1] == b"z" * 1000
            zip_stats = next(r for r in json.loads(a.get_stats())
                             if r.get("type") == "data-channel" and r.get("label") == "#zip")
            assert zip_stats["messagesSent"] == 1 and zip_stats["bytesSent"] < len(big) // 4, zip_stats

            # A non-zlib payload on a compressed label is dropped (and logged), the next one arrives.
            hub = a._hub
            assert hub is not None and a._handle is not None
            assert hub.engine.send_data(a._handle, "#zip", b"definitely not zlib")
            assert a.send_data_channel("#zip", b"after garbage")
            await rec_b.wait("on_message", lambda lab, d: d == b"after garbage")
            assert [d for lab, d in rec_b.of("on_message") if lab == "#zip"] == [big, b"after garbage"]
            assert b.connected

            # Directions: A sends on '#feed' (sendonly), B receives (recvonly); B's sends are not forwarded.
            assert a.send_data_channel("#feed", b"feed 1")
            await rec_b.wait("on_message", lambda lab, d: lab == "#feed" and d == b"feed 1")
            b.send_data_channel("#feed", b"nobody hears this")
            await asyncio.sleep(0.3)
            assert not [d for lab, d in rec_a.of("on_message") if lab == "#feed"]

            # Sending on something that is not open.
            assert a.send_data_channel("#nope", b"x") is False
            with pytest.raises(hibiki.HibikiError):
                await a.send_message("#nope", b"x")
            with pytest.raises(TypeError):
                a.send_data_channel("#chat", "text")  # type: ignore[arg-type]

            await asyncio.gather(a.disconnect(), b.disconnect())
            assert a.disconnect_reason == DISCONNECT_SUCCEEDED_DC_AND_WS
            if HAS_SFU_CLOSE:
                assert b.disconnect_reason == DISCONNECT_SUCCEEDED_DC_ONLY
            assert a.send_data_channel("#chat", b"late") is False
            await asyncio.wait_for(collector, 5)
            assert any(isinstance(e, DataChannelOpen) and e.label == "#zip" for e in b_events)

    run(main(), timeout=80)


@pytest.mark.timeout(30)
def test_bad_server_payloads_do_not_break_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """Non-JSON and typeless messages on system labels are logged and dropped."""

    async def main() -> None:
        async with MiniSora(needs_server_send=True) as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=True)
            rec = Recorder(conn)
            await conn.connect()
            session = await server.session_of(conn)
            await wait_switched(conn)
            for label, payload in (("signaling", b"{not json"), ("notify", b"[1,2]"), ("push", b"\xff\xfe"),
                                   ("stats", b'{"type": 5}'), ("signaling", b'{"type":"re-offer"}')):
                assert session.send(label, payload)
            assert session.send("notify", {"type": "notify", "event_type": "ok"})
            await rec.wait("on_notify")
            assert conn.connected
            await conn.disconnect()

    with caplog.at_level(logging.WARNING, logger="hibiki.client"):
        run(main(), timeout=25)
    assert "not JSON" in caplog.text


@pytest.mark.timeout(30)
def test_rpc_channel() -> None:
    """Raw bytes both ways on ``rpc`` (zlib here): ``on_rpc`` and the ``Message`` event; never ``on_message``."""

    async def main() -> None:
        async with MiniSora(needs_server_send=True, rpc=True, compress=frozenset({"rpc"})) as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=False)
            rec = Recorder(conn)
            events: list[Any] = []

            async def collect() -> None:
                async for event in conn:
                    events.append(event)

            collector = asyncio.ensure_future(collect())
            await conn.connect()
            session = await server.session_of(conn)
            await conn.wait_for_data_channel("rpc", timeout=5)
            await wait_switched(conn)
            request = b'{"jsonrpc":"2.0","method":"2025.2.0/RequestSimulcastRid","params":{"rid":"r1"},"id":1}'
            assert conn.send_data_channel("rpc", request)
            wire, payload = await session.received("rpc")
            assert _zlib_ok(wire) and payload == request
            response = b'{"jsonrpc":"2.0","id":1,"result":{}}'
            assert session.send("rpc", response)
            assert await rec.wait("on_rpc") == (response,)
            await conn.disconnect()
            await asyncio.wait_for(collector, 5)
            assert Message("rpc", response) in events and DataChannelOpen("rpc") in events
            assert rec.of("on_message") == []

    run(main(), timeout=25)


@pytest.mark.timeout(30)
def test_websocket_error_after_switched_keeping_the_websocket() -> None:
    """DataChannel + WebSocket, the server closes the WS with an error code: the client says why over the
    DataChannel (libsora's WEBSOCKET-ONCLOSE) and ends with WEBSOCKET_ONCLOSE, without a hang."""

    async def main() -> None:
        async with MiniSora() as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=False, disconnect_wait_timeout=1.0)
            rec = Recorder(conn)
            await conn.connect()
            session = await server.session_of(conn)
            await wait_switched(conn)
            t0 = time.monotonic()
            await session.ws.close(4490, "BAD-THING")
            code, reason = await rec.wait("on_disconnect", timeout=5)
            assert time.monotonic() - t0 < 3
            assert code == Code.WEBSOCKET_ONCLOSE and "4490" in reason and "BAD-THING" in reason
            _, msg = await session.received("signaling", "disconnect")
            assert msg == {"type": "disconnect", "reason": "WEBSOCKET-ONCLOSE"}
            assert await rec.wait("on_ws_close") == (4490, "BAD-THING")

    run(main(), timeout=25)


@needs_close_channels
@pytest.mark.timeout(30)
def test_every_channel_closed_without_a_close_message() -> None:
    """DataChannel only, the server closes every channel without ``close`` (Sora's default config): the
    connection ends instead of lingering deaf."""

    async def main() -> None:
        async with MiniSora() as server:
            conn = dc_connection(server.url, new_channel_id(), ignore_ws=True)
            rec = Recorder(conn)
            await conn.connect()
            session = await server.session_of(conn)
            await wait_switched(conn)
            await rec.wait("on_ws_close")
            session.close_channels()
            code, reason = await rec.wait("on_disconnect", timeout=5)
            assert code == Code.CLOSE_SUCCEEDED and "without a close message" in reason
            session.end()

    run(main(), timeout=25)
