"""The metrics a trial reports, by name, known before it runs.

A space file names the metric its trials are ranked by (``metric: test_top1``); a name no
trial reports would otherwise become NaN in every table after hours of training. The loop
reports, every epoch, its own figures (:data:`EPOCH_METRICS`), the mean of each scalar the
method's forward returns (``MethodConfig.reported``) and, at evaluations, the scores of
each held-out split that has clips (:data:`SPLIT_SCORES`: ``test_top1``, ``val_macro_f1``
...). Torch-free, so a dry run checks a grid or a search in milliseconds; the test suite
checks these names against what the loop and the methods really report.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Reported by core.train.epoch.train_epoch and core.train.loop.decide every epoch.
EPOCH_METRICS = (
    "epoch",
    "lr",
    "samples_per_s",
    "epoch_seconds",
    "data_wait_share",
    "augment_frontend_share",
    "steps",
    "early_stopped",
    "scored_epoch",  # the epoch whose weights the test scores are from (early stopping)
)
# Reported per evaluated split as "<split>_<score>" (core.evaluate.EvaluationResult.metrics):
# QUACLRS 4.6's accuracy, precision, recall and F1 (macro: every class alike; weighted: by
# true support), and the one-vs-rest ROC AUC pooled over every decision (micro) and
# averaged over the classes with a ROC (macro; NaN where no class has one).
SPLIT_SCORES = (
    "top1",
    "macro_f1",
    "weighted_f1",
    "macro_precision",
    "weighted_precision",
    "macro_recall",
    "weighted_recall",
    "micro_auc",
    "macro_auc",
)


def reported_metrics(cfg: Any, has_validation: bool = True) -> list[str]:
    """Every metric a trial of ``cfg`` (an :class:`~core.config.ExperimentConfig`)
    reports; the validation scores only where its split has a validation set."""
    splits = ("test", "val") if has_validation else ("test",)
    return [
        *EPOCH_METRICS,
        *type(cfg.method).reported,
        *(f"{split}_{score}" for split in splits for score in SPLIT_SCORES),
    ]


def unknown_metric(metric: str, known: Iterable[str]) -> str | None:
    """Why ``metric`` cannot rank these trials (naming the metrics they do report), or
    None when they report it."""
    known = list(dict.fromkeys(known))
    if metric in known:
        return None
    return f"metric {metric!r} is not reported by these trials; they report: {', '.join(known)}"
