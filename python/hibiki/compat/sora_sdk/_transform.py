"""Encoded-frame transforms (sora-sdk's insertable-streams API) over :mod:`hibiki.client.transform`.

The sora-sdk classes are subclasses of Hibiki's, so one machinery runs both:

* ``SoraAudioFrameTransformer`` / ``SoraVideoFrameTransformer`` are
  :class:`hibiki.client.transform.AudioFrameTransformer` /
  :class:`~hibiki.client.transform.VideoFrameTransformer` whose
  ``on_transform`` gets ``SoraTransformableAudioFrame`` /
  ``SoraTransformableVideoFrame`` objects;
* give a sending one to ``Sora.create_connection(audio_frame_transformer=...,
  video_frame_transformer=...)`` and a receiving one to
  ``SoraMediaTrack.set_frame_transformer`` (usually in ``on_track``), as
  with sora-sdk.

Differences from sora-sdk (see :mod:`hibiki.client.transform`): the callback
runs on a Hibiki worker thread (one per transformer) rather than a libwebrtc
thread; enqueueing a frame twice is ignored with a warning; a frame whose
``on_transform`` raised is dropped (and the exception logged) instead of
reaching libwebrtc's error handling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hibiki.client.transform import (
    AudioFrameTransformer,
    FrameTransformer,
    TransformableAudioFrame,
    TransformableFrame,
    TransformableFrameDirection,
    TransformableVideoFrame,
    VideoFrameTransformer,
)

from ._base import no_constructor
from ._enums import SoraTransformableAudioFrameType, SoraTransformableFrameDirection

__all__ = [
    "SoraAudioFrameTransformer",
    "SoraFrameTransformer",
    "SoraTransformableAudioFrame",
    "SoraTransformableFrame",
    "SoraTransformableVideoFrame",
    "SoraVideoFrameTransformer",
]


class SoraTransformableFrame(TransformableFrame):
    """An encoded frame passing through a transformer: payload plus RTP metadata.

    Not constructible by applications (they receive frames in ``on_transform``).
    ``get_data()`` is a read-only ``uint8`` view; ``set_data(array)`` replaces
    the payload; ``payload_type``, ``ssrc``, ``rtp_timestamp`` (settable),
    ``direction`` and ``mine_type`` (also spelled ``mime_type``) describe it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    @classmethod
    def _create(cls, data: bytes, *, payload_type: int = 0, ssrc: int = 0, rtp_timestamp: int = 0,
                direction: SoraTransformableFrameDirection = SoraTransformableFrameDirection.UNKNOWN,
                codec: str = "", **metadata: Any) -> Any:
        """Build a frame outside a transformer (for tests of transform functions; it cannot be enqueued)."""
        return cls._build(bytes(data), payload_type=payload_type, ssrc=ssrc, rtp_time=rtp_timestamp,
                          direction=TransformableFrameDirection(int(direction)), codec=codec, metadata=metadata)

    @property
    def direction(self) -> SoraTransformableFrameDirection:  # type: ignore[override]  # sora-sdk's enum
        """``SENDER`` (from our encoder) or ``RECEIVER`` (from the network)."""
        return SoraTransformableFrameDirection(int(self._direction))


class SoraTransformableAudioFrame(SoraTransformableFrame, TransformableAudioFrame):
    """An encoded audio frame (one Opus packet): adds CSRCs, sequence number, capture time, audio level.

    As in sora-sdk, ``sequence_number``, ``audio_level`` and ``receive_time``
    are known for received frames only (None otherwise), and
    ``absolute_capture_timestamp`` is an NTP UQ32.32 time.
    """

    @property
    def type(self) -> SoraTransformableAudioFrameType:  # type: ignore[override]  # sora-sdk's enum
        """``SPEECH``, ``CN`` (an Opus DTX packet) or ``EMPTY``."""
        return SoraTransformableAudioFrameType(int(TransformableAudioFrame.type.__get__(self)))


class SoraTransformableVideoFrame(SoraTransformableFrame, TransformableVideoFrame):
    """An encoded video frame: adds keyframe flag, frame id, dependencies, size (keyframes), layer indices."""


class SoraFrameTransformer(FrameTransformer):
    """Base of the audio and video transformers: ``enqueue`` a transformed frame, or short-circuit.

    Not constructible itself (as in sora-sdk); create a
    :class:`SoraAudioFrameTransformer` or :class:`SoraVideoFrameTransformer`.
    """

    def __init__(self) -> None:
        if type(self) is SoraFrameTransformer:
            no_constructor(self)
        super().__init__()

    def enqueue(self, arg: TransformableFrame, /) -> None:
        """Send ``arg`` on (to the packetizer when sending, the decoder when receiving).

        Call it once per frame, from ``on_transform`` or later from any
        thread; a frame never enqueued is dropped.
        """
        super().enqueue(arg)

    def start_short_circuiting(self) -> None:
        """Frames bypass ``on_transform`` from now on and go on unchanged."""
        super().start_short_circuiting()


class SoraAudioFrameTransformer(SoraFrameTransformer, AudioFrameTransformer):
    """Transformer of encoded audio: set ``on_transform``, then give it to
    ``create_connection(audio_frame_transformer=...)`` (sending) or to
    ``SoraMediaTrack.set_frame_transformer`` (receiving)."""

    _frame_type = SoraTransformableAudioFrame

    def __init__(self) -> None:
        super().__init__()

    def __del__(self) -> None:
        """As in sora-sdk: frames pass unchanged once the transformer is released."""
        self._short_circuit = True

    @property
    def on_transform(self) -> Callable[[SoraTransformableAudioFrame], None] | None:
        """Called with each :class:`SoraTransformableAudioFrame`; must ``enqueue`` it."""
        return self._on_transform

    @on_transform.setter
    def on_transform(self, arg: Callable[[SoraTransformableAudioFrame], None] | None, /) -> None:
        self._on_transform = arg


class SoraVideoFrameTransformer(SoraFrameTransformer, VideoFrameTransformer):
    """Transformer of encoded video: set ``on_transform``, then give it to
    ``create_connection(video_frame_transformer=...)`` (sending) or to
    ``SoraMediaTrack.set_frame_transformer`` (receiving)."""

    _frame_type = SoraTransformableVideoFrame

    def __init__(self) -> None:
        super().__init__()

    def __del__(self) -> None:
        """As in sora-sdk: frames pass unchanged once the transformer is released."""
        self._short_circuit = True

    @property
    def on_transform(self) -> Callable[[SoraTransformableVideoFrame], None] | None:
        """Called with each :class:`SoraTransformableVideoFrame`; must ``enqueue`` it."""
        return self._on_transform

    @on_transform.setter
    def on_transform(self, arg: Callable[[SoraTransformableVideoFrame], None] | None, /) -> None:
        self._on_transform = arg
