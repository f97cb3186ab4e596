"""The client side of Sora's DataChannels (sora-signaling.md §3.2, §3.3, §6, §7, §9).

The server opens every data channel; the client never creates one. What the
client needs to know about them comes from two places:

* the ``data_channels`` list of the server's ``offer``: the labels that exist,
  which of them are zlib-compressed (``compress``), their ``direction`` and
  messaging ``header``. That list is the authority: libsora only knows whether a
  label is compressed, and only fires ``on_data_channel``, for labels listed
  there (§5.3);
* the engine's ``channel_open`` / ``channel_data`` / ``channel_close`` events.

:class:`DataChannels` keeps that per-connection state: the labels of the
offer, which channels are open, zlib in both directions and per-label
counters for ``get_stats``. It knows nothing about signaling; the
:class:`~hibiki.client.connection.Connection` decides what a message means.

:func:`normalize_data_channels` validates the ``data_channels`` argument of
``create_connection`` (the entries the client asks for in ``connect``).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MESSAGING_PREFIX",
    "SENDER_CONNECTION_ID_LENGTH",
    "SYSTEM_LABELS",
    "DataChannels",
    "LabelInfo",
    "normalize_data_channels",
    "sender_connection_id",
]

logger = logging.getLogger("hibiki.client")

MESSAGING_PREFIX = "#"
"""Labels starting with this are the application's messaging channels (§7)."""
SYSTEM_LABELS = frozenset({"signaling", "notify", "push", "stats", "rpc"})
"""Labels the SDK handles itself (§6.2)."""
SENDER_CONNECTION_ID_LENGTH = 26
"""Length of the sender connection_id the server prefixes when a label has a header (§7)."""

_DIRECTIONS = ("sendrecv", "sendonly", "recvonly")
# connect's data_channels keys, in the order libsora writes them, with their types.
_ENTRY_FIELDS: dict[str, type] = {
    "label": str,
    "direction": str,
    "ordered": bool,
    "max_packet_life_time": int,
    "max_retransmits": int,
    "protocol": str,
    "compress": bool,
    "header": list,
}


def normalize_data_channels(entries: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Validate ``create_connection(data_channels=...)`` and return the list to send in ``connect``.

    Each entry needs ``label`` (a non-empty string) and ``direction``
    (``sendrecv``/``sendonly``/``recvonly``, from the client's point of view);
    ``ordered``, ``max_packet_life_time``, ``max_retransmits``, ``protocol``,
    ``compress`` and ``header`` are optional. Keys left at ``None`` are left out,
    as libsora does. Unknown keys are dropped with a warning (sora-sdk ignores
    them too); a wrong type raises :class:`TypeError` and a bad value
    :class:`ValueError` here, rather than a close code from the server later.

    >>> normalize_data_channels([{"label": "#chat", "direction": "sendrecv", "compress": None}])
    [{'label': '#chat', 'direction': 'sendrecv'}]
    """
    if entries is None:
        return None
    if isinstance(entries, Mapping | str | bytes):
        raise TypeError("data_channels must be a list of dicts")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise TypeError(f"data_channels[{i}] must be a dict, got {type(entry).__name__}")
        for key in entry:
            if key not in _ENTRY_FIELDS:
                warnings.warn(f"data_channels[{i}]: unknown key {key!r} is ignored", UserWarning, stacklevel=4)
        label = entry.get("label")
        if not isinstance(label, str) or not label:
            raise ValueError(f"data_channels[{i}] needs a non-empty string 'label'")
        if label in seen:
            raise ValueError(f"data_channels: label {label!r} is listed twice")
        seen.add(label)
        if entry.get("direction") not in _DIRECTIONS:
            raise ValueError(
                f"data_channels[{i}] ({label}): 'direction' must be one of {', '.join(_DIRECTIONS)}; "
                f"got {entry.get('direction')!r}"
            )
        norm: dict[str, Any] = {}
        for key, kind in _ENTRY_FIELDS.items():
            value = entry.get(key)
            if value is None:
                continue
            # bool is an int subclass: do not let True pass as a retransmit count.
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise TypeError(f"data_channels[{i}] ({label}): {key!r} must be {_type_name(kind)}, "
                                 f"got {value!r}")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"data_channels[{i}] ({label}): {key!r} must be >= 0, got {value}")
            norm[key] = value
        header = norm.get("header")
        if header is not None and not all(isinstance(h, Mapping) for h in header):
            raise TypeError(f"data_channels[{i}] ({label}): 'header' must be a list of dicts, "
                             "e.g. [{'type': 'sender_connection_id'}]")
        out.append(norm)
    return out


def _type_name(kind: type) -> str:
    return {bool: "a bool", int: "an int", str: "a string", list: "a list"}.get(kind, kind.__name__)


@dataclass
class LabelInfo:
    """One ``data_channels`` entry of the server's offer, plus what happened on it."""

    label: str
    compress: bool = False
    direction: str | None = None
    header: list[dict[str, Any]] | None = None
    notified: bool = False
    """``on_data_channel`` was fired for it (once per label, as libsora does)."""
    state: str = "new"
    """``new`` until the server opens it, then ``open``, then ``closed``."""
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    opened_at: float | None = None

    @property
    def has_sender_header(self) -> bool:
        """Forwarded messages start with the 26-byte sender connection_id (§7)."""
        return any(isinstance(h, Mapping) and h.get("type") == "sender_connection_id" for h in self.header or ())


class DataChannels:
    """Per-connection data channel state.

    Labels and open/closed state change only on the SDK loop; ``encode`` /
    ``decode`` are pure; counters are bumped under a lock because user threads
    send (``send_data_channel``) while the loop receives.
    """

    def __init__(self, tag: str = "") -> None:
        self.labels: dict[str, LabelInfo] = {}
        self.open: set[str] = set()
        self.opened_total = 0
        self.closed_total = 0
        self._tag = tag
        self._lock = threading.Lock()

    def set_tag(self, tag: str) -> None:
        """The connection's name in log lines (its connection_id once known)."""
        self._tag = tag

    # -- the offer ----------------------------------------------------------------------

    def load_offer(self, entries: Any) -> None:
        """Take the offer's ``data_channels`` list. Malformed entries are logged and skipped."""
        self.labels.clear()
        if entries is None:
            return
        if not isinstance(entries, list):
            logger.warning("[%s] the offer's data_channels is not a list; ignoring it", self._tag)
            return
        for entry in entries:
            label = entry.get("label") if isinstance(entry, dict) else None
            if not isinstance(label, str) or not label:
                logger.warning("[%s] ignoring an offer data_channels entry without a label: %.200r",
                               self._tag, entry)
                continue
            compress = entry.get("compress", False)
            direction = entry.get("direction")
            header = entry.get("header")
            self.labels[label] = LabelInfo(
                label=label,
                compress=compress is True,
                direction=direction if isinstance(direction, str) else None,
                header=[h for h in header if isinstance(h, dict)] if isinstance(header, list) else None,
            )

    def listed(self, label: str) -> bool:
        """The label is in the offer's ``data_channels``."""
        return label in self.labels

    def is_compressed(self, label: str) -> bool:
        """Every message on ``label`` is zlib (RFC 1950) in both directions (§6.4)."""
        info = self.labels.get(label)
        return info is not None and info.compress

    # -- state --------------------------------------------------------------------------

    def on_open(self, label: str) -> LabelInfo | None:
        """Record an open channel; return its offer entry (None when it is not listed)."""
        self.open.add(label)
        self.opened_total += 1
        info = self.labels.get(label)
        if info is not None:
            info.state = "open"
            info.opened_at = time.time()
        return info

    def on_close(self, label: str) -> None:
        """Record a closed channel."""
        if label in self.open:
            self.open.discard(label)
            self.closed_total += 1
        info = self.labels.get(label)
        if info is not None:
            info.state = "closed"

    def is_open(self, label: str) -> bool:
        """The channel is open (safe from any thread)."""
        return label in self.open

    # -- payloads -----------------------------------------------------------------------

    def encode(self, label: str, payload: bytes) -> bytes:
        """What to put on the wire for ``payload`` on ``label`` (zlib when the label is compressed)."""
        return zlib.compress(payload) if self.is_compressed(label) else payload

    def decode(self, label: str, data: bytes) -> bytes | None:
        """The payload of a message received on ``label``; None (logged) when it cannot be decompressed.

        libsora crashes on a non-zlib message on a compressed label (§6.4); we
        drop it and keep the connection.
        """
        if not self.is_compressed(label):
            return data
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            logger.warning("[%s] dropping a %d-byte message on compressed DataChannel %r: not zlib (%s)",
                           self._tag, len(data), label, exc)
            return None

    def count_sent(self, label: str, nbytes: int) -> None:
        with self._lock:
            info = self.labels.get(label)
            if info is not None:
                info.messages_sent += 1
                info.bytes_sent += nbytes

    def count_received(self, label: str, nbytes: int) -> None:
        with self._lock:
            info = self.labels.get(label)
            if info is not None:
                info.messages_received += 1
                info.bytes_received += nbytes

    # -- stats --------------------------------------------------------------------------

    def stats_reports(self, timestamp_ms: float) -> list[dict[str, Any]]:
        """W3C-style ``data-channel`` entries (and the peer-connection counters) for ``get_stats``."""
        reports: list[dict[str, Any]] = [{
            "id": "P",
            "type": "peer-connection",
            "timestamp": timestamp_ms,
            "dataChannelsOpened": self.opened_total,
            "dataChannelsClosed": self.closed_total,
        }]
        with self._lock:
            for i, info in enumerate(self.labels.values()):
                reports.append({
                    "id": f"D{i}",
                    "type": "data-channel",
                    "timestamp": timestamp_ms,
                    "label": info.label,
                    "protocol": "",
                    "state": {"new": "connecting"}.get(info.state, info.state),
                    "messagesSent": info.messages_sent,
                    "bytesSent": info.bytes_sent,
                    "messagesReceived": info.messages_received,
                    "bytesReceived": info.bytes_received,
                })
        return reports


def sender_connection_id(info: LabelInfo | None, data: bytes) -> str | None:
    """The sender connection_id at the start of ``data`` when the label has a sender header (§7)."""
    if info is None or not info.has_sender_header or len(data) < SENDER_CONNECTION_ID_LENGTH:
        return None
    try:
        return data[:SENDER_CONNECTION_ID_LENGTH].decode("ascii")
    except UnicodeDecodeError:
        return None
