"""The MLflow run of one trial: what it logs (metrics per epoch, the evaluation's figures
and tables, the resolved config) and how it ends.

Finding the run again after a restart, or creating it, is :mod:`core.tracking.opening`;
the loop's use of a run across restarts (no epoch logged twice, a from-scratch attempt
in a run of its own) is :mod:`core.tracking.lifecycle`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_TAG_VAL_LENGTH

from core.config import ExperimentConfig
from core.tracking.figures import confusion_csv, confusion_figure, gradcam_figure, roc_figure
from core.tracking.opening import open_run
from core.tracking.server import once_more_after_broken_read, reaching
from core.tracking.store import (
    TAG_ERROR,
    TAG_PARENT,
    RunIdentity,
    chunks,
    now_ms,
    quoted,
    search_all,
    tracking_client,
)

if TYPE_CHECKING:
    from core.evaluate import EvaluationResult
    from core.gradcam import GradCamMaps

EVALUATION_FOLDER = "evaluation"
# The final evaluation's figures of a trial's test split (the sweep gathers them per fold).
ROC_ARTIFACT = f"{EVALUATION_FOLDER}/test_roc.png"
GRADCAM_ARTIFACT = f"{EVALUATION_FOLDER}/test_gradcam.png"
# The error tag keeps the start and the end of a long error (a traceback's last line is
# the message); the whole text of a truncated error goes to the ``error.txt`` artifact.
ERROR_TAG_HEAD, ERROR_TAG_TAIL = 1_000, 3_000

TerminalStatus = Literal["FINISHED", "FAILED", "KILLED"]


class TrialRun:
    """The MLflow run of one trial, written by rank 0 only.

    Holds its own client and run id; several instances can live in one process (threads)
    without touching each other or MLflow's global active run. Usable as a context manager:
    an exception inside the block finishes the run FAILED (KILLED for Ctrl-C) with the error.
    """

    def __init__(
        self, client: MlflowClient, tracking_uri: str, run: Run, resumed: bool = False
    ) -> None:
        self.client = client
        self.tracking_uri = tracking_uri
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.resumed = resumed  # True when an existing run was continued
        self.finished = False

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        cfg: ExperimentConfig,
        identity: RunIdentity,
        extra_tags: dict[str, str] | None = None,
        run_id: str | None = None,
    ) -> TrialRun:
        """Continue run ``run_id`` or the trial's run, else create one
        (:func:`core.tracking.opening.open_run`)."""
        client, tracking_uri, run, resumed = open_run(cfg, identity, run_id, extra_tags or {})
        return cls(client, tracking_uri, run, resumed=resumed)

    # --- logging ------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics at ``step`` (the epoch) in batched calls.

        Non-finite values are logged as they are (MLflow stores NaN and clamps infinities)
        so that a diverging trial stays visible. Values must be convertible to float
        (Python/NumPy numbers, 0-d tensors).
        """
        timestamp = now_ms()
        entries = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"metric {key!r} has value {value!r} of type {type(value).__name__}; "
                    f"MLflow metrics must be numbers"
                ) from None
            entries.append(Metric(key, number, timestamp, int(step)))
        with reaching(self.tracking_uri, f"logging metrics of run {self.run_id} at step {step}"):
            for chunk in chunks(entries, MAX_METRICS_PER_BATCH):
                # The same metrics again are no duplicates: MLflow skips identical rows.
                once_more_after_broken_read(
                    self.tracking_uri,
                    lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk),
                )

    def log_evaluation(
        self, result: EvaluationResult, artifact_dir: str = EVALUATION_FOLDER
    ) -> None:
        """Confusion matrix (PNG and CSV with class names), per-class report (text), the
        scores as JSON and the per-clip predictions (CSV, when kept), under
        ``evaluation/<split>_*``; a later call overwrites."""
        prefix = f"{artifact_dir}/{result.split}"
        figure = confusion_figure(result)
        scores = {
            "split": result.split,
            "top1": result.top1,
            "macro_f1": result.macro_f1,
            "weighted_f1": result.weighted_f1,
            **result.precision_recall(),
            "per_class_f1": dict(zip(result.class_names, result.per_class_f1, strict=True)),
            "extra": result.extra,
        }
        with reaching(self.tracking_uri, f"logging the evaluation of run {self.run_id}"):
            self.client.log_figure(self.run_id, figure, f"{prefix}_confusion.png")
            self.client.log_text(self.run_id, confusion_csv(result), f"{prefix}_confusion.csv")
            self.client.log_text(self.run_id, result.per_class_report(), f"{prefix}_per_class.txt")
            self.client.log_text(
                self.run_id, json.dumps(scores, indent=2, allow_nan=True), f"{prefix}_scores.json"
            )
            if result.rows is not None:
                self.client.log_text(
                    self.run_id, result.predictions_csv(), f"{prefix}_predictions.csv"
                )

    def log_final_figures(
        self,
        result: EvaluationResult,
        gradcam: GradCamMaps | None,
        artifact_dir: str = EVALUATION_FOLDER,
    ) -> None:
        """The figures of a trial's final evaluation, too slow to draw at every one:
        ``evaluation/<split>_roc.png`` (where the class probabilities were kept) with the
        AUCs as JSON, and ``evaluation/<split>_gradcam.png`` (where there are maps: a 2-D
        encoder)."""
        prefix = f"{artifact_dir}/{result.split}"
        with reaching(self.tracking_uri, f"logging the final figures of run {self.run_id}"):
            roc = result.roc
            if roc is not None:
                self.client.log_figure(self.run_id, roc_figure(result), f"{prefix}_roc.png")
                aucs = {
                    "micro": roc.micro_auc,
                    "macro": roc.macro_auc,
                    "per_class": {
                        result.class_names[index]: curve.auc
                        for index, curve in roc.per_class.items()
                    },
                    "without_roc": [result.class_names[index] for index in roc.skipped],
                }
                self.client.log_text(
                    self.run_id, json.dumps(aucs, indent=2, allow_nan=True), f"{prefix}_auc.json"
                )
            if gradcam is not None:
                self.client.log_figure(
                    self.run_id, gradcam_figure(gradcam), f"{prefix}_gradcam.png"
                )

    def log_config(self, cfg: ExperimentConfig) -> None:
        """The resolved config as ``config.yaml`` (loadable with ``ExperimentConfig.from_dict``)."""
        with reaching(self.tracking_uri, f"logging the config of run {self.run_id}"):
            self.client.log_text(self.run_id, cfg.to_yaml(), "config.yaml")

    def log_artifact_file(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a local file into the run's artifacts (under ``artifact_path`` if given)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file")
        with reaching(self.tracking_uri, f"uploading {path.name} to run {self.run_id}"):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    # --- ending -------------------------------------------------------------------------
    def finish(self, status: TerminalStatus, error: str | None = None) -> None:
        """End the run. FAILED records ``error`` in the ``clarlab.error`` tag (a long error
        is truncated there and kept whole in the ``error.txt`` artifact)."""
        with reaching(self.tracking_uri, f"ending run {self.run_id} as {status}"):
            end_run(self.client, self.run_id, status, error)
        self.finished = True

    def __enter__(self) -> TrialRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.finished:
            return
        if exc is None:
            self.finish("FINISHED")
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("KILLED", error="interrupted")
        else:
            self.finish("FAILED", error=f"{type(exc).__name__}: {exc}")


def truncate_error(text: str) -> str:
    limit = min(MAX_TAG_VAL_LENGTH, ERROR_TAG_HEAD + ERROR_TAG_TAIL + 64)
    if len(text) <= limit:
        return text
    omitted = len(text) - ERROR_TAG_HEAD - ERROR_TAG_TAIL
    return (
        f"{text[:ERROR_TAG_HEAD]}\n... [{omitted} characters omitted; full text in "
        f"error.txt] ...\n{text[-ERROR_TAG_TAIL:]}"
    )


def finish_run(
    tracking_uri: str, run_id: str, status: TerminalStatus, error: str | None = None
) -> None:
    """Terminate any run (parent or trial) by id, recording ``error`` as in
    :meth:`TrialRun.finish`."""
    with reaching(tracking_uri, f"ending run {run_id} as {status}"):
        end_run(tracking_client(tracking_uri), run_id, status, error)


def end_run(client: MlflowClient, run_id: str, status: str, error: str | None) -> None:
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    if error and status == "FAILED":
        shown = truncate_error(error)
        if shown != error:
            client.log_text(run_id, error, "error.txt")
        client.set_tag(run_id, TAG_ERROR, shown)
    client.set_terminated(run_id, status=status, end_time=now_ms())


def find_trial_runs(tracking_uri: str, parent_run_id: str) -> list[Run]:
    """Every run nested directly under ``parent_run_id``, oldest first (all pages)."""
    client = tracking_client(tracking_uri)
    with reaching(tracking_uri, f"listing the trial runs of parent run {parent_run_id}"):
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        return search_all(
            client,
            experiment_id,
            f"tags.`{TAG_PARENT}` = {quoted(parent_run_id, 'parent run id')}",
        )


# --- trial runs --------------------------------------------------------------------------
