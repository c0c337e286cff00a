"""Intervals and significance over seeds and over test clips.

A result is a number next to its reference and an interval. Two sources of noise are
measured here:

- **over seeds**: each seed changes the initialisation, the augmentation draws and the
  labelled subset. With n >= 2 seeds a cell's interval is Student's t over its per-seed
  scores, and two cells are compared paired by seed (the same seed shares its
  initialisation and label subset), with a paired t test.
- **over test clips**: with one seed, the only noise left to measure is which clips the
  test split holds. A cell's interval is a percentile bootstrap over its per-clip
  correctness, and two cells are compared on the same clips with McNemar's exact test
  (only clips one cell gets right and the other wrong carry information).

Every function is a pure function of arrays, so reports and tests use the same code.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

# The key under which a trial reports its per-clip test correctness to the sweep (text,
# not a metric: MLflow gets the predictions as a CSV artifact instead).
CORRECT_KEY = "test_correct"
# The test F1 of every class, reported as JSON text (QUACLRS Table 4 needs it per trial).
PER_CLASS_KEY = "test_per_class_f1"
CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided interval; ``method`` says how it was made."""

    mean: float
    low: float
    high: float
    n: int  # seeds, or test clips for a bootstrap
    method: str  # "t over seeds" | "bootstrap over test clips" | "none"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def describe(self, digits: int = 3) -> str:
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} +- {self.half_width:.{digits}f}"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and Student-t interval over independent replicates (seeds).

    One value has no spread to measure: its interval is NaN, not zero.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, math.nan, math.nan, 1, "none")
    sem = float(data.std(ddof=1)) / math.sqrt(data.size)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, data.size - 1)) * sem
    return Interval(mean, mean - half, mean + half, int(data.size), "t over seeds")


def bootstrap_interval(
    correct: Sequence[bool] | np.ndarray,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Accuracy over test clips with a percentile bootstrap interval (resampling clips)."""
    hits = np.asarray(correct, dtype=np.float64)
    if hits.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "none")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, hits.size, size=(resamples, hits.size))
    means = hits[draws].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(
        float(hits.mean()), float(low), float(high), int(hits.size), "bootstrap over test clips"
    )


@dataclass(frozen=True)
class Comparison:
    """``a - b``: the mean difference, its interval and a two-sided p-value."""

    difference: Interval
    p_value: float
    test: str

    @property
    def significant(self) -> bool:
        return not math.isnan(self.p_value) and self.p_value < ALPHA


def paired_t(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Paired t test over seeds (a[i] and b[i] share seed i)."""
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired scores need equal lengths, got {first.size} and {second.size}")
    differences = first - second
    interval = t_interval(differences)
    if differences.size < 2:
        return Comparison(interval, math.nan, "paired t over seeds")
    if np.allclose(differences, differences[0]):
        p_value = 1.0 if differences[0] == 0 else 0.0  # no spread: equal, or always apart
    else:
        p_value = float(scipy_stats.ttest_rel(first, second).pvalue)
    return Comparison(interval, p_value, "paired t over seeds")


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> Comparison:
    """McNemar's exact test of two classifiers on the same clips.

    Only discordant clips count: ``b`` clips that A gets right and B wrong, ``c`` the
    other way round. Under equal accuracy each discordant clip is a fair coin, so the
    p-value is two-sided binomial on ``min(b, c)`` of ``b + c``. Cells one clip apart
    (b + c = 1) get p = 1: indistinguishable.
    """
    first, second = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"McNemar needs the same clips, got {first.size} and {second.size}")
    only_a = int(np.sum(first & ~second))
    only_b = int(np.sum(~first & second))
    discordant = only_a + only_b
    p_value = 1.0
    if discordant:
        p_value = min(1.0, 2 * float(scipy_stats.binom.cdf(min(only_a, only_b), discordant, 0.5)))
    difference = (only_a - only_b) / max(first.size, 1)
    interval = Interval(difference, math.nan, math.nan, int(first.size), "none")
    return Comparison(interval, p_value, "McNemar exact over test clips")


@dataclass(frozen=True)
class CellScores:
    """What a cell's replicates scored: per-seed values (by seed) and, for a single seed,
    the per-clip correctness of its test predictions."""

    by_seed: Mapping[int, float]
    correct: np.ndarray | None = None  # one seed: bool per test clip

    def interval(self) -> Interval:
        values = list(self.by_seed.values())
        if len(values) >= 2 or self.correct is None:
            return t_interval(values)
        return bootstrap_interval(self.correct)


def compare(a: CellScores, b: CellScores) -> Comparison:
    """``a - b`` paired by seed when both have the same seeds (two or more), else McNemar
    on the same test clips when both have one seed and per-clip correctness."""
    shared = sorted(set(a.by_seed) & set(b.by_seed))
    if len(shared) >= 2:
        return paired_t([a.by_seed[s] for s in shared], [b.by_seed[s] for s in shared])
    if a.correct is not None and b.correct is not None and a.correct.shape == b.correct.shape:
        return mcnemar(a.correct, b.correct)
    mean = np.mean(list(a.by_seed.values())) - np.mean(list(b.by_seed.values()))
    return Comparison(Interval(float(mean), math.nan, math.nan, 0, "none"), math.nan, "none")


def within_noise_of_best(
    cells: Mapping[str, CellScores], mode: str = "max"
) -> tuple[str | None, set[str]]:
    """The best cell (highest mean, or lowest with ``mode="min"``) and every cell not
    significantly different from it (the best included). Cells that cannot be compared
    count as within noise."""
    scored = {name: cell for name, cell in cells.items() if cell.by_seed}
    if not scored:
        return None, set()
    pick = min if mode == "min" else max
    best = pick(scored, key=lambda name: float(np.mean(list(scored[name].by_seed.values()))))
    tied = {name for name, cell in scored.items() if not compare(scored[best], cell).significant}
    return best, tied | {best}


def encode_correct(correct: np.ndarray) -> str:
    """Per-clip correctness packed into text (base64 of the bits): a few hundred bytes for
    a 300-clip test split, small enough to travel in a Tune result to the report."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return f"{len(correct)}:{base64.b64encode(bits.tobytes()).decode()}"


def decode_correct(text: str) -> np.ndarray:
    """The bool array of :func:`encode_correct`."""
    count, _, packed = text.partition(":")
    bits = np.frombuffer(base64.b64decode(packed), dtype=np.uint8)
    return np.unpackbits(bits)[: int(count)].astype(bool)
