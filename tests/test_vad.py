"""Voice activity detection (:class:`hibiki.VAD`, compat ``SoraVAD``) on real speech.

The speech is synthesized at test time with ``espeak-ng`` (a WAV in
``tmp_path``), so nothing is downloaded and the words are known. It is fed
in 10 and 20 ms chunks at 16 and 48 kHz, between stretches of silence, and
white and pink noise check that loud non-speech is not taken for speech.
"""

from __future__ import annotations

import pickle
import threading

import hibiki
import hibiki.compat.sora_sdk as compat
import numpy as np
import numpy.typing as npt
import pytest
from conftest import espeak_speech
from hibiki.media import AudioConverter

SENTENCE = ("Hello, this is a test of the voice activity detector. "
            "The quick brown fox jumps over the lazy dog, and then it runs away.")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[npt.NDArray[np.int16], int]:
    """espeak-ng's reading of SENTENCE: (int16 [samples, 1], its sample rate)."""
    pcm, rate = espeak_speech(SENTENCE, tmp_path_factory.mktemp("vad") / "speech.wav")
    assert len(pcm) > 3 * rate, "espeak-ng made less than 3 s of speech"
    return pcm, rate


def at_rate(pcm: npt.NDArray[np.int16], rate: int, out_rate: int, channels: int = 1) -> npt.NDArray[np.int16]:
    return AudioConverter(rate, pcm.shape[1], out_rate, channels).convert(pcm)


def chunked(vad: hibiki.VAD, pcm: npt.NDArray[np.int16], rate: int, ms: int) -> npt.NDArray[np.float64]:
    """The probability returned for each ``ms`` chunk of ``pcm``."""
    step = rate * ms // 1000
    return np.array([vad.analyze(pcm[i:i + step], rate) for i in range(0, len(pcm) - step + 1, step)])


def pink_noise(seconds: float, rate: int, seed: int) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum = (rng.standard_normal(len(freqs)) + 1j * rng.standard_normal(len(freqs))) / np.sqrt(np.maximum(freqs, 20))
    x = np.fft.irfft(spectrum, n)
    return np.asarray(x / np.abs(x).max() * 12_000, dtype=np.int16)[:, None]


@pytest.mark.parametrize("rate", [16_000, 48_000])
@pytest.mark.parametrize("ms", [10, 20])
def test_speech_is_high_and_silence_low(speech: tuple[npt.NDArray[np.int16], int], rate: int, ms: int) -> None:
    pcm, wav_rate = speech
    voice = at_rate(pcm, wav_rate, rate)
    silence = np.zeros((rate, 1), np.int16)
    vad = hibiki.VAD()
    probs = chunked(vad, np.concatenate([silence, voice, silence]), rate, ms)
    per_s = 1000 // ms
    lead, talk, tail = probs[:per_s], probs[per_s:per_s + len(voice) * per_s // rate], probs[-per_s:]
    assert lead.max() < 0.2, lead.max()
    # Speech has pauses between words; most of it must still score high.
    assert (talk > 0.5).mean() > 0.6, (talk > 0.5).mean()
    assert np.median(talk) > 0.8
    # After a short hangover (the model's memory) the trailing silence scores low.
    assert (tail[per_s // 3:] < 0.2).all(), tail
    assert vad.windows == len(probs) * ms * 16 // 512  # every complete 32 ms window at 16 kHz was analyzed


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_is_not_speech(kind: str) -> None:
    rate = 48_000
    if kind == "white":
        noise = np.asarray(np.random.default_rng(3).standard_normal(3 * rate) * 4_000, dtype=np.int16)[:, None]
    else:
        noise = pink_noise(3.0, rate, seed=4)
    assert -30 < 20 * np.log10(np.sqrt(np.mean(noise.astype(float) ** 2)) / 32768)  # loud, not near-silence
    probs = chunked(hibiki.VAD(), noise, rate, 10)
    assert (probs < 0.2).mean() > 0.9, (probs < 0.2).mean()


def test_frames_of_any_format_and_float_input(speech: tuple[npt.NDArray[np.int16], int]) -> None:
    pcm, wav_rate = speech
    stereo = at_rate(pcm, wav_rate, 44_100, channels=2)
    vad = hibiki.VAD()
    step = 441  # 10 ms
    probs = [vad.analyze(hibiki.AudioFrame(stereo[i:i + step], 44_100, 0, 0.0))
             for i in range(0, len(stereo) - step + 1, step)]
    assert np.median(probs) > 0.8
    assert vad.probability == probs[-1]
    # The same audio as float in -1..1, 1-D mono, gives the same numbers.
    mono16 = at_rate(pcm, wav_rate, 16_000)
    as_int = chunked(hibiki.VAD(), mono16, 16_000, 20)
    fvad = hibiki.VAD()
    as_float = [fvad.analyze(mono16[i:i + 320, 0].astype(np.float32) / 32767.0, 16_000)
                for i in range(0, len(mono16) - 319, 320)]
    assert np.allclose(as_int, as_float, atol=0.02)
    with pytest.raises(ValueError, match="sample_rate"):
        vad.analyze(mono16)
    with pytest.raises(ValueError, match="int16 or float"):
        vad.analyze(mono16.astype(np.int32), 16_000)
    vad.reset()
    assert vad.probability == 0.0 and vad.analyze(np.zeros((100, 1), np.int16), 16_000) == 0.0


def test_one_vad_from_several_threads_does_not_break(speech: tuple[npt.NDArray[np.int16], int]) -> None:
    pcm, wav_rate = speech
    voice = at_rate(pcm, wav_rate, 16_000)
    vad = hibiki.VAD()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(0, 16_000, 160):
                p = vad.analyze(voice[i:i + 160], 16_000)
                assert 0.0 <= p <= 1.0
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and vad.windows == 4 * 16_000 // 512


def test_compat_sora_vad_and_frames(speech: tuple[npt.NDArray[np.int16], int]) -> None:
    """SoraVAD takes SoraAudioFrames (as sora-sdk) and gives hibiki.VAD's numbers."""
    pcm, wav_rate = speech
    voice = at_rate(pcm, wav_rate, 48_000)
    sora_vad, vad = compat.SoraVAD(), hibiki.VAD()
    ours, theirs = [], []
    for i in range(0, len(voice) - 479, 480):
        frame = compat.SoraAudioFrame._create(voice[i:i + 480], 48_000)
        frame = pickle.loads(pickle.dumps(frame))  # what a worker process would get
        theirs.append(sora_vad.analyze(frame))
        ours.append(vad.analyze(voice[i:i + 480], 48_000))
    assert theirs == ours and np.median(theirs) > 0.8
    assert isinstance(sora_vad.hibiki_vad, hibiki.VAD)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        sora_vad.analyze(voice[:480])  # type: ignore[arg-type]


def test_wav_fixture_is_real_speech_not_silence(speech: tuple[npt.NDArray[np.int16], int]) -> None:
    pcm, _ = speech
    assert np.abs(pcm).max() > 5_000  # guards the speech tests against an empty synthesis
