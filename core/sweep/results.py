"""A sweep's trials read back from Tune's experiment state, by name.

Every trial reports its metrics to Tune each epoch (:mod:`core.train.loop`); this module
reads them back for the report, whatever they are called: a metric's value is its last
reported one (evaluation epochs report ``test_*``, other epochs do not), a trial's
history is every epoch's value of every metric, and a failed trial's error is the
innermost exception line of its error file. Grids map these onto their planned trials
(:func:`collect_records`); searches read them for their samples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from core.cells import FAILED, FINISHED, TrialRecord
from core.roc import ROC_KEY, parse_macro_roc
from core.stats import CORRECT_KEY, PER_CLASS_KEY, decode_correct
from core.sweep.trials import Trial
from core.tracking import is_unreachable_error

_TUNE_STATUS = {"TERMINATED": FINISHED, "ERROR": FAILED}


@dataclass
class TuneResult:
    """One Tune trial as its result files tell it."""

    name: str  # the trial id (Tune's trial name is clarlab's trial id)
    status: str  # FINISHED | FAILED | RUNNING | PENDING | PAUSED
    metrics: dict[str, float] = field(default_factory=dict)  # last reported value
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    correct: np.ndarray | None = None  # per test clip, from the last evaluation
    per_class_f1: dict[str, float] = field(default_factory=dict)
    macro_roc: dict[str, Any] | None = None  # the last test evaluation's (core.roc)
    wall_seconds: float | None = None
    error: str | None = None

    @property
    def epochs(self) -> int | None:
        """Epochs trained (the loop reports ``epoch`` from 0)."""
        return int(self.metrics["epoch"]) + 1 if "epoch" in self.metrics else None


def trial_name(trial: Any) -> str:
    """Tune trial names (and folders) are the stable trial ids, not a hash of the config."""
    return str(trial.config["cell"]["trial_id"])


def read_experiment(experiment_path: str) -> dict[str, TuneResult]:
    """Every trial of a Tune experiment, by trial id (empty before Tune saved anything)."""
    if not tune.Tuner.can_restore(experiment_path):
        return {}
    analysis = tune.ExperimentAnalysis(experiment_path)
    frames = analysis.trial_dataframes
    found = {}
    for tune_trial in analysis.trials:
        name = trial_name(tune_trial)
        result = TuneResult(name, _TUNE_STATUS.get(tune_trial.status, tune_trial.status))
        frame = frames.get(tune_trial.trial_id)
        if frame is not None and not frame.empty:
            _read_frame(result, frame)
        result.wall_seconds = (tune_trial.last_result or {}).get("time_total_s")
        if result.status == FAILED:
            result.error = error_summary(_error_file(tune_trial))
        found[name] = result
    return found


def _read_frame(result: TuneResult, frame: Any) -> None:
    """Every numeric column of a trial's results (Tune's own ``config/*`` aside) as a
    metric; per-clip correctness, per-class F1 and the macro ROC curve from their text
    columns."""
    for name in frame.columns:
        if name.startswith("config/") or name in (CORRECT_KEY, PER_CLASS_KEY, ROC_KEY):
            continue
        values = frame[name].dropna()
        if values.empty or not all(isinstance(v, int | float | np.number) for v in values):
            continue
        result.metrics[name] = float(values.iloc[-1])
        if "epoch" in frame.columns and name != "epoch":
            rows = frame[["epoch", name]].dropna()
            # Epochs trained (1-based): the evaluation after the 5th epoch is at 5. A restored
            # trial reports its epochs again from its checkpoint; the last report wins.
            by_epoch = {
                int(epoch) + 1: float(value) for epoch, value in rows.itertuples(index=False)
            }
            result.history[name] = sorted(by_epoch.items())
    if CORRECT_KEY in frame.columns and frame[CORRECT_KEY].notna().any():
        result.correct = decode_correct(str(frame[CORRECT_KEY].dropna().iloc[-1]))
    if PER_CLASS_KEY in frame.columns and frame[PER_CLASS_KEY].notna().any():
        result.per_class_f1 = json.loads(str(frame[PER_CLASS_KEY].dropna().iloc[-1]))
    if ROC_KEY in frame.columns and frame[ROC_KEY].notna().any():
        result.macro_roc = parse_macro_roc(str(frame[ROC_KEY].dropna().iloc[-1]))


def epochs_planned(cfg: Any) -> int:
    """Epochs a trial runs when nothing stops it (the untrained control runs one)."""
    return cfg.train.epochs if type(cfg.method).trains else 1


def collect_records(
    experiment_path: str, trials: Sequence[Trial], found: Mapping[str, TuneResult] | None = None
) -> list[TrialRecord]:
    """One :class:`TrialRecord` per planned trial of a grid (any progress; trials Tune
    never started are PENDING)."""
    found = read_experiment(experiment_path) if found is None else found
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
            fold=cfg.data.fold,
        )
        result = found.get(trial.trial_id)
        if result is not None:
            record.status, record.metrics = result.status, dict(result.metrics)
            record.history, record.correct = result.history, result.correct
            record.per_class_f1, record.epochs = result.per_class_f1, result.epochs
            record.wall_seconds, record.error = result.wall_seconds, result.error
            record.macro_roc = result.macro_roc
            # Ended before its last epoch without its own early stopping: the trial
            # scheduler (ASHA) stopped it.
            record.stopped_early = (
                record.status == FINISHED
                and record.epochs is not None
                and record.epochs < epochs_planned(cfg)
                and not record.metrics.get("early_stopped")
            )
        records.append(record)
    return records


def unreachable_failures(records: Sequence[TrialRecord | TuneResult]) -> list[str]:
    """The failed trials whose error is that the tracking server could not be reached
    (they did not fail on their own; ``--resume`` reruns them)."""
    return [
        getattr(record, "trial_id", None) or getattr(record, "name", "")
        for record in records
        if record.status == FAILED and is_unreachable_error(record.error)
    ]


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
