"""A trial's MLflow run across the attempts that train it: the loop's side of tracking.

A trial can be stopped and restarted at any point (a killed worker, a resumed sweep,
Ray's automatic retries). The loop then continues from its last checkpoint, and its MLflow
run must read as one training: no epoch logged twice, no gap, and an attempt that starts
from scratch in a run of its own. :class:`TrialLog` does that for rank 0 (the other ranks
get a silent one) and ends the run as the attempt ends: FINISHED, FAILED with the error
and its traceback, KILLED on Ctrl-C, FINISHED and marked when a trial scheduler (ASHA)
stopped it early.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from core.config import ExperimentConfig
from core.tracking.runs import TrialRun
from core.tracking.store import (
    TAG_PARENT,
    TAG_PREVIOUS_ERROR,
    TAG_RESUME_COUNT,
    RunIdentity,
    now_ms,
    resolve_tracking_uri,
    tracking_client,
)

if TYPE_CHECKING:
    from core.evaluate import EvaluationResult
    from core.gradcam import GradCamMaps

TAG_STOPPED_EARLY = "clarlab.stopped_early"


def finish_completed_run(
    cfg: ExperimentConfig,
    identity: RunIdentity,
    run_id: str,
    epoch: int,
    metrics: dict[str, float],
) -> None:
    """Mark a completed trial's MLflow run FINISHED unless it already is (then untouched),
    first logging the last checkpoint's epoch should the run's history lack it."""
    client = tracking_client(resolve_tracking_uri(identity))
    if client.get_run(run_id).info.status != "FINISHED":
        tracker = TrialRun.open(cfg, identity, run_id=run_id)
        if last_logged_epoch(tracker) < epoch:
            tracker.log_metrics(metrics, step=epoch)
        tracker.finish("FINISHED")


# The metric whose MLflow history says which epochs a run holds: every epoch logs it, for
# every method (the untrained control has no loss).
HISTORY_METRIC = "epoch"
# A from-scratch attempt of a trial gets a new run; the two are linked by these tags.
TAG_SUPERSEDED_BY = "clarlab.superseded_by"
TAG_SUPERSEDES = "clarlab.supersedes"


def last_logged_epoch(tracker: TrialRun) -> int:
    """The last epoch in the run's MLflow history, -1 when it holds none.

    Epochs are logged in order, each before its checkpoint is reported, so the history
    always reaches at least the epoch of the last persisted checkpoint; what lies beyond it
    was logged by an attempt killed before it could persist that epoch's checkpoint.
    """
    history = tracker.client.get_metric_history(tracker.run_id, HISTORY_METRIC)
    return max((int(point.step) for point in history), default=-1)


def supersede(
    previous: TrialRun,
    cfg: ExperimentConfig,
    identity: RunIdentity,
    extra_tags: dict[str, str],
) -> TrialRun:
    """A new MLflow run for an attempt that starts from scratch where ``previous`` (the
    trial's run, found again by its trial id) already holds an earlier attempt's history.

    Why a new run rather than new steps in the old one: a run's history then always
    describes one attempt, its ``loss`` steps 0..N-1 of one training, so curves, the last
    values and the report never mix a failed or cut-off attempt with the one that finished
    (a retried trial's steps read ``[0, 1, 0, 1]`` before). The old run keeps what it
    logged, is linked to its successor (``clarlab.superseded_by`` on it,
    ``clarlab.supersedes`` on the new one), ends FAILED if its attempt had failed (its
    error moved to ``clarlab.previous_error`` when the run was reopened) and KILLED
    otherwise, and is then deleted in MLflow's sense (lifecycle ``deleted``, restorable
    with ``mlflow runs restore``): every search of active runs -- the trial lookup of
    :meth:`TrialRun.open`, :func:`~core.tracking.runs.find_trial_runs`, the UI's runs table --
    sees exactly one run per trial. The new run is created before the old one is deleted
    and found again by its ``clarlab.supersedes`` tag, so an attempt killed in between
    leaves no second run behind: the next attempt finishes the move.
    """
    client = previous.client
    old = client.get_run(previous.run_id)
    old_id = old.info.run_id
    now = now_ms()
    pending = client.search_runs(
        [old.info.experiment_id], filter_string=f"tags.`{TAG_SUPERSEDES}` = '{old_id}'"
    )
    if pending:
        new_id = pending[0].info.run_id
    else:
        tags = {TAG_SUPERSEDES: old_id}
        if old.data.tags.get(TAG_PARENT):
            tags[TAG_PARENT] = old.data.tags[TAG_PARENT]
        new_id = client.create_run(
            old.info.experiment_id, start_time=now, tags=tags, run_name=old.info.run_name
        ).info.run_id
    client.set_tag(old_id, TAG_SUPERSEDED_BY, new_id)
    failed = TAG_PREVIOUS_ERROR in old.data.tags
    client.set_terminated(old_id, status="FAILED" if failed else "KILLED", end_time=now)
    client.delete_run(old_id)
    tracker = TrialRun.open(cfg, identity, run_id=new_id, extra_tags=extra_tags)
    # Opening by id counts a resume; this run was never resumed.
    client.delete_tag(new_id, TAG_RESUME_COUNT)
    return tracker


class TrialLog:
    """Rank 0's MLflow run of one trial, across restarts (see the module docstring)."""

    def __init__(self, run: TrialRun | None = None, logged_through: int = -1) -> None:
        self.run = run  # None: a rank other than 0, which logs nothing
        self.logged_through = logged_through  # the last epoch already in the run's history

    @classmethod
    def open(
        cls,
        cfg: ExperimentConfig,
        identity: RunIdentity,
        *,
        run_id: str | None,
        start_epoch: int,
        restored_metrics: Mapping[str, float],
        extra_tags: dict[str, str],
    ) -> TrialLog:
        """The run this attempt logs to.

        The MLflow history follows the checkpoints. An epoch is logged before its
        checkpoint is reported, so an attempt killed in between logged an epoch that the
        next attempt (restored from the checkpoint before) trains again: epochs up to the
        last one in the history are trained, not logged twice. The replay draws the same
        seeds, so on CPU it computes what was logged. An attempt from scratch in a run
        that holds history gets a new run (:func:`supersede`).
        """
        run = TrialRun.open(cfg, identity, run_id=run_id, extra_tags=extra_tags)
        logged_through = last_logged_epoch(run) if run.resumed else -1
        if start_epoch == 0 and logged_through >= 0:
            run, logged_through = supersede(run, cfg, identity, extra_tags), -1
        elif start_epoch > 0 and logged_through < start_epoch - 1:
            # Not reached while epochs are logged before their checkpoints; kept so that a
            # checkpoint whose epoch the history lacks still leaves no gap at its epoch.
            run.log_metrics(restored_metrics, step=start_epoch - 1)
            logged_through = start_epoch - 1
        if start_epoch == 0:
            run.log_config(cfg)
        return cls(run, logged_through)

    @property
    def run_id(self) -> str:
        return self.run.run_id if self.run else ""

    def epoch(
        self, epoch: int, metrics: Mapping[str, float], evaluation: EvaluationResult | None
    ) -> None:
        """Log an epoch's metrics (unless an earlier attempt did) and, at an evaluation,
        its figures and tables."""
        if self.run is None:
            return
        if epoch > self.logged_through:
            self.run.log_metrics(metrics, step=epoch)
        if evaluation is not None:
            self.run.log_evaluation(evaluation)

    def final(self, result: EvaluationResult, gradcam: GradCamMaps | None) -> None:
        """Log the figures of the trial's final evaluation (ROC curves, Grad-CAM)."""
        if self.run is not None:
            self.run.log_final_figures(result, gradcam)

    @contextmanager
    def ending(self) -> Iterator[None]:
        """End the run as the block ends: FINISHED; KILLED on Ctrl-C; FINISHED and tagged
        when Tune stopped the trial at a report (ASHA: it ended early, it did not fail,
        its last evaluation stands); FAILED with the cause in the ``clarlab.error`` tag
        and the whole traceback beside it as ``error.txt`` (the terminal shows one line;
        a dead server loses only the latter)."""
        try:
            yield
        except KeyboardInterrupt:
            if self.run:
                self.run.finish("KILLED", error="interrupted")
            raise
        except SystemExit:
            if self.run:
                self.run.client.set_tag(self.run.run_id, TAG_STOPPED_EARLY, "true")
                self.run.finish("FINISHED")
            raise
        except BaseException as error:
            if self.run:
                with contextlib.suppress(Exception):
                    self.run.client.log_text(self.run.run_id, traceback.format_exc(), "error.txt")
                self.run.finish("FAILED", error=f"{type(error).__name__}: {error}")
            raise
        if self.run:
            self.run.finish("FINISHED")
