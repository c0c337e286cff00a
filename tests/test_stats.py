"""Intervals and significance against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.stats import (
    CellScores,
    bootstrap_interval,
    compare,
    mcnemar,
    paired_t,
    t_interval,
    within_noise_of_best,
)


def test_t_interval_over_three_seeds_by_hand() -> None:
    # The untrained control over seeds 0/1/2 (FSDD, 30 epochs): 0.770, 0.733, 0.713.
    # mean 0.73867; sample sd 0.028937; sem 0.016707; t(0.975, 2) = 4.3027 -> 0.07188.
    interval = t_interval([0.770, 0.733, 0.713])
    assert interval.mean == pytest.approx(0.738667, abs=1e-6)
    assert interval.half_width == pytest.approx(0.07188, abs=5e-5)
    assert interval.n == 3 and interval.method == "t over seeds"
    assert interval.describe() == "0.739 +- 0.072"
    single = t_interval([0.5])
    assert single.mean == 0.5 and math.isnan(single.half_width)  # one seed: no spread


def test_bootstrap_interval_brackets_the_accuracy() -> None:
    correct = np.array([True] * 240 + [False] * 60)  # 0.8 on 300 clips
    interval = bootstrap_interval(correct, seed=1)
    assert interval.mean == 0.8
    # Normal approximation: 1.96 * sqrt(0.8 * 0.2 / 300) = 0.0453.
    assert interval.half_width == pytest.approx(0.0453, abs=0.006)
    assert interval.low < 0.8 < interval.high


def test_mcnemar_exact_by_hand() -> None:
    base = np.array([True] * 10 + [False] * 10)
    three_better = base.copy()
    three_better[10:13] = True  # 3 discordant clips, all in favour of the second
    result = mcnemar(three_better, base)
    assert result.p_value == pytest.approx(0.25)  # 2 * 0.5**3
    assert result.difference.mean == pytest.approx(3 / 20)
    # Two cells one test clip apart are indistinguishable.
    one_better = base.copy()
    one_better[10] = True
    assert mcnemar(one_better, base).p_value == 1.0
    assert not mcnemar(one_better, base).significant
    # 10 discordant clips all one way: p = 2 * 0.5**10 = 0.00195 -> significant.
    assert mcnemar(np.ones(20, bool), base).p_value == pytest.approx(2 * 0.5**10)
    assert mcnemar(np.ones(20, bool), base).significant


def test_paired_t_over_seeds_by_hand() -> None:
    # SimCLR vs control paired by seed: differences 0.16, 0.23, 0.264.
    simclr, control = [0.930, 0.963, 0.977], [0.770, 0.733, 0.713]
    result = paired_t(simclr, control)
    differences = np.array(simclr) - np.array(control)
    sd = differences.std(ddof=1)
    t_stat = differences.mean() / (sd / math.sqrt(3))
    assert result.difference.mean == pytest.approx(0.218, abs=1e-3)
    assert result.difference.half_width == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-3)
    # t = 0.218 / (0.05303 / sqrt 3) = 7.12; two-sided p with 2 degrees of freedom:
    # 2 * (0.5 - t / (2 * sqrt(t**2 + 2))) = 0.0192
    assert t_stat == pytest.approx(7.12, abs=0.01)
    assert result.p_value == pytest.approx(0.0192, abs=3e-4) and result.significant


def test_within_noise_of_best_with_one_seed_uses_the_test_clips() -> None:
    clips = 300
    rng = np.random.default_rng(0)
    best = rng.random(clips) < 0.9
    one_clip_worse = best.copy()
    one_clip_worse[np.flatnonzero(best)[0]] = False
    much_worse = best & (rng.random(clips) < 0.6)
    cells = {
        "best": CellScores({0: best.mean()}, best),
        "one clip apart": CellScores({0: one_clip_worse.mean()}, one_clip_worse),
        "much worse": CellScores({0: much_worse.mean()}, much_worse),
    }
    top, tied = within_noise_of_best(cells)
    assert top == "best" and tied == {"best", "one clip apart"}
    assert cells["best"].interval().method == "bootstrap over test clips"


def test_within_noise_of_best_with_seeds_pairs_by_seed() -> None:
    cells = {
        "a": CellScores({0: 0.90, 1: 0.92, 2: 0.91}),
        "b": CellScores({0: 0.89, 1: 0.93, 2: 0.90}),  # noise around a
        "c": CellScores({0: 0.60, 1: 0.62, 2: 0.61}),  # clearly below
    }
    top, tied = within_noise_of_best(cells)
    assert top == "a" and tied == {"a", "b"}
    assert compare(cells["a"], cells["c"]).significant
    assert cells["a"].interval().method == "t over seeds"
