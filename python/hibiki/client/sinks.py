"""Sinks: how the callback face (and threads) consume a remote track's decoded media.

Same names and behaviour as sora-sdk's ``SoraVideoSink`` / ``SoraAudioSink``:
set ``on_frame`` / ``on_data`` to be called for every decoded frame (on the
track's decoder thread: keep it short or hand the work off), or pull with
``get`` / ``read``. A sink can be attached to a track at any time; it gets
frames decoded from then on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .buffers import FrameBuffer
from .errors import TrackEnded
from .loop import call_user

if TYPE_CHECKING:  # pragma: no cover
    from .tracks import AudioFrame, MediaTrack, VideoFrame

__all__ = ["AudioSink", "VideoSink"]


class VideoSink:
    """Receives the decoded pictures of a video track (sora-sdk's ``SoraVideoSink``).

    Callback face::

        sink = hibiki.VideoSink(track)
        sink.on_frame = lambda frame: show(frame.data())   # BGR uint8 [h, w, 3]

    Pull, from a thread or a coroutine::

        frame = sink.get(timeout=1.0)            # raises TimeoutError
        frame = await sink.read(timeout=1.0)

    Only the newest ``queue_size`` pictures are kept for ``get``/``read``: a
    slow reader skips frames rather than falling behind.
    """

    def __init__(self, track: MediaTrack, queue_size: int = 2) -> None:
        if track.kind != "video":
            raise ValueError(f"VideoSink needs a video track, got a {track.kind} track")
        self.track = track
        self.on_frame: Callable[[VideoFrame], None] | None = None
        """Called with each :class:`~hibiki.VideoFrame`, on the decoder thread."""
        self._buffer: FrameBuffer[VideoFrame] = FrameBuffer(queue_size, what="video frame")
        self.frames = 0
        """Pictures delivered to this sink."""
        track._add_sink(self)

    def _deliver(self, frame: VideoFrame) -> None:
        self.frames += 1
        self._buffer.put(frame)
        call_user(self.on_frame, frame, what="VideoSink.on_frame")

    def _track_ended(self) -> None:
        self._buffer.close()

    def get(self, timeout: float | None = 1.0) -> VideoFrame:
        """Block for the next picture. Raises TimeoutError or :class:`~hibiki.TrackEnded`."""
        return self._buffer.get(timeout)

    async def read(self, timeout: float | None = None) -> VideoFrame:
        """Await the next picture. Raises TimeoutError or :class:`~hibiki.TrackEnded`."""
        return await self._buffer.aget(timeout)

    def __aiter__(self) -> AsyncIterator[VideoFrame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[VideoFrame]:
        while True:
            try:
                yield await self._buffer.aget()
            except TrackEnded:
                return

    def close(self) -> None:
        """Detach from the track; pending readers get :class:`~hibiki.TrackEnded`."""
        self.track._remove_sink(self)
        self._buffer.close()


class AudioSink:
    """Receives a remote audio track as PCM (sora-sdk's ``SoraAudioSink``).

    Args:
        track: an audio :class:`~hibiki.MediaTrack`.
        output_frequency: sample rate to deliver (Hz); -1 or 0 keeps 48000.
        output_channels: channel count to deliver; 0 or -1 keeps the decoder's (2).
        max_buffer_seconds: audio kept for :meth:`read` before the oldest is dropped.

    Pull (sora-sdk semantics)::

        sink = hibiki.AudioSink(track, output_frequency=16000, output_channels=1)
        ok, pcm = sink.read(frames=320, timeout=1.0)   # int16 [320, 1] when ok

    or push: ``sink.on_data = lambda pcm: ...`` (decoder thread), and
    ``sink.on_format = lambda sample_rate, channels: ...`` once the format is known.
    """

    def __init__(
        self,
        track: MediaTrack,
        output_frequency: int = -1,
        output_channels: int = 0,
        max_buffer_seconds: float = 10.0,
    ) -> None:
        if track.kind != "audio":
            raise ValueError(f"AudioSink needs an audio track, got a {track.kind} track")
        self.track = track
        self.output_frequency = int(output_frequency)
        self.output_channels = int(output_channels)
        self.on_data: Callable[[np.ndarray], None] | None = None
        """Called with each converted chunk, int16 ``[samples, channels]``, on the decoder thread."""
        self.on_format: Callable[[int, int], None] | None = None
        """Called with ``(sample_rate, channels)`` before the first ``on_data`` and on changes."""
        self._max_buffer_seconds = max_buffer_seconds
        self._cond = threading.Condition()
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0
        self._format: tuple[int, int] | None = None
        self._in_format: tuple[int, int] | None = None
        self._converter: Any = None
        self._ended = False
        self.samples_dropped = 0
        """Samples discarded because nobody read them within ``max_buffer_seconds``."""
        track._add_sink(self)

    @property
    def sample_rate(self) -> int | None:
        """Output sample rate, once the first audio arrived."""
        return self._format[0] if self._format else None

    @property
    def channels(self) -> int | None:
        """Output channel count, once the first audio arrived."""
        return self._format[1] if self._format else None

    def _deliver(self, frame: AudioFrame) -> None:
        in_format = (frame.sample_rate, frame.channels)
        if in_format != self._in_format:
            self._in_format = in_format
            out_rate = self.output_frequency if self.output_frequency > 0 else frame.sample_rate
            out_channels = self.output_channels if self.output_channels > 0 else frame.channels
            if (out_rate, out_channels) != in_format:
                from hibiki.media import AudioConverter

                self._converter = AudioConverter(frame.sample_rate, frame.channels, out_rate, out_channels)
            else:
                self._converter = None
            if (out_rate, out_channels) != self._format:
                with self._cond:
                    self._format = (out_rate, out_channels)
                    # Samples of another format cannot be read as one array.
                    self._chunks.clear()
                    self._buffered = 0
                call_user(self.on_format, out_rate, out_channels, what="AudioSink.on_format")
        pcm = frame.data if self._converter is None else self._converter.convert(frame.data)
        if len(pcm) == 0:
            return
        assert self._format is not None
        limit = int(self._max_buffer_seconds * self._format[0])
        with self._cond:
            self._chunks.append(pcm)
            self._buffered += len(pcm)
            while self._buffered > limit and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._buffered -= len(old)
                self.samples_dropped += len(old)
            self._cond.notify_all()
        call_user(self.on_data, pcm, what="AudioSink.on_data")

    def _track_ended(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _empty(self) -> np.ndarray:
        channels = self._format[1] if self._format else max(self.output_channels, 1)
        return np.zeros((0, channels), dtype=np.int16)

    def read(self, frames: int = 0, timeout: float = 1.0) -> tuple[bool, np.ndarray]:
        """Take buffered audio, waiting up to ``timeout`` seconds for it.

        ``frames > 0``: wait until that many samples per channel are buffered
        and return exactly them. ``frames == 0``: wait until anything is
        buffered and return all of it. Returns ``(True, int16 [n, channels])``
        on success and ``(False, empty array)`` on timeout or when the track
        ended before enough audio arrived.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            need = frames if frames > 0 else 1
            while self._buffered < need:
                remaining = deadline - time.monotonic()
                if self._ended or remaining <= 0:
                    return False, self._empty()
                self._cond.wait(remaining)
            data = np.concatenate(list(self._chunks)) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks.clear()
            if frames > 0 and len(data) > frames:
                self._chunks.append(data[frames:])
                data = data[:frames]
            self._buffered -= len(data)
            return True, np.ascontiguousarray(data)

    def close(self) -> None:
        """Detach from the track."""
        self.track._remove_sink(self)
        self._track_ended()
