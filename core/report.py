"""A grid's report: per panel the augmentation matrix (:mod:`core.heatmap`) or the
paper-shaped table (:mod:`core.tables`), the cells with their intervals and controls, the
curves, the table of all trials, and the summary in words.

Plain data in, files out: the functions take :class:`TrialRecord` rows (built by
:mod:`core.sweep` from Tune's experiment state, or by hand in a notebook) and write PNG,
CSV and markdown files. Nothing here knows Ray or MLflow; the sweep attaches the files to
its parent run (:class:`core.tracking.ParentRun`).
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
    FAILED,
    FINISHED,
    Cell,
    TrialRecord,
    cell_rows,
    describe_panel,
    gather_cells,
)
from core.heatmap import (
    BEST_MARK,
    STOPPED_MARK,
    WORSE_MARK,
    AugmentationMatrix,
    augmentation_matrix,
    matrix_text,
    read_matrix_csv,
    write_heatmap_png,
    write_matrix_csv,
)

__all__ = [
    "FAILED",
    "FINISHED",
    "AugmentationMatrix",
    "ReportFiles",
    "TrialRecord",
    "augmentation_matrix",
    "read_matrix_csv",
    "trials_markdown",
    "write_report",
]


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


STOPPED_EARLY = "STOPPED_EARLY"
INTERRUPTED = "INTERRUPTED"


def shown_status(record: TrialRecord) -> str:
    """The status a reader needs: Tune calls a trial ASHA stopped ``TERMINATED``
    (FINISHED here) and one cut off by Ctrl-C ``PENDING``, which hide that the first ran
    fewer epochs than planned and that the second already has scores (``--resume``
    continues it)."""
    if record.status == FINISHED and record.stopped_early:
        return STOPPED_EARLY
    if record.status in ("PENDING", "RUNNING", "PAUSED") and record.epochs:
        return INTERRUPTED
    return record.status


def _table_rows(records: Iterable[TrialRecord]) -> list[list[str]]:
    rows = []
    for record in records:
        top1, macro_f1 = record.metric("test_top1"), record.metric("test_macro_f1")
        rows.append(
            [
                record.trial_id,
                shown_status(record),
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
    mode: str = "max",
    name: str = "aug_matrix",
    note: str | None = None,
    table: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Write per panel the heatmap PNG + CSV (when there is a matrix), the cells with their
    intervals and controls (CSV), the curves (PNG), and the table of all trials; the
    summary says in words what is beyond noise. ``note`` heads the summary (e.g. that a
    smoke-scale preset's cells are a pipeline check, not results). ``table`` is a search
    file's report section (:class:`core.sweep.table_spec.ReportSpec` as a dict): the
    paper's table (and figure) shape, written by :func:`write_paper_table`. ``mode="min"``
    ranks cells lowest first (a loss)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = gather_cells(records, metric, mode)
    files: list[Path] = []
    matrices: dict[str, AugmentationMatrix] = {}
    parts: list[str] = []
    if table:
        table_files, table_text = write_paper_table(records, out_dir, table, metric, name)
        files += table_files
        parts.append(table_text)
        parts.append(_verdicts(cells, metric, mode))
        panels = []  # the table replaces the per-panel matrices and their words
    for panel in panels:
        if codes:
            matrix = augmentation_matrix(records, codes, panel, metric, cells, mode)
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
        side = "above" if mode == "min" else "below"
        marks = (
            f"marks: {BEST_MARK} within noise of the best cell, {WORSE_MARK} {side} the "
            f"untrained control beyond noise"
        )
        if any(cell.stopped_early for cell in cells.values()):
            marks += f", {STOPPED_MARK} a seed stopped early by the trial scheduler (not compared)"
        parts.append(marks)
    markdown = trials_markdown(records)
    (out_dir / "trials.md").write_text(markdown)
    files.append(out_dir / "trials.md")
    files.append(write_trials_csv(records, out_dir / "trials.csv"))
    counts: dict[str, int] = {}
    for record in records:
        counts[shown_status(record)] = counts.get(shown_status(record), 0) + 1
    tally = ", ".join(
        f"{count} {status.lower().replace('_', ' ')}" for status, count in sorted(counts.items())
    )
    parts.insert(0, f"{len(records)} trials: {tally}")
    if note:
        parts.insert(0, note)
    failed = [record for record in records if record.status == FAILED]
    for record in failed:
        parts.append(f"failed {record.trial_id}: {record.error or 'see the Tune trial log'}")
    return ReportFiles(matrices=matrices, files=files, summary="\n\n".join(parts), cells=cells)


def _verdicts(cells: Mapping[str, Cell], metric: str, mode: str = "max") -> str:
    """How many cells sit above, below or within noise of their untrained control, and
    which are worse than it (below it for a score, above it for a loss). Cells with a seed
    stopped early are counted apart: their values mix budgets."""
    scored = [c for c in cells.values() if c.role == "cell" and c.verdict and not c.stopped_early]
    stopped = sum(c.role == "cell" and c.stopped_early for c in cells.values())
    if not scored:
        return f"no cell could be compared with an untrained control on {metric}"
    verdicts = [c.verdict for c in scored]
    worse = [c.cell_id for c in scored if c.worse_than_control]
    line = (
        f"against their untrained control ({metric}): {verdicts.count('above')} of "
        f"{len(scored)} cells above it beyond noise, {verdicts.count('below')} below it, "
        f"{verdicts.count('within noise')} within noise of it"
    )
    if worse:
        side = "above" if mode == "min" else "below"
        line += f"\nworse than the untrained control ({side} it): {', '.join(worse[:12])}"
        line += " ..." if len(worse) > 12 else ""
    if stopped:
        line += f"\n{stopped} cell(s) with a seed stopped early, not counted"
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
        legend += "; (s): stopped early by the trial scheduler"
    return files, f"{text}\n{legend}"
