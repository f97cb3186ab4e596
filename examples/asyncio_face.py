"""Receive every track of a channel with the asyncio face and report what arrives.

    hibiki serve &                       # in another terminal
    hibiki demo --server ws://127.0.0.1:5000/signaling --channel room --duration 60 &
    python examples/asyncio_face.py ws://127.0.0.1:5000/signaling room
"""

from __future__ import annotations

import asyncio
import sys

import hibiki
import numpy as np
from hibiki.media.testsrc import dominant_frequency, level_dbfs


async def watch(track: hibiki.MediaTrack) -> None:
    """Print one line per second about a remote track until it ends."""
    n, pcm = 0, []  # type: int, list[np.ndarray]
    async for frame in track:  # ends when the track is removed or the connection closes
        n += 1
        if isinstance(frame, hibiki.AudioFrame):
            pcm.append(frame.data())
            if n % 50 == 0:  # 50 x 20 ms
                chunk = np.concatenate(pcm)
                pcm.clear()
                print(f"audio from {track.stream_id}: {level_dbfs(chunk):.1f} dBFS, "
                      f"{dominant_frequency(chunk, frame.sample_rate):.0f} Hz")
        elif n % 30 == 0:
            print(f"video from {track.stream_id}: {frame.width}x{frame.height}")


async def main(url: str, channel: str) -> None:
    async with hibiki.connect(url, role="recvonly", channel_id=channel) as conn:
        print("connected as", conn.connection_id)
        async with asyncio.TaskGroup() as tasks:
            async for event in conn:
                if isinstance(event, hibiki.events.TrackAdded):
                    tasks.create_task(watch(event.track))
                elif isinstance(event, hibiki.events.Notify):
                    print("notify:", event.event_type, event.connection_id)
                elif isinstance(event, hibiki.events.Disconnected):
                    print("disconnected:", event.code.name, event.reason)


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:5000/signaling",
                         sys.argv[2] if len(sys.argv) > 2 else "room"))
    except KeyboardInterrupt:
        pass
