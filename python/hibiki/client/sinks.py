"""Sinks: how user code, callbacks, threads or coroutines, consumes a remote track's decoded media.

Same names and behaviour as sora-sdk's ``SoraVideoSink`` / ``SoraAudioSink`` /
``SoraAudioStreamSink``: set ``on_frame`` / ``on_data`` to be called for every
decoded frame (on the track's decoder thread: keep it short or hand the work
off), or pull with ``get`` / ``read`` from a thread, or with ``await`` /
``async for`` from a coroutine (``VideoSink.read``, ``AudioSink.read_async``
and ``chunks``). Audio sinks deliver the sample rate and channel count asked
for (resampling/remixing as needed). A sink can be attached to a track at
any time; it gets frames decoded from then on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import numpy as np

from .buffers import FrameBuffer, LoopWaiters
from .errors import TrackEnded
from .loop import call_user
from .tracks import AudioFrame

if TYPE_CHECKING:  # pragma: no cover
    from hibiki.media import AudioConverter

    from .tracks import MediaTrack, VideoFrame

__all__ = ["AudioSink", "AudioSinkBase", "AudioStreamSink", "VideoSink"]


class VideoSink:
    """Receives the decoded pictures of a video track (sora-sdk's ``SoraVideoSink``).

    Callback face::

        sink = hibiki.VideoSink(track)
        sink.on_frame = lambda frame: show(frame.data())   # BGR uint8 [h, w, 3]

    Pull, from a thread or a coroutine::

        frame = sink.get(timeout=1.0)            # raises TimeoutError
        frame = await sink.read(timeout=1.0)

    Each :class:`~hibiki.VideoFrame` holds the decoder's own picture:
    ``frame.i420()`` / ``frame.planes()`` are zero-copy, read-only views of
    its Y/U/V (or NV12) planes, and ``frame.data()`` converts to BGR on the
    first call only (then shared by every sink of the track). A sink that
    reads only planes, or only ``width``/``height``, pays for no conversion.
    The planes stay valid while the frame (or the arrays) are referenced;
    copy what you keep for long.

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


class AudioSinkBase:
    """What :class:`AudioSink` and :class:`AudioStreamSink` share: the output format and its conversion.

    Not used directly. A subclass gets every decoded frame of the track in
    ``_deliver`` and turns it into the requested format with ``_convert``.
    """

    def __init__(self, track: MediaTrack, output_frequency: int = -1, output_channels: int = 0) -> None:
        """Check the arguments; the subclass attaches to ``track`` when it is ready.

        Raises:
            ValueError: Not an audio track, or more than 8 output channels.
        """
        if track.kind != "audio":
            raise ValueError(f"{type(self).__name__} needs an audio track, got a {track.kind} track")
        if int(output_channels) > 8:
            raise ValueError(f"output_channels must be 8 or fewer, got {output_channels}")
        self.track = track
        self.output_frequency = int(output_frequency)
        """Requested sample rate (Hz); -1 or 0: as received (48000 for Opus)."""
        self.output_channels = int(output_channels)
        """Requested channel count; 0 or -1: as received (1 for mono streams, 2 for stereo)."""
        self.on_format: Callable[[int, int], None] | None = None
        """Called with ``(sample_rate, channels)`` before the first audio and whenever the output format changes."""
        self._format: tuple[int, int] | None = None
        self._in_format: tuple[int, int] | None = None
        self._converter: AudioConverter | None = None

    @property
    def sample_rate(self) -> int | None:
        """Output sample rate, once the first audio arrived."""
        return self._format[0] if self._format else None

    @property
    def channels(self) -> int | None:
        """Output channel count, once the first audio arrived."""
        return self._format[1] if self._format else None

    def _format_changed(self, sample_rate: int, channels: int) -> None:
        """Hook for subclasses: the output format is about to change (decoder thread)."""

    def _convert(self, frame: AudioFrame) -> AudioFrame | None:
        """``frame`` in the output format: itself, a converted copy, or None while the resampler fills."""
        in_format = (frame.sample_rate, frame.channels)
        if in_format != self._in_format:
            # A stream's format changes rarely (mono -> stereo once, at most),
            # and a new converter's resampler starts from silence, so rebuild
            # only then.
            self._in_format = in_format
            out_rate = self.output_frequency if self.output_frequency > 0 else frame.sample_rate
            out_channels = self.output_channels if self.output_channels > 0 else frame.channels
            if (out_rate, out_channels) != in_format:
                # PyAV is heavy: it is loaded with the first audio to convert.
                from hibiki.media import AudioConverter

                self._converter = AudioConverter(frame.sample_rate, frame.channels, out_rate, out_channels)
            else:
                self._converter = None
            if (out_rate, out_channels) != self._format:
                self._format_changed(out_rate, out_channels)
                self._format = (out_rate, out_channels)
                call_user(self.on_format, out_rate, out_channels, what=f"{type(self).__name__}.on_format")
        if self._converter is None:
            return frame
        pcm = self._converter.convert(frame.data())
        if len(pcm) == 0:
            return None
        assert self._format is not None
        return AudioFrame(pcm, self._format[0], frame.rtp_time, frame.received_at,
                          frame._capture_time_ms, frame.track_id)

    def _deliver(self, frame: AudioFrame) -> None:  # pragma: no cover - subclasses implement it
        raise NotImplementedError

    def _track_ended(self) -> None:
        pass

    def close(self) -> None:
        """Detach from the track; no more callbacks after the one running now."""
        self.track._remove_sink(self)
        self._track_ended()


class AudioSink(AudioSinkBase):
    """Receives a remote audio track as PCM (sora-sdk's ``SoraAudioSink``).

    Pull (sora-sdk semantics)::

        sink = hibiki.AudioSink(track, output_frequency=16000, output_channels=1)
        ok, pcm = sink.read(frames=320, timeout=1.0)   # int16 [320, 1] when ok

    Pull from asyncio, without blocking the loop (``read_async`` has
    ``read``'s semantics)::

        async for pcm in sink.chunks(frames=1600):     # 100 ms at a time, until the track ends
            transcriber.push(pcm)

    Or push: ``sink.on_data = lambda pcm: ...`` (decoder thread), and
    ``sink.on_format = lambda sample_rate, channels: ...`` once the format is
    known (before the first ``on_data``) and whenever it changes.
    """

    def __init__(
        self,
        track: MediaTrack,
        output_frequency: int = -1,
        output_channels: int = 0,
        max_buffer_seconds: float = 10.0,
    ) -> None:
        """Attach to ``track``.

        Args:
            track: an audio :class:`~hibiki.MediaTrack`.
            output_frequency: sample rate to deliver (Hz); -1 or 0 keeps the
                received rate (48000 for Opus).
            output_channels: channel count to deliver; 0 or -1 keeps the
                received count (1 or 2, as the sender coded it).
            max_buffer_seconds: audio kept for :meth:`read` before the oldest is dropped.

        Raises:
            ValueError: Not an audio track, or more than 8 output channels.
        """
        super().__init__(track, output_frequency, output_channels)
        self.on_data: Callable[[np.ndarray], None] | None = None
        """Called with each converted chunk, int16 ``[samples, channels]``, on the decoder thread."""
        self._max_buffer_seconds = max_buffer_seconds
        self._cond = threading.Condition()
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0
        self._ended = False
        self._waiters = LoopWaiters()  # coroutines in read_async
        self.samples_dropped = 0
        """Samples discarded because nobody read them within ``max_buffer_seconds``."""
        track._add_sink(self)

    def _format_changed(self, sample_rate: int, channels: int) -> None:
        with self._cond:
            # Samples of another format cannot be read as one array.
            self._chunks.clear()
            self._buffered = 0

    def _deliver(self, frame: AudioFrame) -> None:
        converted = self._convert(frame)
        if converted is None:
            return
        pcm = converted.data()
        limit = int(self._max_buffer_seconds * converted.sample_rate)
        with self._cond:
            self._chunks.append(pcm)
            self._buffered += len(pcm)
            while self._buffered > limit and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._buffered -= len(old)
                self.samples_dropped += len(old)
            self._cond.notify_all()
            if self._waiters:
                self._waiters.wake()
        call_user(self.on_data, pcm, what="AudioSink.on_data")

    def _track_ended(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()
            self._waiters.wake()

    def _empty(self) -> np.ndarray:
        channels = self._format[1] if self._format else max(self.output_channels, 1)
        return np.zeros((0, channels), dtype=np.int16)

    def read(self, frames: int = 0, timeout: float = 1.0) -> tuple[bool, np.ndarray]:
        """Take buffered audio, as sora-sdk's ``SoraAudioSink.read`` does.

        ``frames > 0``: wait up to ``timeout`` seconds until that many
        samples per channel are buffered and return exactly them; the rest
        stays for the next call. ``frames == 0``: return everything buffered
        right away, without waiting. The GIL is released while waiting.

        Returns:
            ``(True, int16 [n, channels])``, or ``(False, empty array)`` on
            timeout, when nothing is buffered (``frames == 0``) or when the
            track ended before enough audio arrived.

        Raises:
            ValueError: ``frames`` is negative.
        """
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while (taken := self._take_locked(frames)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False, self._empty()
                self._cond.wait(remaining)
            return taken

    async def read_async(self, frames: int = 0, timeout: float | None = 1.0) -> tuple[bool, np.ndarray]:
        """:meth:`read` for asyncio code: awaits the audio without blocking the loop.

        ``timeout=None`` waits as long as the track lasts.
        """
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        try:
            async with asyncio.timeout(None if timeout is None else max(0.0, timeout)):
                return await self._waiters.until(self._cond, lambda: self._take_locked(frames))
        except TimeoutError:
            return False, self._empty()

    async def chunks(self, frames: int) -> AsyncIterator[np.ndarray]:
        """Yield ``frames`` samples per channel at a time (int16 ``[frames, channels]``) until the track ends.

        What is left at the end, less than ``frames``, is not yielded.

        Raises:
            ValueError: ``frames`` is not positive.
        """
        if frames <= 0:
            raise ValueError(f"frames must be > 0, got {frames}")
        while True:
            ok, pcm = await self.read_async(frames, timeout=None)
            if not ok:
                return
            yield pcm

    def _take_locked(self, frames: int) -> tuple[bool, np.ndarray] | None:
        """What :meth:`read` returns now, or None while it should wait for more audio."""
        if self._buffered < max(frames, 1):
            if frames == 0 or self._ended:
                return False, self._empty()
            return None
        data = np.concatenate(list(self._chunks)) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks.clear()
        if frames > 0 and len(data) > frames:
            self._chunks.append(data[frames:])
            data = data[:frames]
        self._buffered -= len(data)
        return True, np.ascontiguousarray(data)


class AudioStreamSink(AudioSinkBase):
    """Receives a remote audio track as :class:`~hibiki.AudioFrame` s (sora-sdk's ``SoraAudioStreamSink``).

    >>> sink = hibiki.AudioStreamSink(track, output_frequency=16000, output_channels=1)
    >>> sink.on_frame = lambda frame: vad.analyze(frame)   # frame.data(): int16 [320, 1]

    ``on_frame`` runs on the track's decoder thread for every decoded frame
    (one Opus packet, usually 20 ms), converted to the requested format;
    frames keep their ``rtp_time`` (48 kHz clock) and are picklable, so they
    can be handed to another process as they are. Nothing is buffered.
    """

    def __init__(self, track: MediaTrack, output_frequency: int = -1, output_channels: int = 0) -> None:
        """Attach to ``track``; arguments as for :class:`AudioSink`.

        Raises:
            ValueError: Not an audio track, or more than 8 output channels.
        """
        super().__init__(track, output_frequency, output_channels)
        self.on_frame: Callable[[AudioFrame], None] | None = None
        """Called with each converted :class:`~hibiki.AudioFrame`, on the decoder thread."""
        self.frames = 0
        """Frames delivered to this sink."""
        track._add_sink(self)

    def _deliver(self, frame: AudioFrame) -> None:
        converted = self._convert(frame)
        if converted is None:
            return
        self.frames += 1
        call_user(self.on_frame, converted, what="AudioStreamSink.on_frame")
