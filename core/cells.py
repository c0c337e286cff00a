"""From trial records to cells with intervals, compared with their controls and the best.

A cell is one point of the grid (or one control) over all the seeds it was run with. Its
score is the mean over seeds with a 95 % interval (Student t over seeds; with one seed, a
bootstrap over test clips), and it is compared, paired by seed or by test clip
(:mod:`core.stats`), with its untrained-encoder control and with the best cell of its
panel. A report says in words which differences are beyond noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.stats import CellScores, Comparison, Interval, compare, within_noise_of_best

FINISHED = "FINISHED"
FAILED = "FAILED"
CELL = "cell"
UNTRAINED = "untrained"
SUPERVISED = "supervised"
ABOVE, BELOW, WITHIN = "above", "below", "within noise"


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
    method: str = ""
    role: str = CELL  # CELL | UNTRAINED | SUPERVISED
    cell_id: str = ""  # the cell this trial replicates (its id without the seed)
    seed: int = 0
    controls: dict[str, str] = field(default_factory=dict)  # role -> control cell_id
    correct: np.ndarray | None = None  # per test clip, from the last evaluation
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    coords: dict[str, str] = field(default_factory=dict)  # axis name -> label
    per_class_f1: dict[str, float] = field(default_factory=dict)  # class -> test F1
    stopped_early: bool = False  # ended by the sweep's trial scheduler before its last epoch
    fold: int | None = None  # data.fold: the held-out fold of a k-fold split (None: no folds)
    macro_roc: dict[str, Any] | None = None  # the test macro ROC curve (core.roc), if reported

    def __post_init__(self) -> None:
        self.cell_id = self.cell_id or self.trial_id

    def metric(self, name: str) -> float:
        """The final value of ``name``, NaN when the trial never reported it."""
        value = self.metrics.get(name)
        return float(value) if value is not None else math.nan


@dataclass
class Cell:
    """One cell (or control) over its seeds, with its interval and comparisons."""

    cell_id: str
    role: str
    panel: str
    first: str | None
    second: str | None
    scores: CellScores
    finished: int
    failed: int
    controls: dict[str, str]
    # Seeds the trial scheduler (ASHA) stopped before the last epoch: their values are at a
    # lower budget than the others'. They stay in the mean, since dropping them would keep
    # only the seeds that looked good at a rung (a bias upwards); instead the cell is marked
    # and not compared with the best.
    stopped: int = 0
    interval: Interval = field(init=False)
    vs_control: Comparison | None = None  # this cell - its untrained control
    within_best: bool = False
    mode: str = "max"  # "min": lower scores are better (a loss)

    def __post_init__(self) -> None:
        self.interval = self.scores.interval()

    @property
    def stopped_early(self) -> bool:
        """Some seed ended at a rung: the value mixes budgets; not compared with the best."""
        return self.stopped > 0

    @property
    def verdict(self) -> str:
        """Against the untrained control: ABOVE or BELOW beyond noise (the number's
        direction), or WITHIN noise."""
        if self.vs_control is None or not self.scores.by_seed:
            return ""
        if not self.vs_control.significant:
            return WITHIN
        return ABOVE if self.vs_control.difference.mean > 0 else BELOW

    @property
    def worse_than_control(self) -> bool:
        """Beyond noise on the wrong side of the untrained control: below it for a score,
        above it for a loss (``mode="min"``)."""
        return self.verdict == (ABOVE if self.mode == "min" else BELOW)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.scores.by_seed)


def gather_cells(
    records: Iterable[TrialRecord], metric: str = "test_top1", mode: str = "max"
) -> dict[str, Cell]:
    """Group records by cell, score them, compare each cell with its untrained control and
    mark the cells within noise of the best cell of their panel (the highest, or the
    lowest with ``mode="min"``).

    With one seed a cell's interval and comparisons come from its per-test-clip results,
    which say whether each clip was classified right: that is top-1's noise, not another
    metric's, so other metrics get no per-clip interval.

    Under a trial scheduler (ASHA), a cell with a seed stopped at a rung is marked
    ``stopped_early`` and left out of the comparison with the best: only cells whose every
    seed ran to the end are compared there."""
    grouped: dict[str, list[TrialRecord]] = {}
    for record in records:
        grouped.setdefault(record.cell_id, []).append(record)
    cells: dict[str, Cell] = {}
    for cell_id, members in grouped.items():
        done = [r for r in members if r.status == FINISHED and not math.isnan(r.metric(metric))]
        by_seed = {r.seed: r.metric(metric) for r in done}
        correct = done[0].correct if len(done) == 1 and metric.endswith("top1") else None
        first = members[0]
        cells[cell_id] = Cell(
            cell_id=cell_id,
            role=first.role,
            panel=first.panel,
            first=first.first,
            second=first.second,
            scores=CellScores(by_seed, correct),
            finished=len(done),
            failed=sum(r.status == FAILED for r in members),
            controls=dict(first.controls),
            stopped=sum(r.stopped_early for r in done),
            mode=mode,
        )
    for cell in cells.values():
        control = cells.get(cell.controls.get(UNTRAINED, ""))
        if control is not None and cell.scores.by_seed and control.scores.by_seed:
            cell.vs_control = compare(cell.scores, control.scores)
    panels = {cell.panel for cell in cells.values()}
    for panel in panels:
        members = {
            c.cell_id: c.scores
            for c in cells.values()
            if c.panel == panel and c.role == CELL and not c.stopped_early
        }
        _, tied = within_noise_of_best(members, mode)
        for cell_id in tied:
            cells[cell_id].within_best = True
    return cells


def controls_of(cells: Mapping[str, Cell], panel: str) -> dict[str, Cell]:
    """The controls the cells of ``panel`` are compared with, by role."""
    found: dict[str, Cell] = {}
    for cell in cells.values():
        if cell.panel == panel and cell.role == CELL:
            for role, control_id in cell.controls.items():
                if control_id in cells:
                    found.setdefault(role, cells[control_id])
    return found


def describe_panel(cells: Mapping[str, Cell], panel: str, metric: str) -> str:
    """In words: the controls, the best cell, how many cells are within noise of it, and
    how many beat the untrained control, fall below it, or sit within its noise."""
    members = [c for c in cells.values() if c.panel == panel and c.role == CELL]
    scored = [c for c in members if c.scores.by_seed]
    if not scored:
        return f"{panel}: no cell finished"
    controls = controls_of(cells, panel)
    seeds = max(len(c.scores.by_seed) for c in scored)
    basis = (
        f"{seeds} seeds, paired t test" if seeds >= 2 else "1 seed, McNemar's test on test clips"
    )
    lines = []
    for role, label in (
        (UNTRAINED, "untrained-encoder control"),
        (SUPERVISED, "supervised reference"),
    ):
        if role in controls and controls[role].scores.by_seed:
            lines.append(f"{panel}: {label} {metric} {controls[role].interval.describe()}")
    stopped = [c for c in scored if c.stopped_early]
    compared = [c for c in scored if not c.stopped_early]
    if compared:
        pick = min if scored[0].mode == "min" else max
        best = pick(compared, key=lambda c: c.interval.mean)
        tied = [c for c in compared if c.within_best]
        lowest = f" (lowest {metric})" if best.mode == "min" else ""
        lines.append(
            f"{panel}: best cell{lowest} {_name(best)} {best.interval.describe()}; "
            f"{len(tied)} of {len(compared)} cells within noise of it ({basis}, 95 %)"
        )
    else:
        lines.append(f"{panel}: no cell ran every seed to the end; none is called the best")
    if stopped:
        lines.append(
            f"{panel}: the trial scheduler stopped {sum(c.stopped for c in stopped)} seed(s) "
            f"of {len(stopped)} cell(s) early: their values mix last-rung scores with "
            f"full-budget ones, so they are marked and neither compared with the best nor "
            f"counted below"
        )
    verdicts = [c.verdict for c in compared]
    if UNTRAINED in controls and any(verdicts):
        above, below, within = (verdicts.count(v) for v in (ABOVE, BELOW, WITHIN))
        lines.append(
            f"{panel}: against the untrained control, {_cells(above)} above it beyond noise, "
            f"{below} below it, {within} within noise of it"
        )
    return "\n".join(lines)


def _cells(count: int) -> str:
    return f"{count} cell is" if count == 1 else f"{count} cells are"


def _name(cell: Cell) -> str:
    if cell.first is None:
        return cell.cell_id
    return cell.first if cell.first == cell.second else f"{cell.first} > {cell.second}"


def cell_rows(cells: Mapping[str, Cell], panels: Sequence[str]) -> list[dict[str, object]]:
    """One row per cell and control (the ``*_cells.csv`` artifact): mean, interval, seeds
    and every comparison, with the per-seed values so a reader can check the mean."""
    rows = []
    for cell in cells.values():
        if cell.panel not in panels and cell.role == CELL:
            continue
        interval = cell.interval
        rows.append(
            {
                "panel": cell.panel,
                "cell": cell.cell_id,
                "role": cell.role,
                "first": cell.first or "",
                "second": cell.second or "",
                "seeds": len(cell.scores.by_seed),
                "mean": _number(interval.mean),
                "ci_low": _number(interval.low),
                "ci_high": _number(interval.high),
                "interval": interval.method,
                "within_noise_of_best": cell.within_best if cell.role == CELL else "",
                "vs_untrained_control": cell.verdict,
                "p_vs_untrained_control": _number(cell.vs_control.p_value)
                if cell.vs_control
                else "",
                "seeds_stopped_early": cell.stopped,
                "failed": cell.failed,
                "per_seed": " ".join(
                    f"{seed}:{value:.6f}" for seed, value in sorted(cell.scores.by_seed.items())
                ),
            }
        )
    return rows


def _number(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6f}"
