"""Spectrogram augmentation kernels on ``(B, C, F, frames)``, run after the front end.

QUACLRS's SpecAugment and PatchAugment (``SA``, ``PA``), and their fixed variants
``SA0``-``PA2``, which need a per-clip random stream that no generator drives: a
fingerprint of the spectrogram and a counter-based splitmix64 stream (:class:`ClipStream`).
They live apart from the signal kernels (:mod:`core.augment_signal`) because they work on
a different shape at a different point of the pipeline, and apart from the pipelines of
:mod:`core.augment`, which apply them by code (:data:`core.registry.SPEC_AUGMENTATIONS`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from core.augment_signal import randint_upto
from core.config import AugmentConfig

SpecAugmentation = Callable[[Tensor, torch.Generator, AugmentConfig], Tensor]


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
    masked = _spec_masks(x, lambda upper: randint_upto(generator, upper))
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
    return _move_patches(x, lambda upper: randint_upto(generator, upper))


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
    :func:`randint_upto`: ``stream(upper)`` is uniform in [0, upper[b]] per clip.
    """

    def __init__(self, fingerprint: Tensor, key: int):
        self.seed = mix64(fingerprint + _as_int64(key * _GOLDEN_GAMMA))
        self.count = 0

    def __call__(self, upper: Tensor) -> Tensor:
        self.count += 1
        word = mix64(self.seed + _as_int64(self.count * _GOLDEN_GAMMA))
        # The top 24 bits, so the float32 in [0, 1) is exact; then as randint_upto does.
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
