"""libopus driven directly through ctypes: the copy PyAV ships (FFmpeg's own), else the system's.

:class:`~hibiki.media.AudioEncoder` and :class:`~hibiki.media.AudioDecoder`
use it for Opus whenever it loads, and fall back to FFmpeg's libopus
wrapper through PyAV when it does not. Two reasons:

- **Cost.** A 20 ms packet is little work for the codec, and going through
  FFmpeg wraps each one in an ``AVFrame``/``AVPacket`` pair and Python
  objects around them. Paced at 50 packets/s (cold caches, as in a real
  stream) that wrapping costs about a third of the encode and of the
  decode; here PCM goes from numpy straight into ``opus_encode`` and out of
  ``opus_decode`` straight into numpy.
- **What FFmpeg's wrapper lacks.** DTX (``OPUS_SET_DTX``) and, on receive,
  in-band FEC: decoding the redundancy the next packet carries in place of a
  lost one (``decode_fec``), which is what the sender's FEC is for.

``AudioEncoder`` configures this encoder the way it configures FFmpeg's
``libopus`` encoder (unconstrained VBR, complexity 10, the same bitrate, FEC
and bandwidth), so both paths give the same packets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import weakref
from collections.abc import Mapping
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

APPLICATIONS = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
SET_BITRATE = 4002
SET_MAX_BANDWIDTH = 4004
SET_VBR = 4006
SET_COMPLEXITY = 4010
SET_INBAND_FEC = 4012
SET_PACKET_LOSS_PERC = 4014
SET_DTX = 4016
SET_VBR_CONSTRAINT = 4020
BANDWIDTHS = {4_000: 1101, 6_000: 1102, 8_000: 1103, 12_000: 1104, 0: 1105}
"""Audio bandwidth (Hz, FFmpeg's ``cutoff``; 0 = full band) -> ``OPUS_BANDWIDTH_*``."""
MAX_PACKET = 6 * 1275 + 16
"""The largest packet ``opus_encode`` can make: 120 ms of 1275-byte frames, plus framing."""
MAX_FRAME_SAMPLES = 5760
"""120 ms at 48 kHz: the longest a packet (or one concealment call) can be."""
_CONCEAL_STEP = 120
"""Concealment is asked for in multiples of 2.5 ms (120 samples at 48 kHz)."""


def _candidates() -> list[str]:
    """Paths where the libopus PyAV ships with (same build as FFmpeg's) may be, then the system's."""
    site = Path(av.__file__).resolve().parent
    found: list[str] = []
    for pattern in ("av.libs/libopus*.so*", "av.libs/*opus*.dll", "av/.dylibs/libopus*.dylib"):
        found += sorted(str(p) for p in site.parent.glob(pattern))
    system = ctypes.util.find_library("opus")
    if system:
        found.append(system)
    return found


def _declare(lib: ctypes.CDLL) -> None:
    """Set the prototypes of the functions used here (AttributeError when one is missing)."""
    c_void_p, c_int, c_int32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int32
    lib.opus_encoder_create.restype = c_void_p
    lib.opus_encoder_create.argtypes = [c_int32, c_int, c_int, ctypes.POINTER(c_int)]
    # Variadic: only the fixed arguments get argtypes, so that ctypes uses the
    # variadic calling convention (it differs on macOS arm64).
    lib.opus_encoder_ctl.restype = c_int
    lib.opus_encoder_ctl.argtypes = [c_void_p, c_int]
    lib.opus_encode.restype = c_int32
    lib.opus_encode.argtypes = [c_void_p, c_void_p, c_int, c_void_p, c_int32]
    lib.opus_encoder_destroy.restype = None
    lib.opus_encoder_destroy.argtypes = [c_void_p]
    lib.opus_decoder_create.restype = c_void_p
    lib.opus_decoder_create.argtypes = [c_int32, c_int, ctypes.POINTER(c_int)]
    lib.opus_decoder_get_nb_samples.restype = c_int
    lib.opus_decoder_get_nb_samples.argtypes = [c_void_p, ctypes.c_char_p, c_int32]
    lib.opus_decode.restype = c_int
    lib.opus_decode.argtypes = [c_void_p, ctypes.c_char_p, c_int32, c_void_p, c_int, c_int]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [c_void_p]
    # libopus 1.5+ only; older ones are told by the packet's mode instead.
    has_lbrr = getattr(lib, "opus_packet_has_lbrr", None)
    if has_lbrr is not None:
        has_lbrr.restype = c_int
        has_lbrr.argtypes = [ctypes.c_char_p, c_int32]


def has_fec(lib: ctypes.CDLL, packet: bytes) -> bool:
    """Whether ``packet`` carries in-band FEC (LBRR) for the packet before it."""
    has_lbrr = getattr(lib, "opus_packet_has_lbrr", None)
    if has_lbrr is not None:
        return bool(has_lbrr(packet, len(packet)) == 1)
    # Only SILK and hybrid frames (TOC configurations 0-15) can carry LBRR.
    return bool(packet) and packet[0] >> 3 < 16


@functools.cache
def load() -> ctypes.CDLL | None:
    """libopus with its prototypes declared, or None when there is none to load."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            _declare(lib)
        except (OSError, AttributeError) as exc:
            logger.debug("libopus at %s not usable: %s", path, exc)
            continue
        return lib
    return None


class Encoder:
    """One libopus encoder state at 48 kHz.

    ``settings`` maps ``OPUS_SET_*`` requests to values; the native state is
    freed when the object is collected.
    """

    def __init__(self, lib: ctypes.CDLL, channels: int, application: str, settings: Mapping[int, int]) -> None:
        error = ctypes.c_int(0)
        state = lib.opus_encoder_create(48_000, channels, APPLICATIONS[application], ctypes.byref(error))
        if not state or error.value != 0:
            raise RuntimeError(f"opus_encoder_create failed ({error.value})")
        self._lib = lib
        self._state = ctypes.c_void_p(state)
        self._finalizer = weakref.finalize(self, lib.opus_encoder_destroy, self._state)
        for request, value in settings.items():
            rc = lib.opus_encoder_ctl(self._state, int(request), ctypes.c_int(int(value)))
            if rc != 0:
                raise RuntimeError(f"opus_encoder_ctl({request}, {value}) failed ({rc})")
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        """Encode one packet's worth of C-contiguous int16 ``(samples, channels)``."""
        n = self._lib.opus_encode(self._state, pcm.ctypes.data, pcm.shape[0], self._out, MAX_PACKET)
        if n < 0:
            raise RuntimeError(f"opus_encode failed ({n})")
        return ctypes.string_at(self._out, n)  # copies n bytes, not the whole buffer


class Decoder:
    """One libopus decoder state at 48 kHz giving ``channels`` channels.

    libopus mixes a stereo stream down (average) or a mono one up (copy) to
    the count it was created with. Every method returns a new C-contiguous
    int16 ``(samples, channels)`` array of exactly the decoded length.
    """

    def __init__(self, lib: ctypes.CDLL, channels: int) -> None:
        error = ctypes.c_int(0)
        state = lib.opus_decoder_create(48_000, channels, ctypes.byref(error))
        if not state or error.value != 0:
            raise RuntimeError(f"opus_decoder_create failed ({error.value})")
        self._lib = lib
        self._state = ctypes.c_void_p(state)
        self._finalizer = weakref.finalize(self, lib.opus_decoder_destroy, self._state)
        self.channels = channels

    def _run(self, data: bytes | None, samples: int, fec: bool) -> npt.NDArray[np.int16] | None:
        out = np.empty((samples, self.channels), np.int16)
        n = self._lib.opus_decode(self._state, data, len(data) if data else 0, out.ctypes.data, samples, int(fec))
        if n < 0:
            return None
        return out if n == samples else out[:n].copy()

    def decode(self, data: bytes) -> npt.NDArray[np.int16] | None:
        """One packet's PCM, or None when the packet is corrupt."""
        samples = self._lib.opus_decoder_get_nb_samples(self._state, data, len(data))
        if not 0 < samples <= MAX_FRAME_SAMPLES:
            return None
        return self._run(data, samples, False)

    def conceal(self, samples: int) -> npt.NDArray[np.int16]:
        """``samples`` of packet-loss concealment continuing the stream (fading to silence)."""
        parts = []
        remaining = samples
        while remaining > 0:
            # libopus conceals in steps of 2.5 ms: ask for the next step up and trim.
            step = min(MAX_FRAME_SAMPLES, -(-remaining // _CONCEAL_STEP) * _CONCEAL_STEP)
            pcm = self._run(None, step, False)
            if pcm is None or len(pcm) == 0:
                pcm = np.zeros((step, self.channels), np.int16)
            parts.append(pcm[:remaining])
            remaining -= len(parts[-1])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def fec_samples(self, data: bytes, gap: int) -> int:
        """How many of the ``gap`` samples lost just before ``data`` its FEC gives back (0: none).

        FEC covers the one packet before, which lasted as long as ``data`` does.
        """
        samples = self._lib.opus_decoder_get_nb_samples(self._state, data, len(data))
        if not 0 < samples <= gap or not has_fec(self._lib, data):
            return 0
        return int(samples)

    def recover(self, data: bytes, samples: int) -> npt.NDArray[np.int16] | None:
        """The ``samples`` lost just before ``data``, from the in-band FEC ``data`` carries.

        Where ``data`` has no FEC for them, libopus conceals them instead.
        ``samples`` must be a multiple of 2.5 ms; None on a corrupt packet.
        """
        return self._run(data, samples, True)
