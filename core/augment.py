"""Batched signal and spectrogram augmentations, on the batch's device, by short code.

CLAR (section 3.4) applies six augmentations to the raw signal of each view, with CLAR's
ranges; QUACLRS (section 4.5) has its own settings (stretch 0.8/1.2, +-2 semitones, noise at
5/15 dB), as fixed codes for its one-augmentation tables and as codes that draw one of its
settings per clip for its SSL grids, and two spectrogram augmentations. Every trial
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
``TSTQ``    QUACLRS time stretch, rate 0.8 or 1.2 drawn per clip
``PSQ``     QUACLRS pitch shift, +2 or -2 semitones drawn per clip
``WNQ``     QUACLRS Gaussian noise, 5 or 15 dB SNR drawn per clip
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
contrastive pair would be identical; ``TSTQ`` then ``PSQ`` alone make one pair in four
identical. :func:`build_view_augment` then puts a random base (``TS`` then ``FD``, drawn
per view) under them, as QUACLRS ablates an augmentation on top of a random base;
``augment.view_base`` overrides it.

This module holds the pipelines that apply them by code; the kernels themselves are pure
functions in :mod:`core.augment_signal` (signal codes) and :mod:`core.augment_spec`
(spectrogram codes and the per-clip streams of the fixed variants). Pitch shift and time
stretch (``PS``, ``TST`` and their fixed variants) draw their parameters there and run on
the batched phase vocoder of :mod:`core.vocoder`, where their time goes. The registries by
code live in :mod:`core.registry`, readable without torch: adding an augmentation is one
function in a kernel module plus one line there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from core.config import AugmentConfig
from core.registry import SIGNAL_AUGMENTATIONS, SPEC_AUGMENTATIONS


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


def build_view_augment(cfg: AugmentConfig, sample_rate: int, views: int = 2) -> SignalPipeline:
    """What one view of a training pair gets on the signal: its base, then ``cfg.pipeline``.

    Fixed-setting codes (``TST0.8``, ``PS+2``, ``SA0``, ...) and the empty pipeline would
    give the two views of a clip bit-identical, making the contrastive task trivial, so
    such configs get the random base ``DEFAULT_VIEW_BASE`` (see
    :meth:`AugmentConfig.resolved_view_base`). Each call of the returned pipeline draws its
    own base parameters, so two calls on one generator give two different views. A method
    that trains on one view (``views=1``, cross-entropy alone) gets no base.
    """
    return SignalPipeline(cfg, sample_rate, base_codes=cfg.resolved_view_base(views))


def build_spec_pipeline(cfg: AugmentConfig) -> SpecPipeline:
    """The spectrogram pipeline of ``cfg.spec_pipeline``."""
    return SpecPipeline(cfg)
