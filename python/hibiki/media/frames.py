"""The unit that moves between the codecs and the engine: one encoded frame.

The Rust engine works in frame mode: it packetizes what an encoder produced and
gives back what a depacketizer reassembled. :class:`EncodedFrame` is that
frame on the Python side, stamped in the RTP clock of its media kind so that it
can be handed to ``ClientEngine.write_frame`` without any conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUDIO_CLOCK_RATE", "VIDEO_CLOCK_RATE", "EncodedFrame"]

VIDEO_CLOCK_RATE = 90_000
"""RTP clock rate of every video codec (RFC 7741 for VP8, and likewise the others)."""

AUDIO_CLOCK_RATE = 48_000
"""RTP clock rate of Opus (RFC 7587): always 48 kHz, whatever the coded bandwidth."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One encoded frame: a whole VP8 frame, or one Opus packet.

    Attributes:
        data: The encoded bitstream of exactly one frame/packet.
        rtp_time: Timestamp in the RTP clock: :data:`VIDEO_CLOCK_RATE` for
            video, :data:`AUDIO_CLOCK_RATE` for Opus.
        keyframe: True when the frame can be decoded on its own. Always True
            for audio, whose packets do not depend on each other.
    """

    data: bytes
    rtp_time: int
    keyframe: bool
