"""The sora-sdk style example programs (``examples/sora_*.py``) against a real ``hibiki serve``.

Each program runs in its own subprocess, with a deadline, and prints JSON
lines that the tests check for content: frame counters read back from the
received pictures must increase, the tone must measure 440 Hz, notify must
show the program's own ``connection.created``, stats must be valid JSON with
``outbound-rtp`` entries.

The same programs also run with their one ``from hibiki.compat.sora_sdk
import`` line changed to ``from sora_sdk import`` (under the official
sora-sdk installed in the venv), which shows that they are genuine sora-sdk
programs and that both SDKs interoperate through the server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PYTHON_SRC,
    REPO,
    ServerProcess,
    connect_and_get_offer,
    new_channel_id,
    run,
)

EXAMPLES = REPO / "examples"
COMPAT_IMPORT = "hibiki.compat.sora_sdk"
HAS_SORA_SDK = subprocess.run(
    [sys.executable, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('sora_sdk') is None)"],
    check=False,
).returncode == 0
needs_sora_sdk = pytest.mark.skipif(not HAS_SORA_SDK, reason="sora-sdk is not installed (pip install sora-sdk==2025.4.0)")

# Who runs a program: our compat layer, or the official SDK (import substituted).
IMPLS = ("hibiki", "sora_sdk")


def program(name: str, impl: str, tmp_path: Path) -> Path:
    """The example ``name``, as is (``hibiki``) or with the import changed to ``sora_sdk``."""
    path = EXAMPLES / f"{name}.py"
    if impl == "hibiki":
        return path
    text = path.read_text(encoding="utf-8")
    substituted = re.sub(r"\bhibiki\.compat\.sora_sdk\b", "sora_sdk", text)  # the one-line change (a sed)
    out = tmp_path / f"{name}_{impl}.py"
    out.write_text(substituted, encoding="utf-8")
    return out


class Program:
    """A running example: its JSON lines, its exit code."""

    def __init__(self, path: Path, args: list[str], tag: str, tmp_path: Path) -> None:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_SRC), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.tag = tag
        self.stdout_path = tmp_path / f"{tag}.out"
        self.stderr_path = tmp_path / f"{tag}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(path), *args], stdout=out, stderr=err, env=env,
                                         cwd=REPO)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"{self.tag} did not finish within {timeout} s\n{self.tail()}")

    def lines(self) -> list[dict[str, Any]]:
        """The complete lines so far (a line still being written is left for the next call)."""
        text = self.stdout_path.read_text(errors="replace")
        result = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                try:
                    result.append(json.loads(line))
                except ValueError:
                    pytest.fail(f"{self.tag} printed a line that is not JSON: {line!r}\n{self.tail()}")
        return result

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("event") == kind]

    def tail(self) -> str:
        out = self.stdout_path.read_text(errors="replace").splitlines()[-30:]
        err = self.stderr_path.read_text(errors="replace").splitlines()[-30:]
        return f"--- {self.tag} stdout ---\n" + "\n".join(out) + f"\n--- {self.tag} stderr ---\n" + "\n".join(err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@contextmanager
def programs(tmp_path: Path) -> Iterator[list[Program]]:
    """Started programs are killed at the end whatever happens."""
    started: list[Program] = []
    try:
        yield started
    finally:
        for p in started:
            p.stop()


def start(started: list[Program], name: str, impl: str, args: list[str], tmp_path: Path,
          tag: str | None = None) -> Program:
    if impl == "sora_sdk" and not HAS_SORA_SDK:
        pytest.skip("sora-sdk is not installed")
    p = Program(program(name, impl, tmp_path), args, tag or f"{name}-{impl}", tmp_path)
    started.append(p)
    return p


def wait_for_line(p: Program, kind: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = p.events(kind)
        if found:
            return found[0]
        if p.proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"{p.tag}: no {kind!r} line within {timeout} s\n{p.tail()}")


def common_args(server: ServerProcess, channel: str, duration: float) -> list[str]:
    return ["--signaling-url", server.signaling_url, "--channel-id", channel, "--duration", str(duration)]


# -- the programs are sora-sdk programs ------------------------------------------------------------


@pytest.mark.parametrize("name", ["sora_sendonly", "sora_recvonly", "sora_messaging", "sora_notify", "sora_stats"])
def test_examples_use_only_the_compat_import(name: str) -> None:
    """Changing one import line is all it takes: nothing else of Hibiki's client is used."""
    text = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
    assert len(re.findall(rf"^from {re.escape(COMPAT_IMPORT)} import", text, re.MULTILINE)) == 1
    hibiki_imports = re.findall(r"^(?:from|import) (hibiki[\w.]*)", text, re.MULTILINE)
    assert set(hibiki_imports) <= {COMPAT_IMPORT, "hibiki.media.testsrc"}, hibiki_imports
    compile(text, name, "exec")


# -- sendonly -> recvonly ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sender", "receiver"), [
    ("hibiki", "hibiki"),
    pytest.param("sora_sdk", "sora_sdk", marks=needs_sora_sdk),
    pytest.param("sora_sdk", "hibiki", marks=needs_sora_sdk),
    pytest.param("hibiki", "sora_sdk", marks=needs_sora_sdk),
])
def test_sendonly_to_recvonly(server: ServerProcess, sender: str, receiver: str, tmp_path: Path) -> None:
    channel = new_channel_id()
    with programs(tmp_path) as started:
        send = start(started, "sora_sendonly", sender,
                     [*common_args(server, channel, 8), "--width", "320", "--height", "240", "--fps", "15"], tmp_path)
        wait_for_line(send, "connected", 20)
        recv = start(started, "sora_recvonly", receiver, common_args(server, channel, 5), tmp_path)
        assert recv.wait(40) == 0, recv.tail()
        assert send.wait(40) == 0, send.tail()

    tracks = recv.events("track")
    assert sorted(t["kind"] for t in tracks) == ["audio", "video"], recv.tail()
    sender_id = send.events("connected")[0]["connection_id"]
    assert {t["stream_id"] for t in tracks} == {sender_id}
    seconds = recv.events("received")
    assert len(seconds) >= 4, recv.tail()
    counters = [s["counter"] for s in seconds if s["counter"] is not None]
    assert len(counters) >= 3 and counters == sorted(counters) and counters[-1] > counters[0], recv.tail()
    assert seconds[-1]["video_frames"] >= 30 and (seconds[-1]["width"], seconds[-1]["height"]) == (320, 240)
    tones = [s["audio_frequency"] for s in seconds if s["audio_frequency"] is not None and s["audio_samples"] > 8000]
    assert len(tones) >= 3 and all(abs(f - 440.0) < 10 for f in tones), recv.tail()
    for p in (send, recv):
        (closed,) = p.events("disconnected")
        assert closed["code"] == "CLOSE_SUCCEEDED", p.tail()
    sent = send.events("sent")
    assert sent and sent[-1]["video_frames"] > 60 and sent[-1]["audio_ms"] > 4000


# -- notify ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["hibiki", pytest.param("sora_sdk", marks=needs_sora_sdk)])
def test_notify(server: ServerProcess, impl: str, tmp_path: Path) -> None:
    channel = new_channel_id()
    with programs(tmp_path) as started:
        first = start(started, "sora_notify", impl,
                      [*common_args(server, channel, 5), "--signaling-notify-metadata", '{"name": "first"}'],
                      tmp_path, "first")
        wait_for_line(first, "notify", 20)
        second = start(started, "sora_notify", "hibiki",
                       [*common_args(server, channel, 0.5), "--role", "sendrecv",
                        "--signaling-notify-metadata", '{"name": "second"}'], tmp_path, "second")
        assert second.wait(30) == 0, second.tail()
        assert first.wait(30) == 0, first.tail()

    notes = first.events("notify")
    own = [n for n in notes if n["self"]]
    assert own and own[0]["event_type"] == "connection.created", first.tail()
    assert own[0]["metadata"] == {"name": "first"} and own[0]["channel_connections"] == 1
    (second_created,) = [e for e in second.events("notify") if e["self"] and e["event_type"] == "connection.created"]
    other = second_created["connection_id"]
    # (connection.updated may come in between; it is not what this checks)
    about_other = [(n["event_type"], n["metadata"]) for n in notes if n["connection_id"] == other
                   and n["event_type"] in ("connection.created", "connection.destroyed")]
    assert about_other[:2] == [("connection.created", {"name": "second"}),
                               ("connection.destroyed", {"name": "second"})], first.tail()
    sent = [e["type"] for e in first.events("signaling") if e["direction"] == "SENT"]
    assert sent[:2] == ["connect", "answer"] and sent[-1] == "disconnect", first.tail()
    assert first.events("ws_close")[0]["code"] == 1000
    assert first.events("disconnected")[0]["code"] == "CLOSE_SUCCEEDED"
    assert first.lines()[-1]["event"] == "disconnected"  # always the last callback


# -- stats -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["hibiki", pytest.param("sora_sdk", marks=needs_sora_sdk)])
def test_stats(server: ServerProcess, impl: str, tmp_path: Path) -> None:
    channel = new_channel_id()
    with programs(tmp_path) as started:
        send = start(started, "sora_sendonly", "hibiki",
                     [*common_args(server, channel, 6), "--width", "320", "--height", "240", "--fps", "15"], tmp_path)
        wait_for_line(send, "connected", 20)
        stats = start(started, "sora_stats", impl, common_args(server, channel, 3), tmp_path)
        assert stats.wait(40) == 0, stats.tail()
        assert send.wait(40) == 0, send.tail()

    reports = [e["report"] for e in stats.events("stats")]
    assert len(reports) >= 2, stats.tail()
    last = reports[-1]
    assert isinstance(last, list) and all({"id", "type", "timestamp"} <= set(r) for r in last)
    by = {(r["type"], r.get("kind")) for r in last}
    assert {("outbound-rtp", "video"), ("outbound-rtp", "audio"), ("inbound-rtp", "video"),
            ("inbound-rtp", "audio"), ("codec", None), ("transport", None)} <= by, sorted(by, key=str)
    out_video = next(r for r in last if r["type"] == "outbound-rtp" and r["kind"] == "video")
    assert out_video["bytesSent"] > 0 and out_video["framesEncoded"] > 0
    in_video = next(r for r in last if r["type"] == "inbound-rtp" and r["kind"] == "video" and r.get("bytesReceived"))
    assert in_video["framesDecoded"] > 0 and in_video["frameWidth"] == 320
    codecs = {r["id"]: r["mimeType"] for r in last if r["type"] == "codec"}
    assert codecs[out_video["codecId"]] == "video/VP8"
    earlier = next(r for r in reports[0] if r["type"] == "outbound-rtp" and r["kind"] == "video")
    assert out_video["bytesSent"] > earlier["bytesSent"]  # counters move


# -- messaging ---------------------------------------------------------------------------------------


def _server_opens_messaging_channels(server: ServerProcess) -> bool:
    async def probe() -> bool:
        ws, offer = await connect_and_get_offer(server, role="sendrecv", data_channel_signaling=True,
                                                data_channels=[{"label": "#probe", "direction": "sendrecv"}])
        await ws.close()
        return any(isinstance(d, dict) and d.get("label") == "#probe" for d in offer.get("data_channels") or [])

    return run(probe(), 15)


@pytest.mark.parametrize(("first_impl", "ignore_ws"), [
    ("hibiki", False),
    ("hibiki", True),
    pytest.param("sora_sdk", False, marks=needs_sora_sdk),
    pytest.param("sora_sdk", True, marks=needs_sora_sdk),
])
def test_messaging(server: ServerProcess, first_impl: str, ignore_ws: bool, tmp_path: Path) -> None:
    if not _server_opens_messaging_channels(server):
        pytest.skip("this hibiki serve does not open messaging DataChannels yet")
    channel = new_channel_id()
    extra = ["--ignore-disconnect-websocket"] if ignore_ws else []
    with programs(tmp_path) as started:
        alice = start(started, "sora_messaging", first_impl,
                      [*common_args(server, channel, 4), "--name", "alice", "--interval", "0.2", *extra],
                      tmp_path, "alice")
        wait_for_line(alice, "connected", 20)
        bob = start(started, "sora_messaging", "hibiki",
                    [*common_args(server, channel, 2), "--name", "bob", "--interval", "0.2", *extra], tmp_path, "bob")
        assert bob.wait(40) == 0, bob.tail()
        assert alice.wait(40) == 0, alice.tail()

    for me, other in ((alice, "bob"), (bob, "alice")):
        assert me.events("switched"), me.tail()
        assert {"label": "#example"} in [{"label": e["label"]} for e in me.events("data_channel")]
        got = [m["data"] for m in me.events("message") if m["label"] == "#example"]
        assert any(text.startswith(f"{other} ") for text in got), me.tail()
        (closed,) = me.events("disconnected")
        assert closed["code"] == "CLOSE_SUCCEEDED", me.tail()
