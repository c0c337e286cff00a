"""Which cell of which paper-shaped table each trial's value falls in.

:mod:`core.tables` draws tables (markdown, CSV, PNG) and figures; this module decides
their shape: which panel, row and column every finished trial contributes to, where a
control goes (into every panel and column it does not depend on), and in what order rows
and columns appear. The grouping is its own job, with rules of its own (controls after
the cells, the training-time column last), so it lives apart from the drawing.

Plain data in, plain data out; nothing here knows Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.cells import FINISHED, SUPERVISED, UNTRAINED, TrialRecord
from core.stats import Interval, bootstrap_interval, t_interval

METRICS_COLUMNS = "metrics"
WALL_TIME = "wall (s)"
CONTROL_NAMES = {UNTRAINED: "untrained control", SUPERVISED: "supervised reference"}
METRIC_NAMES = {
    "test_top1": "top-1",
    "test_macro_f1": "macro F1",
    "test_weighted_f1": "weighted F1",
    "test_macro_precision": "macro precision",
    "test_weighted_precision": "weighted precision",
    "test_macro_recall": "macro recall",
    "test_weighted_recall": "weighted recall",
    "test_micro_auc": "micro AUC",
    "test_macro_auc": "macro AUC",
    "val_top1": "val top-1",
}
_WALL_METRIC = "__wall__"  # the wall-time column's "metric": the record's wall_seconds


@dataclass
class TableCell:
    """The values that fall in one table cell (over seeds and aggregated axes)."""

    values: list[float] = field(default_factory=list)
    correct: np.ndarray | None = None  # per-clip correctness when there is one value
    stopped_early: bool = False

    @property
    def interval(self) -> Interval | None:
        if not self.values:
            return None
        if len(self.values) == 1 and self.correct is not None:
            return bootstrap_interval(self.correct)
        return t_interval(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan


@dataclass
class Table:
    """One panel's table: ``cells[(row, column)]``; rows and columns in grid order."""

    panel: str
    row_header: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], TableCell]
    summary: list[str]
    metric: str
    percent: bool  # values are fractions shown as percentages

    def summaries(self, row: str) -> dict[str, float]:
        """Mean, std and range across the row's columns (each column's mean)."""
        means = [
            self.cells[(row, c)].mean
            for c in self.columns
            if (row, c) in self.cells and c != WALL_TIME
        ]
        means = [value for value in means if not math.isnan(value)]
        out: dict[str, float] = {}
        if not means:
            return out
        if "mean" in self.summary:
            out["mean"] = float(np.mean(means))
        if "std" in self.summary:
            out["std"] = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        if "range" in self.summary:
            out["min"], out["max"] = float(min(means)), float(max(means))
        return out


def coords_label(record: TrialRecord, names: Sequence[str]) -> str:
    """The record's labels on the axes ``names``, joined by `` / ``; a row or panel name."""
    return " / ".join(record.coords.get(name, "") for name in names if record.coords.get(name))


def _is_fraction_metric(name: str) -> bool:
    return name.startswith(("test_", "val_")) and not name.endswith("_loss")


def _add_value(cell: TableCell, record: TrialRecord, name: str, metric: str) -> None:
    """Add the record's value of ``name`` to ``cell``, if the trial finished with one."""
    if record.status != FINISHED:
        return
    value = record.wall_seconds if name == _WALL_METRIC else record.metrics.get(name)
    if value is None or math.isnan(float(value)):
        return
    cell.values.append(float(value))
    cell.correct = record.correct if len(cell.values) == 1 and name == metric else None
    cell.stopped_early = cell.stopped_early or record.stopped_early


class _TableBuilder:
    """The panels found so far, each with its rows, columns and cells in the order they
    first appeared; :func:`build_tables` places the cells' trials, then the controls'."""

    def __init__(
        self,
        rows: Sequence[str],
        columns: str | None,
        panels: Sequence[str],
        metrics: Sequence[str],
        wall_time: bool,
        metric: str,
    ) -> None:
        self.rows, self.columns, self.panels = rows, columns, panels
        self.by_metric = columns == METRICS_COLUMNS
        self.metric_names = list(metrics or [metric]) if self.by_metric else [metric]
        self.wall_time, self.metric = wall_time, metric
        self.panel_order: list[str] = []
        self.row_order: dict[str, list[str]] = {}
        self.column_order: dict[str, list[str]] = {}
        self.found: dict[str, dict[tuple[str, str], TableCell]] = {}

    def row_of(self, record: TrialRecord) -> str:
        """A cell's row is its coordinates on the row axes; a control's is its role and
        the coordinates that are neither the columns' nor the panels'."""
        if record.role == "cell":
            return coords_label(record, self.rows) or record.cell_id
        context = [n for n in record.coords if n != self.columns and n not in self.panels]
        return " ".join(filter(None, [CONTROL_NAMES.get(record.role, record.role),
                                      coords_label(record, context)]))  # fmt: skip

    def columns_of(self, record: TrialRecord, panel: str) -> list[tuple[str, str]]:
        """``(column, metric name)`` for each column of ``panel`` the record fills."""
        metric = self.metric
        if self.by_metric:
            wanted = [(METRIC_NAMES.get(name, name), name) for name in self.metric_names]
        elif self.columns is not None and self.columns in record.coords:
            wanted = [(record.coords[self.columns], metric)]
        elif self.columns is not None:
            # A control that does not depend on the column axis: the same reference in
            # every column (e.g. one untrained control for all label fractions).
            wanted = [(column, metric) for column in self.column_order[panel]] or [("all", metric)]
        else:
            wanted = [(METRIC_NAMES.get(metric, metric), metric)]
        if self.wall_time:
            wanted.append((WALL_TIME, _WALL_METRIC))
        return wanted

    def place(self, record: TrialRecord, panel: str) -> None:
        """Put the record's values into ``panel``, adding its row and columns if new."""
        if panel not in self.panel_order:
            self.panel_order.append(panel)
            self.row_order[panel], self.column_order[panel], self.found[panel] = [], [], {}
        row = self.row_of(record)
        if row not in self.row_order[panel]:
            self.row_order[panel].append(row)
        for column, name in self.columns_of(record, panel):
            if column not in self.column_order[panel]:
                self.column_order[panel].append(column)
            cell = self.found[panel].setdefault((row, column), TableCell())
            _add_value(cell, record, name, self.metric)

    def control_panels(self, record: TrialRecord) -> list[str]:
        """The panels a control goes into: every one it fits (it may not depend on the
        panel axes), or a panel of its own when it fits none."""
        fits = [
            panel for panel in self.panel_order
            if all(
                record.coords.get(name) in (None, label)
                for name, label in zip(self.panels, panel.split(" / "), strict=False)
            )
        ] if self.panels else ["all"]  # fmt: skip
        return fits or [coords_label(record, self.panels) or "all"]

    def tables(self, summary: Sequence[str]) -> list[Table]:
        """One :class:`Table` per panel, controls' rows after the cells' and the
        training-time column last."""
        tables = []
        for panel in self.panel_order:
            # Controls after the cells, in the order they appeared.
            ordered_rows = sorted(
                self.row_order[panel],
                key=lambda r: any(r.startswith(n) for n in CONTROL_NAMES.values()),
            )
            tables.append(
                Table(
                    panel=panel,
                    row_header=" / ".join(self.rows) or "cell",
                    rows=ordered_rows,
                    columns=sorted(self.column_order[panel], key=lambda c: c == WALL_TIME),
                    cells=self.found[panel],
                    summary=[] if self.by_metric else list(summary),
                    metric=self.metric,
                    percent=_is_fraction_metric(self.metric),
                )
            )
        return tables


def build_tables(
    records: Sequence[TrialRecord],
    *,
    rows: Sequence[str],
    columns: str | None,
    panels: Sequence[str] = (),
    metrics: Sequence[str] = (),
    summary: Sequence[str] = (),
    wall_time: bool = False,
    metric: str = "test_top1",
) -> list[Table]:
    """Group the finished trials into one :class:`Table` per panel.

    ``columns`` is an axis name, ``"metrics"`` (one column per name in ``metrics``) or
    None (one column: ``metric``). With ``wall_time`` a column of mean training seconds
    is added. Controls become rows named after their role and the coordinates that are
    not the columns'.
    """
    builder = _TableBuilder(rows, columns, panels, metrics, wall_time, metric)
    for record in records:
        if record.role == "cell":
            builder.place(record, coords_label(record, panels) or "all")
    for record in records:
        if record.role == "cell":
            continue
        # A control goes into every panel it fits (it may not depend on the panel axes).
        for panel in builder.control_panels(record):
            builder.place(record, panel)
    return builder.tables(summary)
