"""core.audio: decoding every supported format/rate/width, resampling, length fitting, bad files."""

from __future__ import annotations

import io
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile

from core.audio import AudioDecodeError, fit_length, load_clip, read_audio, resample, to_mono


def tone(frequency: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    time = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def peak_hz(clip: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(clip * np.hanning(clip.size)))
    return float(np.fft.rfftfreq(clip.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("rate", "container", "subtype", "channels"),
    [
        (8_000, "WAV", "PCM_16", 1),
        (22_050, "WAV", "PCM_24", 2),
        (44_100, "WAV", "FLOAT", 2),
        (48_000, "WAV", "PCM_32", 1),
        (44_100, "FLAC", "PCM_24", 2),
        (22_050, "OGG", "VORBIS", 1),
    ],
)
def test_formats_rates_widths_and_channels_decode_to_the_target(
    tmp_path: Path, rate: int, container: str, subtype: str, channels: int
) -> None:
    signal = tone(440.0, rate, 0.5)
    # Left channel carries the tone, right is silent: the mono mix must halve it.
    data = np.stack([signal, np.zeros_like(signal)], axis=1) if channels == 2 else signal
    path = tmp_path / f"clip.{container.lower()}"
    soundfile.write(path, data, rate, format=container, subtype=subtype)

    clip = load_clip(path, sample_rate=16_000, clip_samples=16_000)

    assert clip.shape == (16_000,) and clip.dtype == np.float32
    assert abs(peak_hz(clip[:8_000], 16_000) - 440.0) < 5.0
    expected_peak = 0.25 if channels == 2 else 0.5
    assert np.abs(clip[:7_000]).max() == pytest.approx(expected_peak, rel=0.05)
    assert np.all(clip[8_200:] == 0)  # 0.5 s of audio, then zero padding


def test_mp3_where_libsndfile_supports_it(tmp_path: Path) -> None:
    if "MP3" not in soundfile.available_formats():
        pytest.skip(f"this libsndfile ({soundfile.__libsndfile_version__}) has no MP3 support")
    path = tmp_path / "clip.mp3"
    soundfile.write(path, tone(1_000.0, 44_100, 0.5), 44_100, format="MP3")
    clip = load_clip(path, 16_000, 16_000)
    assert abs(peak_hz(clip[:8_000], 16_000) - 1_000.0) < 10.0


def test_resample_matches_an_independent_resampler() -> None:
    """soxr against librosa's polyphase (scipy) resampler on a broadband signal.

    The signal spans 100 Hz - 7 kHz, inside both filters' passband (their transition bands
    near the 8 kHz Nyquist differ by design).
    """
    rng = np.random.default_rng(0)
    time = np.arange(44_100) / 44_100
    frequencies = rng.uniform(100, 7_000, size=40)
    phases = rng.uniform(0, 2 * np.pi, size=40)
    source = (0.02 * np.sin(2 * np.pi * frequencies[:, None] * time + phases[:, None])).sum(0)
    source = source.astype(np.float32)
    ours = resample(source, 44_100, 16_000)
    reference = librosa.resample(source, orig_sr=44_100, target_sr=16_000, res_type="polyphase")
    assert ours.shape == reference.shape == (16_000,)
    inner = slice(200, -200)  # the two filters differ in their edge handling
    error = np.linalg.norm(ours[inner] - reference[inner]) / np.linalg.norm(reference[inner])
    assert error < 0.01
    assert resample(source, 16_000, 16_000) is source
    with pytest.raises(ValueError, match="positive"):
        resample(source, 0, 16_000)


def test_fit_length_right_and_center() -> None:
    clip = np.arange(10, dtype=np.float32)
    assert fit_length(clip, 4).tolist() == [0, 1, 2, 3]
    assert fit_length(clip, 4, crop="center").tolist() == [3, 4, 5, 6]
    assert fit_length(clip, 13, crop="center").tolist() == list(range(10)) + [0, 0, 0]
    assert fit_length(clip, 10) is clip
    with pytest.raises(ValueError, match="crop"):
        fit_length(clip, 4, crop="left")  # type: ignore[arg-type]
    assert to_mono(np.ones((5, 2), np.float32) * [1, 3]).tolist() == [2.0] * 5


def _wav_bytes(signal: np.ndarray, rate: int = 8_000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, signal, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def test_bad_files_raise_a_decode_error_with_the_reason(tmp_path: Path) -> None:
    whole = _wav_bytes(tone(300, 8_000, 0.5))
    cases = {
        "empty.wav": (b"", "empty"),
        "truncated.wav": (whole[: len(whole) // 2], "truncated"),
        "garbage.wav": (b"this is not audio at all" * 20, "cannot decode"),
        "nan.wav": (
            _wav_bytes(np.array([0.1, np.nan, 0.2] * 100, np.float32), subtype="FLOAT"),
            "NaN",
        ),
        "inf.wav": (_wav_bytes(np.array([0.1, np.inf] * 100, np.float32), subtype="FLOAT"), "Inf"),
        "silent-header.wav": (_wav_bytes(np.zeros(0, np.float32)), "0 samples"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AudioDecodeError, match=reason) as caught:
            read_audio(path)
        assert name in str(caught.value)
    audio, rate = read_audio(whole)  # bytes work too, and a whole file decodes
    assert rate == 8_000 and audio.shape == (4_000, 1)
