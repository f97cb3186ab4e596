"""Audio: Opus settings from ``audio_opus_params``, stereo, FEC, DTX, frames and audio sinks.

Codec tests use the real encoders/decoders (PyAV, libopus). Sink tests feed a
real :class:`hibiki.MediaTrack` (its decoder thread, real Opus packets) with
frames as the engine would hand them over, and the end-to-end tests go
through a real ``hibiki serve`` with real clients. Content is checked: each
channel's dominant frequency, levels, sample counts, RTP timelines.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Self

import hibiki
import numpy as np
import numpy.typing as npt
import pytest
from conftest import LoopTicks, new_channel_id, wait_until
from hibiki.client.tracks import MediaTrack
from hibiki.media import (
    AUDIO_CLOCK_RATE,
    AudioDecoder,
    AudioEncoder,
    EncodedFrame,
    dominant_frequency,
    level_dbfs,
    opus_encoder_settings,
    tone,
)
from hibiki.media import libopus

RATE = AUDIO_CLOCK_RATE


def stereo_tones(start: int, samples: int, rate: int = RATE, left: float = 440.0, right: float = 660.0,
                 ) -> npt.NDArray[np.int16]:
    """int16 [samples, 2]: ``left`` Hz on channel 0, ``right`` Hz on channel 1."""
    return np.concatenate([tone(left, rate, 1, start, samples), tone(right, rate, 1, start, samples)], axis=1)


def tone_level(x: npt.NDArray[Any], rate: int, freq: float) -> float:
    """Spectral magnitude (dB, arbitrary reference) of one channel around ``freq``."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    spectrum = np.abs(np.fft.rfft(a * np.hanning(a.size)))
    k = round(freq * a.size / rate)
    return float(20 * np.log10(spectrum[max(k - 3, 0): k + 4].max() + 1e-9))


def check_stereo(pcm: npt.NDArray[np.int16], rate: int) -> None:
    """Left carries 440 Hz and right 660 Hz, each at least 20 dB above the other channel's tone."""
    assert pcm.ndim == 2 and pcm.shape[1] == 2, pcm.shape
    left, right = pcm[:, 0], pcm[:, 1]
    assert abs(dominant_frequency(left, rate) - 440.0) < 5.0
    assert abs(dominant_frequency(right, rate) - 660.0) < 5.0
    assert tone_level(left, rate, 440.0) - tone_level(left, rate, 660.0) > 20.0
    assert tone_level(right, rate, 660.0) - tone_level(right, rate, 440.0) > 20.0


def decode_all(packets: list[EncodedFrame], decoder: AudioDecoder | None = None) -> npt.NDArray[np.int16]:
    dec = decoder or AudioDecoder()
    return np.concatenate([dec.decode(p.data, rtp_time=p.rtp_time) for p in packets])


def libopus_has_lbrr() -> Any:
    """libopus's ``opus_packet_has_lbrr`` (1.5+; prototype declared by ``libopus.load``), or None."""
    lib = libopus.load()
    return getattr(lib, "opus_packet_has_lbrr", None) if lib is not None else None


def speechlike(seconds: float, seed: int = 1) -> npt.NDArray[np.int16]:
    """Two voiced harmonics, amplitude-modulated at 3 Hz, over a little noise: Opus codes it as speech."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    rng = np.random.default_rng(seed)
    voiced = (np.sin(2 * np.pi * 200 * t) + 0.5 * np.sin(2 * np.pi * 450 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.asarray(voiced * 6000 + rng.standard_normal(n) * 300, dtype=np.int16)[:, None]


# -- Opus settings and codec ------------------------------------------------------------------


def test_opus_params_map_to_encoder_settings(caplog: pytest.LogCaptureFixture) -> None:
    defaults = {"channels": 1, "fec": True, "dtx": False, "ptime": 20, "max_playback_rate": None}
    assert opus_encoder_settings(None, 1) == defaults
    assert opus_encoder_settings({}, 2) == {**defaults, "channels": 2}  # a stereo source stays stereo
    assert opus_encoder_settings({"stereo": True}, 1)["channels"] == 2
    assert opus_encoder_settings({"sprop_stereo": True}, 1)["channels"] == 2
    assert opus_encoder_settings({"stereo": False, "sprop_stereo": False}, 2)["channels"] == 1
    assert opus_encoder_settings({"channels": 1, "stereo": True}, 2)["channels"] == 1  # explicit count wins
    assert opus_encoder_settings({"useinbandfec": False, "usedtx": True}, 1) == {**defaults, "fec": False, "dtx": True}
    # ptime: the largest WebRTC packet time not above ptime, and not below minptime.
    ptimes = {(p, m): opus_encoder_settings({"ptime": p, "minptime": m})["ptime"]
              for p, m in [(20, None), (10, None), (30, None), (60, 10), (120, None), (5, None), (20, 40), (None, 30)]}
    assert ptimes == {(20, None): 20, (10, None): 10, (30, None): 20, (60, 10): 60, (120, None): 120,
                      (5, None): 10, (20, 40): 40, (None, 30): 40}
    assert opus_encoder_settings({"maxplaybackrate": 16000, "clock_rate": 48000})["max_playback_rate"] == 16000
    for bad in ({"stereo": 1}, {"ptime": "20"}, {"ptime": 500}, {"channels": 3}, {"clock_rate": 16000},
                {"maxplaybackrate": 4000}, {"usedtx": "yes"}, {"minptime": True}):
        with pytest.raises(ValueError, match="audio_opus_params"):
            opus_encoder_settings(bad, 1)
    with caplog.at_level("WARNING"):
        assert opus_encoder_settings({"cbr": True}, 1) == defaults
    assert "cbr" in caplog.text


def test_create_connection_rejects_bad_opus_params() -> None:
    sdk = hibiki.Hibiki()
    with pytest.raises(ValueError, match="ptime"):
        sdk.create_connection(["ws://127.0.0.1:9/signaling"], "sendonly", "x", audio_opus_params={"ptime": 0})


@pytest.mark.parametrize("via_params", [False, True])
def test_opus_stereo_keeps_left_and_right_apart(via_params: bool) -> None:
    kwargs = opus_encoder_settings({"stereo": True}, 2) if via_params else {"channels": 2}
    enc = AudioEncoder(sample_rate=RATE, bitrate=96_000, **kwargs)
    assert enc.channels == 2 and enc.application == "audio"
    rng = np.random.default_rng(7)
    packets, pos = [], 0
    while pos < RATE:  # one second in odd-sized chunks
        n = min(int(rng.integers(1, 2000)), RATE - pos)
        packets += enc.encode(stereo_tones(pos, n))
        pos += n
    assert len(packets) == 50
    assert all(p.data[0] & 0x04 for p in packets), "every packet's TOC says stereo"
    dec = AudioDecoder()  # channels as the stream has them
    pcm = decode_all(packets, dec)
    assert dec.channels == 2 and pcm.shape == (RATE, 2)
    check_stereo(pcm[RATE // 10:], RATE)


def test_decoder_follows_the_streams_channel_count() -> None:
    mono = AudioEncoder(channels=1).encode(tone(440.0, RATE, 1, 0, 9600))
    dec = AudioDecoder()
    assert decode_all(mono, dec).shape == (9600, 1) and dec.channels == 1
    # The same decoder switches to stereo when stereo packets arrive, and stays there.
    stereo = AudioEncoder(channels=2).encode(stereo_tones(0, 9600))
    out = np.concatenate([dec.decode(p.data) for p in stereo])
    assert dec.channels == 2 and out.shape == (9600, 2)
    assert dec.decode(mono[3].data).shape == (960, 2)
    # A fixed count is still the caller's choice.
    assert AudioDecoder(channels=1).decode(stereo[5].data).shape == (960, 1)


def test_fec_option_puts_redundancy_in_the_packets() -> None:
    has_lbrr = libopus_has_lbrr()
    if has_lbrr is None:
        pytest.skip("this libopus has no opus_packet_has_lbrr (needs 1.5+) to inspect packets with")
    speech = speechlike(2.0)
    counts = {}
    for fec, dtx in [(True, False), (False, False), (True, True), (False, True)]:
        enc = AudioEncoder(channels=1, bitrate=32_000, fec=fec, packet_loss=10, dtx=dtx)
        packets = enc.encode(speech)
        counts[(fec, dtx)] = sum(has_lbrr(p.data, len(p.data)) == 1 for p in packets)
    # FEC (LBRR) in most speech packets with fec on, with DTX or without.
    assert counts[(True, False)] >= 50 and counts[(False, False)] == 0, counts
    assert counts[(True, True)] >= 50 and counts[(False, True)] == 0, counts


def test_dtx_sends_almost_nothing_during_silence_and_the_receiver_conceals_the_gap() -> None:
    signal = np.concatenate([tone(440.0, RATE, 1, 0, RATE), np.zeros((2 * RATE, 1), np.int16),
                             tone(440.0, RATE, 1, 3 * RATE, RATE)])
    plain, dtx = AudioEncoder(channels=1), AudioEncoder(channels=1, dtx=True)
    if not dtx.dtx:
        pytest.skip("libopus cannot be loaded through ctypes here, so DTX is unavailable")
    assert not plain.dtx
    sent = {"plain": plain.encode(signal), "dtx": dtx.encode(signal)}
    in_silence = {k: [p for p in v if RATE + 0.3 * RATE <= p.rtp_time < 3 * RATE] for k, v in sent.items()}
    assert len(in_silence["plain"]) >= 80  # 1.7 s of 20 ms packets
    assert len(in_silence["dtx"]) <= 8, len(in_silence["dtx"])  # one every 400 ms
    # On the wire each packet also costs ~50 bytes of IP/UDP/RTP/SRTP overhead.
    wire = {k: sum(len(p.data) + 50 for p in v) for k, v in in_silence.items()}
    assert wire["dtx"] * 8 < wire["plain"], wire
    assert dtx.frames_suppressed >= 80
    # Speech is sent as usual.
    assert len([p for p in sent["dtx"] if p.rtp_time < RATE]) == 50

    dec = AudioDecoder()
    pcm = decode_all(sent["dtx"], dec)
    last = sent["dtx"][-1]
    assert pcm.shape[0] == last.rtp_time + 960, "the gaps are filled: the output keeps the sender's timeline"
    assert dec.samples_concealed > RATE
    assert level_dbfs(pcm[int(1.5 * RATE): int(2.8 * RATE)]) < -60.0  # the silence stays silent
    assert abs(dominant_frequency(pcm[3 * RATE + 4800:], RATE) - 440.0) < 5.0  # and the tone comes back
    assert abs(dominant_frequency(pcm[4800:RATE], RATE) - 440.0) < 5.0


@pytest.mark.parametrize("ptime", [10, 40, 60])
def test_ptime_sets_the_packet_duration(ptime: int) -> None:
    for dtx in (False, True):
        enc = AudioEncoder(channels=1, ptime=ptime, dtx=dtx)
        packets = enc.encode(tone(440.0, RATE, 1, 0, RATE))
        step = ptime * 48
        assert enc.frame_samples == step
        assert [p.rtp_time for p in packets] == [step * k for k in range(RATE // step)]
        dec = AudioDecoder()
        assert all(len(dec.decode(p.data)) == step for p in packets)
    with pytest.raises(ValueError, match="ptime"):
        AudioEncoder(ptime=30)


def test_max_playback_rate_limits_the_coded_bandwidth() -> None:
    high = tone(10_000.0, RATE, 1, 0, RATE)
    levels = {}
    for rate in (None, 16_000):
        for dtx in (False, True):
            enc = AudioEncoder(channels=1, max_playback_rate=rate, dtx=dtx)
            levels[(rate, dtx)] = level_dbfs(decode_all(enc.encode(high))[4800:])
    # A 10 kHz tone passes full band and is cut by a 16 kHz playback rate (8 kHz audio band).
    assert levels[(None, False)] > -20 and levels[(None, True)] > -20, levels
    assert levels[(16_000, False)] < -50 and levels[(16_000, True)] < -50, levels


def test_decoder_conceals_lost_packets_without_shifting_the_timeline() -> None:
    packets = AudioEncoder(channels=1).encode(tone(440.0, RATE, 1, 0, RATE))
    kept = [p for i, p in enumerate(packets) if i % 10 not in (4, 5)]  # 20% lost in pairs
    dec = AudioDecoder()
    starts = []
    outs = []
    for p in kept:
        outs.append(dec.decode(p.data, rtp_time=p.rtp_time))
        starts.append(dec.start_rtp_time)
    pcm = np.concatenate(outs)
    assert pcm.shape[0] == RATE
    assert starts[0] == 0 and all(s == sum(len(o) for o in outs[:i]) for i, s in enumerate(starts))
    # The second packet of a pair comes back from the next one's FEC where it has some; the rest is concealed.
    assert dec.samples_concealed + dec.samples_recovered == 10 * 960
    assert dec.samples_concealed >= 5 * 960
    assert abs(dominant_frequency(pcm[4800:], RATE) - 440.0) < 5.0
    # A jump longer than a second is a pause of the sender, not made up.
    assert len(dec.decode(packets[0].data, rtp_time=10 * RATE)) == 960


def segment_snr_db(out: npt.NDArray[np.int16], ref: npt.NDArray[np.int16], packet: int) -> float:
    """SNR of ``out`` against ``ref`` over the 20 ms of packet number ``packet``."""
    s = slice(packet * 960, (packet + 1) * 960)
    sig, err = ref[s].astype(np.float64), out[s].astype(np.float64) - ref[s]
    return float(10 * np.log10((sig**2).sum() / max((err**2).sum(), 1e-9)))


def test_decoder_recovers_a_lost_packet_from_the_next_packets_fec() -> None:
    speech = speechlike(2.0)
    lost = range(5, 95, 10)  # one packet in ten, alone
    median_snr, recovered = {}, {}
    for fec in (True, False):
        packets = AudioEncoder(channels=1, bitrate=32_000, fec=fec, packet_loss=10).encode(speech)
        ref = decode_all(packets)
        dec = AudioDecoder()
        assert dec.backend == "libopus"
        out = decode_all([p for i, p in enumerate(packets) if i not in lost], dec)
        assert out.shape == ref.shape  # the timeline holds either way
        median_snr[fec] = float(np.median([segment_snr_db(out, ref, i) for i in lost]))
        recovered[fec] = dec.samples_recovered
        assert dec.samples_recovered + dec.samples_concealed == len(lost) * 960
    # Speech packets carry LBRR with FEC on: most lost packets come back from it, and
    # much closer to what was sent than concealment gets.
    assert recovered[True] >= 6 * 960 and recovered[False] == 0, recovered
    assert median_snr[True] - median_snr[False] > 4.0, median_snr


@pytest.mark.parametrize(("channels", "kwargs"), [
    (1, {}),
    (2, {"bitrate": 96_000}),
    (1, {"ptime": 40, "max_playback_rate": 16_000, "fec": False}),
])
def test_direct_libopus_and_ffmpeg_give_the_same_packets(monkeypatch: pytest.MonkeyPatch, channels: int,
                                                         kwargs: dict[str, Any]) -> None:
    """libopus driven directly is set up as FFmpeg's libopus encoder is, so the bytes match."""
    pcm = stereo_tones(0, RATE) if channels == 2 else speechlike(1.0)
    direct = AudioEncoder(channels=channels, **kwargs)
    direct_dec = AudioDecoder()
    with monkeypatch.context() as m:
        m.setattr(libopus, "load", lambda: None)
        ffmpeg = AudioEncoder(channels=channels, **kwargs)
        ffmpeg_dec = AudioDecoder()
    assert (direct.backend, ffmpeg.backend) == ("libopus", "ffmpeg:libopus")
    assert ffmpeg_dec.backend.startswith("ffmpeg:") and direct_dec.backend == "libopus"
    a, b = direct.encode(pcm), ffmpeg.encode(pcm)
    assert [p.rtp_time for p in a] == [p.rtp_time for p in b]
    assert [p.data for p in a] == [p.data for p in b]
    # The two decoders agree to within rounding (FFmpeg's may decode to float).
    x, y = decode_all(a, direct_dec), decode_all(a, ffmpeg_dec)
    assert x.shape == y.shape and int(np.abs(x.astype(np.int32) - y).max()) <= 1


def test_without_libopus_ffmpeg_encodes_and_dtx_is_refused_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(libopus, "load", lambda: None)
    with caplog.at_level("WARNING"):
        enc = AudioEncoder(channels=1, dtx=True)
    assert not enc.dtx and enc.backend == "ffmpeg:libopus"
    assert "DTX" in caplog.text
    packets = enc.encode(tone(440.0, RATE, 1, 0, RATE))
    dec = AudioDecoder()
    pcm = decode_all([p for i, p in enumerate(packets) if i != 20], dec)
    assert pcm.shape == (RATE, 1) and dec.samples_concealed == 960 and dec.samples_recovered == 0
    assert abs(dominant_frequency(pcm[4800:], RATE) - 440.0) < 5.0


# -- frames ----------------------------------------------------------------------------------


def test_audio_frame_is_sora_sdk_shaped_and_picklable() -> None:
    pcm = stereo_tones(0, 960)
    frame = hibiki.AudioFrame(pcm, 48_000, 96_000, 12.5, capture_time_ms=1_700_000_000_123.6, track_id="t1")
    assert frame.data() is pcm and frame.data().dtype == np.int16
    assert (frame.samples_per_channel, frame.num_channels, frame.sample_rate_hz) == (960, 2, 48_000)
    assert frame.channels == 2 and frame.timestamp == 2.0
    assert frame.absolute_capture_timestamp_ms == 1_700_000_000_124
    copy = pickle.loads(pickle.dumps(frame))
    assert np.array_equal(copy.data(), pcm)
    assert (copy.rtp_time, copy.received_at, copy.absolute_capture_timestamp_ms, copy.track_id) == (
        96_000, 12.5, 1_700_000_000_124, "t1")
    assert hibiki.AudioFrame(pcm, 48_000, 0, 0.0).absolute_capture_timestamp_ms is None


# -- sinks on a local track --------------------------------------------------------------------


@pytest.fixture
def track() -> Iterator[MediaTrack]:
    """A receiving audio track with its real decoder thread; tests push Opus packets into it."""
    t = MediaTrack(kind="audio", mid="0", stream_id="sender", track_id="track-0", connection_id="me",
                   request_keyframe=lambda mid: None)
    yield t
    t._end()
    t.join(5)


def push(track: MediaTrack, packets: list[EncodedFrame], capture_ms: float | None = None,
         rtp_offset: int = 0) -> None:
    """Hand packets to the track as the engine does, at most 40 ahead of its decoder."""
    for p in packets:
        wait_until(lambda: track.frames_received - track.frames_decoded < 40, 10, "the decoder to keep up")
        track._push(SimpleNamespace(  # type: ignore[arg-type]
            codec="OPUS", data=p.data, rtp_time=p.rtp_time + rtp_offset, keyframe=True, contiguous=True,
            capture_time_ms=None if capture_ms is None else capture_ms + (p.rtp_time + rtp_offset) / 48))


@pytest.mark.parametrize(("out_rate", "out_channels"), [(16_000, 1), (44_100, 2)])
def test_audio_sink_delivers_the_requested_format(track: MediaTrack, out_rate: int, out_channels: int) -> None:
    sink = hibiki.AudioSink(track, output_frequency=out_rate, output_channels=out_channels)
    formats: list[tuple[int, int]] = []
    chunks: list[npt.NDArray[np.int16]] = []
    sink.on_format = lambda rate, ch: formats.append((rate, ch))
    sink.on_data = chunks.append
    if out_channels == 2:
        push(track, AudioEncoder(channels=2).encode(stereo_tones(0, RATE)))
    else:
        push(track, AudioEncoder(channels=1).encode(tone(440.0, RATE, 1, 0, RATE)))
    ok, pcm = sink.read(frames=out_rate * 9 // 10, timeout=10.0)
    assert ok and pcm.shape == (out_rate * 9 // 10, out_channels) and pcm.dtype == np.int16
    assert formats == [(out_rate, out_channels)]
    assert (sink.sample_rate, sink.channels) == (out_rate, out_channels)
    steady = pcm[out_rate // 10:]
    if out_channels == 2:
        check_stereo(steady, out_rate)
    else:
        assert abs(dominant_frequency(steady, out_rate) - 440.0) < 5.0
    wait_until(lambda: sum(len(c) for c in chunks) >= out_rate * 9 // 10, 5, "on_data chunks")
    assert all(c.shape[1] == out_channels for c in chunks)


def test_audio_sink_read_semantics(track: MediaTrack) -> None:
    sink = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)
    ok, empty = sink.read(0)  # nothing yet, and frames=0 does not wait
    assert not ok and empty.shape == (0, 1)
    t0 = time.monotonic()
    ok, pcm = sink.read(frames=160, timeout=0.3)
    waited = time.monotonic() - t0
    assert not ok and len(pcm) == 0 and 0.25 <= waited < 2.0

    push(track, AudioEncoder(channels=1).encode(tone(440.0, RATE, 1, 0, RATE // 2)))  # 0.5 s
    ok, first = sink.read(frames=3_000, timeout=5.0)
    assert ok and first.shape == (3_000, 1)
    wait_until(lambda: track.frames_decoded == 25, 5, "all 25 packets decoded")
    ok, rest = sink.read(0)  # everything buffered, at once
    assert ok and 4_000 < len(rest) <= 5_000
    t0 = time.monotonic()
    ok, _ = sink.read(frames=16_000, timeout=0.3)  # more than will come: times out
    assert not ok and time.monotonic() - t0 >= 0.25
    with pytest.raises(ValueError):
        sink.read(frames=-1)
    # A reader blocked when the track ends gets False at once, not at its timeout.
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(sink.read(frames=16_000, timeout=30.0)))
    reader.start()
    time.sleep(0.1)
    track._end()
    reader.join(5)
    assert not reader.is_alive() and result and result[0][0] is False


def test_audio_sink_asyncio_face(track: MediaTrack) -> None:
    """read_async and chunks: read's semantics, awaited; the loop keeps running while they wait."""
    sink = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)

    async def main() -> None:
        ok, empty = await sink.read_async(0)
        assert not ok and empty.shape == (0, 1)
        t0 = time.monotonic()
        assert not (await sink.read_async(frames=160, timeout=0.3))[0]
        assert 0.25 <= time.monotonic() - t0 < 2.0
        with pytest.raises(ValueError):
            await sink.read_async(frames=-1)
        with pytest.raises(ValueError):
            await anext(sink.chunks(frames=0))

        # 1 s of 440 Hz then 0.5 s of 660 Hz, pushed by a thread while chunks() awaits them.
        feeding = threading.Thread(target=lambda: (
            push(track, AudioEncoder(channels=1).encode(np.concatenate(
                [tone(440.0, RATE, 1, 0, RATE), tone(660.0, RATE, 1, 0, RATE // 2)]))),
            time.sleep(0.2), track._end()))
        feeding.start()
        got: list[npt.NDArray[np.int16]] = []
        loop_ticks = LoopTicks(0.005)
        async for pcm in sink.chunks(frames=1_600):  # 100 ms each; ends with the track
            got.append(pcm)
        ticks = await loop_ticks.stop()
        assert all(c.shape == (1_600, 1) for c in got)
        assert 14 <= len(got) <= 15, len(got)  # 1.5 s, less the resampler's delay; the rest is not yielded
        assert abs(dominant_frequency(np.concatenate(got[2:9]), 16_000) - 440.0) < 5.0
        assert abs(dominant_frequency(np.concatenate(got[11:14]), 16_000) - 660.0) < 5.0
        assert ticks >= 10, ticks
        ok, _ = await sink.read_async(frames=1_600, timeout=30)  # ended: False at once
        assert not ok

    asyncio.run(asyncio.wait_for(main(), 30))


def test_on_format_fires_first_and_again_when_the_stream_turns_stereo(track: MediaTrack) -> None:
    sink = hibiki.AudioSink(track)  # as received
    events: list[Any] = []
    sink.on_format = lambda rate, ch: events.append(("format", rate, ch))
    sink.on_data = lambda pcm: events.append(("data", pcm.shape[1])) if events[-1][0] != "data" else None
    push(track, AudioEncoder(channels=1).encode(tone(440.0, RATE, 1, 0, 9600)))
    push(track, AudioEncoder(channels=2).encode(stereo_tones(9600, 9600)), rtp_offset=9600)
    wait_until(lambda: len(events) >= 4, 5, "two formats and their data")
    assert events == [("format", 48_000, 1), ("data", 1), ("format", 48_000, 2), ("data", 2)]


def test_audio_stream_sink_frames_are_converted_timed_and_picklable(track: MediaTrack) -> None:
    sink = hibiki.AudioStreamSink(track, output_frequency=16_000, output_channels=1)
    frames: list[hibiki.AudioFrame] = []
    sink.on_frame = frames.append
    push(track, AudioEncoder(channels=2).encode(stereo_tones(0, RATE // 2)), capture_ms=1_000_000.0)
    wait_until(lambda: track.frames_decoded == 25, 5, "25 decoded packets")
    wait_until(lambda: len(frames) >= 24, 5, "stream sink frames")
    assert sink.frames == len(frames)
    assert all(isinstance(f, hibiki.AudioFrame) for f in frames)
    assert all((f.sample_rate_hz, f.num_channels) == (16_000, 1) for f in frames)
    assert all(300 <= f.samples_per_channel <= 330 for f in frames[1:])  # 20 ms at 16 kHz, give or take the resampler
    rtp = [f.rtp_time for f in frames]
    assert rtp == sorted(rtp) and rtp[-1] - rtp[0] == 960 * (len(frames) - 1)
    assert [f.absolute_capture_timestamp_ms for f in frames[:2]] == [1_000_000 + rtp[0] // 48,
                                                                     1_000_000 + rtp[1] // 48]
    pcm = np.concatenate([f.data() for f in frames])[1600:]
    # Both channels mixed into the mono output (neither dropped), each at half level.
    assert abs(tone_level(pcm, 16_000, 440.0) - tone_level(pcm, 16_000, 660.0)) < 3.0
    assert abs(level_dbfs(pcm) - (level_dbfs(tone(440.0, RATE, 1, 0, RATE)) - 3.0)) < 1.5
    clone = pickle.loads(pickle.dumps(frames[5]))
    assert np.array_equal(clone.data(), frames[5].data()) and clone.sample_rate_hz == 16_000
    sink.close()
    before = len(frames)
    push(track, AudioEncoder(channels=2).encode(stereo_tones(0, 9600)), rtp_offset=RATE)
    wait_until(lambda: track.frames_decoded == 35, 5, "more packets decoded")
    assert len(frames) == before  # detached: no more callbacks


def test_compat_stream_sink_audio_sink_and_vad_on_a_received_track(track: MediaTrack) -> None:
    """sora-sdk's names over the same track: SoraAudioStreamSink frames feed SoraVAD; SoraAudioSink.read."""
    import hibiki.compat.sora_sdk as compat

    stream = compat.SoraAudioStreamSink(track, 16000, 1)
    pull = compat.SoraAudioSink(track, 16000, 1)
    assert stream.on_frame is None and pull.on_data is None and pull.on_format is None
    assert pull.read(0) == (False, None)  # nothing buffered: sora-sdk returns at once
    assert pull.read(160, timeout=0.2) == (False, None)
    vad = compat.SoraVAD()
    frames: list[Any] = []
    probabilities: list[float] = []

    def on_frame(frame: Any) -> None:
        frames.append(frame)
        probabilities.append(vad.analyze(frame))

    stream.on_frame = on_frame
    assert stream.on_frame is on_frame
    push(track, AudioEncoder(channels=2).encode(stereo_tones(0, RATE // 2)), capture_ms=5_000.0)
    wait_until(lambda: len(frames) >= 24, 5, "SoraAudioStreamSink frames")
    assert all(type(f) is compat.SoraAudioFrame for f in frames)
    f = frames[3]
    assert (f.sample_rate_hz, f.num_channels, f.data().dtype) == (16000, 1, np.int16)
    assert f.absolute_capture_timestamp_ms == 5_000 + f.hibiki_frame.rtp_time // 48
    clone = pickle.loads(pickle.dumps(f))
    assert clone.data().tolist() == f.data().tolist() and clone.absolute_capture_timestamp_ms == f.absolute_capture_timestamp_ms
    assert max(probabilities) < 0.5  # two steady tones are not speech
    ok, pcm = pull.read(4000, timeout=5)
    assert ok and pcm.shape == (4000, 1)


def test_sinks_reject_wrong_tracks_and_formats(track: MediaTrack) -> None:
    video = MediaTrack(kind="video", mid="1", stream_id="s", track_id="v", connection_id="me",
                       request_keyframe=lambda mid: None)
    try:
        with pytest.raises(ValueError, match="audio track"):
            hibiki.AudioStreamSink(video)
        with pytest.raises(ValueError, match="audio track"):
            hibiki.AudioSink(video)
    finally:
        video._end()
    with pytest.raises(ValueError, match="output_channels"):
        hibiki.AudioSink(track, output_channels=9)


# -- end to end through hibiki serve ---------------------------------------------------------------


class StereoFeeder:
    """Feeds an AudioSource with 440 Hz left / 660 Hz right (or silence) in real time, 20 ms chunks."""

    def __init__(self, source: hibiki.AudioSource) -> None:
        self.source = source
        self.silent = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[BaseException] = []

    def _loop(self) -> None:
        pos, next_at = 0, time.monotonic()
        try:
            while not self.stop.is_set():
                chunk = stereo_tones(pos, 960)
                self.source.on_data(np.zeros_like(chunk) if self.silent else chunk)
                pos += 960
                next_at += 0.02
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - surfaced by __exit__
            self.errors.append(exc)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.errors, self.errors


def test_stereo_dtx_and_16k_mono_through_a_server(server: Any) -> None:
    channel = new_channel_id()
    sdk = hibiki.Hibiki()
    source = sdk.create_audio_source(channels=2, sample_rate=RATE)
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, audio_source=source, video=False,
                                audio_bit_rate=96,
                                audio_opus_params={"stereo": True, "sprop_stereo": True, "usedtx": True})
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    tracks: list[hibiki.MediaTrack] = []
    sub.on_track = tracks.append
    try:
        with StereoFeeder(source) as feeder:
            pub.connect()
            sub.connect()
            wait_until(lambda: any(t.kind == "audio" for t in tracks), 10, "the audio track")
            track = next(t for t in tracks if t.kind == "audio")
            as_received = hibiki.AudioSink(track)
            formats: list[tuple[int, int]] = []
            as_received.on_format = lambda rate, ch: formats.append((rate, ch))
            mono16 = hibiki.AudioSink(track, output_frequency=16_000, output_channels=1)
            stream = hibiki.AudioStreamSink(track, output_frequency=16_000, output_channels=1)
            frames: list[hibiki.AudioFrame] = []
            stream.on_frame = frames.append

            as_received.read(frames=4_800, timeout=10.0)  # past the codec's start-up
            ok, pcm = as_received.read(frames=24_000, timeout=10.0)
            assert ok, "no stereo audio within 10 s"
            assert formats == [(RATE, 2)]
            check_stereo(pcm, RATE)
            ok, pcm16 = mono16.read(frames=8_000, timeout=10.0)
            assert ok and pcm16.shape == (8_000, 1)
            spectrum_peaks = {f: tone_level(pcm16[1600:], 16_000, f) for f in (440.0, 660.0, 1000.0)}
            assert min(spectrum_peaks[440.0], spectrum_peaks[660.0]) - spectrum_peaks[1000.0] > 20, spectrum_peaks
            wait_until(lambda: len(frames) >= 20, 5, "AudioStreamSink frames")
            assert all((f.sample_rate_hz, f.num_channels) == (16_000, 1) for f in frames)
            assert np.array_equal(pickle.loads(pickle.dumps(frames[-1])).data(), frames[-1].data())

            # DTX: silence makes the sender go (almost) quiet, yet the receiver's audio keeps time.
            feeder.silent = True
            time.sleep(0.5)  # let the encoder enter DTX
            mono16.read(0)
            received, t0 = track.frames_received, time.monotonic()
            ok, quiet = mono16.read(frames=16_000, timeout=5.0)  # 1 s of concealed silence
            elapsed = time.monotonic() - t0
            packets = track.frames_received - received
            assert ok and level_dbfs(quiet) < -50
            assert packets <= 6 * elapsed + 3, (packets, elapsed)  # 50/s without DTX, ~2.5/s with it
    finally:
        sub.disconnect()
        pub.disconnect()


def test_audio_level_is_rfc6464_dbov_of_the_pcm() -> None:
    """The level on sent packets: -3 dBov for a full-scale sine, 20 dB per decade of amplitude, -127 for silence."""
    from hibiki.client.sources import audio_level_dbov

    t = np.arange(4800)
    for amplitude, level in ((32767, -3), (3277, -23), (328, -43)):
        sine = (amplitude * np.sin(2 * np.pi * 440 * t / 48_000)).astype(np.int16)
        assert audio_level_dbov(sine.reshape(-1, 1)) == level
        # Interleaved stereo and a strided view (one channel of it) read the same.
        stereo = np.stack([sine, sine], axis=1)
        assert audio_level_dbov(stereo) == level
        assert audio_level_dbov(stereo[:, :1]) == level
    assert audio_level_dbov(np.zeros((960, 2), np.int16)) == -127
    assert audio_level_dbov(np.zeros((0, 1), np.int16)) == -127
    with pytest.raises(ValueError, match="int16"):
        audio_level_dbov(np.zeros((960, 1), np.float32))
