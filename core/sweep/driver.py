"""The sweep driver: validate a request, then run, resume or only report on a sweep.

1. **Validate** once, before Ray starts (:func:`prepare_trials`): the search space, every
   trial's config, the resources, and what each trial's data would be
   (:mod:`core.sweep.preflight`). ``--dry-run`` stops here and prints the table.
2. **Run** the trials with Tune; each trial gets its validated config and a
   :class:`~core.tracking.RunIdentity` (parent run, trial id, tracking URI) beside it.
3. **Report** (:mod:`core.sweep.results`).

A sweep lives in ``<results>/<run_name>/``: ``sweep.json`` (:class:`SweepState`),
``tune/`` (Tune's experiment state, trial logs and checkpoints, unless a separate
``storage_path`` was given) and ``report/``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from ray import tune

from core.sweep.disk import check_sweep_disk
from core.sweep.dryrun import print_dry_run
from core.sweep.preflight import check_trials
from core.sweep.progress import SweepProgress
from core.sweep.resources import Resources, local_resources, plan_resources, replan
from core.sweep.results import SweepOutcome, finish_sweep, mlflow_hint
from core.sweep.space import (
    SearchSpace,
    SearchSpaceError,
    Trial,
    expand_trials,
    load_search_space,
    restrict_axes,
)
from core.sweep.state import TUNE_DIR_NAME, SweepState, find_sweep, unique_run_name
from core.sweep.trial import cell_params, run_trial, trial_environment, trial_name
from core.tracking import RunIdentity


@dataclass
class SweepRequest:
    """Everything a sweep invocation asks for (the CLI fills it; tests build it directly)."""

    search_space: str = "aug_matrix"
    preset: str | None = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config fields
    axis_values: dict[str, list[Any]] = field(default_factory=dict)  # restrict axes
    trial_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers_per_trial: int | None = None  # default: the preset's train.num_workers
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # default: 1 if the preset uses GPUs else 0
    max_concurrent: int | None = None
    force_torch_trainer: bool = False
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    max_failures: int = 0  # automatic retries of a failed trial (from its checkpoint)
    address: str | None = None  # None: start a local Ray; "auto": the running cluster
    num_cpus: int | None = None  # local Ray only (default: all cores)
    results_dir: Path = Path("results")
    storage_path: str | None = None  # shared/cloud storage for Tune (cluster); default local
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI or <results>/mlflow.db
    experiment: str | None = None  # MLflow experiment name; default clarlab-<ablation>
    run_name: str | None = None
    resume: str | bool = False  # True: the latest sweep of this ablation; str: its run name
    retry_failed: bool = False  # with resume: also rerun failed trials from scratch
    seeds: int | None = None  # replicates of every cell and control; None: the preset's
    controls: bool = True  # add the untrained-encoder control and the supervised reference
    dry_run: bool = False
    show_config: bool = False  # with dry_run: print every trial's resolved config as YAML
    throughput: float | None = None  # with dry_run: training clips/s per worker, for the cost
    report_only: str | bool = False  # like resume: which sweep to report on
    command_line: str = ""
    progress_every_s: float = 30.0
    # "asha": successive halving over the cells (controls exempt); None or "fifo": every
    # trial runs its whole budget. A search (core.sweep.search) uses it for its samples.
    scheduler: str | None = None
    samples: int | None = None  # a search's trials per invocation; None: its YAML's


# Seeds per cell when --seeds is not given: one for a smoke-scale check, three where the
# budget is meant to show effects (a 95 % interval needs at least two).
DEFAULT_SEEDS = {"quick": 1, "laptop": 3, "paper": 1}


def seeds_for(request: SweepRequest) -> int:
    """``--seeds``, else the preset's default."""
    if request.seeds is not None:
        if request.seeds < 1:
            raise SearchSpaceError(f"--seeds must be >= 1, got {request.seeds}")
        return request.seeds
    return DEFAULT_SEEDS.get(request.preset or "", 1)


def prepare_trials(request: SweepRequest) -> tuple[SearchSpace, list[Trial], Resources]:
    """Load, restrict and expand the search space and size the trials (no Ray yet).

    This is the one validation of the grid per sweep: the trials carry their validated
    configs from here to the Tune trials."""
    space = restrict_axes(load_search_space(request.search_space), request.axis_values)
    overrides = dict(request.overrides)
    if request.workers_per_trial is not None:
        overrides["train.num_workers"] = request.workers_per_trial
    if request.gpus_per_worker is not None:
        overrides["train.use_gpu"] = request.gpus_per_worker > 0
    for name in ("data.root", "data.extra_root", "data.cache_dir", "model.pretrained",
                 "model.weights_dir"):  # fmt: skip
        # Trials run in other processes whose working directory is not the caller's
        # (Tune moves them into their trial folders): relative paths are resolved here.
        if overrides.get(name) is not None:
            overrides[name] = str(Path(overrides[name]).expanduser().resolve())
    trials = expand_trials(
        space,
        preset=request.preset,
        overrides=overrides,
        trial_overrides=request.trial_overrides,
        seeds=seeds_for(request),
        controls=request.controls,
    )
    return space, trials, plan_for_request(request, trials[0].config.train)


def plan_for_request(request: SweepRequest, train: Any) -> Resources:
    """Resources per trial from the request's flags and a trial's ``train`` section
    (GPUs default to one per worker when the preset trains on GPU)."""
    gpus = request.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if train.use_gpu else 0.0
    return plan_resources(
        workers_per_trial=train.num_workers,
        cpus_per_worker=request.cpus_per_worker,
        gpus_per_worker=gpus,
        max_concurrent_trials=request.max_concurrent,
        force_torch_trainer=request.force_torch_trainer,
        custom_per_worker=request.worker_resources,
    )


def run_sweep(request: SweepRequest, stream: TextIO | None = None) -> SweepOutcome:
    """Validate, then run, resume or only report on a sweep (see the module docstring)."""
    stream = stream or sys.stdout  # looked up per call: callers may redirect stdout
    results_dir = Path(request.results_dir).expanduser().resolve()
    if request.resume or request.report_only:
        return _continue_sweep(request, results_dir, stream)

    space, trials, resources = prepare_trials(request)
    if request.scheduler == "asha":
        from core.sweep.search import check_halving, describe_halving, metric_mode

        eval_every, epochs = check_halving(trials)  # before Ray: one budget for all cells
        if request.dry_run:
            halving = describe_halving(eval_every, epochs, space.metric, metric_mode(space.metric))
            print(halving, file=stream)
    if request.dry_run:
        split_sizes = check_trials(trials)
        here = local_resources(request.num_cpus)
        print_dry_run(request, space, trials, resources, split_sizes, here, stream)
        return SweepOutcome("dry-run", results_dir, trials, resources)
    if not request.address:  # a local cluster: refuse what it can never hold before starting it
        resources = replan(resources, local_resources(request.num_cpus))
    check_sweep_disk(results_dir, request.storage_path)  # before anything is written there
    check_trials(trials)

    from core import tracking as mlflow_tracking

    identity = RunIdentity(
        tracking_uri=request.tracking_uri,
        experiment=request.experiment or f"clarlab-{space.ablation}",
        ablation=space.ablation,
        results_dir=results_dir,
    )
    tracking_uri = mlflow_tracking.resolve_tracking_uri(identity)
    server_checked = check_tracking_before_ray(tracking_uri, request)
    run_name = request.run_name or unique_run_name(
        results_dir, f"{space.ablation}-{request.preset or 'base'}"
    )
    run_dir = results_dir / run_name
    if (run_dir / "sweep.json").exists():
        raise SearchSpaceError(f"{run_dir} already holds a sweep; --resume {run_name} continues it")
    available = start_ray(request)
    resources = replan(resources, available)
    identity = replace(identity, tracking_uri=reachable_tracking_uri(tracking_uri, stream))
    if not server_checked:  # the address the trials use is known now; nothing launched yet
        mlflow_tracking.check_tracking_server(identity.tracking_uri)
    with mlflow_tracking.reaching(identity.tracking_uri, "creating the sweep's parent run"):
        parent_run_id = mlflow_tracking.start_parent_run(
            identity,
            tags={
                "clarlab.preset": request.preset or "none",
                "clarlab.dataset": trials[0].config.data.dataset,
                "clarlab.command_line": (request.command_line or " ".join(sys.argv))[:5000],
                "clarlab.search_space": str(space.source),
                "clarlab.sweep_run_name": run_name,
                "clarlab.seeds": str(seeds_for(request)),
                "clarlab.results_kind": (
                    "pipeline check" if request.preset == "quick" else "results"
                ),
            },
            run_name=run_name,
            metric=space.metric,
            cell_settings=sorted({name for axis in space.axes for name in axis.fields}),
        )
        experiment_id = (
            mlflow_tracking.tracking_client(identity.tracking_uri)
            .get_run(parent_run_id)
            .info.experiment_id
        )
    identity = replace(identity, parent_run_id=parent_run_id)
    storage_root = request.storage_path.rstrip("/") if request.storage_path else str(results_dir)
    state = SweepState(
        run_name=run_name,
        ablation=space.ablation,
        search_space=str(space.source),
        preset=request.preset,
        identity=identity,
        experiment_path=f"{storage_root}/{run_name}/{TUNE_DIR_NAME}",
        metric=space.metric,
        matrix_codes=list(space.matrix_axis.values) if space.matrix_axis else None,
        panels=list(dict.fromkeys(trial.panel for trial in trials)),
        resources=resources,
        seeds=seeds_for(request),
        max_failures=request.max_failures,
        command_line=request.command_line or " ".join(sys.argv),
        trials=trials,
        report=space.report.to_dict() if space.report else None,
        scheduler=request.scheduler,
    )
    state.save(run_dir)
    print(
        f"sweep {run_name}: {len(trials)} trials; {resources.describe()}\n"
        f"  results: {run_dir}\n  "
        f"{mlflow_hint(state.tracking_uri, identity.experiment, parent_run_id, experiment_id)}",
        file=stream,
        flush=True,
    )
    quiet_trial_errors()
    fit_seconds = _fit(state, request, restore=False)
    return finish_sweep(state, run_dir, stream, set_status=True, fit_seconds=fit_seconds)


def _continue_sweep(request: SweepRequest, results_dir: Path, stream: TextIO) -> SweepOutcome:
    """``--resume``: finished trials stay, unfinished ones continue from their checkpoints,
    and they all keep their MLflow runs. ``--report-only``: just rebuild the report.

    A resume checks the tracking server before Ray starts, and reruns the failed trials
    when some failed because the server could not be reached (see
    :func:`_rerun_unreachable_failures`)."""
    which = request.resume or request.report_only
    ablation = load_search_space(request.search_space).ablation if which is True else None
    run_dir = find_sweep(results_dir, which, ablation)
    SweepState.ensure_trusted(run_dir)  # before Tune unpickles anything from the folder
    state = SweepState.load(run_dir)
    if request.report_only:
        return finish_sweep(state, run_dir, stream, set_status=False)

    from core import tracking as mlflow_tracking

    mlflow_tracking.check_tracking_server(state.tracking_uri)
    check_sweep_disk(run_dir, state.experiment_path)
    request = _rerun_unreachable_failures(state, request, stream)
    start_ray(request)
    client = mlflow_tracking.tracking_client(state.tracking_uri)
    with mlflow_tracking.reaching(state.tracking_uri, "reopening the sweep's parent run"):
        client.update_run(state.parent_run_id, status="RUNNING")
    print(
        f"resuming sweep {state.run_name} ({len(state.trials)} trials) from {run_dir}",
        file=stream,
        flush=True,
    )
    quiet_trial_errors()
    fit_seconds = _fit(state, request, restore=True)
    return finish_sweep(state, run_dir, stream, set_status=True, fit_seconds=fit_seconds)


def check_tracking_before_ray(tracking_uri: str, request: SweepRequest) -> bool:
    """Check the tracking server before Ray starts (one request, a few seconds; MLflow's
    own retries took minutes to fail, after Ray had started). True when checked.

    A loopback URI given with ``--address`` waits: on a cluster of several nodes the
    driver hands trials the head's address instead (:func:`reachable_tracking_uri`), and
    only Ray knows that, so that address is checked once Ray is connected, still before
    the parent run or any trial starts.
    """
    from core import tracking as mlflow_tracking

    host = urlparse(tracking_uri).hostname
    if request.address and host and _is_loopback(host):
        return False
    mlflow_tracking.check_tracking_server(tracking_uri)
    return True


def _rerun_unreachable_failures(
    state: SweepState, request: SweepRequest, stream: TextIO
) -> SweepRequest:
    """The request for a resume: with ``retry_failed`` set when trials failed because the
    MLflow server could not be reached. They did not fail on their own, and a resume
    after the server is back should finish them; Tune reruns all failed trials or none,
    so the ones that failed on their own run again too (and fail again, if they must).
    Each rerun from scratch logs into a new MLflow run (``core.train``), so no run mixes
    two attempts."""
    from core.report import FAILED
    from core.sweep.results import collect_records, unreachable_failures

    if request.retry_failed:
        return request
    records = collect_records(state.experiment_path, state.trials)
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


def quiet_trial_errors() -> None:
    """Keep Tune from printing every failed trial's traceback (about 80 lines) and its
    own blocks to the terminal. The progress line and the summary name each failure's
    cause in one line; the traceback stays in the trial's ``error.txt`` (named on that
    line) and in its MLflow run (the ``clarlab.error`` tag).

    Tune logs the traceback unless ``TUNE_PRINT_ALL_TRIAL_ERRORS=0``. Its newer output
    engine also prints a configuration box at the start and an "errored after ..." block
    per failure whatever ``RunConfig.verbose`` says; ``RAY_AIR_NEW_OUTPUT=0`` selects the
    engine that honours ``verbose=0``. Both are Tune's own switches, read when a run of
    the experiment starts; values the user exported win."""
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _fit(state: SweepState, request: SweepRequest, restore: bool) -> float:
    """Run the Tune experiment (or continue it); failed trials do not raise. Returns the
    wall time of the run in seconds.

    With ``scheduler="asha"`` (the sweep's, else the request's), ASHA compares the cells at
    evaluation epochs and stops the weaker ones; a restored experiment keeps the
    scheduler it was started with."""
    from core.sweep.search import allow_sparse_metrics, grid_scheduler

    allow_sparse_metrics()  # test metrics come at evaluation epochs only
    resources, experiment_path = state.resources, state.experiment_path
    trainable = tune.with_resources(run_trial, resources.trainable_resources())
    if restore and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(
            experiment_path,
            trainable,
            resume_unfinished=True,
            restart_errored=request.retry_failed,
        )
    else:  # new, or interrupted before Tune saved any state: start over, same trials
        storage_path, name = experiment_path.rsplit("/", 1)
        execution = {
            "torch_trainer": resources.use_torch_trainer,
            "cpus_per_worker": resources.cpus_per_worker,
            "gpus_per_worker": resources.gpus_per_worker,
            "worker_resources": resources.worker_resources(),
            "max_failures": state.max_failures,
            "run_name": state.run_name,
            "train_storage_path": f"{storage_path}/train",
        }
        cells = [
            cell_params(trial, state.identity.for_trial(trial.trial_id)) for trial in state.trials
        ]
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(cells), "execution": execution},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=resources.max_concurrent_trials,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                # Reused actors skip the imports and the actor start (most of a quick
                # trial's overhead). Each trial runs on a new thread of the same process;
                # glibc gives every thread its own malloc arena and keeps freed memory
                # there, which grew two reused actors to 10 GB over the quick matrix. The
                # runtime environment caps the arenas (MALLOC_ARENA_MAX) and each trial
                # hands its freed memory back (malloc_trim), see core.sweep.trial.TRIAL_ENV.
                reuse_actors=True,
                scheduler=grid_scheduler(
                    state.trials, state.metric, state.scheduler or request.scheduler
                ),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                # In-process trials retry here; TorchTrainer trials retry inside the trainer.
                failure_config=tune.FailureConfig(
                    max_failures=0 if resources.use_torch_trainer else state.max_failures
                ),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
                callbacks=[
                    SweepProgress(len(state.trials), state.metric, request.progress_every_s)
                ],
            ),
        )
    started = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """``ray.init`` with the trial environment (``core.sweep.trial.TRIAL_ENV``): a running cluster at
    ``address`` (e.g. ``"auto"``) or a local one with ``num_cpus``."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
    runtime_env = {"env_vars": trial_environment()}
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env
        )


def start_ray(request: SweepRequest) -> dict[str, float] | None:
    """Connect to ``--address`` or start a local Ray; the totals that bound the request.

    A remote cluster may still grow (autoscaler), so its totals are not used to refuse a
    request; a local cluster's are final.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
    # Every epoch checkpoints with num_to_keep=1, so Tune snapshots its state often on
    # purpose (a resume must see the latest checkpoint); its warning about that is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        init_ray(address=request.address, num_cpus=request.num_cpus)
    if request.address:
        return None
    return {key: float(value) for key, value in ray.cluster_resources().items()}


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reachable_tracking_uri(tracking_uri: str, stream: TextIO) -> str:
    """A tracking URI every node of the running Ray cluster can reach.

    Trials log from the node they run on. On a cluster of more than one node,
    ``http://localhost:5000`` names each worker itself, where no MLflow server listens,
    so a loopback host is replaced by the address of this driver's node (the head, under
    ``ray submit``), and the rewrite is said once. A local file store on a multi-node
    cluster cannot be rewritten; that gets a warning.
    """
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) <= 1:
        return tracking_uri
    parsed = urlparse(tracking_uri)
    if parsed.scheme in ("http", "https") and parsed.hostname and _is_loopback(parsed.hostname):
        head = ray.util.get_node_ip_address()
        shown_head = f"[{head}]" if ":" in head else head
        userinfo, _, _ = parsed.netloc.rpartition("@")
        netloc = f"{userinfo + '@' if userinfo else ''}{shown_head}"
        netloc += f":{parsed.port}" if parsed.port else ""
        rewritten = parsed._replace(netloc=netloc).geturl()
        print(
            f"tracking: {parsed.scheme}://{parsed.hostname} is each node itself on this "
            f"{len(alive)}-node cluster; trials log to {parsed.scheme}://{shown_head}"
            f"{':' + str(parsed.port) if parsed.port else ''} (this node) instead",
            file=stream,
            flush=True,
        )
        return rewritten
    if parsed.scheme in ("", "file", "sqlite"):
        print(
            f"warning: MLflow store {tracking_uri} is a file on this machine and the cluster "
            f"has {len(alive)} nodes; trials on other nodes cannot write to it. Pass "
            f"--tracking-uri http://<head>:5000 (the MLflow server of cluster.yaml) or set "
            f"MLFLOW_TRACKING_URI.",
            file=stream,
            flush=True,
        )
    return tracking_uri
