"""Signal-level augmentation kernels: pure functions on a batch of clips ``(B, T)``.

CLAR's six augmentations (section 3.4) and QUACLRS's fixed-setting variants of them, each
drawing its random parameters per clip from a ``torch.Generator`` on the batch's device.
They live apart from the pipelines of :mod:`core.augment`, which apply them by code, so
that each file holds one job: the maths and its draws here, the registry-facing
composition there. :mod:`core.registry` names each kernel by its code (``FD``, ``PS``,
...), and the spectrogram kernels, which share :func:`randint_upto`, are in
:mod:`core.augment_spec`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from core.config import AugmentConfig
from core.vocoder import pitch_shift_batch, time_stretch_batch

SignalAugmentation = Callable[[Tensor, torch.Generator, AugmentConfig, int], Tensor]

# QUACLRS 4.5's settings: "rates of 0.8x and 1.2x", "+-2 semitones", "SNR levels (5dB and
# 15dB)". Its fixed codes (TST0.8, PS+2, WN5, ...) use one each; TSTQ/PSQ/WNQ draw one.
QUACLRS_STRETCH_RATES = (0.8, 1.2)
QUACLRS_SEMITONES = (-2.0, 2.0)
QUACLRS_SNR_DB = (5.0, 15.0)


# --- random draws ----------------------------------------------------------------------
def _uniform(generator: torch.Generator, size: int, low: float, high: float, x: Tensor) -> Tensor:
    """``size`` floats uniform in [low, high), drawn on x's device with ``generator``."""
    draw = torch.rand(size, generator=generator, device=x.device, dtype=torch.float32)
    return draw * (high - low) + low


def randint_upto(generator: torch.Generator, upper: Tensor) -> Tensor:
    """Per-sample integers uniform in [0, upper[i]] (inclusive); ``upper`` is int64.

    Public because the spectrogram kernels of :mod:`core.augment_spec` draw with it too.
    """
    draw = torch.rand(upper.shape, generator=generator, device=upper.device)
    return torch.minimum((draw * (upper + 1).float()).long(), upper)


def _check_batch(x: Tensor, code: str) -> None:
    if x.dim() != 2:
        raise ValueError(
            f"augmentation {code!r} expects a batch of shape (B, T), got {tuple(x.shape)}; "
            "use SignalPipeline for (B, 1, T) input"
        )
    if not x.is_floating_point():
        raise TypeError(f"augmentation {code!r} expects floating-point audio, got {x.dtype}")


# --- FD: fade in / out ------------------------------------------------------------------
# Shapes as torchaudio.transforms.Fade defines them (the tests compare against it); index
# 0 linear, 1 logarithmic, 2 exponential, drawn with probability 1/3 each (CLAR 3.4).
FADE_SHAPES = ("linear", "logarithmic", "exponential")


def _fade_curve(ramp: Tensor, shape: int) -> Tensor:
    """torchaudio's fade curve of shape index ``shape`` at ``ramp`` in [0, 1], in place."""
    if shape == 1:
        return ramp.add_(0.1).log10_().add_(1.0).clamp_(0.0, 1.0)
    if shape == 2:
        return torch.exp2(ramp - 1).mul_(ramp)
    return ramp


def fade_in_gain(
    positions: int, lengths: Tensor, shape: Tensor | int, descending: bool = False
) -> Tensor:
    """Fade-in gain ``(B, positions)`` for per-sample fade lengths and shape indices.

    The ramp runs 0 -> 1 over each fade exactly like ``torch.linspace(0, 1, n)`` and is 1
    after it, so a fade of n samples equals torchaudio's ``Fade(n, ...)`` sample for sample.
    torchaudio's fade-out gain at ramp r equals its fade-in gain at 1 - r for all three
    shapes, so a fade-out is this gain reversed in time: ``descending=True`` gives it
    directly, for the last ``positions`` samples of a clip. ``shape`` is a tensor of
    per-clip indices, or one index for the whole batch (only that curve is computed).
    """
    if descending:
        index = torch.arange(positions - 1, -1, -1, device=lengths.device, dtype=torch.float32)
    else:
        index = torch.arange(positions, device=lengths.device, dtype=torch.float32)
    # ramp = index / (L - 1) clamped to 1, written as one fused (index + offset) * scale:
    # L = 1 gives [0, 1, 1, ...] (linspace(0, 1, 1) = [0]); L = 0 gives all ones (no fade).
    lengths = lengths[:, None]
    scale = torch.where(lengths >= 2, 1.0 / (lengths - 1).clamp(min=1).float(), 1e9)
    offset = (lengths == 0).float()
    ramp = torch.addcmul(offset * scale, index[None, :], scale).clamp_(max=1.0)
    if isinstance(shape, int):
        return _fade_curve(ramp, shape)
    shape = shape[:, None]
    logarithmic = _fade_curve(ramp.clone(), 1)
    exponential = _fade_curve(ramp, 2)
    return torch.where(shape == 0, ramp, torch.where(shape == 1, logarithmic, exponential))


def fade(x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int) -> Tensor:
    """FD: fade-in and fade-out lengths each uniform in [0, T/2], shape 1/3 each (CLAR 3.4).

    One shape per clip for both ends. Gains are only computed on the half of the clip each
    fade can reach, in cache-sized chunks of clips on CPU.
    """
    _check_batch(x, "FD")
    batch, length = x.shape
    half = length // 2
    limit = torch.full((batch,), half, device=x.device, dtype=torch.long)
    fade_in = randint_upto(generator, limit)
    fade_out = randint_upto(generator, limit)
    shape = torch.randint(0, 3, (batch,), generator=generator, device=x.device)
    return apply_fade(x, fade_in, fade_out, shape)


def apply_fade(x: Tensor, fade_in: Tensor, fade_out: Tensor, shape: Tensor) -> Tensor:
    """Fade each clip in over ``fade_in`` and out over ``fade_out`` samples, with shape
    index 0 linear, 1 logarithmic, 2 exponential (:data:`FADE_SHAPES`).

    Lengths must be <= T/2 (each fade is computed on its half of the clip only); not checked
    here, since a check would cost a device sync per batch, and :func:`fade` draws them so.
    """
    batch, length = x.shape
    half = length // 2
    # torchaudio's 1-sample fade-out is linspace(0, 1, 1) = [0], i.e. gain 1: a no-op.
    fade_out = torch.where(fade_out == 1, torch.zeros_like(fade_out), fade_out)
    out = x.to(torch.float32, copy=True)
    if x.device.type != "cpu":
        # One pass over the whole batch: on an accelerator the launches cost, not the maths.
        out[:, :half] *= fade_in_gain(half, fade_in, shape)
        out[:, length - half :] *= fade_in_gain(half, fade_out, shape, descending=True)
        return out.to(x.dtype)
    # On CPU the maths costs: fades average a quarter of the clip, and each clip needs one
    # curve of three. Clips are grouped by shape and sorted by fade length, so each group of
    # rows computes one curve over just the samples its longest fade reaches.
    for lengths, descending in ((fade_in, False), (fade_out, True)):
        for rows, width, group_shape in _fade_groups(lengths, shape):
            gain = fade_in_gain(width, lengths[rows], group_shape, descending)
            columns = slice(length - width, length) if descending else slice(0, width)
            out[rows, columns] *= gain
    return out.to(x.dtype)


def _fade_groups(
    lengths: Tensor, shape: Tensor, max_cells: int = 1 << 17
) -> list[tuple[Tensor, int, int]]:
    """``(rows, width, shape)`` groups of clips sharing a fade shape, for the CPU path.

    Clips are sorted by (shape, length) and cut into groups of at most ``max_cells`` gain
    values (512 KB of float32, cache-sized); ``width`` is the group's longest fade. Clips
    without a fade are left out.
    """
    pairs = sorted(
        (int(s), int(n), row)
        for row, (s, n) in enumerate(zip(shape.tolist(), lengths.tolist(), strict=True))
        if n > 0
    )
    groups: list[tuple[Tensor, int, int]] = []
    start = 0
    while start < len(pairs):
        group_shape = pairs[start][0]
        end = start + 1
        # Sorted by length within a shape, so the last row of a group is its widest.
        while (
            end < len(pairs)
            and pairs[end][0] == group_shape
            and pairs[end][1] * (end + 1 - start) <= max_cells
        ):
            end += 1
        rows = torch.tensor([row for _, _, row in pairs[start:end]], device=lengths.device)
        groups.append((rows, pairs[end - 1][1], group_shape))
        start = end
    return groups


def _mean_square(x: Tensor) -> Tensor:
    """Per-clip power ``(B, 1)`` in one fused reduction (no squared temporary)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    return norm.square() / x.shape[-1]


# --- WN / MN: noise at a drawn SNR -------------------------------------------------------
def add_noise_at_snr(x: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """``x + g * noise`` with g chosen so that 10 log10(P_x / P_gnoise) equals ``snr_db``.

    Both powers are measured per sample over the whole clip (the clean signal's power, as
    CLAR describes), so the realised SNR is the drawn one up to rounding. A silent clip stays
    silent (its power is 0, so is the noise's).
    """
    signal_power = _mean_square(x)
    noise_power = _mean_square(noise).clamp(min=torch.finfo(torch.float32).tiny)
    gain = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db[:, None] / 10.0)))
    return (x.float() + gain * noise).to(x.dtype)


def colored_noise(
    batch: int, length: int, exponent: Tensor, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), per sample.

    White Gaussian noise is shaped in the frequency domain (amplitude ~ f**(-exponent/2)),
    which gives exact slopes of -3.01 dB/octave (pink) and -6.02 (brown); the DC bin is
    dropped so brown noise does not drift.
    """
    white = torch.randn(batch, length, generator=generator, device=device)
    spectrum = torch.fft.rfft(white, dim=-1)
    freqs = torch.fft.rfftfreq(length, device=device)
    log_f = torch.log(freqs.clamp(min=freqs[1] if length > 1 else 1.0))
    amplitude = torch.exp(-0.5 * exponent.float()[:, None] * log_f)
    amplitude[:, 0] = 0.0
    return torch.fft.irfft(spectrum * amplitude, n=length, dim=-1)


def white_noise(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """WN: white Gaussian noise at an SNR uniform in ``cfg.snr_db``."""
    _check_batch(x, "WN")
    snr = _uniform(generator, x.shape[0], *cfg.snr_db, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return add_noise_at_snr(x, noise, snr)


def mixed_noise(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """MN: white, pink or brown noise (1/3 each) at an SNR uniform in ``cfg.snr_db``."""
    _check_batch(x, "MN")
    batch, length = x.shape
    snr = _uniform(generator, batch, *cfg.snr_db, x)
    exponent = torch.randint(0, 3, (batch,), generator=generator, device=x.device)
    noise = colored_noise(batch, length, exponent, generator, x.device)
    return add_noise_at_snr(x, noise, snr)


def _fixed_snr_noise(snr_db: float) -> SignalAugmentation:
    def fixed_noise(
        x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
    ) -> Tensor:
        _check_batch(x, f"WN{snr_db:g}")
        snr = torch.full((x.shape[0],), float(snr_db), device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        return add_noise_at_snr(x, noise, snr)

    fixed_noise.__doc__ = f"QUACLRS noise addition: white Gaussian noise at {snr_db:g} dB SNR."
    return fixed_noise


white_noise_5db = _fixed_snr_noise(5.0)  # WN5
white_noise_15db = _fixed_snr_noise(15.0)  # WN15


# --- TM / TS: time masking and circular shift ---------------------------------------------
def time_mask(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """TM: one segment of random length in [0, T/8] at a random position per sample.

    ``mask_fill="noise"`` fills it with Gaussian noise at the clip's own RMS (so the mask
    is as loud as the audio around it rather than unit-variance noise, which would swamp
    audio in [-1, 1]); ``"constant"`` fills it with zeros. Only the T/8 window that holds
    the segment is read and written.
    """
    _check_batch(x, "TM")
    batch, length = x.shape
    longest = length // 8
    span = randint_upto(generator, torch.full((batch,), longest, device=x.device))
    start = randint_upto(generator, length - span)
    # A window of `longest` samples from min(start, T - longest) holds the whole segment.
    window_start = torch.minimum(start, torch.full_like(start, length - longest))
    where = window_start[:, None] + torch.arange(longest, device=x.device)[None, :]
    inside = (where >= start[:, None]) & (where < (start + span)[:, None])
    if cfg.mask_fill == "noise":
        rms = _mean_square(x).sqrt()
        noise = torch.randn(batch, longest, generator=generator, device=x.device)
        fill = (noise * rms).to(x.dtype)
    else:
        fill = torch.zeros((), dtype=x.dtype, device=x.device)
    window = torch.where(inside, fill, torch.gather(x, 1, where))
    return x.scatter(1, where, window)


def time_shift(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """TS: circular shift by an integer uniform in [-T/2, T/2] per sample (rollover).

    Reads each clip's window out of the clip repeated twice (a strided view), so no
    (B, T) index tensor is built.
    """
    _check_batch(x, "TS")
    batch, length = x.shape
    half = length // 2
    shift = randint_upto(generator, torch.full((batch,), 2 * half, device=x.device)) - half
    # out[n] = x[(n - shift) mod T] = doubled[n + (T - shift) mod T]
    offset = (length - shift) % length
    doubled = torch.cat([x, x], dim=1)
    windows = doubled.unfold(1, length, 1)  # (B, T + 1, T) view
    return windows[torch.arange(batch, device=x.device), offset]


# --- MIX ----------------------------------------------------------------------------------
def mixup(x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int) -> Tensor:
    """MIX: ``(1 - w) x_i + w x_j`` with j another clip of the batch, w uniform in [0, mix_max].

    Keeping w below 1/2 (default 0.4, the BYOL-A setting) keeps each view's identity, which
    a contrastive loss needs: the mixed clip must remain the positive of its own source.
    """
    _check_batch(x, "MIX")
    batch = x.shape[0]
    if batch < 2:
        return x.clone()
    offset = 1 + randint_upto(generator, torch.full((batch,), batch - 2, device=x.device))
    partner = (torch.arange(batch, device=x.device) + offset) % batch
    weight = _uniform(generator, batch, 0.0, cfg.mix_max, x)[:, None]
    return ((1 - weight) * x.float() + weight * x.float()[partner]).to(x.dtype)


# --- TST / PS: time stretch and pitch shift on the vocoder of core.vocoder ----------------
def time_stretch(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """TST: rate uniform in ``cfg.stretch_rates`` per clip, pitch kept, length kept."""
    _check_batch(x, "TST")
    rates = _uniform(generator, x.shape[0], *cfg.stretch_rates, x)
    return time_stretch_batch(x, rates, cfg.vocoder_n_fft)


def _fixed_stretch(rate: float) -> SignalAugmentation:
    def fixed_stretch(
        x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
    ) -> Tensor:
        _check_batch(x, f"TST{rate:g}")
        rates = torch.full((x.shape[0],), rate, device=x.device)
        return time_stretch_batch(x, rates, cfg.vocoder_n_fft)

    fixed_stretch.__doc__ = f"QUACLRS time stretch at rate {rate:g} (librosa's time_stretch)."
    return fixed_stretch


time_stretch_0_8 = _fixed_stretch(0.8)  # TST0.8
time_stretch_1_2 = _fixed_stretch(1.2)  # TST1.2


def pitch_shift(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """PS: integer semitones uniform in ``cfg.pitch_semitones`` (CLAR: [-15, 15])."""
    _check_batch(x, "PS")
    low, high = cfg.pitch_semitones
    semitones = torch.randint(low, high + 1, (x.shape[0],), generator=generator, device=x.device)
    return pitch_shift_batch(x, semitones, cfg.vocoder_n_fft)


def _fixed_pitch(semitones: int) -> SignalAugmentation:
    def fixed_pitch(
        x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
    ) -> Tensor:
        _check_batch(x, f"PS{semitones:+d}")
        steps = torch.full((x.shape[0],), semitones, device=x.device, dtype=torch.long)
        return pitch_shift_batch(x, steps, cfg.vocoder_n_fft)

    fixed_pitch.__doc__ = f"QUACLRS pitch shift by {semitones:+d} semitones."
    return fixed_pitch


pitch_shift_up_2 = _fixed_pitch(2)  # PS+2
pitch_shift_down_2 = _fixed_pitch(-2)  # PS-2


# --- TSTQ / PSQ / WNQ: QUACLRS's settings, one drawn per clip ------------------------------
def _choice(
    generator: torch.Generator, batch: int, settings: tuple[float, ...], x: Tensor
) -> Tensor:
    """One of ``settings`` per clip, uniformly (float, on ``x``'s device)."""
    index = torch.randint(0, len(settings), (batch,), generator=generator, device=x.device)
    return torch.tensor(settings, device=x.device, dtype=torch.float32)[index]


def quaclrs_time_stretch(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """TSTQ: time stretch at QUACLRS's rates, 0.8 or 1.2 per clip (QUACLRS 4.5), so that
    the two views of a pair can differ where ``TST0.8``/``TST1.2`` alone never do."""
    _check_batch(x, "TSTQ")
    rates = _choice(generator, x.shape[0], QUACLRS_STRETCH_RATES, x)
    return time_stretch_batch(x, rates, cfg.vocoder_n_fft)


def quaclrs_pitch_shift(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """PSQ: pitch shift by +2 or -2 semitones per clip (QUACLRS 4.5)."""
    _check_batch(x, "PSQ")
    steps = _choice(generator, x.shape[0], QUACLRS_SEMITONES, x).long()
    return pitch_shift_batch(x, steps, cfg.vocoder_n_fft)


def quaclrs_noise(
    x: Tensor, generator: torch.Generator, cfg: AugmentConfig, sample_rate: int
) -> Tensor:
    """WNQ: white Gaussian noise at 5 or 15 dB SNR per clip (QUACLRS 4.5)."""
    _check_batch(x, "WNQ")
    snr = _choice(generator, x.shape[0], QUACLRS_SNR_DB, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return add_noise_at_snr(x, noise, snr)
