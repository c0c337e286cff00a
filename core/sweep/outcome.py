"""What a sweep invocation left behind, grid or search, and the lines its summary ends
with (what the tracking server's absence left undone, how to continue)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.sweep.resources import Resources
from core.sweep.trials import Trial
from core.tracking import shown_uri

# What a preset's numbers are, said at the top of its summary and on its parent run.
PRESET_NOTES = {
    "quick": (
        "quick preset: a pipeline check, not results. Its trials train for a few steps on "
        "300 clips, so their scores say that every stage runs, not which augmentations "
        "help; compare them with the untrained control below. For results use "
        "--preset laptop (a budget measured to show effects, 3 seeds)."
    ),
}


@dataclass
class SweepOutcome:
    """What a sweep invocation left behind (a dry run fills only the first fields)."""

    kind: str  # "grid" | "search" | "dry-run"
    run_name: str
    run_dir: Path
    resources: Resources | None = None
    trials: list[Trial] = field(default_factory=list)  # a grid's planned trials
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    records: list[Any] = field(default_factory=list)  # a grid's TrialRecords
    report: Any = None  # a grid's core.report.ReportFiles
    best: dict[str, Any] | None = None  # a search's best trial: number, value, params
    study_trials: int = 0  # a search: trials in its study, every invocation's
    failed: list[str] = field(default_factory=list)  # this invocation's failed trials
    # Of those, the ones that failed because the tracking server could not be reached.
    unreachable_failed: list[str] = field(default_factory=list)
    ended: bool = True  # every trial of this invocation ended (finished or failed)
    summary: str = ""
    fit_seconds: float | None = None  # wall time of this invocation's Tune run
    # Set when the MLflow server could not be reached at the report: the report is local
    # only and the parent run was not updated (``--resume`` attaches it later).
    tracking_error: str | None = None

    @property
    def complete(self) -> bool:
        """Every trial ended (finished, or failed on its own) and MLflow has the report:
        nothing is left to resume. A trial that failed because the tracking server could
        not be reached is left: ``--resume`` reruns it."""
        return self.tracking_error is None and self.ended and not self.unreachable_failed


def closing_lines(outcome: SweepOutcome, what: str) -> list[str]:
    """What the MLflow server's absence left undone, and how to continue ``what`` (``the
    sweep``, ``the search``) when it is incomplete."""
    server = f"MLflow at {shown_uri(outcome.tracking_uri or '')}"
    lines = []
    if outcome.tracking_error:
        lines.append(
            f"{server} could not be reached ({outcome.tracking_error}): the report is local "
            f"only and parent run {outcome.parent_run_id} was not updated"
        )
    lost = outcome.unreachable_failed
    if lost:
        shown = ", ".join(lost[:4]) + (f" and {len(lost) - 4} more" if len(lost) > 4 else "")
        lines.append(f"{len(lost)} trial(s) failed because {server} could not be reached ({shown})")
    if not outcome.complete:
        does = (
            "samples more trials into the same study"
            if outcome.kind == "search"
            else "reruns the trials the server's absence failed"
        )
        after = f" once the MLflow server answers: it {does} and attaches the report" if lines else ""
        lines.append(
            f"{what} is incomplete; continue it with --resume {outcome.run_name} "
            f"(--results {outcome.run_dir.parent}){after}"
        )
    return lines
