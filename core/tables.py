"""Paper-shaped tables for the parent run: rows x columns of a metric, with controls.

A grid file's ``report:`` section (:class:`core.sweep.table_spec.ReportSpec`) names the axes
that make the rows, the columns and the panels (one table each); every other axis (folds
when they are not the columns) and the seeds are aggregated: a table cell shows the mean
over them and a 95 % interval (Student t over the values; one value with per-clip
predictions: a bootstrap over test clips). Summary columns reduce across the columns the
way QUACLRS reports folds: mean, standard deviation and range.

Controls get rows of their own (``untrained control``, ``supervised reference``), placed in
the columns they belong to, so every number sits next to its reference.

Which panel, row and column each trial's value falls in is decided by
:mod:`core.table_layout`; this module writes the tables it builds (CSV, markdown, PNG) and
the per-class and curves views. Plain data in, files out; nothing here knows Ray or MLflow.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.cells import FINISHED, UNTRAINED, TrialRecord
from core.stats import t_interval
from core.table_layout import WALL_TIME, Table, coords_label

# Re-exported: core.report builds the tables it draws through this module.
from core.table_layout import build_tables as build_tables


def _scale(table: Table, column: str) -> float:
    if column == WALL_TIME:
        return 1.0
    return 100.0 if table.percent else 1.0


def cell_text(table: Table, row: str, column: str) -> str:
    """``82.7 +- 3.1`` (percent for accuracies and F1), ``.`` when nothing finished."""
    cell = table.cells.get((row, column))
    if cell is None:
        return ""
    interval = cell.interval
    if interval is None:
        return "."
    scale = _scale(table, column)
    text = (
        f"{interval.mean * scale:.1f}"
        if scale != 1.0 or column == WALL_TIME
        else f"{interval.mean:.3f}"
    )
    if not math.isnan(interval.half_width) and column != WALL_TIME:
        text += (
            f" +- {interval.half_width * scale:.1f}"
            if scale != 1.0
            else f" +- {interval.half_width:.3f}"
        )
    if cell.stopped_early:
        text += " (s)"
    return text


def _summary_headers(table: Table) -> list[str]:
    headers = []
    for name in table.summary:
        headers.append({"mean": "mean", "std": "std", "range": "range"}[name])
    return headers


def _summary_texts(table: Table, row: str) -> list[str]:
    values = table.summaries(row)
    scale = 100.0 if table.percent else 1.0
    texts = []
    for name in table.summary:
        if name == "range":
            texts.append(
                f"{values['min'] * scale:.1f} - {values['max'] * scale:.1f}"
                if "min" in values
                else ""
            )
        else:
            value = values.get(name, math.nan)
            texts.append("" if math.isnan(value) else f"{value * scale:.1f}")
    return texts


def _split_columns(table: Table) -> tuple[list[str], list[str]]:
    """The value columns, and the training-time column that goes after the summaries."""
    values = [column for column in table.columns if column != WALL_TIME]
    return values, [column for column in table.columns if column == WALL_TIME]


def _headers(table: Table) -> list[str]:
    values, wall = _split_columns(table)
    return [table.row_header, *values, *_summary_headers(table), *wall]


def _row_texts(table: Table, row: str) -> list[str]:
    """A row as shown: its value columns, the summaries over them, then the wall time."""
    values, wall = _split_columns(table)
    return [
        row,
        *(cell_text(table, row, column) for column in values),
        *_summary_texts(table, row),
        *(cell_text(table, row, column) for column in wall),
    ]


def table_markdown(table: Table, title: str = "") -> str:
    """The table as markdown, values in percent for accuracies and F1 scores."""
    headers = _headers(table)
    lines = []
    if title:
        lines.append(f"**{title}**\n")
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in table.rows:
        lines.append("| " + " | ".join(_row_texts(table, row)) + " |")
    return "\n".join(lines) + "\n"


def write_table_csv(table: Table, path: Path) -> Path:
    """One line per (row, column): mean, interval, number of values and each value, full
    precision, so a reader can check the table against the child runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["panel", "row", "column", "metric", "mean", "ci_low", "ci_high", "n", "values",
             "stopped_early"]
        )  # fmt: skip
        for row in table.rows:
            for column in table.columns:
                cell = table.cells.get((row, column))
                if cell is None:
                    continue
                interval = cell.interval
                writer.writerow(
                    [
                        table.panel,
                        row,
                        column,
                        "wall_seconds" if column == WALL_TIME else table.metric,
                        "" if interval is None else f"{interval.mean:.6f}",
                        ""
                        if interval is None or math.isnan(interval.low)
                        else f"{interval.low:.6f}",
                        ""
                        if interval is None or math.isnan(interval.high)
                        else f"{interval.high:.6f}",
                        len(cell.values),
                        " ".join(f"{value:.6f}" for value in cell.values),
                        cell.stopped_early,
                    ]
                )
            for name, value in table.summaries(row).items():
                writer.writerow(
                    [table.panel, row, name, table.metric, f"{value:.6f}", "", "", "", "", ""]
                )
    return path


def read_table_csv(path: Path) -> dict[tuple[str, str, str], float]:
    """``(panel, row, column) -> mean`` from :func:`write_table_csv` (for checks)."""
    with path.open(newline="") as handle:
        return {
            (line["panel"], line["row"], line["column"]): float(line["mean"])
            for line in csv.DictReader(handle)
            if line["mean"]
        }


def write_table_png(tables: Sequence[Table], path: Path, title: str) -> Path:
    """The tables drawn as figures (matplotlib's table), one under the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(t.rows) + 2 for t in tables]
    width = max(len(t.columns) + len(t.summary) + 1 for t in tables)
    figure, axes_list = plt.subplots(
        len(tables), 1, figsize=(min(3 + 1.5 * width, 24), 0.45 * sum(heights) + 1.2), squeeze=False
    )
    for axes, table in zip(axes_list[:, 0], tables, strict=True):
        axes.axis("off")
        headers = _headers(table)
        body = [_row_texts(table, row) for row in table.rows]
        drawn = axes.table(cellText=body or [[""] * len(headers)], colLabels=headers, loc="center")
        drawn.auto_set_font_size(False)
        drawn.set_fontsize(8)
        drawn.scale(1, 1.3)
        for (line, _), cell in drawn.get_celld().items():
            if line == 0:
                cell.set_text_props(weight="bold")
        unit = " (%)" if table.percent else ""
        axes.set_title(f"{title}: {table.panel} ({table.metric}{unit})" if table.panel != "all"
                       else f"{title} ({table.metric}{unit})", fontsize=9)  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def per_class_table(
    records: Sequence[TrialRecord], rows: Sequence[str]
) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """QUACLRS Table 4: per-class F1 (mean over seeds and folds), classes x rows."""
    sums: dict[tuple[str, str], list[float]] = {}
    row_names: list[str] = []
    classes: list[str] = []
    for record in records:
        if record.status != FINISHED or not record.per_class_f1 or record.role != "cell":
            continue
        row = coords_label(record, rows) or record.cell_id
        if row not in row_names:
            row_names.append(row)
        for name, value in record.per_class_f1.items():
            if name not in classes:
                classes.append(name)
            sums.setdefault((name, row), []).append(float(value))
    means = {key: float(np.mean(values)) for key, values in sums.items()}
    return classes, row_names, means


def per_class_markdown(classes: list[str], rows: list[str], means: Mapping) -> str:
    lines = ["| class | " + " | ".join(rows) + " |", "|" + "---|" * (len(rows) + 1)]
    for name in classes:
        texts = [f"{means[(name, row)]:.2f}" if (name, row) in means else "" for row in rows]
        lines.append(f"| {name} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def write_per_class_csv(classes: list[str], rows: list[str], means: Mapping, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *rows])
        for name in classes:
            writer.writerow(
                [
                    name,
                    *(f"{means[(name, row)]:.6f}" if (name, row) in means else "" for row in rows),
                ]
            )
    return path


def write_curves_figure(
    records: Sequence[TrialRecord], panels: str, lines: str, metric: str, path: Path
) -> Path | None:
    """CLAR Figure 5: ``metric`` against epochs trained, one sub-figure per label of the
    ``panels`` axis, one line per label of the ``lines`` axis (mean over seeds, a band
    of the 95 % t interval over seeds when there are several), the untrained control
    as a dashed black level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [r for r in records if r.role == "cell" and r.history.get(metric)]
    if not cells:
        return None
    panel_labels = list(dict.fromkeys(r.coords.get(panels, "all") for r in cells))
    controls = [r for r in records if r.role == UNTRAINED and r.history.get(metric)]
    figure, axes_list = plt.subplots(
        1, len(panel_labels), figsize=(4.2 * len(panel_labels), 3.6), squeeze=False, sharey=True
    )
    colours = plt.get_cmap("tab10")
    line_labels = list(dict.fromkeys(r.coords.get(lines, r.cell_id) for r in cells))
    for axes, panel in zip(axes_list[0], panel_labels, strict=True):
        for number, line in enumerate(line_labels):
            members = [
                r for r in cells
                if r.coords.get(panels, "all") == panel and r.coords.get(lines, r.cell_id) == line
            ]  # fmt: skip
            if not members:
                continue
            series = [dict(r.history[metric]) for r in members]
            epochs = sorted(set().union(*series))
            table = np.array([[s.get(e, np.nan) for e in epochs] for s in series])
            mean = np.nanmean(table, axis=0)
            axes.plot(epochs, mean, label=line, color=colours(number % 10), marker=".")
            if table.shape[0] > 1:  # a 95 % t interval over seeds at every epoch
                intervals = [t_interval(column[~np.isnan(column)]) for column in table.T]
                axes.fill_between(
                    epochs, [i.low for i in intervals], [i.high for i in intervals],
                    color=colours(number % 10), alpha=0.2,
                )  # fmt: skip
        levels = [r.metrics.get(metric) for r in controls if r.metrics.get(metric) is not None]
        if levels:
            axes.axhline(float(np.mean(levels)), color="black", linestyle="--",
                         label="untrained control")  # fmt: skip
        axes.set(title=f"{panels} = {panel}", xlabel="epochs trained", ylabel=metric)
        axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
