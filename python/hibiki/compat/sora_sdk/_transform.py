"""Encoded-frame transforms (sora-sdk's insertable-streams API): names and shapes, no engine hook yet.

The classes exist with sora-sdk's attributes so that programs import and
type-check. Hibiki does not route encoded frames through Python transformers
yet (a later release does): giving a transformer to ``create_connection`` or
``SoraMediaTrack.set_frame_transformer`` raises ``NotImplementedError``
rather than silently sending untransformed (e.g. unencrypted) media.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import no_constructor, wrap
from ._enums import SoraTransformableAudioFrameType, SoraTransformableFrameDirection

__all__ = [
    "SoraAudioFrameTransformer",
    "SoraFrameTransformer",
    "SoraTransformableAudioFrame",
    "SoraTransformableFrame",
    "SoraTransformableVideoFrame",
    "SoraVideoFrameTransformer",
]

_EMPTY_U32: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
_EMPTY_I64: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)


def _readonly(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    view = array.view()
    view.flags.writeable = False
    return view


class SoraTransformableFrame:
    """An encoded frame passing through a transformer: payload plus RTP metadata.

    Not constructible by applications (they receive frames in ``on_transform``).
    """

    _data: npt.NDArray[np.uint8]
    _payload_type: int
    _ssrc: int
    _rtp_timestamp: int
    _direction: SoraTransformableFrameDirection
    _mime_type: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    @classmethod
    def _create(cls, data: bytes, *, payload_type: int = 0, ssrc: int = 0, rtp_timestamp: int = 0,
                direction: SoraTransformableFrameDirection = SoraTransformableFrameDirection.UNKNOWN,
                mime_type: str = "", **extra: Any) -> Any:
        """Build a frame (for the SDK's own use; the engine hook will call this)."""
        return wrap(cls, _data=np.frombuffer(bytes(data), dtype=np.uint8), _payload_type=payload_type,
                    _ssrc=ssrc, _rtp_timestamp=rtp_timestamp, _direction=direction, _mime_type=mime_type,
                    **{f"_{k}": v for k, v in extra.items()})

    def get_data(self) -> npt.NDArray[np.uint8]:
        """The encoded payload, read-only ``uint8`` (copy it to modify, then :meth:`set_data`)."""
        return _readonly(self._data)

    def set_data(self, arg: npt.NDArray[np.uint8], /) -> None:
        """Replace the payload (e.g. with its encrypted form)."""
        self._data = np.array(np.asarray(arg, dtype=np.uint8).reshape(-1), copy=True)

    @property
    def payload_type(self) -> int:
        return self._payload_type

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @property
    def rtp_timestamp(self) -> int:
        return self._rtp_timestamp

    @rtp_timestamp.setter
    def rtp_timestamp(self, arg: int, /) -> None:
        self._rtp_timestamp = int(arg)

    @property
    def direction(self) -> SoraTransformableFrameDirection:
        return self._direction

    @property
    def mine_type(self) -> str:
        """The codec MIME type, e.g. ``"video/VP8"`` (sora-sdk 2025.4 spells the name ``mine_type``)."""
        return self._mime_type


class SoraTransformableAudioFrame(SoraTransformableFrame):
    """An encoded audio frame (adds CSRCs, sequence number, capture time, audio level)."""

    @property
    def contributing_sources(self) -> npt.NDArray[np.uint32]:
        return _readonly(getattr(self, "_contributing_sources", _EMPTY_U32))

    @property
    def sequence_number(self) -> int | None:
        return getattr(self, "_sequence_number", None)

    @property
    def absolute_capture_timestamp(self) -> int | None:
        return getattr(self, "_absolute_capture_timestamp", None)

    @property
    def type(self) -> SoraTransformableAudioFrameType:
        return getattr(self, "_type", SoraTransformableAudioFrameType.SPEECH)

    @property
    def audio_level(self) -> int | None:
        return getattr(self, "_audio_level", None)

    @property
    def receive_time(self) -> int | None:
        return getattr(self, "_receive_time", None)


class SoraTransformableVideoFrame(SoraTransformableFrame):
    """An encoded video frame (adds keyframe flag, frame id, dependencies, size, layer indices)."""

    @property
    def is_key_frame(self) -> bool:
        return bool(getattr(self, "_is_key_frame", False))

    @property
    def frame_id(self) -> int | None:
        return getattr(self, "_frame_id", None)

    @property
    def frame_dependencies(self) -> npt.NDArray[np.int64]:
        return _readonly(getattr(self, "_frame_dependencies", _EMPTY_I64))

    @property
    def width(self) -> int:
        return int(getattr(self, "_width", 0))

    @property
    def height(self) -> int:
        return int(getattr(self, "_height", 0))

    @property
    def spatial_index(self) -> int:
        return int(getattr(self, "_spatial_index", 0))

    @property
    def temporal_index(self) -> int:
        return int(getattr(self, "_temporal_index", 0))

    @property
    def contributing_sources(self) -> npt.NDArray[np.uint32]:
        return _readonly(getattr(self, "_contributing_sources", _EMPTY_U32))


_NOT_YET = ("encoded-frame transforms (insertable streams) are not implemented in Hibiki yet; "
            "a transformer cannot be attached to a connection or track")


class SoraFrameTransformer:
    """Base of the audio and video transformers: ``enqueue`` a transformed frame, or short-circuit.

    Not constructible itself (as in sora-sdk); create a
    :class:`SoraAudioFrameTransformer` or :class:`SoraVideoFrameTransformer`.
    """

    def __init__(self) -> None:
        if type(self) is SoraFrameTransformer:
            no_constructor(self)
        self._short_circuit = False

    def enqueue(self, arg: SoraTransformableFrame, /) -> None:
        """Send ``arg`` on (after ``on_transform`` changed it).

        Raises:
            NotImplementedError: always, for now (no frames flow through transformers yet).
        """
        if not isinstance(arg, SoraTransformableFrame):
            raise TypeError(f"enqueue() takes a SoraTransformableFrame, got {type(arg).__name__}")
        raise NotImplementedError(f"{type(self).__name__}.enqueue: {_NOT_YET}")

    def start_short_circuiting(self) -> None:
        """Stop calling ``on_transform``: frames pass through unchanged (which is all Hibiki does today)."""
        self._short_circuit = True


class SoraAudioFrameTransformer(SoraFrameTransformer):
    """Transformer for audio: set ``on_transform``; not attachable yet (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._on_transform: Callable[[SoraTransformableAudioFrame], None] | None = None

    def __del__(self) -> None:
        self._on_transform = None

    @property
    def on_transform(self) -> Callable[[SoraTransformableAudioFrame], None] | None:
        """Called with each :class:`SoraTransformableAudioFrame`; must ``enqueue`` it."""
        return self._on_transform

    @on_transform.setter
    def on_transform(self, arg: Callable[[SoraTransformableAudioFrame], None] | None, /) -> None:
        self._on_transform = arg


class SoraVideoFrameTransformer(SoraFrameTransformer):
    """Transformer for video: set ``on_transform``; not attachable yet (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._on_transform: Callable[[SoraTransformableVideoFrame], None] | None = None

    def __del__(self) -> None:
        self._on_transform = None

    @property
    def on_transform(self) -> Callable[[SoraTransformableVideoFrame], None] | None:
        """Called with each :class:`SoraTransformableVideoFrame`; must ``enqueue`` it."""
        return self._on_transform

    @on_transform.setter
    def on_transform(self, arg: Callable[[SoraTransformableVideoFrame], None] | None, /) -> None:
        self._on_transform = arg


def transformers_not_implemented(where: str) -> NotImplementedError:
    """The error ``create_connection`` raises when given a transformer."""
    return NotImplementedError(f"{where}: {_NOT_YET}")
