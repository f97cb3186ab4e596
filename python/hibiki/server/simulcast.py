"""Simulcast on the server: the layers a publisher is asked for, and choosing what a receiver gets.

The layers and their default encodings are in :mod:`hibiki.simulcast`.

Each receiver gets one layer of each simulcast sender. Which one it asks for
comes from ``simulcast_rid`` / ``simulcast_request_rid`` at connect, and can
be changed at run time with the HTTP API (``RequestSimulcastRid``) or the
JSON-RPC method ``2025.2.0/RequestSimulcastRid`` on the ``rpc`` data
channel; the SFU switches on the layer's next keyframe and falls back to the
next lower layer the publisher is actually sending. Every switch is told to
the receiver with a ``simulcast.switched`` notify.
"""

from __future__ import annotations

from typing import Any, Final

from hibiki.simulcast import DEFAULT_RID, RIDS, default_encodings

__all__ = [
    "AUTO",
    "DEFAULT_RID",
    "RIDS",
    "default_encodings",
    "layer_for",
    "switched_notify",
]

AUTO: Final = "auto"
"""Let the SFU choose: the highest layer the receiver's bandwidth allows."""


def layer_for(rid: str) -> int | None:
    """The SFU layer for a requested rid: ``none`` -> None (no video), ``auto`` -> the top.

    Raises ValueError for anything else than ``none``, ``auto``, ``r0``, ``r1``, ``r2``.
    """
    if rid == "none":
        return None
    if rid == AUTO:
        return len(RIDS) - 1
    try:
        return RIDS.index(rid)
    except ValueError:
        raise ValueError(f"rid must be one of none, r0, r1, r2, auto; got {rid!r}") from None


def switched_notify(sender_connection_id: str, current_rid: str | None, previous_rid: str | None,
                    request_rid: str | None) -> dict[str, Any]:
    """The ``simulcast.switched`` notify a receiver gets when its layer of a sender changes."""
    order = {rid: i for i, rid in enumerate(RIDS)}
    higher = previous_rid is None or order.get(current_rid or "", -1) > order.get(previous_rid, -1)
    return {
        "type": "notify",
        "event_type": "simulcast.switched",
        "sender_connection_id": sender_connection_id,
        "current_rid": current_rid,
        "previous_rid": previous_rid,
        "request_rid": request_rid,
        "priority": "higher" if higher else "lower",
        "trigger": "receiver",
    }
