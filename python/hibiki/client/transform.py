"""Encoded-frame transforms: see, change, hold or drop each encoded frame (sora-sdk's API).

A transformer sits between the encoder and the packetizer of a sending track,
or between the depacketizer and the decoder of a received one, and hands each
encoded frame to ``on_transform``. Whatever the callback does, a frame goes
on only when it is given back with ``enqueue``: at once, later, or from
another thread. This is the hook for end-to-end encryption
(:mod:`hibiki.client.e2ee`), watermarks, or metadata riding along with frames::

    from hibiki.client.transform import VideoFrameTransformer

    def on_transform(frame):                       # on the transformer's own thread
        data = frame.get_data()                    # read-only uint8 view
        frame.set_data(np.append(data, np.frombuffer(b"tag", np.uint8)))
        transformer.enqueue(frame)                 # send it on (or decode it)

    transformer = VideoFrameTransformer(on_transform)
    conn = sdk.create_connection(urls, "sendonly", "room", video_source=camera,
                                 video_frame_transformer=transformer)  # sending
    track.set_frame_transformer(receiver)                              # receiving

Where a transformer goes (as in sora-sdk): a sending one is given to
``create_connection(audio_frame_transformer=..., video_frame_transformer=...)``
and applies to that connection only; a receiving one is set on the received
track with :meth:`~hibiki.MediaTrack.set_frame_transformer`. Hibiki also
offers :meth:`~hibiki.VideoSource.set_frame_transformer` on a source, which
applies to every connection the source is sent on (unless that connection
was given its own transformer).

Threads: each transformer has one worker thread of its own (started on the
first frame, gone after a few idle seconds) that calls ``on_transform``, so a
slow callback never stalls an encoder, a decoder or the SDK loop. Frames wait
for it in a bounded queue; when the queue is full a frame is dropped rather
than letting the delay grow. Per track, frames reach ``on_transform`` in the
order they were encoded or received.

Frames that are never enqueued are simply dropped. A frame enqueued after a
later frame of the same track was is dropped too (it is stale). Losing video
frames this way is handled like packet loss: the sending side holds delta
frames until the next keyframe (and asks the encoder for one); the receiving
side makes the decoder wait for a keyframe (and sends a PLI).

``start_short_circuiting()`` makes frames bypass ``on_transform`` from then
on (they still pass the worker thread, so their order is kept). An exception
in ``on_transform`` is logged and the frame is dropped unless it was already
enqueued; the transformer carries on.

Differences from sora-sdk: the callback runs on a Hibiki thread rather than
a libwebrtc worker; a frame must not be enqueued twice (the second time is
ignored with a warning, where libwebrtc would crash); ``set_data`` also takes
``bytes``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import Event

__all__ = [
    "AudioFrameTransformer",
    "FrameTransformer",
    "TransformableAudioFrame",
    "TransformableAudioFrameType",
    "TransformableFrame",
    "TransformableFrameDirection",
    "TransformableVideoFrame",
    "VideoFrameTransformer",
    "mime_type_of",
]

logger = logging.getLogger("hibiki.client")

# Frames waiting for on_transform, per transformer. Video: ~1 s at 30 fps;
# audio: ~1.3 s of 20 ms packets. Past that the callback is hopelessly slow
# and dropping beats an ever-growing delay.
_VIDEO_QUEUE = 32
_AUDIO_QUEUE = 64
# The worker thread exits after this long without frames (and restarts on the
# next one), so an idle transformer holds no thread and can be collected.
_IDLE_EXIT_S = 5.0
# How many on_transform exceptions are logged with a traceback before only
# every _ERROR_LOG_EVERY-th is.
_ERRORS_LOGGED_IN_FULL = 3
_ERROR_LOG_EVERY = 100

_NTP_UNIX_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 (NTP epoch) to 1970-01-01
_EMPTY_U32: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
_EMPTY_U32.flags.writeable = False
_EMPTY_I64: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
_EMPTY_I64.flags.writeable = False


class TransformableFrameDirection(enum.IntEnum):
    """Whether a frame is being sent or was received (sora-sdk's ``SoraTransformableFrameDirection``)."""

    UNKNOWN = 0
    RECEIVER = 1
    SENDER = 2


class TransformableAudioFrameType(enum.IntEnum):
    """What an audio frame holds (sora-sdk's ``SoraTransformableAudioFrameType``)."""

    EMPTY = 0
    SPEECH = 1
    CN = 2
    """Comfort noise: an Opus DTX packet (2 bytes or less), sent during silence."""


_AUDIO_MIME = {"OPUS": "audio/opus", "PCMU": "audio/PCMU", "PCMA": "audio/PCMA", "G722": "audio/G722"}


def mime_type_of(kind: str, codec: str) -> str:
    """The MIME type libwebrtc reports for a codec: ``"video/VP8"``, ``"audio/opus"``...

    >>> mime_type_of("audio", "OPUS"), mime_type_of("video", "VP8")
    ('audio/opus', 'video/VP8')
    """
    codec = codec.upper()
    if kind == "audio":
        return _AUDIO_MIME.get(codec, f"audio/{codec.lower()}")
    return f"video/{codec}"


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 9.1), or None for anything else.

    A keyframe starts with a 3-byte frame tag (bit 0 clear), the start code
    ``9d 01 2a`` and two little-endian 16-bit fields whose low 14 bits are
    the width and the height.
    """
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    return (data[6] | data[7] << 8) & 0x3FFF, (data[8] | data[9] << 8) & 0x3FFF


def _ntp_q32(unix_seconds: float) -> int:
    """A Unix time as an NTP timestamp in UQ32.32 (what libwebrtc's absolute capture time holds)."""
    return int((unix_seconds + _NTP_UNIX_OFFSET_S) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


# -- frames ------------------------------------------------------------------------------------


class TransformableFrame:
    """An encoded frame on its way through a transformer: payload plus RTP metadata.

    Applications get frames in ``on_transform``; constructing one by hand is
    only useful for testing a transform function (it cannot be enqueued).

    Attributes common to audio and video (sora-sdk's names):
    ``payload_type``, ``ssrc``, ``rtp_timestamp`` (settable), ``direction``,
    ``mine_type`` (sora-sdk's spelling; ``mime_type`` is the same).
    """

    # Frames are built by the SDK with _build (no __init__ call), so that the
    # sora-sdk compat subclasses, which cannot be constructed, share the code.
    _data: bytes
    _payload_type: int
    _ssrc: int
    _rtp_time: int
    _direction: TransformableFrameDirection
    _codec: str
    _route: _Route | None
    _seq: int
    _enqueued: bool

    def __init__(
        self,
        data: bytes | npt.NDArray[np.uint8],
        *,
        payload_type: int = 0,
        ssrc: int = 0,
        rtp_timestamp: int = 0,
        direction: TransformableFrameDirection = TransformableFrameDirection.UNKNOWN,
        codec: str = "",
        **metadata: Any,
    ) -> None:
        self._init(_as_bytes(data), payload_type=payload_type, ssrc=ssrc, rtp_time=rtp_timestamp,
                   direction=direction, codec=codec, metadata=metadata)

    @classmethod
    def _build(cls, data: bytes, *, payload_type: int, ssrc: int, rtp_time: int,
               direction: TransformableFrameDirection, codec: str, metadata: dict[str, Any]) -> Any:
        frame = object.__new__(cls)
        frame._init(data, payload_type=payload_type, ssrc=ssrc, rtp_time=rtp_time, direction=direction,
                    codec=codec, metadata=metadata)
        return frame

    def _init(self, data: bytes, *, payload_type: int, ssrc: int, rtp_time: int,
              direction: TransformableFrameDirection, codec: str, metadata: dict[str, Any]) -> None:
        self._data = data
        self._payload_type = int(payload_type)
        self._ssrc = int(ssrc)
        self._rtp_time = int(rtp_time)
        self._direction = TransformableFrameDirection(int(direction))
        self._codec = codec.upper()
        self._route = None
        self._seq = -1
        self._enqueued = False
        for name, value in metadata.items():
            object.__setattr__(self, f"_{name}", value)

    _kind = ""  # "audio" / "video" in the subclasses

    # -- payload ------------------------------------------------------------------------

    def get_data(self) -> npt.NDArray[np.uint8]:
        """The encoded payload as a read-only ``uint8`` array (a view, no copy).

        To change it, build a new array (``np.append``, ``data.copy()``...)
        and pass it to :meth:`set_data`.
        """
        return np.frombuffer(self._data, dtype=np.uint8)

    def set_data(self, arg: npt.NDArray[np.uint8] | bytes | bytearray | memoryview, /) -> None:
        """Replace the payload: a 1-D ``uint8`` array (copied), or ``bytes`` (a Hibiki extension).

        Raises:
            TypeError: not a 1-D uint8 array or a bytes-like object.
        """
        self._data = _as_bytes(arg)

    # -- metadata -----------------------------------------------------------------------

    @property
    def payload_type(self) -> int:
        """The RTP payload type of the frame's codec, as negotiated in the SDP."""
        return self._payload_type

    @property
    def ssrc(self) -> int:
        """The RTP stream's SSRC (0 while the engine does not report it)."""
        return self._ssrc

    @property
    def rtp_timestamp(self) -> int:
        """The 32-bit RTP timestamp (90 kHz video, 48 kHz Opus). Settable: the frame is sent with the new one."""
        return self._rtp_time & 0xFFFF_FFFF

    @rtp_timestamp.setter
    def rtp_timestamp(self, arg: int, /) -> None:
        value = int(arg)
        if not 0 <= value <= 0xFFFF_FFFF:
            raise ValueError(f"rtp_timestamp must be a 32-bit unsigned integer, got {value}")
        # The engine works with timestamps extended to 64 bits: pick the
        # extension of the new 32-bit value nearest to the frame's own.
        delta = (value - self._rtp_time) & 0xFFFF_FFFF
        if delta >= 0x8000_0000:
            delta -= 1 << 32
        self._rtp_time = max(0, self._rtp_time + delta)

    @property
    def rtp_time(self) -> int:
        """The RTP timestamp extended to 64 bits, as the rest of Hibiki uses it (Hibiki extension)."""
        return self._rtp_time

    @property
    def direction(self) -> TransformableFrameDirection:
        """``SENDER`` (from our encoder) or ``RECEIVER`` (from the network)."""
        return self._direction

    @property
    def mime_type(self) -> str:
        """The codec's MIME type, e.g. ``"video/VP8"`` or ``"audio/opus"``."""
        return mime_type_of(self._kind, self._codec) if self._codec else ""

    @property
    def mine_type(self) -> str:
        """Same as :attr:`mime_type`, under sora-sdk's spelling (``mine_type`` until sora-sdk 2026.1)."""
        return self.mime_type

    @property
    def codec(self) -> str:
        """The codec name as Hibiki spells it: ``"VP8"``, ``"OPUS"``... (Hibiki extension)."""
        return self._codec

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.mime_type} {self._direction.name} {len(self._data)} bytes "
                f"rtp_timestamp={self.rtp_timestamp}>")


class TransformableAudioFrame(TransformableFrame):
    """An encoded audio frame (one Opus packet) in ``on_transform``.

    Besides the common attributes: ``contributing_sources``,
    ``sequence_number`` (received frames: the RTP sequence number),
    ``absolute_capture_timestamp`` (NTP UQ32.32), ``type``, ``audio_level``
    (received frames: RFC 6464 level in -dBov, 0 loudest .. 127 silence) and
    ``receive_time`` (received frames: microseconds on the monotonic clock).
    Each is None where it is not known, as in sora-sdk.
    """

    _kind = "audio"

    @property
    def contributing_sources(self) -> npt.NDArray[np.uint32]:
        """CSRCs of the frame (always empty: Hibiki does not mix audio)."""
        return _EMPTY_U32

    @property
    def sequence_number(self) -> int | None:
        """The RTP sequence number of a received frame (None when sending or not known)."""
        return getattr(self, "_sequence_number", None)

    @property
    def absolute_capture_timestamp(self) -> int | None:
        """When the audio was captured, as an NTP timestamp in UQ32.32 (None when not known)."""
        return getattr(self, "_absolute_capture_timestamp", None)

    @property
    def type(self) -> TransformableAudioFrameType:
        """``SPEECH``, ``CN`` (an Opus DTX packet) or ``EMPTY``."""
        if not self._data:
            return TransformableAudioFrameType.EMPTY
        if self._codec == "OPUS" and len(self._data) <= 2:
            return TransformableAudioFrameType.CN
        return TransformableAudioFrameType.SPEECH

    @property
    def audio_level(self) -> int | None:
        """RFC 6464 audio level of a received frame in -dBov (0 loudest, 127 silence), when the sender sent it."""
        return getattr(self, "_audio_level", None)

    @property
    def receive_time(self) -> int | None:
        """When a received frame reached the SDK, in microseconds of ``time.monotonic()`` (None when sending)."""
        return getattr(self, "_receive_time", None)


class TransformableVideoFrame(TransformableFrame):
    """An encoded video frame in ``on_transform``.

    Besides the common attributes: ``is_key_frame``, ``frame_id`` and
    ``frame_dependencies`` (a delta frame depends on the frame before it:
    Hibiki sends single-layer streams), ``width`` and ``height`` (keyframes
    only, 0 otherwise, as in libwebrtc), ``spatial_index``,
    ``temporal_index`` and ``contributing_sources``.
    """

    _kind = "video"

    @property
    def is_key_frame(self) -> bool:
        """True when the frame decodes on its own."""
        return bool(getattr(self, "_is_key_frame", False))

    @property
    def frame_id(self) -> int | None:
        """A number that increases by one per frame of the stream (None when not known).

        Sending: counted per connection from 1. Receiving: the VP8 picture id
        (extended) when the engine reports it.
        """
        return getattr(self, "_frame_id", None)

    @property
    def frame_dependencies(self) -> npt.NDArray[np.int64]:
        """``frame_id`` s this frame references: empty for a keyframe, the previous frame otherwise."""
        frame_id = self.frame_id
        if frame_id is None or self.is_key_frame:
            return _EMPTY_I64
        deps = np.array([frame_id - 1], dtype=np.int64)
        deps.flags.writeable = False
        return deps

    @property
    def width(self) -> int:
        """Picture width of a keyframe (0 for delta frames and unknown sizes)."""
        return int(getattr(self, "_width", 0))

    @property
    def height(self) -> int:
        """Picture height of a keyframe (0 for delta frames and unknown sizes)."""
        return int(getattr(self, "_height", 0))

    @property
    def spatial_index(self) -> int:
        """Spatial layer of the frame (0: Hibiki sends one layer)."""
        return int(getattr(self, "_spatial_index", 0) or 0)

    @property
    def temporal_index(self) -> int:
        """Temporal layer of the frame (0 unless the sender uses temporal layers)."""
        return int(getattr(self, "_temporal_index", 0) or 0)

    @property
    def contributing_sources(self) -> npt.NDArray[np.uint32]:
        """CSRCs of the frame (always empty)."""
        return _EMPTY_U32


def _as_bytes(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, np.ndarray):
        if arg.dtype != np.uint8 or arg.ndim != 1:
            raise TypeError(f"set_data() takes a 1-D uint8 array, got {arg.dtype} with shape {arg.shape}")
        return arg.tobytes()
    raise TypeError(f"set_data() takes a 1-D uint8 numpy array, got {type(arg).__name__}")


# -- transformers ---------------------------------------------------------------------------------


class FrameTransformer:
    """Base of :class:`AudioFrameTransformer` and :class:`VideoFrameTransformer` (not constructible).

    Attributes (counters, Hibiki extensions): ``frames_in`` (frames given to
    the transformer), ``frames_transformed`` (``on_transform`` calls),
    ``frames_short_circuited``, ``frames_dropped`` (queue overflow) and
    ``errors`` (exceptions raised by ``on_transform``).
    """

    kind: ClassVar[Literal["audio", "video"]]
    _frame_type: ClassVar[type[TransformableFrame]]

    def __init__(self, on_transform: Callable[[Any], None] | None = None, *, queue_size: int | None = None) -> None:
        if type(self) is FrameTransformer:
            raise TypeError("FrameTransformer cannot be created; use AudioFrameTransformer or VideoFrameTransformer")
        self._on_transform: Callable[[Any], None] | None = on_transform
        self._short_circuit = False
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[TransformableFrame] = deque()
        default = _VIDEO_QUEUE if self.kind == "video" else _AUDIO_QUEUE
        self._queue_max = max(1, int(queue_size)) if queue_size is not None else default
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self.frames_in = 0
        self.frames_transformed = 0
        self.frames_short_circuited = 0
        self.frames_dropped = 0
        self.errors = 0

    # -- sora-sdk surface ------------------------------------------------------------------

    def enqueue(self, arg: TransformableFrame, /) -> None:
        """Send ``arg`` on: to the packetizer (sending) or the decoder (receiving).

        Call it from ``on_transform`` or later, from any thread, once per
        frame. A frame that is never enqueued is dropped.

        Raises:
            TypeError: ``arg`` is not a frame.
            ValueError: ``arg`` was not handed out by a transformer (made by hand).
        """
        if not isinstance(arg, TransformableFrame):
            raise TypeError(f"enqueue() takes a transformable frame, got {type(arg).__name__}")
        route = arg._route
        if route is None:
            raise ValueError("enqueue(): this frame did not come from on_transform, so it has nowhere to go")
        route._deliver(arg, self)

    def start_short_circuiting(self) -> None:
        """From now on frames bypass ``on_transform`` and go on unchanged (irreversible)."""
        self._short_circuit = True

    @property
    def on_transform(self) -> Callable[[Any], None] | None:
        """The callback given each frame (on the transformer's thread); it must :meth:`enqueue` it."""
        return self._on_transform

    @on_transform.setter
    def on_transform(self, arg: Callable[[Any], None] | None, /) -> None:
        self._on_transform = arg

    # -- Hibiki extensions -------------------------------------------------------------------

    @property
    def short_circuiting(self) -> bool:
        """True once :meth:`start_short_circuiting` was called."""
        return self._short_circuit

    @property
    def queued(self) -> int:
        """Frames waiting for ``on_transform`` right now."""
        return len(self._queue)

    def __repr__(self) -> str:
        mode = "short-circuiting" if self._short_circuit else "transforming"
        return f"<{type(self).__name__} {mode} in={self.frames_in} dropped={self.frames_dropped}>"

    # -- machinery --------------------------------------------------------------------------

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(msg, *args)

    def _submit(self, frame: TransformableFrame) -> None:
        """Queue a frame for the worker. Called on encoder/decoder threads; never blocks."""
        self.frames_in += 1
        with self._cond:
            if len(self._queue) >= self._queue_max:
                self.frames_dropped += 1
                overflow = True
            else:
                overflow = False
                self._queue.append(frame)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"hibiki-{self.kind}-transform",
                                                    daemon=True)
                    self._thread.start()
                self._cond.notify()
        if overflow and (self.frames_dropped == 1 or self.frames_dropped % _ERROR_LOG_EVERY == 0):
            logger.warning("%s: on_transform is too slow, %d frame(s) dropped so far (queue of %d full)",
                           type(self).__name__, self.frames_dropped, self._queue_max)

    def _run(self) -> None:
        try:
            self._work()
        finally:
            # A BaseException out of a callback ended the loop: the next
            # frame must find no thread and start one.
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if not self._cond.wait(_IDLE_EXIT_S) and not self._queue:
                        # Idle: let the thread go; cleared under this lock hold, so
                        # that the next _submit starts a new one.
                        self._thread = None
                        return
                frame = self._queue.popleft()
            route = frame._route
            if route is None or route.closed:
                continue  # its connection or track is gone
            callback = self._on_transform
            if self._short_circuit:
                self.frames_short_circuited += 1
                route._deliver(frame, self)
                continue
            if callback is None:
                # Dropping is the safe choice: a transformer may be there to encrypt.
                self._warn_once("no-callback", "%s has no on_transform: its frames are dropped",
                                type(self).__name__)
                continue
            self.frames_transformed += 1
            try:
                callback(frame)
            except Exception:
                self.errors += 1
                if self.errors <= _ERRORS_LOGGED_IN_FULL or self.errors % _ERROR_LOG_EVERY == 0:
                    logger.exception("%s.on_transform raised (%d so far); the frame is dropped unless it "
                                     "was enqueued", type(self).__name__, self.errors)


class AudioFrameTransformer(FrameTransformer):
    """Transformer of encoded audio (sora-sdk's ``SoraAudioFrameTransformer``).

    >>> t = AudioFrameTransformer()
    >>> t.on_transform = lambda frame: t.enqueue(frame)   # pass everything through
    >>> conn = sdk.create_connection(urls, "sendonly", "room", audio_source=mic,
    ...                              audio_frame_transformer=t)

    ``on_transform`` gets :class:`TransformableAudioFrame` s (one Opus packet
    each). It can also be given to the constructor, with ``queue_size``
    (frames waiting for the callback before new ones are dropped; default 64).
    """

    kind = "audio"
    _frame_type = TransformableAudioFrame


class VideoFrameTransformer(FrameTransformer):
    """Transformer of encoded video (sora-sdk's ``SoraVideoFrameTransformer``).

    >>> t = VideoFrameTransformer()
    >>> def flip(frame):
    ...     data = frame.get_data().copy()
    ...     data[-1] ^= 0xFF
    ...     frame.set_data(data)
    ...     t.enqueue(frame)
    >>> t.on_transform = flip
    >>> track.set_frame_transformer(t)     # a received video track

    ``on_transform`` gets :class:`TransformableVideoFrame` s. It can also be
    given to the constructor, with ``queue_size`` (default 32).
    """

    kind = "video"
    _frame_type = TransformableVideoFrame


def check_transformer(transformer: Any, kind: str, where: str) -> FrameTransformer | None:
    """``transformer`` if it is None or a transformer of ``kind``; TypeError otherwise."""
    if transformer is None:
        return None
    wanted = AudioFrameTransformer if kind == "audio" else VideoFrameTransformer
    if not isinstance(transformer, wanted):
        raise TypeError(f"{where} takes a {wanted.__name__} for {kind}, got {type(transformer).__name__}")
    return transformer


# -- routes: where a stream's frames go after the transformer ----------------------------------------


class _Route:
    """One stream (a connection's sending m-line, or a received track) through a transformer.

    Numbers the frames it hands to the transformer, and on ``enqueue`` passes
    them on in that order: a frame older than one already passed is dropped
    as stale, and a skipped number (a frame dropped by the callback or the
    queue) is reported to the output as a gap.
    """

    def __init__(self, transformer: FrameTransformer, kind: str, codec: str) -> None:
        self.transformer = transformer
        self.kind = kind
        self.codec = codec.upper()
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._last = -1
        self._closed = False
        self.frames_out = 0
        self.frames_stale = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Frames enqueued from now on are dropped."""
        self._closed = True

    def _hand_over(self, frame: TransformableFrame) -> None:
        frame._route = self
        frame._seq = next(self._counter)
        self.transformer._submit(frame)

    def _deliver(self, frame: TransformableFrame, transformer: FrameTransformer) -> None:
        # Held while the output runs, so that two threads enqueuing frames of
        # one stream cannot reorder them (the outputs are cheap and never block).
        with self._lock:
            if frame._enqueued:
                transformer._warn_once("twice", "%s.enqueue: a frame was enqueued twice; ignored",
                                       type(transformer).__name__)
                return
            frame._enqueued = True
            if self.closed:
                return
            if frame._seq <= self._last:
                self.frames_stale += 1
                logger.debug("%s transform: dropping a stale frame (#%d after #%d)", self.kind, frame._seq,
                             self._last)
                return
            gap = frame._seq != self._last + 1
            self._last = frame._seq
            self.frames_out += 1
            self._output(frame, gap)

    def _output(self, frame: TransformableFrame, gap: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _Sender(Protocol):
    """What a :class:`SendRoute` needs from a source (``hibiki.client.sources``)."""

    def _write(self, target: Any, data: bytes, rtp_time: int) -> bool: ...


class SendRoute(_Route):
    """Frames of one source on one connection: encoder -> transformer -> ``write_frame``.

    Video is gated like packet loss: after a gap or a refused write, delta
    frames are dropped until a keyframe gets through, and the source is
    asked for one (a receiver must never decode a delta frame whose
    reference it did not get).
    """

    def __init__(self, transformer: FrameTransformer, *, source: _Sender, target: Any,
                 payload_type: int | None) -> None:
        super().__init__(transformer, transformer.kind, target.codec)
        self._source = source
        self._target = target
        self._fallback_pt = payload_type or 0
        self._send_info: tuple[int, int] | None = None
        self._gate_closed = False
        self._frame_ids = itertools.count(1)

    def _info(self) -> tuple[int, int]:
        """(payload type, ssrc): from the engine once it says, else the SDP's payload type and 0."""
        info = self._send_info
        if info is not None:
            return info
        target = self._target
        send_info = getattr(target.engine, "send_info", None)
        if send_info is not None:
            try:
                pt, ssrc = send_info(target.handle, target.mid, target.codec)
                info = (int(pt) or self._fallback_pt, int(ssrc))
            except Exception as exc:  # not negotiated yet, or an older engine
                logger.debug("[%s] send_info(%s) failed: %s", target.label, target.mid, exc)
            else:
                if info[1]:
                    self._send_info = info  # final once the SSRC is known
                return info
        return (self._fallback_pt, 0)

    def submit(self, data: bytes, rtp_time: int, keyframe: bool, width: int = 0, height: int = 0) -> None:
        """Hand one encoded frame to the transformer. Called on the source's encoder thread."""
        if self.closed:
            return  # the connection left
        pt, ssrc = self._info()
        metadata: dict[str, Any]
        if self.kind == "video":
            size = vp8_keyframe_size(data) if keyframe and self.codec == "VP8" else None
            if size is None:
                size = (width, height) if keyframe else (0, 0)
            metadata = {"is_key_frame": bool(keyframe), "frame_id": next(self._frame_ids),
                        "width": size[0], "height": size[1]}
        else:
            metadata = {"absolute_capture_timestamp": _ntp_q32(time.time())}
        frame = self.transformer._frame_type._build(
            data, payload_type=pt, ssrc=ssrc, rtp_time=rtp_time, direction=TransformableFrameDirection.SENDER,
            codec=self.codec, metadata=metadata)
        self._hand_over(frame)

    def _output(self, frame: TransformableFrame, gap: bool) -> None:
        target = self._target
        if self.kind == "video":
            keyframe = bool(getattr(frame, "_is_key_frame", False))
            if gap:
                self._gate_closed = True
            if self._gate_closed and not keyframe:
                self._lost()
                return
        ok = self._source._write(target, frame._data, frame._rtp_time)
        if self.kind == "video":
            if ok and keyframe:
                self._gate_closed = False
            elif not ok:
                self._gate_closed = True
                self._lost()

    def _lost(self) -> None:
        # The encoder loop sees waiting_keyframe, stops feeding delta frames
        # and forces a keyframe (rate-limited by the source).
        self._target.waiting_keyframe = True
        want = getattr(self._source, "_want_keyframe", None)
        if want is not None:
            want(getattr(self._target, "rid", None))  # this simulcast layer's encoder only


class DecoderInput:
    """A received frame on its way to the decoder after its transform.

    Quacks like the engine's ``Event`` it came from: ``data``, ``rtp_time``
    and ``contiguous`` are the transformed ones, every other attribute
    (``codec``, ``keyframe``, ``capture_time_ms``...) is the event's.
    """

    __slots__ = ("_event", "contiguous", "data", "rtp_time")

    def __init__(self, event: Any, data: bytes, rtp_time: int, contiguous: bool) -> None:
        self._event = event
        self.data = data
        self.rtp_time = rtp_time
        self.contiguous = contiguous

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


class ReceiveRoute(_Route):
    """Frames of one received track: depacketizer -> transformer -> decoder.

    ``output`` queues the transformed frame for the track's decoder thread;
    ``alive`` says whether the track still exists.
    """

    def __init__(self, transformer: FrameTransformer, *,
                 output: Callable[[DecoderInput], None], alive: Callable[[], bool]) -> None:
        super().__init__(transformer, transformer.kind, "")
        self._output_fn = output
        self._alive = alive

    @property
    def closed(self) -> bool:
        return self._closed or not self._alive()

    def submit(self, event: Event) -> None:
        """Hand one received frame to the transformer. Called on the track's decoder thread."""
        codec = (event.codec or ("VP8" if self.kind == "video" else "OPUS")).upper()
        data = event.data or b""
        # The engine reports the payload type of every received frame.
        pt = getattr(event, "payload_type", None) or 0
        metadata: dict[str, Any] = {"event": event}
        if self.kind == "video":
            keyframe = bool(event.keyframe)
            size = vp8_keyframe_size(data) if keyframe and codec == "VP8" else None
            picture_id = getattr(event, "picture_id", None)
            metadata.update(is_key_frame=keyframe, frame_id=picture_id, width=size[0] if size else 0,
                            height=size[1] if size else 0,
                            spatial_index=getattr(event, "spatial_index", None),
                            temporal_index=getattr(event, "temporal_index", None))
        else:
            seq = getattr(event, "sequence_number", None)
            capture_ms = getattr(event, "capture_time_ms", None)
            metadata.update(
                sequence_number=None if seq is None else int(seq) & 0xFFFF,
                audio_level=getattr(event, "audio_level", None),
                absolute_capture_timestamp=None if capture_ms is None else _ntp_q32(capture_ms / 1000.0),
                receive_time=time.monotonic_ns() // 1000,
            )
        frame = self.transformer._frame_type._build(
            data, payload_type=pt, ssrc=getattr(event, "ssrc", None) or 0, rtp_time=int(event.rtp_time or 0),
            direction=TransformableFrameDirection.RECEIVER, codec=codec, metadata=metadata)
        self._hand_over(frame)

    def _output(self, frame: TransformableFrame, gap: bool) -> None:
        event = getattr(frame, "_event", None)
        contiguous = getattr(event, "contiguous", None) is not False and not gap
        self._output_fn(DecoderInput(event, frame._data, frame._rtp_time, contiguous))


class SendTransforms:
    """A source's transformers: its own default and each connection's, and their routes.

    ``hibiki.client.sources`` keeps one of these per source; the encoder
    thread asks :meth:`route` for each connection it writes to.
    """

    def __init__(self, source: _Sender, kind: Literal["audio", "video"]) -> None:
        # Weak: the source owns this object, and a cycle would keep the source
        # (and its encoders' native threads) alive until garbage collection.
        self._source = weakref.ref(source)
        self._kind = kind
        self._lock = threading.Lock()
        self.default: FrameTransformer | None = None
        # (handle, mid) -> what the connection said before attaching: its own
        # transformer (or None) and the codec's payload type in the SDP.
        self._expected: dict[tuple[str, str], tuple[FrameTransformer | None, int | None]] = {}
        # (handle, mid, simulcast rid) -> (target, the connection's own
        # transformer, SDP payload type): one route per simulcast layer.
        self._specs: dict[tuple[str, str, str | None], tuple[Any, FrameTransformer | None, int | None]] = {}
        self._routes: dict[tuple[str, str, str | None], SendRoute] = {}

    def route(self, target: Any) -> SendRoute | None:
        """The route of ``target`` (an attachment), or None when its frames are not transformed."""
        return self._routes.get((target.handle, target.mid, target.rid))

    def expect(self, handle: str, mid: str, transformer: FrameTransformer | None, payload_type: int | None) -> None:
        """Called by a connection just before it attaches the source on ``mid``.

        ``transformer``: the connection's own (``create_connection(..._frame_transformer=)``),
        or None for the source's; ``payload_type``: the codec's in the SDP, for
        the frames' metadata until the engine reports it.
        """
        with self._lock:
            self._expected[(handle, mid)] = (transformer, payload_type)

    def attach(self, target: Any) -> None:
        """A connection starts receiving the source (``target``: its attachment)."""
        key = (target.handle, target.mid, target.rid)
        with self._lock:
            # Routes of connections that left stay (closed) until now; see detach.
            for old in [k for k, r in self._routes.items() if r.closed and k not in self._specs]:
                del self._routes[old]
            # Kept for the other simulcast layers of the same m-line.
            transformer, payload_type = self._expected.get(key[:2], (None, None))
            self._specs[key] = (target, transformer, payload_type)
            self._rebuild_locked(key)

    def detach(self, handle: str) -> None:
        """A connection stopped receiving the source: its late frames are dropped.

        Its routes are closed but kept (until the next attach), so that an
        encoder thread still holding the connection in its list of targets
        finds a closed route, and drops the frame, rather than no route, and
        writes it untransformed.
        """
        with self._lock:
            for key in [k for k in self._expected if k[0] == handle]:
                del self._expected[key]
            for key in [k for k in self._specs if k[0] == handle]:
                del self._specs[key]
                route = self._routes.get(key)
                if route is not None:
                    route.close()

    def set_default(self, transformer: FrameTransformer | None) -> None:
        """The source's own transformer, for connections that were not given one."""
        with self._lock:
            self.default = transformer
            for key in list(self._specs):
                self._rebuild_locked(key)

    def _rebuild_locked(self, key: tuple[str, str, str | None]) -> None:
        target, own, payload_type = self._specs[key]
        transformer = own if own is not None else self.default
        old = self._routes.get(key)
        if old is not None and old.transformer is transformer and old._target is target:
            return
        if old is not None:
            old.close()
        source = self._source()
        if transformer is None or source is None:
            self._routes.pop(key, None)
            return
        self._routes[key] = SendRoute(transformer, source=source, target=target, payload_type=payload_type)
        if old is not None and self._kind == "video":
            # Frames of the old route still in flight are dropped: start clean.
            target.waiting_keyframe = True
