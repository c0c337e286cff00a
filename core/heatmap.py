"""CLAR Figure 4: the augmentation matrix of one panel, as numbers, CSV, heatmap and text.

The matrix follows the paper's Figure 4: rows are the first augmentation, columns the
second, the diagonal is the single augmentation applied once; an extra column holds the
mean of each row ("when applied first"), an extra row the mean of each column ("when
applied second"), and the corner the mean of the whole matrix. Means run over the cells
that finished; a failed cell is shown as failed and left out of every mean, a cell that
has not run yet is left empty. The best cell is the highest, or the lowest for a metric
ranked with ``mode="min"`` (a loss); cells on the wrong side of the untrained control
beyond noise are marked.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.cells import (
    FAILED,
    FINISHED,
    SUPERVISED,
    UNTRAINED,
    Cell,
    TrialRecord,
    controls_of,
    gather_cells,
)

MEAN_FIRST = "mean (first)"
MEAN_SECOND = "mean (second)"
WORSE_MARK, BEST_MARK = "v", "*"  # terminal marks: worse than the control, within noise of best
STOPPED_MARK = "s"  # stopped early by the trial scheduler (ASHA): its value is from an earlier rung


@dataclass
class AugmentationMatrix:
    """Figure 4 for one panel: ``values[i, j]`` is the metric of (row i first, column j second).

    ``values`` has shape (n + 1, n + 1): the last column holds the row means, the last row
    the column means, the corner the mean of the n x n block. ``status`` has shape (n, n).
    """

    panel: str
    metric: str
    codes: list[str]
    values: np.ndarray
    status: np.ndarray
    half_width: np.ndarray | None = None  # (n, n) interval half-widths (NaN: one value)
    within_best: np.ndarray | None = None  # (n, n) bool: not distinguishable from the best
    # (n, n) bool: beyond noise on the wrong side of the untrained control (below it for a
    # score, above it for a loss)
    worse_than_control: np.ndarray | None = None
    controls: dict[str, Cell] = field(default_factory=dict)
    # (n, n) bool: a seed was ended early by the trial scheduler; the value mixes budgets
    stopped_early: np.ndarray | None = None
    mode: str = "max"  # "min": the lowest value is the best

    @property
    def best(self) -> tuple[str, str, float] | None:
        """The best finished cell as (first, second, value), or None if none finished."""
        block = self.values[:-1, :-1]
        if np.all(np.isnan(block)):
            return None
        pick = np.nanargmin if self.mode == "min" else np.nanargmax
        i, j = np.unravel_index(pick(block), block.shape)
        return self.codes[i], self.codes[j], float(block[i, j])


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def augmentation_matrix(
    records: Iterable[TrialRecord],
    codes: Sequence[str],
    panel: str,
    metric: str = "test_top1",
    cells: dict[str, Cell] | None = None,
    mode: str = "max",
) -> AugmentationMatrix:
    """Gather one panel's cells into the (n+1) x (n+1) Figure 4 layout with means.

    A cell's value is its mean over seeds; a cell with a failed seed shows as failed only
    when no seed finished.
    """
    records = list(records)
    cells = cells if cells is not None else gather_cells(records, metric, mode)
    codes = list(codes)
    index = {code: position for position, code in enumerate(codes)}
    size = len(codes)
    block = np.full((size, size), np.nan)
    status = np.full((size, size), "", dtype=object)
    half = np.full((size, size), np.nan)
    best = np.zeros((size, size), dtype=bool)
    worse = np.zeros((size, size), dtype=bool)
    stopped = np.zeros((size, size), dtype=bool)
    for record in records:
        if record.panel != panel or record.first not in index or record.second not in index:
            continue
        i, j = index[record.first], index[record.second]
        cell = cells[record.cell_id]
        stopped[i, j] = cell.stopped_early  # a seed ended at a rung: the value mixes budgets
        status[i, j] = FINISHED if cell.finished else record.status
        if cell.finished:
            block[i, j] = cell.interval.mean
            half[i, j] = cell.interval.half_width
            best[i, j] = cell.within_best
            worse[i, j] = cell.worse_than_control
    values = np.full((size + 1, size + 1), np.nan)
    values[:size, :size] = block
    for k in range(size):
        values[k, size] = _nanmean(block[k, :])  # applied first: the row
        values[size, k] = _nanmean(block[:, k])  # applied second: the column
    values[size, size] = _nanmean(block)
    return AugmentationMatrix(
        panel=panel,
        metric=metric,
        codes=codes,
        values=values,
        status=status,
        half_width=half,
        within_best=best,
        worse_than_control=worse,
        controls=controls_of(cells, panel),
        stopped_early=stopped,
        mode=mode,
    )


def _cell_text(value: float, status: str) -> str:
    if status == FAILED:
        return "failed"
    return "" if math.isnan(value) else f"{value:.4f}"


def write_matrix_csv(matrix: AugmentationMatrix, path: Path) -> Path:
    """CSV with the codes as header/index plus the mean column, mean row and corner."""
    size = len(matrix.codes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"first \\ second ({matrix.metric})", *matrix.codes, MEAN_FIRST])
        for i, code in enumerate(matrix.codes):
            cells = [_cell_text(matrix.values[i, j], matrix.status[i, j]) for j in range(size)]
            writer.writerow([code, *cells, _cell_text(matrix.values[i, size], "")])
        writer.writerow([MEAN_SECOND, *(_cell_text(v, "") for v in matrix.values[size, :])])
    return path


def read_matrix_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Codes and the (n+1) x (n+1) values of a CSV written by :func:`write_matrix_csv`.

    Failed and missing cells read back as NaN.
    """
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    codes = rows[0][1:-1]

    def number(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return math.nan

    values = np.array([[number(cell) for cell in row[1:]] for row in rows[1:]])
    return codes, values


def _control_line(matrix: AugmentationMatrix, scale: float) -> str:
    parts = []
    for role, label in ((UNTRAINED, "untrained control"), (SUPERVISED, "supervised")):
        cell = matrix.controls.get(role)
        if cell is not None and cell.scores.by_seed:
            interval = cell.interval
            shown = f"{interval.mean * scale:.1f}"
            if not math.isnan(interval.half_width):
                shown += f" +- {interval.half_width * scale:.1f}"
            parts.append(f"{label} {shown}")
    return "; ".join(parts)


def write_heatmap_png(matrix: AugmentationMatrix, path: Path, title: str | None = None) -> Path:
    """The Figure 4 heatmap: mean (and +- half-width over seeds or clips) in each cell,
    means set apart, failed cells hatched, cells within noise of the best framed in white,
    cells worse than the untrained control framed in red and marked with an arrow (down
    for a score, up for a loss); the controls are named under the title."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    size = len(matrix.codes)
    labels = [*matrix.codes, "mean"]
    scale = 100.0 if np.nanmax(np.abs(np.nan_to_num(matrix.values))) <= 1.0 else 1.0
    shown = matrix.values * scale
    figure, axes = plt.subplots(figsize=(1.15 * size + 2.8, 1.0 * size + 2.4))
    limits = (0.0, 100.0) if scale == 100.0 else (None, None)  # accuracies: a fixed 0-100 scale
    image = axes.imshow(np.ma.masked_invalid(shown), cmap="viridis", vmin=limits[0], vmax=limits[1])
    for i in range(size + 1):
        for j in range(size + 1):
            inside = i < size and j < size
            status = matrix.status[i, j] if inside else ""
            if status == FAILED:
                axes.add_patch(
                    plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", color="red")
                )
                text, color = "failed", "red"
            elif math.isnan(shown[i, j]):
                text, color = "", "white"
            else:
                text, color = f"{shown[i, j]:.1f}", "white"
                if inside and matrix.half_width is not None:
                    half = matrix.half_width[i, j] * scale
                    text += "" if math.isnan(half) else f"\n+-{half:.1f}"
            if inside and matrix.stopped_early is not None and matrix.stopped_early[i, j]:
                text += "\n(stopped)"
            if inside and matrix.worse_than_control is not None and matrix.worse_than_control[i, j]:
                axes.add_patch(
                    plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, color="red", lw=2)
                )
                text = ("\u2191 " if matrix.mode == "min" else "\u2193 ") + text
            if inside and matrix.within_best is not None and matrix.within_best[i, j]:
                axes.add_patch(
                    plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, color="white", lw=2.5)
                )
            weight = "bold" if i == size or j == size else "normal"
            axes.text(j, i, text, ha="center", va="center", color=color, fontsize=7, weight=weight)
    axes.axhline(size - 0.5, color="black", linewidth=2)
    axes.axvline(size - 0.5, color="black", linewidth=2)
    axes.set_xticks(range(size + 1), labels)
    axes.set_yticks(range(size + 1), labels)
    axes.set_xlabel("second augmentation")
    axes.set_ylabel("first augmentation")
    unit = " (%)" if scale == 100.0 else ""
    heading = title or f"{matrix.panel}: {matrix.metric}{unit}"
    controls = _control_line(matrix, scale)
    side = "\u2191: above" if matrix.mode == "min" else "\u2193: below"
    legend = f"white frame: within noise of the best; red frame, {side} the untrained control"
    axes.set_title(f"{heading}\n{controls}\n{legend}" if controls else heading, fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def matrix_text(matrix: AugmentationMatrix) -> str:
    """A fixed-width rendering of one matrix for the terminal (values in %, 'x' = failed)."""
    size = len(matrix.codes)
    scale = 100.0 if np.nanmax(np.abs(np.nan_to_num(matrix.values))) <= 1.0 else 1.0
    header = f"{matrix.panel:>8} |" + "".join(f"{code:>7}" for code in matrix.codes) + "   mean"
    lines = [header, "-" * len(header)]
    for i in range(size + 1):
        name = matrix.codes[i] if i < size else "mean"
        cells = []
        for j in range(size + 1):
            status = matrix.status[i, j] if i < size and j < size else ""
            value = matrix.values[i, j]
            if status == FAILED:
                cells.append(f"{'x':>7}")
            elif math.isnan(value):
                cells.append(f"{'.':>7}")
            else:
                mark = " "
                inside = i < size and j < size
                if inside and matrix.within_best is not None and matrix.within_best[i, j]:
                    mark = BEST_MARK
                if inside and matrix.worse_than_control is not None and matrix.worse_than_control[i, j]:
                    mark = WORSE_MARK
                if inside and matrix.stopped_early is not None and matrix.stopped_early[i, j]:
                    mark = STOPPED_MARK
                cells.append(f"{value * scale:6.1f}{mark}")
        lines.append(f"{name:>8} |" + "".join(cells))
    controls = _control_line(matrix, scale)
    if controls:
        lines.append(f"{'':>8} | {controls}")
    return "\n".join(lines)


