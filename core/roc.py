"""One-vs-rest ROC curves of a multi-class classifier and their micro and macro averages
(QUACLRS 4.6: "ROC curves for multi-class classification"; Figure 6).

A class without both positive and negative clips in the scored split has no ROC: its
true- or false-positive rate is undefined (a class absent from a speaker's fold, or the
only class present). It is left out of the per-class curves and of the macro mean, and
named in :attr:`RocCurves.skipped` so that a figure can say so rather than draw nothing
silently. Micro averaging pools every (clip, class) decision, as sklearn's
``average="micro"`` does, so a skipped class's negatives still count there.

Torch-free: the sweep's report reads the macro curve a trial reported (:data:`ROC_KEY`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

# The key under which a trial reports its test split's macro-average ROC curve to the
# sweep (JSON text beside the metrics, not a metric), for the parent run's per-fold figure.
ROC_KEY = "test_macro_roc"
# False-positive rates at which the macro-average curve is kept: the per-class curves have
# one point per distinct score, so they are averaged on a common grid (and a trial's
# report stays a few hundred numbers whatever the size of its test split).
MACRO_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Curve:
    """One ROC curve: false- and true-positive rates, and the area under it."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


@dataclass(frozen=True)
class RocCurves:
    """The ROC curves of one scored split.

    ``macro`` is the mean of the per-class curves on :data:`MACRO_GRID`; its ``auc`` is
    the mean of the per-class AUCs (what ``roc_auc_score(average="macro")`` reports),
    which differs slightly from the area under the averaged curve."""

    per_class: dict[int, Curve]  # class index -> its one-vs-rest curve (classes with a ROC)
    micro: Curve | None  # None with fewer than two classes or no finite scores
    macro: Curve | None  # None when no class has a ROC
    skipped: list[int]  # classes without both positive and negative clips

    @property
    def micro_auc(self) -> float:
        return self.micro.auc if self.micro is not None else math.nan

    @property
    def macro_auc(self) -> float:
        return self.macro.auc if self.macro is not None else math.nan


def roc_curves(targets: np.ndarray, probabilities: np.ndarray, num_classes: int) -> RocCurves:
    """One-vs-rest curves of every class with a ROC, and their micro and macro averages.

    ``probabilities[i, k]`` is clip i's score for class k (softmax). Scores that are not
    all finite (a diverged trial) give no curves rather than an error: the trial's other
    scores stand."""
    targets = np.asarray(targets, dtype=np.int64)
    scores = np.asarray(probabilities, dtype=np.float64)
    if not len(targets) or not np.isfinite(scores).all():
        return RocCurves({}, None, None, list(range(num_classes)))
    truth = targets[:, None] == np.arange(num_classes)[None, :]
    per_class: dict[int, Curve] = {}
    skipped: list[int] = []
    for index in range(num_classes):
        positives = int(truth[:, index].sum())
        if positives in (0, len(targets)):
            skipped.append(index)
            continue
        per_class[index] = _curve(truth[:, index], scores[:, index])
    micro = None
    if num_classes >= 2:
        micro = _curve(truth.ravel(), scores.ravel())
    macro = None
    if per_class:
        curves = list(per_class.values())
        mean_tpr = np.mean([np.interp(MACRO_GRID, c.fpr, c.tpr) for c in curves], axis=0)
        macro = Curve(MACRO_GRID.copy(), mean_tpr, float(np.mean([c.auc for c in curves])))
    return RocCurves(per_class, micro, macro, skipped)


def _curve(positive: np.ndarray, score: np.ndarray) -> Curve:
    """One binary ROC curve and its area: a point at every distinct score, ties moving
    together, as ``sklearn.metrics.roc_curve(drop_intermediate=False)`` and ``auc``
    compute them (tests/test_scoring.py checks against them). Written here because
    importing ``sklearn.metrics`` costs every trial's process about a CPU-second, about
    20 s of a suite of tiny trials on two cores."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    ends = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]  # last of each tie
    true_positives = np.cumsum(positive)[ends]
    false_positives = ends + 1 - true_positives
    tpr = np.r_[0.0, true_positives / true_positives[-1]]
    fpr = np.r_[0.0, false_positives / false_positives[-1]]
    return Curve(fpr, tpr, float(np.trapezoid(tpr, fpr)))


def macro_roc_json(curves: RocCurves) -> str | None:
    """The macro-average curve as the JSON a trial reports under :data:`ROC_KEY`, or None
    when there is none."""
    if curves.macro is None:
        return None
    return json.dumps(
        {
            "fpr": [round(float(v), 4) for v in curves.macro.fpr],
            "tpr": [round(float(v), 4) for v in curves.macro.tpr],
            "auc": curves.macro.auc,
        }
    )


def parse_macro_roc(text: str) -> dict[str, list[float] | float]:
    """:func:`macro_roc_json`'s text back as ``{"fpr": [...], "tpr": [...], "auc": x}``."""
    data = json.loads(text)
    return {
        "fpr": [float(v) for v in data["fpr"]],
        "tpr": [float(v) for v in data["tpr"]],
        "auc": float(data["auc"]),
    }
