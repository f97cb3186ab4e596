"""Test signals whose content can be checked after a lossy codec.

Video: :func:`test_pattern` draws two bands of colour bars that scroll in
opposite directions and, on a black box, a six-digit frame counter in
seven-segment digits. The digits are big and blocky on purpose: a person can
read them on screen, and :func:`read_counter` reads them back by sampling the
middle of each segment, which survives VP8 at 1.5 Mbit/s at 720p and at small
simulcast sizes such as 320x240. :func:`pattern_intact` compares the bars with
what the counter says they should be, so a test can tell a clean frame from a
garbled one, and frame *n* from frame *n+1*.

Audio: :func:`tone` makes phase-continuous sine chunks; :func:`dominant_frequency`
and :func:`level_dbfs` measure what came out of a codec.

Everything is vectorised numpy (the pattern is drawn with slice assignments,
the reader gathers all its samples with one fancy index), so a demo can draw
720p at 30 fps and an integration test can check every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "dominant_frequency",
    "level_dbfs",
    "pattern_intact",
    "read_counter",
    "test_pattern",
    "tone",
]

COUNTER_DIGITS = 6
"""How many digits :func:`test_pattern` draws; counters wrap modulo ``10**COUNTER_DIGITS``."""

MIN_WIDTH = 64
"""Smallest frame width :func:`test_pattern` draws (segments are then 2 px thick)."""
MIN_HEIGHT = 48
"""Smallest frame height :func:`test_pattern` draws."""

_BARS = 8
# BGR, ordered so that neighbouring bars differ a lot: when the bars move by a
# fraction of their width, the picture changes enough that pattern_intact()
# tells consecutive counters apart (mean difference ~70 against a tolerance
# of 40), while codec error on the flat bars stays small.
_PALETTE = np.array(
    [
        (255, 255, 255),  # white
        (255, 0, 0),  # blue
        (0, 255, 255),  # yellow
        (255, 0, 255),  # magenta
        (0, 255, 0),  # green
        (0, 0, 255),  # red
        (255, 255, 0),  # cyan
        (0, 0, 0),  # black
    ],
    dtype=np.uint8,
)
# The bars move by width/_SPEED_DIVISOR pixels per frame: 8 edges x 1/24 of
# the width = a third of the band changes colour from one frame to the next.
_SPEED_DIVISOR = 24

# Seven segments, in the order a..g of the usual naming:
#   aaa
#  f   b
#   ggg
#  e   c
#   ddd
_SEGMENTS_OF_DIGIT: tuple[str, ...] = (
    "abcdef",  # 0
    "bc",  # 1
    "abdeg",  # 2
    "abcdg",  # 3
    "bcfg",  # 4
    "acdfg",  # 5
    "acdefg",  # 6
    "abc",  # 7
    "abcdefg",  # 8
    "abcdfg",  # 9
)
_SEGMENT_NAMES = "abcdefg"
_DIGIT_OF_MASK: dict[int, int] = {
    sum(1 << _SEGMENT_NAMES.index(s) for s in segs): digit
    for digit, segs in enumerate(_SEGMENTS_OF_DIGIT)
}

# Sampled brightness must be clearly on or clearly off; anything in between
# means this is not our pattern (or it is too damaged to trust), and a wrong
# counter would be worse than no counter.
_ON_MIN = 150.0
_OFF_MAX = 105.0

_Rect = tuple[int, int, int, int]  # y0, y1, x0, x1


@dataclass(frozen=True, slots=True)
class _Geometry:
    """Where everything goes for one frame size (cached per size)."""

    width: int
    height: int
    speed: int
    top_strip: npt.NDArray[np.uint8]  # (2*width, 3): a row of bars, twice, to slice from
    bottom_strip: npt.NDArray[np.uint8]
    box: _Rect  # the black box behind the digits
    digit_segments: tuple[tuple[_Rect, ...], ...]  # [digit][segment a..g]
    # Sampling for read_counter: flat index arrays into the frame, one row per
    # sample point, one column per pixel of its patch.
    sample_y: npt.NDArray[np.intp]  # (points, patch)
    sample_x: npt.NDArray[np.intp]
    segment_points: int  # the first COUNTER_DIGITS*7 points are segments, the rest must be dark


def _check_size(width: int, height: int) -> None:
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(
            f"test pattern needs at least {MIN_WIDTH}x{MIN_HEIGHT}, got {width}x{height}"
        )


@lru_cache(maxsize=16)
def _geometry(width: int, height: int) -> _Geometry:
    # Digits as large as fit: 90% of the width for six cells, and a height of
    # at most 36% of the frame (the upper band of bars must stay visible).
    cell_w = width * 0.9 / COUNTER_DIGITS
    digit_w = int(min(cell_w * 0.75, height * 0.36 / 1.8))
    digit_h = int(digit_w * 1.8)
    thick = max(2, round(digit_w / 5))
    gap = max(thick, int(cell_w - digit_w))
    margin = thick

    box_w = COUNTER_DIGITS * digit_w + (COUNTER_DIGITS - 1) * gap + 2 * margin
    box_h = digit_h + 2 * margin
    bx0 = (width - box_w) // 2
    by0 = min(height - box_h, int(height * 0.7) - box_h // 2)
    box = (by0, by0 + box_h, bx0, bx0 + box_w)

    digits: list[tuple[_Rect, ...]] = []
    points: list[tuple[int, int]] = []
    dark_points: list[tuple[int, int]] = []
    for i in range(COUNTER_DIGITS):
        x0 = bx0 + margin + i * (digit_w + gap)
        y0 = by0 + margin
        x1, y1 = x0 + digit_w, y0 + digit_h
        mid = y0 + (digit_h - thick) // 2  # top row of the middle bar
        digits.append(
            (
                (y0, y0 + thick, x0, x1),  # a
                (y0, mid + thick, x1 - thick, x1),  # b
                (mid, y1, x1 - thick, x1),  # c
                (y1 - thick, y1, x0, x1),  # d
                (mid, y1, x0, x0 + thick),  # e
                (y0, mid + thick, x0, x0 + thick),  # f
                (mid, mid + thick, x0, x1),  # g
            )
        )
        # Sample each segment at its middle, away from the corners where
        # segments overlap, so that one segment's sample never sees another.
        cx, half = (x0 + x1) // 2, thick // 2
        upper_cy = (y0 + thick + mid) // 2
        lower_cy = (mid + thick + y1 - thick) // 2
        points += [
            (y0 + half, cx),  # a
            (upper_cy, x1 - thick + half),  # b
            (lower_cy, x1 - thick + half),  # c
            (y1 - thick + half, cx),  # d
            (lower_cy, x0 + half),  # e
            (upper_cy, x0 + half),  # f
            (mid + half, cx),  # g
        ]
        # The two holes of every digit are always black: if they are not,
        # this is not our pattern.
        dark_points += [(upper_cy, cx), (lower_cy, cx)]
    # The box margin is black too (left and right ends).
    box_cy = by0 + box_h // 2
    dark_points += [(box_cy, bx0 + margin // 2), (box_cy, bx0 + box_w - 1 - margin // 2)]

    # A square patch of about half the segment thickness around each point:
    # averaging it rides out codec noise, and it stays inside the segment.
    r = max(0, thick // 4)
    offsets = np.arange(-r, r + 1)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    all_points = np.array(points + dark_points, dtype=np.intp)
    sample_y = all_points[:, :1] + oy.reshape(1, -1)
    sample_x = all_points[:, 1:] + ox.reshape(1, -1)

    speed = max(1, width // _SPEED_DIVISOR)
    x = np.arange(2 * width)
    bar_of_x = (x % width) * _BARS // width
    top_strip = _PALETTE[bar_of_x]
    bottom_strip = _PALETTE[::-1][bar_of_x]
    for a in (top_strip, bottom_strip, sample_y, sample_x):
        a.flags.writeable = False

    return _Geometry(
        width=width,
        height=height,
        speed=speed,
        top_strip=top_strip,
        bottom_strip=bottom_strip,
        box=box,
        digit_segments=tuple(digits),
        sample_y=sample_y,
        sample_x=sample_x,
        segment_points=len(points),
    )


def _draw_bars(out: npt.NDArray[np.uint8], geo: _Geometry, counter: int) -> None:
    w, h = geo.width, geo.height
    shift = (counter * geo.speed) % w
    half = h // 2
    # Top band scrolls left, bottom band right: a frame mirrored or with its
    # halves swapped does not match either.
    out[:half] = geo.top_strip[shift : shift + w]
    out[half:] = geo.bottom_strip[w - shift : 2 * w - shift]


def test_pattern(counter: int, width: int = 1280, height: int = 720) -> npt.NDArray[np.uint8]:
    """Draw test frame number ``counter`` as a BGR ``uint8`` array of shape ``(height, width, 3)``.

    The frame shows two bands of colour bars scrolling in opposite directions
    (``width // 24`` pixels per counter step) and the counter, modulo
    ``10**6``, as six white seven-segment digits on a black box in the lower
    part of the picture. Segments are at least 1/40 of the height thick at
    16:9 and 4:3, so the digits survive lossy compression.

    Raises:
        ValueError: ``counter`` is negative or the size is below 64x48.
    """
    if counter < 0:
        raise ValueError("counter must be >= 0")
    _check_size(width, height)
    geo = _geometry(width, height)
    out = np.empty((height, width, 3), dtype=np.uint8)
    _draw_bars(out, geo, counter)
    by0, by1, bx0, bx1 = geo.box
    out[by0:by1, bx0:bx1] = 0
    text = f"{counter % 10**COUNTER_DIGITS:0{COUNTER_DIGITS}d}"
    for ch, segments in zip(text, geo.digit_segments, strict=True):
        for name in _SEGMENTS_OF_DIGIT[int(ch)]:
            y0, y1, x0, x1 = segments[_SEGMENT_NAMES.index(name)]
            out[y0:y1, x0:x1] = 255
    return out


# pytest collects module-level names that start with "test"; this one is a
# generator of test frames, not a test.
test_pattern.__test__ = False  # type: ignore[attr-defined]


def _is_frame(bgr: npt.NDArray[np.generic]) -> bool:
    return (
        isinstance(bgr, np.ndarray)
        and bgr.dtype == np.uint8
        and bgr.ndim == 3
        and bgr.shape[2] == 3
        and bgr.shape[0] >= MIN_HEIGHT
        and bgr.shape[1] >= MIN_WIDTH
    )


def read_counter(bgr: npt.NDArray[np.uint8]) -> int | None:
    """Read back the counter drawn by :func:`test_pattern` from a (decoded) frame.

    Samples the middle of every segment and the spots that must stay black,
    all in one gather. Returns None if the frame is not such a pattern, or is
    too damaged to read with confidence (a brightness that is neither clearly
    on nor clearly off, or a segment combination that is not a digit).
    """
    if not _is_frame(bgr):
        return None
    geo = _geometry(bgr.shape[1], bgr.shape[0])
    # (points, patch, 3) -> mean brightness per point; the digits are grey so
    # the plain channel mean is as good as luma.
    levels = bgr[geo.sample_y, geo.sample_x].mean(axis=(1, 2))
    segs, dark = levels[: geo.segment_points], levels[geo.segment_points :]
    if np.any(dark > _OFF_MAX) or np.any((segs > _OFF_MAX) & (segs < _ON_MIN)):
        return None
    on = (segs >= _ON_MIN).reshape(COUNTER_DIGITS, 7)
    masks = on.astype(np.int64) @ (1 << np.arange(7, dtype=np.int64))
    value = 0
    for mask in masks.tolist():
        digit = _DIGIT_OF_MASK.get(int(mask))
        if digit is None:
            return None
        value = value * 10 + digit
    return value


def pattern_intact(bgr: npt.NDArray[np.uint8], counter: int, tolerance: float = 40.0) -> bool:
    """Tell whether the bars of ``bgr`` are those of ``test_pattern(counter, w, h)``.

    Compares everything outside the counter box (the digits are checked by
    :func:`read_counter`) and returns True when the mean absolute difference
    per channel is below ``tolerance``. A clean VP8 frame is within a few
    units; a garbled frame, or the frame of a neighbouring counter, is far
    above 40.
    """
    if not _is_frame(bgr) or counter < 0:
        return False
    height, width = int(bgr.shape[0]), int(bgr.shape[1])
    geo = _geometry(width, height)
    expected = np.empty_like(bgr)
    _draw_bars(expected, geo, counter)
    diff = np.abs(bgr.astype(np.int16) - expected)
    by0, by1, bx0, bx1 = geo.box
    total = int(diff.sum(dtype=np.int64)) - int(diff[by0:by1, bx0:bx1].sum(dtype=np.int64))
    count = (width * height - (by1 - by0) * (bx1 - bx0)) * 3
    return total / count < tolerance


def tone(
    frequency: float,
    sample_rate: int,
    channels: int,
    start_sample: int,
    samples: int,
    amplitude: float = 0.3,
) -> npt.NDArray[np.int16]:
    """Make a sine chunk: int16 PCM ``(samples, channels)``, the same on every channel.

    ``start_sample`` is the index of the first sample in the whole signal, so
    consecutive calls with ``start_sample += samples`` join without a phase
    jump. ``amplitude`` is relative to full scale (1.0 = 32767).
    """
    if sample_rate <= 0 or channels <= 0 or samples < 0:
        raise ValueError("sample_rate and channels must be > 0 and samples >= 0")
    n = np.arange(start_sample, start_sample + samples, dtype=np.int64)
    # Reduce the phase modulo one period in exact integer-ish arithmetic first,
    # so that a chunk an hour into the signal is as clean as the first one.
    cycles = (n * frequency / sample_rate) % 1.0
    wave = np.rint(np.sin(2.0 * np.pi * cycles) * (amplitude * 32767.0))
    mono = np.clip(wave, -32768, 32767).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


def _channel0(pcm: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    a = np.asarray(pcm)
    if a.ndim == 2:
        a = a[:, 0]
    return a.astype(np.float64)


def dominant_frequency(pcm: npt.NDArray[np.generic], sample_rate: int) -> float:
    """Frequency in Hz of the strongest spectral peak of channel 0.

    Hann-windowed FFT with parabolic interpolation of the log magnitude around
    the peak bin, which is accurate to a small fraction of a bin for a tone.
    Returns 0.0 for silence or fewer than 4 samples.
    """
    x = _channel0(pcm)
    if x.size < 4:
        return 0.0
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0  # what is left of DC after removing the mean
    k = int(np.argmax(spectrum))
    if spectrum[k] <= 0.0:
        return 0.0
    delta = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2.0 * b + c
        if denom < 0.0:
            delta = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return float((k + delta) * sample_rate / x.size)


def level_dbfs(pcm: npt.NDArray[np.generic]) -> float:
    """RMS level of all samples in dB relative to int16 full scale, floored at -120.0.

    A full-scale square wave is 0 dBFS and a full-scale sine about -3 dBFS;
    empty input and digital silence give -120.0 instead of -inf.
    """
    a = np.asarray(pcm, dtype=np.float64)
    if a.size == 0:
        return -120.0
    rms = math.sqrt(float(np.mean(np.square(a))))
    if rms <= 0.0:
        return -120.0
    return max(-120.0, 20.0 * math.log10(rms / 32768.0))
