"""notify: print what the server tells a connection (notify, push, disconnect), sora-sdk style.

A sora-sdk program: only the import says Hibiki. Change
``hibiki.compat.sora_sdk`` to ``sora_sdk`` and it runs on the official SDK.

    hibiki serve &
    python examples/sora_notify.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id sora

Joins the channel (recvonly, so it needs no camera) and prints one JSON
object per line for each event: ``notify`` (``connection.created`` - for
this connection too, marked ``"self": true`` - ``connection.updated``,
``connection.destroyed``...), ``push``, ``signaling`` (messages sent and
received), ``ws_close`` and finally ``disconnected`` with the error code and
message. Stops after ``--duration`` seconds, or when the server disconnects it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from hibiki.compat.sora_sdk import (
    Sora,
    SoraSignalingDirection,
    SoraSignalingErrorCode,
    SoraSignalingType,
)

_stdout_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout.

    Callbacks run on the SDK's threads: the lock keeps their lines whole
    (``print`` writes the text and its newline separately).
    """
    line = json.dumps({"event": event, **fields})
    with _stdout_lock:
        print(line, flush=True)


class Notify:
    def __init__(self, signaling_urls: list[str], channel_id: str, role: str,
                 metadata: dict[str, Any] | None) -> None:
        self._sora = Sora()
        self._connection = self._sora.create_connection(
            signaling_urls=signaling_urls,
            role=role,
            channel_id=channel_id,
            audio=True,
            video=True,
            signaling_notify_metadata=metadata,
        )
        self._connection.on_set_offer = self._on_set_offer
        self._connection.on_notify = self._on_notify
        self._connection.on_push = self._on_push
        self._connection.on_signaling_message = self._on_signaling_message
        self._connection.on_ws_close = self._on_ws_close
        self._connection.on_disconnect = self._on_disconnect

        self._connection_id: str | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()

    def _on_set_offer(self, raw_offer: str) -> None:
        offer = json.loads(raw_offer)
        if offer["type"] == "offer":
            self._connection_id = offer["connection_id"]

    def _on_notify(self, raw_message: str) -> None:
        message = json.loads(raw_message)
        is_self = message.get("connection_id") == self._connection_id
        emit(
            "notify",
            event_type=message.get("event_type"),
            connection_id=message.get("connection_id"),
            self=is_self,
            channel_connections=message.get("channel_connections"),
            metadata=message.get("metadata"),
        )
        if message.get("event_type") == "connection.created" and is_self:
            self._connected.set()

    def _on_push(self, raw_message: str) -> None:
        emit("push", message=json.loads(raw_message))

    def _on_signaling_message(self, signaling_type: SoraSignalingType,
                              direction: SoraSignalingDirection, message: str) -> None:
        try:
            message_type = json.loads(message).get("type")
        except ValueError:
            message_type = None
        emit("signaling", path=signaling_type.name, direction=direction.name, type=message_type)

    def _on_ws_close(self, code: int, reason: str) -> None:
        emit("ws_close", code=code, reason=reason)

    def _on_disconnect(self, error_code: SoraSignalingErrorCode, message: str) -> None:
        emit("disconnected", code=error_code.name, message=message)
        self._closed.set()

    def run(self, duration: float) -> int:
        self._connection.connect()
        if not self._connected.wait(10):
            emit("error", message="no connection.created for this connection within 10 s")
            self._connection.disconnect()
            return 1
        deadline = time.monotonic() + duration
        self._closed.wait(max(0.0, deadline - time.monotonic()))
        # Returns once on_disconnect has run (right away if the server already closed).
        self._connection.disconnect()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling-url", action="append", required=True,
                        help="signaling URL (repeat it for several)")
    parser.add_argument("--channel-id", required=True)
    parser.add_argument("--role", choices=("sendrecv", "sendonly", "recvonly"), default="recvonly")
    parser.add_argument("--signaling-notify-metadata", type=json.loads, default=None,
                        help="JSON given to the others in this connection's notify events")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to listen")
    args = parser.parse_args()
    notify = Notify(args.signaling_url, args.channel_id, args.role, args.signaling_notify_metadata)
    return notify.run(args.duration)


if __name__ == "__main__":
    sys.exit(main())
