"""Run ``sora_peer.py`` (one official sora-sdk client) in a subprocess and follow its JSON lines.

    with SoraPeer.start(server.signaling_url, "recvonly", channel, "--receive") as peer:
        peer.wait_connected()
        peer.wait_for(lambda e: e["event"] == "video" and e["counter"] is not None, 15, "a frame")
        peer.disconnect()

Every wait has a deadline and fails with the peer's recent output. At exit the
process is stopped; :attr:`SoraPeer.returncode` tells whether it crashed (the
C++ client calls std::terminate on a server message it cannot parse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DRIVER = Path(__file__).with_name("sora_peer.py")
PYTHON_SRC = Path(__file__).resolve().parents[2] / "python"

Event = dict[str, Any]


class SoraPeer:
    """A sora-sdk client process and the events it printed."""

    def __init__(self, args: list[str], name: str = "sora") -> None:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_SRC), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.name = name
        self.args = args
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", str(DRIVER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
        )
        self.events: list[Event] = []
        self.bad_lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"{name}-stdout")
        self._reader.start()
        self.returncode: int | None = None

    @classmethod
    def start(cls, url: str | list[str], role: str, channel_id: str, *extra: str, name: str = "sora") -> SoraPeer:
        """Start a peer: ``extra`` are more ``sora_peer.py`` options (``--send``, ``--receive``, ...)."""
        urls = [url] if isinstance(url, str) else url
        args = [a for u in urls for a in ("--url", u)]
        args += ["--role", role, "--channel-id", channel_id, *extra]
        return cls(args, name)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                with self._cond:
                    self.bad_lines.append(line)  # libwebrtc may print to stdout
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # -- queries -----------------------------------------------------------------------------

    def snapshot(self, kind: str | None = None) -> list[Event]:
        """Events so far (of one ``event`` kind if given)."""
        with self._cond:
            return [e for e in self.events if kind is None or e["event"] == kind]

    def notifies(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Notify messages received so far."""
        return [
            e["message"]
            for e in self.snapshot("notify")
            if event_type is None or e["message"].get("event_type") == event_type
        ]

    def stderr_tail(self, chars: int = 3000) -> str:
        """The end of what the process wrote to stderr."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-chars:]

    def describe(self) -> str:
        """Recent output, for failure messages."""
        events = self.snapshot()
        shown = [e for e in events if e["event"] not in ("video", "audio")][-25:]
        media = len(events) - len([e for e in events if e["event"] not in ("video", "audio")])
        return (
            f"[{self.name}] rc={self.proc.poll()} {len(events)} events ({media} media); last: "
            + json.dumps(shown)[:4000]
            + f"\n[{self.name}] stderr: {self.stderr_tail()}"
        )

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float, what: str) -> Event:
        """The first event (past or future) matching ``predicate``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._cond.wait(min(remaining, 0.5))
        pytest.fail(
            f"{self.name}: {'exited' if self._eof else f'timed out after {timeout} s'} "
            f"waiting for {what}\n{self.describe()}"
        )

    def wait_count(self, predicate: Callable[[Event], bool], count: int, timeout: float, what: str) -> list[Event]:
        """Wait until ``count`` events match; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if predicate(e)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    break
                self._cond.wait(min(remaining, 0.5))
        pytest.fail(f"{self.name}: got {len(found)}/{count} {what} in {timeout} s\n{self.describe()}")

    def wait_connected(self, timeout: float = 15.0) -> str:
        """Wait for its own ``connection.created``; return its connection_id."""
        return str(
            self.wait_for(lambda e: e["event"] == "connected", timeout, "its own connection.created")["connection_id"]
        )

    def wait_disconnect(self, timeout: float = 15.0) -> Event:
        """Wait for ``on_disconnect``."""
        return self.wait_for(lambda e: e["event"] == "disconnect", timeout, "on_disconnect")

    # -- control -----------------------------------------------------------------------------

    def disconnect(self, timeout: float = 15.0) -> Event:
        """Ask it to call ``disconnect()``; return its ``on_disconnect`` event."""
        self._command("disconnect")
        return self.wait_disconnect(timeout)

    def stats(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The inbound/outbound RTP entries of a fresh ``get_stats()``."""
        before = len(self.snapshot("stats"))
        self._command("stats")
        found = self.wait_count(lambda e: e["event"] == "stats", before + 1, timeout, "get_stats() answers")
        return list(found[-1]["rtp"])

    def _command(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # already gone; the waits report it

    def stop(self, timeout: float = 15.0) -> int:
        """End the process (politely, then by force); return its exit code."""
        if self.proc.poll() is None:
            self._command("disconnect")
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        self.returncode = self.proc.returncode
        return self.returncode

    def assert_clean_exit(self) -> None:
        """The process exited by itself with 0 (no std::terminate, no hang)."""
        rc = self.stop()
        assert rc == 0, f"{self.name} exited with {rc}\n{self.describe()}"
        assert self.snapshot("exit"), f"{self.name} did not finish its run\n{self.describe()}"
        assert not self.snapshot("error"), f"{self.name} reported errors\n{self.describe()}"

    def __enter__(self) -> SoraPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._stderr.close()
