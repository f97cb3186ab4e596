"""messaging: exchange messages over a DataChannel label, sora-sdk style.

A sora-sdk program: only the import says Hibiki. Change
``hibiki.compat.sora_sdk`` to ``sora_sdk`` and it runs on the official SDK.

    hibiki serve &
    python examples/sora_messaging.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id sora --name alice &
    python examples/sora_messaging.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id sora --name bob

Messaging needs DataChannel signaling (``data_channel_signaling=True``) and
the labels listed in ``data_channels``; a label starts with ``#``. Once the
server switched signaling to DataChannels (``on_switched``) and the label is
open (``on_data_channel``), this sends ``"<name> <n>"`` every
``--interval`` seconds and prints every message it receives. Prints one JSON
object per line: ``switched``, ``data_channel``, ``sent``, ``message``,
``disconnected``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from hibiki.compat.sora_sdk import Sora, SoraSignalingErrorCode

_stdout_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout.

    Callbacks run on the SDK's threads: the lock keeps their lines whole
    (``print`` writes the text and its newline separately).
    """
    line = json.dumps({"event": event, **fields})
    with _stdout_lock:
        print(line, flush=True)


class Messaging:
    def __init__(self, signaling_urls: list[str], channel_id: str, label: str, name: str,
                 ignore_disconnect_websocket: bool) -> None:
        self._label = label
        self._name = name
        self._sora = Sora()
        self._connection = self._sora.create_connection(
            signaling_urls=signaling_urls,
            role="sendrecv",
            channel_id=channel_id,
            # No media: the connection carries messages only.
            audio=False,
            video=False,
            data_channel_signaling=True,
            ignore_disconnect_websocket=ignore_disconnect_websocket,
            data_channels=[{"label": label, "direction": "sendrecv"}],
        )
        self._connection.on_set_offer = self._on_set_offer
        self._connection.on_switched = self._on_switched
        self._connection.on_data_channel = self._on_data_channel
        self._connection.on_message = self._on_message
        self._connection.on_disconnect = self._on_disconnect

        self._connection_id: str | None = None
        self._switched = threading.Event()
        self._ready = threading.Event()
        self._closed = threading.Event()

    def _on_set_offer(self, raw_offer: str) -> None:
        offer = json.loads(raw_offer)
        if offer["type"] == "offer":
            self._connection_id = offer["connection_id"]

    def _on_switched(self, raw_message: str) -> None:
        emit("switched", message=json.loads(raw_message))
        self._switched.set()

    def _on_data_channel(self, label: str) -> None:
        emit("data_channel", label=label)
        if label == self._label:
            self._ready.set()

    def _on_message(self, label: str, data: bytes) -> None:
        emit("message", label=label, data=data.decode("utf-8", "replace"))

    def _on_disconnect(self, error_code: SoraSignalingErrorCode, message: str) -> None:
        emit("disconnected", code=error_code.name, message=message)
        self._closed.set()

    def run(self, duration: float, interval: float) -> int:
        self._connection.connect()
        # Sending works once signaling moved to DataChannels and the label is open.
        if not (self._switched.wait(10) and self._ready.wait(10)):
            emit("error", message=f"{self._label} did not open within 10 s")
            self._connection.disconnect()
            return 1
        emit("connected", connection_id=self._connection_id)
        deadline = time.monotonic() + duration
        count = 0
        try:
            while not self._closed.is_set() and time.monotonic() < deadline:
                text = f"{self._name} {count}"
                if self._connection.send_data_channel(self._label, text.encode()):
                    emit("sent", label=self._label, data=text)
                    count += 1
                self._closed.wait(min(interval, max(0.0, deadline - time.monotonic())))
        finally:
            self._connection.disconnect()
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signaling-url", action="append", required=True,
                        help="signaling URL (repeat it for several)")
    parser.add_argument("--channel-id", required=True)
    parser.add_argument("--label", default="#example", help="messaging label (starts with #)")
    parser.add_argument("--name", default="sora", help="prefix of the messages sent")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between messages")
    parser.add_argument("--ignore-disconnect-websocket", action="store_true",
                        help="close the WebSocket once signaling moved to DataChannels")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    args = parser.parse_args()
    if not args.label.startswith("#"):
        parser.error("a messaging label starts with '#'")
    messaging = Messaging(args.signaling_url, args.channel_id, args.label, args.name,
                          args.ignore_disconnect_websocket)
    return messaging.run(args.duration, args.interval)


if __name__ == "__main__":
    sys.exit(main())
