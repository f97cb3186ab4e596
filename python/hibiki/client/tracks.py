"""Remote tracks: encoded frames from the engine in, decoded numpy frames out.

Each remote track owns a decoder worker thread with a small bounded queue.
The SDK loop only appends encoded frames to that queue (cheap), so decoding
never delays signaling or other tracks, and one slow consumer never stalls
another track.

Video decoding only starts at a keyframe and stops again after a loss
(``contiguous`` False), an overflow of the queue or a decoder error (the
:class:`hibiki.media.VideoDecoder` drops delta frames meanwhile), and the
sender is asked for a new keyframe (PLI), at most every 300 ms. That way a
receiver never shows a picture decoded from missing references.

Decoded frames go to the track's sinks (callbacks, run on the worker thread)
and to a short buffer read by ``await track.recv()`` / ``track.get()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .buffers import FrameBuffer

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import Event

    from .sinks import AudioSink, VideoSink

__all__ = ["AudioFrame", "MediaTrack", "VideoFrame"]

logger = logging.getLogger("hibiki.client")

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000
_KEYFRAME_REQUEST_INTERVAL = 0.3
# Encoded frames waiting for the decoder. Video: ~2 s at 30 fps; past that the
# decoder is hopelessly behind and we restart from a fresh keyframe instead.
_VIDEO_INPUT_QUEUE = 60
_AUDIO_INPUT_QUEUE = 100  # 2 s of 20 ms packets
# Decoded frames kept for recv(): video keeps the latest few, audio ~0.5 s.
_VIDEO_RECV_BUFFER = 3
_AUDIO_RECV_BUFFER = 25


class VideoFrame:
    """One decoded picture (sora-sdk's ``SoraVideoFrame``).

    >>> frame = await track.recv()
    >>> bgr = frame.data()                   # uint8 [height, width, 3]
    >>> frame.width, frame.height, frame.rtp_time
    """

    __slots__ = ("_data", "received_at", "rtp_time", "track_id")

    def __init__(self, data: np.ndarray, rtp_time: int, received_at: float, track_id: str = "") -> None:
        self._data = data
        self.rtp_time = rtp_time
        """Timestamp in the 90 kHz RTP clock, as the sender stamped the capture."""
        self.received_at = received_at
        """``time.monotonic()`` when the picture came out of the decoder."""
        self.track_id = track_id

    def data(self) -> np.ndarray:
        """The picture as a BGR ``uint8`` array ``[height, width, 3]``."""
        return self._data

    @property
    def timestamp(self) -> float:
        """Media time in seconds (``rtp_time / 90000``); differences are frame spacing."""
        return self.rtp_time / VIDEO_CLOCK_RATE

    @property
    def width(self) -> int:
        return int(self._data.shape[1])

    @property
    def height(self) -> int:
        return int(self._data.shape[0])

    def __repr__(self) -> str:
        return f"VideoFrame({self.width}x{self.height}, rtp_time={self.rtp_time})"


class AudioFrame:
    """A chunk of decoded audio (20 ms for Opus).

    ``data`` is ``int16 [samples, channels]`` at ``sample_rate`` Hz.
    The sora-sdk ``SoraAudioFrame`` names ``samples_per_channel``,
    ``num_channels`` and ``sample_rate_hz`` are there too.
    """

    __slots__ = ("data", "received_at", "rtp_time", "sample_rate")

    def __init__(self, data: np.ndarray, sample_rate: int, rtp_time: int, received_at: float) -> None:
        self.data = data
        self.sample_rate = sample_rate
        self.rtp_time = rtp_time
        """Timestamp in the 48 kHz RTP clock."""
        self.received_at = received_at

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    @property
    def samples_per_channel(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_channels(self) -> int:
        return self.channels

    @property
    def sample_rate_hz(self) -> int:
        return self.sample_rate

    @property
    def timestamp(self) -> float:
        """Media time in seconds (``rtp_time / 48000``)."""
        return self.rtp_time / AUDIO_CLOCK_RATE

    def __repr__(self) -> str:
        return f"AudioFrame({self.samples_per_channel}x{self.channels} @ {self.sample_rate} Hz)"


_STOP = object()
_RESET = object()


class MediaTrack:
    """A remote audio or video track of a connection (sora-sdk's ``SoraMediaTrack``).

    Created by the SDK when the server announces a track; get them from
    ``on_track`` / ``conn.tracks`` / :class:`~hibiki.events.TrackAdded`.

    Attributes:
        kind: ``"audio"`` or ``"video"``.
        stream_id: the sender's connection_id.
        id: the track id from the SDP (``msid``).
        mid: the m-line it arrives on.

    Asyncio face::

        frame = await track.recv(timeout=5)      # VideoFrame or AudioFrame
        async for frame in track: ...             # until the track ends

    Callback face: attach a :class:`~hibiki.VideoSink` or :class:`~hibiki.AudioSink`.
    """

    def __init__(
        self,
        *,
        kind: Literal["audio", "video"],
        mid: str,
        stream_id: str,
        track_id: str,
        connection_id: str,
        request_keyframe: Callable[[str], None],
    ) -> None:
        self.kind: Literal["audio", "video"] = kind
        self.mid = mid
        self.stream_id = stream_id
        self.id = track_id
        self.connection_id = connection_id
        """The *receiving* connection's id (ours)."""
        self._request_keyframe: Callable[[str], None] | None = request_keyframe
        self._enabled = True
        self._ended = False
        self._cond = threading.Condition()
        self._input: deque[Any] = deque()
        self._input_max = _VIDEO_INPUT_QUEUE if kind == "video" else _AUDIO_INPUT_QUEUE
        self._buffer: FrameBuffer[Any] = FrameBuffer(
            _VIDEO_RECV_BUFFER if kind == "video" else _AUDIO_RECV_BUFFER, what=f"{kind} frame"
        )
        self._video_sinks: tuple[VideoSink, ...] = ()
        self._audio_sinks: tuple[AudioSink, ...] = ()
        self.codec: str | None = None
        self.frames_received = 0
        """Encoded frames received from the engine."""
        self.bytes_received = 0
        """Payload bytes of those frames (after RTP depacketization)."""
        self.frame_width: int | None = None
        """Video: width of the last decoded picture (None before the first)."""
        self.frame_height: int | None = None
        """Video: height of the last decoded picture."""
        self.frames_decoded = 0
        self.keyframe_requests = 0
        self.first_frame_at: float | None = None
        """``time.monotonic()`` of the first decoded frame (None until then)."""
        self.created_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"hibiki-{kind}-track", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "ended" if self._ended else "live"
        return f"MediaTrack({self.kind}, mid={self.mid!r}, stream_id={self.stream_id!r}, {state})"

    # -- sora-sdk style surface ---------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False stops delivering decoded frames (decoding continues, so unmuting is instant)."""
        return self._enabled

    def set_enabled(self, enable: bool) -> bool:
        self._enabled = bool(enable)
        return self._enabled

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe now (video; e.g. before grabbing a snapshot)."""
        request = self._request_keyframe
        if request is not None and self.kind == "video":
            self.keyframe_requests += 1
            request(self.mid)

    @property
    def ended(self) -> bool:
        """True once the track was removed or its connection closed."""
        return self._ended

    @property
    def state(self) -> str:
        return "ended" if self._ended else "live"

    # -- reading (asyncio and blocking) ------------------------------------------------

    async def recv(self, timeout: float | None = None) -> Any:
        """Await the next decoded frame: a :class:`VideoFrame` or an :class:`AudioFrame`.

        Raises TimeoutError after ``timeout`` seconds and
        :class:`~hibiki.TrackEnded` once the track is gone.
        Video keeps only the latest few frames for a slow reader.
        """
        return await self._buffer.aget(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """Blocking form of :meth:`recv` for threads."""
        return self._buffer.get(timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        from .errors import TrackEnded

        while True:
            try:
                yield await self._buffer.aget()
            except TrackEnded:
                return

    # -- sinks -----------------------------------------------------------------------

    def _add_sink(self, sink: Any) -> None:
        from .sinks import AudioSink, VideoSink

        with self._cond:
            if isinstance(sink, VideoSink):
                self._video_sinks = (*self._video_sinks, sink)
            elif isinstance(sink, AudioSink):
                self._audio_sinks = (*self._audio_sinks, sink)
        if self._ended:
            sink._track_ended()

    def _remove_sink(self, sink: Any) -> None:
        with self._cond:
            self._video_sinks = tuple(s for s in self._video_sinks if s is not sink)
            self._audio_sinks = tuple(s for s in self._audio_sinks if s is not sink)

    # -- input from the connection (SDK loop) ------------------------------------------------

    def _push(self, event: Event) -> None:
        """Queue an encoded frame for the decoder. Called on the SDK loop."""
        self.frames_received += 1
        self.bytes_received += len(event.data or b"")
        with self._cond:
            if self._ended:
                return
            if len(self._input) >= self._input_max:
                # The decoder is far behind: start over from a keyframe rather
                # than decode a backlog nobody wants any more.
                self._input.clear()
                self._input.append(_RESET)
                logger.warning("[%s] %s track %s: decoder fell behind, dropping a backlog",
                               self.connection_id, self.kind, self.mid)
            self._input.append(event)
            self._cond.notify()

    def _end(self) -> None:
        """Stop decoding and end readers and sinks. Idempotent, any thread."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
            self._input.clear()
            self._input.append(_STOP)
            self._cond.notify()
            sinks: tuple[VideoSink | AudioSink, ...] = (*self._video_sinks, *self._audio_sinks)
        self._request_keyframe = None
        self._buffer.close()
        for sink in sinks:
            sink._track_ended()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the decoder thread to finish (after the track ended)."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- decoder worker -------------------------------------------------------------------

    def _ask_keyframe(self, state: dict[str, float]) -> None:
        now = time.monotonic()
        if now - state["last"] < _KEYFRAME_REQUEST_INTERVAL:
            return
        state["last"] = now
        request = self._request_keyframe
        if request is not None:
            self.keyframe_requests += 1
            try:
                request(self.mid)
            except Exception:
                logger.debug("request_keyframe failed", exc_info=True)

    def _next(self) -> Any:
        with self._cond:
            while not self._input:
                self._cond.wait()
            return self._input.popleft()

    def _run(self) -> None:
        try:
            if self.kind == "video":
                self._run_video()
            else:
                self._run_audio()
        except Exception:  # pragma: no cover - a bug; make it visible
            logger.exception("[%s] %s track %s decoder crashed", self.connection_id, self.kind, self.mid)

    def _run_video(self) -> None:
        from hibiki.media import VideoDecoder

        decoder: Any = None
        pli: dict[str, float] = {"last": 0.0}
        while True:
            item = self._next()
            if item is _STOP:
                return
            if item is _RESET:
                if decoder is not None:
                    decoder.expect_keyframe()
                self._ask_keyframe(pli)
                continue
            event = item
            codec = (event.codec or "VP8").upper()
            if decoder is None or decoder.codec != codec:
                try:
                    decoder = VideoDecoder(codec=codec)
                except (ValueError, RuntimeError) as exc:
                    logger.error("[%s] cannot decode %s video on mid %s: %s",
                                 self.connection_id, codec, self.mid, exc)
                    return
                self.codec = codec
            if event.contiguous is False:
                # Frames were lost: the decoder skips delta frames until a
                # keyframe, which we ask for right away.
                decoder.expect_keyframe()
            # The decoder drops delta frames while it waits for a keyframe and
            # never raises on corrupt input; needs_keyframe says when to ask.
            pictures = decoder.decode(event.data or b"", keyframe=event.keyframe)
            if decoder.needs_keyframe:
                self._ask_keyframe(pli)
            for picture in pictures:
                frame = VideoFrame(picture, int(event.rtp_time or 0), time.monotonic(), self.id)
                self._deliver_video(frame)

    def _deliver_video(self, frame: VideoFrame) -> None:
        self.frames_decoded += 1
        self.frame_width, self.frame_height = frame.width, frame.height
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
            logger.info("[%s] first video frame of %s (mid %s) %.0f ms after the track appeared",
                        self.connection_id, self.stream_id, self.mid,
                        (self.first_frame_at - self.created_at) * 1000)
        if not self._enabled:
            return
        self._buffer.put(frame)
        for sink in self._video_sinks:
            sink._deliver(frame)

    def _run_audio(self) -> None:
        from hibiki.media import AudioDecoder

        decoder: Any = None
        while True:
            item = self._next()
            if item is _STOP:
                return
            if item is _RESET:
                continue
            event = item
            codec = (event.codec or "OPUS").upper()
            self.codec = codec
            if decoder is None or decoder.codec != codec:
                try:
                    decoder = AudioDecoder(codec=codec, channels=2)
                except (ValueError, RuntimeError) as exc:
                    logger.error("[%s] cannot decode %s audio on mid %s: %s",
                                 self.connection_id, codec, self.mid, exc)
                    return
            pcm = decoder.decode(event.data or b"")  # empty on a corrupt packet
            if len(pcm) == 0:
                continue
            frame = AudioFrame(pcm, AUDIO_CLOCK_RATE, int(event.rtp_time or 0), time.monotonic())
            self.frames_decoded += 1
            if self.first_frame_at is None:
                self.first_frame_at = frame.received_at
            if not self._enabled:
                continue
            self._buffer.put(frame)
            for sink in self._audio_sinks:
                sink._deliver(frame)
