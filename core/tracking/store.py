"""Where runs are stored: the identity of a run, the tracking store and its experiments.

Everything goes through an explicit :class:`mlflow.MlflowClient` and run ids, never the
global ``mlflow.start_run``/``mlflow.active_run`` state: under Ray Tune several trials can
share one process (function trainables run in threads of one actor), and a global active
run would mix their metrics.

Store layout. Without a tracking URI the store is a local SQLite file under the results
folder (``<results>/mlflow.db``) with artifacts beside it (``<results>/mlartifacts``), so
``mlflow ui --backend-store-uri sqlite:///<results>/mlflow.db`` shows every trial with its
artifacts. MLflow would otherwise put the artifacts of a SQLite store in ``./mlruns`` of
whatever working directory the process happens to have (Ray moves trials around), so the
experiment is created with an explicit artifact location.

Identity. Where a trial logs and under which names is a :class:`RunIdentity`, which
travels beside the :class:`~core.config.ExperimentConfig` rather than inside it: the config
describes the experiment only, so the same cell in two sweeps has an equal config.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.tracking.server import bound_http_retries, is_http

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; start the sweep's parent run first
    fcntl = None  # type: ignore[assignment]

# Tag keys. ``mlflow.*`` keys are MLflow's own: the UI nests runs by ``mlflow.parentRunId``
# and shows ``mlflow.source.git.commit`` as the run's source version.
TAG_PARENT = "mlflow.parentRunId"
TAG_GIT_COMMIT_MLFLOW = "mlflow.source.git.commit"
TAG_ABLATION = "clarlab.ablation"
TAG_TRIAL_ID = "clarlab.trial_id"
TAG_GIT_COMMIT = "clarlab.git_commit"
TAG_GIT_DIRTY = "clarlab.git_dirty"
TAG_DATASET = "clarlab.dataset"
TAG_ERROR = "clarlab.error"
TAG_PREVIOUS_ERROR = "clarlab.previous_error"
TAG_RESUME_COUNT = "clarlab.resume_count"
TAG_PARAMS_CHANGED = "clarlab.params_changed"
TAG_KIND = "clarlab.run_kind"  # "sweep" for parents, "trial" for children

DB_FILE = "mlflow.db"
ARTIFACT_FOLDER = "mlartifacts"



@dataclass(frozen=True)
class RunIdentity:
    """Where a trial (or a sweep's parent run) logs, and under which names.

    ``results_dir`` is made absolute on construction, in the user's folder: Ray changes
    the working directory of trials, so a relative path would land elsewhere.
    """

    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else <results>/mlflow.db
    experiment: str = "clarlab"
    ablation: str = "adhoc"
    parent_run_id: str | None = None
    trial_id: str | None = None
    run_name: str | None = None  # None: built from method/encoder/front end/augmentations
    results_dir: Path = Path("results")

    def __post_init__(self) -> None:
        object.__setattr__(self, "results_dir", Path(self.results_dir).expanduser().absolute())

    def for_trial(self, trial_id: str) -> RunIdentity:
        """The identity of one trial of the sweep this identity belongs to."""
        return replace(self, trial_id=trial_id)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "results_dir": str(self.results_dir)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunIdentity:
        return cls(**raw)


def resolve_tracking_uri(identity: RunIdentity) -> str:
    """The tracking URI: ``identity.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a
    SQLite file under ``identity.results_dir`` (the folder is created)."""
    if identity.tracking_uri:
        return identity.tracking_uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    results = Path(identity.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{results / DB_FILE}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifact folder beside a SQLite store file (``<dir of db>/mlartifacts``).

    ``None`` for other stores: a tracking server and a file store pick their own artifact
    location, and an in-memory SQLite database has no folder to sit beside.
    """
    db_path = _sqlite_path(tracking_uri)
    return None if db_path is None else str(db_path.parent / ARTIFACT_FOLDER)


def _artifact_location(artifact_root: str, experiment: str) -> str:
    """One sub-folder per experiment under the artifact root, as a URI MLflow accepts."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
    if urlparse(artifact_root).scheme not in ("", "file") or artifact_root.startswith("file:"):
        return f"{artifact_root.rstrip('/')}/{slug}"
    return (Path(artifact_root).expanduser().absolute() / slug).as_uri()


_READY_STORES: set[str] = set()
_READY_LOCK = threading.Lock()


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; ``None`` for other stores or in-memory."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not db_path or db_path == ":memory:":
        return None
    return Path(db_path).expanduser().absolute()


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` whose store is ready, safe when processes start at once.

    Opening a fresh SQLite store (which ``MlflowClient()`` does) runs MLflow's schema
    migrations, and two processes doing that at the same time break each other
    (``duplicate column``, alembic version errors). The first opening in each process
    therefore holds an exclusive file lock beside the database; MLflow caches the opened
    store per process, so later clients need neither lock nor migration check.

    A client of a tracking server retries for about a minute, not MLflow's four and a
    half (:data:`HTTP_RETRY_ENV`).
    """
    if is_http(tracking_uri):
        bound_http_retries()
    db_path = _sqlite_path(tracking_uri)
    if db_path is None or tracking_uri in _READY_STORES:
        return MlflowClient(tracking_uri)
    with _READY_LOCK:
        if tracking_uri in _READY_STORES:
            return MlflowClient(tracking_uri)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with open(db_path.with_name(db_path.name + ".lock"), "a") as lock_file:
            if fcntl is not None:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                client = MlflowClient(tracking_uri)  # opens (and migrates) the store
            finally:
                if fcntl is not None:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        _READY_STORES.add(tracking_uri)
    return client


# How the MLflow UI presents a clarlab experiment (read from MLflow 3.17's UI bundle).
# ``mlflow.experimentKind`` is MLflow's record of what an experiment is for (the UI's own
# kind selector writes it); MLflow 3.17's UI, though, picks the landing view from its
# global GenAI / Model-training switch: ``?workflowType=machine_learning`` in the page URL,
# else the browser's last choice, GenAI by default. Links to the runs table carry it.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
UI_TRAINING_VIEW_QUERY = "workflowType=machine_learning"
# The metric the UI's chart view of the runs starts from.
TAG_PRIMARY_METRIC = "mlflow.experiment.primaryMetric.name"
# A saved runs-table view (filter, sort, columns) is an experiment tag with this prefix;
# ``#/experiments/<id>/runs?viewStateShareKey=<key>`` opens it and the table's "Views" menu
# lists it. Otherwise the UI keeps the chosen columns in each browser's localStorage only.
TAG_RUNS_VIEW_PREFIX = "mlflow.sharedViewState."
UI_VIEW_QUERY_KEY = "viewStateShareKey"
# Every search space scores its cells by this metric.
HEADLINE_METRIC = "test_top1"
# The config fields that tell clarlab's grid cells apart, shown as columns of a sweep's
# view when the caller does not name the sweep's own axes.
DEFAULT_CELL_SETTINGS = (
    "method.name",
    "frontend.name",
    "model.encoder",
    "augment.pipeline",
    "data.label_fraction",
    "train.seed",
)


def ensure_experiment(
    tracking_uri: str, name: str, artifact_root: str | None, metric: str = HEADLINE_METRIC
) -> str:
    """The id of experiment ``name``, created (with ``artifact_root``) if missing.

    The experiment is tagged as a model-training experiment with ``metric`` as its
    primary metric, so that MLflow's UI treats it as one (MLflow 3.x otherwise offers
    the GenAI views first); an existing experiment gets the tags it lacks, and keeps the
    ones a user set.

    Safe when several trials start at once: a create that loses the race raises, and the
    experiment the winner created is read back instead.
    """
    client = tracking_client(tracking_uri)
    wanted = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING, TAG_PRIMARY_METRIC: metric}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = _artifact_location(artifact_root, name) if artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=wanted)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise MlflowException(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) in {tracking_uri} is "
            f"deleted; restore it (`mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}`) or choose another experiment (--experiment)"
        )
    for key, value in wanted.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# --- provenance --------------------------------------------------------------------------

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(_PROJECT_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the project checkout the code runs from; ``None`` outside a git checkout
    (e.g. an installed wheel) or without a git binary."""
    commit = _git("rev-parse", "HEAD")
    return commit or None


@lru_cache(maxsize=1)
def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (then the commit alone does not
    reproduce the run); ``None`` when unknown."""
    if git_commit() is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def provenance_tags() -> dict[str, str]:
    commit, dirty = git_commit(), git_dirty()
    tags: dict[str, str] = {}
    if commit:
        tags[TAG_GIT_COMMIT] = tags[TAG_GIT_COMMIT_MLFLOW] = commit
    if dirty is not None:
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    return tags


# --- small helpers shared by the run modules ------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def quoted(value: str, what: str) -> str:
    """A value for an MLflow filter string; quotes cannot be escaped there, so refuse them."""
    if "'" in value or '"' in value:
        raise ValueError(f"{what}={value!r} contains a quote, which MLflow filters cannot hold")
    return f"'{value}'"


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs: list[Run] = []
    page_token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs
