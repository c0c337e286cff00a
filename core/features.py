"""Front ends: raw audio for the 1D encoder, time-frequency features for the 2D one.

CLAR (section 3.1) feeds the 2D ResNet three stacked channels computed on the GPU with
nnAudio's convolutional STFT: the log-power STFT magnitude, the log-power mel spectrogram
and the STFT phase, ``(B, 3, F, frames)``. QUACLRS (Table 2) uses a log-mel spectrogram.
Front ends are ``nn.Module``\\ s built once per worker; the caller moves them to the batch's
device, where all the work then happens, batched. The STFT they share (nnAudio's kernels,
by convolution or by FFT) is :class:`core.stft.STFT`.

Named settings fill the parameters a config leaves as ``None``:

================  =======  =====  ========  =======  ========================================
setting           n_fft    hop    bins      mels     notes
================  =======  =====  ========  =======  ========================================
``paper``         256      128    128 lin   128      16 ms / 8 ms at 16 kHz (CLAR 3.1)
``authors_code``  2048     128    128 log   128      log-spaced STFT bins, 40-8000 Hz
``quaclrs``       2048     512    128 log   128      mels 20-8000 Hz (QUACLRS, 48 kHz input)
================  =======  =====  ========  =======  ========================================

Log power is ``10 log10(max(|S|^2, log_floor))`` (CLAR Eq. 2) for both the STFT magnitude
and the mel spectrogram (a mel spectrogram is already a power, so it is not squared again).

QUACLRS hands its torchvision backbones the log-mel spectrogram as a 224x224 RGB image:
with ``setting: quaclrs`` the ``mel`` front end resizes the map bilinearly to
``image_size`` x ``image_size`` and, with ``imagenet_norm``, min-max scales each clip's map
to [0, 1] and applies ImageNet's per-channel mean and std (both on by default there; any 2D
front end accepts them). The setting is defined at 48 kHz only (:func:`check_frontend_rate`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from nnAudio.librosa_functions import get_mel
from torch import Tensor

from core.config import FrontendConfig
from core.registry import FRONTENDS
from core.stft import STFT

# torchvision's ImageNet statistics, per RGB channel, for inputs scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {
        "n_fft": 256,
        "hop_length": 128,
        "win_length": 256,
        "n_mels": 128,
        "n_bins": 128,
        "fmin": 0.0,
        "fmax": None,
        "bin_scale": "linear",
    },
    "authors_code": {
        "n_fft": 2048,
        "hop_length": 128,
        "win_length": 2048,
        "n_mels": 128,
        "n_bins": 128,
        "fmin": 40.0,
        "fmax": 8000.0,
        "bin_scale": "log",
    },
    "quaclrs": {
        "n_fft": 2048,
        "hop_length": 512,
        "win_length": 2048,
        "n_mels": 128,
        "n_bins": 128,
        "fmin": 20.0,
        "fmax": 8000.0,
        "bin_scale": "log",
    },
}


def check_frontend_rate(cfg: FrontendConfig, sample_rate: int) -> None:
    """Refuse a front-end setting at a sample rate it is not defined for (QUACLRS: 48 kHz).

    Cheap and torch-free (it defers to :meth:`FrontendConfig.check_sample_rate`), so the
    experiment config can run it when it is validated; :func:`build_frontend` runs it too.
    Raises ValueError naming ``data.sample_rate`` and the fix.
    """
    cfg.check_sample_rate(sample_rate)


def resolve_setting(cfg: FrontendConfig, sample_rate: int) -> dict[str, Any]:
    """The setting's defaults, overridden by every field the config sets explicitly."""
    params = dict(SETTINGS[cfg.setting])
    for field in ("n_fft", "hop_length", "win_length", "n_mels", "n_bins", "fmin", "fmax"):
        value = getattr(cfg, field)
        if value is not None:
            params[field] = value
    if params["fmax"] is None:
        params["fmax"] = sample_rate / 2
    if cfg.win_length is None and cfg.n_fft is not None:
        params["win_length"] = params["n_fft"]
    nyquist = sample_rate / 2
    if not 0 <= params["fmin"] < params["fmax"] <= nyquist:
        raise ValueError(
            f"frontend: need 0 <= fmin < fmax <= sample_rate/2 = {nyquist:g} Hz, got "
            f"fmin={params['fmin']}, fmax={params['fmax']} (setting {cfg.setting!r}); set "
            "frontend.fmin / frontend.fmax or data.sample_rate"
        )
    if params["win_length"] > params["n_fft"]:
        raise ValueError(
            f"frontend.win_length={params['win_length']} exceeds n_fft={params['n_fft']}"
        )
    if params["bin_scale"] == "linear" and params["n_bins"] > params["n_fft"] // 2 + 1:
        raise ValueError(
            f"frontend.n_bins={params['n_bins']} exceeds the {params['n_fft'] // 2 + 1} linear "
            f"bins of n_fft={params['n_fft']}; lower n_bins or raise n_fft"
        )
    return params


def _mel_basis(params: dict[str, Any], sample_rate: int) -> Tensor:
    """Slaney mel filterbank ``(n_mels, n_fft/2 + 1)``, librosa's formula (via nnAudio).

    CLAR's own setting (128 mels over the 129 bins of a 256-point FFT) leaves the lowest
    filters empty; that is the paper's choice, so the warning saying so is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Empty filters detected")
        mel = get_mel(
            sample_rate,
            params["n_fft"],
            params["n_mels"],
            params["fmin"],
            params["fmax"],
            htk=False,
            norm=1,
        )
    return torch.as_tensor(mel, dtype=torch.float32)


def log_power(power: Tensor, floor: float) -> Tensor:
    """``10 log10(power)`` with a floor, so silent cells give a finite value (CLAR Eq. 2)."""
    return 10.0 * torch.log10(power.clamp(min=floor))


class FrontEnd(torch.nn.Module):
    """Base: shape checks, float32 maths under autocast, optional per-frequency norm, and
    the optional image step (resize, ImageNet normalisation) last.

    ``out_channels`` is what the encoder's first layer must accept. With ``normalize``,
    :meth:`fit_normalization` must be called on training-split batches first; its per
    (channel, frequency) mean and std are buffers, saved with the model's state dict. They
    are measured on the map before the image step, whose size no longer has frequency rows.
    """

    out_channels: int = 1

    def __init__(
        self,
        normalize: bool = False,
        bins: int = 0,
        image_size: int | None = None,
        imagenet_norm: bool = False,
    ):
        super().__init__()
        if imagenet_norm and self.out_channels != len(IMAGENET_MEAN):
            raise ValueError(
                f"frontend.imagenet_norm=true needs 3 channels, this front end gives "
                f"{self.out_channels}; set frontend.channels=3 or frontend.imagenet_norm=false"
            )
        self.normalize = normalize
        self.image_size = image_size
        self.imagenet_norm = imagenet_norm
        self.register_buffer("norm_mean", torch.zeros(self.out_channels, max(bins, 1), 1))
        self.register_buffer("norm_std", torch.ones(self.out_channels, max(bins, 1), 1))
        self.register_buffer("norm_fitted", torch.tensor(False))
        # Constants, not state: left out of the state dict so older checkpoints still load.
        self.register_buffer(
            "imagenet_mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False
        )
        self.register_buffer(
            "imagenet_std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False
        )

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _spectrogram(self, x: Tensor) -> Tensor:
        """The map ``(B, C, F, frames)`` in float32, before normalisation and the image."""
        if x.dim() == 3 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 2:
            raise ValueError(
                f"{type(self).__name__} expects audio (B, T) or (B, 1, T), got {tuple(x.shape)}"
            )
        return self.features(x.float())

    def to_image(self, maps: Tensor) -> Tensor:
        """Resize to ``image_size`` squared and apply ImageNet's normalisation, if asked.

        The resize antialiases like torchvision's ``Resize`` (QUACLRS's inputs are 224x224
        spectrogram images). ImageNet's mean and std are for RGB values in [0, 1], so each clip's
        channel is first min-max scaled to [0, 1], as an image written from the map is; a
        constant map (silence) becomes 0 rather than a division by zero.
        """
        if self.image_size:
            size = (self.image_size, self.image_size)
            maps = F.interpolate(maps, size=size, mode="bilinear", antialias=True)
        if self.imagenet_norm:
            low = maps.amin(dim=(2, 3), keepdim=True)
            span = (maps.amax(dim=(2, 3), keepdim=True) - low).clamp_min(1e-8)
            maps = ((maps - low) / span - self.imagenet_mean) / self.imagenet_std
        return maps

    def forward(self, x: Tensor) -> Tensor:
        # Log powers of tiny values lose everything in half precision: compute in float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self._spectrogram(x)
            if self.normalize:
                if not bool(self.norm_fitted):
                    raise RuntimeError(
                        "frontend.normalize is on but no statistics were fitted: call "
                        "fit_normalization() on training-split batches first"
                    )
                out = (out - self.norm_mean) / self.norm_std
            out = self.to_image(out)
        return out

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Tensor]) -> None:
        """Per (channel, frequency) mean and std over all clips and frames of ``batches``.

        Accumulates sums in float64 so a whole training split can stream through.
        """
        total = squares = None
        count = 0
        for batch in batches:
            with torch.autocast(device_type=batch.device.type, enabled=False):
                feats = self._spectrogram(batch).double()  # (B, C, F, frames)
            part_sum = feats.sum(dim=(0, 3))
            part_sq = feats.pow(2).sum(dim=(0, 3))
            total = part_sum if total is None else total + part_sum
            squares = part_sq if squares is None else squares + part_sq
            count += feats.shape[0] * feats.shape[3]
        if total is None or count == 0:
            raise ValueError("fit_normalization got no batches: pass the training split")
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp(min=0).sqrt().clamp(min=1e-5)
        self.norm_mean = mean[..., None].float()
        self.norm_std = std[..., None].float()
        self.norm_fitted = torch.tensor(True, device=self.norm_mean.device)


class RawAudio(FrontEnd):
    """``raw1d``: the waveform itself as ``(B, 1, T)`` for the 1D encoder."""

    out_channels = 1

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def features(self, x: Tensor) -> Tensor:
        return x[:, None]


class STFT3(FrontEnd):
    """``stft3``: log-power STFT magnitude, log-power mel, STFT phase, ``(B, 3, F, frames)``.

    With ``channels=1`` only the log-mel channel is returned. With linear bins the mel
    spectrogram reuses the STFT's power (one transform); with log-spaced bins (the
    authors' code) the mel needs its own linear STFT of the same window and hop.
    """

    def __init__(self, cfg: FrontendConfig, sample_rate: int):
        self.params = resolve_setting(cfg, sample_rate)
        self.out_channels = cfg.channels
        params = self.params
        if cfg.channels == 3 and params["n_bins"] != params["n_mels"]:
            raise ValueError(
                f"stft3 stacks STFT bins and mels as channels, so frontend.n_bins "
                f"({params['n_bins']}) must equal frontend.n_mels ({params['n_mels']})"
            )
        super().__init__(
            cfg.normalize, params["n_mels"], cfg.resolved_image_size, cfg.resolved_imagenet_norm
        )
        self.log_floor = cfg.log_floor
        n_fft = params["n_fft"]
        backend = cfg.stft_backend
        self.linear = STFT(params, sample_rate, n_fft // 2 + 1, "full", backend)
        if params["bin_scale"] == "log":
            self.binned: STFT | None = STFT(params, sample_rate, params["n_bins"], "log", backend)
        else:
            self.binned = None
        self.register_buffer("mel_basis", _mel_basis(params, sample_rate))

    def features(self, x: Tensor) -> Tensor:
        real, imag = self.linear(x)
        power = torch.addcmul(real * real, imag, imag)
        mel_power = torch.matmul(self.mel_basis, power)
        if self.out_channels == 1:
            return log_power(mel_power, self.log_floor)[:, None]
        if self.binned is not None:
            real, imag = self.binned(x)
            power = torch.addcmul(real * real, imag, imag)
        bins = self.params["n_bins"]
        # Each channel is written straight into the output (no stacking copy), clamping
        # the power temporaries in place: this front end runs on every view of every batch.
        out = power.new_empty(power.shape[0], 3, bins, power.shape[-1])
        floor = self.log_floor
        torch.log10(power[:, :bins].clamp_(min=floor), out=out[:, 0]).mul_(10.0)
        torch.log10(mel_power.clamp_(min=floor), out=out[:, 1]).mul_(10.0)
        torch.atan2(imag[:, :bins], real[:, :bins], out=out[:, 2])
        return out


class LogMel(FrontEnd):
    """``mel``: log-power mel spectrogram (QUACLRS), 1 channel or the same one x3.

    Three identical channels let an ImageNet-shaped backbone take it unchanged; with
    ``setting: quaclrs`` they become QUACLRS's 224x224 ImageNet-normalised image.
    """

    def __init__(self, cfg: FrontendConfig, sample_rate: int):
        self.params = resolve_setting(cfg, sample_rate)
        self.out_channels = cfg.channels
        super().__init__(
            cfg.normalize,
            self.params["n_mels"],
            cfg.resolved_image_size,
            cfg.resolved_imagenet_norm,
        )
        self.log_floor = cfg.log_floor
        n_fft = self.params["n_fft"]
        self.linear = STFT(self.params, sample_rate, n_fft // 2 + 1, "full", cfg.stft_backend)
        self.register_buffer("mel_basis", _mel_basis(self.params, sample_rate))

    def features(self, x: Tensor) -> Tensor:
        real, imag = self.linear(x)
        mel = log_power(torch.matmul(self.mel_basis, real.square() + imag.square()), self.log_floor)
        return mel[:, None].expand(-1, self.out_channels, -1, -1).contiguous()


def build_raw(cfg: FrontendConfig, sample_rate: int) -> FrontEnd:
    """``raw1d``'s builder: :class:`RawAudio` takes no setting, so it ignores both."""
    return RawAudio()


def build_frontend(cfg: FrontendConfig, sample_rate: int) -> FrontEnd:
    """The front end named by ``cfg.name``, on CPU; the caller moves it ``.to(device)``.

    Names resolve through :data:`FRONTENDS` (declared in :mod:`core.registry`); adding a
    front end is one class or builder ``(cfg, sample_rate) -> FrontEnd`` here plus one line
    there.
    """
    if cfg.name not in FRONTENDS:
        raise ValueError(
            f"frontend.name={cfg.name!r} is unknown; valid: {', '.join(FRONTENDS.names())}"
        )
    check_frontend_rate(cfg, sample_rate)
    return FRONTENDS[cfg.name](cfg, sample_rate)
