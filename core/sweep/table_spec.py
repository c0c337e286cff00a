"""How a grid's parent-run table is shaped: the ``report:`` section of a grid file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.sweep.errors import GridError

REPORT_KEYS = ("panels", "rows", "columns", "metrics", "summary", "curves", "per_class", "wall_time")
SUMMARIES = ("mean", "std", "range")
METRICS_COLUMNS = "metrics"  # report.columns value: one column per reported metric


@dataclass(frozen=True)
class ReportSpec:
    """How the parent run's table is shaped, in axis names (``report:`` in the YAML).

    ``rows`` and ``columns`` name axes (``columns: metrics`` puts one column per metric
    instead); ``panels`` split the table into one table per label; every other axis (folds
    when they are not the columns, seeds always) is aggregated: a table cell is the mean
    over them with its spread. ``summary`` adds columns across the columns (QUACLRS: mean,
    std and range over folds). ``curves`` draws one figure per label of ``curves.panels``
    with one line per label of ``curves.lines`` (CLAR Figure 5); ``per_class`` adds a
    table of per-class F1 (QUACLRS Table 4); ``wall_time`` a column of training time.
    """

    rows: tuple[str, ...] = ()
    columns: str | None = None
    panels: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()
    curves: Mapping[str, str] = field(default_factory=dict)
    per_class: bool = False
    wall_time: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": list(self.rows),
            "columns": self.columns,
            "panels": list(self.panels),
            "metrics": list(self.metrics),
            "summary": list(self.summary),
            "curves": dict(self.curves),
            "per_class": self.per_class,
            "wall_time": self.wall_time,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ReportSpec | None:
        if not raw:
            return None
        return cls(
            rows=tuple(raw.get("rows") or ()),
            columns=raw.get("columns"),
            panels=tuple(raw.get("panels") or ()),
            metrics=tuple(raw.get("metrics") or ()),
            summary=tuple(raw.get("summary") or ()),
            curves=dict(raw.get("curves") or {}),
            per_class=bool(raw.get("per_class", False)),
            wall_time=bool(raw.get("wall_time", False)),
        )


def parse_report(raw: Any, axis_names: Sequence[str], where: str) -> ReportSpec | None:
    """Check that the report names axes of this grid (and known summaries)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise GridError(f"{where}: expected a mapping with keys {', '.join(REPORT_KEYS)}")
    unknown = sorted(set(raw) - set(REPORT_KEYS))
    if unknown:
        raise GridError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(REPORT_KEYS)}"
        )
    spec = ReportSpec.from_dict(raw)
    assert spec is not None
    named = [*spec.rows, *spec.panels, *spec.curves.values()]
    if spec.columns not in (None, METRICS_COLUMNS):
        named.append(spec.columns)
    for name in named:
        if name not in axis_names:
            raise GridError(
                f"{where}: {name!r} is not an axis of this grid; axes: {', '.join(axis_names)}"
            )
    bad = [name for name in spec.summary if name not in SUMMARIES]
    if bad:
        raise GridError(f"{where}.summary: {bad} unknown; valid: {', '.join(SUMMARIES)}")
    if set(spec.curves) - {"panels", "lines"}:
        raise GridError(f"{where}.curves: expected keys 'panels' and 'lines'")
    return spec
