"""The evaluation's figures and tables as a trial logs them: the confusion matrix as CSV
(class names on both axes) and as a row-normalised heatmap."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.evaluate import EvaluationResult

# Beyond this many classes the confusion-matrix PNG drops the per-cell counts (unreadable).
MAX_ANNOTATED_CLASSES = 30



def confusion_csv(result: EvaluationResult) -> str:
    """Rows are true classes, columns predicted classes, both named."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *result.class_names])
    for name, row in zip(result.class_names, np.asarray(result.confusion), strict=True):
        writer.writerow([name, *(int(count) for count in row)])
    return buffer.getvalue()


def confusion_figure(result: EvaluationResult) -> Any:
    """A matplotlib Figure of the row-normalised confusion matrix (counts in the cells).

    Built on a bare ``Figure`` with an Agg canvas, not ``pyplot``: pyplot keeps global
    figure state that concurrent trials in one process would share.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confusion = np.asarray(result.confusion, dtype=np.float64)
    num_classes = confusion.shape[0]
    support = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
    side = min(4.0 + 0.45 * num_classes, 30.0)
    figure = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, labels=result.class_names, rotation=90)
    axes.set_yticks(ticks, labels=result.class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{result.split}: top-1 {result.top1:.3f}, macro F1 {result.macro_f1:.3f}")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for (row, col), count in np.ndenumerate(confusion):
            if count:
                colour = "white" if normalised[row, col] > 0.5 else "black"
                axes.text(col, row, int(count), ha="center", va="center", fontsize=7, color=colour)
    figure.tight_layout()
    return figure
