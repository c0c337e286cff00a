"""MLflow tracking: one run per trial, nested under the sweep's parent run.

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

Restarts. A trial restarted by Ray (worker failure, ``Tuner.restore``) must continue its own
MLflow run instead of opening a duplicate, a well-known pitfall of Ray + MLflow. A run is
found again either by its id (kept in the trial checkpoint) or by the ``clarlab.trial_id``
tag under the same parent run.

Identity. Where a trial logs and under which names is a :class:`RunIdentity`, which
travels beside the :class:`~core.config.ExperimentConfig` rather than inside it: the config
describes the experiment only, so the same cell in two sweeps has an equal config.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import numpy as np
import requests
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from core.config import ConfigError, ExperimentConfig

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; start the sweep's parent run first
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from core.evaluate import EvaluationResult

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
EVALUATION_FOLDER = "evaluation"
# The error tag keeps the start and the end of a long error (a traceback's last line is
# the message); the whole text of a truncated error goes to the ``error.txt`` artifact.
ERROR_TAG_HEAD, ERROR_TAG_TAIL = 1_000, 3_000
# Beyond this many classes the confusion-matrix PNG drops the per-cell counts (unreadable).
MAX_ANNOTATED_CLASSES = 30

TerminalStatus = Literal["FINISHED", "FAILED", "KILLED"]


# --- who the run is and where the store is -----------------------------------------------


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
    if _is_http(tracking_uri):
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

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


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


def _provenance_tags() -> dict[str, str]:
    commit, dirty = git_commit(), git_dirty()
    tags: dict[str, str] = {}
    if commit:
        tags[TAG_GIT_COMMIT] = tags[TAG_GIT_COMMIT_MLFLOW] = commit
    if dirty is not None:
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    return tags


# --- small helpers -----------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _param_text(value: Any) -> str:
    """MLflow params are strings: lists/dicts as JSON (parseable back), scalars via str."""
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The flattened config as MLflow params (``augment.pipeline -> '["PS", "FD"]'``).

    The sweep report can parse list-valued params back with ``json.loads``.
    """
    return {key: _param_text(value) for key, value in cfg.flat().items()}


def _quoted(value: str, what: str) -> str:
    """A value for an MLflow filter string; quotes cannot be escaped there, so refuse them."""
    if "'" in value or '"' in value:
        raise ValueError(f"{what}={value!r} contains a quote, which MLflow filters cannot hold")
    return f"'{value}'"


def _truncate_error(text: str) -> str:
    limit = min(MAX_TAG_VAL_LENGTH, ERROR_TAG_HEAD + ERROR_TAG_TAIL + 64)
    if len(text) <= limit:
        return text
    omitted = len(text) - ERROR_TAG_HEAD - ERROR_TAG_TAIL
    return (
        f"{text[:ERROR_TAG_HEAD]}\n... [{omitted} characters omitted; full text in "
        f"error.txt] ...\n{text[-ERROR_TAG_TAIL:]}"
    )


def default_run_name(cfg: ExperimentConfig, identity: RunIdentity) -> str:
    """A readable trial name: ``simclr-resnet18w16-stft3-PS+FD[-<trial id>]``."""
    if identity.run_name:
        return identity.run_name
    augmentations = "+".join([*cfg.augment.pipeline, *cfg.augment.spec_pipeline]) or "noaug"
    parts = [
        cfg.method.name,
        f"{cfg.model.encoder}w{cfg.model.width}",
        cfg.frontend.name,
        augmentations,
    ]
    if cfg.data.label_fraction < 1:
        parts.append(f"labels{cfg.data.label_fraction:g}")
    if cfg.data.fold is not None:
        parts.append(f"fold{cfg.data.fold}")
    if identity.trial_id:
        parts.append(identity.trial_id)
    return "-".join(parts)


# --- parent runs -------------------------------------------------------------------------


def start_parent_run(
    identity: RunIdentity,
    tags: dict[str, str],
    run_name: str,
    *,
    metric: str = HEADLINE_METRIC,
    cell_settings: Sequence[str] | None = None,
) -> str:
    """Create a RUNNING parent run for a sweep (trials nest under it); returns its id.

    The sweep also gets a saved view of MLflow's runs table (see
    :func:`save_sweep_view`): its trials, best ``metric`` first, with ``metric`` and the
    ``cell_settings`` (the swept config fields; default :data:`DEFAULT_CELL_SETTINGS`) as
    columns. The sweep ends the run with :func:`finish_run`.
    """
    tracking_uri = resolve_tracking_uri(identity)
    experiment_id = ensure_experiment(
        tracking_uri, identity.experiment, default_artifact_root(tracking_uri), metric
    )
    all_tags = {TAG_ABLATION: identity.ablation, TAG_KIND: "sweep", **_provenance_tags(), **tags}
    client = tracking_client(tracking_uri)
    run = client.create_run(experiment_id, start_time=_now_ms(), tags=all_tags, run_name=run_name)
    settings = DEFAULT_CELL_SETTINGS if cell_settings is None else tuple(cell_settings)
    save_sweep_view(client, experiment_id, run.info.run_id, run_name, metric, settings)
    return run.info.run_id


def save_sweep_view(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    run_name: str,
    metric: str,
    cell_settings: Sequence[str],
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
        "searchFilter": f"tags.`{TAG_PARENT}` = {_quoted(parent_run_id, 'parent run id')}",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": False,
        "selectedColumns": [
            f"metrics.`{metric}`",
            *(f"params.`{setting}`" for setting in dict.fromkeys(cell_settings)),
        ],
    }
    now = _now_ms()
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


def finish_run(
    tracking_uri: str, run_id: str, status: TerminalStatus, error: str | None = None
) -> None:
    """Terminate any run (parent or trial) by id, recording ``error`` as in
    :meth:`TrialRun.finish`."""
    with reaching(tracking_uri, f"ending run {run_id} as {status}"):
        _finish(tracking_client(tracking_uri), run_id, status, error)


def _finish(client: MlflowClient, run_id: str, status: str, error: str | None) -> None:
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
    if error and status == "FAILED":
        shown = _truncate_error(error)
        if shown != error:
            client.log_text(run_id, error, "error.txt")
        client.set_tag(run_id, TAG_ERROR, shown)
    client.set_terminated(run_id, status=status, end_time=_now_ms())


def find_trial_runs(tracking_uri: str, parent_run_id: str) -> list[Run]:
    """Every run nested directly under ``parent_run_id``, oldest first (all pages)."""
    client = tracking_client(tracking_uri)
    with reaching(tracking_uri, f"listing the trial runs of parent run {parent_run_id}"):
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        return _search_all(
            client,
            experiment_id,
            f"tags.`{TAG_PARENT}` = {_quoted(parent_run_id, 'parent run id')}",
        )


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
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


# --- reaching a tracking server ----------------------------------------------------------

# MLflow retries a failed HTTP call (connection refused, no answer, HTTP 429 and 5xx) with
# exponential backoff, by default 7 times at factor 2 and 120 s per attempt: a call to a
# dead server fails after about 264 s, and a trial logs several calls as it fails. Here:
# 6 retries at factor 2, that is sleeps of 0, 4, 8, 16, 32 and 64 s (plus up to 1 s of
# jitter each), so a call made as the server goes away is tried for the last time about
# two minutes later. A server restarted within that (a restart on a loaded head took 30 s
# and more) loses nothing; a dead one fails a call in about two minutes. A server that
# accepts connections but never answers costs 30 s per attempt (MLflow's 120 s would make
# that 16 minutes). MLflow reads these at every request; values the user exported win.
HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "6",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# After a call to a server spent its retries, later calls of this process ask the server
# once, without retries, before trying: a trial that could not log then ends its run and
# fails in seconds, not in one more minute per call (end the run, look for it, ...).
PROBE_AFTER_OUTAGE_S = 300.0
PROBE_TIMEOUT_S = 5.0
_UNREACHABLE_SINCE: dict[str, float] = {}

_HOW_TO_REACH = (
    "start it (`make mlflow-server`), check --tracking-uri (or MLFLOW_TRACKING_URI), or, "
    "for the server on a cluster's head, open the tunnel first (`ray attach cluster.yaml "
    "-p 5000`)"
)


def _is_http(tracking_uri: str) -> bool:
    return urlparse(tracking_uri).scheme in ("http", "https")


def bound_http_retries() -> None:
    """Apply :data:`HTTP_RETRY_ENV` to this process, keeping values the user exported."""
    for name, value in HTTP_RETRY_ENV.items():
        os.environ.setdefault(name, value)


def shown_uri(tracking_uri: str) -> str:
    """The URI without a password (it goes into error messages, run tags and logs)."""
    parsed = urlparse(tracking_uri)
    if not parsed.password:
        return tracking_uri
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


class TrackingServerError(ConfigError):
    """A tracking server that cannot be reached, or that refuses the request.

    It is a :class:`~core.config.ConfigError`: raised by :func:`check_tracking_server`
    before a sweep starts, the command line shows it on one line and exits 2. A trial
    raises it too, in place of MLflow's error, so that its error names the cause (and not,
    say, a parent run that "does not exist" because it could not be read).
    """

    def __init__(
        self, message: str, uri: str = "", reason: str = "", unreachable: bool = True
    ) -> None:
        super().__init__(message)
        self.uri, self.reason, self.unreachable = uri, reason, unreachable

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles a trial's exception for the driver; the default pickling would call
        # __init__ with the message only and lose the fields.
        return (type(self), (str(self), self.uri, self.reason, self.unreachable))

    @classmethod
    def build(
        cls, tracking_uri: str, reason: str, what: str | None = None, unreachable: bool = True
    ) -> TrackingServerError:
        """``MLflow tracking server URI cannot be reached (REASON) while WHAT: FIX``."""
        shown = shown_uri(tracking_uri)
        problem = "cannot be reached" if unreachable else "refused the request"
        during = f" while {what}" if what else ""
        return cls(
            f"MLflow tracking server {shown} {problem} ({reason}){during}: "
            f"{_fix_for(tracking_uri, reason, unreachable)}",
            uri=shown,
            reason=reason,
            unreachable=unreachable,
        )


def _fix_for(tracking_uri: str, reason: str, unreachable: bool) -> str:
    if unreachable:
        return _HOW_TO_REACH
    parsed = urlparse(tracking_uri)
    if "Host header" in reason:
        host = f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)
        return (
            f"the server does not accept the host name {host}; start it with --allowed-hosts "
            f"naming it (`make mlflow-server` names its own host and localhost)"
        )
    if reason.startswith("HTTP 401"):
        return "it asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    if reason.startswith("HTTP 404"):
        return "no MLflow REST API at that address; check the port and path of --tracking-uri"
    return "see the server's log"


def _connection_reason(error: BaseException) -> str:
    """A short name for why an HTTP connection failed ('connection refused', ...)."""
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer in time"
    text = str(error)
    for needles, reason in (
        (("Connection refused",), "connection refused"),
        (("NameResolutionError", "Name or service not known", "nodename nor servname",
          "Temporary failure in name resolution"), "host name not found"),
        (("No route to host",), "no route to host"),
        (("Network is unreachable",), "network unreachable"),
        (("SSLError", "CERTIFICATE_VERIFY_FAILED"), "TLS handshake failed"),
        (("RemoteDisconnected", "Connection aborted", "Connection reset"),
         "the connection was closed"),
    ):  # fmt: skip
        if any(needle in text for needle in needles):
            return reason
    return "connection failed"


def unreachable_reason(error: BaseException) -> str | None:
    """Why a tracking call failed when the cause is that the server could not be reached
    ('connection refused', 'no answer in time', 'HTTP 503 on every retry'), else ``None``
    (the server answered: a missing run, a bad request).

    MLflow raises its own exception for both; the HTTP error is in its chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TrackingServerError):
            return current.reason if current.unreachable else None
        if isinstance(current, requests.exceptions.RetryError):
            status = re.search(r"too many (\d{3}) error responses", str(current))
            return f"HTTP {status.group(1)} on every retry" if status else "no answer after retries"
        if isinstance(current, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return _connection_reason(current)
        current = current.__cause__ or current.__context__
    return None


def is_unreachable_error(text: str | None) -> bool:
    """Whether an error's text (a trial's error summary) says the tracking server could not
    be reached: such a trial did not fail on its own, and ``--resume`` reruns it."""
    if not text:
        return False
    if "TrackingServerError" in text and "cannot be reached" in text:
        return True
    # MLflow's own error, from a call made outside `reaching` (or an older clarlab): the
    # summary of a long error may end before "Failed to establish a new connection".
    return "Max retries exceeded with url" in text or "Failed to establish a new connection" in text


def _probe_credentials() -> dict[str, Any]:
    """What MLflow's client sends to a server: basic auth or a token, and TLS settings."""
    from mlflow.environment_variables import (
        MLFLOW_TRACKING_INSECURE_TLS,
        MLFLOW_TRACKING_PASSWORD,
        MLFLOW_TRACKING_SERVER_CERT_PATH,
        MLFLOW_TRACKING_TOKEN,
        MLFLOW_TRACKING_USERNAME,
    )

    options: dict[str, Any] = {}
    username, password = MLFLOW_TRACKING_USERNAME.get(), MLFLOW_TRACKING_PASSWORD.get()
    if username and password:
        options["auth"] = (username, password)
    elif MLFLOW_TRACKING_TOKEN.get():
        options["headers"] = {"Authorization": f"Bearer {MLFLOW_TRACKING_TOKEN.get()}"}
    if MLFLOW_TRACKING_INSECURE_TLS.get():
        options["verify"] = False
    elif MLFLOW_TRACKING_SERVER_CERT_PATH.get():
        options["verify"] = MLFLOW_TRACKING_SERVER_CERT_PATH.get()
    return options


def check_tracking_server(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingServerError` unless the server at ``tracking_uri`` answers
    MLflow's REST API within ``timeout_s`` (one request, no retries). A local store
    (``sqlite:``, a folder) needs no server and passes.

    It asks the experiments API rather than ``/health``: MLflow's check of the Host header
    (``--allowed-hosts``) and its authentication guard the API only, and a server that
    answers ``/health`` but refuses the API would fail every trial.
    """
    if not _is_http(tracking_uri):
        return
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    try:
        response = requests.get(
            url, params={"max_results": 1}, timeout=timeout_s, **_probe_credentials()
        )
    except requests.exceptions.RequestException as error:
        raise TrackingServerError.build(tracking_uri, _connection_reason(error)) from None
    if response.status_code == 200:
        return
    said = " ".join(response.text.split())
    if "<html" in said[:200].lower():  # a proxy's or a web server's page: its title says it
        title = re.search(r"<title>(.*?)</title>", said, re.IGNORECASE)
        said = title.group(1) if title else ""
    reason = f"HTTP {response.status_code}" + (f": {said[:160]}" if said else "")
    raise TrackingServerError.build(
        tracking_uri, reason, unreachable=response.status_code >= 500
    ) from None


@contextmanager
def reaching(tracking_uri: str, what: str) -> Iterator[None]:
    """Make MLflow calls to ``tracking_uri``; when the server cannot be reached, raise
    :class:`TrackingServerError` naming the server, the cause and ``what`` was being done.

    After a call of this process found the server unreachable, the block starts with one
    quick request (:func:`check_tracking_server`) and fails at once if the server is still
    away. A local store passes through untouched.
    """
    if not _is_http(tracking_uri):
        yield
        return
    since = _UNREACHABLE_SINCE.get(tracking_uri)
    if since is not None and time.monotonic() - since < PROBE_AFTER_OUTAGE_S:
        try:
            check_tracking_server(tracking_uri)
        except TrackingServerError as error:
            raise TrackingServerError.build(
                tracking_uri, error.reason, what, unreachable=error.unreachable
            ) from None
        _UNREACHABLE_SINCE.pop(tracking_uri, None)
    try:
        yield
    except TrackingServerError:
        raise
    except Exception as error:
        reason = unreachable_reason(error)
        if reason is None:
            raise
        _UNREACHABLE_SINCE[tracking_uri] = time.monotonic()
        raise TrackingServerError.build(tracking_uri, reason, what) from error


# A server that dies while answering a POST (create a run, log a batch) leaves a broken
# read, which MLflow's retries do not repeat (urllib3 retries only idempotent methods on
# read errors). Such a call is made once more when the server answers again.
_BROKEN_READ_MARKERS = (
    "IncompleteRead",
    "Connection broken",
    "RemoteDisconnected",
    "Connection aborted",
    "ProtocolError",
)
WAIT_FOR_SERVER_S = 150.0  # about MLflow's own retry budget (HTTP_RETRY_ENV)


def wait_for_server(tracking_uri: str, seconds: float = WAIT_FOR_SERVER_S) -> bool:
    """Poll the server until it answers (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            check_tracking_server(tracking_uri)
            return True
        except TrackingServerError:
            if time.monotonic() > deadline:
                return False
            time.sleep(2.0)


def once_more_after_broken_read(
    tracking_uri: str,
    call: Callable[[], Any],
    already_done: Callable[[], Any] | None = None,
) -> Any:
    """``call()``; after a broken read from an HTTP server, wait until the server answers
    and call again, unless ``already_done()`` finds that the first call took effect (a
    run created before the answer broke) and returns that instead."""
    try:
        return call()
    except Exception as error:
        text = f"{error!r} {error}"
        if not _is_http(tracking_uri) or not any(m in text for m in _BROKEN_READ_MARKERS):
            raise
        if not wait_for_server(tracking_uri):
            raise
        done = already_done() if already_done is not None else None
        return done if done is not None else call()


# --- trial runs --------------------------------------------------------------------------


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
        """Continue run ``run_id``, or the run tagged with ``identity.trial_id`` under the
        parent (or in the experiment when there is no parent), else create a new run.

        Params, tags and ``extra_tags`` (e.g. the data cache hash) are logged either way;
        params already on a continued run are not logged again (MLflow params are
        immutable), and a changed value is reported in the ``clarlab.params_changed`` tag.

        A tracking server that cannot be reached raises :class:`TrackingServerError`.
        """
        tracking_uri = resolve_tracking_uri(identity)
        client = tracking_client(tracking_uri)
        with reaching(tracking_uri, f"opening the run of trial {identity.trial_id or '-'}"):
            run = cls._existing_run(client, tracking_uri, identity, run_id)
            resumed = run is not None
            if run is None:
                tags = {TAG_PARENT: identity.parent_run_id} if identity.parent_run_id else {}
                if identity.trial_id:  # at creation, so a retry can find a created run
                    tags[TAG_TRIAL_ID] = identity.trial_id
                experiment_id = cls._experiment_for(client, tracking_uri, identity)
                run = once_more_after_broken_read(
                    tracking_uri,
                    lambda: client.create_run(
                        experiment_id,
                        start_time=_now_ms(),
                        tags=tags or None,
                        run_name=default_run_name(cfg, identity),
                    ),
                    already_done=lambda: cls._existing_run(client, tracking_uri, identity, None),
                )
            else:
                cls._reopen(client, run)
            trial = cls(client, tracking_uri, run, resumed=resumed)
            trial._log_identity(cfg, identity, run, extra_tags or {})
        return trial

    @staticmethod
    def _experiment_for(client: MlflowClient, tracking_uri: str, identity: RunIdentity) -> str:
        """The parent's experiment (MLflow nests runs of one experiment only), else ours."""
        if identity.parent_run_id:
            try:
                return client.get_run(identity.parent_run_id).info.experiment_id
            except MlflowException as error:
                if unreachable_reason(error):
                    raise  # not a missing parent: `reaching` names the cause
                raise MlflowException(
                    f"parent_run_id={identity.parent_run_id!r} is not a run in "
                    f"{tracking_uri}; start the parent with core.tracking.start_parent_run "
                    f"against the same tracking URI ({error.message})"
                ) from None
        return ensure_experiment(
            tracking_uri, identity.experiment, default_artifact_root(tracking_uri)
        )

    @classmethod
    def _existing_run(
        cls,
        client: MlflowClient,
        tracking_uri: str,
        identity: RunIdentity,
        run_id: str | None,
    ) -> Run | None:
        if run_id:
            try:
                return client.get_run(run_id)
            except MlflowException as error:
                if unreachable_reason(error):
                    raise
                raise MlflowException(
                    f"cannot continue MLflow run {run_id!r}: not found in {tracking_uri} "
                    f"({error.message}); was the checkpoint written against another "
                    f"tracking URI?"
                ) from None
        if not identity.trial_id:
            return None
        experiment_id = cls._experiment_for(client, tracking_uri, identity)
        conditions = [f"tags.`{TAG_TRIAL_ID}` = {_quoted(identity.trial_id, 'trial_id')}"]
        if identity.parent_run_id:
            conditions.append(
                f"tags.`{TAG_PARENT}` = {_quoted(identity.parent_run_id, 'parent_run_id')}"
            )
        matches = _search_all(client, experiment_id, " and ".join(conditions))
        # Oldest first: should duplicates exist from older tooling, the original wins.
        return matches[0] if matches else None

    @staticmethod
    def _reopen(client: MlflowClient, run: Run) -> None:
        """Mark a continued run RUNNING again and move a stale error out of the way."""
        tags = run.data.tags
        previous_error = tags.get(TAG_ERROR)
        if previous_error is not None:
            client.set_tag(run.info.run_id, TAG_PREVIOUS_ERROR, previous_error)
            client.delete_tag(run.info.run_id, TAG_ERROR)
        client.set_tag(
            run.info.run_id, TAG_RESUME_COUNT, str(int(tags.get(TAG_RESUME_COUNT, "0")) + 1)
        )
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            client.update_run(run.info.run_id, status="RUNNING")

    def _log_identity(
        self, cfg: ExperimentConfig, identity: RunIdentity, run: Run, extra_tags: Mapping[str, str]
    ) -> None:
        existing = run.data.params
        wanted = config_params(cfg)
        changed = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
        new_params = [Param(k, v) for k, v in wanted.items() if k not in existing]
        tags = {
            TAG_ABLATION: identity.ablation,
            TAG_DATASET: cfg.data.dataset,
            TAG_KIND: "trial",
            **_provenance_tags(),
            **{key: str(value) for key, value in extra_tags.items()},
        }
        if identity.trial_id:
            tags[TAG_TRIAL_ID] = identity.trial_id
        if changed:
            warnings.warn(
                f"MLflow run {self.run_id} continues with changed params {changed}; MLflow "
                f"params are immutable, so the run keeps the old values (listed in the "
                f"{TAG_PARAMS_CHANGED} tag)",
                stacklevel=3,
            )
            tags[TAG_PARAMS_CHANGED] = json.dumps({k: wanted[k] for k in changed})[
                :MAX_TAG_VAL_LENGTH
            ]
        run_tags = [RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for params in _chunks(new_params, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params)
        for chunk in _chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    # --- logging ------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics at ``step`` (the epoch) in batched calls.

        Non-finite values are logged as they are (MLflow stores NaN and clamps infinities)
        so that a diverging trial stays visible. Values must be convertible to float
        (Python/NumPy numbers, 0-d tensors).
        """
        timestamp = _now_ms()
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
            for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
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
            _finish(self.client, self.run_id, status, error)
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


# --- evaluation artifacts ----------------------------------------------------------------


def confusion_csv(result: EvaluationResult) -> str:
    """Rows are true classes, columns predicted classes, both named."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *result.class_names])
    for name, row in zip(result.class_names, np.asarray(result.confusion), strict=True):
        writer.writerow([name, *(int(count) for count in row)])
    return buffer.getvalue()


def confusion_figure(result: EvaluationResult) -> Any:
    """A matplotlib Figure of the row-normalised confusion matrix (counts in the cells).

    Built on a bare ``Figure`` with an Agg canvas, not ``pyplot``: pyplot keeps global
    figure state that concurrent trials in one process would share.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confusion = np.asarray(result.confusion, dtype=np.float64)
    num_classes = confusion.shape[0]
    support = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
    side = min(4.0 + 0.45 * num_classes, 30.0)
    figure = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, labels=result.class_names, rotation=90)
    axes.set_yticks(ticks, labels=result.class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{result.split}: top-1 {result.top1:.3f}, macro F1 {result.macro_f1:.3f}")
    if num_classes <= MAX_ANNOTATED_CLASSES:
        for (row, col), count in np.ndenumerate(confusion):
            if count:
                colour = "white" if normalised[row, col] > 0.5 else "black"
                axes.text(col, row, int(count), ha="center", va="center", fontsize=7, color=colour)
    figure.tight_layout()
    return figure
