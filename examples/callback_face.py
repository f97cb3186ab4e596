"""Publish a test pattern and receive it back with the callback face (sora-sdk style).

    hibiki serve &                       # in another terminal
    python examples/callback_face.py ws://127.0.0.1:5000/signaling

The same program written for sora-sdk differs only in the import and class names.
"""

from __future__ import annotations

import sys
import threading
import time

import hibiki
from hibiki.media.testsrc import read_counter, test_pattern

url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:5000/signaling"
sdk = hibiki.Hibiki()
camera = sdk.create_video_source()
publisher = sdk.create_connection([url], role="sendonly", channel_id="example", video_source=camera, audio=False)
subscriber = sdk.create_connection([url], role="recvonly", channel_id="example", audio=False)

frames = 0
done = threading.Event()


def on_frame(frame: hibiki.VideoFrame) -> None:  # called on the track's decoder thread
    global frames
    frames += 1
    if frames % 30 == 0:
        print(f"received frame {read_counter(frame.data())} ({frame.width}x{frame.height})")


def on_track(track: hibiki.MediaTrack) -> None:  # called on the SDK's callback thread
    print(f"new {track.kind} track from connection {track.stream_id}")
    if track.kind == "video":
        hibiki.VideoSink(track).on_frame = on_frame


def on_disconnect(code: hibiki.SignalingErrorCode, message: str) -> None:
    print(f"disconnected: {code.name} {message}")
    done.set()


subscriber.on_track = on_track
subscriber.on_disconnect = on_disconnect

publisher.connect()
subscriber.connect()
try:
    for counter in range(150):  # 5 s at 30 fps
        camera.on_captured(test_pattern(counter, 640, 360))
        time.sleep(1 / 30)
finally:
    subscriber.disconnect()
    publisher.disconnect()
done.wait(5)  # on_disconnect runs on the SDK's callback thread
print(f"{frames} frames received")
