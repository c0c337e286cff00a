"""The evaluation's figures and tables as a trial logs them: the confusion matrix as CSV
(class names on both axes) and as a row-normalised heatmap, the one-vs-rest ROC curves,
and the Grad-CAM maps of a few test clips (QUACLRS 4.6, Figures 5-6).

Every figure is built on a bare ``Figure`` with an Agg canvas, not ``pyplot``: pyplot
keeps global figure state that concurrent trials in one process would share."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.evaluate import EvaluationResult
    from core.gradcam import GradCamMaps

# Beyond this many classes the confusion-matrix PNG drops the per-cell counts (unreadable).
MAX_ANNOTATED_CLASSES = 30
# Grad-CAM panels per row of its figure.
GRADCAM_COLUMNS = 4


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def confusion_csv(result: EvaluationResult) -> str:
    """Rows are true classes, columns predicted classes, both named."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *result.class_names])
    for name, row in zip(result.class_names, np.asarray(result.confusion), strict=True):
        writer.writerow([name, *(int(count) for count in row)])
    return buffer.getvalue()


def confusion_figure(result: EvaluationResult) -> Any:
    """A matplotlib Figure of the row-normalised confusion matrix (counts in the cells)."""
    confusion = np.asarray(result.confusion, dtype=np.float64)
    num_classes = confusion.shape[0]
    support = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
    side = min(4.0 + 0.45 * num_classes, 30.0)
    figure = new_figure(side + 1.5, side)
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


def roc_figure(result: EvaluationResult) -> Any:
    """One-vs-rest ROC curve of every class that has one, with the micro and macro
    averages, AUC in the legend; the classes without a ROC (absent from the split, or the
    only class in it) are named in the title."""
    roc = result.roc
    figure = new_figure(7.5, 6.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    colours = _colours(len(result.class_names))
    if roc is not None:
        for index, curve in roc.per_class.items():
            axes.plot(curve.fpr, curve.tpr, color=colours[index], linewidth=1,
                      label=f"{result.class_names[index]} (AUC {curve.auc:.3f})")  # fmt: skip
        if roc.micro is not None:
            axes.plot(roc.micro.fpr, roc.micro.tpr, color="black", linestyle="--", linewidth=2,
                      label=f"micro-average (AUC {roc.micro.auc:.3f})")  # fmt: skip
        if roc.macro is not None:
            axes.plot(roc.macro.fpr, roc.macro.tpr, color="navy", linestyle="-.", linewidth=2,
                      label=f"macro-average (mean AUC {roc.macro.auc:.3f})")  # fmt: skip
    title = f"{result.split}: one-vs-rest ROC"
    skipped = list(range(len(result.class_names))) if roc is None else roc.skipped
    if skipped:
        names = ", ".join(result.class_names[index] for index in skipped[:8])
        more = f" and {len(skipped) - 8} more" if len(skipped) > 8 else ""
        title += f"\nno ROC (class absent from the {result.split} split, or alone in it): "
        title += names + more
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate",
             ylabel="true-positive rate", title=title)  # fmt: skip
    axes.title.set_fontsize(9)
    axes.legend(fontsize=7, loc="lower right", ncol=2 if len(result.class_names) > 12 else 1)
    figure.tight_layout()
    return figure


def gradcam_figure(maps: GradCamMaps) -> Any:
    """Each clip's input spectrogram (first channel) with its Grad-CAM map over it, the
    more opaque the stronger, titled with the true and the predicted class; the title
    says when the layer's map is 1x1 (every map is then constant)."""
    count = len(maps.images)
    columns = min(GRADCAM_COLUMNS, count)
    rows = -(-count // columns)
    figure = new_figure(3.2 * columns, 2.9 * rows + 0.6)
    for number, (image, heat) in enumerate(zip(maps.images, maps.maps, strict=True)):
        axes = figure.add_subplot(rows, columns, number + 1)
        axes.imshow(image, origin="lower", aspect="auto", cmap="gray")
        opacity = np.clip(0.65 * np.asarray(heat, dtype=np.float64), 0.0, 1.0)
        axes.imshow(heat, origin="lower", aspect="auto", cmap="jet", alpha=opacity, vmin=0, vmax=1)
        title = f"true {maps.true[number]}\npredicted {maps.predicted[number]}"
        if not np.any(heat > 0):
            title += " (no evidence)"
        axes.set_title(title, fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    height, width = maps.map_size
    title = f"Grad-CAM of the predicted class at {maps.layer} ({height}x{width} map)"
    if height * width == 1:
        title += "\na 1x1 map at this input size: each clip's map is constant"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def _colours(count: int) -> list[Any]:
    """``count`` distinguishable line colours (tab10, tab20, then a continuous map)."""
    from matplotlib import colormaps

    name = "tab10" if count <= 10 else "tab20" if count <= 20 else "turbo"
    cmap = colormaps[name]
    if count <= 20:
        return [cmap(index % cmap.N) for index in range(count)]
    return [cmap(index / max(count - 1, 1)) for index in range(count)]
