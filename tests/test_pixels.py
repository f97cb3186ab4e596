"""The Rust core's BGR <-> I420/NV12 conversion against FFmpeg's swscale."""

from __future__ import annotations

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from hibiki import _core
from hibiki.media.pixels import bgr_to_frame, frame_to_bgr


def _picture(width: int = 320, height: int = 180) -> np.ndarray:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:height, 0:width]
    # Smooth colour ramps (no hard chroma edges, where 4:2:0 upsamplers may
    # legitimately differ) plus camera-like noise.
    bgr = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1)
    return np.clip(bgr + rng.integers(-6, 7, bgr.shape), 0, 255).astype(np.uint8)


def _pixels(frame: av.VideoFrame) -> list[np.ndarray]:
    """Each plane's pixels without the row padding, whose size depends on the CPU's SIMD alignment."""
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]


def _swscale(frame: av.VideoFrame, fmt: str, **kw: object) -> av.VideoFrame:
    return VideoReformatter().reformat(frame, format=fmt, threads=1, **kw)


def test_bgr_to_i420_matches_swscale() -> None:
    bgr = _picture()
    ours = bgr_to_frame(bgr, "yuv420p")
    assert ours is not None and ours.format.name == "yuv420p" and (ours.width, ours.height) == (320, 180)
    ref = _swscale(av.VideoFrame.from_ndarray(bgr, format="bgr24"), "yuv420p")
    for a, b in zip(_pixels(ours), _pixels(ref), strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 2 and diff.mean() < 1


def test_strided_bgr_is_accepted() -> None:
    bgr = _picture()
    wide = np.zeros((180, 400, 3), np.uint8)
    wide[:, :320] = bgr
    view = wide[:, :320]  # rows 1200 bytes apart
    assert not view.flags.c_contiguous
    a, b = bgr_to_frame(view, "yuv420p"), bgr_to_frame(bgr, "yuv420p")
    assert a is not None and b is not None
    assert all(bytes(p) == bytes(q) for p, q in zip(a.planes, b.planes))


@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
@pytest.mark.parametrize("colorspace", ["ITU601", "ITU709"])
def test_frame_to_bgr_matches_swscale(fmt: str, colorspace: str) -> None:
    frame = _swscale(av.VideoFrame.from_ndarray(_picture(), format="bgr24"), fmt, dst_colorspace=colorspace)
    frame.colorspace = 1 if colorspace == "ITU709" else 5
    ours = frame_to_bgr(frame)
    assert ours is not None and ours.shape == (180, 320, 3) and ours.flags.c_contiguous
    ref = _swscale(frame, "bgr24", src_colorspace=colorspace).to_ndarray()
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 6 and diff.mean() < 1.5  # rounding and chroma upsampling differ slightly


def test_full_range_is_honoured() -> None:
    frame = av.VideoFrame(64, 32, "yuvj420p")
    for plane, value in zip(frame.planes, (0, 128, 128)):
        np.frombuffer(plane, np.uint8)[:] = value
    assert int(frame_to_bgr(frame).max()) == 0  # full-range black is 0, limited would clip below 16
    frame.planes[0].update(bytes([255]) * frame.planes[0].buffer_size)
    assert int(frame_to_bgr(frame).min()) == 255


def test_fallback_cases_return_none() -> None:
    assert bgr_to_frame(_picture(), "nv12") is None
    assert bgr_to_frame(_picture(321, 180)[:, :321], "yuv420p") is None
    assert bgr_to_frame(_picture().astype(np.float32), "yuv420p") is None  # type: ignore[arg-type]
    assert frame_to_bgr(av.VideoFrame(64, 32, "yuv444p")) is None


def test_bad_buffers_are_value_errors() -> None:
    frame = av.VideoFrame(64, 32, "yuv420p")
    planes = tuple(frame.planes)
    strides = tuple(p.line_size for p in planes)
    with pytest.raises(ValueError, match="overlap"):
        _core.bgr_to_i420(_picture(64, 32), (planes[0], planes[0], planes[2]), strides)
    with pytest.raises(ValueError, match="U plane"):
        _core.bgr_to_i420(_picture(64, 32), planes, (strides[0], 64, strides[2]))
    with pytest.raises(ValueError, match="shape"):
        _core.bgr_to_i420(np.zeros((32, 64), np.uint8), planes, strides)
    with pytest.raises(ValueError, match="read-only"):
        _core.bgr_to_i420(_picture(64, 32), (planes[0], bytes(planes[1]), planes[2]), strides)
    out = np.zeros((32, 64, 3), np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _core.i420_to_bgr(planes, strides, out)
