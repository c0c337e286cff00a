"""The step of a sweep that is a grid's own: expand every cell (with controls and
seeds), run them all as one Tune grid, and report them as heatmaps and paper-shaped
tables. Everything else is the runner's (:mod:`core.sweep.runner`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from core.cells import CELL, FAILED, FINISHED
from core.dotted import nest
from core.fold_report import FIGURES_FOLDER, write_fold_roc
from core.metrics import reported_metrics, unknown_metric
from core.report import write_report
from core.sweep.design import expand_trials
from core.sweep.deviations import (
    DEVIATIONS_TAG,
    deviation_lines,
    deviation_notes,
    write_deviations,
)
from core.sweep.dryrun import print_grid_dry_run
from core.sweep.errors import GridError
from core.sweep.fold_figures import attach_fold_figures
from core.sweep.grid import GridSpace, load_grid, restrict_axes
from core.sweep.halving import check_halving, describe_halving, halving_scheduler
from core.sweep.outcome import PRESET_NOTES, SweepOutcome, closing_lines
from core.sweep.preflight import SplitSizes
from core.sweep.request import SweepRequest, request_overrides, seeds_for
from core.sweep.resources import Resources, resources_for
from core.sweep.results import collect_records, metric_name, unreachable_failures
from core.sweep.state import GridDetails, SweepState
from core.sweep.trainable import cell_params, run_trial
from core.sweep.trials import Trial
from core.tracking import ParentRun


@dataclass(frozen=True)
class GridPlan:
    """A validated grid: its cells and controls at every seed, and how each is placed."""

    space: GridSpace
    trials: list[Trial]
    resources: Resources
    seeds: int
    kind: str = "grid"
    deviations: tuple[str, ...] = ()  # departures from the paper (core.sweep.deviations)

    @property
    def file(self) -> Any:
        return self.space.file

    def checked_trials(self) -> list[Trial]:
        """What the preflight checks against the data: every trial."""
        return self.trials

    def check_metric(self, sizes: Mapping[str, SplitSizes]) -> None:
        """The file's metric must be reported by every cell (the controls may lack a
        method's loss: they have none)."""
        known: list[str] | None = None
        for trial in self.trials:
            if trial.role != CELL:
                continue
            size = sizes.get(trial.trial_id)
            names = reported_metrics(trial.config, has_validation=not size or size.val > 0)
            known = names if known is None else [name for name in known if name in names]
        problem = unknown_metric(self.space.metric, known or [])
        if problem:
            raise GridError(f"{self.space.source}: {problem}")

    def print_dry_run(
        self,
        request: SweepRequest,
        sizes: Mapping[str, SplitSizes],
        here: Mapping[str, float],
        stream: TextIO,
    ) -> None:
        if request.scheduler == "asha":
            eval_every, epochs = check_halving(self.trials)
            print(describe_halving(eval_every, epochs, self.space.metric, self.space.mode),
                  file=stream)  # fmt: skip
        print_grid_dry_run(
            request, self.space.source, self.trials, self.resources, sizes, here, stream
        )
        for line in self.deviations:
            print(f"deviation from the paper: {line}", file=stream)

    def run_name_stem(self, preset: str | None) -> str:
        return f"{self.space.ablation}-{preset or 'base'}"

    def parent_tags(self) -> dict[str, str]:
        tags = {
            "clarlab.dataset": self.trials[0].config.data.dataset,
            "clarlab.seeds": str(self.seeds),
        }
        if any(trial.config.data.allow_unverified for trial in self.trials):
            tags["clarlab.data_unverified"] = "true"  # archives without a known SHA-256
        return tags

    def view_columns(self) -> list[str]:
        return sorted(self.space.swept_fields)

    def details(self) -> GridDetails:
        space = self.space
        return GridDetails(
            trials=self.trials,
            matrix_codes=list(space.matrix_axis.values) if space.matrix_axis else None,
            panels=list(dict.fromkeys(trial.panel for trial in self.trials)),
            seeds=self.seeds,
            report=space.report.to_dict() if space.report else None,
            deviations=list(self.deviations),
        )

    def announce(self, resources: Resources) -> str:
        return f"{len(self.trials)} trials; {resources.describe()}"


def prepare_grid(request: SweepRequest) -> GridPlan:
    """Load, restrict and expand the grid and size its trials (no Ray yet): the one
    validation of the grid per sweep; the trials carry their validated configs from here
    to the Tune trials."""
    space = restrict_axes(load_grid(request.space), request.axis_values)
    seeds = seeds_for(request)
    trials = expand_trials(
        space,
        preset=request.preset,
        overrides=request_overrides(request),
        trial_overrides=request.trial_overrides,
        seeds=seeds,
        controls=request.controls,
    )
    if request.scheduler == "asha":
        check_halving(trials)  # one budget for all cells, before Ray
    deviations = deviation_notes(
        space.file.deviations,
        request.preset,
        [*space.file.lower_layers(request.preset), nest(request.recipe)],
        request.overrides,
        [trial.config for trial in trials],
    )
    resources = resources_for(request, trials[0].config.train)
    return GridPlan(space, trials, resources, seeds, deviations=tuple(deviations))


def grid_tune_run(state: SweepState, request: SweepRequest) -> dict[str, Any]:
    """The Tuner arguments of a grid: one Tune trial per planned trial; ASHA over the
    cells with the controls exempt when the sweep asked for it."""
    grid = state.grid
    assert grid is not None
    scheduler = None
    if state.scheduler == "asha":
        eval_every, epochs = check_halving(grid.trials)
        print(describe_halving(eval_every, epochs, state.metric, state.mode), flush=True)
        scheduler = halving_scheduler(
            metric=state.metric,
            mode=state.mode,
            eval_every=eval_every,
            epochs=epochs,
            exempt=[trial.trial_id for trial in grid.trials if trial.role != CELL],
        )
    cells = [cell_params(t, state.identity.for_trial(t.trial_id)) for t in grid.trials]
    return {
        "trainable": run_trial,
        "param_space": {"cell": tune.grid_search(cells)},
        "scheduler": scheduler,
        "total": len(grid.trials),
    }


def grid_resume_request(state: SweepState, request: SweepRequest, stream: TextIO) -> SweepRequest:
    """The request for a resume: with ``retry_failed`` set when trials failed because the
    MLflow server could not be reached. They did not fail on their own, and a resume
    after the server is back should finish them; Tune reruns all failed trials or none,
    so the ones that failed on their own run again too (and fail again, if they must).
    Each rerun from scratch logs into a new MLflow run, so no run mixes two attempts."""
    assert state.grid is not None
    if request.retry_failed:
        return request
    records = collect_records(state.experiment_path, state.grid.trials)
    lost = unreachable_failures(records)
    if not lost:
        return request
    failed = sum(record.status == FAILED for record in records)
    print(
        f"{len(lost)} of the {failed} failed trials failed because MLflow could not be "
        f"reached; rerunning the failed trials",
        file=stream,
        flush=True,
    )
    return replace(request, retry_failed=True)


def finish_grid(
    state: SweepState,
    run_dir: Path,
    stream: TextIO,
    set_status: bool,
    fit_seconds: float | None = None,
) -> SweepOutcome:
    """Write the report, attach it to the parent run, end the parent, print the summary.

    The report is written locally first; an MLflow server that cannot be reached then
    leaves the parent run as it is and the outcome carries ``tracking_error`` (the sweep
    is incomplete: ``--resume`` attaches the report once the server answers)."""
    grid = state.grid
    assert grid is not None
    records = collect_records(state.experiment_path, grid.trials)
    notes = [PRESET_NOTES.get(state.preset or ""), *deviation_lines(grid.deviations)]
    report = write_report(
        records,
        run_dir / "report",
        codes=grid.matrix_codes,
        panels=grid.panels,
        metric=state.metric,
        mode=state.mode,
        name=state.ablation,
        note="\n".join(note for note in notes if note) or None,
        table=grid.report,
    )
    if grid.deviations:
        report.files.append(write_deviations(grid.deviations, run_dir / "report"))
    fold_files = write_fold_roc(records, run_dir / FIGURES_FOLDER)
    parent = ParentRun(state.tracking_uri, state.parent_run_id, state.identity.experiment)
    outcome = SweepOutcome(
        kind="grid",
        run_name=state.run_name,
        run_dir=run_dir,
        resources=state.resources,
        trials=grid.trials,
        parent_run_id=parent.run_id,
        tracking_uri=parent.tracking_uri,
        experiment=parent.experiment,
        records=records,
        report=report,
        failed=[record.trial_id for record in records if record.status == FAILED],
        unreachable_failed=unreachable_failures(records),
        ended=all(record.status in (FINISHED, FAILED) for record in records),
        fit_seconds=fit_seconds,
    )

    def attach(run: ParentRun) -> None:
        run.log_files(report.files)
        attach_fold_figures(run, records, run_dir / FIGURES_FOLDER, fold_files)
        if grid.deviations:
            run.set_tags({DEVIATIONS_TAG: "; ".join(grid.deviations)[:5000]})
        _log_headline_metrics(run, state.metric, report)
        if set_status:
            run.finish("FINISHED" if outcome.ended and not outcome.unreachable_failed else "KILLED")

    outcome.tracking_error = parent.publish("attaching the report", attach)
    minutes = f" ({fit_seconds / 60:.1f} min)" if fit_seconds is not None else ""
    lines = [
        "",
        f"sweep {state.run_name}{minutes}",
        report.summary,
        f"report: {run_dir / 'report'}",
        parent.hint(),
        *closing_lines(outcome, "the sweep"),
    ]
    outcome.summary = "\n".join(lines)
    print(outcome.summary, file=stream, flush=True)
    return outcome


def _log_headline_metrics(run: ParentRun, metric: str, report: Any) -> None:
    """Each matrix's mean and best, and each control's mean, as parent-run metrics."""
    for panel, matrix in report.matrices.items():
        corner = matrix.values[-1, -1]
        if not math.isnan(corner):
            run.log_metric(metric_name(f"{metric}_mean_{panel}"), float(corner))
        if matrix.best is not None:
            run.log_metric(metric_name(f"{metric}_best_{panel}"), matrix.best[2])
    for cell in report.cells.values():
        if cell.role != CELL and cell.scores.by_seed:  # the controls, by name
            run.log_metric(metric_name(f"{metric}_{cell.cell_id}"), cell.interval.mean)


__all__: Sequence[str] = ("GridPlan", "finish_grid", "grid_tune_run", "prepare_grid")
