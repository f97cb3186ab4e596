"""Shared test fixtures: a real ``hibiki serve`` process on loopback.

Fixtures
--------
``server``
    A fresh ``hibiki serve --port P --rtc-port 0`` for one test. It has
    ``.url`` (``http://127.0.0.1:P``), ``.signaling_url``
    (``ws://127.0.0.1:P/signaling``), ``.proc``, ``.port``, ``.health()``,
    ``.rtc_ports`` and ``.log_text()``.
``server_factory``
    ``server_factory(*extra_args)`` starts another server with extra
    ``hibiki serve`` arguments (e.g. ``"--connect-timeout", "0.5"``).

Every server is stopped at teardown (SIGINT, then kill) and the test FAILS if
the server wrote a Python traceback, did not stop within 10 s, or died early.

Helpers (``from conftest import ...``): ``run``, ``open_ws``, ``recv_json``,
``expect_close``, ``connect_message``, ``connect_and_get_offer``, ``wait_until``,
``espeak_speech`` (real speech, synthesized), ``LoopTicks`` (is an event loop
blocked?), and ``Peer``/``with_engine``/``is_notify`` (a raw signaling client with a real
media connection).

Nothing here builds anything: the Rust extension (``hibiki._core``) must
already be built into ``python/hibiki``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[1]
PYTHON_SRC = REPO / "python"
if str(PYTHON_SRC) not in sys.path:
    # Lets tests import hibiki (pure-Python parts) without an installed package.
    sys.path.insert(0, str(PYTHON_SRC))

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

T = TypeVar("T")


# -- the server process ----------------------------------------------------------------


def free_tcp_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A running ``hibiki serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, stdout_path: Path, stderr_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.signaling_url = f"ws://127.0.0.1:{port}/signaling"
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.stopped_cleanly: bool | None = None
        self.stop_requested = False

    def log_text(self) -> str:
        """Everything the server wrote to stderr so far (its log)."""
        return self.stderr_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` of stdout and stderr, for failure messages."""
        out = self.stdout_path.read_text(errors="replace").splitlines()[-lines:]
        err = self.stderr_path.read_text(errors="replace").splitlines()[-lines:]
        return "--- stdout ---\n" + "\n".join(out) + "\n--- stderr ---\n" + "\n".join(err)

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """GET /health (raises if the server does not answer 200)."""
        r = httpx.get(self.url + "/health", timeout=timeout)
        r.raise_for_status()
        return dict(r.json())

    @property
    def rtc_ports(self) -> list[int]:
        """The SFU's UDP ports, from /health."""
        return list(self.health()["rtc_ports"])

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGINT, then SIGKILL after STOP_TIMEOUT_S. Records whether it stopped by itself."""
        if self.proc.poll() is not None:
            return
        self.stop_requested = True
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
            self.stopped_cleanly = True
        except subprocess.TimeoutExpired:
            self.stopped_cleanly = False
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def _wait_healthy(server: ServerProcess, deadline: float) -> bool:
    """Poll /health until it answers ok (True) or the process exits (False)."""
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        try:
            r = httpx.get(server.url + "/health", timeout=1.0)
            if r.status_code == 200 and r.json().get("status") == "ok":
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"hibiki serve did not become healthy in {STARTUP_TIMEOUT_S} s\n{server.log_tail()}")


def start_server(workdir: Path, *extra_args: str) -> ServerProcess:
    """Start ``python -m hibiki serve`` on a free port and wait until /health answers."""
    env = os.environ.copy()
    # Servers start with exactly the options a test gives, whatever the shell exports.
    for name in (
        "HIBIKI_AUTH_SECRET",
        "HIBIKI_API_SECRET",
        "HIBIKI_API_KEY",
        "HIBIKI_AUTH_WEBHOOK",
        "HIBIKI_DATABASE",
        "HIBIKI_WEBHOOK_URLS",
    ):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_SRC), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    last: ServerProcess | None = None
    for attempt in range(3):  # a free port can be taken between picking and binding it
        port = free_tcp_port()
        tag = f"{port}-{attempt}-{uuid.uuid4().hex[:6]}"
        stdout_path = workdir / f"server-{tag}.out"
        stderr_path = workdir / f"server-{tag}.err"
        cmd = [sys.executable, "-m", "hibiki", "serve", "--port", str(port), "--rtc-port", "0"]
        if "--database" not in extra_args and "--config" not in extra_args:
            # Each test its own call store: no state leaks between tests or runs.
            cmd += ["--database", str(workdir / f"hibiki-{tag}.sqlite3")]
        cmd += extra_args
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        last = ServerProcess(proc, port, stdout_path, stderr_path)
        try:
            healthy = _wait_healthy(last, time.monotonic() + STARTUP_TIMEOUT_S)
        except TimeoutError as exc:
            last.stop()
            pytest.fail(str(exc))
        if healthy:
            return last
        if "address already in use" not in last.log_text().lower():
            break
    assert last is not None
    pytest.fail(f"hibiki serve exited during startup (rc {last.proc.returncode})\n{last.log_tail()}")


def server_problems(server: ServerProcess, died_early: bool) -> list[str]:
    """What went wrong with a stopped server, if anything."""
    problems = []
    if died_early:
        problems.append(f"the server died during the test (rc {server.proc.returncode})")
    if "Traceback" in server.log_text():
        problems.append("the server logged a traceback")
    if server.stopped_cleanly is False:
        problems.append(f"the server did not stop within {STOP_TIMEOUT_S} s of SIGINT")
    return problems


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with extra ``hibiki serve`` arguments; all are checked at teardown."""
    started: list[ServerProcess] = []

    def factory(*extra_args: str) -> ServerProcess:
        srv = start_server(tmp_path, *extra_args)
        started.append(srv)
        return srv

    try:
        yield factory
    finally:
        died = [not srv.alive() and not srv.stop_requested for srv in started]
        for srv in started:
            srv.stop()
        problems = []
        for srv, died_early in zip(started, died, strict=False):
            for problem in server_problems(srv, died_early):
                problems.append(f"{problem} (port {srv.port})\n{srv.log_tail(200)}")
        if problems:
            pytest.fail("\n\n".join(problems))


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A fresh ``hibiki serve`` for this test."""
    return server_factory()


# -- client helpers --------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a new event loop, with an overall deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               what: str | Callable[[], str] = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds.

    ``what`` names the condition; a callable is asked at the failure, so the
    message can show the state that did not come right.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(0.02)


async def open_ws(server: ServerProcess) -> ClientConnection:
    """Open a WebSocket to the server's /signaling, like the C++ client (no compression)."""
    return await connect(server.signaling_url, open_timeout=5, compression=None, max_size=None)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next message: must be a text frame holding a JSON object with a string type."""
    frame = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(frame, str), f"server sent a binary frame: {frame!r:.200}"
    msg = json.loads(frame)
    assert isinstance(msg, dict) and isinstance(msg.get("type"), str), f"not a typed JSON object: {frame:.200}"
    return msg


async def expect_close(ws: ClientConnection, timeout: float = 5.0) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes; return (code, reason, messages received before the close)."""
    received: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"server did not close within {timeout} s; got {received}")
        try:
            received.append(await recv_json(ws, remaining))
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            code = rcvd.code if rcvd is not None else 1006
            reason = rcvd.reason if rcvd is not None else ""
            assert len(reason.encode()) <= 123, f"close reason longer than 123 bytes: {reason!r}"
            return code, reason, received
        except TimeoutError:
            continue


class LoopTicks:
    """Counts how often the running event loop gets to run a task that sleeps ``period`` at a time.

    A wait that blocks the loop shows as missing ticks.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self.ticks = 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.ticks += 1
            await asyncio.sleep(self.period)

    async def stop(self) -> int:
        self._stop.set()
        await self._task
        return self.ticks


def espeak_speech(text: str, path: Path) -> tuple[Any, int]:
    """espeak-ng saying ``text`` into the WAV ``path``: (int16 ``[samples, 1]``, its rate).

    Skips the test when espeak-ng is not installed (``apt-get install espeak-ng``).
    """
    import shutil
    import wave

    import numpy as np

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); it synthesizes the test speech")
    subprocess.run([espeak, "-w", str(path), text], check=True, timeout=60, capture_output=True)
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)[:, None]
    return pcm, rate


def new_channel_id() -> str:
    """A channel id no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


def connect_message(role: str = "sendrecv", channel_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A ``connect`` like the Python sora-sdk sends it (§5.1), plus ``fields``."""
    msg: dict[str, Any] = {
        "type": "connect",
        "role": role,
        "channel_id": new_channel_id() if channel_id is None else channel_id,
        "sora_client": "hibiki tests",
        "environment": "pytest",
        "video": True,
        "audio": True,
    }
    msg.update(fields)
    return msg


async def connect_and_get_offer(
    server: ServerProcess, role: str = "sendrecv", channel_id: str | None = None, **fields: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Open /signaling, send ``connect``, return (websocket, offer)."""
    ws = await open_ws(server)
    await ws.send(json.dumps(connect_message(role, channel_id, **fields)))
    try:
        msg = await recv_json(ws)
    except websockets.ConnectionClosed as exc:
        raise AssertionError(f"server closed instead of offering: {exc.rcvd}") from None
    assert msg["type"] == "offer", msg
    return ws, msg


# -- raw signaling peers with a real media connection --------------------------------------
#
# hibiki._core.ClientEngine is the data plane of our client SDK: a real str0m
# peer doing ICE/DTLS over loopback. It lets server tests reach CONNECTED and
# check what the server says after the answer, message by message.


class Peer:
    """One signaling client with a real media connection; answers re-offers and (optionally) pings."""

    def __init__(self, engine: Any, ws: Any, offer: dict[str, Any], answer_pings: bool) -> None:
        self.engine = engine
        self.ws = ws
        self.offer = offer
        self.connection_id: str = offer["connection_id"]
        self.answer_pings = answer_pings
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.disconnecting = False
        self._changed = asyncio.Event()
        self.handle, answer = engine.connect(offer["sdp"])
        self._task = asyncio.create_task(self._read(answer))

    @classmethod
    async def join(
        cls, engine: Any, server: ServerProcess, channel_id: str, answer_pings: bool = True, **fields: Any
    ) -> Peer:
        ws, offer = await connect_and_get_offer(server, channel_id=channel_id, **fields)
        return cls(engine, ws, offer, answer_pings)

    async def _read(self, answer: str) -> None:
        await self.ws.send(json.dumps({"type": "answer", "sdp": answer}))
        try:
            async for frame in self.ws:
                assert isinstance(frame, str)
                msg = json.loads(frame)
                self.messages.append(msg)
                if msg["type"] == "re-offer":
                    try:
                        reanswer = self.engine.accept_offer(self.handle, msg["sdp"])
                    except ValueError as exc:
                        if self.disconnecting:
                            # A re-offer still queued when we asked to leave: the
                            # server may already have closed the media (DTLS
                            # close_notify), so the engine forgot the connection.
                            continue
                        raise AssertionError(
                            f"re-offer for connection {self.handle} failed: {exc}; "
                            f"engine events: {ENGINE_LIFECYCLE.get(id(self.engine))}"
                        ) from None
                    await self.ws.send(json.dumps({"type": "re-answer", "sdp": reanswer}))
                elif msg["type"] == "ping" and self.answer_pings:
                    await self.ws.send(json.dumps({"type": "pong"}))
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        self.closed = (self.ws.close_code or 1006, self.ws.close_reason or "")
        self._changed.set()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first message (already received or coming) that matches ``predicate``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for msg in self.messages:
                if predicate(msg):
                    return msg
            if self.closed is not None:
                raise AssertionError(f"closed {self.closed} before the expected message; got {self.messages}")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout} s; got {self.messages}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int, str]:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        assert self.closed is not None
        return self.closed

    def notifies(self, event_type: str, about: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m["type"] == "notify" and m["event_type"] == event_type and m["connection_id"] == about
        ]

    async def disconnect(self) -> tuple[int, str]:
        self.disconnecting = True
        await self.ws.send(json.dumps({"type": "disconnect", "reason": "NO-ERROR"}))
        return await self.wait_closed()


def is_notify(event_type: str, about: Peer) -> Callable[[dict[str, Any]], bool]:
    """A predicate for :meth:`Peer.wait_for`: a notify ``event_type`` about ``about``."""
    return lambda m: (
        m["type"] == "notify" and m["event_type"] == event_type and m["connection_id"] == about.connection_id
    )


async def with_engine(body: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
    """Run ``body(engine)`` with a ``hibiki._core.ClientEngine`` whose events are drained."""
    from hibiki._core import ClientEngine

    engine = ClientEngine()
    loop = asyncio.get_running_loop()
    lifecycle = ENGINE_LIFECYCLE.setdefault(id(engine), [])

    def drain() -> None:
        # Frames are not under test; keep the queue drained, but remember
        # connected/closed events to explain a connection that went away.
        for event in engine.poll_events():
            if event.kind in ("connected", "closed"):
                lifecycle.append(f"{event.kind} {event.connection} {event.reason or ''}".strip())

    loop.add_reader(engine.fileno(), drain)
    try:
        await body(engine)
    finally:
        loop.remove_reader(engine.fileno())
        engine.close()
        ENGINE_LIFECYCLE.pop(id(engine), None)


ENGINE_LIFECYCLE: dict[int, list[str]] = {}
"""Per live ClientEngine (by id): its connected/closed events, for failure messages."""
