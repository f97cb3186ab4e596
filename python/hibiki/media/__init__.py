"""Media for Hibiki: codecs through PyAV (FFmpeg) and test signals.

Video frames are BGR ``uint8`` numpy arrays of shape ``(height, width, 3)``;
audio is ``int16`` numpy of shape ``(samples, channels)``. Encoders turn them
into :class:`EncodedFrame` s stamped in the RTP clock, ready for the engine,
and decoders turn received frames back into numpy.
"""

from .adaptation import DegradationPreference, VideoAdapter
from .audio import (
    OPUS_FRAME_DURATIONS,
    AudioConverter,
    AudioDecoder,
    AudioEncoder,
    opus_encoder_settings,
)
from .codecs import CodecPreference, Implementation, probe
from .frames import AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE, EncodedFrame
from .testsrc import (
    dominant_frequency,
    level_dbfs,
    pattern_intact,
    read_counter,
    test_pattern,
    tone,
)
from .vad import VAD
from .video import CodecUnavailable, DecodedPicture, VideoDecoder, VideoEncoder

__all__ = [
    "AUDIO_CLOCK_RATE",
    "OPUS_FRAME_DURATIONS",
    "VAD",
    "VIDEO_CLOCK_RATE",
    "AudioConverter",
    "AudioDecoder",
    "AudioEncoder",
    "CodecPreference",
    "CodecUnavailable",
    "DecodedPicture",
    "DegradationPreference",
    "EncodedFrame",
    "Implementation",
    "VideoAdapter",
    "VideoDecoder",
    "VideoEncoder",
    "dominant_frequency",
    "level_dbfs",
    "opus_encoder_settings",
    "pattern_intact",
    "probe",
    "read_counter",
    "test_pattern",
    "tone",
]
