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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.cells import (
    BELOW,
    FAILED,
    FINISHED,
    SUPERVISED,
    UNTRAINED,
    Cell,
    TrialRecord,
    cell_rows,
    controls_of,
    describe_panel,
    gather_cells,
)

__all__ = ["FAILED", "FINISHED", "TrialRecord"]

MEAN_FIRST = "mean (first)"
MEAN_SECOND = "mean (second)"
BELOW_MARK, BEST_MARK = "v", "*"  # terminal marks: below the control, within noise of best
STOPPED_MARK = "s"  # stopped early by the scheduler (ASHA): its value is from an earlier rung


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
    below_control: np.ndarray | None = None  # (n, n) bool: below the untrained control
    controls: dict[str, Cell] = field(default_factory=dict)
    stopped_early: np.ndarray | None = None  # (n, n) bool: ended early by the scheduler

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
    records: Iterable[TrialRecord],
    codes: Sequence[str],
    panel: str,
    metric: str = "test_top1",
    cells: dict[str, Cell] | None = None,
) -> AugmentationMatrix:
    """Gather one panel's cells into the (n+1) x (n+1) Figure 4 layout with means.

    A cell's value is its mean over seeds; a cell with a failed seed shows as failed only
    when no seed finished.
    """
    records = list(records)
    cells = cells if cells is not None else gather_cells(records, metric)
    codes = list(codes)
    index = {code: position for position, code in enumerate(codes)}
    size = len(codes)
    block = np.full((size, size), np.nan)
    status = np.full((size, size), "", dtype=object)
    half = np.full((size, size), np.nan)
    best = np.zeros((size, size), dtype=bool)
    below = np.zeros((size, size), dtype=bool)
    stopped = np.zeros((size, size), dtype=bool)
    for record in records:
        if record.panel != panel or record.first not in index or record.second not in index:
            continue
        i, j = index[record.first], index[record.second]
        stopped[i, j] = stopped[i, j] or record.stopped_early
        cell = cells[record.cell_id]
        status[i, j] = FINISHED if cell.finished else record.status
        if cell.finished:
            block[i, j] = cell.interval.mean
            half[i, j] = cell.interval.half_width
            best[i, j] = cell.within_best
            below[i, j] = cell.verdict == BELOW
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
        below_control=below,
        controls=controls_of(cells, panel),
        stopped_early=stopped,
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
    cells below the untrained control framed in red and marked with a down arrow; the
    controls are named under the title."""
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
            if inside and matrix.below_control is not None and matrix.below_control[i, j]:
                axes.add_patch(
                    plt.Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, color="red", lw=2)
                )
                text = "\u2193 " + text
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
    legend = "white frame: within noise of the best; red frame, \u2193: below the untrained control"
    axes.set_title(f"{heading}\n{controls}\n{legend}" if controls else heading, fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_cells_csv(cells: dict[str, Cell], panels: Sequence[str], path: Path) -> Path:
    """Every cell and control: mean, 95 % interval, seeds and comparisons (long format)."""
    rows = cell_rows(cells, panels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["cell"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_curves_png(
    records: Sequence[TrialRecord], panel: str, metric: str, path: Path
) -> Path | None:
    """Training loss per epoch and the evaluation metric at each evaluation, one line per
    cell (mean over seeds, a band from the lowest to the highest seed), the controls as
    dashed lines. Figure 5 of CLAR is this plot for the label-fraction sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in records if r.panel == panel and r.history]
    if not mine:
        return None
    by_cell: dict[str, list[TrialRecord]] = {}
    for record in mine:
        by_cell.setdefault(record.cell_id, []).append(record)
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab20")
    for number, (cell_id, members) in enumerate(by_cell.items()):
        control = members[0].role != "cell"
        style = {"linestyle": "--", "linewidth": 1.5} if control else {"linewidth": 1.0}
        colour = "black" if members[0].role == "untrained" else colours(number % 20)
        for axes, name in ((loss_axes, "loss"), (metric_axes, metric)):
            series = [dict(r.history.get(name, [])) for r in members]
            epochs = sorted(set().union(*series))
            if not epochs:
                continue
            table = np.array([[s.get(e, np.nan) for e in epochs] for s in series])
            mean = np.nanmean(table, axis=0)
            if control and len(epochs) == 1:  # a control evaluated once: a level to beat
                axes.axhline(mean[0], color=colour, label=cell_id, **style)
                continue
            marker = "." if len(epochs) < 3 else None
            axes.plot(epochs, mean, label=cell_id, color=colour, marker=marker, **style)
            if table.shape[0] > 1:
                low, high = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
                axes.fill_between(epochs, low, high, color=colour, alpha=0.15)
    loss_axes.set(xlabel="epochs trained", ylabel="training loss", title=f"{panel}: training loss")
    metric_axes.set(
        xlabel="epochs trained", ylabel=metric, title=f"{panel}: {metric} (frozen encoder)"
    )
    if len(by_cell) <= 14:
        metric_axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
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
    "method",
    "seed",
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
                record.method,
                str(record.seed),
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
                mark = " "
                inside = i < size and j < size
                if inside and matrix.within_best is not None and matrix.within_best[i, j]:
                    mark = BEST_MARK
                if inside and matrix.below_control is not None and matrix.below_control[i, j]:
                    mark = BELOW_MARK
                if inside and matrix.stopped_early is not None and matrix.stopped_early[i, j]:
                    mark = STOPPED_MARK
                cells.append(f"{value * scale:6.1f}{mark}")
        lines.append(f"{name:>8} |" + "".join(cells))
    controls = _control_line(matrix, scale)
    if controls:
        lines.append(f"{'':>8} | {controls}")
    return "\n".join(lines)


@dataclass
class ReportFiles:
    """What :func:`write_report` produced (paths) and the terminal summary."""

    matrices: dict[str, AugmentationMatrix]
    files: list[Path]
    summary: str
    cells: dict[str, Cell] = field(default_factory=dict)


def write_report(
    records: Sequence[TrialRecord],
    out_dir: Path,
    *,
    codes: Sequence[str] | None,
    panels: Sequence[str],
    metric: str = "test_top1",
    name: str = "aug_matrix",
    note: str | None = None,
    table: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Write per panel the heatmap PNG + CSV (when there is a matrix), the cells with their
    intervals and controls (CSV), the curves (PNG), and the table of all trials; the
    summary says in words what is beyond noise. ``note`` heads the summary (e.g. that a
    smoke-scale preset's cells are a pipeline check, not results). ``table`` is a search
    space's report section (:class:`core.sweep.space.ReportSpec` as a dict): the paper's
    table (and figure) shape, written by :func:`write_paper_table`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = gather_cells(records, metric)
    files: list[Path] = []
    matrices: dict[str, AugmentationMatrix] = {}
    parts: list[str] = []
    if table:
        table_files, table_text = write_paper_table(records, out_dir, table, metric, name)
        files += table_files
        parts.append(table_text)
        parts.append(_verdicts(cells, metric))
        panels = []  # the table replaces the per-panel matrices and their words
    for panel in panels:
        if codes:
            matrix = augmentation_matrix(records, codes, panel, metric, cells)
            matrices[panel] = matrix
            files.append(write_matrix_csv(matrix, out_dir / f"{name}_{panel}.csv"))
            files.append(write_heatmap_png(matrix, out_dir / f"{name}_{panel}.png"))
            parts.append(matrix_text(matrix))
        curves = write_curves_png(records, panel, metric, out_dir / f"curves_{panel}.png")
        if curves is not None:
            files.append(curves)
        parts.append(describe_panel(cells, panel, metric))
    files.append(write_cells_csv(cells, panels, out_dir / f"{name}_cells.csv"))
    if codes:
        marks = (
            f"marks: {BEST_MARK} within noise of the best cell, {BELOW_MARK} below the "
            f"untrained control beyond noise"
        )
        if any(record.stopped_early for record in records):
            marks += f", {STOPPED_MARK} stopped early by the scheduler (value at its last rung)"
        parts.append(marks)
    markdown = trials_markdown(records)
    (out_dir / "trials.md").write_text(markdown)
    files.append(out_dir / "trials.md")
    files.append(write_trials_csv(records, out_dir / "trials.csv"))
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    tally = ", ".join(f"{count} {status.lower()}" for status, count in sorted(counts.items()))
    parts.insert(0, f"{len(records)} trials: {tally}")
    if note:
        parts.insert(0, note)
    failed = [record for record in records if record.status == FAILED]
    for record in failed:
        parts.append(f"failed {record.trial_id}: {record.error or 'see the Tune trial log'}")
    return ReportFiles(matrices=matrices, files=files, summary="\n\n".join(parts), cells=cells)


def _verdicts(cells: Mapping[str, Cell], metric: str) -> str:
    """How many cells sit above, below or within noise of their untrained control."""
    scored = [c for c in cells.values() if c.role == "cell" and c.verdict]
    if not scored:
        return f"no cell could be compared with an untrained control on {metric}"
    verdicts = [c.verdict for c in scored]
    below = [c.cell_id for c in scored if c.verdict == BELOW]
    line = (
        f"against their untrained control ({metric}): {verdicts.count('above')} of "
        f"{len(scored)} cells above it beyond noise, {len(below)} below it, "
        f"{verdicts.count('within noise')} within noise of it"
    )
    if below:
        line += f"\nbelow the untrained control: {', '.join(below[:12])}"
        line += " ..." if len(below) > 12 else ""
    return line


def write_paper_table(
    records: Sequence[TrialRecord],
    out_dir: Path,
    spec: Mapping[str, Any],
    metric: str,
    name: str,
) -> tuple[list[Path], str]:
    """The paper-shaped table(s) of a sweep: ``<name>_table.csv`` (one line per table
    cell, with every value), ``<name>_table.md``, ``<name>_table.png``; per-class F1
    (``<name>_per_class_f1.csv``/``.md``) and the curves figure (``<name>_curves.png``)
    when the spec asks. Returns the files and the markdown for the terminal."""
    from core import tables as paper_tables

    built = paper_tables.build_tables(
        records,
        rows=spec.get("rows") or (),
        columns=spec.get("columns"),
        panels=spec.get("panels") or (),
        metrics=spec.get("metrics") or (),
        summary=spec.get("summary") or (),
        wall_time=bool(spec.get("wall_time")),
        metric=metric,
    )
    files: list[Path] = []
    markdown = []
    csv_path = out_dir / f"{name}_table.csv"
    csv_path.unlink(missing_ok=True)
    lines: list[str] = []
    for table in built:
        one = paper_tables.write_table_csv(table, out_dir / f".{name}_{len(lines)}.csv")
        text = one.read_text().splitlines()
        lines += text if not lines else text[1:]
        one.unlink()
        markdown.append(
            paper_tables.table_markdown(table, title=table.panel if table.panel != "all" else "")
        )
    csv_path.write_text("\n".join(lines) + "\n")
    files.append(csv_path)
    if built:
        files.append(paper_tables.write_table_png(built, out_dir / f"{name}_table.png", name))
    if spec.get("per_class"):
        classes, rows, means = paper_tables.per_class_table(records, spec.get("rows") or ())
        if classes:
            files.append(
                paper_tables.write_per_class_csv(
                    classes, rows, means, out_dir / f"{name}_per_class_f1.csv"
                )
            )
            per_class = paper_tables.per_class_markdown(classes, rows, means)
            (out_dir / f"{name}_per_class_f1.md").write_text(per_class)
            files.append(out_dir / f"{name}_per_class_f1.md")
            markdown.append("**test F1 per class**\n\n" + per_class)
    curves = spec.get("curves") or {}
    if curves:
        figure = paper_tables.write_curves_figure(
            records, curves["panels"], curves["lines"], metric, out_dir / f"{name}_curves.png"
        )
        if figure is not None:
            files.append(figure)
    text = "\n".join(markdown)
    (out_dir / f"{name}_table.md").write_text(text)
    files.append(out_dir / f"{name}_table.md")
    legend = "values in % (mean +- 95 % interval over seeds and aggregated folds)"
    if any(cell.stopped_early for table in built for cell in table.cells.values()):
        legend += "; (s): stopped early by the scheduler"
    return files, f"{text}\n{legend}"


def log_report_to_run(tracking_uri: str, run_id: str, files: Iterable[Path]) -> None:
    """Attach report files to an MLflow run (the sweep's parent run) under ``report/``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="report")
