"""A voice agent's audio loop: listen with VAD, answer, and stop talking when interrupted.

    hibiki serve &
    python examples/voice_agent.py --signaling-url ws://127.0.0.1:5000/signaling --channel-id room \\
        [--reply answer.wav] [--duration 60]

Joins the channel sendrecv with the asyncio face. Every remote audio track
goes through :class:`hibiki.VAD`, 20 ms at a time. When someone has spoken
and then been quiet for ``--quiet`` seconds, the agent answers: the whole
reply (a WAV file, or else a 3 s 880 Hz chime) goes at once into an
``AudioSource(queue_size_ms=...)``, as a TTS would deliver it, and is played
out in real time. Whoever starts talking while the agent answers cuts it
short: ``clear_queue()`` silences it within a packet (barge-in).

Prints one JSON object per line: ``connected``; ``heard`` when someone
starts talking, ``answering`` and ``answered`` around a reply,
``interrupted`` (with the seconds of reply dropped) when cut short;
``disconnected`` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import wave
from typing import Any

import hibiki
import numpy as np

SPEECH = 0.6  # VAD probability above which a frame is speech
CHIME_RATE = 48_000


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, **fields}), flush=True)


def chime(seconds: float, rate: int = CHIME_RATE) -> np.ndarray:
    """int16 [samples, 1]: 880 Hz at -12 dBFS with 20 ms fades, a stand-in for a TTS answer."""
    t = np.arange(int(seconds * rate)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)
    return (np.sin(2 * np.pi * 880.0 * t) * fade * 8200).astype(np.int16).reshape(-1, 1)


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as (int16 [samples, channels], its rate)."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: 16-bit PCM WAV expected, got {8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).reshape(-1, w.getnchannels())
        return pcm, w.getframerate()


class Agent:
    """Answers when someone finishes talking; stops answering when someone starts."""

    def __init__(self, voice: hibiki.AudioSource, reply: np.ndarray) -> None:
        self.voice = voice
        self.reply = reply
        self.answering: asyncio.Task[None] | None = None

    def speech_started(self, who: str) -> None:
        emit("heard", connection_id=who)
        if self.answering is not None and not self.answering.done():
            self.answering.cancel()  # first, so that it does not report the cleared queue as played
            emit("interrupted", dropped_s=round(self.voice.clear_queue(), 2))

    def speech_ended(self, who: str, seconds: float) -> None:
        if self.answering is None or self.answering.done():
            self.answering = asyncio.create_task(self.answer(who, seconds))

    async def answer(self, who: str, heard_s: float) -> None:
        emit("answering", to=who, heard_s=round(heard_s, 2),
             seconds=round(len(self.reply) / self.voice.sample_rate, 2))
        await self.voice.on_data_async(self.reply)  # all at once; it goes out in real time
        if await self.voice.wait_for_playout_async():
            emit("answered", to=who)


async def listen(track: hibiki.MediaTrack, agent: Agent, quiet_s: float) -> None:
    """Run VAD over one remote audio track until it ends, telling the agent when speech starts and ends."""
    vad = hibiki.VAD()
    talking, talked, quiet = False, 0.0, 0.0
    async for frame in track:
        assert isinstance(frame, hibiki.AudioFrame)
        step = frame.samples_per_channel / frame.sample_rate_hz
        if vad.analyze(frame) > SPEECH:
            if not talking:
                talking, talked = True, 0.0
                agent.speech_started(track.stream_id)
            quiet = 0.0
        elif talking:
            quiet += step
            if quiet >= quiet_s:
                talking = False
                agent.speech_ended(track.stream_id, talked)
        talked += step


async def main(args: argparse.Namespace) -> None:
    reply, rate = read_wav(args.reply) if args.reply else (chime(3.0), CHIME_RATE)
    voice = hibiki.AudioSource(channels=reply.shape[1], sample_rate=rate, queue_size_ms=500)
    agent = Agent(voice, reply)
    async with hibiki.connect(args.signaling_url, role="sendrecv", channel_id=args.channel_id,
                              audio_source=voice, video=False) as conn:
        emit("connected", connection_id=conn.connection_id)
        async with asyncio.TaskGroup() as tasks:
            stop = tasks.create_task(asyncio.sleep(args.duration))
            stop.add_done_callback(lambda _: tasks.create_task(conn.disconnect_async()))
            async for event in conn:
                if isinstance(event, hibiki.events.TrackAdded) and event.track.kind == "audio":
                    tasks.create_task(listen(event.track, agent, args.quiet))
                elif isinstance(event, hibiki.events.Disconnected):
                    emit("disconnected", code=event.code.name)
                    if agent.answering is not None:
                        agent.answering.cancel()
                    stop.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signaling-url", default="ws://127.0.0.1:5000/signaling")
    parser.add_argument("--channel-id", default="room")
    parser.add_argument("--reply", help="16-bit PCM WAV to answer with (default: a 3 s chime)")
    parser.add_argument("--quiet", type=float, default=0.6, help="seconds of silence that end a turn")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to stay")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
