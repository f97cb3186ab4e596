"""Remote tracks: encoded frames from the engine in, decoded numpy frames out.

Each remote track owns a decoder worker thread. It takes its encoded frames
straight from the engine's bounded per-track queue (``_core.FrameQueue``,
waited on without the GIL), so frames never pass through the SDK's asyncio
loop: decoding never delays signaling or other tracks, one slow consumer
never stalls another track, and each frame costs one thread wake-up.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .buffers import FrameBuffer
from .transform import DecoderInput, ReceiveRoute, check_transformer

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import Event, FrameQueue

    from .sinks import AudioSinkBase, VideoSink
    from .transform import FrameTransformer

__all__ = ["AudioFrame", "MediaTrack", "VideoFrame"]

logger = logging.getLogger("hibiki.client")

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000
_KEYFRAME_REQUEST_INTERVAL = 0.3
# Encoded frames waiting for the decoder. Video: ~2 s at 30 fps; past that the
# decoder is hopelessly behind and we restart from a fresh keyframe instead.
_VIDEO_INPUT_QUEUE = 60
_AUDIO_INPUT_QUEUE = 100  # 2 s of 20 ms packets
# How the decoder thread takes frames from the engine's per-track queue:
# whatever has arrived, up to a batch, re-checking Python-side items at
# least once a second.
_FRAME_BATCH = 64
_FRAME_WAIT_S = 1.0
# Decoded frames kept for recv(): video keeps the latest few, audio ~0.5 s.
_VIDEO_RECV_BUFFER = 3
_AUDIO_RECV_BUFFER = 25


class VideoFrame:
    """One decoded picture (sora-sdk's ``SoraVideoFrame``).

    >>> frame = await track.recv()
    >>> bgr = frame.data()                   # uint8 [height, width, 3], converted on first use
    >>> y, u, v = frame.i420()               # the decoder's own planes, no copy, no conversion
    >>> frame.width, frame.height, frame.pixel_format, frame.rtp_time

    The picture stays in the decoder's format (I420 ``yuv420p`` from the
    software decoders, ``nv12`` from hardware ones) until :meth:`data` asks
    for BGR: that converts once (thread safe; every sink of the track shares
    the result). A consumer that only reads :meth:`planes` / :meth:`i420`
    (an ML model that wants YUV, a recorder that re-encodes) pays for no
    conversion at all, and :attr:`width` / :attr:`height` never convert.

    Lifetime: the plane arrays are read-only views of the decoded frame's
    buffers; they stay valid as long as they (or this frame) are referenced,
    and never change afterwards. Copy them (``np.array(y)``) to modify them,
    and copy what you keep for long when decoding in hardware (its surface
    pools are small).
    """

    __slots__ = ("_data", "_picture", "capture_time_ms", "received_at", "rtp_time", "track_id")

    def __init__(
        self,
        data: Any,
        rtp_time: int,
        received_at: float,
        track_id: str = "",
        capture_time_ms: float | None = None,
    ) -> None:
        """Wrap a decoded picture: a ``hibiki.media.video.DecodedPicture`` or a BGR array ``[h, w, 3]``."""
        # An array is taken as BGR as it is; anything else is a DecodedPicture,
        # converted on demand (tracks.py does not import PyAV to check).
        self._data: np.ndarray | None = data if isinstance(data, np.ndarray) else None
        self._picture: Any = None if isinstance(data, np.ndarray) else data
        self.rtp_time = rtp_time
        """Timestamp in the 90 kHz RTP clock, as the sender stamped the capture."""
        self.received_at = received_at
        """``time.monotonic()`` when the picture came out of the decoder."""
        self.track_id = track_id
        self.capture_time_ms = capture_time_ms
        """The sender's capture time, ms since the Unix epoch on the sender's clock
        (from its RTCP sender reports; None until the first one arrived). Audio
        frames carry the same clock: equal values were captured together."""

    @property
    def absolute_capture_timestamp_ms(self) -> int | None:
        """:attr:`capture_time_ms` rounded, sora-sdk's name on audio frames."""
        ms = self.capture_time_ms
        return None if ms is None else round(ms)

    def data(self) -> np.ndarray:
        """The picture as a BGR ``uint8`` array ``[height, width, 3]`` (converted at most once, then shared)."""
        data = self._data
        if data is None:
            # DecodedPicture.bgr() converts once under its own lock; storing
            # its (same) result here from several threads is harmless.
            data = self._data = self._picture.bgr()
        return data

    @property
    def pixel_format(self) -> str:
        """Layout of :meth:`planes`: ``"yuv420p"`` (I420), ``"nv12"``, ... or ``"bgr24"`` for a BGR-only frame."""
        return "bgr24" if self._picture is None else str(self._picture.pixel_format)

    def planes(self) -> tuple[np.ndarray, ...]:
        """The decoded planes as read-only numpy views, without copying or converting.

        I420: Y ``[h, w]``, U and V ``[h/2, w/2]``; NV12: Y ``[h, w]`` and
        UV ``[h/2, w/2, 2]``; 10-bit formats are uint16. Rows may be padded:
        see :attr:`strides`. A frame built from a BGR array has one plane,
        that array.
        """
        if self._picture is None:
            return (self.data(),)
        return tuple(self._picture.planes())

    def i420(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Y, U and V as read-only uint8 views, without copying (NV12's U and V as strided views).

        Raises:
            ValueError: not an 8-bit 4:2:0 picture (e.g. 10-bit, or a BGR-only frame).
        """
        if self._picture is None:
            raise ValueError("this frame holds BGR only; use data()")
        y, u, v = self._picture.i420()
        return y, u, v

    @property
    def strides(self) -> tuple[int, ...]:
        """Bytes from one row to the next in each of :meth:`planes`."""
        if self._picture is None:
            return (int(self.data().strides[0]),)
        return tuple(self._picture.strides)

    @property
    def timestamp(self) -> float:
        """Media time in seconds (``rtp_time / 90000``); differences are frame spacing."""
        return self.rtp_time / VIDEO_CLOCK_RATE

    @property
    def width(self) -> int:
        """Width in pixels (never converts)."""
        if self._picture is not None:
            return int(self._picture.width)
        return int(self.data().shape[1])

    @property
    def height(self) -> int:
        """Height in pixels (never converts)."""
        if self._picture is not None:
            return int(self._picture.height)
        return int(self.data().shape[0])

    def __repr__(self) -> str:
        return f"VideoFrame({self.width}x{self.height}, rtp_time={self.rtp_time})"


class AudioFrame:
    """A chunk of decoded audio (one Opus packet, usually 20 ms); sora-sdk's ``SoraAudioFrame``.

    >>> frame = await track.recv()
    >>> pcm = frame.data()                              # int16 [samples, channels]
    >>> frame.samples_per_channel, frame.num_channels, frame.sample_rate_hz
    (960, 1, 48000)
    >>> pickle.loads(pickle.dumps(frame))              # picklable, e.g. for a process pool

    ``rtp_time`` stays in the stream's 48 kHz RTP clock even when a sink
    resampled the samples, so frames of one stream line up whatever their rate.
    """

    __slots__ = ("_capture_time_ms", "_data", "received_at", "rtp_time", "sample_rate", "track_id")

    def __init__(
        self,
        data: np.ndarray,
        sample_rate: int,
        rtp_time: int,
        received_at: float,
        capture_time_ms: float | None = None,
        track_id: str = "",
    ) -> None:
        """Wrap int16 ``data`` ``[samples, channels]`` at ``sample_rate`` Hz.

        ``capture_time_ms`` is the sender's capture time (ms since the Unix
        epoch, the sender's clock) when the stream carries it, else None.
        """
        self._data = data
        self.sample_rate = int(sample_rate)
        """Samples per second per channel."""
        self.rtp_time = rtp_time
        """Timestamp of the first sample in the 48 kHz RTP clock."""
        self.received_at = received_at
        """``time.monotonic()`` when the audio came out of the decoder."""
        self._capture_time_ms = capture_time_ms
        self.track_id = track_id

    def data(self) -> np.ndarray:
        """The samples, ``int16 [samples_per_channel, num_channels]`` (not a copy)."""
        return self._data

    @property
    def channels(self) -> int:
        """Channel count (same as :attr:`num_channels`)."""
        return int(self._data.shape[1])

    @property
    def samples_per_channel(self) -> int:
        """Samples per channel in this frame."""
        return int(self._data.shape[0])

    @property
    def num_channels(self) -> int:
        """Channel count (sora-sdk's name)."""
        return self.channels

    @property
    def sample_rate_hz(self) -> int:
        """Sample rate in Hz (sora-sdk's name)."""
        return self.sample_rate

    @property
    def absolute_capture_timestamp_ms(self) -> int | None:
        """The sender's capture time in ms since the Unix epoch (sender's clock), or None if unknown."""
        ms = self._capture_time_ms
        return None if ms is None else round(ms)

    @property
    def timestamp(self) -> float:
        """Media time in seconds (``rtp_time / 48000``)."""
        return self.rtp_time / AUDIO_CLOCK_RATE

    def __reduce__(self) -> tuple[type[AudioFrame], tuple[Any, ...]]:
        # __slots__ classes need this (or __getstate__) to pickle; the numpy
        # array pickles itself, so a frame costs little more than its samples.
        return (AudioFrame, (self._data, self.sample_rate, self.rtp_time, self.received_at,
                             self._capture_time_ms, self.track_id))

    def __repr__(self) -> str:
        return f"AudioFrame({self.samples_per_channel}x{self.channels} @ {self.sample_rate} Hz)"


_STOP = object()
_RESET = object()
# How long set_frame_transformer waits for the decoder thread to take the new
# transformer in (it is busy for one decode, or for a slow sink callback).
_SET_TRANSFORMER_WAIT_S = 2.0


class _SetRoute:
    """Queued by set_frame_transformer: the decoder thread switches transformers between two frames."""

    __slots__ = ("done", "route")

    def __init__(self, route: ReceiveRoute | None) -> None:
        self.route = route
        self.done = threading.Event()


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
        request_simulcast_rid: Callable[..., Awaitable[None]] | None = None,
        video_codec_preference: Any = None,
        frames: FrameQueue | None = None,
    ) -> None:
        self.kind: Literal["audio", "video"] = kind
        # hibiki.media.codecs.CodecPreference (or None: software): which
        # implementation decodes each codec.
        self._video_preference = video_codec_preference
        self.mid = mid
        self.stream_id = stream_id
        self.id = track_id
        self.connection_id = connection_id
        """The *receiving* connection's id (ours)."""
        self._request_keyframe: Callable[[str], None] | None = request_keyframe
        self._request_simulcast_rid = request_simulcast_rid
        self.simulcast_rid: str | None = None
        """Video from a simulcast sender: the layer the server forwards now (``r0``..``r2``),
        from its ``simulcast.switched`` notifies; None before the first or without simulcast."""
        self._enabled = True
        self._ended = False
        self._cond = threading.Condition()
        self._input: deque[Any] = deque()
        self._input_max = _VIDEO_INPUT_QUEUE if kind == "video" else _AUDIO_INPUT_QUEUE
        # The engine's queue of this track's frames (connections route them
        # per track), which the decoder thread blocks on; None when frames
        # come through _push from the SDK loop instead.
        self._frames = frames
        self._batch: deque[Any] = deque()  # taken from _frames, decoder thread only
        self._buffer: FrameBuffer[Any] = FrameBuffer(
            _VIDEO_RECV_BUFFER if kind == "video" else _AUDIO_RECV_BUFFER, what=f"{kind} frame"
        )
        self._video_sinks: tuple[VideoSink, ...] = ()
        self._audio_sinks: tuple[AudioSinkBase, ...] = ()
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
        self.decode_errors = 0
        """Video: received frames the decoder refused (corrupt, or missing their references)."""
        self.keyframe_requests = 0
        self.first_frame_at: float | None = None
        """``time.monotonic()`` of the first decoded frame (None until then)."""
        self.created_at = time.monotonic()
        # Encoded-frame transform (set_frame_transformer).
        self._recv_route: ReceiveRoute | None = None
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

    def set_frame_transformer(self, transformer: FrameTransformer | None, /) -> None:
        """Pass received encoded frames through ``transformer`` before decoding (sora-sdk's name).

        A video track takes a :class:`~hibiki.client.transform.VideoFrameTransformer`,
        an audio track an :class:`~hibiki.client.transform.AudioFrameTransformer`;
        ``None`` removes it (a Hibiki extension). Set it in ``on_track`` to
        catch the first frames::

            def on_track(track):
                if track.kind == "video":
                    track.set_frame_transformer(cryptor.receiver("video"))

        Changing it on a live video track makes the decoder restart at the
        next keyframe (one is requested), so no picture is decoded from a mix
        of frames that went through different transforms.
        """
        transformer = check_transformer(transformer, self.kind, "MediaTrack.set_frame_transformer")
        route = None if transformer is None else ReceiveRoute(
            transformer, output=self._push_transformed,
            alive=lambda: not self._ended)
        # The switch happens on the decoder thread, ahead of the frames queued
        # now, and this waits for it: once it returns, no frame decoded without
        # the transformer can reach a sink attached afterwards (e.g. in the same
        # on_track), even one that was being decoded at this very moment.
        switch = _SetRoute(route)
        with self._cond:
            inline = self._ended or threading.current_thread() is self._thread or not self._thread.is_alive()
            if not inline:
                self._input.appendleft(switch)
                self._signal()
        if inline:
            self._apply_route(switch)
            return
        deadline = time.monotonic() + _SET_TRANSFORMER_WAIT_S
        while not switch.done.wait(0.05):
            with self._cond:
                # The track ended, or a backlog flush took the marker out of
                # the queue: switch from here rather than not at all.
                lost = self._ended or switch not in self._input
            if lost or time.monotonic() > deadline:
                if not lost:
                    logger.warning("[%s] %s track %s: the decoder thread took over %.0f s to take the new "
                                   "frame transformer (a slow sink callback?)", self.connection_id, self.kind,
                                   self.mid, _SET_TRANSFORMER_WAIT_S)
                self._apply_route(switch)
                return

    def _apply_route(self, switch: _SetRoute) -> None:
        with self._cond:
            if switch.done.is_set():
                return  # applied already (by the decoder thread or by the waiter)
            old = self._recv_route
            if old is not None:
                old.close()
            self._recv_route = switch.route
            if self.kind == "video" and self.frames_received and not self._ended:
                # The decoder restarts at a keyframe: no picture mixes frames
                # that went through different transforms.
                self._input.appendleft(_RESET)
                self._signal()
            switch.done.set()

    @property
    def frame_transformer(self) -> FrameTransformer | None:
        """The transformer set with :meth:`set_frame_transformer`, or None."""
        route = self._recv_route
        return None if route is None else route.transformer

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe now (video; e.g. before grabbing a snapshot)."""
        request = self._request_keyframe
        if request is not None and self.kind == "video":
            self.keyframe_requests += 1
            request(self.mid)

    def request_simulcast_rid(self, rid: str, *, timeout: float | None = 5.0) -> Awaitable[None]:
        """Receive simulcast layer ``rid`` (``r0`` lowest .. ``r2`` highest, ``none``, ``auto``) of this track.

        For video from a simulcast sender; the quality changes at that
        layer's next keyframe (see :attr:`simulcast_rid` and
        :class:`~hibiki.events.SimulcastSwitched`). Same as
        ``conn.request_simulcast_rid(rid, sender_connection_id=track.stream_id)``:
        it needs ``data_channel_signaling=True``. Blocks in a plain thread;
        in a coroutine, ``await track.request_simulcast_rid("r0")``.
        """
        request = self._request_simulcast_rid
        if self.kind != "video" or request is None:
            raise ValueError("only video tracks have simulcast layers")
        return request(rid, self.stream_id, timeout=timeout)

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
        from .sinks import AudioSinkBase, VideoSink

        with self._cond:
            if isinstance(sink, VideoSink):
                self._video_sinks = (*self._video_sinks, sink)
            elif isinstance(sink, AudioSinkBase):  # AudioSink, AudioStreamSink
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
        self._enqueue(event)

    def _enqueue(self, item: Any) -> None:
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
            self._input.append(item)
            self._signal()

    def _signal(self) -> None:
        """Wake the decoder thread for a new item in ``_input`` (call with ``_cond`` held)."""
        self._cond.notify()
        if self._frames is not None:
            self._frames.wake()  # it may be blocked on the engine's queue instead

    def _end(self) -> None:
        """Stop decoding and end readers and sinks. Idempotent, any thread."""
        with self._cond:
            if self._ended:
                return
            self._ended = True
            self._input.clear()
            self._input.append(_STOP)
            self._signal()
            frames = self._frames
            if frames is not None:
                frames.close()  # the engine stops queueing our frames
            sinks: tuple[VideoSink | AudioSinkBase, ...] = (*self._video_sinks, *self._audio_sinks)
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

    def _push_transformed(self, item: DecoderInput) -> None:
        """Queue a frame back from the transformer (``enqueue``, any thread) for the decoder."""
        self._enqueue(item)

    def _transform_input(self, item: Any) -> Any:
        """The frame to decode now, or None when it went to the frame transformer.

        Frames from the engine go to the transformer when one is set; what it
        enqueues comes back through :meth:`_push_transformed` as a
        :class:`~hibiki.client.transform.DecoderInput`, decoded as it is.
        """
        if isinstance(item, DecoderInput):
            return item
        if isinstance(item, _SetRoute):
            self._apply_route(item)
            return None
        route = self._recv_route
        if route is None:
            return item
        route.submit(item)
        return None

    def _next(self) -> Any:
        """The decoder thread's next item: Python-side ones (stop, reset,
        transformer output) first, then the engine's frames in order."""
        while True:
            with self._cond:
                if self._input:
                    return self._input.popleft()
                if self._batch:
                    return self._batch.popleft()
                frames = self._frames
                if frames is None:
                    # Frames come through _push, or the engine's queue closed
                    # (track gone): wait for Python-side items (_end's stop).
                    self._cond.wait()
                    continue
            # A wake() from _signal between the check above and this wait is
            # kept by the queue, so no item waits for the timeout.
            events, overflowed, closed = frames.wait(_FRAME_WAIT_S, _FRAME_BATCH)
            if closed:
                with self._cond:
                    self._frames = None  # nothing more will come from it
            if overflowed:
                # The decoder is far behind: the engine dropped the backlog;
                # restart at a keyframe.
                logger.warning("[%s] %s track %s: decoder fell behind, dropping a backlog",
                               self.connection_id, self.kind, self.mid)
                self._batch.append(_RESET)
            if events:
                self.frames_received += len(events)
                self.bytes_received += sum(len(e.data or b"") for e in events)
                self._batch.extend(events)

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
            event = self._transform_input(item)
            if event is None:
                continue  # in the frame transformer; back later as a DecoderInput
            codec = (event.codec or "VP8").upper()
            if decoder is None or decoder.codec != codec:
                try:
                    decoder = VideoDecoder(codec=codec, implementation=(
                        None if self._video_preference is None else self._video_preference.decoder(codec)))
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
            errors = decoder.errors
            pictures = decoder.decode_pictures(event.data or b"", keyframe=event.keyframe)
            self.decode_errors += decoder.errors - errors
            if decoder.needs_keyframe:
                self._ask_keyframe(pli)
            for picture in pictures:
                frame = VideoFrame(picture, int(event.rtp_time or 0), time.monotonic(), self.id,
                                   getattr(event, "capture_time_ms", None))
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
            event = self._transform_input(item)
            if event is None:
                continue  # in the frame transformer; back later as a DecoderInput
            codec = (event.codec or "OPUS").upper()
            self.codec = codec
            if decoder is None or decoder.codec != codec:
                try:
                    decoder = AudioDecoder(codec=codec)  # channels as the stream has them
                except (ValueError, RuntimeError) as exc:
                    logger.error("[%s] cannot decode %s audio on mid %s: %s",
                                 self.connection_id, codec, self.mid, exc)
                    return
            # Empty on a corrupt packet. A gap in RTP time (loss, the sender's
            # DTX) comes back concealed ahead of the packet: the frame then
            # starts at decoder.start_rtp_time, before event.rtp_time.
            pcm = decoder.decode(event.data or b"", rtp_time=event.rtp_time)
            if len(pcm) == 0:
                continue
            rtp_time = int(event.rtp_time or 0)
            start = decoder.start_rtp_time if decoder.start_rtp_time is not None else rtp_time
            capture_ms = getattr(event, "capture_time_ms", None)
            if capture_ms is not None:
                capture_ms -= (rtp_time - start) * 1000 / AUDIO_CLOCK_RATE
            frame = AudioFrame(pcm, AUDIO_CLOCK_RATE, start, time.monotonic(), capture_ms, self.id)
            self.frames_decoded += 1
            if self.first_frame_at is None:
                self.first_frame_at = frame.received_at
            if not self._enabled:
                continue
            self._buffer.put(frame)
            for sink in self._audio_sinks:
                sink._deliver(frame)
