"""Played-out audio sources: PCM given ahead of time goes out in real time, and can be taken back.

A voice agent's TTS delivers seconds of speech at once. An
``AudioSource(queue_size_ms=...)`` queues it and sends one packet per 20 ms,
with silence in between; ``clear_queue`` silences it at once (barge-in).
The queue and its clock are tested on their own; the source through a real
``hibiki serve`` with a real subscriber, whose received audio is checked
for which tone arrived when; and ``examples/voice_agent.py`` against a user
who speaks (espeak-ng's voice), waits for the answer and interrupts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hibiki
import numpy as np
import numpy.typing as npt
import pytest
from conftest import (
    PYTHON_SRC,
    REPO,
    LoopTicks,
    espeak_speech,
    new_channel_id,
    run,
    wait_until,
)
from hibiki.client.playout import PacketClock, PlayoutQueue
from hibiki.media import dominant_frequency, level_dbfs, tone

RATE = 48_000


# -- the queue and the clock ------------------------------------------------------------------


def ramp(start: int, n: int) -> npt.NDArray[np.int16]:
    return np.arange(start, start + n, dtype=np.int16).reshape(-1, 1)


def test_queue_takes_in_order_across_chunks_and_pads_with_silence() -> None:
    q = PlayoutQueue(channels=1, limit=1000)
    q.put(ramp(1, 300))
    q.put(ramp(301, 500))
    assert q.queued == 800
    out, real = q.take(250)
    assert real == 250 and np.array_equal(out, ramp(1, 250))
    out, real = q.take(500)  # the rest of the first chunk and most of the second
    assert real == 500 and np.array_equal(out, ramp(251, 500))
    out, real = q.take(100)  # 50 left, then silence
    assert real == 50 and np.array_equal(out[:50], ramp(751, 50)) and not out[50:].any()
    assert q.queued == 0 and out.shape == (100, 1)


def test_queue_put_waits_for_room_and_a_chunk_goes_in_whole() -> None:
    q = PlayoutQueue(channels=2, limit=100)
    big = np.ones((1000, 2), np.int16)
    assert q.put(big, timeout=0)  # room: in whole, past the limit
    assert q.queued == 1000
    assert not q.put(big, timeout=0.05)  # full: times out and queues nothing
    assert q.queued == 1000
    done = threading.Event()

    def producer() -> None:
        q.put(big)
        done.set()

    threading.Thread(target=producer, daemon=True).start()
    assert not done.wait(0.2), "put returned while the queue was full"
    q.take(950)  # 50 left < 100: room
    assert done.wait(5), "put did not wake when room was made"
    assert q.queued == 1050


def test_queue_clear_wakes_producers_and_waiters() -> None:
    q = PlayoutQueue(channels=1, limit=10)
    q.put(ramp(0, 100))
    assert not q.wait_empty(timeout=0.05)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(q.wait_empty(timeout=5)), daemon=True)
    waiter.start()
    time.sleep(0.05)  # let it block; the outcome is checked, not the timing
    assert q.clear() == 100
    waiter.join(5)
    assert results == [True]
    assert q.take(10)[1] == 0


def test_queue_async_waits_do_not_block_the_loop() -> None:
    q = PlayoutQueue(channels=1, limit=100)
    q.put(ramp(0, 500))

    async def main() -> None:
        def consume() -> None:  # another thread drains it, 100 samples per 50 ms
            for _ in range(6):
                time.sleep(0.05)
                q.take(100)

        loop_ticks = LoopTicks(0.01)
        threading.Thread(target=consume, daemon=True).start()
        await asyncio.wait_for(q.put_async(ramp(0, 50)), 5)  # waits until < 100 queued
        assert q.queued <= 150
        assert not await q.wait_empty_async(timeout=0.01)
        assert await q.wait_empty_async(timeout=5)
        ticks = await loop_ticks.stop()
        assert ticks >= 10, f"the loop ran only {ticks} ticks while waiting"

    run(main(), timeout=20)


def test_packet_clock_keeps_time_and_restarts_after_a_stall() -> None:
    clock = PacketClock(0.02, max_late=0.2)
    t0 = clock.next_due()
    clock.tick(t0)
    assert clock.next_due() == pytest.approx(t0 + 0.02)
    clock.tick(t0 + 0.05)  # a little late: no restart, the next one is still on the grid
    assert clock.next_due() == pytest.approx(t0 + 0.04)
    late = t0 + 5.0  # a 5 s stall: the next packet is due 20 ms after it, not 250 at once
    clock.tick(late)
    assert clock.next_due() == pytest.approx(late + 0.02)
    assert clock.ticks == 3


def test_queue_size_ms_is_checked() -> None:
    with pytest.raises(ValueError, match="queue_size_ms"):
        hibiki.AudioSource(1, 16_000, queue_size_ms=5)
    source = hibiki.Hibiki().create_audio_source(1, 16_000, queue_size_ms=200)
    assert source.queue_size_ms == 200
    assert source.queued_duration == 0.0 and source.wait_for_playout(0)
    given = hibiki.AudioSource(1, 16_000)  # sent as given: nothing ever waits for its turn
    assert given.clear_queue() == 0.0 and given.wait_for_playout(0) and given.queued_duration == 0.0


# -- through a server ------------------------------------------------------------------------


class Heard:
    """A subscriber's received audio, one 20 ms frame at a time, with its arrival time."""

    def __init__(self, track: hibiki.MediaTrack) -> None:
        self.sink = hibiki.AudioStreamSink(track, output_frequency=RATE, output_channels=1)
        self.frames: list[tuple[float, npt.NDArray[np.int16]]] = []
        self.lock = threading.Lock()
        self.sink.on_frame = self._on_frame

    def _on_frame(self, frame: hibiki.AudioFrame) -> None:
        with self.lock:
            self.frames.append((time.monotonic(), frame.data()))

    def since(self, t: float) -> list[tuple[float, npt.NDArray[np.int16]]]:
        with self.lock:
            return [f for f in self.frames if f[0] >= t]

    def with_tone(self, freq: float, since: float = 0.0) -> list[float]:
        """Arrival times of the frames carrying ``freq`` Hz (within 30 Hz), after ``since``."""
        return [t for t, pcm in self.since(since)
                if level_dbfs(pcm) > -40 and abs(dominant_frequency(pcm[:, 0], RATE) - freq) < 30]


@contextmanager
def hearing(server: Any, source: hibiki.AudioSource, **options: Any) -> Iterator[Heard]:
    """``source`` published in a new channel and a subscriber's :class:`Heard`; both connections close at the end."""
    sdk = hibiki.Hibiki()
    channel = new_channel_id()
    pub = sdk.create_connection([server.signaling_url], "sendonly", channel, audio_source=source, video=False,
                                **options)
    sub = sdk.create_connection([server.signaling_url], "recvonly", channel)
    tracks: list[hibiki.MediaTrack] = []
    sub.on_track = tracks.append
    try:
        pub.connect()
        sub.connect()
        wait_until(lambda: any(t.kind == "audio" for t in tracks), 10, "the audio track")
        yield Heard(next(t for t in tracks if t.kind == "audio"))
    finally:
        sub.disconnect()
        pub.disconnect()


def test_played_out_audio_keeps_real_time_where_as_given_arrives_in_a_burst(server: Any) -> None:
    paced = hibiki.AudioSource(channels=1, sample_rate=RATE, queue_size_ms=500)
    with hearing(server, paced) as heard:
        # Silence flows before anyone speaks: the stream keeps time.
        wait_until(lambda: len(heard.frames) >= 10, 10, "silent frames from the idle source")
        assert all(level_dbfs(pcm) < -60 for _, pcm in heard.frames)

        t0 = time.monotonic()
        paced.on_data(tone(440.0, RATE, 1, 0, 2 * RATE))  # 2 s at once: the queue has room
        returned_first = time.monotonic() - t0
        assert paced.queued_duration > 1.5
        paced.on_data(tone(660.0, RATE, 1, 0, RATE))  # waits until less than 0.5 s is queued
        returned_second = time.monotonic() - t0
        assert paced.wait_for_playout(timeout=15)
        played = time.monotonic() - t0
        assert returned_first < 0.3, returned_first
        assert 1.3 < returned_second < 5.0, returned_second
        assert 2.9 < played < 8.0, played

        wait_until(lambda: len(heard.with_tone(660.0, t0)) >= 45, 5,
                   lambda: f"660 Hz frames: {len(heard.with_tone(660.0, t0))}")
        low, high = heard.with_tone(440.0, t0), heard.with_tone(660.0, t0)
        assert len(low) >= 95, len(low)  # 2 s = 100 frames; a few mix tones at the boundary
        # Spread over the 2 s they last, not a burst; and the 660 Hz second after them.
        assert low[-1] - low[0] > 1.7, low[-1] - low[0]
        assert high[-1] - high[0] > 0.8, high[-1] - high[0]
        assert high[0] > low[-1] - 0.05
        # Silence again once it is all out.
        settle = time.monotonic() + 0.3
        wait_until(lambda: len(heard.since(settle)) >= 15, 5, "frames after the playout")
        assert all(level_dbfs(pcm) < -50 for _, pcm in heard.since(settle))

    # The same 2 s through a source that sends as given: it arrives at once.
    given = hibiki.AudioSource(channels=1, sample_rate=RATE)
    with hearing(server, given) as heard:
        given.on_data(np.zeros((RATE // 10, 1), np.int16))  # something to start the stream
        wait_until(lambda: len(heard.frames) >= 1, 10, "the first frame")
        t0 = time.monotonic()
        given.on_data(tone(440.0, RATE, 1, 0, 2 * RATE))
        wait_until(lambda: len(heard.with_tone(440.0, t0)) >= 95, 10,
                   lambda: f"440 Hz frames: {len(heard.with_tone(440.0, t0))}")
        low = heard.with_tone(440.0, t0)
        assert low[-1] - low[0] < 0.8, low[-1] - low[0]


@pytest.mark.parametrize("ptime", [10, 60])
def test_played_out_audio_in_other_packet_durations(server: Any, ptime: int) -> None:
    """The clock ticks every 20 ms; 10 ms packets go out two a tick, 60 ms ones every third tick."""
    source = hibiki.AudioSource(channels=1, sample_rate=16_000, queue_size_ms=300)
    with hearing(server, source, audio_opus_params={"ptime": ptime}) as heard:
        t0 = time.monotonic()
        source.on_data(tone(440.0, 16_000, 1, 0, 2 * 16_000))
        assert source.wait_for_playout(timeout=10)
        assert time.monotonic() - t0 > 1.9
        frames = 2000 // ptime
        wait_until(lambda: len(heard.with_tone(440.0, t0)) >= frames - 3, 5,
                   lambda: f"{len(heard.with_tone(440.0, t0))} of {frames} {ptime} ms frames of the tone")
        low = heard.with_tone(440.0, t0)
        assert low[-1] - low[0] > 1.7, low[-1] - low[0]
        assert all(len(pcm) == RATE * ptime // 1000 for _, pcm in heard.since(t0))


def test_clear_queue_silences_the_source_at_once(server: Any) -> None:
    source = hibiki.AudioSource(channels=1, sample_rate=RATE, queue_size_ms=1000)
    with hearing(server, source) as heard:
        t0 = time.monotonic()
        source.on_data(tone(440.0, RATE, 1, 0, 5 * RATE))  # a 5 s answer
        wait_until(lambda: len(heard.with_tone(440.0, t0)) >= 40, 10, "0.8 s of the answer")
        dropped = source.clear_queue()  # the user started talking
        cleared = time.monotonic()
        assert 3.0 < dropped < 4.5, dropped
        assert source.queued_duration == 0.0 and source.wait_for_playout(timeout=0)
        # What was in flight lands within a few packets; then silence, still 50 frames a second.
        later = cleared + 0.3
        wait_until(lambda: len(heard.since(later)) >= 40, 5, "frames after the clear")
        assert heard.with_tone(440.0, later) == []
        assert all(level_dbfs(pcm) < -50 for _, pcm in heard.since(later))
        heard_tone = heard.with_tone(440.0, t0)
        assert heard_tone[-1] < cleared + 0.3 and len(heard_tone) < 70, (heard_tone[-1] - cleared, len(heard_tone))
        # It speaks again right after.
        t1 = time.monotonic()
        source.on_data(tone(660.0, RATE, 1, 0, RATE // 2))
        wait_until(lambda: len(heard.with_tone(660.0, t1)) >= 20, 5, "the next answer")


def test_asyncio_producers_wait_for_room_without_blocking_the_loop(
        server: Any, caplog: pytest.LogCaptureFixture) -> None:
    source = hibiki.AudioSource(channels=1, sample_rate=RATE, queue_size_ms=200)

    async def main() -> None:
        loop_ticks = LoopTicks(0.02)
        t0 = time.monotonic()
        await source.on_data_async(tone(440.0, RATE, 1, 0, RATE))  # 1 s: room, in at once
        await source.on_data_async(tone(660.0, RATE, 1, 0, RATE // 2))  # waits ~0.8 s
        waited = time.monotonic() - t0
        assert 0.6 < waited < 4.0, waited
        assert await source.wait_for_playout_async(timeout=10)
        assert time.monotonic() - t0 > 1.4
        ticks = await loop_ticks.stop()
        assert ticks >= 30, f"the loop ticked {ticks} times in {time.monotonic() - t0:.1f} s"
        # The blocking call on the loop's thread still works, and says what to use instead.
        with caplog.at_level(logging.WARNING, logger="hibiki.client"):
            source.on_data(tone(440.0, RATE, 1, 0, RATE // 2))
            source.on_data(tone(440.0, RATE, 1, 0, RATE // 10))
        assert "on_data_async" in caplog.text
        assert await source.wait_for_playout_async(timeout=10)

    with hearing(server, source) as heard:
        run(main(), timeout=30)
        assert len(heard.with_tone(660.0)) >= 20


def test_a_detached_source_lets_waiting_producers_go(server: Any) -> None:
    source = hibiki.AudioSource(channels=1, sample_rate=RATE, queue_size_ms=100)
    done = threading.Event()
    with hearing(server, source):
        source.on_data(tone(440.0, RATE, 1, 0, 10 * RATE))
        threading.Thread(target=lambda: (source.on_data(tone(440.0, RATE, 1, 0, RATE)), done.set()),
                         daemon=True).start()
        assert not done.wait(0.3)
    assert done.wait(10), "a producer stayed blocked on a source that stopped sending"
    assert source.wait_for_playout(timeout=5)


# -- examples/voice_agent.py -----------------------------------------------------------------


class AgentProgram:
    """examples/voice_agent.py in a subprocess; its JSON lines."""

    def __init__(self, args: list[str], tmp_path: Path) -> None:
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PYTHON_SRC), env.get("PYTHONPATH", "")) if p)
        self.out, self.err = tmp_path / "agent.out", tmp_path / "agent.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "voice_agent.py"), *args],
                                         stdout=out, stderr=err, env={**env, "PYTHONUNBUFFERED": "1"}, cwd=REPO)

    def events(self, kind: str) -> list[dict[str, Any]]:
        text = self.out.read_text()
        complete = text[: text.rfind("\n") + 1]  # not a line still being written
        lines = [json.loads(line) for line in complete.splitlines() if line.strip()]
        return [e for e in lines if e["event"] == kind]

    def tail(self) -> str:
        return f"--- stdout ---\n{self.out.read_text()[-3000:]}\n--- stderr ---\n{self.err.read_text()[-3000:]}"

    def wait_for(self, kind: str, count: int = 1, timeout: float = 10) -> dict[str, Any]:
        wait_until(lambda: len(self.events(kind)) >= count or self.proc.poll() is not None, timeout,
                   lambda: f"{count} {kind!r} line(s) from the agent\n{self.tail()}")
        found = self.events(kind)
        assert len(found) >= count, f"the agent exited early\n{self.tail()}"
        return found[count - 1]


@pytest.fixture(scope="module")
def sentence(tmp_path_factory: pytest.TempPathFactory) -> tuple[npt.NDArray[np.int16], int]:
    """espeak-ng saying the user's question: (int16 [samples, 1], its rate)."""
    pcm, rate = espeak_speech("Hello agent, what is the weather like today?",
                              tmp_path_factory.mktemp("agent") / "user.wav")
    assert len(pcm) > 1.5 * rate
    return pcm, rate


def test_voice_agent_example_answers_after_the_user_and_stops_when_interrupted(
        server: Any, tmp_path: Path, sentence: tuple[npt.NDArray[np.int16], int]) -> None:
    speech, rate = sentence
    channel = new_channel_id()
    agent = AgentProgram(["--signaling-url", server.signaling_url, "--channel-id", channel, "--duration", "25"],
                         tmp_path)
    conn = None
    try:
        agent.wait_for("connected", timeout=20)
        user = hibiki.AudioSource(channels=1, sample_rate=rate, queue_size_ms=500)
        conn = hibiki.Hibiki().create_connection([server.signaling_url], "sendrecv", channel,
                                                 audio_source=user, video=False)
        tracks: list[hibiki.MediaTrack] = []
        conn.on_track = tracks.append
        conn.connect()
        wait_until(lambda: any(t.kind == "audio" for t in tracks), 10, "the agent's audio track")
        heard = Heard(next(t for t in tracks if t.kind == "audio"))

        # The user asks; the agent waits for the end of the question, then answers with its chime.
        user.on_data(speech)
        assert user.wait_for_playout(timeout=20)
        finished = time.monotonic()
        agent.wait_for("heard")
        answering = agent.wait_for("answering", timeout=10)
        assert answering["seconds"] == 3.0 and answering["heard_s"] > 0.8 * len(speech) / rate, answering
        wait_until(lambda: len(heard.with_tone(880.0)) >= 25, 10, lambda: agent.tail())
        assert heard.with_tone(880.0)[0] > finished, "the agent answered before the question ended"

        # Half a second into the answer, the user talks over it: the chime stops.
        barge = time.monotonic()
        user.on_data(speech[: int(1.5 * rate)])
        interrupted = agent.wait_for("interrupted", timeout=10)
        assert 1.0 < interrupted["dropped_s"] < 2.9, interrupted
        wait_until(lambda: len(heard.since(barge + 1.5)) >= 20, 10, "the agent's audio after the interruption")
        chimes = heard.with_tone(880.0)
        assert chimes[-1] < barge + 1.2, f"the chime went on {chimes[-1] - barge:.2f} s after the user spoke"
        assert len(chimes) < 125, len(chimes)  # 3 s would be 150 frames
        assert agent.events("answered") == []

        # The user stops; the agent answers again, in full this time.
        agent.wait_for("answering", count=2, timeout=10)
        agent.wait_for("answered", timeout=10)
        assert agent.proc.wait(30) == 0, agent.tail()
        assert agent.events("disconnected")[0]["code"] == "CLOSE_SUCCEEDED", agent.tail()
    finally:
        if conn is not None:
            conn.disconnect()
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait(5)
