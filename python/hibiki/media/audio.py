"""Audio codecs through PyAV (FFmpeg), and PCM rate/channel conversion.

PCM is int16 numpy of shape ``(samples, channels)`` everywhere, as sora-sdk's
sources and sinks use it. The encoder takes any rate and any chunk size,
resamples to the codec rate, and cuts packets of ``ptime`` (20 ms by default)
with the Opus options WebRTC signals (stereo, in-band FEC, DTX, packet time,
playback rate; :func:`opus_encoder_settings` reads sora-sdk's
``audio_opus_params``). The decoder gives 48 kHz PCM, with the stream's own
channel count or the one the caller asked for, and conceals gaps.

Codecs are rows of :data:`_AUDIO_CODECS`, like the video table: encoders and
decoders to try in order, and their options. Opus itself is driven directly
through ctypes (:mod:`hibiki.media.libopus`: the libopus PyAV ships, else the
system's) whenever it loads: cheaper per packet than FFmpeg's wrapper, and
the only way to DTX and to FEC recovery. FFmpeg's wrapper is the fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from . import libopus
from .frames import AUDIO_CLOCK_RATE, EncodedFrame

__all__ = ["OPUS_FRAME_DURATIONS", "AudioConverter", "AudioDecoder", "AudioEncoder", "opus_encoder_settings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _AudioEncoderChoice:
    """One FFmpeg encoder for a codec, with its options."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)
    """Options for every channel count."""
    stereo_options: Mapping[str, str] = field(default_factory=dict)
    """Overrides when encoding two channels."""


@dataclass(frozen=True, slots=True)
class _AudioCodecSpec:
    """Everything codec-specific about an audio codec."""

    sample_rate: int
    """The rate the codec runs at, which is also its RTP clock here."""
    max_channels: int
    encoders: tuple[_AudioEncoderChoice, ...]
    decoders: tuple[str, ...]


_AUDIO_CODECS: Mapping[str, _AudioCodecSpec] = MappingProxyType(
    {
        "OPUS": _AudioCodecSpec(
            sample_rate=AUDIO_CLOCK_RATE,
            max_channels=2,
            encoders=(
                # AudioEncoder adds application, frame_duration, fec and
                # packet_loss from its arguments (see its docstring).
                _AudioEncoderChoice("libopus", {"vbr": "on"}),
                # FFmpeg's own Opus encoder (CELT only) is experimental; it is
                # here for builds without libopus.
                _AudioEncoderChoice("opus", {"strict": "experimental"}),
            ),
            # libopus first: the reference decoder, with FEC and concealment.
            decoders=("libopus", "opus"),
        ),
    }
)


def _spec(codec: str) -> _AudioCodecSpec:
    spec = _AUDIO_CODECS.get(codec)
    if spec is None:
        known = ", ".join(sorted(_AUDIO_CODECS))
        raise ValueError(f"unsupported audio codec {codec!r} (supported: {known})")
    return spec


# FFmpeg's default layout for each channel count (what av_channel_layout_default
# picks); PyAV takes layouts by name only.
_LAYOUT_NAMES = ("mono", "stereo", "2.1", "quad", "5.0", "5.1", "6.1", "7.1")


def _layout(channels: int) -> av.AudioLayout:
    if not 1 <= channels <= len(_LAYOUT_NAMES):
        raise ValueError(f"1 to {len(_LAYOUT_NAMES)} channels are supported, got {channels}")
    return av.AudioLayout(_LAYOUT_NAMES[channels - 1])


def _check_pcm(pcm: npt.NDArray[np.int16], channels: int) -> npt.NDArray[np.int16]:
    """Validate int16 PCM and return it as C-contiguous ``(samples, channels)``."""
    a = np.asarray(pcm)
    if a.dtype != np.int16:
        raise ValueError(f"PCM must be int16, got {a.dtype}")
    if a.ndim == 1 and channels == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != channels:
        raise ValueError(f"PCM must have shape (samples, {channels}), got {a.shape}")
    return np.ascontiguousarray(a)


def _to_frame(pcm: npt.NDArray[np.int16], sample_rate: int) -> av.AudioFrame:
    """Wrap contiguous ``(samples, channels)`` int16 PCM as a packed s16 frame."""
    frame = av.AudioFrame.from_ndarray(
        pcm.reshape(1, -1), format="s16", layout=_layout(pcm.shape[1])
    )
    frame.sample_rate = sample_rate
    return frame


def _from_frame(frame: av.AudioFrame) -> npt.NDArray[np.int16]:
    """Return a decoded or resampled frame as int16 ``(samples, channels)``, any sample format."""
    channels = frame.layout.nb_channels
    data = frame.to_ndarray()
    if frame.format.is_planar:
        data = data.T  # (channels, samples) -> (samples, channels)
    else:
        data = data.reshape(-1, channels)
    if data.dtype == np.int16:
        return np.ascontiguousarray(data)
    if data.dtype.kind == "f":
        return np.clip(np.rint(data * 32767.0), -32768, 32767).astype(np.int16)
    if data.dtype == np.int32:
        return np.right_shift(data, 16).astype(np.int16)
    raise ValueError(f"unexpected decoded sample format {frame.format.name}")


def _remix(pcm: npt.NDArray[np.int16], channels: int) -> npt.NDArray[np.int16]:
    """Change the channel count to or from mono (the only cases done in numpy).

    Down to mono is the average of the channels and up from mono duplicates the
    channel at the same level (FFmpeg's matrix would make it 3 dB quieter,
    which is right for loudspeakers but surprising for a sink).
    """
    have = pcm.shape[1]
    if have == channels:
        return pcm
    if channels == 1:
        # The mean is computed in float64, so loud channels cannot wrap around.
        mono: npt.NDArray[np.int16] = np.rint(pcm.mean(axis=1, keepdims=True)).astype(np.int16)
        return mono
    if have == 1:
        return np.repeat(pcm, channels, axis=1)
    raise ValueError(f"no numpy remix from {have} to {channels} channels")


def _resample(
    resampler: av.AudioResampler, pcm: npt.NDArray[np.int16], rate: int, out_channels: int
) -> npt.NDArray[np.int16]:
    """Push contiguous PCM through a streaming resampler; return what comes out now."""
    if pcm.shape[0] == 0:
        return np.zeros((0, out_channels), np.int16)
    chunks = [_from_frame(f) for f in resampler.resample(_to_frame(pcm, rate))]
    if not chunks:
        return np.zeros((0, out_channels), np.int16)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


class AudioConverter:
    """Convert int16 PCM [samples, channels] between rates/channel counts (sinks resample for the user).

    Stateful and streaming: feed consecutive chunks of one stream and the
    output is continuous (the resampler carries its filter history from call
    to call). Resampling delays the output by a few milliseconds, so a call
    may return a little less than ``len(pcm) * out_rate / in_rate`` samples;
    nothing is lost, it comes out with a later call.

    Down to mono averages the channels; up from mono copies the channel at
    the same level. Other channel changes (say 5.1 to stereo) use FFmpeg's
    standard downmix matrix.
    """

    def __init__(self, in_rate: int, in_channels: int, out_rate: int, out_channels: int) -> None:
        """Create a converter from ``(in_rate, in_channels)`` to ``(out_rate, out_channels)``.

        Raises:
            ValueError: A rate or channel count that is not positive, or a
                channel change other than to/from mono with more than 8 channels.
        """
        if min(in_rate, in_channels, out_rate, out_channels) <= 0:
            raise ValueError("rates and channel counts must be > 0")
        self.in_rate = in_rate
        self.in_channels = in_channels
        self.out_rate = out_rate
        self.out_channels = out_channels
        self._numpy_mix = in_channels == out_channels or in_channels == 1 or out_channels == 1
        # Channels that go through the resampler: remixing on the side with
        # fewer channels (before when reducing, after when expanding) gives
        # the resampler less work. Without a numpy mapping FFmpeg mixes, so
        # the resampler takes in_channels in and gives out_channels out.
        self._work_channels = min(in_channels, out_channels) if self._numpy_mix else out_channels
        if not self._numpy_mix:
            _layout(in_channels)  # fail now, not on the first chunk, if FFmpeg cannot mix it
        self._resampler: av.AudioResampler | None = None
        if in_rate != out_rate or not self._numpy_mix:
            self._resampler = av.AudioResampler(
                format="s16", layout=_layout(self._work_channels), rate=out_rate
            )

    def convert(self, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Convert one chunk; returns int16 ``(samples, out_channels)`` (possibly 0 samples).

        Raises:
            ValueError: ``pcm`` is not int16 of shape ``(samples, in_channels)``.
        """
        a = _check_pcm(pcm, self.in_channels)
        if self._numpy_mix and a.shape[1] > self._work_channels:
            a = _remix(a, self._work_channels)
        if self._resampler is not None:
            a = _resample(self._resampler, a, self.in_rate, self._work_channels)
        if a.shape[1] != self.out_channels:
            a = _remix(a, self.out_channels)
        return a


# -- Opus settings -----------------------------------------------------------------------

OPUS_FRAME_DURATIONS: tuple[float, ...] = (2.5, 5, 10, 20, 40, 60, 80, 100, 120)
"""Packet durations (ms) an Opus encoder can produce; 80 to 120 are several frames in one packet."""

# What a ``ptime``/``minptime`` from signaling may select: WebRTC stacks packetize
# 10 ms and up; 2.5 and 5 ms exist for AudioEncoder callers who want them.
_SIGNALED_PTIMES = (10, 20, 40, 60, 80, 100, 120)

_OPUS_PARAM_KEYS = frozenset(
    {"channels", "clock_rate", "maxplaybackrate", "minptime", "ptime", "stereo", "sprop_stereo",
     "useinbandfec", "usedtx"}
)


def _param(params: Mapping[str, Any], key: str, kind: type) -> Any:
    """``params[key]`` checked against ``kind`` (bool is not an int here), or None when absent."""
    value = params.get(key)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"audio_opus_params[{key!r}] must be an int, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"audio_opus_params[{key!r}] must be a bool, got {value!r}")
    return value


def opus_encoder_settings(params: Mapping[str, Any] | None, source_channels: int = 1) -> dict[str, Any]:
    """Turn sora-sdk's ``audio_opus_params`` into :class:`AudioEncoder` keyword arguments.

    >>> opus_encoder_settings({"stereo": True, "usedtx": True, "ptime": 40}, source_channels=1)
    {'channels': 2, 'fec': True, 'dtx': True, 'ptime': 40, 'max_playback_rate': None}

    Keys (all optional, as in Sora's ``audio.opus_params``):

    - ``channels`` (1 or 2): how many channels to encode. Without it,
      ``stereo``/``sprop_stereo`` decide (either True: stereo; given and both
      false: mono), and without those the source decides (2 or more channels:
      stereo).
    - ``useinbandfec`` (default True, as WebRTC offers it): Opus in-band FEC.
    - ``usedtx`` (default False): discontinuous transmission; silence is
      sent as a packet every 400 ms instead of every ``ptime``.
    - ``ptime`` / ``minptime`` (ms): the packet duration, the largest of
      10, 20, 40, 60, 80, 100, 120 not above ``ptime`` (default 20) and not
      below ``minptime``.
    - ``maxplaybackrate`` (Hz, 8000..48000): the encoder leaves out what a
      receiver playing at that rate cannot render.
    - ``clock_rate``: must be 48000 when given (Opus's RTP clock).

    Unknown keys are logged and ignored; a wrong type or range raises
    ``ValueError``, so that :meth:`hibiki.Hibiki.create_connection` can
    refuse bad parameters before anything connects.
    """
    p: Mapping[str, Any] = params or {}
    unknown = sorted(set(p) - _OPUS_PARAM_KEYS)
    if unknown:
        logger.warning("audio_opus_params: ignoring unknown keys %s", ", ".join(map(repr, unknown)))
    channels = _param(p, "channels", int)
    stereo, sprop_stereo = _param(p, "stereo", bool), _param(p, "sprop_stereo", bool)
    if channels is not None:
        if channels not in (1, 2):
            raise ValueError(f"audio_opus_params['channels'] must be 1 or 2, got {channels}")
    elif stereo is not None or sprop_stereo is not None:
        channels = 2 if (stereo or sprop_stereo) else 1
    else:
        channels = 2 if source_channels >= 2 else 1
    clock_rate = _param(p, "clock_rate", int)
    if clock_rate is not None and clock_rate != AUDIO_CLOCK_RATE:
        raise ValueError(f"audio_opus_params['clock_rate'] must be {AUDIO_CLOCK_RATE} for Opus, got {clock_rate}")
    ptime, minptime = _param(p, "ptime", int), _param(p, "minptime", int)
    for key, value in (("ptime", ptime), ("minptime", minptime)):
        if value is not None and not 3 <= value <= 120:
            raise ValueError(f"audio_opus_params[{key!r}] must be 3..120 ms, got {value}")
    wanted = 20 if ptime is None else ptime
    floor = minptime or 0
    fitting = [d for d in _SIGNALED_PTIMES if floor <= d <= max(wanted, floor)]
    # Nothing fits only when minptime is above every allowed duration <= ptime;
    # then minptime wins (rounded up), as the receiver asked not to go below it.
    chosen = fitting[-1] if fitting else next(d for d in _SIGNALED_PTIMES if d >= floor)
    maxplaybackrate = _param(p, "maxplaybackrate", int)
    if maxplaybackrate is not None and not 8000 <= maxplaybackrate <= 48000:
        raise ValueError(f"audio_opus_params['maxplaybackrate'] must be 8000..48000, got {maxplaybackrate}")
    useinbandfec, usedtx = _param(p, "useinbandfec", bool), _param(p, "usedtx", bool)
    return {
        "channels": channels,
        "fec": True if useinbandfec is None else useinbandfec,
        "dtx": bool(usedtx),
        "ptime": chosen,
        "max_playback_rate": maxplaybackrate,
    }


def _cutoff_hz(max_playback_rate: int | None) -> int:
    """The Opus audio bandwidth (Hz, FFmpeg's ``cutoff``) for a receiver's playback rate; 0 = full band."""
    if max_playback_rate is None or max_playback_rate > 24_000:
        return 0
    # Opus bandwidths: narrow 4 kHz (8 kHz rate), medium 6, wide 8, super-wide 12.
    for rate, cutoff in ((8_000, 4_000), (12_000, 6_000), (16_000, 8_000), (24_000, 12_000)):
        if max_playback_rate <= rate:
            return cutoff
    return 0  # pragma: no cover - the loop covers every rate <= 24000


# With DTX on, libopus marks "nothing to send" with packets of at most 2 bytes
# (libwebrtc's threshold as well); a real comfort-noise packet comes every 400 ms.
_OPUS_DTX_PACKET_BYTES = 2


class AudioEncoder:
    """Encode int16 PCM of any rate and chunk size into Opus packets (20 ms unless told otherwise).

    >>> enc = AudioEncoder(sample_rate=16_000, channels=1)
    >>> packets = enc.encode(pcm)  # pcm: int16 (samples, 1) at 16 kHz
    >>> stereo = AudioEncoder(channels=2, bitrate=96_000, ptime=40, dtx=True)

    Input is resampled to 48 kHz when needed and buffered; every complete
    packet comes out as one :class:`EncodedFrame` whose ``rtp_time`` starts at
    0 and advances by ``ptime * 48`` (48 kHz clock) per packet. With DTX,
    silence gives no packet for most of those steps (the gap in ``rtp_time``
    is the silence; receivers conceal it). Not thread safe.
    """

    def __init__(
        self,
        codec: str = "OPUS",
        sample_rate: int = 48_000,
        channels: int = 1,
        bitrate: int = 64_000,
        *,
        ptime: float = 20,
        fec: bool = True,
        packet_loss: int | None = None,
        dtx: bool = False,
        application: str | None = None,
        max_playback_rate: int | None = None,
    ) -> None:
        """Create an encoder for PCM at ``(sample_rate, channels)``.

        Args:
            codec: Upper-case codec name; ``"OPUS"``.
            sample_rate: Rate of the PCM passed to :meth:`encode`, any positive value.
            channels: 1 or 2; the packets carry the same count.
            bitrate: Target bitrate in bit/s (Opus uses 6000 to 510000).
            ptime: Packet duration in ms, one of :data:`OPUS_FRAME_DURATIONS`.
            fec: In-band forward error correction: each packet also carries a
                coarse copy of the previous one, which a receiver uses when
                that one is lost.
            packet_loss: Expected loss in percent (0..100), which sizes the
                FEC; default 5 with ``fec`` and 0 without.
            dtx: Discontinuous transmission: during silence only one packet
                every 400 ms goes out. Needs libopus loadable through ctypes
                (PyAV's own copy, else the system's); without it a warning is
                logged and every packet is sent (``self.dtx`` is then False).
                Without DTX too, libopus is driven directly when it loads
                (:attr:`backend` says which path encodes).
            application: ``"voip"`` (speech), ``"audio"`` (music, full band) or
                ``"lowdelay"``; default voip for mono and audio for stereo, as
                libwebrtc does.
            max_playback_rate: The receiver's playback rate (SDP
                ``maxplaybackrate``); the coded bandwidth is limited to it.

        Raises:
            ValueError: Unknown codec, unsupported channel count, or a
                rate/bitrate/ptime/packet_loss/application out of range.
            RuntimeError: FFmpeg has none of the codec's encoders.
        """
        self._spec = _spec(codec)
        if not 1 <= channels <= self._spec.max_channels:
            raise ValueError(
                f"{codec} supports 1 to {self._spec.max_channels} channels, got {channels}"
            )
        if sample_rate <= 0 or bitrate <= 0:
            raise ValueError("sample_rate and bitrate must be > 0")
        if ptime not in OPUS_FRAME_DURATIONS:
            raise ValueError(f"ptime must be one of {OPUS_FRAME_DURATIONS} ms, got {ptime}")
        if packet_loss is None:
            packet_loss = 5 if fec else 0
        if not 0 <= packet_loss <= 100:
            raise ValueError(f"packet_loss must be 0..100 %, got {packet_loss}")
        if application is None:
            application = "audio" if channels == 2 else "voip"
        if application not in libopus.APPLICATIONS:
            raise ValueError(f"application must be one of {', '.join(libopus.APPLICATIONS)}, got {application!r}")
        self._codec = codec
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate
        self.ptime = ptime
        self.fec = fec
        self.packet_loss = packet_loss
        self.application = application
        self.max_playback_rate = max_playback_rate
        self._frame_samples = round(ptime * self._spec.sample_rate / 1000)
        self.frames_suppressed = 0
        """Packets not sent because DTX found nothing worth sending."""
        self._ctx: av.AudioCodecContext | None = None
        self._direct = self._open_direct(dtx) if codec == "OPUS" else None
        self.dtx = dtx and self._direct is not None
        """Whether DTX is on (asked for, and libopus could be loaded for it)."""
        if dtx and not self.dtx:
            logger.warning("Opus DTX needs libopus through ctypes and it did not load; sending without DTX")
        if self._direct is None:
            self._ctx = self._open()
        self.backend = "libopus" if self._direct is not None else f"ffmpeg:{self._ctx.name if self._ctx else '?'}"
        """What encodes: ``"libopus"`` (driven directly) or ``"ffmpeg:<encoder>"`` (through PyAV)."""
        self._resampler = (
            av.AudioResampler(format="s16", layout=_layout(channels), rate=self._spec.sample_rate)
            if sample_rate != self._spec.sample_rate
            else None
        )
        # Samples at the codec rate waiting to fill a packet; always fewer
        # than one packet between calls.
        self._pending = np.zeros((0, channels), np.int16)
        self._rtp_time = 0

    def _open_direct(self, dtx: bool) -> libopus.Encoder | None:
        """libopus set up as FFmpeg's libopus encoder would be (same packets), or None without libopus."""
        lib = libopus.load()
        if lib is None:
            return None
        settings = {
            libopus.SET_BITRATE: self.bitrate,
            # FFmpeg's vbr=on: unconstrained VBR; its default complexity, 10.
            libopus.SET_VBR: 1,
            libopus.SET_VBR_CONSTRAINT: 0,
            libopus.SET_COMPLEXITY: 10,
            libopus.SET_INBAND_FEC: int(self.fec),
            libopus.SET_PACKET_LOSS_PERC: self.packet_loss,
            libopus.SET_DTX: int(dtx),
            libopus.SET_MAX_BANDWIDTH: libopus.BANDWIDTHS[_cutoff_hz(self.max_playback_rate)],
        }
        try:
            return libopus.Encoder(lib, self.channels, self.application, settings)
        except RuntimeError as exc:
            logger.warning("libopus encoder did not open (%s); encoding through FFmpeg", exc)
            return None

    def _open(self) -> av.AudioCodecContext:
        errors: list[str] = []
        for choice in self._spec.encoders:
            if choice.name not in av.codecs_available:
                continue
            ctx = av.CodecContext.create(choice.name, "w")
            assert isinstance(ctx, av.AudioCodecContext)
            ctx.sample_rate = self._spec.sample_rate
            ctx.layout = _layout(self.channels)
            ctx.format = "s16"
            ctx.bit_rate = self.bitrate
            ctx.time_base = Fraction(1, self._spec.sample_rate)
            options = dict(choice.options)
            if self.channels == 2:
                options.update(choice.stereo_options)
            if choice.name == "libopus":
                options.update({
                    "application": self.application,
                    "frame_duration": f"{self.ptime:g}",
                    # In-band FEC only kicks in with a nonzero expected loss.
                    "fec": "1" if self.fec else "0",
                    "packet_loss": str(self.packet_loss),
                })
            cutoff = _cutoff_hz(self.max_playback_rate)
            if cutoff:
                options["cutoff"] = str(cutoff)  # a generic option; libopus maps it to a bandwidth
            ctx.options = options
            try:
                ctx.open()
            except av.FFmpegError as exc:
                logger.debug("audio encoder %s did not open: %s", choice.name, exc)
                errors.append(f"{choice.name}: {exc}")
                continue
            return ctx
        tried = (
            "; ".join(errors)
            or "none of " + ", ".join(c.name for c in self._spec.encoders) + " is built in"
        )
        raise RuntimeError(f"no usable {self._codec} encoder ({tried})")

    @property
    def codec(self) -> str:
        """The codec name given at construction, e.g. ``"OPUS"``."""
        return self._codec

    @property
    def input_rtp_time(self) -> int:
        """RTP time (48 kHz) that the next sample given to :meth:`encode` will have.

        Lets a caller map packets back to the capture time of the audio in them.
        """
        return self._rtp_time + int(self._pending.shape[0])

    @property
    def frame_samples(self) -> int:
        """Samples per channel in one packet at 48 kHz (``ptime * 48``): the ``rtp_time`` step."""
        return self._frame_samples

    def encode(self, pcm: npt.NDArray[np.int16]) -> list[EncodedFrame]:
        """Add PCM and return every packet that is now complete (possibly none).

        Args:
            pcm: int16 of shape ``(samples, channels)`` at the encoder's
                ``sample_rate``; any number of samples. 1-D is accepted for mono.

        Raises:
            ValueError: Wrong dtype or shape.
        """
        a = _check_pcm(pcm, self.channels)
        if self._resampler is not None:
            a = _resample(self._resampler, a, self.sample_rate, self.channels)
        if a.shape[0] == 0:
            return []
        buf = np.concatenate((self._pending, a)) if self._pending.shape[0] else a
        size = self._frame_samples
        whole = buf.shape[0] - buf.shape[0] % size
        # Copy the remainder: keeping a view would pin the whole chunk.
        self._pending = buf[whole:].copy()
        out: list[EncodedFrame] = []
        for start in range(0, whole, size):
            chunk = np.ascontiguousarray(buf[start : start + size])
            if self._direct is not None:
                data = self._direct.encode(chunk)
                if len(data) <= _OPUS_DTX_PACKET_BYTES:
                    self.frames_suppressed += 1  # DTX: nothing to send; rtp_time still advances
                else:
                    out.append(EncodedFrame(data=data, rtp_time=self._rtp_time, keyframe=True))
            else:
                assert self._ctx is not None
                frame = _to_frame(chunk, self._spec.sample_rate)
                frame.pts = self._rtp_time
                frame.time_base = self._ctx.time_base
                for packet in self._ctx.encode(frame):
                    out.append(EncodedFrame(data=bytes(packet), rtp_time=self._rtp_time, keyframe=True))
            self._rtp_time += size
        return out


# Longest gap in a stream's RTP time that the decoder fills with concealment:
# DTX pauses are at most 400 ms and loss bursts are short; a longer gap is a
# pause of the sender (nothing was captured), which is not made up.
_MAX_CONCEAL_SAMPLES = AUDIO_CLOCK_RATE


def _opus_toc_stereo(data: bytes) -> bool:
    """The stereo flag of an Opus packet's TOC byte (RFC 6716 §3.1)."""
    return bool(data[0] & 0x04)


class AudioDecoder:
    """Decode Opus packets into 48 kHz int16 PCM.

    >>> dec = AudioDecoder()                      # channels as the stream has them
    >>> pcm = dec.decode(packet, rtp_time=960)    # int16 (960, dec.channels)

    ``channels=None`` (the default) gives the stream's own layout: mono until
    a stereo packet arrives, two channels from then on (Opus marks stereo in
    every packet). A number fixes the output instead: a mono stream decoded
    with ``channels=2`` comes out duplicated on both channels, a stereo one
    with ``channels=1`` comes out mixed down.

    Given each packet's ``rtp_time``, gaps are filled: a jump in RTP time
    (lost packets, or a sender's DTX pause) of up to one second is filled with
    Opus packet-loss concealment, which fades into comfort noise/silence, so
    the output keeps the sender's timeline. The last packet's worth of a gap
    is decoded from the in-band FEC the packet after it carries, when it
    carries some (the sender's ``useinbandfec``; libopus driven directly
    only). Corrupt packets are logged at debug level and give an empty array.
    """

    def __init__(self, codec: str = "OPUS", channels: int | None = None) -> None:
        """Create a decoder that outputs 48 kHz with ``channels`` channels (None: as the stream).

        Raises:
            ValueError: Unknown codec, or a channel count the codec cannot
                give (Opus: 1 or 2; use :class:`AudioConverter` for more).
            RuntimeError: FFmpeg has none of the codec's decoders.
        """
        self._spec = _spec(codec)
        if channels is not None and not 1 <= channels <= self._spec.max_channels:
            raise ValueError(
                f"{codec} decodes to 1 to {self._spec.max_channels} channels, got {channels}"
            )
        self._codec = codec
        self._fixed_channels = channels
        # Auto mode decodes to stereo and drops the copy while the stream is mono.
        self._decode_channels = channels if channels is not None else self._spec.max_channels
        self._stream_channels = 1
        self.sample_rate = self._spec.sample_rate
        self._direct = self._open_direct() if codec == "OPUS" else None
        self._ctx = self._open() if self._direct is None else None
        self.backend = "libopus" if self._direct is not None else f"ffmpeg:{self._ctx.name if self._ctx else '?'}"
        """What decodes: ``"libopus"`` (driven directly) or ``"ffmpeg:<decoder>"`` (through PyAV)."""
        self._next_rtp: int | None = None
        self._last_toc: int | None = None
        self.start_rtp_time: int | None = None
        """RTP time (48 kHz) of the first sample :meth:`decode` returned last (concealment included)."""
        self.samples_concealed = 0
        """Samples per channel made up for gaps in RTP time by concealment."""
        self.samples_recovered = 0
        """Samples per channel of gaps decoded from the in-band FEC of the packet after them."""

    def _open_direct(self) -> libopus.Decoder | None:
        lib = libopus.load()
        if lib is None:
            return None
        try:
            return libopus.Decoder(lib, self._decode_channels)
        except RuntimeError as exc:
            logger.warning("libopus decoder did not open (%s); decoding through FFmpeg", exc)
            return None

    def _open(self) -> av.AudioCodecContext:
        for name in self._spec.decoders:
            if name not in av.codecs_available:
                continue
            try:
                ctx = av.CodecContext.create(name, "r")
                assert isinstance(ctx, av.AudioCodecContext)
                ctx.sample_rate = self._spec.sample_rate
                ctx.layout = _layout(self._decode_channels)
                ctx.open()
            except av.FFmpegError as exc:
                logger.debug("audio decoder %s did not open: %s", name, exc)
                continue
            return ctx
        raise RuntimeError(
            f"no usable {self._codec} decoder (tried {', '.join(self._spec.decoders)})"
        )

    @property
    def codec(self) -> str:
        """The codec name given at construction, e.g. ``"OPUS"``."""
        return self._codec

    @property
    def channels(self) -> int:
        """Channels of the output: the fixed count, or the stream's so far (1 until stereo is seen)."""
        return self._fixed_channels if self._fixed_channels is not None else self._stream_channels

    def _decode_packet(self, data: bytes) -> npt.NDArray[np.int16] | None:
        if self._direct is not None:
            pcm = self._direct.decode(data)
            if pcm is None:
                logger.debug("%s decoder: dropping a corrupt packet of %d bytes", self._codec, len(data))
            return pcm
        assert self._ctx is not None
        try:
            chunks = [_from_frame(f) for f in self._ctx.decode(av.Packet(data))]
        except (av.FFmpegError, ValueError) as exc:
            logger.debug(
                "%s decoder: dropping a packet of %d bytes: %s", self._codec, len(data), exc
            )
            return None
        if not chunks:
            return None
        pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        if pcm.shape[1] != self._decode_channels:
            # Decoders that ignore the requested layout give the coded count,
            # which for 1 or 2 requested channels is a mono<->stereo remix.
            pcm = _remix(pcm, self._decode_channels)
        return pcm

    def _fill(self, samples: int, following: bytes) -> list[npt.NDArray[np.int16]]:
        """PCM for a gap of ``samples`` just before the packet ``following``.

        The gap's end comes from ``following``'s in-band FEC when it has some
        (libopus driven directly), the rest from concealment.
        """
        direct = self._direct
        if direct is None:
            return self._conceal(samples)
        covered = direct.fec_samples(following, samples)
        parts = self._conceal(samples - covered) if samples > covered else []
        if covered:
            pcm = direct.recover(following, covered)
            if pcm is None or len(pcm) != covered:
                parts += self._conceal(covered)  # the packet is corrupt after all
            else:
                parts.append(pcm)
                self.samples_recovered += covered
        return parts

    def _conceal(self, samples: int) -> list[npt.NDArray[np.int16]]:
        """``samples`` of packet-loss concealment, continuing from the last packet."""
        self.samples_concealed += samples
        if self._direct is not None:
            return [self._direct.conceal(samples)]
        out: list[npt.NDArray[np.int16]] = []
        # A TOC byte with no frame data is a lost frame (RFC 6716 §3.2.1): the
        # decoder extrapolates, then fades to comfort noise or silence.
        lost = bytes([self._last_toc & 0xFC]) if self._last_toc is not None else None
        remaining = samples
        while remaining > 0:
            pcm = self._decode_packet(lost) if lost is not None else None
            if pcm is None or len(pcm) == 0:
                pcm = np.zeros((remaining, self._decode_channels), np.int16)
            out.append(pcm[:remaining])
            remaining -= len(out[-1])
        return out

    def decode(self, data: bytes, rtp_time: int | None = None) -> npt.NDArray[np.int16]:
        """Decode one packet into int16 ``(samples, channels)`` at 48 kHz.

        Args:
            data: One Opus packet.
            rtp_time: Its RTP timestamp (48 kHz, not wrapping). When given, a
                forward jump since the previous packet's end is concealed first
                and the output starts with it; :attr:`start_rtp_time` says where.

        Never raises on bad input: returns a ``(0, channels)`` array instead.
        """
        if not data:
            # An empty packet would put the FFmpeg decoder into drain mode.
            return np.zeros((0, self.channels), np.int16)
        if self._fixed_channels is None and self._stream_channels == 1 and _opus_toc_stereo(data):
            self._stream_channels = 2  # sticky: a stereo stream may code quiet parts in mono
        parts: list[npt.NDArray[np.int16]] = []
        start = rtp_time
        if rtp_time is not None and self._next_rtp is not None:
            gap = rtp_time - self._next_rtp
            if 0 < gap <= _MAX_CONCEAL_SAMPLES:
                parts = self._fill(gap, data)
                start = self._next_rtp
                self._next_rtp = rtp_time  # the gap is out, even if this packet turns out corrupt
        pcm = self._decode_packet(data)
        if pcm is not None:
            self._last_toc = data[0]
            parts.append(pcm)
            if rtp_time is not None:
                self._next_rtp = rtp_time + len(pcm)
        if not parts:
            return np.zeros((0, self.channels), np.int16)
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.start_rtp_time = start
        if out.shape[1] != self.channels:
            # Auto mode while the stream is mono: both decoded channels are
            # the same signal, so one of them is exact.
            out = np.ascontiguousarray(out[:, :1])
        return out
