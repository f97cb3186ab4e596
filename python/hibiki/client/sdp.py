"""Just enough SDP reading for the SDK: which codec an m-line of ours carries.

The engine does the real SDP work (str0m). The SDK only needs to know which
codec to encode for our upstream audio/video m-lines, and the server's offer
states it: the first payload type of the m-line is the preferred codec.
"""

from __future__ import annotations

__all__ = ["MediaSection", "codec_for_mid", "parse_sections", "payload_types_for_mid"]

# Payload formats that are not media codecs (retransmission, FEC, comfort noise...).
_NOT_MEDIA = {"RTX", "RED", "ULPFEC", "FLEXFEC-03", "CN", "TELEPHONE-EVENT"}


class MediaSection:
    """One ``m=`` section: its kind, mid, direction and codecs in preference order."""

    __slots__ = ("codecs", "direction", "kind", "mid", "port")

    def __init__(self, kind: str, port: int) -> None:
        self.kind = kind
        self.port = port
        self.mid: str | None = None
        self.direction: str | None = None
        self.codecs: list[str] = []

    def __repr__(self) -> str:
        return f"MediaSection({self.kind!r}, mid={self.mid!r}, {self.direction}, {self.codecs})"


def parse_sections(sdp: str) -> list[MediaSection]:
    """Split ``sdp`` into its media sections."""
    sections: list[MediaSection] = []
    current: MediaSection | None = None
    order: list[str] = []
    names: dict[str, str] = {}

    def finish() -> None:
        if current is not None:
            current.codecs = [names[pt] for pt in order if pt in names and names[pt] not in _NOT_MEDIA]

    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            finish()
            parts = line[2:].split()
            port = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            current = MediaSection(parts[0] if parts else "", port)
            order = parts[3:]
            names = {}
            sections.append(current)
        elif current is None:
            continue
        elif line.startswith("a=mid:"):
            current.mid = line[6:]
        elif line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            names[pt] = rest.split("/")[0].upper()
        elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            current.direction = line[2:]
    finish()
    return sections


def codec_for_mid(sdp: str, mid: str) -> str | None:
    """The preferred codec name (``"VP8"``, ``"OPUS"``...) of the m-line ``mid``."""
    for section in parse_sections(sdp):
        if section.mid == mid:
            return section.codecs[0] if section.codecs else None
    return None


def payload_types_for_mid(sdp: str, mid: str) -> dict[str, int]:
    """Codec name -> RTP payload type on the m-line ``mid`` (the first one listed per codec).

    >>> payload_types_for_mid(offer_sdp, "1")
    {'VP8': 96, 'RTX': 97}

    An answer reuses the offer's payload types, so the offer's numbers are
    what frames carry both ways (frame transforms report them).
    """
    sections: list[tuple[str | None, dict[str, int]]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append((None, {}))
        elif not sections:
            continue
        elif line.startswith("a=mid:"):
            sections[-1] = (line[6:], sections[-1][1])
        elif line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            if pt.isdigit():
                sections[-1][1].setdefault(rest.split("/")[0].upper(), int(pt))
    for section_mid, types in sections:
        if section_mid == mid:
            return types
    return {}
