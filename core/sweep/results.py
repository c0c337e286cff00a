"""A sweep's results: Tune's experiment state read back into one record per trial, the
report (:mod:`core.report`) attached to the MLflow parent run, and the summary."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from core.report import FAILED, FINISHED, ReportFiles, TrialRecord, log_report_to_run, write_report
from core.stats import CORRECT_KEY, PER_CLASS_KEY, decode_correct
from core.sweep.resources import Resources
from core.sweep.space import Trial
from core.sweep.state import SweepState
from core.sweep.trial import trial_name


@dataclass
class SweepOutcome:
    """What a sweep left behind (a dry run fills only the first fields)."""

    run_name: str
    run_dir: Path
    trials: list[Trial]
    resources: Resources
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    records: list[TrialRecord] = field(default_factory=list)
    report: ReportFiles | None = None
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
        return (
            self.tracking_error is None
            and len(self.records) == len(self.trials)
            and all(record.status in (FINISHED, FAILED) for record in self.records)
            and not self.unreachable_failed
        )

    @property
    def failed(self) -> list[str]:
        return [record.trial_id for record in self.records if record.status == FAILED]

    @property
    def unreachable_failed(self) -> list[str]:
        """The failed trials whose error is that the tracking server could not be reached."""
        return unreachable_failures(self.records)


def unreachable_failures(records: Sequence[TrialRecord]) -> list[str]:
    """Trials that failed because the MLflow server could not be reached (not on their own)."""
    from core.tracking import is_unreachable_error

    return [
        record.trial_id
        for record in records
        if record.status == FAILED and is_unreachable_error(record.error)
    ]


_REPORTED_METRICS = (
    "test_top1",
    "test_macro_f1",
    "test_weighted_f1",
    "val_top1",
    "val_macro_f1",
    "loss",
    "epoch",
    "early_stopped",
)


def collect_records(experiment_path: str, trials: Sequence[Trial]) -> list[TrialRecord]:
    """One :class:`TrialRecord` per trial, from Tune's experiment state (any progress).

    A metric's value is its last reported one (evaluation epochs report ``test_*``, other
    epochs do not); trials Tune never started are PENDING.
    """
    found: dict[str, tuple[Any, Any]] = {}
    if tune.Tuner.can_restore(experiment_path):
        analysis = tune.ExperimentAnalysis(experiment_path)
        frames = analysis.trial_dataframes
        for tune_trial in analysis.trials:
            found[trial_name(tune_trial)] = (tune_trial, frames.get(tune_trial.trial_id))
    records = []
    for trial in trials:
        cfg = trial.config
        record = TrialRecord(
            trial_id=trial.trial_id,
            status="PENDING",
            panel=trial.panel,
            first=trial.first,
            second=trial.second,
            pipeline=list(cfg.augment.pipeline),
            frontend=cfg.frontend.name,
            encoder=cfg.model.encoder,
            method=cfg.method.name,
            role=trial.role,
            cell_id=trial.cell_id,
            seed=cfg.train.seed,
            controls=dict(trial.controls),
            coords=dict(trial.coords),
        )
        if trial.trial_id in found:
            tune_trial, frame = found[trial.trial_id]
            record.status = {"TERMINATED": FINISHED, "ERROR": FAILED}.get(
                tune_trial.status, tune_trial.status
            )
            if frame is not None and not frame.empty:
                for name in _REPORTED_METRICS:
                    if name in frame.columns and frame[name].notna().any():
                        record.metrics[name] = float(frame[name].dropna().iloc[-1])
                record.history = _history(frame)
                if CORRECT_KEY in frame.columns and frame[CORRECT_KEY].notna().any():
                    record.correct = decode_correct(str(frame[CORRECT_KEY].dropna().iloc[-1]))
                if PER_CLASS_KEY in frame.columns and frame[PER_CLASS_KEY].notna().any():
                    record.per_class_f1 = json.loads(str(frame[PER_CLASS_KEY].dropna().iloc[-1]))
            if "epoch" in record.metrics:
                record.epochs = int(record.metrics["epoch"]) + 1
            # Ended before its last epoch without its own early stopping: the scheduler
            # (ASHA) stopped it.
            record.stopped_early = (
                record.status == FINISHED
                and record.epochs is not None
                and record.epochs < epochs_planned(cfg)
                and not record.metrics.get("early_stopped")
            )
            record.wall_seconds = (tune_trial.last_result or {}).get("time_total_s")
            if record.status == FAILED:
                record.error = error_summary(_error_file(tune_trial))
        records.append(record)
    return records


def _error_file(tune_trial: Any) -> str | None:
    """A failed trial's error file in its folder of the experiment. ``Trial.error_file``
    names Tune's staging copy in the running Ray session, and asks Ray for it, so it fails
    where the report is built without Ray (``--report-only``, the start of ``--resume``)."""
    import ray

    name = tune_trial.run_metadata.error_filename
    if not name:
        return None
    kept = Path(tune_trial.path, name)
    if kept.is_file():
        return str(kept)
    return tune_trial.error_file if ray.is_initialized() else None


def epochs_planned(cfg: Any) -> int:
    """Epochs a trial runs when nothing stops it (the untrained control runs one)."""
    from core.methods.configs import method_config_class

    return cfg.train.epochs if method_config_class(cfg.method.name).trains else 1


_CURVE_METRICS = ("loss", "test_top1", "val_top1")

# What a preset's numbers are, said at the top of its summary and on its parent run.
PRESET_NOTES = {
    "quick": (
        "quick preset: a pipeline check, not results. Its trials train for a few steps on "
        "300 clips, so their scores say that every stage runs, not which augmentations "
        "help; compare them with the untrained control below. For results use "
        "--preset laptop (a budget measured to show effects, 3 seeds)."
    ),
}


def _history(frame: Any) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values of the curve metrics: (epochs trained, value) where reported. A restored
    trial reports its epochs again from its checkpoint; the last report of an epoch wins."""
    history: dict[str, list[tuple[int, float]]] = {}
    if "epoch" not in frame.columns:
        return history
    for name in _CURVE_METRICS:
        if name not in frame.columns:
            continue
        rows = frame[["epoch", name]].dropna()
        # Epochs trained (1-based): the evaluation after the 5th epoch is at 5.
        by_epoch = {int(epoch) + 1: float(value) for epoch, value in rows.itertuples(index=False)}
        if by_epoch:
            history[name] = sorted(by_epoch.items())
    return history


# "ValueError: ...", "ray.exceptions.RayTaskError(ValueError): ..." at the start of a line.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b[^:\s]*: ")


def error_summary(error_file: str | None) -> str:
    """The innermost exception line of a Tune error file, shortened. A message spanning
    several lines (a state dict mismatch) keeps its first line, which names the cause."""
    if not error_file or not Path(error_file).is_file():
        return "failed (no error file)"
    lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()]
    exception_lines = [line for line in lines if _EXCEPTION_LINE.match(line)]
    chosen = exception_lines[-1] if exception_lines else (lines[-1] if lines else "failed")
    return chosen[:300]


def metric_name(text: str) -> str:
    """``text`` as an MLflow metric name: characters MLflow refuses (``=``, ``+``, ...)
    become ``_`` (a control or panel named after a setting may hold them)."""
    return re.sub(r"[^\w\-. :/]", "_", text)


def mlflow_hint(
    tracking_uri: str, experiment: str, run_id: str | None, experiment_id: str | None = None
) -> str:
    """How to look at the sweep: the UI command for a local store, the URL for a server.

    Links carry MLflow's training-view parameter: MLflow 3.17 opens an experiment in its
    GenAI view (traces) unless told, whatever the experiment's tags say. With the
    experiment id, the link opens the sweep's saved view of its trials (test_top1 and the
    swept settings as columns, see core.tracking.save_sweep_view)."""
    from core.tracking import UI_TRAINING_VIEW_QUERY, UI_VIEW_QUERY_KEY

    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        if experiment_id is not None and run_id is not None:
            link = (
                f"{base}/#/experiments/{experiment_id}/runs?{UI_TRAINING_VIEW_QUERY}"
                f"&{UI_VIEW_QUERY_KEY}={run_id}"
            )
        else:
            link = f"{base}/#/experiments?{UI_TRAINING_VIEW_QUERY}"
        return f"MLflow: {link} (experiment {experiment!r}, parent run {run_id})"
    return (
        f"MLflow: mlflow ui --host 127.0.0.1 --backend-store-uri {tracking_uri}\n"
        f"        then open http://127.0.0.1:5000/#/experiments?{UI_TRAINING_VIEW_QUERY} "
        f"(experiment {experiment!r}, parent run {run_id})"
    )


def finish_sweep(
    state: SweepState,
    run_dir: Path,
    stream: TextIO,
    set_status: bool,
    fit_seconds: float | None = None,
) -> SweepOutcome:
    """Write the report, attach it to the parent run, end the parent, print the summary.

    The report is written locally first. An MLflow server that cannot be reached then
    leaves the parent run as it is, and the sweep ends anyway: the outcome carries
    ``tracking_error`` (incomplete, so the command exits 130 rather than with a
    traceback), and the summary says that ``--resume`` attaches the report once the
    server answers. The server is asked once, quickly, before the report goes up, so a
    dead server costs seconds here, not MLflow's retries for every call.
    """
    from core import tracking as mlflow_tracking

    records = collect_records(state.experiment_path, state.trials)
    report = write_report(
        records,
        run_dir / "report",
        codes=state.matrix_codes,
        panels=state.panels,
        metric=state.metric,
        name=state.ablation,
        note=PRESET_NOTES.get(state.preset or ""),
        table=state.report,
    )
    uri, parent = state.tracking_uri, state.parent_run_id
    outcome = SweepOutcome(
        run_name=state.run_name,
        run_dir=run_dir,
        trials=state.trials,
        resources=state.resources,
        parent_run_id=parent,
        tracking_uri=uri,
        experiment=state.identity.experiment,
        records=records,
        report=report,
        fit_seconds=fit_seconds,
    )
    try:
        mlflow_tracking.check_tracking_server(uri)
        with mlflow_tracking.reaching(uri, f"attaching the report to parent run {parent}"):
            _attach_report(state, report, outcome, set_status)
    except mlflow_tracking.TrackingServerError as error:
        outcome.tracking_error = error.reason
    lines = [
        "",
        f"sweep {state.run_name}"
        + (f" ({fit_seconds / 60:.1f} min)" if fit_seconds is not None else ""),
        report.summary,
        f"report: {run_dir / 'report'}",
        mlflow_hint(uri, state.identity.experiment, parent),
    ]
    tracking_lines = _tracking_lines(outcome)
    lines.extend(tracking_lines)
    if not outcome.complete:
        lines.append(
            f"the sweep is incomplete; continue it with --resume {state.run_name} "
            f"(--results {run_dir.parent})"
            + (
                " once the MLflow server answers: it reruns the trials the server's absence "
                "failed and attaches the report"
                if tracking_lines
                else ""
            )
        )
    outcome.summary = "\n".join(lines)
    print(outcome.summary, file=stream, flush=True)
    return outcome


def _attach_report(
    state: SweepState, report: ReportFiles, outcome: SweepOutcome, set_status: bool
) -> None:
    """The report's files and headline metrics on the parent run; then end it, FINISHED
    when nothing is left to resume, else KILLED."""
    from core import tracking as mlflow_tracking

    uri, parent = state.tracking_uri, state.parent_run_id
    log_report_to_run(uri, parent, report.files)
    client = mlflow_tracking.tracking_client(uri)
    for panel, matrix in report.matrices.items():
        corner = matrix.values[-1, -1]
        if not math.isnan(corner):
            client.log_metric(parent, metric_name(f"{state.metric}_mean_{panel}"), float(corner))
        if matrix.best is not None:
            client.log_metric(parent, metric_name(f"{state.metric}_best_{panel}"), matrix.best[2])
    for cell in report.cells.values():
        if cell.role != "cell" and cell.scores.by_seed:  # the controls, by name
            name = metric_name(f"{state.metric}_{cell.cell_id}")
            client.log_metric(parent, name, cell.interval.mean)
    if set_status:
        mlflow_tracking.finish_run(uri, parent, "FINISHED" if outcome.complete else "KILLED")


def _tracking_lines(outcome: SweepOutcome) -> list[str]:
    """What the MLflow server's absence left undone, for the summary (nothing if none)."""
    from core.tracking import shown_uri

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
    return lines
