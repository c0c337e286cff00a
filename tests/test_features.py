"""Front ends against torch.stft and librosa, on real FSDD speech."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from core.config import ConfigError, ExperimentConfig, FrontendConfig
from core.features import FRONTENDS, build_frontend, check_frontend_rate

SR = 16_000


@pytest.fixture(scope="session")
def speech16k(fsdd_root: Path) -> torch.Tensor:
    """Four real recordings at 16 kHz, padded / clipped to 1 s: (4, 16000)."""
    files = sorted((fsdd_root / "recordings").glob("*.wav"))[7::700][:4]
    clips = []
    for path in files:
        audio, rate = sf.read(path, dtype="float32")
        clips.append(librosa.util.fix_length(soxr.resample(audio, rate, SR), size=SR))
    return torch.tensor(np.stack(clips))


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).norm() / reference.double().norm())


def test_registry_names():
    assert set(FRONTENDS) == {"raw1d", "stft3", "mel"}


def test_raw1d_passes_audio_through(speech16k: torch.Tensor):
    frontend = build_frontend(FrontendConfig(name="raw1d"), SR)
    out = frontend(speech16k)
    assert frontend.out_channels == 1 and out.shape == (4, 1, SR)
    assert torch.equal(out[:, 0], speech16k)


@pytest.mark.parametrize("backend", ["conv", "fft"])
def test_stft3_paper_channels_match_torch_stft(backend: str, speech16k: torch.Tensor):
    """Channel 0 is 10 log10 |STFT|^2 and channel 2 the phase of torch.stft's periodic-Hann
    STFT (16 ms / 8 ms at 16 kHz, reflect-padded like nnAudio), 128 lowest bins, whether
    computed with nnAudio's convolution kernels or by FFT."""
    cfg = FrontendConfig(name="stft3", setting="paper", stft_backend=backend)
    frontend = build_frontend(cfg, SR)
    out = frontend(speech16k)
    assert frontend.out_channels == 3
    reference = torch.stft(
        speech16k.double(),
        256,
        hop_length=128,
        window=torch.hann_window(256, dtype=torch.float64),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )[:, :128]
    assert out.shape == (4, 3, 128, reference.shape[-1])
    magnitude = torch.sqrt(10 ** (out[:, 0].double() / 10))
    audible = reference.abs() > 1e-4  # below, the log floor of 1e-10 in power decides
    assert _relative_error(magnitude[audible], reference.abs()[audible]) < 1e-4
    strong = reference.abs() > 1e-2 * reference.abs().amax()
    phase_error = torch.angle(torch.exp(1j * (out[:, 2].double() - reference.angle())))
    assert phase_error[strong].abs().max() < 1e-3


@pytest.mark.filterwarnings("ignore:Empty filters detected")  # CLAR's 128 mels over 129 bins
def test_stft3_mel_channel_matches_librosa(speech16k: torch.Tensor):
    """Channel 1 against librosa's melspectrogram with the same parameters.

    Both are power mel spectrograms of a Slaney-normalised filterbank; ours comes from a
    float32 convolutional STFT, librosa's from a float64 FFT, whose powers agree to ~1e-5
    relative, so 1e-3 on the mel power (2e-4 on dB) leaves a margin of two orders while a
    wrong window, hop, padding or mel formula fails by far more.
    """
    frontend = build_frontend(FrontendConfig(name="stft3", stft_backend="conv"), SR)
    mel_db = frontend(speech16k)[:, 1]
    for clip, ours in zip(speech16k.numpy(), mel_db, strict=True):
        reference = librosa.feature.melspectrogram(
            y=clip.astype(np.float64),
            sr=SR,
            n_fft=256,
            hop_length=128,
            window="hann",
            center=True,
            pad_mode="reflect",
            power=2.0,
            n_mels=128,
            fmin=0.0,
            fmax=SR / 2,
        )
        power = 10 ** (ours.double() / 10)
        audible = torch.tensor(reference > 1e-8)
        assert _relative_error(power[audible], torch.tensor(reference)[audible]) < 1e-3


def test_quaclrs_log_mel_at_48k_matches_librosa(speech16k: torch.Tensor):
    clips48 = torch.tensor(np.stack([soxr.resample(c, SR, 48_000) for c in speech16k.numpy()]))
    for channels in (1, 3):
        # The spectrogram itself: no 224x224 image, no ImageNet statistics.
        cfg = FrontendConfig(
            name="mel", setting="quaclrs", channels=channels, image_size=0, imagenet_norm=False
        )
        frontend = build_frontend(cfg, 48_000)
        out = frontend(clips48[:2])
        assert frontend.out_channels == channels and out.shape[:3] == (2, channels, 128)
    reference = librosa.feature.melspectrogram(
        y=clips48[0].double().numpy(),
        sr=48_000,
        n_fft=2048,
        hop_length=512,
        n_mels=128,
        fmin=20.0,
        fmax=8000.0,
        center=True,
        pad_mode="reflect",
        power=2.0,
    )
    assert out.shape[-1] == reference.shape[-1]
    power = 10 ** (out[0, 0].double() / 10)
    audible = torch.tensor(reference > 1e-8)
    assert _relative_error(power[audible], torch.tensor(reference)[audible]) < 1e-3
    assert torch.equal(out[:, 0], out[:, 2])


def test_authors_code_log_bins_put_a_tone_in_its_bin():
    frontend = build_frontend(FrontendConfig(name="stft3", setting="authors_code"), SR)
    freqs = frontend.binned.bin_freqs
    assert freqs[0] == pytest.approx(40.0) and freqs[-1] < 8000
    ratios = freqs[1:] / freqs[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-4)  # log-spaced
    t = torch.arange(SR) / SR
    out = frontend(torch.sin(2 * torch.pi * 1000.0 * t)[None])
    assert out.shape[:3] == (1, 3, 128)
    loudest = int(out[0, 0, :, 20:-20].mean(-1).argmax())
    assert abs(float(freqs[loudest]) / 1000.0 - 1) < 0.05


def test_per_frequency_normalisation(speech16k: torch.Tensor):
    frontend = build_frontend(FrontendConfig(name="stft3", normalize=True), SR)
    with pytest.raises(RuntimeError, match="fit_normalization"):
        frontend(speech16k)
    frontend.fit_normalization([speech16k[:2], speech16k[2:]])
    out = frontend(speech16k).double()
    mean, std = out.mean(dim=(0, 3)), out.std(dim=(0, 3), correction=0)
    varying = frontend.norm_std[..., 0] > 1e-4  # constant rows (empty mel filters) stay put
    assert mean[varying].abs().max() < 1e-3
    assert (std[varying] - 1).abs().max() < 1e-3
    state = frontend.state_dict()
    assert {"norm_mean", "norm_std", "norm_fitted"} <= set(state)
    restored = build_frontend(FrontendConfig(name="stft3", normalize=True), SR)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored(speech16k), frontend(speech16k))


def test_autocast_and_bf16_input_give_float32_features(speech16k: torch.Tensor):
    frontend = build_frontend(FrontendConfig(name="stft3"), SR)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = frontend(speech16k.bfloat16()[:, None])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_frontend_settings_are_explained():
    with pytest.raises(ValueError, match="n_bins .* must equal .*n_mels"):
        build_frontend(FrontendConfig(name="stft3", n_mels=64), SR)
    with pytest.raises(ValueError, match="fmax"):
        build_frontend(FrontendConfig(name="mel", setting="authors_code"), 8_000)
    with pytest.raises(ValueError, match="shorter than the reflect padding"):
        build_frontend(FrontendConfig(name="mel", setting="quaclrs"), 48_000)(torch.zeros(1, 500))
    with pytest.raises(ConfigError, match="frontend.name"):
        ExperimentConfig.from_dict({"frontend": {"name": "cqt"}})


@pytest.mark.parametrize(("n_fft", "hop"), [(256, 128), (2048, 512), (255, 100), (64, 200)])
def test_frames_without_full_padding_equal_reflect_padded_frames(n_fft: int, hop: int):
    """The FFT path reflect-pads only the edge frames; every frame must equal the one cut
    from the fully padded clip, for clip lengths around the frame and hop boundaries."""
    cfg = FrontendConfig(name="mel", setting="authors_code", n_fft=n_fft, hop_length=hop, fmax=4e3)
    stft = build_frontend(cfg, SR).linear
    for length in (n_fft // 2 + 1, n_fft, n_fft + 7, 3000, 16000, 16001):
        x = torch.randn(3, length)
        padded = torch.nn.functional.pad(x[:, None], (stft.pad, stft.pad), mode="reflect")
        reference = padded[:, 0].unfold(-1, n_fft, hop) * stft.window
        assert torch.equal(stft.windowed_frames(x), reference), f"length {length}"


def test_quaclrs_mel_is_a_224_imagenet_normalised_rgb_image(speech16k: torch.Tensor):
    """QUACLRS's input: the log-mel at 48 kHz, resized to 224x224, three channels, each
    clip min-max scaled to [0, 1] and then normalised by ImageNet's per-channel statistics."""
    clips48 = torch.tensor(np.stack([soxr.resample(c, SR, 48_000) for c in speech16k.numpy()]))
    cfg = FrontendConfig(name="mel", setting="quaclrs")
    assert (cfg.resolved_image_size, cfg.resolved_imagenet_norm) == (224, True)
    frontend = build_frontend(cfg, 48_000)
    out = frontend(clips48)
    assert frontend.out_channels == 3 and out.shape == (4, 3, 224, 224)

    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    unit = out * std + mean  # undo ImageNet's statistics: back to the [0, 1] image
    torch.testing.assert_close(unit.amin(dim=(2, 3)), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(unit.amax(dim=(2, 3)), torch.ones(4, 3), atol=1e-5, rtol=0)
    # The three channels hold one image, each with its own channel's mean and std.
    torch.testing.assert_close(unit[:, 0], unit[:, 2], atol=1e-5, rtol=0)
    assert not torch.allclose(out[:, 0], out[:, 2], atol=1e-2)

    # Against the plain log-mel resized by hand.
    plain = build_frontend(
        FrontendConfig(name="mel", setting="quaclrs", image_size=0, imagenet_norm=False), 48_000
    )(clips48)
    assert plain.shape[2] == 128 and plain.shape[3] != 224
    resized = torch.nn.functional.interpolate(
        plain, size=(224, 224), mode="bilinear", antialias=True
    )
    low = resized.amin(dim=(2, 3), keepdim=True)
    expected = ((resized - low) / (resized.amax(dim=(2, 3), keepdim=True) - low) - mean) / std
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_image_options_can_be_set_or_switched_off_explicitly(speech16k: torch.Tensor):
    resized_only = FrontendConfig(name="stft3", image_size=64)
    assert (resized_only.resolved_image_size, resized_only.resolved_imagenet_norm) == (64, False)
    out = build_frontend(resized_only, SR)(speech16k)
    assert out.shape == (4, 3, 64, 64) and out.amin() < -10  # dB values, not normalised
    quaclrs_off = FrontendConfig(name="mel", setting="quaclrs", image_size=0)
    assert quaclrs_off.resolved_image_size is None and quaclrs_off.resolved_imagenet_norm
    # Switching the setting after validation brings the setting's image along.
    experiment = ExperimentConfig().with_overrides(
        {"frontend.name": "mel", "frontend.setting": "quaclrs", "data.sample_rate": 48_000}
    )
    assert experiment.frontend.resolved_image_size == 224
    # Per-frequency normalisation is fitted on the map before it becomes an image.
    normalised = build_frontend(FrontendConfig(name="stft3", normalize=True, image_size=32), SR)
    normalised.fit_normalization([speech16k])
    assert normalised.norm_mean.shape == (3, 128, 1)
    assert normalised(speech16k).shape == (4, 3, 32, 32)


def test_bad_image_options_are_explained():
    with pytest.raises(ValueError, match=r"imagenet_norm=true .* frontend.channels=1"):
        FrontendConfig(name="mel", channels=1, imagenet_norm=True)
    with pytest.raises(ValueError, match="raw1d"):
        FrontendConfig(name="raw1d", image_size=224)
    with pytest.raises(ConfigError, match="frontend.image_size"):
        ExperimentConfig.from_dict({"frontend": {"image_size": -1}})


def test_quaclrs_setting_is_refused_away_from_48k():
    cfg = FrontendConfig(name="mel", setting="quaclrs")
    for rate in (16_000, 8_000, 44_100):
        with pytest.raises(
            ValueError, match=f"data.sample_rate={rate}; set data.sample_rate=48000"
        ):
            build_frontend(cfg, rate)
    with pytest.raises(ValueError, match="QUACLRS resamples every clip to 48000 Hz"):
        check_frontend_rate(FrontendConfig(name="stft3", setting="quaclrs"), 16_000)
    check_frontend_rate(cfg, 48_000)
    check_frontend_rate(FrontendConfig(name="mel", setting="paper"), 16_000)
    check_frontend_rate(FrontendConfig(name="raw1d", setting="quaclrs"), 16_000)  # no setting
