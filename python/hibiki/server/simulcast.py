"""Simulcast and spotlight on the server: the layers a publisher is asked for, and choosing what a receiver gets.

The layers and their default encodings are in :mod:`hibiki.simulcast`.

Each receiver gets one layer of each simulcast sender. Which one it asks for
comes from ``simulcast_rid`` / ``simulcast_request_rid`` at connect, and can
be changed at run time with the HTTP API (``RequestSimulcastRid``) or the
JSON-RPC method ``2025.2.0/RequestSimulcastRid`` on the ``rpc`` data
channel; the SFU switches on the layer's next keyframe and falls back to the
next lower layer the publisher is actually sending. Every switch is told to
the receiver with a ``simulcast.switched`` notify.

Spotlight (``spotlight: true``): senders always send simulcast; the SFU
focuses on the channel's ``spotlight_number`` loudest speakers (from the
audio level on their packets), receivers get those at
``spotlight_focus_rid`` and the others at ``spotlight_unfocus_rid``, and
``spotlight.focused`` / ``spotlight.unfocused`` notifies follow the focus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from hibiki.simulcast import DEFAULT_RID, RIDS, default_encodings

if TYPE_CHECKING:
    from hibiki.server.channel import Member
    from hibiki.server.validation import ConnectRequest

__all__ = [
    "AUTO",
    "DEFAULT_RID",
    "RIDS",
    "default_encodings",
    "layer_for",
    "spotlight_notify",
    "spotlight_spec",
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


DEFAULT_SPOTLIGHT_NUMBER: Final = 1
"""How many speakers are in focus when a connection does not say (``spotlight_number``)."""


def spotlight_spec(req: ConnectRequest) -> tuple[int, int | None, int | None]:
    """What the SFU needs for a spotlight receiver: (number, focus layer, unfocus layer).

    Focused senders come at ``spotlight_focus_rid`` (default ``r2``), the
    others at ``spotlight_unfocus_rid`` (default ``r0``); ``none`` sends no video.
    """
    return (
        req.spotlight_number or DEFAULT_SPOTLIGHT_NUMBER,
        layer_for(req.spotlight_focus_rid or "r2"),
        layer_for(req.spotlight_unfocus_rid or "r0"),
    )


def spotlight_notify(member: Member, focused: bool) -> dict[str, Any]:
    """``spotlight.focused`` / ``spotlight.unfocused`` about ``member`` (sora-signaling.md §6)."""
    return {
        "type": "notify",
        "event_type": "spotlight.focused" if focused else "spotlight.unfocused",
        "connection_id": member.connection_id,
        "client_id": member.client_id,
        "audio": member.audio,
        "video": member.video,
        "fixed": False,
    }


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
