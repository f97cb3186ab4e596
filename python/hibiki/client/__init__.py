"""The Hibiki client SDK: one implementation, a callback face and an asyncio face.

See :mod:`hibiki` for the overview. Modules:

* :mod:`~hibiki.client.loop` - the SDK's loop thread and callback thread
* :mod:`~hibiki.client.engine` - the process-wide Rust client engine and its event routing
* :mod:`~hibiki.client.signaling` - Sora signaling over WebSocket
* :mod:`~hibiki.client.datachannel` - the DataChannels the server opens: labels, zlib, counters
* :mod:`~hibiki.client.connection` - :class:`Connection`, both faces
* :mod:`~hibiki.client.sources` / :mod:`~hibiki.client.sinks` / :mod:`~hibiki.client.tracks` - media
* :mod:`~hibiki.client.transform` - encoded-frame transforms (sora-sdk's frame transformers)
* :mod:`~hibiki.client.e2ee` - end-to-end encryption with a shared key, on top of them
* :mod:`~hibiki.client.events` - enums and typed events
* :mod:`~hibiki.client.aio` - :func:`connect`
"""

from __future__ import annotations

from . import events
from .aio import ConnectContext, connect
from .connection import Connection
from .errors import HibikiConnectionError, HibikiError, TrackEnded
from .events import SignalingDirection, SignalingErrorCode, SignalingType
from .factory import Hibiki
from .sinks import AudioSink, AudioStreamSink, VideoSink
from .sources import AudioSource, VideoSource
from .tracks import AudioFrame, MediaTrack, VideoFrame

__all__ = [
    "AudioFrame",
    "AudioSink",
    "AudioSource",
    "AudioStreamSink",
    "ConnectContext",
    "Connection",
    "Hibiki",
    "HibikiConnectionError",
    "HibikiError",
    "MediaTrack",
    "SignalingDirection",
    "SignalingErrorCode",
    "SignalingType",
    "TrackEnded",
    "VideoFrame",
    "VideoSink",
    "VideoSource",
    "connect",
    "events",
]
