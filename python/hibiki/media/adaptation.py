"""What to encode when the network cannot carry the picture as captured.

When the bandwidth estimate (or ``video_bit_rate``) is too low for the
captured size and frame rate, something has to give. sora-sdk (libwebrtc)
lets the user choose what with ``degradation_preference``:

* ``MAINTAIN_FRAMERATE``: keep the frame rate, lower the resolution
  (motion stays smooth; the usual choice for people on camera);
* ``MAINTAIN_RESOLUTION``: keep the resolution, drop frames (screen content,
  text, robots reading gauges);
* ``BALANCED``: first lower the frame rate to 15 fps, then the resolution;
* ``DISABLED``: change nothing; the encoder's own rate control copes
  (quality drops and, past a point, it drops frames itself).

The rule is a budget of bits per pixel per frame: below about 0.05 a
real-time VP8/VP9/H.264 encoder at speed settings like ours produces mush,
so the picture is made smaller (in libwebrtc's steps of 3/4 and 1/2) or the
frame rate lower until each pixel gets that much. A step up in size needs
30 % headroom and a step down is taken at once, so the picture does not
flap (each size change costs a keyframe) when the estimate wobbles around
a threshold; the frame rate follows the estimate both ways.

>>> adapter = VideoAdapter(DegradationPreference.MAINTAIN_FRAMERATE, framerate=30)
>>> adapter.update(bitrate=300_000, width=1280, height=720)
Adaptation(width=480, height=270, framerate=30.0)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Adaptation", "DegradationPreference", "VideoAdapter"]

# Bits per pixel per frame below which we degrade (see the module docstring).
MIN_BITS_PER_PIXEL = 0.05
# Needed over the threshold before stepping back up (hysteresis).
_UPGRADE_HEADROOM = 1.3
# Scale factors, largest first: libwebrtc's alternating 3/4 and 2/3 steps
# give 1, 3/4, 1/2, 3/8, 1/4, 3/16, 1/8.
_SCALES = (1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125)
_MIN_FRAMERATE = 5.0
_BALANCED_FRAMERATE = 15.0
_MIN_SIDE = 16


class DegradationPreference(enum.IntEnum):
    """sora-sdk's ``SoraDegradationPreference``, same values."""

    DISABLED = 0
    MAINTAIN_FRAMERATE = 1
    MAINTAIN_RESOLUTION = 2
    BALANCED = 3


@dataclass(frozen=True, slots=True)
class Adaptation:
    """The size and frame rate to encode at."""

    width: int
    height: int
    framerate: float


def _even(value: float) -> int:
    return max(_MIN_SIDE, int(value) // 2 * 2)


class VideoAdapter:
    """Choose encode size and frame rate from the target bitrate.

    One per encoder; not thread safe (the source's worker thread owns it).
    """

    def __init__(self, preference: DegradationPreference | int | None, framerate: float = 30.0) -> None:
        """Args:
            preference: what to give up first; None means ``BALANCED``, as
                in libwebrtc.
            framerate: the frame rate the source is captured at.
        """
        self.preference = (
            DegradationPreference.BALANCED if preference is None else DegradationPreference(int(preference))
        )
        self.max_framerate = float(framerate)
        self._scale = 0  # index into _SCALES
        self._framerate = self.max_framerate
        self._next_due = 0.0

    def _fits(self, bitrate: float, pixels: float, fps: float, headroom: float) -> bool:
        return bitrate >= pixels * fps * MIN_BITS_PER_PIXEL * headroom

    def update(self, bitrate: int, width: int, height: int) -> Adaptation:
        """Return what to encode a ``width`` x ``height`` capture at for ``bitrate`` bit/s."""
        pref = self.preference
        if pref is DegradationPreference.DISABLED or bitrate <= 0:
            self._scale, self._framerate = 0, self.max_framerate
            return Adaptation(width, height, self.max_framerate)
        pixels = float(width * height)
        if pref is not DegradationPreference.MAINTAIN_RESOLUTION:
            floor_fps = (
                self.max_framerate
                if pref is DegradationPreference.MAINTAIN_FRAMERATE
                else min(self.max_framerate, _BALANCED_FRAMERATE)
            )
            fps = self._pick_framerate(bitrate, pixels * _SCALES[self._scale] ** 2, floor_fps)
            self._pick_scale(bitrate, pixels, fps)
            self._framerate = self._pick_framerate(bitrate, pixels * _SCALES[self._scale] ** 2, floor_fps)
        else:
            self._scale = 0
            self._framerate = self._pick_framerate(bitrate, pixels, _MIN_FRAMERATE)
        scale = _SCALES[self._scale]
        if scale == 1.0:
            return Adaptation(width, height, self._framerate)
        return Adaptation(_even(width * scale), _even(height * scale), self._framerate)

    def _pick_scale(self, bitrate: float, pixels: float, fps: float) -> None:
        # Down at once while it does not fit; up one step at a time, with headroom.
        while self._scale < len(_SCALES) - 1 and not self._fits(
            bitrate, pixels * _SCALES[self._scale] ** 2, fps, 1.0
        ):
            self._scale += 1
        while self._scale > 0 and self._fits(
            bitrate, pixels * _SCALES[self._scale - 1] ** 2, fps, _UPGRADE_HEADROOM
        ):
            self._scale -= 1

    def _pick_framerate(self, bitrate: float, pixels: float, floor: float) -> float:
        affordable = bitrate / (pixels * MIN_BITS_PER_PIXEL)
        if affordable >= self.max_framerate:
            # Back to the full rate as soon as it fits, without headroom: a
            # frame-rate step costs no keyframe or reopen, so flapping at the
            # edge is harmless, while headroom would keep a stream whose cap
            # (video_bit_rate) sits just above the threshold below full rate
            # for good after one dip of the estimate.
            return self.max_framerate
        return max(floor, min(self.max_framerate, round(affordable, 1)))

    def admit(self, timestamp: float) -> bool:
        """Whether to encode a picture captured at ``timestamp`` (seconds).

        Spaces encoded pictures by the chosen frame rate; a picture arriving
        early is skipped (never queued), so the newest one always wins.
        """
        if self._framerate >= self.max_framerate:
            return True
        if timestamp + 0.002 < self._next_due:
            return False
        # Advance by whole intervals so the average rate is the target even
        # when it does not divide the capture rate; after a pause, restart
        # from now rather than let a burst through.
        self._next_due = max(self._next_due + 1.0 / self._framerate, timestamp)
        return True
