"""The two views of a training pair, and QUACLRS's fixed SpecAugment / PatchAugment variants.

A contrastive pair whose views are bit-identical teaches nothing, so every code and the
empty pipeline must give two different views when built as the training loop builds them.
The fixed variants SA0-SA2 / PA0-PA2 stand for the paper's saved augmented images: one
draw per clip that no generator, batch position or epoch can change.
"""

from __future__ import annotations

import pytest
import torch

from core.augment import (
    SIGNAL_AUGMENTATIONS,
    SPEC_AUGMENTATIONS,
    build_signal_pipeline,
    build_spec_pipeline,
    build_view_augment,
)
from core.augment_spec import spectrogram_fingerprint
from core.config import AugmentConfig, ConfigError, ExperimentConfig, FrontendConfig
from core.features import build_frontend
from core.registry import DEFAULT_VIEW_BASE, DETERMINISTIC_CODES

SR = 16_000
VARIANT_CODES = {"SA": ["SA0", "SA1", "SA2"], "PA": ["PA0", "PA1", "PA2"]}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    """Four half-second harmonic tones with a decaying envelope and a little noise, (4, 8000):
    voiced enough for pitch shift and stretch to act on, different enough to tell apart."""
    t = torch.arange(8_000) / SR
    rows = []
    for index, pitch in enumerate((220.0, 330.0, 440.0, 587.0)):
        tone = sum(torch.sin(2 * torch.pi * pitch * k * t) / k for k in (1, 2, 3))
        envelope = torch.exp(-t * (2.0 + index))
        rows.append(0.3 * envelope * tone)
    noise = 0.01 * torch.randn(4, 8_000, generator=_gen(11))
    return torch.stack(rows) + noise


@pytest.fixture(scope="module")
def frontend() -> torch.nn.Module:
    return build_frontend(FrontendConfig(name="stft3"), SR)


def _two_views(
    cfg: AugmentConfig, waves: torch.Tensor, frontend: torch.nn.Module, seed: int = 0
) -> list[torch.Tensor]:
    """Both views exactly as core.train.epoch.train_epoch builds them: one generator, two calls."""
    signal_augment = build_view_augment(cfg, SR)
    spec_augment = build_spec_pipeline(cfg)
    generator = _gen(seed)
    with torch.no_grad():
        return [
            spec_augment(frontend(signal_augment(waves, generator)), generator) for _ in range(2)
        ]


# --- views: never identical by default --------------------------------------------------
@pytest.mark.parametrize("code", [None, *sorted(SIGNAL_AUGMENTATIONS)])
def test_the_two_views_differ_for_every_signal_code_and_the_empty_pipeline(
    code: str | None, clips: torch.Tensor, frontend: torch.nn.Module
):
    cfg = AugmentConfig(pipeline=[] if code is None else [code])
    first, second = _two_views(cfg, clips, frontend)
    assert not torch.equal(first, second), f"{code or 'empty pipeline'}: identical views"
    # Per clip, not only somewhere in the batch: every pair must be a real pair.
    assert all(not torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("code", sorted(SPEC_AUGMENTATIONS))
def test_the_two_views_differ_for_every_spectrogram_code(
    code: str, clips: torch.Tensor, frontend: torch.nn.Module
):
    first, second = _two_views(AugmentConfig(spec_pipeline=[code]), clips, frontend)
    assert all(not torch.equal(a, b) for a, b in zip(first, second, strict=True)), code


@pytest.mark.parametrize(
    ("pipeline", "spec_pipeline"), [([], []), (["TST0.8"], []), (["PS+2"], ["SA1"])]
)
def test_an_empty_view_base_gives_identical_views_for_fixed_codes(
    pipeline: list[str], spec_pipeline: list[str], clips: torch.Tensor, frontend: torch.nn.Module
):
    # The control that shows the tests above can fail: without a base these are identical.
    cfg = AugmentConfig(pipeline=pipeline, spec_pipeline=spec_pipeline, view_base=[])
    first, second = _two_views(cfg, clips, frontend)
    assert torch.equal(first, second)


def test_the_default_base_goes_only_under_deterministic_views():
    base = list(DEFAULT_VIEW_BASE)
    assert base == ["TS", "FD"]
    assert AugmentConfig().resolved_view_base() == base
    assert AugmentConfig(pipeline=["TST1.2", "PS-2"]).resolved_view_base() == base
    assert AugmentConfig(spec_pipeline=["PA2"]).resolved_view_base() == base
    assert AugmentConfig(pipeline=["WN"], probability=0.0).resolved_view_base() == base
    assert AugmentConfig(pipeline=["FD", "TM"]).resolved_view_base() == []
    assert AugmentConfig(pipeline=["TST0.8", "WN5"]).resolved_view_base() == []
    assert AugmentConfig(spec_pipeline=["SA0", "PA"]).resolved_view_base() == []
    assert AugmentConfig(pipeline=["PS+2"], view_base=["WN"]).resolved_view_base() == ["WN"]
    assert AugmentConfig(view_base=[]).resolved_view_base() == []


def test_quaclrs_two_setting_codes_get_the_base_unless_a_random_code_joins_them():
    """TSTQ then PSQ alone make one pair in four identical: the base goes under them; with
    SpecAugment's random masks (or noise) the views always differ and no base is added."""
    base = list(DEFAULT_VIEW_BASE)
    assert AugmentConfig(pipeline=["TSTQ", "PSQ"]).resolved_view_base() == base
    assert AugmentConfig(pipeline=["TSTQ", "PS+2"]).resolved_view_base() == base
    assert AugmentConfig(pipeline=["TSTQ", "PSQ"], spec_pipeline=["SA"]).resolved_view_base() == []
    assert AugmentConfig(pipeline=["TSTQ", "WNQ"]).resolved_view_base() == []


def test_one_view_gets_exactly_its_pipeline_and_no_base(clips: torch.Tensor):
    """Supervised training sees one view of each clip, so there is no pair to tell apart:
    it gets the augmentation its config names and nothing else (no hidden time shift and
    fade under an empty pipeline); a view_base given by name still applies."""
    assert AugmentConfig().resolved_view_base(views=1) == []
    assert AugmentConfig(pipeline=["PS+2"]).resolved_view_base(views=1) == []
    assert AugmentConfig(view_base=["WN"]).resolved_view_base(views=1) == ["WN"]
    untouched = build_view_augment(AugmentConfig(), SR, views=1)
    assert untouched.base_codes == []
    assert torch.equal(untouched(clips, _gen(5)), clips)
    assert not torch.equal(build_view_augment(AugmentConfig(), SR)(clips, _gen(5)), clips)


def test_a_random_pipeline_is_exactly_the_old_one(clips: torch.Tensor):
    cfg = AugmentConfig(pipeline=["FD", "TM"])
    view_augment, old = build_view_augment(cfg, SR), build_signal_pipeline(cfg, SR)
    assert view_augment.base_codes == []
    new_generator, old_generator = _gen(4), _gen(4)
    for _ in range(2):  # and the generator is left in the same state for the second view
        assert torch.equal(view_augment(clips, new_generator), old(clips, old_generator))


def test_the_base_runs_first_and_ignores_the_probability(clips: torch.Tensor):
    # probability 0: the ablated PS+2 never applies, the base TS always does.
    never = build_view_augment(
        AugmentConfig(pipeline=["PS+2"], view_base=["TS"], probability=0), SR
    )
    cfg = AugmentConfig()
    expected = SIGNAL_AUGMENTATIONS["TS"](clips, _gen(2), cfg, SR)
    assert torch.equal(never(clips, _gen(2)), expected)
    # probability 1: the base, then the ablated code, on one generator.
    both = build_view_augment(AugmentConfig(pipeline=["WN"], view_base=["TS"]), SR)
    generator = _gen(3)
    shifted = SIGNAL_AUGMENTATIONS["TS"](clips, generator, cfg, SR)
    expected = SIGNAL_AUGMENTATIONS["WN"](shifted, generator, cfg, SR)
    assert torch.equal(both(clips[:, None], _gen(3))[:, 0], expected)


def test_an_unknown_base_code_is_rejected_naming_the_field():
    with pytest.raises(ConfigError, match=r"augment\.view_base.*'XX'.*TST0\.8"):
        ExperimentConfig.from_dict({"augment": {"view_base": ["TS", "XX"]}})
    with pytest.raises(ConfigError, match=r"augment\.view_base.*'SA'"):
        ExperimentConfig.from_dict({"augment": {"view_base": ["SA"]}})  # not a signal code
    assert ExperimentConfig.from_dict({"augment": {"view_base": []}}).augment.view_base == []


def test_the_deterministic_set_matches_what_the_codes_do(clips: torch.Tensor):
    # The torch-free set decides where a base goes, so it must agree with the code: a
    # listed code ignores its generator; any other one draws from it.
    cfg = AugmentConfig()
    maps = torch.randn(4, 3, 64, 80, generator=_gen(5))
    for code in SIGNAL_AUGMENTATIONS:
        function = SIGNAL_AUGMENTATIONS[code]
        same = torch.equal(function(clips, _gen(1), cfg, SR), function(clips, _gen(2), cfg, SR))
        assert same == (code in DETERMINISTIC_CODES), code
    for code in SPEC_AUGMENTATIONS:
        function = SPEC_AUGMENTATIONS[code]
        same = torch.equal(function(maps, _gen(1), cfg), function(maps, _gen(2), cfg))
        assert same == (code in DETERMINISTIC_CODES), code
    unregistered = DETERMINISTIC_CODES - set(SIGNAL_AUGMENTATIONS) - set(SPEC_AUGMENTATIONS)
    assert not unregistered


# --- SA0-SA2 / PA0-PA2: one fixed draw per clip -------------------------------------------
def _maps(batch: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 80, generator=_gen(seed))


@pytest.mark.parametrize("code", [*VARIANT_CODES["SA"], *VARIANT_CODES["PA"]])
def test_a_variant_is_the_same_for_a_clip_in_any_call_position_and_batch(code: str):
    augment, cfg = SPEC_AUGMENTATIONS[code], AugmentConfig()
    x = _maps()
    reference = augment(x, _gen(1), cfg)
    assert not torch.equal(reference, x)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.equal(augment(x[order], _gen(2), cfg), reference[order])
    # Clip 2 alone, and clip 2 among clips it has never been batched with.
    assert torch.equal(augment(x[2:3], _gen(3), cfg), reference[2:3])
    mixed = torch.cat([_maps(3, seed=9), x[2:3]])
    assert torch.equal(augment(mixed, _gen(4), cfg)[3], reference[2])


@pytest.mark.parametrize("kind", sorted(VARIANT_CODES))
def test_variants_zero_one_and_two_differ_on_every_clip(kind: str):
    x, cfg = _maps(), AugmentConfig()
    changed = [SPEC_AUGMENTATIONS[code](x, _gen(), cfg) != x for code in VARIANT_CODES[kind]]
    for clip in range(x.shape[0]):
        for first in range(3):
            for second in range(first + 1, 3):
                assert not torch.equal(changed[first][clip], changed[second][clip]), (
                    f"{kind}{first} and {kind}{second} agree on clip {clip}"
                )


def test_a_different_clip_value_gives_a_different_fingerprint():
    x = _maps(2)
    nudged = x.clone()
    nudged[1, 2, 40, 7] = torch.nextafter(nudged[1, 2, 40, 7], torch.tensor(10.0))
    before, after = spectrogram_fingerprint(x), spectrogram_fingerprint(nudged)
    assert before[0] == after[0] and before[1] != after[1]
    assert torch.equal(spectrogram_fingerprint(x[[1, 0]]), before[[1, 0]])


def _runs(flags: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    runs, length = [], 0
    for flag in [*flags.tolist(), False]:
        if flag:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


@pytest.mark.parametrize("code", VARIANT_CODES["SA"])
def test_spec_variants_mask_two_bands_per_axis_of_at_most_twenty_filled_with_the_minimum(
    code: str,
):
    x = _maps(32, seed=1)
    out = SPEC_AUGMENTATIONS[code](x, _gen(), AugmentConfig())
    floor = x.amin(dim=(2, 3), keepdim=True)  # per clip and channel
    at_floor = (out == floor).all(dim=1)  # (B, F, frames): every channel filled together
    rows_masked = at_floor.all(dim=2)  # frequency rows masked over the whole clip
    cols_masked = at_floor.all(dim=1)
    masked_rows_seen = masked_cols_seen = 0
    for clip in range(x.shape[0]):
        for runs in (_runs(rows_masked[clip]), _runs(cols_masked[clip])):
            # Two masks give two runs of <= 20 each, or one run (overlapping) of <= 40.
            assert len(runs) <= 2 and sum(runs) <= 40
            assert all(run <= 20 for run in runs) if len(runs) == 2 else True
        masked_rows_seen += int(rows_masked[clip].sum())
        masked_cols_seen += int(cols_masked[clip].sum())
        # Nothing outside those bands changed.
        bands = rows_masked[clip][:, None] | cols_masked[clip][None, :]
        assert torch.equal(out[clip][:, ~bands], x[clip][:, ~bands])
        assert torch.equal(out[clip][:, bands], floor[clip].expand_as(x[clip])[:, bands])
    assert masked_rows_seen > 0 and masked_cols_seen > 0
    changed = out != x
    assert torch.equal(out[changed], floor.expand_as(x)[changed])


@pytest.mark.parametrize("code", VARIANT_CODES["PA"])
def test_patch_variants_move_at_most_five_patches_within_the_clip(code: str):
    x = _maps(8, seed=2)
    out = SPEC_AUGMENTATIONS[code](x, _gen(), AugmentConfig())
    for clip_in, clip_out in zip(x, out, strict=True):
        changed = clip_out != clip_in
        per_channel = changed.flatten(1).sum(1)
        assert torch.all(per_channel <= 5 * 100) and per_channel.sum() > 0
        assert torch.equal(changed[0], changed[1]) and torch.equal(changed[0], changed[2])
        for channel in range(x.shape[1]):
            values = set(clip_in[channel].flatten().tolist())
            assert set(clip_out[channel][changed[channel]].tolist()) <= values
