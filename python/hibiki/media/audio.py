"""Audio codecs through PyAV (FFmpeg), and PCM rate/channel conversion.

PCM is int16 numpy of shape ``(samples, channels)`` everywhere, as sora-sdk's
sources and sinks use it. The encoder takes any rate and any chunk size,
resamples to the codec rate, and cuts 20 ms packets; the decoder gives 48 kHz
PCM with the channel count the caller asked for, whatever the sender coded.

Codecs are rows of :data:`_AUDIO_CODECS`, like the video table: encoders and
decoders to try in order, and their options.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType

import av
import numpy as np
import numpy.typing as npt

from .frames import AUDIO_CLOCK_RATE, EncodedFrame

__all__ = ["AudioConverter", "AudioDecoder", "AudioEncoder"]

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
    frame_samples: int
    """Samples per packet at ``sample_rate``."""
    max_channels: int
    encoders: tuple[_AudioEncoderChoice, ...]
    decoders: tuple[str, ...]


_AUDIO_CODECS: Mapping[str, _AudioCodecSpec] = MappingProxyType(
    {
        "OPUS": _AudioCodecSpec(
            sample_rate=AUDIO_CLOCK_RATE,
            frame_samples=AUDIO_CLOCK_RATE // 50,  # 20 ms, WebRTC's packet time
            max_channels=2,
            encoders=(
                _AudioEncoderChoice(
                    "libopus",
                    {
                        # As libwebrtc: speech tuning for mono, full-band
                        # "audio" for stereo, which is usually music.
                        "application": "voip",
                        "frame_duration": "20",
                        "vbr": "on",
                        # In-band FEC only kicks in with a nonzero expected
                        # loss; 5% buys resilience for a small bitrate share.
                        "fec": "1",
                        "packet_loss": "5",
                    },
                    stereo_options={"application": "audio"},
                ),
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


class AudioEncoder:
    """Encode int16 PCM of any rate and chunk size into 20 ms Opus packets.

    >>> enc = AudioEncoder(sample_rate=16_000, channels=1)
    >>> packets = enc.encode(pcm)  # pcm: int16 (samples, 1) at 16 kHz

    Input is resampled to 48 kHz when needed and buffered; every complete
    20 ms comes out as one :class:`EncodedFrame` whose ``rtp_time`` starts at
    0 and advances by 960 (48 kHz clock) per packet. Not thread safe.
    """

    def __init__(
        self,
        codec: str = "OPUS",
        sample_rate: int = 48_000,
        channels: int = 1,
        bitrate: int = 64_000,
    ) -> None:
        """Create an encoder for PCM at ``(sample_rate, channels)``.

        Args:
            codec: Upper-case codec name; ``"OPUS"``.
            sample_rate: Rate of the PCM passed to :meth:`encode`, any positive value.
            channels: 1 or 2; the packets carry the same count.
            bitrate: Target bitrate in bit/s.

        Raises:
            ValueError: Unknown codec, unsupported channel count, or a
                rate/bitrate that is not positive.
            RuntimeError: FFmpeg has none of the codec's encoders.
        """
        self._spec = _spec(codec)
        if not 1 <= channels <= self._spec.max_channels:
            raise ValueError(
                f"{codec} supports 1 to {self._spec.max_channels} channels, got {channels}"
            )
        if sample_rate <= 0 or bitrate <= 0:
            raise ValueError("sample_rate and bitrate must be > 0")
        self._codec = codec
        self.sample_rate = sample_rate
        self.channels = channels
        self.bitrate = bitrate
        self._ctx = self._open()
        self._resampler = (
            av.AudioResampler(format="s16", layout=_layout(channels), rate=self._spec.sample_rate)
            if sample_rate != self._spec.sample_rate
            else None
        )
        # Samples at the codec rate waiting to fill a packet; always fewer
        # than one packet between calls.
        self._pending = np.zeros((0, channels), np.int16)
        self._rtp_time = 0

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
        size = self._spec.frame_samples
        whole = buf.shape[0] - buf.shape[0] % size
        # Copy the remainder: keeping a view would pin the whole chunk.
        self._pending = buf[whole:].copy()
        out: list[EncodedFrame] = []
        for start in range(0, whole, size):
            frame = _to_frame(
                np.ascontiguousarray(buf[start : start + size]), self._spec.sample_rate
            )
            frame.pts = self._rtp_time
            frame.time_base = self._ctx.time_base
            for packet in self._ctx.encode(frame):
                out.append(EncodedFrame(data=bytes(packet), rtp_time=self._rtp_time, keyframe=True))
            self._rtp_time += size
        return out


class AudioDecoder:
    """Decode Opus packets into 48 kHz int16 PCM with a fixed channel count.

    The channel count is the caller's choice, not the sender's: a mono stream
    decoded with ``channels=2`` comes out duplicated on both channels, a
    stereo one with ``channels=1`` comes out mixed down. Corrupt packets are
    logged at debug level and give an empty array.
    """

    def __init__(self, codec: str = "OPUS", channels: int = 2) -> None:
        """Create a decoder that outputs ``channels`` channels at 48 kHz.

        Raises:
            ValueError: Unknown codec, or a channel count the codec cannot
                give (Opus: 1 or 2; use :class:`AudioConverter` for more).
            RuntimeError: FFmpeg has none of the codec's decoders.
        """
        self._spec = _spec(codec)
        if not 1 <= channels <= self._spec.max_channels:
            raise ValueError(
                f"{codec} decodes to 1 to {self._spec.max_channels} channels, got {channels}"
            )
        self._codec = codec
        self.channels = channels
        self.sample_rate = self._spec.sample_rate
        self._ctx = self._open()

    def _open(self) -> av.AudioCodecContext:
        for name in self._spec.decoders:
            if name not in av.codecs_available:
                continue
            try:
                ctx = av.CodecContext.create(name, "r")
                assert isinstance(ctx, av.AudioCodecContext)
                ctx.sample_rate = self._spec.sample_rate
                ctx.layout = _layout(self.channels)
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

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        """Decode one packet into int16 ``(samples, channels)`` at 48 kHz.

        Never raises on bad input: returns a ``(0, channels)`` array instead.
        """
        empty = np.zeros((0, self.channels), np.int16)
        if not data:
            # An empty packet would put the FFmpeg decoder into drain mode.
            return empty
        try:
            chunks = [_from_frame(f) for f in self._ctx.decode(av.Packet(data))]
        except (av.FFmpegError, ValueError) as exc:
            logger.debug(
                "%s decoder: dropping a packet of %d bytes: %s", self._codec, len(data), exc
            )
            return empty
        if not chunks:
            return empty
        pcm = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        if pcm.shape[1] != self.channels:
            # Decoders that ignore the requested layout give the coded count,
            # which for 1 or 2 requested channels is a mono<->stereo remix.
            pcm = _remix(pcm, self.channels)
        return pcm
