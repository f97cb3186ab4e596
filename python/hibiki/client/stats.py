"""``Connection.get_stats()`` (and sora-sdk's): a W3C-style stats report built from what the SDK counts.

sora-sdk returns libwebrtc's full RTCStatsReport. Hibiki's data plane is
not libwebrtc, so the report holds the entries whose numbers the SDK really
has, with W3C ``RTCStats`` names (webrtc-stats):

* ``codec`` - one per codec in use, from the negotiated SDP;
* ``outbound-rtp`` - per sent track: ``bytesSent`` (encoded payload),
  ``framesEncoded``/``framesSent``, ``frameWidth``/``frameHeight`` (video),
  ``packetsSent`` (audio: one Opus packet per frame);
* ``media-source`` - per local source: frames given to it and their size;
* ``inbound-rtp`` - per received track: ``bytesReceived``,
  ``framesReceived``/``framesDecoded``, ``frameWidth``/``frameHeight``;
* ``transport`` - totals and DTLS/ICE state;
* what the connection counts besides (``data-channel``, ``candidate-pair``).

The same report answers the server's ``ping`` with ``stats: true`` and its
``req-stats``, which is what ``GET /v1/calls/{type}/{id}/connections/{id}/stats`` shows.

Not there: ``ssrc``, packet loss, jitter, RTT (the engine does not expose
them yet). ``timestamp`` is in microseconds since the Unix epoch, the unit
sora-sdk (libwebrtc's ``RTCStats::ToJson``) uses; browsers' ``getStats``
use milliseconds.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hibiki.client.sources import VideoSource

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.client.connection import Connection

__all__ = ["build_report"]

logger = logging.getLogger("hibiki.client")

TRANSPORT_ID = "T01"
# Clock rate and channel count of the codecs the SDK knows, for codec
# entries when the SDP cannot be read.
_KNOWN = {"VP8": ("video", 90_000, None), "VP9": ("video", 90_000, None), "AV1": ("video", 90_000, None),
          "H264": ("video", 90_000, None), "H265": ("video", 90_000, None), "OPUS": ("audio", 48_000, 2)}


class _RtpMap:
    __slots__ = ("channels", "clock_rate", "fmtp", "kind", "name", "payload_type")

    def __init__(self, kind: str, payload_type: int, name: str, clock_rate: int, channels: int | None) -> None:
        self.kind = kind
        self.payload_type = payload_type
        self.name = name
        self.clock_rate = clock_rate
        self.channels = channels
        self.fmtp: str | None = None


def _rtpmaps(sdp: str) -> dict[str, list[_RtpMap]]:
    """Per mid, the payload types of its m-line in offer order."""
    result: dict[str, list[_RtpMap]] = {}
    kind, mid = "", None
    maps: dict[str, _RtpMap] = {}
    order: list[str] = []

    def finish() -> None:
        if mid is not None:
            result[mid] = [maps[pt] for pt in order if pt in maps]

    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            finish()
            parts = line[2:].split()
            kind, mid, maps, order = (parts[0] if parts else ""), None, {}, parts[3:]
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            fields = rest.split("/")
            try:
                maps[pt] = _RtpMap(kind, int(pt), fields[0], int(fields[1]),
                                   int(fields[2]) if len(fields) > 2 else None)
            except (ValueError, IndexError):
                continue
        elif line.startswith("a=fmtp:"):
            pt, _, rest = line[7:].partition(" ")
            if pt in maps:
                maps[pt].fmtp = rest
    finish()
    return result


class _Builder:
    def __init__(self, conn: Connection, sdp: str) -> None:
        self.conn = conn
        self.now = int(time.time() * 1_000_000)  # microseconds, like libwebrtc's JSON
        self.maps = _rtpmaps(sdp)
        self.codecs: dict[str, dict[str, Any]] = {}

    def codec_id(self, mid: str, codec: str | None, direction: str) -> str | None:
        """Add (once) and name the ``codec`` entry for ``codec`` on ``mid``; ``direction`` is I or O."""
        if not codec:
            return None
        name = codec.upper()
        found = next((m for m in self.maps.get(mid, []) if m.name.upper() == name), None)
        if found is None:  # e.g. a re-offered m-line we did not see: any m-line with that codec
            found = next((m for ms in self.maps.values() for m in ms if m.name.upper() == name), None)
        if found is not None:
            kind, pt, clock, channels, fmtp, mime = (found.kind, found.payload_type, found.clock_rate,
                                                     found.channels, found.fmtp, found.name)
        elif name in _KNOWN:
            kind, clock, channels = _KNOWN[name]
            pt, fmtp, mime = None, None, "opus" if name == "OPUS" else name
        else:
            return None
        cid = f"C{direction}{TRANSPORT_ID}_{pt if pt is not None else name}"
        if cid not in self.codecs:
            entry: dict[str, Any] = {"id": cid, "type": "codec", "timestamp": self.now,
                                     "transportId": TRANSPORT_ID, "mimeType": f"{kind}/{mime}",
                                     "clockRate": clock}
            if pt is not None:
                entry["payloadType"] = pt
            if channels is not None:
                entry["channels"] = channels
            if fmtp:
                entry["sdpFmtpLine"] = fmtp
            self.codecs[cid] = entry
        return cid


def _merge(reports: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    """Add ``entry``, or fill in the fields an existing entry of the same type and id (or mid and rid) lacks."""
    for existing in reports:
        if existing.get("type") != entry["type"]:
            continue
        same = existing.get("id") == entry["id"] or (
            "mid" in entry and existing.get("mid") == entry["mid"] and existing.get("rid") == entry.get("rid"))
        if same:
            for key, value in entry.items():
                existing.setdefault(key, value)
            return
    reports.append(entry)


def build_report(conn: Connection) -> list[dict[str, Any]]:
    """The stats report of ``conn``: Hibiki's own entries, completed (see module doc)."""
    try:
        base = conn._stats_reports()
    except Exception:  # the report is best effort; never fail the caller for it
        logger.debug("the connection's own stats failed", exc_info=True)
        base = []
    reports: list[dict[str, Any]] = [r for r in base if isinstance(r, dict) and "type" in r and "id" in r]
    offer = conn.offer or {}
    b = _Builder(conn, offer.get("sdp", "") if isinstance(offer.get("sdp"), str) else "")
    for r in reports:
        # One snapshot, one clock and one unit for every entry.
        r["timestamp"] = b.now
    bytes_sent = bytes_received = 0

    for source in (conn.audio_source, conn.video_source):
        if source is None:
            continue
        counters = [c for c in source.send_counters() if c["connection_id"] == conn.connection_id]
        source_id = f"S{source.kind}-{source.id[:8]}"
        if counters:
            media_source: dict[str, Any] = {"id": source_id, "type": "media-source", "timestamp": b.now,
                                            "kind": source.kind, "trackIdentifier": source.id}
            if isinstance(source, VideoSource):
                media_source["frames"] = source.frames_in
                if source.frame_width:
                    media_source["width"] = source.frame_width
                    media_source["height"] = source.frame_height
            _merge(reports, media_source)
        for c in counters:
            # One entry per simulcast layer, as browsers report them.
            entry: dict[str, Any] = {
                "id": f"OT{TRANSPORT_ID}{c['mid']}{c['rid'] or ''}", "type": "outbound-rtp", "timestamp": b.now,
                "kind": source.kind, "mid": c["mid"], "transportId": TRANSPORT_ID,
                "mediaSourceId": source_id, "active": bool(source.enabled), "bytesSent": c["bytes_sent"],
            }
            if c["rid"]:
                entry["rid"] = c["rid"]
            codec_id = b.codec_id(c["mid"], c["codec"], "O")
            if codec_id:
                entry["codecId"] = codec_id
            if isinstance(source, VideoSource):
                entry["framesEncoded"] = c["frames_sent"]
                entry["framesSent"] = c["frames_sent"]
                entry["pliCount"] = conn._plis_received
                if source.frame_width and source.frame_height:
                    entry["frameWidth"] = int(source.frame_width / c["scale"]) // 2 * 2
                    entry["frameHeight"] = int(source.frame_height / c["scale"]) // 2 * 2
            else:
                entry["packetsSent"] = c["frames_sent"]
            bytes_sent += c["bytes_sent"]
            _merge(reports, entry)

    for track in conn.tracks:
        entry = {
            "id": f"IT{track.mid}", "type": "inbound-rtp", "timestamp": b.now, "kind": track.kind,
            "mid": track.mid, "trackIdentifier": track.id, "transportId": TRANSPORT_ID,
            "framesReceived": track.frames_received, "framesDecoded": track.frames_decoded,
            "bytesReceived": track.bytes_received,
        }
        codec_id = b.codec_id(track.mid, track.codec, "I")
        if codec_id:
            entry["codecId"] = codec_id
        if track.kind == "video" and track.frame_width:
            entry["frameWidth"] = track.frame_width
            entry["frameHeight"] = track.frame_height
        if track.kind == "audio":
            entry["packetsReceived"] = track.frames_received
        bytes_received += entry["bytesReceived"]
        _merge(reports, entry)

    for r in reports:
        if r.get("type") == "data-channel":
            bytes_sent += int(r.get("bytesSent") or 0)
            bytes_received += int(r.get("bytesReceived") or 0)
        elif r.get("type") == "candidate-pair":
            r.setdefault("transportId", TRANSPORT_ID)

    state = conn.state
    dtls = {"new": "new", "connecting": "connecting", "connected": "connected"}.get(state, "closed")
    ice = {"new": "new", "connecting": "checking", "connected": "connected"}.get(state, "closed")
    transport: dict[str, Any] = {"id": TRANSPORT_ID, "type": "transport", "timestamp": b.now,
                                 "bytesSent": bytes_sent, "bytesReceived": bytes_received,
                                 "dtlsState": dtls, "iceState": ice}
    pair = next((r for r in reports if r.get("type") == "candidate-pair"), None)
    if pair is not None:
        transport["selectedCandidatePairId"] = pair["id"]
    _merge(reports, transport)
    for codec in b.codecs.values():
        _merge(reports, codec)
    return reports
