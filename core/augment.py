"""Batched signal and spectrogram augmentations, on the batch's device, by short code.

CLAR (section 3.4) applies six augmentations to the raw signal of each view; QUACLRS
(section 4.5) adds fixed-setting variants and two spectrogram augmentations. Every trial
of every sweep runs these on every batch, so each one is a pure function on a whole batch
``(B, T)`` that draws its random parameters PER SAMPLE from a ``torch.Generator`` living on
the batch's device: a seeded generator reproduces the batch exactly, and no sample of a
batch shares another's parameters.

Signal codes (what search spaces write):

==========  ==========================================================================
``PS``      pitch shift, integer semitones uniform in ``pitch_semitones`` ([-15, 15])
``FD``      fade in and out, each up to half the clip, linear / log / exp shape
``WN``      white noise at an SNR uniform in ``snr_db`` (0-20 dB)
``MN``      white, pink (1/f) or brown (1/f^2) noise, SNR as for ``WN``
``TM``      one masked segment of up to 1/8 of the clip (noise or zeros)
``TS``      circular time shift of up to half the clip, either direction
``TST``     time stretch, rate uniform in ``stretch_rates`` ([0.5, 1.5]), pitch kept
``TST0.8``  QUACLRS fixed time stretch, rate 0.8 (slower, longer; cropped)
``TST1.2``  QUACLRS fixed time stretch, rate 1.2 (faster, shorter; zero-padded)
``PS+2``    QUACLRS fixed pitch shift, +2 semitones
``PS-2``    QUACLRS fixed pitch shift, -2 semitones
``WN5``     QUACLRS Gaussian noise at exactly 5 dB SNR
``WN15``    QUACLRS Gaussian noise at exactly 15 dB SNR
``MIX``     mixup with another clip of the batch, weight uniform in [0, ``mix_max``]
==========  ==========================================================================

Spectrogram codes (run after the front end, on ``(B, C, F, frames)``):

==========  ==========================================================================
``SA``      SpecAugment: 2 frequency + 2 time masks of width up to 20, new each call,
            filled with the clip's per-channel mean
``PA``      PatchAugment: 5 patches of 10 x 10 copied from one random place to another
``SA0``     QUACLRS specaugment_0/1/2: SA's masks as a fixed draw per spectrogram
``SA1``     (seeded by the variant and a fingerprint of it, so the same input gets the
``SA2``     same masks in any epoch and batch), filled with the clip's minimum
``PA0``     QUACLRS patchaugment_0/1 (and a third): PA's patches drawn once per clip,
``PA1``     as for ``SA0``-``SA2``
``PA2``
==========  ==========================================================================

Views: fixed-setting codes (``TST0.8``, ``TST1.2``, ``PS+2``, ``PS-2``, ``SA0``-``PA2``)
and the empty pipeline transform a clip the same way every time, so both views of a
contrastive pair would be identical. :func:`build_view_augment` then puts a random base
(``TS`` then ``FD``, drawn per view) under them, as QUACLRS ablates an augmentation on
top of a random base; ``augment.view_base`` overrides it.

Pitch shift and time stretch (``PS``, ``TST`` and their fixed variants) draw their
parameters here and run on the batched phase vocoder of :mod:`core.vocoder`, where their
time goes. The registries by code live in :mod:`core.registry`, readable without torch:
adding an augmentation is one function here plus one line there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from core.config import AugmentConfig
from core.registry import SIGNAL_AUGMENTATIONS, SPEC_AUGMENTATIONS
from core.vocoder import pitch_shift_batch, time_stretch_batch

SignalAugmentation = Callable[[Tensor, torch.Generator, AugmentConfig, int], Tensor]
SpecAugmentation = Callable[[Tensor, torch.Generator, AugmentConfig], Tensor]


# --- random draws ----------------------------------------------------------------------
def _uniform(generator: torch.Generator, size: int, low: float, high: float, x: Tensor) -> Tensor:
    """``size`` floats uniform in [low, high), drawn on x's device with ``generator``."""
    draw = torch.rand(size, generator=generator, device=x.device, dtype=torch.float32)
    return draw * (high - low) + low


def _randint_upto(generator: torch.Generator, upper: Tensor) -> Tensor:
    """Per-sample integers uniform in [0, upper[i]] (inclusive); ``upper`` is int64."""
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
    fade_in = _randint_upto(generator, limit)
    fade_out = _randint_upto(generator, limit)
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
    span = _randint_upto(generator, torch.full((batch,), longest, device=x.device))
    start = _randint_upto(generator, length - span)
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
    shift = _randint_upto(generator, torch.full((batch,), 2 * half, device=x.device)) - half
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
    offset = 1 + _randint_upto(generator, torch.full((batch,), batch - 2, device=x.device))
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


# --- spectrogram augmentations -----------------------------------------------------------
SPEC_MASKS = 2  # QUACLRS: 2 time + 2 frequency masks
SPEC_MASK_MAX_WIDTH = 20
PATCHES = 5  # QUACLRS PatchAugment: 5 patches of 10 x 10
PATCH_SIZE = 10


def _check_spec(x: Tensor, code: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"spectrogram augmentation {code!r} expects (B, C, F, frames), got {tuple(x.shape)}"
        )


# Draws an augmentation's integers through: per-clip integers uniform in [0, upper[i]].
IntegerDraw = Callable[[Tensor], Tensor]


def spec_augment(x: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    """SA: 2 frequency and 2 time masks per clip, each of width uniform in [0, 20].

    Masked cells take the clip's per-channel mean: features here are log-power in dB, where
    0 is an arbitrary level, so the mean is the neutral value SpecAugment's 0 stands for on
    normalised features. The same mask covers every channel of a clip.
    """
    _check_spec(x, "SA")
    masked = _spec_masks(x, lambda upper: _randint_upto(generator, upper))
    mean = x.mean(dim=(2, 3), keepdim=True)
    return torch.where(masked, mean, x)


def _spec_masks(x: Tensor, draw: IntegerDraw) -> Tensor:
    """SpecAugment's mask ``(B, 1, F, frames)``: 2 frequency bands then 2 time bands per
    clip, each of width in [0, 20] at a position in range, from ``draw``'s integers."""
    batch, _, bins, frames = x.shape
    masked = torch.zeros(batch, 1, bins, frames, dtype=torch.bool, device=x.device)
    for size, axis in ((bins, 2), (frames, 3)):
        index = torch.arange(size, device=x.device)
        for _ in range(SPEC_MASKS):
            width = draw(torch.full((batch,), min(SPEC_MASK_MAX_WIDTH, size), device=x.device))
            start = draw(size - width)
            band = (index >= start[:, None]) & (index < (start + width)[:, None])
            shape = [batch, 1, 1, 1]
            shape[axis] = size
            masked |= band.view(shape)
    return masked


def patch_augment(x: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    """PA: 5 patches of 10 x 10 per clip, each copied from a random place to another."""
    _check_spec(x, "PA")
    return _move_patches(x, lambda upper: _randint_upto(generator, upper))


def _move_patches(x: Tensor, draw: IntegerDraw) -> Tensor:
    """5 patches of 10 x 10 per clip copied from one place of the clip to another, the
    corners from ``draw``'s integers.

    Built as one source-index map per clip and a single gather, so all channels move
    together and patches are read from the unmodified input.
    """
    batch, channels, bins, frames = x.shape
    height, width = min(PATCH_SIZE, bins), min(PATCH_SIZE, frames)
    f = torch.arange(bins, device=x.device).view(1, bins, 1)
    t = torch.arange(frames, device=x.device).view(1, 1, frames)
    source = (f * frames + t).expand(batch, bins, frames)

    def corner(size: int, extent: int) -> Tensor:
        return draw(torch.full((batch,), size - extent, device=x.device))

    for _ in range(PATCHES):
        f_src, t_src = corner(bins, height), corner(frames, width)
        f_dst, t_dst = corner(bins, height), corner(frames, width)
        f_dst_, t_dst_ = f_dst.view(-1, 1, 1), t_dst.view(-1, 1, 1)
        inside = (f >= f_dst_) & (f < f_dst_ + height) & (t >= t_dst_) & (t < t_dst_ + width)
        moved = (f - f_dst_ + f_src.view(-1, 1, 1)) * frames + (t - t_dst_ + t_src.view(-1, 1, 1))
        source = torch.where(inside, moved, source)
    flat = x.reshape(batch, channels, bins * frames)
    index = source.reshape(batch, 1, bins * frames).expand(batch, channels, bins * frames)
    return torch.gather(flat, 2, index).view_as(x)


# --- SA0-SA2 / PA0-PA2: QUACLRS's fixed variants -----------------------------------------
# QUACLRS saved three augmented copies of each clip as images (specaugment_0/1/2,
# patchaugment_0/1 in Tables 15/17): variant k is one fixed draw per clip, the same in
# every epoch. Here variant k draws from a counter-based stream seeded by (k, a fingerprint
# of the clip's spectrogram), so it needs no stored copy, no clip index and no generator:
# the same spectrogram gets the same variant-k masks at any batch position, in any batch.
# The stream is splitmix64 (Steele et al. 2014) on int64 tensors, all clips at once.
# The fingerprint is of the spectrogram these codes receive: under a random view base
# (TS + FD, see build_view_augment) that differs per view, and so do the draws.
_MASK64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (odd, 2^64 / golden ratio)


def _as_int64(value: int) -> int:
    """``value`` mod 2^64 as the signed int64 torch stores (constants above 2^63 wrap)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_MIX_1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX_2 = _as_int64(0x94D049BB133111EB)


def _shift_right(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 ``z`` (torch's ``>>`` on signed ints is arithmetic)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors: a bijection of 64-bit words whose every
    output bit depends on every input bit. Products wrap mod 2^64 as the algorithm needs."""
    z = (z ^ _shift_right(z, 30)) * _MIX_1
    z = (z ^ _shift_right(z, 27)) * _MIX_2
    return z ^ _shift_right(z, 31)


def spectrogram_fingerprint(x: Tensor) -> Tensor:
    """One int64 per clip of ``(B, C, F, frames)`` that changes when any value changes.

    The sum of the float32 bit patterns, in exact integer arithmetic: unlike a float sum it
    does not depend on the reduction order, so a clip gets the same fingerprint at every
    batch position and batch size (and never overflows: at most 2^31 per value).
    """
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    # One flat axis: torch's integer sum over several dims at once is ~8x slower on CPU.
    return bits.reshape(x.shape[0], -1).sum(dim=1, dtype=torch.int64)


class ClipStream:
    """Per-clip random integers that depend only on the clip and a key, not on a generator.

    The i-th draw of clip b is ``mix64(seed_b + i * gamma)`` (splitmix64's sequence) with
    ``seed_b = mix64(fingerprint_b + key * gamma)``: the same clip and key give the same
    draws in every call, and different keys give unrelated ones. Called like
    :func:`_randint_upto`: ``stream(upper)`` is uniform in [0, upper[b]] per clip.
    """

    def __init__(self, fingerprint: Tensor, key: int):
        self.seed = mix64(fingerprint + _as_int64(key * _GOLDEN_GAMMA))
        self.count = 0

    def __call__(self, upper: Tensor) -> Tensor:
        self.count += 1
        word = mix64(self.seed + _as_int64(self.count * _GOLDEN_GAMMA))
        # The top 24 bits, so the float32 in [0, 1) is exact; then as _randint_upto does.
        uniform = _shift_right(word, 40).to(torch.float32) / float(1 << 24)
        return torch.minimum((uniform * (upper + 1).float()).long(), upper)


VARIANTS = 3  # SA0-SA2, PA0-PA2
# Keys of the variant streams: SA and PA variants k never share a stream.
_SPEC_AUGMENT_KEY, _PATCH_AUGMENT_KEY = 0x5A00, 0x9A00


def _fixed_spec_augment(variant: int) -> SpecAugmentation:
    def fixed_spec_augment(x: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
        _check_spec(x, f"SA{variant}")
        stream = ClipStream(spectrogram_fingerprint(x), _SPEC_AUGMENT_KEY + variant)
        masked = _spec_masks(x, stream)
        # QUACLRS "removes" the masked segments of a spectrogram image: they become its
        # black, the lowest level. On log-power features that is the clip's minimum (per
        # channel, since channels hold different quantities), not 0, which is a loud 0 dB.
        floor = x.amin(dim=(2, 3), keepdim=True)
        return torch.where(masked, floor, x)

    fixed_spec_augment.__doc__ = (
        f"SA{variant}: QUACLRS specaugment_{variant}, SpecAugment's 2 frequency + 2 time "
        "masks of width up to 20 drawn once per clip (the same masks in every epoch), "
        "filled with the clip's per-channel minimum. ``generator`` is not used."
    )
    return fixed_spec_augment


def _fixed_patch_augment(variant: int) -> SpecAugmentation:
    def fixed_patch_augment(x: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
        _check_spec(x, f"PA{variant}")
        return _move_patches(
            x, ClipStream(spectrogram_fingerprint(x), _PATCH_AUGMENT_KEY + variant)
        )

    fixed_patch_augment.__doc__ = (
        f"PA{variant}: QUACLRS patchaugment_{variant}, 5 patches of 10 x 10 copied within "
        "the clip, drawn once per clip (the same in every epoch). ``generator`` is not used."
    )
    return fixed_patch_augment


spec_augment_0, spec_augment_1, spec_augment_2 = (_fixed_spec_augment(k) for k in range(VARIANTS))
patch_augment_0, patch_augment_1, patch_augment_2 = (
    _fixed_patch_augment(k) for k in range(VARIANTS)
)


# --- pipelines ----------------------------------------------------------------------------
def _apply_with_probability(
    x: Tensor, generator: torch.Generator, probability: float, apply: Callable[[Tensor], Tensor]
) -> Tensor:
    """Apply ``apply`` to each clip with ``probability``; only the chosen clips are computed."""
    if probability >= 1.0:
        return apply(x)
    chosen = torch.rand(x.shape[0], generator=generator, device=x.device) < probability
    index = torch.nonzero(chosen).squeeze(1)
    if index.numel() == 0:
        return x
    return x.index_copy(0, index, apply(x[index]))


class SignalPipeline(torch.nn.Module):
    """Ordered signal augmentations (``["FD", "TM"]`` = FD then TM) for one view.

    Takes ``(B, T)`` or ``(B, 1, T)`` and returns the same shape, dtype and device. Each
    augmentation is applied to each clip with ``cfg.probability`` (1.0 for the CLAR matrix,
    which measures the augmentation itself). ``base_codes`` run first, on every clip: they
    are the view's random base (``augment.view_base``), not the augmentation under study.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        sample_rate: int,
        codes: Sequence[str] | None = None,
        base_codes: Sequence[str] = (),
    ):
        super().__init__()
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.codes = list(cfg.pipeline if codes is None else codes)
        self.base_codes = list(base_codes)
        for field, listed in (("view_base", self.base_codes), ("pipeline", self.codes)):
            unknown = [code for code in listed if code not in SIGNAL_AUGMENTATIONS]
            if unknown:
                raise ValueError(
                    f"augment.{field}: unknown code(s) {unknown}; valid: "
                    f"{', '.join(SIGNAL_AUGMENTATIONS.names())}"
                )

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() == 3 and x.shape[1] == 1:
            return self.forward(x[:, 0], generator)[:, None]
        if x.dim() != 2:
            raise ValueError(f"SignalPipeline expects (B, T) or (B, 1, T), got {tuple(x.shape)}")
        for code in self.base_codes:
            x = SIGNAL_AUGMENTATIONS[code](x, generator, self.cfg, self.sample_rate)
        for code in self.codes:
            function = SIGNAL_AUGMENTATIONS[code]
            x = _apply_with_probability(
                x,
                generator,
                self.cfg.probability,
                lambda clips, fn=function: fn(clips, generator, self.cfg, self.sample_rate),
            )
        return x

    def extra_repr(self) -> str:
        base = f"base_codes={self.base_codes}, " if self.base_codes else ""
        return f"{base}codes={self.codes}, probability={self.cfg.probability}"


class SpecPipeline(torch.nn.Module):
    """Ordered spectrogram augmentations on ``(B, C, F, frames)``, after the front end."""

    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg
        self.codes = list(cfg.spec_pipeline)
        unknown = [code for code in self.codes if code not in SPEC_AUGMENTATIONS]
        if unknown:
            raise ValueError(
                f"augment.spec_pipeline: unknown code(s) {unknown}; valid: "
                f"{', '.join(SPEC_AUGMENTATIONS.names())}"
            )

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for code in self.codes:
            function = SPEC_AUGMENTATIONS[code]
            x = _apply_with_probability(
                x,
                generator,
                self.cfg.probability,
                lambda maps, fn=function: fn(maps, generator, self.cfg),
            )
        return x

    def extra_repr(self) -> str:
        return f"codes={self.codes}, probability={self.cfg.probability}"


def build_signal_pipeline(cfg: AugmentConfig, sample_rate: int) -> SignalPipeline:
    """The signal pipeline of ``cfg.pipeline`` for audio at ``sample_rate``."""
    return SignalPipeline(cfg, sample_rate)


def build_view_augment(cfg: AugmentConfig, sample_rate: int) -> SignalPipeline:
    """What one view of a training pair gets on the signal: its base, then ``cfg.pipeline``.

    Fixed-setting codes (``TST0.8``, ``PS+2``, ``SA0``, ...) and the empty pipeline would
    give the two views of a clip bit-identical, making the contrastive task trivial, so
    such configs get the random base ``DEFAULT_VIEW_BASE`` (see
    :meth:`AugmentConfig.resolved_view_base`). Each call of the returned pipeline draws its
    own base parameters, so two calls on one generator give two different views.
    """
    return SignalPipeline(cfg, sample_rate, base_codes=cfg.resolved_view_base())


def build_spec_pipeline(cfg: AugmentConfig) -> SpecPipeline:
    """The spectrogram pipeline of ``cfg.spec_pipeline``."""
    return SpecPipeline(cfg)
