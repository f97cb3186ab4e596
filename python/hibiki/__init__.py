"""Hibiki: open-source real-time media for Python.

A WebRTC SFU (``hibiki serve``, speaking Sora's signaling protocol) and a
client SDK that publishes and subscribes audio and video as numpy arrays.
One set of objects, two faces.

Callback face (sora-sdk names; calls block, callbacks run on an SDK thread)::

    import hibiki
    sdk = hibiki.Hibiki()
    camera = sdk.create_video_source()
    pub = sdk.create_connection(["ws://127.0.0.1:5000/signaling"], role="sendonly",
                                channel_id="room", video_source=camera)
    pub.connect()                              # raises hibiki.ConnectionError
    camera.on_captured(bgr)                    # uint8 [h, w, 3], from any thread
    sub = sdk.create_connection(["ws://127.0.0.1:5000/signaling"], role="recvonly", channel_id="room")
    sub.on_track = lambda track: setattr(hibiki.VideoSink(track), "on_frame", show)
    sub.connect(); ...; sub.disconnect(); pub.disconnect()

asyncio face (works from any event loop)::

    import hibiki
    async def main():
        async with hibiki.connect(["ws://127.0.0.1:5000/signaling"],
                                  role="recvonly", channel_id="room") as conn:
            async for event in conn:
                if isinstance(event, hibiki.events.TrackAdded):
                    frame = await event.track.recv(timeout=5)  # VideoFrame / AudioFrame
                elif isinstance(event, hibiki.events.Disconnected):
                    print("closed:", event.reason)

Both faces are views of the same objects: ``hibiki.connect`` gives the
:class:`Connection` that ``create_connection`` gives, ``conn.connect()`` can
be awaited inside a coroutine, and callbacks and events report the same things.

Names are loaded lazily so that ``import hibiki`` stays cheap (the server
imports this package too) and works before the Rust extension is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    # Explicit re-exports for type checkers and IDEs; at run time __getattr__ loads them.
    from .client import events as events
    from .client.aio import ConnectContext as ConnectContext
    from .client.aio import connect as connect
    from .client.connection import Connection as Connection
    from .client.e2ee import FrameCryptor as FrameCryptor
    from .client.errors import HibikiConnectionError as ConnectionError
    from .client.errors import HibikiConnectionError as HibikiConnectionError
    from .client.errors import HibikiError as HibikiError
    from .client.errors import TrackEnded as TrackEnded
    from .client.events import SignalingDirection as SignalingDirection
    from .client.events import SignalingErrorCode as SignalingErrorCode
    from .client.events import SignalingType as SignalingType
    from .client.factory import Hibiki as Hibiki
    from .client.sinks import AudioSink as AudioSink
    from .client.sinks import AudioStreamSink as AudioStreamSink
    from .client.sinks import VideoSink as VideoSink
    from .client.sources import AudioSource as AudioSource
    from .client.sources import VideoSource as VideoSource
    from .client.tracks import AudioFrame as AudioFrame
    from .client.tracks import MediaTrack as MediaTrack
    from .client.tracks import VideoFrame as VideoFrame
    from .client.transform import AudioFrameTransformer as AudioFrameTransformer
    from .client.transform import VideoFrameTransformer as VideoFrameTransformer
    from .media.adaptation import DegradationPreference as DegradationPreference
    from .media.codecs import Implementation as Implementation
    from .media.vad import VAD as VAD

_EXPORTS: dict[str, tuple[str, str | None]] = {
    "Hibiki": ("hibiki.client.factory", "Hibiki"),
    "connect": ("hibiki.client.aio", "connect"),
    "ConnectContext": ("hibiki.client.aio", "ConnectContext"),
    "Connection": ("hibiki.client.connection", "Connection"),
    "AudioSource": ("hibiki.client.sources", "AudioSource"),
    "VideoSource": ("hibiki.client.sources", "VideoSource"),
    "AudioSink": ("hibiki.client.sinks", "AudioSink"),
    "AudioStreamSink": ("hibiki.client.sinks", "AudioStreamSink"),
    "VideoSink": ("hibiki.client.sinks", "VideoSink"),
    "MediaTrack": ("hibiki.client.tracks", "MediaTrack"),
    "VideoFrame": ("hibiki.client.tracks", "VideoFrame"),
    "AudioFrame": ("hibiki.client.tracks", "AudioFrame"),
    "VAD": ("hibiki.media.vad", "VAD"),
    "AudioFrameTransformer": ("hibiki.client.transform", "AudioFrameTransformer"),
    "VideoFrameTransformer": ("hibiki.client.transform", "VideoFrameTransformer"),
    "FrameCryptor": ("hibiki.client.e2ee", "FrameCryptor"),
    "DegradationPreference": ("hibiki.media.adaptation", "DegradationPreference"),
    "Implementation": ("hibiki.media.codecs", "Implementation"),
    "SignalingErrorCode": ("hibiki.client.events", "SignalingErrorCode"),
    "SignalingType": ("hibiki.client.events", "SignalingType"),
    "SignalingDirection": ("hibiki.client.events", "SignalingDirection"),
    "events": ("hibiki.client.events", None),
    "HibikiError": ("hibiki.client.errors", "HibikiError"),
    "HibikiConnectionError": ("hibiki.client.errors", "HibikiConnectionError"),
    "ConnectionError": ("hibiki.client.errors", "HibikiConnectionError"),
    "TrackEnded": ("hibiki.client.errors", "TrackEnded"),
}

__all__ = [  # literal, so that type checkers see the re-exports
    "VAD",
    "AudioFrame",
    "AudioFrameTransformer",
    "AudioSink",
    "AudioSource",
    "AudioStreamSink",
    "ConnectContext",
    "Connection",
    "ConnectionError",
    "DegradationPreference",
    "FrameCryptor",
    "Hibiki",
    "HibikiConnectionError",
    "HibikiError",
    "Implementation",
    "MediaTrack",
    "SignalingDirection",
    "SignalingErrorCode",
    "SignalingType",
    "TrackEnded",
    "VideoFrame",
    "VideoFrameTransformer",
    "VideoSink",
    "VideoSource",
    "__version__",
    "connect",
    "events",
]
assert set(__all__) == set(_EXPORTS) | {"__version__"}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'hibiki' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
