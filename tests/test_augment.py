"""Signal and spectrogram augmentations: behaviour on synthetic probes and real speech,
checked against independent references (librosa, torchaudio, scipy)."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import soxr
import torch
import torchaudio

from core.augment import (
    SIGNAL_AUGMENTATIONS,
    SPEC_AUGMENTATIONS,
    build_signal_pipeline,
    build_spec_pipeline,
)
from core.augment_signal import FADE_SHAPES, apply_fade, colored_noise, fade_in_gain
from core.config import AugmentConfig, ConfigError, ExperimentConfig
from core.vocoder import pitch_shift_batch, semitone_ratio, time_stretch_batch

SR = 16_000
# Fixed-setting variants apply the same transform to every clip (no random parameter), so
# identical clips stay identical under them.
DETERMINISTIC_CODES = {"TST0.8", "TST1.2", "PS+2", "PS-2"}
# QUACLRS's two-setting codes: one of two fixed transforms per clip.
FEW_SETTINGS_CODES = {"TSTQ", "PSQ"}


@pytest.fixture(scope="session")
def speech(fsdd_root: Path) -> torch.Tensor:
    """Six real FSDD recordings at 16 kHz, right-padded / clipped to 0.75 s, (6, 12000)."""
    files = sorted((fsdd_root / "recordings").glob("*.wav"))[::500][:6]
    clips = []
    for path in files:
        audio, rate = sf.read(path, dtype="float32")
        audio = soxr.resample(audio, rate, SR)
        clips.append(librosa.util.fix_length(audio, size=12_000))
    return torch.tensor(np.stack(clips))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_frequency(y: np.ndarray) -> float:
    """Spectral peak of the middle half, refined by parabolic interpolation on log power."""
    middle = y[len(y) // 4 : 3 * len(y) // 4]
    window = np.hanning(len(middle))
    spectrum = np.abs(np.fft.rfft(middle * window, n=8 * len(middle))) + 1e-12
    k = int(np.argmax(spectrum))
    a, b, c = np.log(spectrum[k - 1 : k + 2])
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + shift) * SR / (8 * len(middle))


# --- the contract every signal augmentation keeps ---------------------------------------
@pytest.mark.parametrize("code", sorted(SIGNAL_AUGMENTATIONS))
def test_shape_dtype_determinism_and_per_sample_parameters(code: str, speech: torch.Tensor):
    augment = SIGNAL_AUGMENTATIONS[code]
    cfg = AugmentConfig()
    out = augment(speech, _gen(3), cfg, SR)
    assert out.shape == speech.shape and out.dtype == speech.dtype
    assert out.device == speech.device and torch.isfinite(out).all()
    assert not torch.equal(out, speech), f"{code} left the batch unchanged"
    assert torch.equal(out, augment(speech, _gen(3), cfg, SR)), "not reproducible by seed"
    # The same clip repeated: per-sample random parameters must make the copies differ.
    # PS draws from 31 integers, so a pair may coincide: ask for most, not all, distinct.
    same = speech[:1].repeat(6, 1)
    copies = augment(same, _gen(5), cfg, SR)
    distinct = {tuple(row[::97].tolist()) for row in copies}
    if code in DETERMINISTIC_CODES:
        assert len(distinct) == 1
    elif code in FEW_SETTINGS_CODES:
        assert len(distinct) == 2, f"{code} draws one of two settings per clip"
    else:
        assert len(distinct) >= 5, f"{code} drew the same parameters for several samples"


def test_half_precision_input_keeps_dtype(speech: torch.Tensor):
    cfg = AugmentConfig()
    for code in ("FD", "TM", "WN", "PS", "TST"):
        out = SIGNAL_AUGMENTATIONS[code](speech[:2].half(), _gen(), cfg, SR)
        assert out.dtype == torch.float16 and torch.isfinite(out).all(), code


# --- PS -----------------------------------------------------------------------------------
@pytest.mark.parametrize("semitones", [-15, -7, 3, 12, 15])
def test_pitch_shift_moves_a_tone_by_the_semitone_ratio(semitones: int):
    tone = torch.tensor(_tone(440.0))[None]
    out = pitch_shift_batch(tone, torch.tensor([semitones]))[0].numpy()
    assert out.shape == (SR,)
    expected = 440.0 * 2 ** (semitones / 12)
    assert abs(_peak_frequency(out) / expected - 1) < 0.01
    # Duration kept: the tone still fills the clip (energy in the last quarter, away from
    # the edge frames, is like the first quarter's).
    quarter = SR // 4
    head = np.sqrt(np.mean(out[quarter // 2 : quarter] ** 2))
    tail = np.sqrt(np.mean(out[-quarter : -quarter // 2] ** 2))
    assert 0.7 < tail / head < 1.4


def test_semitone_ratios_are_within_four_cents():
    for semitones in range(-15, 16):
        p, q = semitone_ratio(semitones)
        cents = 1200 * math.log2(p / q) - 100 * semitones
        assert abs(cents) < 4 and max(p, q) <= 64


def _log_mel(y: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=512, hop_length=128, n_mels=64)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-8, top_db=None)


@pytest.mark.parametrize("semitones", [-15, -2, 2, 15])
def test_pitch_shift_matches_librosa_on_speech(semitones: int, speech: torch.Tensor):
    """Spectral-envelope correlation with librosa's pitch_shift on real speech.

    Ours rounds the ratio to small integers (<= 3.8 cents) and low-passes with a Kaiser
    sinc instead of soxr, which changes fine detail only; the log-mel envelopes correlate
    above 0.95, whereas being off by three semitones falls clearly below the correct shift.
    """
    clips = speech[:3].numpy()
    ours = pitch_shift_batch(speech[:3], torch.full((3,), semitones)).numpy()
    for clip, shifted in zip(clips, ours, strict=True):
        reference = librosa.effects.pitch_shift(clip, sr=SR, n_steps=semitones)
        reference = librosa.util.fix_length(reference, size=len(clip))
        wrong = librosa.effects.pitch_shift(clip, sr=SR, n_steps=semitones - 3)
        ref_env, wrong_env, our_env = _log_mel(reference), _log_mel(wrong), _log_mel(shifted)
        right = np.corrcoef(our_env.ravel(), ref_env.ravel())[0, 1]
        off = np.corrcoef(our_env.ravel(), wrong_env[:, : our_env.shape[1]].ravel())[0, 1]
        assert right > 0.95 and right > off + 0.02, (right, off)


# --- TST ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.6, 0.8, 1.25, 1.5])
def test_time_stretch_equals_librosa(rate: float, speech: torch.Tensor):
    """Same phase vocoder as librosa (n_fft 2048, hop 512): equal to float32 rounding."""
    ours = time_stretch_batch(speech[:3], torch.full((3,), rate)).numpy()
    for clip, stretched in zip(speech[:3].numpy(), ours, strict=True):
        reference = librosa.effects.time_stretch(clip, rate=rate)
        reference = librosa.util.fix_length(reference, size=len(clip))
        assert np.linalg.norm(stretched - reference) <= 1e-3 * np.linalg.norm(reference)


def test_time_stretch_per_sample_rates_match_single_rate_runs(speech: torch.Tensor):
    rates = torch.tensor([0.5, 0.9, 1.1, 1.5])
    together = time_stretch_batch(speech[:4], rates)
    for i in range(4):
        alone = time_stretch_batch(speech[i : i + 1], rates[i : i + 1])[0]
        torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=0)


def _burst_train(length: int, period: int, burst: int = 2400) -> np.ndarray:
    """A train of Hann-gated 1 kHz bursts every ``period`` samples over a faint carrier.

    Bursts are 150 ms: a phase vocoder with a 128 ms window (librosa's as well as ours)
    smears anything shorter, and single-sample clicks come out with random phase, some of
    them cancelled. The continuous faint carrier keeps the phase defined between bursts.
    """
    gate = np.full(length, 0.02)
    for start in range(1000, length - burst, period):
        gate[start : start + burst] += np.hanning(burst)
    return (gate * np.sin(2 * np.pi * 1000 * np.arange(length) / SR)).astype(np.float32)


@pytest.mark.parametrize("rate", [0.7, 1.4])
def test_time_stretch_scales_burst_spacing_and_keeps_tone_pitch(rate: float):
    period, length = 8000, 3 * SR
    train = torch.tensor(_burst_train(length, period))[None]
    stretched = time_stretch_batch(train, torch.tensor([rate]))[0].numpy()
    energy = np.convolve(stretched**2, np.hanning(1024), mode="same")
    valid = min(length, round(length / rate)) - 1024
    peaks, _ = scipy.signal.find_peaks(
        energy[:valid], distance=0.6 * period / rate, height=0.2 * energy.max()
    )
    assert len(peaks) >= 3
    spacing = np.polyfit(np.arange(len(peaks)), peaks, 1)[0]
    assert abs(spacing / (period / rate) - 1) < 0.03
    tone = time_stretch_batch(torch.tensor(_tone(523.25))[None], torch.tensor([rate]))[0]
    valid_tone = tone.numpy()[: min(SR, round(SR / rate))]
    assert abs(_peak_frequency(valid_tone) / 523.25 - 1) < 0.01


# --- FD -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape_index", range(3))
@pytest.mark.parametrize(("fade_in", "fade_out"), [(0, 4000), (1, 1), (2500, 0), (4000, 3999)])
def test_fade_equals_torchaudio(shape_index: int, fade_in: int, fade_out: int):
    x = torch.randn(1, 8000, generator=_gen())
    reference = torchaudio.transforms.Fade(fade_in, fade_out, FADE_SHAPES[shape_index])(x)
    ours = apply_fade(
        x, torch.tensor([fade_in]), torch.tensor([fade_out]), torch.tensor([shape_index])
    )
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_batched_fade_equals_torchaudio_clip_by_clip():
    """A batch mixing shapes and lengths, so the CPU path's (shape, length) groups
    (several per shape, clips without a fade left out) all meet torchaudio's Fade."""
    clips, length = 96, 4000
    generator = _gen(5)
    x = torch.randn(clips, length, generator=generator)
    fade_in = torch.randint(0, length // 2 + 1, (clips,), generator=generator)
    fade_out = torch.randint(0, length // 2 + 1, (clips,), generator=generator)
    fade_in[:4], fade_out[4:8] = 0, 1
    shape = torch.randint(0, 3, (clips,), generator=generator)
    ours = apply_fade(x, fade_in, fade_out, shape)
    for clip in range(clips):
        fader = torchaudio.transforms.Fade(
            int(fade_in[clip]), int(fade_out[clip]), FADE_SHAPES[int(shape[clip])]
        )
        torch.testing.assert_close(ours[clip], fader(x[clip]), atol=1e-6, rtol=1e-5)


def test_whole_batch_fade_gain_equals_the_per_shape_gain():
    """The accelerator path computes all three curves and picks one per clip with
    ``where``; on CPU each group computes its own: both must give the same gains."""
    generator = _gen(6)
    lengths = torch.randint(0, 501, (30,), generator=generator)
    shape = torch.arange(30) % 3
    for descending in (False, True):
        together = fade_in_gain(500, lengths, shape, descending)
        for clip in range(30):
            alone = fade_in_gain(500, lengths[clip : clip + 1], int(shape[clip]), descending)
            torch.testing.assert_close(together[clip], alone[0], atol=1e-7, rtol=1e-6)


def test_fade_lengths_stay_within_half_the_clip(speech: torch.Tensor):
    ones = torch.ones(64, 1000)
    out = SIGNAL_AUGMENTATIONS["FD"](ones, _gen(1), AugmentConfig(), SR)
    assert torch.all(out[:, 499:501] > 0.99), "a fade reached past the middle"
    assert torch.all(out <= 1.0) and torch.all(out >= 0.0)


# --- WN / MN ------------------------------------------------------------------------------
def _measured_snr(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    noise = noisy.double() - clean.double()
    return 10 * torch.log10(clean.double().pow(2).mean(-1) / noise.pow(2).mean(-1))


@pytest.mark.parametrize("code", ["WN", "MN"])
@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_noise_reaches_the_requested_snr(code: str, snr: float, speech: torch.Tensor):
    cfg = AugmentConfig(snr_db=(snr, snr))
    noisy = SIGNAL_AUGMENTATIONS[code](speech, _gen(2), cfg, SR)
    assert torch.all((_measured_snr(speech, noisy) - snr).abs() < 0.5)


def test_drawn_snr_lies_in_range_and_fixed_variants_hit_their_value(speech: torch.Tensor):
    cfg = AugmentConfig(snr_db=(3.0, 9.0))
    measured = _measured_snr(speech, SIGNAL_AUGMENTATIONS["WN"](speech, _gen(), cfg, SR))
    assert torch.all(measured > 2.5) and torch.all(measured < 9.5) and measured.std() > 0.1
    for code, value in (("WN5", 5.0), ("WN15", 15.0)):
        noisy = SIGNAL_AUGMENTATIONS[code](speech, _gen(), AugmentConfig(), SR)
        assert torch.all((_measured_snr(speech, noisy) - value).abs() < 0.5)


@pytest.mark.parametrize(("exponent", "slope"), [(0, 0.0), (1, -3.01), (2, -6.02)])
def test_colored_noise_slope_per_octave(exponent: int, slope: float):
    noise = colored_noise(8, 2**15, torch.full((8,), exponent), _gen(), torch.device("cpu"))
    freqs, psd = scipy.signal.welch(noise.numpy(), fs=SR, nperseg=2048, axis=-1)
    band = (freqs >= 100) & (freqs <= 6000)
    fitted = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd.mean(0)[band]), 1)[0]
    assert abs(fitted - slope) < 1.0


def test_mixed_noise_keeps_the_signs_of_the_signal(speech: torch.Tensor):
    noisy = SIGNAL_AUGMENTATIONS["MN"](speech, _gen(), AugmentConfig(snr_db=(20, 20)), SR)
    assert noisy.min() < -0.01 and noisy.max() > 0.01


# --- TM / TS / MIX ------------------------------------------------------------------------
def test_time_mask_is_one_segment_of_at_most_an_eighth():
    x = torch.rand(64, 4000, generator=_gen()) + 1.0  # never 0, so zeros mark the mask
    out = SIGNAL_AUGMENTATIONS["TM"](x, _gen(4), AugmentConfig(mask_fill="constant"), SR)
    masked = out == 0
    lengths = masked.sum(-1)
    assert lengths.max() <= 4000 // 8 and lengths.float().std() > 0
    for row in masked:
        where = torch.nonzero(row).squeeze(1)
        if where.numel():
            assert where[-1] - where[0] + 1 == where.numel(), "mask is not contiguous"
    torch.testing.assert_close(out[~masked], x[~masked])


def test_time_mask_noise_fill_has_the_clip_level(speech: torch.Tensor):
    x = speech.repeat(8, 1)
    out = SIGNAL_AUGMENTATIONS["TM"](x, _gen(), AugmentConfig(mask_fill="noise"), SR)
    changed = out != x
    assert changed.any()
    ratio = out[changed].pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
    assert 0.5 < ratio < 2.0


def test_time_shift_is_a_circular_roll_of_at_most_half():
    x = torch.randn(16, 1001, generator=_gen())
    out = SIGNAL_AUGMENTATIONS["TS"](x, _gen(6), AugmentConfig(), SR)
    shifts = []
    for row_in, row_out in zip(x, out, strict=True):
        torch.testing.assert_close(row_out.sort().values, row_in.sort().values)
        matches = [s for s in range(-500, 501) if torch.equal(torch.roll(row_in, s), row_out)]
        assert len(matches) == 1
        shifts.append(matches[0])
    assert len(set(shifts)) > 8 and min(shifts) < 0 < max(shifts)


def test_mixup_mixes_with_another_clip_below_half(speech: torch.Tensor):
    out = SIGNAL_AUGMENTATIONS["MIX"](speech, _gen(), AugmentConfig(mix_max=0.4), SR)
    # out_i = (1 - w) x_i + w x_j: least squares on (x_i, x_j) over every j != i recovers it.
    for i in range(len(speech)):
        fits = []
        for j in range(len(speech)):
            if j != i:
                basis = torch.stack([speech[i], speech[j]], 1).double()
                coef = torch.linalg.lstsq(basis, out[i].double()[:, None]).solution[:, 0]
                residual = (basis @ coef - out[i].double()).norm()
                fits.append((residual.item(), coef.tolist()))
        residual, (keep, weight) = min(fits)
        assert residual < 1e-4 and 0 <= weight <= 0.4 and abs(keep + weight - 1) < 1e-4
    assert torch.equal(
        SIGNAL_AUGMENTATIONS["MIX"](speech, _gen(), AugmentConfig(mix_max=0), SR), speech
    )


# --- spectrogram augmentations -------------------------------------------------------------
def test_spec_augment_masks_at_most_two_bands_of_twenty():
    x = torch.randn(8, 3, 128, 100, generator=_gen())
    out = SPEC_AUGMENTATIONS["SA"](x, _gen(), AugmentConfig())
    changed = (out != x).any(dim=1)  # same mask on every channel
    assert torch.equal((out != x)[:, 0], changed)
    freq_rows = changed.all(dim=2).sum(-1)  # fully masked frequency rows
    time_cols = changed.all(dim=1).sum(-1)
    assert torch.all(freq_rows <= 40) and torch.all(time_cols <= 40)
    assert freq_rows.sum() > 0 and time_cols.sum() > 0
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(out[(out != x)], mean[(out != x)])


def test_patch_augment_copies_five_patches_from_the_same_clip():
    x = torch.randn(4, 2, 64, 50, generator=_gen())
    out = SPEC_AUGMENTATIONS["PA"](x, _gen(), AugmentConfig())
    for clip_in, clip_out in zip(x, out, strict=True):
        changed = (clip_out != clip_in).any(0)
        assert 0 < changed.sum() <= 5 * 100
        values = set(clip_in[0].flatten().tolist())
        assert set(clip_out[0][changed].tolist()) <= values


# --- pipelines and config ------------------------------------------------------------------
def test_pipeline_order_shape_and_probability(speech: torch.Tensor):
    cfg = AugmentConfig(pipeline=["FD", "TM"])
    pipeline = build_signal_pipeline(cfg, SR)
    batch = speech[:, None]  # (B, 1, T)
    out = pipeline(batch, _gen(8))
    assert out.shape == batch.shape
    expected = SIGNAL_AUGMENTATIONS["TM"](
        SIGNAL_AUGMENTATIONS["FD"](speech, (g := _gen(8)), cfg, SR), g, cfg, SR
    )
    torch.testing.assert_close(out[:, 0], expected)
    never = build_signal_pipeline(AugmentConfig(pipeline=["PS", "WN"], probability=0.0), SR)
    assert torch.equal(never(speech, _gen()), speech)
    many = speech[:1].repeat(40, 1)
    half = build_signal_pipeline(AugmentConfig(pipeline=["WN"], probability=0.5), SR)
    untouched = (half(many, _gen()) == many).all(-1).sum()
    assert 8 < untouched < 32


def test_spec_pipeline_runs_in_order():
    x = torch.randn(4, 3, 128, 60, generator=_gen())
    pipeline = build_spec_pipeline(AugmentConfig(spec_pipeline=["PA", "SA"]))
    out = pipeline(x, _gen(1))
    g = _gen(1)
    expected = SPEC_AUGMENTATIONS["SA"](
        SPEC_AUGMENTATIONS["PA"](x, g, AugmentConfig()), g, AugmentConfig()
    )
    torch.testing.assert_close(out, expected)


def test_unknown_codes_are_rejected_with_the_valid_ones_named():
    with pytest.raises(ConfigError, match=r"augment\.pipeline.*'XX'.*TST0\.8"):
        ExperimentConfig.from_dict({"augment": {"pipeline": ["FD", "XX"]}})
    with pytest.raises(ConfigError, match="stretch_rates"):
        ExperimentConfig.from_dict({"augment": {"stretch_rates": [1.5, 0.5]}})


# --- TSTQ / PSQ / WNQ: QUACLRS's settings drawn per clip ---------------------------------
@pytest.mark.parametrize(
    ("code", "settings"), [("TSTQ", ("TST0.8", "TST1.2")), ("PSQ", ("PS+2", "PS-2"))]
)
def test_quaclrs_choice_codes_apply_exactly_one_of_quaclrs_settings_per_clip(
    code: str, settings: tuple[str, str], speech: torch.Tensor
):
    """Each clip gets QUACLRS 4.5's transform at one of its two settings, never CLAR's
    ranges: row by row the output equals one of the two fixed codes' outputs."""
    cfg = AugmentConfig()
    out = SIGNAL_AUGMENTATIONS[code](speech, _gen(4), cfg, SR)
    fixed = [SIGNAL_AUGMENTATIONS[name](speech, _gen(0), cfg, SR) for name in settings]
    used = set()
    for row in range(speech.shape[0]):
        matches = [i for i, ref in enumerate(fixed) if torch.allclose(out[row], ref[row], atol=1e-5)]
        assert len(matches) == 1, f"{code} row {row} is neither {settings[0]} nor {settings[1]}"
        used.add(matches[0])
    assert used == {0, 1}, f"{code} drew only one of its settings over six clips"


def test_quaclrs_noise_is_at_5_or_15_db(speech: torch.Tensor):
    out = SIGNAL_AUGMENTATIONS["WNQ"](speech, _gen(7), AugmentConfig(), SR)
    noise = out - speech
    snr = 10 * torch.log10(speech.pow(2).mean(dim=1) / noise.pow(2).mean(dim=1))
    nearest = torch.where((snr - 5).abs() < (snr - 15).abs(), 5.0, 15.0)
    assert torch.allclose(snr, nearest, atol=0.5) and set(nearest.tolist()) == {5.0, 15.0}
