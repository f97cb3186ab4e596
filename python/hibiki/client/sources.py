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

import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from hibiki._core import ClientEngine

__all__ = ["AudioSource", "VideoSource"]

logger = logging.getLogger("hibiki.client")

VIDEO_CLOCK_RATE = 90_000
AUDIO_CLOCK_RATE = 48_000
DEFAULT_VIDEO_BITRATE = 1_500_000
DEFAULT_AUDIO_BITRATE = 64_000
# When a connection is waiting for a keyframe, do not force one more often than
# this: every forced keyframe is many times the size of a delta frame.
_MIN_FORCED_KEYFRAME_INTERVAL = 0.25


@dataclass
class _Attachment:
    """Where a source's frames go: one m-line of one connection."""

    engine: ClientEngine
    handle: str
    mid: str
    codec: str
    label: str  # connection id, for logs
    bitrate: int | None = None
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
        self._attachments: dict[tuple[str, str], _Attachment] = {}
        self._thread: threading.Thread | None = None
        self._enabled = True
        self.frames_in = 0
        """Frames (or audio chunks) given to the source."""
        self.frames_encoded = 0
        """Encoded frames (or Opus packets) produced."""
        self.frames_dropped = 0
        """Frames discarded: not attached, queue overflow (video), or disabled."""

    # -- sora-sdk style track surface ---------------------------------------------------

    @property
    def enabled(self) -> bool:
        """False while muted (video sends nothing, audio sends silence)."""
        return self._enabled

    def set_enabled(self, enable: bool) -> bool:
        """Mute (False) or unmute (True). Returns the new state, like sora-sdk."""
        self._enabled = bool(enable)
        return self._enabled

    @property
    def attached(self) -> bool:
        """True while at least one connection receives this source."""
        return bool(self._attachments)

    def send_counters(self) -> list[dict[str, Any]]:
        """Per attached connection: what was sent, for ``get_stats``-style reports.

        One dict per attachment with ``connection_id`` (the connection's id
        once connected), ``mid``, ``codec``, ``frames_sent`` and ``bytes_sent``
        (encoded payload bytes, before RTP). Counters restart when a
        connection attaches again.
        """
        return [
            {"connection_id": a.label, "mid": a.mid, "codec": a.codec,
             "frames_sent": a.frames_sent, "bytes_sent": a.bytes_sent}
            for a in self._targets()
        ]

    # -- attachment (called by Connection) ----------------------------------------------

    def _attach(self, attachment: _Attachment) -> None:
        with self._lock:
            self._attachments[(attachment.handle, attachment.mid)] = attachment
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
        with self._lock:
            for key in [k for k in self._attachments if k[0] == handle]:
                del self._attachments[key]
            if not self._attachments and self._thread is not None:
                self._stop_locked()

    def _targets(self) -> list[_Attachment]:
        with self._lock:
            return list(self._attachments.values())

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

    def _write(self, target: _Attachment, data: bytes, rtp_time: int) -> bool:
        try:
            ok = target.engine.write_frame(target.handle, target.mid, target.codec, data, rtp_time)
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
        self._force_keyframe = False
        self._last_forced = 0.0
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

    def request_keyframe(self) -> None:
        """Make the next encoded picture a keyframe (a receiver asked for one)."""
        self._force_keyframe = True

    def _on_attach_locked(self, attachment: _Attachment) -> None:
        # A new receiver must start with a keyframe.
        self._force_keyframe = True
        self._stop = False

    def _stop_locked(self) -> None:
        self._stop = True
        self._queue.clear()
        self._cond.notify_all()

    def _run(self) -> None:
        from hibiki.media import VideoEncoder  # imported here: PyAV is heavy

        encoders: dict[str, Any] = {}
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        self._thread = None
                        return
                    bgr, rtp = self._queue.popleft()
                    targets = list(self._attachments.values())
                force = self._force_keyframe
                self._force_keyframe = False
                by_codec: dict[str, list[_Attachment]] = {}
                for target in targets:
                    by_codec.setdefault(target.codec, []).append(target)
                for codec, group in by_codec.items():
                    # One encoder per codec; it reopens itself (with a
                    # keyframe) when the picture size changes.
                    if codec in encoders and encoders[codec] is None:
                        continue  # this codec failed to open; already reported
                    encoder = encoders.get(codec)
                    if encoder is None:
                        bitrate = next((t.bitrate for t in group if t.bitrate), None)
                        try:
                            encoder = encoders[codec] = VideoEncoder(
                                codec=codec,
                                bitrate=bitrate or DEFAULT_VIDEO_BITRATE,
                                framerate=self._framerate,
                            )
                        except (ValueError, RuntimeError) as exc:
                            logger.error("cannot encode %s video: %s", codec, exc)
                            encoders[codec] = None
                            continue
                    try:
                        encoded = encoder.encode(bgr, rtp, force_keyframe=force)
                    except Exception:
                        logger.exception("video encoder (%s) failed; recreating it", codec)
                        del encoders[codec]
                        continue
                    for ef in encoded:
                        self.frames_encoded += 1
                        for target in group:
                            if target.waiting_keyframe and not ef.keyframe:
                                self._want_keyframe()
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

    def _want_keyframe(self) -> None:
        now = time.monotonic()
        if now - self._last_forced >= _MIN_FORCED_KEYFRAME_INTERVAL:
            self._last_forced = now
            self._force_keyframe = True


class AudioSource(_SourceBase):
    """An audio track fed with 16-bit PCM (sora-sdk's ``SoraAudioSource``).

    >>> source = hibiki.Hibiki().create_audio_source(channels=1, sample_rate=16000)
    >>> conn = sora.create_connection(urls, role="sendonly", channel_id="room", audio_source=source)
    >>> conn.connect()
    >>> source.on_data(pcm)                    # int16 [samples, channels], any thread

    Any chunk size works; audio is resampled to 48 kHz when needed and sent as
    20 ms Opus packets. Nothing is ever dropped: if the encoder queue is full
    ``on_data`` waits, which paces a producer that runs faster than real time.
    """

    kind = "audio"

    def __init__(self, channels: int, sample_rate: int, *, queue_size: int = 100) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000, got {sample_rate}")
        self.channels = int(channels)
        self.sample_rate = int(sample_rate)
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(1, queue_size))

    def on_data(self, ndarray: np.ndarray, timestamp: float | None = None) -> None:
        """Queue PCM for encoding.

        Args:
            ndarray: ``int16`` array ``[samples, channels]`` (a 1-D array is
                taken as mono) at the source's ``sample_rate``. It is copied.
            timestamp: accepted for sora-sdk compatibility. Audio timing
                follows the sample count, which is what receivers play out.
        """
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
            return
        if not self._enabled:
            pcm = np.zeros_like(pcm)
        try:
            self._queue.put(np.array(pcm, dtype=np.int16, order="C", copy=True), timeout=5.0)
        except queue.Full:
            # Only when the worker is stuck; say so rather than block forever.
            self.frames_dropped += 1
            logger.warning("audio source queue stayed full for 5 s; dropping %d samples", len(pcm))

    def _stop_locked(self) -> None:
        # The sentinel goes after whatever is queued: pending audio still goes out.
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            # Make room: the connection is gone anyway.
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._queue.put_nowait(None)

    def _run(self) -> None:
        from hibiki.media import AudioConverter, AudioEncoder

        # Opus carries 1 or 2 channels; more are mixed down to stereo here.
        # The encoder resamples to 48 kHz itself.
        enc_channels = 2 if self.channels >= 2 else 1
        converter = None
        if self.channels != enc_channels:
            converter = AudioConverter(self.sample_rate, self.channels, self.sample_rate, enc_channels)
        encoders: dict[str, Any] = {}
        try:
            while True:
                pcm = self._queue.get()
                if pcm is None:
                    with self._lock:
                        if not self._attachments:
                            self._thread = None
                            return
                    continue  # re-attached meanwhile: keep going
                targets = self._targets()
                if not targets:
                    continue
                if converter is not None:
                    pcm = converter.convert(pcm)
                    if len(pcm) == 0:
                        continue
                by_codec: dict[str, list[_Attachment]] = {}
                for target in targets:
                    by_codec.setdefault(target.codec, []).append(target)
                for codec, group in by_codec.items():
                    if codec in encoders and encoders[codec] is None:
                        continue  # this codec failed to open; already reported
                    encoder = encoders.get(codec)
                    if encoder is None:
                        bitrate = next((t.bitrate for t in group if t.bitrate), None)
                        encoder = encoders[codec] = AudioEncoder(
                            codec=codec,
                            sample_rate=self.sample_rate,
                            channels=enc_channels,
                            bitrate=bitrate or DEFAULT_AUDIO_BITRATE,
                        )
                    for ef in encoder.encode(pcm):
                        self.frames_encoded += 1
                        for target in group:
                            self._write(target, ef.data, ef.rtp_time)
        except Exception:  # pragma: no cover - a bug; make it visible
            logger.exception("audio source worker crashed")
        finally:
            encoders.clear()
            self._worker_exited()
