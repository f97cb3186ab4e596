"""The degradation policy: what gives when the bitrate is too low (pure logic, no codecs)."""

from __future__ import annotations

import pytest
from hibiki.media.adaptation import Adaptation, DegradationPreference, VideoAdapter


def _admitted(adapter: VideoAdapter, seconds: float = 3.0, fps: float = 30.0) -> float:
    """Frames per second that `admit` lets through from a `fps` capture."""
    n = int(seconds * fps)
    return sum(adapter.admit(i / fps) for i in range(n)) / seconds


def test_enough_bitrate_changes_nothing() -> None:
    for pref in DegradationPreference:
        adapter = VideoAdapter(pref, framerate=30)
        assert adapter.update(2_500_000, 1280, 720) == Adaptation(1280, 720, 30.0)
        assert _admitted(adapter) == pytest.approx(30, abs=0.5)


def test_maintain_framerate_scales_down_and_keeps_30fps() -> None:
    adapter = VideoAdapter(DegradationPreference.MAINTAIN_FRAMERATE, framerate=30)
    low = adapter.update(300_000, 1280, 720)
    assert low.framerate == 30.0
    assert low.width < 1280 and low.height < 720
    assert low.width * 9 == low.height * 16  # aspect kept
    assert low.width % 2 == 0 and low.height % 2 == 0
    # Each pixel gets at least the budget.
    assert 300_000 / (low.width * low.height * 30) >= 0.05
    assert _admitted(adapter) == pytest.approx(30, abs=0.5)


def test_maintain_resolution_drops_frames_and_keeps_size() -> None:
    adapter = VideoAdapter(DegradationPreference.MAINTAIN_RESOLUTION, framerate=30)
    low = adapter.update(700_000, 1280, 720)
    assert (low.width, low.height) == (1280, 720)
    assert 5 <= low.framerate < 30
    assert _admitted(adapter) == pytest.approx(low.framerate, abs=1.5)


def test_balanced_lowers_framerate_to_15_before_resolution() -> None:
    adapter = VideoAdapter(DegradationPreference.BALANCED, framerate=30)
    mid = adapter.update(900_000, 1280, 720)
    assert (mid.width, mid.height) == (1280, 720)
    assert 15 <= mid.framerate < 30
    low = VideoAdapter(DegradationPreference.BALANCED, framerate=30).update(250_000, 1280, 720)
    # Past 15 fps the size gives; the smaller picture may then afford more frames.
    assert low.width < 1280 and 15 <= low.framerate <= 30
    assert 250_000 / (low.width * low.height * low.framerate) >= 0.05


def test_disabled_never_degrades() -> None:
    adapter = VideoAdapter(DegradationPreference.DISABLED, framerate=30)
    assert adapter.update(50_000, 1920, 1080) == Adaptation(1920, 1080, 30.0)


def test_hysteresis_steps_up_only_with_headroom() -> None:
    adapter = VideoAdapter(DegradationPreference.MAINTAIN_FRAMERATE, framerate=30)
    down = adapter.update(1_000_000, 1280, 720)
    assert down.width < 1280
    # Just enough for full size, without the 30 % headroom: stay down.
    exact = 1280 * 720 * 30 * 0.05
    assert adapter.update(int(exact * 1.05), 1280, 720).width == down.width
    assert adapter.update(int(exact * 1.35), 1280, 720).width == 1280


@pytest.mark.parametrize("preference", [DegradationPreference.BALANCED, DegradationPreference.MAINTAIN_RESOLUTION])
def test_frame_rate_returns_to_full_once_the_estimate_recovers(preference: DegradationPreference) -> None:
    # 1.5 Mbit/s at 720p30 is 0.054 bit per pixel: fits, but within the 30 %
    # headroom a size step needs. A dip of the estimate lowers the frame rate;
    # its recovery to the cap must bring the full rate back.
    adapter = VideoAdapter(preference, framerate=30)
    assert adapter.update(1_500_000, 1280, 720).framerate == 30
    dip = adapter.update(1_000_000, 1280, 720)
    assert (dip.width, dip.height) == (1280, 720) and dip.framerate < 30
    assert adapter.update(1_500_000, 1280, 720) == Adaptation(1280, 720, 30.0)
    assert _admitted(adapter) == pytest.approx(30, abs=0.5)


def test_none_means_balanced_and_bad_values_are_refused() -> None:
    assert VideoAdapter(None).preference is DegradationPreference.BALANCED
    with pytest.raises(ValueError):
        VideoAdapter(7)
