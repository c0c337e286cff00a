"""Sweep reports: CLAR Figure 4 style augmentation matrices and a table of all trials.

Plain data in, files out: the functions take :class:`TrialRecord` rows (built by
:mod:`core.sweep` from Tune's experiment state, or by hand in a notebook) and write PNG,
CSV and markdown files. Nothing here knows Ray; MLflow is touched only by
:func:`log_report_to_run`, which attaches the files to an existing (parent) run.

The matrix follows the paper's Figure 4: rows are the first augmentation, columns the
second, the diagonal is the single augmentation applied once; an extra column holds the
mean of each row ("when applied first"), an extra row the mean of each column ("when
applied second"), and the corner the mean of the whole matrix. Means run over the cells
that finished; a failed cell is shown as failed and left out of every mean, a cell that
has not run yet is left empty.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FINISHED = "FINISHED"
FAILED = "FAILED"
MEAN_FIRST = "mean (first)"
MEAN_SECOND = "mean (second)"


@dataclass
class TrialRecord:
    """One trial as the report needs it; ``first``/``second`` are its matrix cell."""

    trial_id: str
    status: str  # FINISHED | FAILED | RUNNING | PENDING | ...
    panel: str  # the non-matrix coordinates, e.g. the front end "raw1d"
    first: str | None = None
    second: str | None = None
    pipeline: list[str] = field(default_factory=list)
    frontend: str = ""
    encoder: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int | None = None
    wall_seconds: float | None = None
    error: str | None = None

    def metric(self, name: str) -> float:
        """The final value of ``name``, NaN when the trial never reported it."""
        value = self.metrics.get(name)
        return float(value) if value is not None else math.nan


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

    @property
    def best(self) -> tuple[str, str, float] | None:
        """The best finished cell as (first, second, value), or None if none finished."""
        block = self.values[:-1, :-1]
        if np.all(np.isnan(block)):
            return None
        i, j = np.unravel_index(np.nanargmax(block), block.shape)
        return self.codes[i], self.codes[j], float(block[i, j])


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def augmentation_matrix(
    records: Iterable[TrialRecord], codes: Sequence[str], panel: str, metric: str = "test_top1"
) -> AugmentationMatrix:
    """Gather one panel's cells into the (n+1) x (n+1) Figure 4 layout with means."""
    codes = list(codes)
    index = {code: position for position, code in enumerate(codes)}
    size = len(codes)
    block = np.full((size, size), np.nan)
    status = np.full((size, size), "", dtype=object)
    for record in records:
        if record.panel != panel or record.first not in index or record.second not in index:
            continue
        i, j = index[record.first], index[record.second]
        status[i, j] = record.status
        if record.status == FINISHED:
            block[i, j] = record.metric(metric)
    values = np.full((size + 1, size + 1), np.nan)
    values[:size, :size] = block
    for k in range(size):
        values[k, size] = _nanmean(block[k, :])  # applied first: the row
        values[size, k] = _nanmean(block[:, k])  # applied second: the column
    values[size, size] = _nanmean(block)
    return AugmentationMatrix(panel=panel, metric=metric, codes=codes, values=values, status=status)


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


def write_heatmap_png(matrix: AugmentationMatrix, path: Path, title: str | None = None) -> Path:
    """The Figure 4 heatmap: percentages in cells, means set apart, failed cells hatched."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    size = len(matrix.codes)
    labels = [*matrix.codes, "mean"]
    scale = 100.0 if np.nanmax(np.abs(np.nan_to_num(matrix.values))) <= 1.0 else 1.0
    shown = matrix.values * scale
    figure, axes = plt.subplots(figsize=(1.0 * size + 2.5, 0.9 * size + 2.0))
    limits = (0.0, 100.0) if scale == 100.0 else (None, None)  # accuracies: a fixed 0-100 scale
    image = axes.imshow(np.ma.masked_invalid(shown), cmap="viridis", vmin=limits[0], vmax=limits[1])
    for i in range(size + 1):
        for j in range(size + 1):
            status = matrix.status[i, j] if i < size and j < size else ""
            if status == FAILED:
                axes.add_patch(
                    plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", color="red")
                )
                text, color = "failed", "red"
            elif math.isnan(shown[i, j]):
                text, color = "", "white"
            else:
                text, color = f"{shown[i, j]:.1f}", "white"
            weight = "bold" if i == size or j == size else "normal"
            axes.text(j, i, text, ha="center", va="center", color=color, fontsize=8, weight=weight)
    axes.axhline(size - 0.5, color="black", linewidth=2)
    axes.axvline(size - 0.5, color="black", linewidth=2)
    axes.set_xticks(range(size + 1), labels)
    axes.set_yticks(range(size + 1), labels)
    axes.set_xlabel("second augmentation")
    axes.set_ylabel("first augmentation")
    unit = " (%)" if scale == 100.0 else ""
    axes.set_title(title or f"{matrix.panel}: {matrix.metric}{unit}")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --- the table of all trials ----------------------------------------------------------
TABLE_COLUMNS = (
    "trial",
    "status",
    "pipeline",
    "front end",
    "encoder",
    "top-1",
    "macro F1",
    "epochs",
    "wall (s)",
)


def _table_rows(records: Iterable[TrialRecord]) -> list[list[str]]:
    rows = []
    for record in records:
        top1, macro_f1 = record.metric("test_top1"), record.metric("test_macro_f1")
        rows.append(
            [
                record.trial_id,
                record.status,
                " > ".join(record.pipeline) or "(none)",
                record.frontend,
                record.encoder,
                "" if math.isnan(top1) else f"{top1:.4f}",
                "" if math.isnan(macro_f1) else f"{macro_f1:.4f}",
                "" if record.epochs is None else str(record.epochs),
                "" if record.wall_seconds is None else f"{record.wall_seconds:.1f}",
            ]
        )
    return rows


def trials_markdown(records: Iterable[TrialRecord]) -> str:
    """A markdown table of every trial, in the order given."""
    rows = _table_rows(records)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_trials_csv(records: Iterable[TrialRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(_table_rows(records))
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
                cells.append(f"{value * scale:7.1f}")
        lines.append(f"{name:>8} |" + "".join(cells))
    return "\n".join(lines)


@dataclass
class ReportFiles:
    """What :func:`write_report` produced (paths) and the terminal summary."""

    matrices: dict[str, AugmentationMatrix]
    files: list[Path]
    summary: str


def write_report(
    records: Sequence[TrialRecord],
    out_dir: Path,
    *,
    codes: Sequence[str] | None,
    panels: Sequence[str],
    metric: str = "test_top1",
    name: str = "aug_matrix",
) -> ReportFiles:
    """Write one heatmap PNG + CSV per panel (when there is a matrix) and the trials table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    matrices: dict[str, AugmentationMatrix] = {}
    parts: list[str] = []
    if codes:
        for panel in panels:
            matrix = augmentation_matrix(records, codes, panel, metric)
            matrices[panel] = matrix
            files.append(write_matrix_csv(matrix, out_dir / f"{name}_{panel}.csv"))
            files.append(write_heatmap_png(matrix, out_dir / f"{name}_{panel}.png"))
            parts.append(matrix_text(matrix))
            best = matrix.best
            if best is not None:
                first, second, value = best
                pipeline = first if first == second else f"{first} > {second}"
                parts.append(f"best {panel}: {pipeline} {metric}={value:.4f}")
    markdown = trials_markdown(records)
    (out_dir / "trials.md").write_text(markdown)
    files.append(out_dir / "trials.md")
    files.append(write_trials_csv(records, out_dir / "trials.csv"))
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    tally = ", ".join(f"{count} {status.lower()}" for status, count in sorted(counts.items()))
    parts.insert(0, f"{len(records)} trials: {tally}")
    failed = [record for record in records if record.status == FAILED]
    for record in failed:
        parts.append(f"failed {record.trial_id}: {record.error or 'see the Tune trial log'}")
    return ReportFiles(matrices=matrices, files=files, summary="\n\n".join(parts))


def log_report_to_run(tracking_uri: str, run_id: str, files: Iterable[Path]) -> None:
    """Attach report files to an MLflow run (the sweep's parent run) under ``report/``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")
