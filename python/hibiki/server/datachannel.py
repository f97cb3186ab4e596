"""Which data channels a connection gets, and how their messages are framed.

Sora's DataChannel signaling (sora-signaling.md §3.2, §3.3, §6, §7): the
server opens every channel in-band once SCTP is up, lists each of them in
the offer's ``data_channels`` (the C++ client ignores labels missing from
that list), and compresses every message on a label whose entry says
``compress`` (zlib, RFC 1950, both directions). System labels carry
signaling (``signaling``, ``notify``, ``push``, ``stats``, ``rpc``); labels
starting with ``#`` are user messaging, forwarded between connections by the
Rust shard without Python.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Final

from hibiki.server.validation import SignalingError

__all__ = ["SYSTEM_LABELS", "ChannelEntry", "DataChannelPlan", "parse_data_channels"]

SYSTEM_LABELS: Final = ("signaling", "notify", "push", "stats")
"""Opened for every DataChannel-signaling connection; ``switched`` waits for them."""
RPC_LABEL: Final = "rpc"
"""Also opened (JSON-RPC 2.0, sora-signaling.md §9); not needed for ``switched``."""

DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly")
MAX_LABEL_BYTES: Final = 255
MAX_CHANNELS: Final = 64
MAX_MESSAGE_BYTES: Final = 1 << 20
"""Largest decompressed message accepted (a zlib bomb stops here)."""


@dataclass(frozen=True, slots=True)
class ChannelEntry:
    """One data channel of a connection, as the client asked for it."""

    label: str
    direction: str = "sendrecv"
    compress: bool = False
    ordered: bool = True
    max_packet_life_time: int | None = None
    max_retransmits: int | None = None
    protocol: str = ""
    header: tuple[dict[str, Any], ...] = ()

    @property
    def messaging(self) -> bool:
        return self.label.startswith("#")

    @property
    def wants_sender_header(self) -> bool:
        return any(h.get("type") == "sender_connection_id" for h in self.header)


def _field(entry: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = entry.get(name)
    if value is None:
        return None
    # bool is an int in Python; JSON true is not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SignalingError(f"invalid {where}.{name}: must be {kind.__name__}")
    return value


def parse_data_channels(value: Any) -> list[ChannelEntry]:
    """Validate ``connect.data_channels``; raises :class:`SignalingError` (4490)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SignalingError("invalid data_channels: must be an array")
    if len(value) > MAX_CHANNELS:
        raise SignalingError(f"invalid data_channels: at most {MAX_CHANNELS} entries")
    entries: list[ChannelEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        where = f"data_channels[{i}]"
        if not isinstance(raw, dict):
            raise SignalingError(f"invalid {where}: must be an object")
        label = raw.get("label")
        if not isinstance(label, str) or not label.startswith("#") or len(label.encode()) > MAX_LABEL_BYTES:
            raise SignalingError(f"invalid {where}.label: must be a string starting with '#' (at most 255 bytes)")
        if label in seen:
            raise SignalingError(f"invalid {where}.label: {label!r} is listed twice")
        seen.add(label)
        direction = raw.get("direction")
        if direction not in DIRECTIONS:
            raise SignalingError(f"invalid {where}.direction: must be one of {', '.join(DIRECTIONS)}")
        life = _field(raw, "max_packet_life_time", int, where)
        retransmits = _field(raw, "max_retransmits", int, where)
        if life is not None and retransmits is not None:
            raise SignalingError(f"invalid {where}: max_packet_life_time and max_retransmits are exclusive")
        for name, v in (("max_packet_life_time", life), ("max_retransmits", retransmits)):
            if v is not None and not 0 <= v <= 65535:
                raise SignalingError(f"invalid {where}.{name}: must be in 0..65535")
        header = raw.get("header")
        if header is not None and (
            not isinstance(header, list) or not all(isinstance(h, dict) and isinstance(h.get("type"), str) for h in header)
        ):
            raise SignalingError(f'invalid {where}.header: must be an array of {{"type": ...}} objects')
        entries.append(
            ChannelEntry(
                label=label,
                direction=direction,
                compress=bool(_field(raw, "compress", bool, where)),
                ordered=_field(raw, "ordered", bool, where) is not False,
                max_packet_life_time=life,
                max_retransmits=retransmits,
                protocol=_field(raw, "protocol", str, where) or "",
                header=tuple(header or ()),
            )
        )
    return entries


class DataChannelPlan:
    """The data channels of one connection.

    >>> plan = DataChannelPlan(signaling=True, messaging=[ChannelEntry("#chat")])
    >>> [d["label"] for d in plan.offer_entries()]
    ['signaling', 'notify', 'push', 'stats', 'rpc', '#chat']
    """

    def __init__(self, *, signaling: bool, messaging: list[ChannelEntry]) -> None:
        self.signaling = signaling
        system = [ChannelEntry(label) for label in (*SYSTEM_LABELS, RPC_LABEL)] if signaling else []
        self.entries: dict[str, ChannelEntry] = {e.label: e for e in [*system, *messaging]}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def sfu_specs(self) -> list[dict[str, Any]]:
        """What ``Sfu.create_connection(data_channels=...)`` takes."""
        return [
            {
                "label": e.label,
                "ordered": e.ordered,
                "max_packet_life_time": e.max_packet_life_time,
                "max_retransmits": e.max_retransmits,
                "protocol": e.protocol,
                "messaging": e.messaging,
                # Directions are the client's view: it sends on sendonly.
                "send": e.direction in ("sendrecv", "sendonly"),
                "recv": e.direction in ("sendrecv", "recvonly"),
                "header": e.wants_sender_header,
                "compress": e.compress,
            }
            for e in self.entries.values()
        ]

    def offer_entries(self) -> list[dict[str, Any]]:
        """``offer.data_channels``: every label we open, with the fields clients read."""
        out = []
        for e in self.entries.values():
            item: dict[str, Any] = {"label": e.label, "direction": e.direction, "compress": e.compress}
            if e.header:
                item["header"] = list(e.header)
            out.append(item)
        return out

    def encode(self, label: str, payload: bytes) -> bytes:
        """Frame an outgoing message for ``label``."""
        entry = self.entries.get(label)
        return zlib.compress(payload) if entry is not None and entry.compress else payload

    def decode(self, label: str, data: bytes) -> bytes:
        """Unframe an incoming message; raises ValueError for a bad payload."""
        entry = self.entries.get(label)
        if entry is None or not entry.compress:
            return data
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, MAX_MESSAGE_BYTES)
        except zlib.error as exc:
            raise ValueError(f"not zlib on compressed label {label!r}: {exc}") from None
        if d.unconsumed_tail:
            raise ValueError(f"message on {label!r} larger than {MAX_MESSAGE_BYTES} bytes")
        return out
