"""MLflow tracking: one run per trial, nested under the sweep's parent run.

One module per job:

- :mod:`~core.tracking.store`: where a run is stored (:class:`RunIdentity`, the tracking
  URI, a client whose SQLite store is safe to open from several processes, experiments);
- :mod:`~core.tracking.server`: reaching a tracking server (a quick check before work
  starts, bounded retries, errors that name the cause and the fix);
- :mod:`~core.tracking.opening`: finding a trial's run again after a restart, or creating it;
- :mod:`~core.tracking.runs`: what a trial's run logs and how it ends (:class:`TrialRun`);
- :mod:`~core.tracking.lifecycle`: the loop's run across attempts (:class:`TrialLog`);
- :mod:`~core.tracking.parent`: the sweep's parent run, written one way (:class:`ParentRun`);
- :mod:`~core.tracking.figures`: the evaluation's confusion matrix as CSV and figure, its
  ROC curves and Grad-CAM maps as figures.

The names below are the package's public surface; import them from here.
"""

from __future__ import annotations

from core.tracking.figures import confusion_csv, confusion_figure, gradcam_figure, roc_figure
from core.tracking.lifecycle import TrialLog, finish_completed_run
from core.tracking.opening import config_params, default_run_name
from core.tracking.parent import ParentRun, mlflow_hint, save_sweep_view, start_parent_run
from core.tracking.runs import (
    EVALUATION_FOLDER,
    GRADCAM_ARTIFACT,
    ROC_ARTIFACT,
    TrialRun,
    find_trial_runs,
    finish_run,
)
from core.tracking.server import (
    HTTP_RETRY_ENV,
    TrackingServerError,
    check_tracking_server,
    is_unreachable_error,
    mask_secrets,
    reaching,
    shown_uri,
    unreachable_reason,
)
from core.tracking.store import (
    DB_FILE,
    EXPERIMENT_KIND_TRAINING,
    HEADLINE_METRIC,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_PARENT,
    TAG_PREVIOUS_ERROR,
    TAG_PRIMARY_METRIC,
    TAG_RESUME_COUNT,
    TAG_RUNS_VIEW_PREFIX,
    TAG_TRIAL_ID,
    UI_TRAINING_VIEW_QUERY,
    UI_VIEW_QUERY_KEY,
    RunIdentity,
    default_artifact_root,
    ensure_experiment,
    git_commit,
    git_dirty,
    resolve_tracking_uri,
    tracking_client,
)

__all__ = [
    "DB_FILE",
    "EXPERIMENT_KIND_TRAINING",
    "TAG_EXPERIMENT_KIND",
    "TAG_PRIMARY_METRIC",
    "TAG_RUNS_VIEW_PREFIX",
    "EVALUATION_FOLDER",
    "GRADCAM_ARTIFACT",
    "ROC_ARTIFACT",
    "HEADLINE_METRIC",
    "HTTP_RETRY_ENV",
    "TAG_ERROR",
    "TAG_PARENT",
    "TAG_PREVIOUS_ERROR",
    "TAG_RESUME_COUNT",
    "TAG_TRIAL_ID",
    "UI_TRAINING_VIEW_QUERY",
    "UI_VIEW_QUERY_KEY",
    "ParentRun",
    "RunIdentity",
    "TrackingServerError",
    "TrialLog",
    "TrialRun",
    "check_tracking_server",
    "config_params",
    "confusion_csv",
    "confusion_figure",
    "default_artifact_root",
    "default_run_name",
    "ensure_experiment",
    "find_trial_runs",
    "finish_completed_run",
    "finish_run",
    "git_commit",
    "git_dirty",
    "gradcam_figure",
    "is_unreachable_error",
    "mask_secrets",
    "mlflow_hint",
    "reaching",
    "resolve_tracking_uri",
    "roc_figure",
    "save_sweep_view",
    "shown_uri",
    "start_parent_run",
    "tracking_client",
    "unreachable_reason",
]
