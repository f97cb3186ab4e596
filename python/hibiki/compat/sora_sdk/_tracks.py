"""Tracks and sources: sora-sdk's ``SoraTrackInterface`` family over Hibiki's sources and tracks.

* :class:`SoraAudioSource` / :class:`SoraVideoSource` wrap
  :class:`hibiki.AudioSource` / :class:`hibiki.VideoSource` (local media,
  encoded once for every connection they are given to).
* :class:`SoraMediaTrack` wraps :class:`hibiki.MediaTrack` (a received track,
  handed to ``on_track``).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

from ._base import no_constructor, wrap
from ._enums import SoraTrackState

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.client.sources import AudioSource, VideoSource
    from hibiki.client.tracks import MediaTrack

    from ._transform import SoraFrameTransformer

__all__ = ["SoraAudioSource", "SoraMediaTrack", "SoraTrackInterface", "SoraVideoSource"]


class SoraTrackInterface:
    """A local or remote audio/video track (sora-sdk's common base of sources and received tracks).

    Not constructible; get one from ``Sora.create_audio_source``,
    ``Sora.create_video_source`` or ``on_track``.
    """

    _inner: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    @classmethod
    def _wrap(cls, inner: Any) -> Any:
        return wrap(cls, _inner=inner)

    @property
    def kind(self) -> str:
        """``"audio"`` or ``"video"``."""
        return str(self._inner.kind)

    @property
    def id(self) -> str:
        """The track id (a random id for a local source, the ``msid`` track id for a received one)."""
        return str(self._inner.id)

    @property
    def enabled(self) -> bool:
        """False while disabled: a source then sends silence/nothing, a received track delivers nothing."""
        return bool(self._inner.enabled)

    @property
    def state(self) -> SoraTrackState:
        """``LIVE``, or ``ENDED`` once a received track was removed or its connection closed."""
        return SoraTrackState.ENDED if getattr(self._inner, "ended", False) else SoraTrackState.LIVE

    def set_enabled(self, enable: bool) -> bool:
        """Enable or disable the track. Returns True when that changed the state (as libwebrtc does)."""
        changed = bool(enable) != bool(self._inner.enabled)
        self._inner.set_enabled(bool(enable))
        return changed

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} id={self.id!r} {self.state.name}>"


class SoraMediaTrack(SoraTrackInterface):
    """A received track, as ``on_track`` hands it over.

    Attach a :class:`SoraVideoSink` / :class:`SoraAudioSink` /
    :class:`SoraAudioStreamSink` to get its media. ``hibiki_track`` is the
    underlying :class:`hibiki.MediaTrack` (a Hibiki extension: ``await
    track.recv()``, ``request_keyframe()``, counters).
    """

    _inner: MediaTrack

    @property
    def stream_id(self) -> str:
        """The msid stream id: on Sora and Hibiki, the sender's connection_id."""
        return str(self._inner.stream_id)

    def set_frame_transformer(self, arg: SoraFrameTransformer, /) -> None:
        """Pass this track's received encoded frames through ``arg`` before they are decoded.

        ``arg`` is a :class:`SoraVideoFrameTransformer` for a video track, a
        :class:`SoraAudioFrameTransformer` for an audio one (Hibiki's own
        transformers are accepted too). Set it in ``on_track``, before the
        first frames arrive. Raises ``TypeError`` for a transformer of the
        other kind (sora-sdk would hand the frames to it regardless).
        """
        self._inner.set_frame_transformer(arg)

    @property
    def hibiki_track(self) -> MediaTrack:
        """The underlying :class:`hibiki.MediaTrack` (Hibiki extension)."""
        return self._inner


def _pcm_from_address(address: int, samples_per_channel: int, channels: int) -> npt.NDArray[np.int16]:
    """Copy interleaved int16 PCM from a raw memory address (sora-sdk's pointer form of ``on_data``)."""
    if samples_per_channel < 0:
        raise ValueError(f"samples_per_channel must be >= 0, got {samples_per_channel}")
    count = samples_per_channel * channels
    buffer = (ctypes.c_int16 * count).from_address(address)
    return np.array(np.frombuffer(memoryview(buffer), dtype=np.int16), copy=True).reshape(
        samples_per_channel, channels)


class SoraAudioSource(SoraTrackInterface):
    """A local audio track fed with 16-bit PCM; from ``Sora.create_audio_source(channels, sample_rate)``.

    Differences from sora-sdk: any chunk length is accepted (sora-sdk
    prefers 10 ms chunks); audio is encoded to Opus in 20 ms packets; a 1-D
    array is taken as mono; ``timestamp`` is accepted and not used (audio
    timing follows the sample count). ``hibiki_source`` is the underlying
    :class:`hibiki.AudioSource`.
    """

    _inner: AudioSource

    @overload
    def on_data(self, data: int, samples_per_channel: int, timestamp: float) -> None: ...

    @overload
    def on_data(self, data: int, samples_per_channel: int) -> None: ...

    @overload
    def on_data(self, ndarray: npt.NDArray[np.int16], timestamp: float) -> None: ...

    @overload
    def on_data(self, ndarray: npt.NDArray[np.int16]) -> None: ...

    def on_data(self, *args: Any, **kwargs: Any) -> None:
        """Queue PCM for sending. Four forms, as in sora-sdk:

        * ``on_data(ndarray)`` / ``on_data(ndarray, timestamp)``: ``int16``
          ``[samples, channels]`` at the source's sample rate;
        * ``on_data(data, samples_per_channel)`` /
          ``on_data(data, samples_per_channel, timestamp)``: ``data`` is the
          address of interleaved int16 samples (e.g. ``ndarray.ctypes.data``),
          copied right away.
        """
        pcm = self._parse(args, kwargs)
        self._inner.on_data(pcm)

    def _parse(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> npt.NDArray[np.int16]:
        # Dispatch like sora-sdk's overloads: the first argument is either an
        # array or an address (int); the rest is matched by name or position.
        names: tuple[str, ...]
        if "ndarray" in kwargs or (args and isinstance(args[0], np.ndarray)):
            names = ("ndarray", "timestamp")
        elif "data" in kwargs or (args and isinstance(args[0], int)):
            names = ("data", "samples_per_channel", "timestamp")
        else:
            raise TypeError(_ON_DATA_FORMS)
        if len(args) > len(names):
            raise TypeError(_ON_DATA_FORMS)
        bound = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names or name in bound:
                raise TypeError(_ON_DATA_FORMS)
            bound[name] = value
        if "ndarray" in bound:
            return np.asarray(bound["ndarray"])
        if "samples_per_channel" not in bound:
            raise TypeError(_ON_DATA_FORMS)
        return _pcm_from_address(int(bound["data"]), int(bound["samples_per_channel"]), self._inner.channels)

    @property
    def hibiki_source(self) -> AudioSource:
        """The underlying :class:`hibiki.AudioSource` (Hibiki extension)."""
        return self._inner


_ON_DATA_FORMS = (
    "on_data(): incompatible function arguments. The following argument types are supported:\n"
    "    1. on_data(self, data: int, samples_per_channel: int, timestamp: float) -> None\n"
    "    2. on_data(self, data: int, samples_per_channel: int) -> None\n"
    "    3. on_data(self, ndarray: ndarray[int16, (*, *)], timestamp: float) -> None\n"
    "    4. on_data(self, ndarray: ndarray[int16, (*, *)]) -> None"
)

_ON_CAPTURED_FORMS = (
    "on_captured(): incompatible function arguments. The following argument types are supported:\n"
    "    1. on_captured(self, ndarray: ndarray[uint8, (*, *, 3)]) -> None\n"
    "    2. on_captured(self, ndarray: ndarray[uint8, (*, *, 3)], timestamp: float) -> None\n"
    "    3. on_captured(self, ndarray: ndarray[uint8, (*, *, 3)], timestamp_us: int) -> None"
)


class SoraVideoSource(SoraTrackInterface):
    """A local video track fed with BGR pictures; from ``Sora.create_video_source()``.

    Pictures are encoded in the background with the codec the server's offer
    asks for; any even size works and may change between calls.
    ``hibiki_source`` is the underlying :class:`hibiki.VideoSource`.
    """

    _inner: VideoSource

    @overload
    def on_captured(self, ndarray: npt.NDArray[np.uint8]) -> None: ...

    @overload
    def on_captured(self, ndarray: npt.NDArray[np.uint8], timestamp: float) -> None: ...

    @overload
    def on_captured(self, ndarray: npt.NDArray[np.uint8], timestamp_us: int) -> None: ...

    def on_captured(self, *args: Any, **kwargs: Any) -> None:
        """Queue one ``uint8 [height, width, 3]`` BGR picture for sending.

        The capture time is ``timestamp`` (seconds, float) or ``timestamp_us``
        (microseconds, int), or the time of the call. Only differences between
        timestamps matter (they set the RTP clock), so any clock will do as
        long as it is the same for every picture.
        """
        if len(args) > 2 or not (args or "ndarray" in kwargs):
            raise TypeError(_ON_CAPTURED_FORMS)
        names = ("ndarray", "timestamp")
        bound: dict[str, Any] = dict(zip(names, args, strict=False))
        if len(args) == 2 and isinstance(args[1], int) and not isinstance(args[1], bool):
            # sora-sdk picks the timestamp_us overload for a positional int.
            bound["timestamp_us"] = bound.pop("timestamp")
        for name, value in kwargs.items():
            if name not in ("ndarray", "timestamp", "timestamp_us") or name in bound:
                raise TypeError(_ON_CAPTURED_FORMS)
            bound[name] = value
        if "timestamp" in bound and "timestamp_us" in bound:
            raise TypeError(_ON_CAPTURED_FORMS)
        timestamp: float | None = None
        if bound.get("timestamp") is not None:
            timestamp = float(bound["timestamp"])
        elif bound.get("timestamp_us") is not None:
            timestamp = int(bound["timestamp_us"]) / 1_000_000
        self._inner.on_captured(bound["ndarray"], timestamp)

    @property
    def hibiki_source(self) -> VideoSource:
        """The underlying :class:`hibiki.VideoSource` (Hibiki extension)."""
        return self._inner
