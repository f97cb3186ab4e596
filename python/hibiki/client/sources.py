"""Local media sources: numpy in, encoded frames out to every attached connection.

A source is fed from the user's thread (``on_data`` / ``on_captured``) and
encodes on a worker thread of its own, so neither the user's capture loop, nor
the SDK loop, nor the engine thread ever waits for a codec. The worker hands
each encoded frame to ``ClientEngine.write_frame`` (cheap, non-blocking,
callable from any thread) once per connection the source is attached to: one
encode, many connections.

Queues are small and bounded, with different policies because the media
differ: video drops the *oldest* waiting picture when the encoder falls behind
(showing the newest picture late is worse than skipping one), audio never
drops (a gap is audible) and instead makes ``on_data`` wait when the queue is
full, which paces a producer that runs ahead of real time.

The worker thread runs only while the source is attached to at least one
connected connection; frames given to an unattached source are discarded
without being encoded.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _core
from .playout import PacketClock, PlayoutQueue
from .transform import SendTransforms, check_transformer

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import ClientEngine

    from .transform import FrameTransformer

__all__ = ["AudioSource", "VideoSource"]

logger = logging.getLogger("hibiki.client")

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000
DEFAULT_VIDEO_BITRATE = 1_500_000
DEFAULT_AUDIO_BITRATE = 64_000
# When a connection is waiting for a keyframe, do not force one more often than
# this: every forced keyframe is many times the size of a delta frame.
_MIN_FORCED_KEYFRAME_INTERVAL = 0.25
# Capture timestamps further back than this are taken to be on another clock.
_MAX_CAPTURE_AGE = 5.0
# Never ask an encoder for less than this, whatever the estimate says.
_MIN_VIDEO_BITRATE = 50_000
# A played-out audio source sends a packet's worth of PCM this often (ms):
# Opus's usual packet, so each tick makes one packet at the default ptime.
_PACKET_MS = 20


@dataclass
class _Attachment:
    """Where a source's frames go: one m-line of one connection."""

    engine: ClientEngine
    handle: str
    mid: str
    codec: str
    label: str  # connection id, for logs
    bitrate: int | None = None
    rid: str | None = None
    """Video only: the simulcast layer this attachment encodes (None: no simulcast)."""
    scale: float = 1.0
    """Video only: the picture's width and height are divided by this (simulcast layers)."""
    active: bool = True
    """Video only: False pauses this simulcast layer (nothing is encoded or sent for it)."""
    audio_params: dict[str, Any] | None = None
    """Audio only: sora-sdk's ``audio_opus_params`` (stereo, FEC, DTX, ptime...) for this m-line."""
    video_params: dict[str, Any] | None = None
    """Video only: sora-sdk's parameters for this m-line's codec (``video_h264_params``...)."""
    implementation: Any = None
    """Video only: the :class:`~hibiki.media.codecs.Implementation` that encodes (None: software)."""
    degradation: Any = None
    """Video only: sora-sdk's ``degradation_preference`` (None: balanced)."""
    estimate: int | None = None
    """Video only: what the connection's bandwidth estimate leaves for video, bit/s
    (None until the engine has an estimate)."""
    encoder_key: tuple[Any, ...] = ()
    """What decides its encoder (set by the source at attach): attachments with
    equal keys share one encoder."""
    waiting_keyframe: bool = True
    """Video only: nothing may be sent before a keyframe got through."""
    refused: int = 0
    frames_sent: int = 0
    """Encoded frames the engine accepted for this m-line (for ``get_stats``)."""
    bytes_sent: int = 0
    """Payload bytes of those frames (before RTP packetization)."""


class _SourceBase:
    kind: str = ""

    def __init__(self) -> None:
        self.id = str(uuid.uuid4())
        self._lock = threading.Lock()
        # By (connection handle, mid, simulcast rid).
        self._attachments: dict[tuple[str, str, str | None], _Attachment] = {}
        self._thread: threading.Thread | None = None
        self._enabled = True
        self.frames_in = 0
        """Frames (or audio chunks) given to the source."""
        self.frames_encoded = 0
        """Encoded frames (or Opus packets) produced."""
        self.frames_dropped = 0
        """Frames discarded: not attached, queue overflow (video), or disabled."""
        # Encoded-frame transforms, per attachment (see hibiki.client.transform).
        self._transforms = SendTransforms(self, "video" if self.kind == "video" else "audio")

    # -- sora-sdk style track surface ---------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False while muted (video sends nothing, audio sends silence)."""
        return self._enabled

    def set_enabled(self, enable: bool) -> bool:
        """Mute (False) or unmute (True). Returns the new state, like sora-sdk."""
        self._enabled = bool(enable)
        return self._enabled

    def set_frame_transformer(self, transformer: FrameTransformer | None, /) -> None:
        """Pass this source's encoded frames through ``transformer`` on every connection (Hibiki extension).

        sora-sdk attaches a sending transformer per connection, with
        ``create_connection(audio_frame_transformer=..., video_frame_transformer=...)``;
        that works here too and wins over this one. ``None`` removes it.
        Set it before connecting: frames already sent went out as they were.
        A video source needs a :class:`~hibiki.client.transform.VideoFrameTransformer`,
        an audio source an :class:`~hibiki.client.transform.AudioFrameTransformer`::

            camera.set_frame_transformer(FrameCryptor(key).sender("video"))
        """
        self._transforms.set_default(
            check_transformer(transformer, self.kind, f"{type(self).__name__}.set_frame_transformer"))

    @property
    def frame_transformer(self) -> FrameTransformer | None:
        """The transformer set with :meth:`set_frame_transformer` (None: none)."""
        return self._transforms.default

    @property
    def attached(self) -> bool:
        """True while at least one connection receives this source."""
        return bool(self._attachments)

    def send_counters(self) -> list[dict[str, Any]]:
        """Per attached connection: what was sent, for ``get_stats``-style reports.

        One dict per attachment with ``connection_id`` (the connection's id
        once connected), ``mid``, ``rid`` (the simulcast layer, or None),
        ``scale`` (its picture divisor), ``codec``, ``frames_sent`` and ``bytes_sent``
        (encoded payload bytes, before RTP). Counters restart when a
        connection attaches again.
        """
        return [
            {"connection_id": a.label, "mid": a.mid, "rid": a.rid, "scale": a.scale, "codec": a.codec,
             "frames_sent": a.frames_sent, "bytes_sent": a.bytes_sent}
            for a in self._targets()
        ]

    # -- attachment (called by Connection) ----------------------------------------------

    def _attach(self, attachment: _Attachment) -> None:
        # Worked out once here, not per frame on the encoder thread.
        attachment.encoder_key = self._encoder_key(attachment)
        # Before any frame can flow: the connection's own transformer, if it
        # gave one (Connection calls _transforms.expect first), or the source's.
        self._transforms.attach(attachment)
        with self._lock:
            self._attachments[(attachment.handle, attachment.mid, attachment.rid)] = attachment
            self._on_attach_locked(attachment)
            # A worker that decided to exit clears _thread under this lock, so
            # "is there a worker?" cannot race with its exit.
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"hibiki-{self.kind}-source", daemon=True
                )
                self._thread.start()
        logger.debug("[%s] %s source %s attached to mid %s (%s)", attachment.label, self.kind,
                     self.id[:8], attachment.mid, attachment.codec)

    def _detach(self, handle: str) -> None:
        self._transforms.detach(handle)
        with self._lock:
            for key in [k for k in self._attachments if k[0] == handle]:
                del self._attachments[key]
            if not self._attachments and self._thread is not None:
                self._stop_locked()

    def _targets(self) -> list[_Attachment]:
        with self._lock:
            return list(self._attachments.values())

    def _encoder_key(self, target: _Attachment) -> tuple[Any, ...]:  # pragma: no cover
        raise NotImplementedError

    def _on_attach_locked(self, attachment: _Attachment) -> None:  # pragma: no cover
        pass

    def _stop_locked(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _run(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _worker_exited(self) -> None:
        with self._lock:
            if self._thread is threading.current_thread():
                self._thread = None

    def _capture_time(self, rtp_time: int) -> float | None:
        """The monotonic time at which the frame stamped ``rtp_time`` was captured, if known."""
        return None

    def _write(self, target: _Attachment, data: bytes, rtp_time: int, captured: float | None = None,
               audio_level: int | None = None) -> bool:
        if captured is None:
            captured = self._capture_time(rtp_time)
        # The engine stamps the frame's RTCP wall clock with its capture
        # instant (A/V sync at the receivers); a timestamp from some other
        # clock would give nonsense, so only plausible ages are passed.
        age = time.monotonic() - captured if captured is not None else None
        if age is not None and not 0.0 <= age < _MAX_CAPTURE_AGE:
            age = None
        try:
            ok = target.engine.write_frame(target.handle, target.mid, target.codec, data, rtp_time, age, target.rid,
                                           audio_level)
        except Exception as exc:
            # The connection is closing or gone; the Connection will detach us.
            logger.debug("[%s] write_frame failed on mid %s: %s", target.label, target.mid, exc)
            return False
        if not ok:
            target.refused += 1
        else:
            target.frames_sent += 1
            target.bytes_sent += len(data)
        return bool(ok)


class VideoSource(_SourceBase):
    """A video track fed with BGR pictures (sora-sdk's ``SoraVideoSource``).

    >>> source = hibiki.Hibiki().create_video_source()
    >>> conn = sora.create_connection(urls, role="sendonly", channel_id="room", video_source=source)
    >>> conn.connect()
    >>> source.on_captured(bgr_frame)          # uint8 [height, width, 3], any thread

    Pictures are stamped with their capture time (``timestamp`` in seconds, a
    monotonic clock; ``time.monotonic()`` at the call when omitted) and encoded
    in the background. Any resolution works and may change between calls.
    """

    kind = "video"

    def __init__(self, *, queue_size: int = 2, framerate: int = 30) -> None:
        super().__init__()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[tuple[np.ndarray, int]] = deque(maxlen=max(1, queue_size))
        self._framerate = framerate
        self._stop = False
        self._t0: float | None = None
        self._last_rtp = -1
        # Keyframes to force on the next picture, by simulcast rid (None: every encoder).
        self._forced: set[str | None] = set()
        self._last_forced: dict[str | None, float] = {}
        self.frame_width: int | None = None
        """Width of the last picture given to :meth:`on_captured` (None before the first)."""
        self.frame_height: int | None = None
        """Height of the last picture given to :meth:`on_captured`."""

    def on_captured(self, ndarray: np.ndarray, timestamp: float | None = None) -> None:
        """Queue one picture for encoding.

        Args:
            ndarray: ``uint8`` array of shape ``[height, width, 3]`` in BGR
                order (OpenCV's layout). It is copied, so the caller may reuse it.
            timestamp: capture time in seconds on a monotonic clock (e.g.
                ``time.monotonic()`` when the camera delivered the frame). It
                sets the RTP timestamp, so frame spacing is preserved end to end.
        """
        frame = np.asarray(ndarray)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"on_captured expects uint8 [height, width, 3] BGR, got {frame.dtype} {frame.shape}"
            )
        if frame.shape[0] < 2 or frame.shape[1] < 2 or frame.shape[0] % 2 or frame.shape[1] % 2:
            raise ValueError(f"width and height must be even and >= 2, got {frame.shape[1]}x{frame.shape[0]}")
        self.frames_in += 1
        self.frame_height, self.frame_width = int(frame.shape[0]), int(frame.shape[1])
        if not self._attachments or not self._enabled:
            self.frames_dropped += 1
            return
        ts = time.monotonic() if timestamp is None else float(timestamp)
        with self._cond:
            if self._t0 is None:
                self._t0 = ts
            rtp = round((ts - self._t0) * VIDEO_CLOCK_RATE)
            # RTP time must increase; a caller's clock hiccup must not break that.
            if rtp <= self._last_rtp:
                rtp = self._last_rtp + 1
            self._last_rtp = rtp
            if len(self._queue) == self._queue.maxlen:
                self.frames_dropped += 1  # the oldest waiting picture goes
            self._queue.append((np.array(frame, dtype=np.uint8, order="C", copy=True), rtp))
            self._cond.notify()

    def request_keyframe(self, rid: str | None = None) -> None:
        """Make the next encoded picture a keyframe (a receiver asked for one).

        ``rid``: only that simulcast layer's (None: every encoder's).
        """
        self._forced.add(rid)

    def _capture_time(self, rtp_time: int) -> float | None:
        # RTP time is the capture time since the first picture (on_captured).
        t0 = self._t0
        return None if t0 is None else t0 + rtp_time / VIDEO_CLOCK_RATE

    @staticmethod
    def _target_bitrate(group: list[_Attachment]) -> int:
        """What to encode at for the connections in ``group``: the configured rate,
        lowered to what the tightest bandwidth estimate leaves for video."""
        configured = next((t.bitrate for t in group if t.bitrate), None) or DEFAULT_VIDEO_BITRATE
        estimates = [t.estimate for t in group if t.estimate is not None]
        if not estimates:
            return configured
        return max(_MIN_VIDEO_BITRATE, min(configured, min(estimates)))

    def _encoder_key(self, target: _Attachment) -> tuple[Any, ...]:
        """Connections that agree on codec, implementation, codec parameters and
        degradation preference share one encoder."""
        params = repr(sorted((target.video_params or {}).items()))
        return (target.codec, target.implementation, params, target.degradation, target.scale)

    def _on_attach_locked(self, attachment: _Attachment) -> None:
        # A new receiver must start with a keyframe.
        self._forced.add(None)
        self._stop = False

    def _stop_locked(self) -> None:
        self._stop = True
        self._queue.clear()
        self._cond.notify_all()

    def _run(self) -> None:
        from hibiki.media import VideoEncoder  # imported here: PyAV is heavy
        from hibiki.media.adaptation import VideoAdapter

        encoders: dict[tuple[Any, ...], Any] = {}
        adapters: dict[tuple[Any, ...], VideoAdapter] = {}
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        self._thread = None
                        return
                    bgr, rtp = self._queue.popleft()
                    targets = [t for t in self._attachments.values() if t.active]
                forced, self._forced = self._forced, set()
                by_codec: dict[tuple[Any, ...], list[_Attachment]] = {}
                for target in targets:
                    by_codec.setdefault(target.encoder_key, []).append(target)
                for key, group in by_codec.items():
                    codec = key[0]
                    # One encoder per key; it reopens itself (with a
                    # keyframe) when the picture size changes.
                    if key in encoders and encoders[key] is None:
                        continue  # this codec failed to open; already reported
                    encoder = encoders.get(key)
                    bitrate = self._target_bitrate(group)
                    if encoder is None:
                        try:
                            encoder = encoders[key] = VideoEncoder(
                                codec=codec,
                                bitrate=bitrate,
                                framerate=self._framerate,
                                params=group[0].video_params,
                                implementation=group[0].implementation,
                            )
                        except (ValueError, RuntimeError) as exc:
                            logger.error("cannot encode %s video: %s", codec, exc)
                            encoders[key] = None
                            continue
                        adapters[key] = VideoAdapter(group[0].degradation, self._framerate)
                    elif abs(bitrate - encoder.bitrate) * 10 > encoder.bitrate:
                        # The estimate moved by more than 10 %: retune (now,
                        # or at the next keyframe for encoders that must reopen).
                        encoder.set_bitrate(bitrate)
                    adapter = adapters[key]
                    force = None in forced or any(t.rid in forced for t in group)
                    width, height = _scaled(bgr.shape[1], bgr.shape[0], key[-1])
                    size = adapter.update(bitrate, width, height)
                    if not (force or adapter.admit(rtp / VIDEO_CLOCK_RATE)):
                        continue  # frame rate lowered for the bitrate (degradation_preference)
                    try:
                        encoded = encoder.encode(bgr, rtp, force_keyframe=force, size=(size.width, size.height))
                    except Exception:
                        logger.exception("video encoder (%s) failed; recreating it", codec)
                        del encoders[key]
                        adapters.pop(key, None)
                        continue
                    for ef in encoded:
                        self.frames_encoded += 1
                        for target in group:
                            if target.waiting_keyframe and not ef.keyframe:
                                self._want_keyframe(target.rid)
                                continue
                            route = self._transforms.route(target)
                            if route is not None:
                                # The transformer's thread writes it (on enqueue) and
                                # re-arms waiting_keyframe if frames get lost there.
                                route.submit(ef.data, ef.rtp_time, ef.keyframe, size.width, size.height)
                                if ef.keyframe:
                                    target.waiting_keyframe = False
                                continue
                            if self._write(target, ef.data, ef.rtp_time):
                                if ef.keyframe:
                                    target.waiting_keyframe = False
                            else:
                                target.waiting_keyframe = True
        except Exception:  # pragma: no cover - a bug; make it visible
            logger.exception("video source worker crashed")
        finally:
            encoders.clear()
            self._worker_exited()

    def _want_keyframe(self, rid: str | None = None) -> None:
        """Force a keyframe of simulcast layer ``rid`` (None: every encoder), at most every 250 ms."""
        now = time.monotonic()
        if now - self._last_forced.get(rid, 0.0) >= _MIN_FORCED_KEYFRAME_INTERVAL:
            self._last_forced[rid] = now
            self._forced.add(rid)


def audio_level_dbov(pcm: np.ndarray) -> int:
    """The level of int16 PCM in dBov, -127 (silence) .. 0 (full scale), as RFC 6464 carries it.

    Receivers (the SFU's spotlight, active-speaker UIs) read it from every
    packet's header without decoding the audio. Measured in the Rust core:
    once per packet, numpy's small-array calls cost as much as a third of
    the Opus encode.
    """
    return _core.audio_level_dbov(pcm)


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    """A picture size divided by ``scale``, even and at least 2x2 (what the encoders take)."""
    if scale <= 1.0:
        return width, height
    return max(2, int(width / scale) // 2 * 2), max(2, int(height / scale) // 2 * 2)


class AudioSource(_SourceBase):
    """An audio track fed with 16-bit PCM (sora-sdk's ``SoraAudioSource``).

    >>> source = hibiki.Hibiki().create_audio_source(channels=1, sample_rate=16000)
    >>> conn = sora.create_connection(urls, role="sendonly", channel_id="room", audio_source=source)
    >>> conn.connect()
    >>> source.on_data(pcm)                    # int16 [samples, channels], any thread

    Any chunk size works; audio is resampled to 48 kHz when needed and sent as
    Opus packets: 20 ms, stereo for a 2-channel source, in-band FEC on, unless
    the connection's ``audio_opus_params`` say otherwise (stereo, ptime,
    useinbandfec, usedtx, ...; see :func:`hibiki.media.opus_encoder_settings`)
    and at ``audio_bit_rate``.

    Two ways to pace, chosen when the source is made:

    - **As given** (the default, sora-sdk's behaviour): audio is encoded and
      sent as soon as ``on_data`` hands it over, so the producer keeps time.
      Right for a microphone or anything that delivers in real time. Nothing
      is ever dropped: if the encoder queue is full ``on_data`` waits.
    - **Played out** (``queue_size_ms=...``, like LiveKit's ``AudioSource``):
      what ``on_data`` hands over waits in a queue and goes out in real time,
      one packet every 20 ms, with silence while the queue is empty. Right for
      a TTS or a file, which deliver seconds at once. ``on_data`` waits while
      ``queue_size_ms`` of audio is queued; :meth:`clear_queue` drops what has
      not gone out (an agent interrupted by its user);
      :meth:`wait_for_playout` waits until it all went out::

          voice = hibiki.AudioSource(channels=1, sample_rate=24000, queue_size_ms=1000)
          voice.on_data(tts_pcm)       # returns while less than 1 s is queued
          if user_started_talking:
              voice.clear_queue()      # silent within one packet
          voice.wait_for_playout()

      In asyncio code use ``await voice.on_data_async(pcm)`` and ``await
      voice.wait_for_playout_async()``, which wait without blocking the loop.
    """

    kind = "audio"

    def __init__(self, channels: int, sample_rate: int, *, queue_size: int = 100,
                 queue_size_ms: int | None = None) -> None:
        """Create a source of ``channels``-channel PCM at ``sample_rate`` Hz.

        Args:
            channels: Channels of the PCM given to :meth:`on_data`.
            sample_rate: Its rate in Hz (8000 or more).
            queue_size: As given: chunks that may wait for the encoder
                before ``on_data`` waits.
            queue_size_ms: Played out: how much audio may wait for its turn
                before ``on_data`` waits (at least 20 ms). None (default):
                sent as given.

        Raises:
            ValueError: A value out of range.
        """
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000, got {sample_rate}")
        if queue_size_ms is not None and queue_size_ms < _PACKET_MS:
            raise ValueError(f"queue_size_ms must be >= {_PACKET_MS} (one packet) or None, got {queue_size_ms}")
        self.channels = int(channels)
        self.sample_rate = int(sample_rate)
        self.queue_size_ms = queue_size_ms
        """The played-out queue's size in ms; None when audio is sent as given."""
        # As given: (pcm, capture time on the monotonic clock), or None to stop.
        # A SimpleQueue hands a chunk to the blocked worker in C (a Queue's
        # Condition costs tens of us per chunk on a small VM); the semaphore
        # bounds it: a slot per queued chunk, given back when the worker takes it.
        self._queue: queue.SimpleQueue[tuple[np.ndarray, float] | None] = queue.SimpleQueue()
        self._slots = threading.Semaphore(max(1, queue_size))
        # Played out: the PCM waiting for its turn, and the worker's stop signal.
        self._playout = (
            PlayoutQueue(self.channels, max(1, self.sample_rate * queue_size_ms // 1000))
            if queue_size_ms is not None else None
        )
        if self._playout is not None:
            self._playout.close()  # opened while attached: given audio is dropped until then
        self._stop = threading.Event()
        self._warned_loop = False

    def _pcm(self, ndarray: np.ndarray) -> np.ndarray | None:
        """``ndarray`` checked and copied; None when it is not to be sent (counted as dropped)."""
        pcm = np.asarray(ndarray)
        if pcm.ndim == 1:
            pcm = pcm.reshape(-1, 1)
        if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise ValueError(
                f"on_data expects int16 [samples, {self.channels}], got {pcm.dtype} {pcm.shape}"
            )
        self.frames_in += 1
        if not self._attachments:
            self.frames_dropped += 1
            return None
        if not self._enabled and self._playout is None:
            return np.zeros_like(pcm)
        return np.array(pcm, dtype=np.int16, order="C", copy=True)

    def on_data(self, ndarray: np.ndarray, timestamp: float | None = None) -> None:
        """Queue PCM for sending.

        Args:
            ndarray: ``int16`` array ``[samples, channels]`` (a 1-D array is
                taken as mono) at the source's ``sample_rate``. It is copied.
            timestamp: capture time of the first sample, seconds on the
                monotonic clock (``time.monotonic()`` at the call when
                omitted). RTP time follows the sample count, which is what
                receivers play out; the capture time goes into the RTCP sender
                reports, which receivers use to line audio up with video.
                A played-out source ignores it: its audio's time is when it
                goes out.

        Raises:
            ValueError: Not int16, or not the source's channel count.
        """
        pcm = self._pcm(ndarray)
        if pcm is None:
            return
        if self._playout is not None:
            if not self._playout.put(pcm, timeout=0):
                if not self._playout.closed:
                    self._warn_if_on_a_loop()
                if not self._playout.put(pcm):
                    self.frames_dropped += 1  # stopped sending meanwhile
            return
        captured = time.monotonic() if timestamp is None else float(timestamp)
        if not self._slots.acquire(timeout=5.0):
            # Only when the worker is stuck; say so rather than block forever.
            self.frames_dropped += 1
            logger.warning("audio source queue stayed full for 5 s; dropping %d samples", len(pcm))
            return
        self._queue.put((pcm, captured))

    async def on_data_async(self, ndarray: np.ndarray, timestamp: float | None = None) -> None:
        """:meth:`on_data` for asyncio code: waits for room in the queue without blocking the loop.

        >>> async for pcm in tts.stream(text):
        ...     await voice.on_data_async(pcm)
        """
        if self._playout is None:
            self.on_data(ndarray, timestamp)  # sent as given: waits for nothing
            return
        pcm = self._pcm(ndarray)
        if pcm is not None and not await self._playout.put_async(pcm):
            self.frames_dropped += 1  # stopped sending meanwhile

    def _warn_if_on_a_loop(self) -> None:
        if self._warned_loop:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._warned_loop = True
        logger.warning("AudioSource.on_data is waiting for room in its queue on an event loop's thread, "
                       "which stops the loop meanwhile; use 'await source.on_data_async(pcm)'")

    @property
    def queued_duration(self) -> float:
        """Seconds of audio waiting for their turn (0 when sent as given)."""
        return self._playout.queued / self.sample_rate if self._playout is not None else 0.0

    def clear_queue(self) -> float:
        """Drop the audio that has not gone out yet; returns its duration in seconds.

        What is already encoded (at most one packet) still goes out. Waiters
        of :meth:`wait_for_playout` return. Does nothing when sent as given.
        """
        if self._playout is None:
            return 0.0
        return self._playout.clear() / self.sample_rate

    def wait_for_playout(self, timeout: float | None = None) -> bool:
        """Wait until everything queued went out (or was cleared); False after ``timeout`` seconds.

        Returns at once when sent as given.
        """
        return self._playout.wait_empty(timeout) if self._playout is not None else True

    async def wait_for_playout_async(self, timeout: float | None = None) -> bool:
        """:meth:`wait_for_playout` for asyncio code, without blocking the loop."""
        return await self._playout.wait_empty_async(timeout) if self._playout is not None else True

    def _on_attach_locked(self, attachment: _Attachment) -> None:
        if self._playout is not None:
            self._playout.open()

    def _stop_locked(self) -> None:
        if self._playout is not None:
            self._stop.set()  # the played-out worker waits on it between packets
            return
        # The sentinel goes after whatever is queued: pending audio still goes
        # out. It takes no slot, so stopping never waits for room.
        self._queue.put(None)

    def _encoder_key(self, target: _Attachment) -> tuple[Any, ...]:
        """What decides an encoder: codec, bitrate and the Opus settings from ``audio_params``.

        Connections that agree share one encoder (one encode, many connections).
        """
        from hibiki.media import opus_encoder_settings

        try:
            settings = opus_encoder_settings(target.audio_params, self.channels)
        except ValueError as exc:  # create_connection checks them; this is a fallback
            logger.error("[%s] bad audio_opus_params, using defaults: %s", target.label, exc)
            settings = opus_encoder_settings(None, self.channels)
        return (target.codec, target.bitrate or DEFAULT_AUDIO_BITRATE, tuple(sorted(settings.items())))

    def _run(self) -> None:
        encoding = _AudioEncoding(self)
        try:
            if self._playout is None:
                self._run_as_given(encoding)
            else:
                self._run_played_out(encoding, self._playout)
        except Exception:  # pragma: no cover - a bug; make it visible
            logger.exception("audio source worker crashed")
        finally:
            encoding.close()
            if self._playout is not None:
                with self._lock:
                    if self._thread is threading.current_thread():  # crashed, not stopped
                        self._playout.close()
            self._worker_exited()

    def _exit_if_detached(self) -> bool:
        """Called on a stop signal: True (and no worker any more) if nothing is attached."""
        with self._lock:
            if not self._attachments:
                self._thread = None
                if self._playout is not None:
                    # Nothing would go out: producers and waiters must not
                    # hang on a source that stopped sending. Under the lock,
                    # so a new attachment's open() comes after this.
                    self._playout.close()
                return True
            self._stop.clear()  # re-attached meanwhile: keep going
            return False

    def _run_as_given(self, encoding: _AudioEncoding) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                if self._exit_if_detached():
                    return
                continue
            self._slots.release()
            encoding.send(*item)

    def _run_played_out(self, encoding: _AudioEncoding, playout: PlayoutQueue) -> None:
        clock = PacketClock(_PACKET_MS / 1000)
        taken = 0
        while True:
            if self._stop.wait(max(0.0, clock.next_due() - time.monotonic())):
                if self._exit_if_detached():
                    return
                continue
            now = time.monotonic()
            clock.tick(now)
            # Whole samples per packet even at rates like 22050 Hz: the count
            # due so far, less what was taken, never drifts.
            samples = clock.ticks * self.sample_rate * _PACKET_MS // 1000 - taken
            taken += samples
            pcm, _ = playout.take(samples)
            if not self._enabled:
                pcm[:] = 0
            encoding.send(pcm, now - _PACKET_MS / 1000)


class _AudioEncoding:
    """An audio source's encoders, one per distinct encoder key, used by its worker thread only."""

    def __init__(self, source: AudioSource) -> None:
        # The media layer loads PyAV: imported when a worker starts, not with the SDK.
        from hibiki.media import AudioConverter, AudioEncoder

        self._converter_type = AudioConverter
        self._encoder_type = AudioEncoder
        self.source = source
        # Opus carries 1 or 2 channels, as the connection's audio_opus_params
        # (or else the source) decide; the source's PCM is remixed to that
        # count once per count. The encoder resamples to 48 kHz itself.
        self.converters: dict[int, Any] = {}
        self.encoders: dict[tuple[Any, ...], Any] = {}

    def close(self) -> None:
        self.encoders.clear()

    def send(self, pcm: np.ndarray, captured: float) -> None:
        """Encode ``pcm`` (captured at ``captured``) for every attachment and write the packets."""
        source = self.source
        targets = source._targets()
        if not targets:
            return
        by_key: dict[tuple[Any, ...], list[_Attachment]] = {}
        for target in targets:
            by_key.setdefault(target.encoder_key, []).append(target)
        remixed: dict[int, np.ndarray] = {source.channels: pcm}
        for key, group in by_key.items():
            if key in self.encoders and self.encoders[key] is None:
                continue  # this codec failed to open; already reported
            codec, bitrate, settings = key
            options = dict(settings)
            channels = options["channels"]
            if channels not in remixed:
                if channels not in self.converters:
                    self.converters[channels] = self._converter_type(
                        source.sample_rate, source.channels, source.sample_rate, channels)
                remixed[channels] = self.converters[channels].convert(pcm)
            encoder = self.encoders.get(key)
            if encoder is None:
                try:
                    encoder = self.encoders[key] = self._encoder_type(
                        codec=codec, sample_rate=source.sample_rate, bitrate=bitrate, **options)
                except (ValueError, RuntimeError) as exc:
                    logger.error("cannot encode %s audio: %s", codec, exc)
                    self.encoders[key] = None
                    continue
            if len(remixed[channels]) == 0:
                continue
            # This chunk's first sample gets the RTP time the encoder gives its
            # next input: the packets' capture times follow.
            rtp0 = encoder.input_rtp_time
            level = audio_level_dbov(remixed[channels])
            for ef in encoder.encode(remixed[channels]):
                source.frames_encoded += 1
                at = captured + (ef.rtp_time - rtp0) / AUDIO_CLOCK_RATE
                for target in group:
                    route = source._transforms.route(target)
                    if route is not None:
                        route.submit(ef.data, ef.rtp_time, True)  # written on enqueue
                    else:
                        source._write(target, ef.data, ef.rtp_time, at, level)
