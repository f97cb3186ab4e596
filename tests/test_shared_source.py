"""One source, several connections in one process: one encode per codec, every receiver gets the content."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hibiki
import numpy as np
from conftest import new_channel_id, run
from hibiki.media.testsrc import dominant_frequency, read_counter, tone
from test_encoder_control import pattern_feed

AUDIO_RATE = 48_000


async def _tracks(sub: hibiki.Connection) -> dict[str, hibiki.MediaTrack]:
    tracks: dict[str, hibiki.MediaTrack] = {}
    async with asyncio.timeout(10):
        async for event in sub:
            if isinstance(event, hibiki.events.TrackAdded):
                tracks[event.track.kind] = event.track
            if len(tracks) == 2:
                return tracks
    raise AssertionError(f"tracks: {tracks}")


def test_one_source_feeds_connections_in_two_channels_with_two_codecs(server: Any) -> None:
    """VP8 to two channels shares one encoder; H.264 to a third gets its own; all decode the same pictures."""
    video = hibiki.VideoSource()
    audio = hibiki.AudioSource(channels=1, sample_rate=AUDIO_RATE)
    channels = [new_channel_id() for _ in range(3)]
    codecs = ["VP8", "VP8", "H264"]

    async def main() -> None:
        pubs = [hibiki.connect(server.signaling_url, role="sendonly", channel_id=ch,
                               video_source=video, audio_source=audio, video_codec_type=codec,
                               # Every picture the worker takes is encoded by every encoder:
                               # no frame-rate adaptation when a loaded machine's estimate dips.
                               degradation_preference=hibiki.DegradationPreference.DISABLED)
                for ch, codec in zip(channels, codecs, strict=True)]
        subs = [hibiki.connect(server.signaling_url, role="recvonly", channel_id=ch) for ch in channels]
        opened = [await p.__aenter__() for p in pubs]
        try:
            stop = asyncio.Event()

            async def play_tone() -> None:
                start = time.monotonic()
                n = 0
                while not stop.is_set():
                    await asyncio.to_thread(audio.on_data, tone(440.0, AUDIO_RATE, 1, n * 960, 960))
                    n += 1
                    await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))

            with pattern_feed(video):
                player = asyncio.create_task(play_tone())
                try:
                    receivers = [await s.__aenter__() for s in subs]
                    got = [await _tracks(r) for r in receivers]
                    # Skip what was decoded while the connections settled.
                    await asyncio.sleep(0.5)
                    encoded_before, captured_before = video.frames_encoded, video.frames_in
                    dropped_before = video.frames_dropped
                    counters: list[list[int]] = []
                    for tracks in got:
                        seen: list[int] = []
                        for _ in range(15):
                            frame = await tracks["video"].recv(timeout=5)
                            c = read_counter(frame.data())
                            if c is not None:
                                seen.append(c)
                        counters.append(seen)
                        assert tracks["video"].codec in ("VP8", "H264")
                        chunks = [(await tracks["audio"].recv(timeout=5)).data() for _ in range(50)]
                        assert abs(dominant_frequency(np.concatenate(chunks[10:]), AUDIO_RATE) - 440) < 5
                    encoded = video.frames_encoded - encoded_before
                    # Pictures the encoders saw: a busy machine drops some from the queue.
                    taken = video.frames_in - captured_before - (video.frames_dropped - dropped_before)
                    assert [t["video"].codec for t in got] == codecs
                finally:
                    stop.set()
                    await player
                    for s in subs:
                        await s.__aexit__(None, None, None)
        finally:
            for p in pubs:
                await p.__aexit__(None, None, None)
        for seen in counters:
            assert len(seen) >= 12, counters
            assert len(set(seen)) >= 10, counters  # moving pictures, not one repeated
        # Two encodes (VP8 shared by two connections, H.264) per picture, not
        # three; slack for the pictures queued or in flight at either end.
        assert encoded <= 2 * taken + 8, (encoded, taken)
        assert encoded >= 2 * taken - 10, (encoded, taken)

    run(main(), timeout=90)
