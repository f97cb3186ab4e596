"""Simulcast vocabulary shared by the server and the SDK.

A simulcast publisher sends its video several times at once, as *layers*
``r0`` (a quarter of the picture's width and height), ``r1`` (half) and
``r2`` (full), lowest quality first (sora-signaling.md §8). The server names
them in its offer, in the SDP (``a=simulcast:recv r0;r1;r2``) and in the
``encodings`` list, which libwebrtc clients (sora-sdk, browsers) and the
Hibiki SDK apply to their encoders. Each receiver gets one layer of each
sender, chosen by the SFU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DEFAULT_RID", "RIDS", "SimulcastLayer", "default_encodings", "layers_from_encodings"]

RIDS: Final = ("r0", "r1", "r2")
"""The layers, lowest quality first."""

DEFAULT_RID: Final = "r2"
"""What a receiver gets when it did not ask: the best layer being sent."""

# Picture size divisor per layer (libwebrtc's and Sora's defaults).
_SCALE: Final = (4.0, 2.0, 1.0)
# Share of the total video bit rate per layer: libwebrtc's maximum rates for
# 320x180, 640x360 and 1280x720 (200, 700 and 2500 kbps), normalised.
_SHARE: Final = (200 / 3400, 700 / 3400, 2500 / 3400)
# The total when the publisher gave no video bit rate, kbps.
DEFAULT_TOTAL_KBPS: Final = 1500
# No layer is encoded below this, bit/s.
MIN_LAYER_BITRATE: Final = 30_000


def default_encodings(video_bit_rate: int | None) -> list[dict[str, Any]]:
    """The offer's ``encodings`` for a simulcast publisher, ``r0`` first.

    ``video_bit_rate`` (kbps, the publisher's ``video.bit_rate``) is split
    over the layers as libwebrtc weighs them; each layer gets
    ``scaleResolutionDownBy`` 4, 2, 1 and ``maxBitrate`` in bit/s.

    >>> [e["maxBitrate"] for e in default_encodings(3400)]
    [200000, 700000, 2500000]
    """
    total = (video_bit_rate or DEFAULT_TOTAL_KBPS) * 1000
    return [
        {"rid": rid, "active": True, "scaleResolutionDownBy": scale,
         "maxBitrate": max(MIN_LAYER_BITRATE, round(total * share))}
        for rid, scale, share in zip(RIDS, _SCALE, _SHARE)
    ]


@dataclass(frozen=True)
class SimulcastLayer:
    """How the SDK encodes one layer: the picture divided by ``scale``, at up to ``max_bitrate`` bit/s."""

    rid: str
    scale: float
    max_bitrate: int
    active: bool = True


def layers_from_encodings(rids: Sequence[str], encodings: Any, video_bit_rate: int | None) -> list[SimulcastLayer]:
    """The layers to encode for the RIDs the SDP negotiated, as the offer's ``encodings`` describe them.

    An encoding gives ``scaleResolutionDownBy``, ``maxBitrate`` (bit/s) and
    ``active``; what it leaves out (or a missing ``encodings``) comes from
    :func:`default_encodings` for ``video_bit_rate`` (kbps). RIDs are matched
    by name; unknown names are treated by their position, lowest first.
    """
    defaults = default_encodings(video_bit_rate)
    given = {e.get("rid"): e for e in encodings if isinstance(e, dict)} if isinstance(encodings, list) else {}
    layers: list[SimulcastLayer] = []
    for i, rid in enumerate(rids):
        base = defaults[RIDS.index(rid)] if rid in RIDS else defaults[min(i, len(defaults) - 1)]
        e = {**base, **given.get(rid, {})}
        scale = e.get("scaleResolutionDownBy")
        bitrate = e.get("maxBitrate")
        layers.append(SimulcastLayer(
            rid=rid,
            scale=float(scale) if isinstance(scale, (int, float)) and scale >= 1 else base["scaleResolutionDownBy"],
            max_bitrate=int(bitrate) if isinstance(bitrate, int) and bitrate > 0 else base["maxBitrate"],
            active=e.get("active") is not False,
        ))
    return layers
