"""The sweep's parent run, written one way: every write (tags, metrics, the report's
files, the status) goes through :class:`ParentRun`, inside :func:`~core.tracking.server.reaching`
with the retries of :data:`~core.tracking.server.HTTP_RETRY_ENV`.

A grid attaches its heatmaps and tables, a search its plots, trials table and best config;
both after a quick check that the server answers, so a dead server costs seconds at the
report, the local report still stands, and ``--resume`` or ``--report-only`` attach it once
the server is back.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from core.tracking.runs import find_trial_runs, finish_run
from core.tracking.server import (
    TrackingServerError,
    check_tracking_server,
    is_http,
    reaching,
    shown_uri,
)
from core.tracking.store import (
    DEFAULT_CELL_SETTINGS,
    HEADLINE_METRIC,
    TAG_ABLATION,
    TAG_KIND,
    TAG_PARENT,
    TAG_RUNS_VIEW_PREFIX,
    TAG_TRIAL_ID,
    UI_TRAINING_VIEW_QUERY,
    UI_VIEW_QUERY_KEY,
    RunIdentity,
    default_artifact_root,
    ensure_experiment,
    now_ms,
    provenance_tags,
    quoted,
    resolve_tracking_uri,
    tracking_client,
)

REPORT_FOLDER = "report"  # artifact folder of a grid's report on its parent run


def start_parent_run(
    identity: RunIdentity,
    tags: dict[str, str],
    run_name: str,
    *,
    metric: str = HEADLINE_METRIC,
    mode: str = "max",
    cell_settings: Sequence[str] | None = None,
) -> str:
    """Create a RUNNING parent run for a sweep (trials nest under it); returns its id.

    The sweep also gets a saved view of MLflow's runs table (see
    :func:`save_sweep_view`): its trials, best ``metric`` first (highest, or lowest with ``mode="min"``), with ``metric`` and the
    ``cell_settings`` (the swept config fields; default :data:`DEFAULT_CELL_SETTINGS`) as
    columns. The sweep ends the run with :func:`finish_run`.
    """
    tracking_uri = resolve_tracking_uri(identity)
    experiment_id = ensure_experiment(
        tracking_uri, identity.experiment, default_artifact_root(tracking_uri), metric
    )
    all_tags = {TAG_ABLATION: identity.ablation, TAG_KIND: "sweep", **provenance_tags(), **tags}
    client = tracking_client(tracking_uri)
    run = client.create_run(experiment_id, start_time=now_ms(), tags=all_tags, run_name=run_name)
    settings = DEFAULT_CELL_SETTINGS if cell_settings is None else tuple(cell_settings)
    save_sweep_view(client, experiment_id, run.info.run_id, run_name, metric, settings, mode)
    return run.info.run_id


def save_sweep_view(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    metric: str,
    cell_settings: Sequence[str],
    mode: str = "max",
) -> str:
    """Save a runs-table view of one sweep in the experiment; returns its key.

    MLflow's UI has no per-experiment default columns (it keeps a user's columns in the
    browser), but it opens a view stored as an experiment tag: the key is the parent run
    id, so ``#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=
    <parent run id>`` shows the sweep's trials flat (a filter or a sort other than by
    start time stops the table from folding them under the parent), best ``metric``
    first, with ``metric`` and the cell settings as columns. The table's "Views" menu
    lists it under ``run_name``.
    """
    state = {
        "searchFilter": f"tags.`{TAG_PARENT}` = {quoted(parent_run_id, 'parent run id')}",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",  # best first: lowest for a loss
        "selectedColumns": [
            f"metrics.`{metric}`",
            *(f"params.`{setting}`" for setting in dict.fromkeys(cell_settings)),
        ],
    }
    now = now_ms()
    envelope = {
        "name": f"{run_name}: trials by {metric}",
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps(state),
    }
    client.set_experiment_tag(
        experiment_id, f"{TAG_RUNS_VIEW_PREFIX}{parent_run_id}", json.dumps(envelope)
    )
    return parent_run_id


@dataclass(frozen=True)
class ParentRun:
    """A sweep's parent run: the one writer of it (see the module docstring)."""

    tracking_uri: str
    run_id: str
    experiment: str

    @classmethod
    def start(
        cls,
        identity: RunIdentity,
        tags: dict[str, str],
        run_name: str,
        *,
        metric: str = HEADLINE_METRIC,
        mode: str = "max",
        cell_settings: Sequence[str] | None = None,
    ) -> ParentRun:
        """Create the RUNNING parent run and its saved view (:func:`start_parent_run`)."""
        uri = resolve_tracking_uri(identity)
        with reaching(uri, "creating the sweep's parent run"):
            run_id = start_parent_run(
                identity, tags, run_name, metric=metric, mode=mode, cell_settings=cell_settings
            )
        return cls(uri, run_id, identity.experiment)

    @property
    def client(self) -> MlflowClient:
        return tracking_client(self.tracking_uri)

    def experiment_id(self) -> str:
        with reaching(self.tracking_uri, f"reading parent run {self.run_id}"):
            return self.client.get_run(self.run_id).info.experiment_id

    def reopen(self) -> None:
        """Mark the run RUNNING again (a resumed sweep)."""
        with reaching(self.tracking_uri, f"reopening the sweep's parent run {self.run_id}"):
            self.client.update_run(self.run_id, status="RUNNING")

    def publish(self, what: str, write: Callable[[ParentRun], None]) -> str | None:
        """Run ``write(self)`` against the server after one quick check that it answers.
        Returns None, or why the server could not be reached (then nothing more is
        written and the caller's local report is all there is until a resume)."""
        try:
            check_tracking_server(self.tracking_uri)
            with reaching(self.tracking_uri, f"{what} (parent run {self.run_id})"):
                write(self)
        except TrackingServerError as error:
            return error.reason
        return None

    def log_files(self, files: Iterable[Path], artifact_path: str = REPORT_FOLDER) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def copy_trial_artifacts(
        self, artifact_path: str, destinations: Mapping[str, Path]
    ) -> list[Path]:
        """Download ``artifact_path`` from the run of each trial under this parent whose
        trial id ``destinations`` names, to the path it names there. A trial whose run
        lacks it (a 1-D encoder has no Grad-CAM; a failed trial, perhaps no figure) is
        skipped, as is one without a run. Returns the files written."""
        client = self.client
        folder, name = posixpath.split(artifact_path)
        written = []
        for run in find_trial_runs(self.tracking_uri, self.run_id):
            target = destinations.get(run.data.tags.get(TAG_TRIAL_ID, ""))
            run_id = run.info.run_id
            if target is None:
                continue
            listed = {
                posixpath.basename(item.path) for item in client.list_artifacts(run_id, folder)
            }
            if name not in listed:
                continue
            with tempfile.TemporaryDirectory(prefix="clarlab-artifact-") as scratch:
                local = client.download_artifacts(run_id, artifact_path, scratch)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target)
            written.append(target)
        return written

    def log_metric(self, name: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, name, float(value), step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str) -> None:
        finish_run(self.tracking_uri, self.run_id, status)  # type: ignore[arg-type]

    def hint(self, experiment_id: str | None = None) -> str:
        return mlflow_hint(self.tracking_uri, self.experiment, self.run_id, experiment_id)


def mlflow_hint(
    tracking_uri: str, experiment: str, run_id: str | None, experiment_id: str | None = None
) -> str:
    """How to look at the sweep: the UI command for a local store, the URL for a server
    (its password masked).

    Links carry MLflow's training-view parameter: MLflow 3.17 opens an experiment in its
    GenAI view (traces) unless told, whatever the experiment's tags say. With the
    experiment id, the link opens the sweep's saved view of its trials (the metric and the
    swept settings as columns, see :func:`save_sweep_view`)."""
    if is_http(tracking_uri):
        base = shown_uri(tracking_uri).rstrip("/")
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
