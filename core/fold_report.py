"""Per fold of a sweep, its trials side by side as QUACLRS shows a fold (Figures 5-6):
their macro-average ROC curves overlaid in one figure, and each trial's micro and macro
ROC AUC as CSV.

Plain data in, files out, like :mod:`core.report`: the curves come from the
:class:`~core.cells.TrialRecord` rows (each trial reports its curve beside its metrics,
:data:`core.roc.ROC_KEY`). The sweep adds each trial's Grad-CAM image from its MLflow run
to the same folders and attaches them to its parent run as ``figures/<fold>/``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from core.cells import FINISHED, TrialRecord

FIGURES_FOLDER = "figures"  # on the parent run and in the sweep's folder
NO_FOLD = "no_fold"  # the folder of trials whose split has no folds (data.fold unset)
AUC_COLUMNS = ("fold", "trial", "status", "micro_auc", "macro_auc", "top1")


def fold_folder(record: TrialRecord) -> str:
    """``fold_<k>`` for a trial tested on fold k, :data:`NO_FOLD` otherwise."""
    return f"fold_{record.fold}" if record.fold is not None else NO_FOLD


def by_fold(records: Iterable[TrialRecord]) -> dict[str, list[TrialRecord]]:
    """The records grouped by :func:`fold_folder`, in order of first appearance."""
    grouped: dict[str, list[TrialRecord]] = {}
    for record in records:
        grouped.setdefault(fold_folder(record), []).append(record)
    return grouped


def write_fold_roc(records: Sequence[TrialRecord], out_dir: Path) -> dict[str, list[Path]]:
    """Per fold, ``<fold>/roc_auc.csv`` (every trial, blank where it has no AUC: failed,
    or no class with a ROC) and ``<fold>/roc_macro.png`` (the finished trials that
    reported a curve); returns the files written, by fold folder."""
    written: dict[str, list[Path]] = {}
    for fold, members in by_fold(records).items():
        folder = out_dir / fold
        files = [write_auc_csv(members, folder / "roc_auc.csv")]
        drawn = [r for r in members if r.status == FINISHED and r.macro_roc]
        if drawn:
            files.append(write_roc_overlay(drawn, fold, folder / "roc_macro.png"))
        written[fold] = files
    return written


def write_auc_csv(records: Iterable[TrialRecord], path: Path) -> Path:
    """One line per trial: its fold, status, test micro and macro AUC and top-1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(AUC_COLUMNS)
        for record in records:
            values = [record.metric(f"test_{name}") for name in ("micro_auc", "macro_auc", "top1")]
            shown = ["" if math.isnan(value) else f"{value:.6f}" for value in values]
            writer.writerow(["" if record.fold is None else record.fold, record.trial_id,
                             record.status, *shown])  # fmt: skip
    return path


def write_roc_overlay(records: Sequence[TrialRecord], fold: str, path: Path) -> Path:
    """One macro-average ROC curve per trial, its macro AUC (the mean of its per-class
    AUCs) in the legend. A bare Figure on an Agg canvas, as the trials' figures."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 6.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    colours = colormaps["tab10" if len(records) <= 10 else "tab20"]
    for number, record in enumerate(records):
        curve = record.macro_roc or {}
        auc = record.metric("test_macro_auc")
        auc = float(curve.get("auc", math.nan)) if math.isnan(auc) else auc
        axes.plot(curve["fpr"], curve["tpr"], color=colours(number % colours.N), linewidth=1.5,
                  label=f"{record.trial_id} (macro AUC {auc:.3f})")  # fmt: skip
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate",
             ylabel="true-positive rate (mean over classes)",
             title=f"{fold}: macro-average ROC of each trial (test split)")  # fmt: skip
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
