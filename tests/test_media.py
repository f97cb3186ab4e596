"""Media layer: real codecs (PyAV/FFmpeg) and the test-signal helpers that check content."""

from __future__ import annotations

import numpy as np
import pytest
from hibiki.media import (
    AUDIO_CLOCK_RATE,
    AudioConverter,
    AudioDecoder,
    AudioEncoder,
    EncodedFrame,
    VideoDecoder,
    VideoEncoder,
    dominant_frequency,
    level_dbfs,
    pattern_intact,
    read_counter,
    test_pattern,
    tone,
)

FRAME_TICKS = 90_000 // 30  # one frame at 30 fps in the 90 kHz clock


def _vp8_keyframe_bit(data: bytes) -> bool:
    # RFC 6386 9.1, read straight from the bitstream so that the keyframe
    # checks do not rest on the encoder's own flag alone.
    return (data[0] & 1) == 0 and data[3:6] == b"\x9d\x01\x2a"


def _roundtrip(
    enc: VideoEncoder,
    dec: VideoDecoder,
    counters: range,
    width: int,
    height: int,
    force_at: int = -1,
) -> list[tuple[int, EncodedFrame, list[np.ndarray]]]:
    out = []
    for i in counters:
        packets = enc.encode(
            test_pattern(i, width, height), i * FRAME_TICKS, force_keyframe=i == force_at
        )
        assert len(packets) == 1, f"frame {i}: {len(packets)} packets"
        out.append((i, packets[0], dec.decode(packets[0].data, packets[0].keyframe)))
    return out


def _assert_content(i: int, pictures: list[np.ndarray], width: int, height: int) -> None:
    assert len(pictures) == 1, f"frame {i}: decoded {len(pictures)} pictures"
    pic = pictures[0]
    assert pic.shape == (height, width, 3) and pic.dtype == np.uint8
    assert read_counter(pic) == i
    assert pattern_intact(pic, i)
    # ... and the check is sharp enough to tell the neighbouring frame apart.
    assert not pattern_intact(pic, i + 1)


def test_vp8_720p_roundtrip_keeps_content_and_keyframes() -> None:
    enc = VideoEncoder("VP8", bitrate=1_500_000, framerate=30)
    dec = VideoDecoder("VP8")
    assert enc.codec == "VP8" and dec.codec == "VP8"
    results = _roundtrip(enc, dec, range(30), 1280, 720, force_at=17)
    for i, packet, pictures in results:
        assert packet.rtp_time == i * FRAME_TICKS
        assert packet.keyframe == _vp8_keyframe_bit(packet.data)
        _assert_content(i, pictures, 1280, 720)
    keyframes = [i for i, packet, _ in results if packet.keyframe]
    # The first frame and the forced one; the periodic interval (2 s) is not reached.
    assert keyframes == [0, 17]
    # Rate control holds the bitrate in the right range for the target.
    kbps = sum(len(p.data) for _, p, _ in results) * 8 / 1000
    assert 100 < kbps < 3000


def test_vp8_request_keyframe_applies_to_next_frame_only() -> None:
    enc = VideoEncoder()
    flags = [enc.encode(test_pattern(i, 320, 240), i * FRAME_TICKS)[0].keyframe for i in range(4)]
    enc.request_keyframe()
    flags += [
        enc.encode(test_pattern(i, 320, 240), i * FRAME_TICKS)[0].keyframe for i in range(4, 7)
    ]
    assert flags == [True, False, False, False, True, False, False]


def test_vp8_resolution_change_reopens_encoder() -> None:
    enc = VideoEncoder(bitrate=800_000)
    dec = VideoDecoder()
    for counters, (width, height) in (
        (range(0, 4), (1280, 720)),
        (range(4, 8), (640, 360)),
        (range(8, 12), (320, 240)),
    ):
        results = _roundtrip(enc, dec, counters, width, height)
        # A new size starts with a keyframe, which the old decoder handles.
        assert [p.keyframe for _, p, _ in results] == [True, False, False, False]
        for i, _, pictures in results:
            _assert_content(i, pictures, width, height)


@pytest.mark.parametrize(("width", "height"), [(320, 240), (320, 180)])
def test_read_counter_small_frames_after_vp8(width: int, height: int) -> None:
    # A low bitrate too, like a simulcast r0 layer.
    enc = VideoEncoder(bitrate=250_000)
    dec = VideoDecoder()
    for i, _, pictures in _roundtrip(enc, dec, range(123_440, 123_470), width, height):
        _assert_content(i, pictures, width, height)


def test_read_counter_and_pattern_intact_reject_other_pictures() -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert read_counter(noise) is None
    assert read_counter(np.zeros((240, 320, 3), np.uint8)) is None
    assert read_counter(np.full((240, 320, 3), 128, np.uint8)) is None
    assert read_counter(np.zeros((240, 320), np.uint8)) is None  # not BGR
    assert read_counter(np.zeros((20, 20, 3), np.uint8)) is None  # too small
    assert not pattern_intact(noise, 0)

    frame = test_pattern(654_321, 640, 360)
    assert read_counter(frame) == 654_321 and pattern_intact(frame, 654_321)
    garbled = frame.copy()
    garbled[: 360 // 2] = garbled[: 360 // 2, ::-1]  # a band mirrored
    assert not pattern_intact(garbled, 654_321)
    counters = frame.copy()
    counters[200:, 100:140] = 128  # a digit smeared grey
    assert read_counter(counters) is None
    # Counters past six digits wrap.
    assert read_counter(test_pattern(1_000_007, 320, 240)) == 7
    with pytest.raises(ValueError):
        test_pattern(-1)


def test_unknown_codecs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported video codec"):
        VideoEncoder("MPEG2")
    with pytest.raises(ValueError, match="unsupported video codec"):
        VideoDecoder("vp8")  # names are upper-case
    with pytest.raises(ValueError, match="unsupported audio codec"):
        AudioEncoder("PCMU")
    with pytest.raises(ValueError):
        AudioEncoder(channels=3)


@pytest.mark.parametrize(("rate", "channels"), [(48_000, 1), (16_000, 1), (44_100, 2)])
def test_opus_roundtrip_keeps_frequency_and_level(rate: int, channels: int) -> None:
    enc = AudioEncoder("OPUS", sample_rate=rate, channels=channels, bitrate=64_000)
    dec = AudioDecoder("OPUS", channels=channels)
    rng = np.random.default_rng(rate)
    packets: list[EncodedFrame] = []
    pos = 0
    while pos < rate:  # one second in odd-sized chunks
        n = min(int(rng.integers(1, 1500)), rate - pos)
        packets += enc.encode(tone(440.0, rate, channels, pos, n))
        pos += n
    # 50 packets of 20 ms, less what the resampler still holds back.
    assert 48 <= len(packets) <= 50
    assert [p.rtp_time for p in packets] == [960 * k for k in range(len(packets))]
    assert all(p.keyframe for p in packets)

    pcm = np.concatenate([dec.decode(p.data) for p in packets])
    assert pcm.dtype == np.int16 and pcm.shape == (960 * len(packets), channels)
    steady = pcm[AUDIO_CLOCK_RATE // 10 :]  # past the codec's start-up
    assert abs(dominant_frequency(steady, AUDIO_CLOCK_RATE) - 440.0) < 5.0
    expected = level_dbfs(tone(440.0, rate, channels, 0, rate))
    assert abs(level_dbfs(steady) - expected) < 2.0
    if channels == 2:
        assert abs(level_dbfs(steady[:, 1:]) - expected) < 2.0


def test_opus_decoder_output_channels_are_the_callers_choice() -> None:
    packets = AudioEncoder(channels=1).encode(tone(440.0, 48_000, 1, 0, 9600))
    stereo = np.concatenate([AudioDecoder(channels=2).decode(p.data) for p in packets])
    assert stereo.shape[1] == 2
    assert np.array_equal(stereo[:, 0], stereo[:, 1])


def test_audio_converter_48k_stereo_to_16k_mono() -> None:
    conv = AudioConverter(48_000, 2, 16_000, 1)
    src = tone(1000.0, 48_000, 2, 0, 48_000)
    out = np.concatenate([conv.convert(src[i : i + 441]) for i in range(0, 48_000, 441)])
    assert out.dtype == np.int16 and out.ndim == 2 and out.shape[1] == 1
    assert 15_900 <= out.shape[0] <= 16_000
    assert abs(dominant_frequency(out, 16_000) - 1000.0) < 2.0
    assert abs(level_dbfs(out[1600:]) - level_dbfs(src)) < 0.5


def test_audio_converter_channel_only_changes() -> None:
    mono = tone(300.0, 16_000, 1, 0, 1600)
    up = AudioConverter(16_000, 1, 16_000, 2).convert(mono)
    assert np.array_equal(up, np.repeat(mono, 2, axis=1))  # same level, no delay
    stereo = np.stack([mono[:, 0], np.zeros(1600, np.int16)], axis=1)
    down = AudioConverter(16_000, 2, 16_000, 1).convert(stereo)
    assert np.abs(down[:, 0].astype(int) - mono[:, 0] / 2).max() <= 1


def test_decoders_survive_garbage() -> None:
    rng = np.random.default_rng(3)
    garbage = [b"", b"\x00", b"\x9d\x01\x2a"] + [
        rng.bytes(int(n)) for n in rng.integers(1, 4000, 40)
    ]
    # A keyframe cut short, and one with its header intact but payload noise.
    key = VideoEncoder().encode(test_pattern(5, 320, 240), 0)[0].data
    garbage += [key[: len(key) // 3], key[:10] + rng.bytes(len(key) - 10)]

    vdec = VideoDecoder()
    for data in garbage:
        for flag in (None, True, False):
            pictures = vdec.decode(data, flag)
            assert isinstance(pictures, list)
            assert all(p.dtype == np.uint8 and p.ndim == 3 for p in pictures)
    adec = AudioDecoder(channels=2)
    for data in garbage:
        pcm = adec.decode(data)
        assert pcm.dtype == np.int16 and pcm.ndim == 2 and pcm.shape[1] == 2

    # Both still work on a real stream afterwards.
    enc = VideoEncoder()
    for i in range(3):
        packet = enc.encode(test_pattern(i, 320, 240), i * FRAME_TICKS)[0]
        pictures = vdec.decode(packet.data)
        assert len(pictures) == 1 and read_counter(pictures[0]) == i
    packet = AudioEncoder().encode(tone(440.0, 48_000, 1, 0, 960))[0]
    assert adec.decode(packet.data).shape == (960, 2)


def test_decoded_pictures_are_independent_arrays() -> None:
    # Each picture must own its pixels: later decodes may not change it.
    enc, dec = VideoEncoder(), VideoDecoder()
    pictures = []
    for i in range(5):
        packet = enc.encode(test_pattern(i, 320, 240), i * FRAME_TICKS)[0]
        pictures += dec.decode(packet.data)
    assert [read_counter(p) for p in pictures] == [0, 1, 2, 3, 4]
    assert all(p.flags.c_contiguous for p in pictures)


def test_video_decoder_waits_for_keyframe() -> None:
    enc = VideoEncoder()
    packets = [enc.encode(test_pattern(i, 320, 240), i * FRAME_TICKS)[0] for i in range(4)]
    dec = VideoDecoder()
    assert dec.needs_keyframe
    assert dec.decode(packets[1].data) == []  # a delta frame first: nothing to show
    assert read_counter(dec.decode(packets[0].data)[0]) == 0
    assert not dec.needs_keyframe
    dec.expect_keyframe()  # e.g. the engine reported lost frames
    assert dec.decode(packets[2].data, keyframe=False) == []
    # A wrong hint does not override the bitstream: this delta frame is not
    # a keyframe whatever the caller says.
    assert dec.decode(packets[3].data, keyframe=True) == []
    enc.request_keyframe()
    key = enc.encode(test_pattern(4, 320, 240), 4 * FRAME_TICKS)[0]
    assert read_counter(dec.decode(key.data)[0]) == 4


def test_tone_is_phase_continuous_and_measurable() -> None:
    whole = tone(440.0, 48_000, 2, 1000, 4800)
    parts = np.concatenate([tone(440.0, 48_000, 2, 1000 + s, 480) for s in range(0, 4800, 480)])
    assert np.array_equal(whole, parts)
    assert whole.shape == (4800, 2) and whole.dtype == np.int16
    assert abs(dominant_frequency(whole, 48_000) - 440.0) < 0.5
    assert abs(dominant_frequency(tone(1234.5, 16_000, 1, 0, 8000), 16_000) - 1234.5) < 0.5
    assert abs(level_dbfs(tone(440.0, 48_000, 1, 0, 48_000, amplitude=1.0)) + 3.01) < 0.05
    assert level_dbfs(np.zeros((100, 1), np.int16)) == -120.0
    assert level_dbfs(np.zeros((0, 1), np.int16)) == -120.0
