"""The one engine every sweep runs on, grid or search.

A sweep is: a request -> a plan (a grid's expanded trials, :mod:`core.sweep.grid_plan`, or
a search's sampled space, :mod:`core.sweep.search_plan`) -> checks before Ray (free disk
space, the data of every trial, the metric, the tracking server) -> one Ray session -> one
Tuner -> results -> one parent run. Grid and search share every step but the plan, the
Tuner's grid or searcher, and the report; both get the same checks, the same versioned
and trusted state (``sweep.json``), ``--resume`` and ``--report-only``, and the same
outcome, which the command line maps to the same exit codes.

A sweep lives in ``<results>/<run_name>/``: ``sweep.json`` (:class:`SweepState`),
``tune/`` (Tune's experiment state, trial logs and checkpoints; ``tune-2/`` ... for a
search's later invocations; under ``storage_path`` when one is given), ``report/`` or
``search/``, and a search's ``optuna.db``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from core.cells import FAILED, FINISHED
from core.names import check_name
from core.sweep.disk import check_sweep_disk
from core.sweep.errors import SweepError
from core.sweep.grid_plan import (
    GridPlan,
    finish_grid,
    grid_resume_request,
    grid_tune_run,
    prepare_grid,
)
from core.sweep.outcome import SweepOutcome
from core.sweep.preflight import PreflightError, check_trials
from core.sweep.progress import SweepProgress
from core.sweep.request import SweepRequest
from core.sweep.resources import local_resources, replan
from core.sweep.results import collect_records, trial_name
from core.sweep.search_plan import SearchPlan, prepare_search_plan, search_tune_run
from core.sweep.search_report import finish_search
from core.sweep.session import (
    allow_sparse_metrics,
    check_tracking_before_ray,
    quiet_trial_errors,
    reachable_tracking_uri,
    start_ray,
)
from core.sweep.spacefile import is_search, read_space_file
from core.sweep.state import SWEEP_FILE, SweepState, find_sweep, unique_run_name
from core.sweep.trials import Trial
from core.sweep.trust import ensure_tune_trusted, record_tune_state
from core.tracking import (
    ParentRun,
    RunIdentity,
    check_tracking_server,
    mask_secrets,
    resolve_tracking_uri,
)
from core.tracking.server import take_uri_credentials

FINISHERS = {"grid": finish_grid, "search": finish_search}


def run_sweep(request: SweepRequest, stream: TextIO | None = None) -> SweepOutcome:
    """Validate, then run, resume or only report on a sweep (see the module docstring)."""
    stream = stream or sys.stdout  # looked up per call: callers may redirect stdout
    results_dir = Path(request.results_dir).expanduser().resolve()
    check_request_names(request)
    tracking_uri, moved = take_uri_credentials(request.tracking_uri)
    if moved:
        request = replace(request, tracking_uri=tracking_uri)
        print(
            "note: the user and password in --tracking-uri were moved into "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for this sweep, so that no log, "
            "tag or state file holds them; export those instead",
            file=stream,
        )
    if request.resume or request.report_only:
        return _continue_sweep(request, results_dir, stream)
    _, raw = read_space_file(request.space)
    plan: GridPlan | SearchPlan = (
        prepare_search_plan(request) if is_search(raw) else prepare_grid(request)
    )
    resources = plan.resources
    if not request.dry_run:
        if not request.address:  # a local cluster: refuse what it can never hold, now
            resources = replan(resources, local_resources(request.num_cpus))
        check_sweep_disk(results_dir, request.storage_path)  # before anything is written
    try:
        sizes = check_trials(plan.checked_trials())
    except PreflightError:
        if request.dry_run:  # show what would run (dataset, classes, views), then the error
            plan.print_dry_run(request, {}, local_resources(request.num_cpus), stream)
        raise
    plan.check_metric(sizes)
    if request.dry_run:
        plan.print_dry_run(request, sizes, local_resources(request.num_cpus), stream)
        trials = plan.trials if isinstance(plan, GridPlan) else []
        return SweepOutcome("dry-run", "", results_dir, resources, trials=trials)
    state, run_dir = _start(plan, request, resources, results_dir, stream)
    samples = plan.samples if isinstance(plan, SearchPlan) else 0
    return _run_and_finish(state, request, run_dir, stream, restore=False, samples=samples)


def check_request_names(request: SweepRequest) -> None:
    """The names a new sweep joins to its results folder and MLflow, checked before
    anything is read or written (:mod:`core.names`). ``--resume``/``--report-only`` take a
    run name or a folder's path, which the trust registry checks instead."""
    for name, what, flag in (
        (request.run_name, "run", "--run-name"),
        (request.experiment, "experiment", "--experiment"),
    ):
        if name is not None:
            check_name(name, what, flag)


def _start(
    plan: GridPlan | SearchPlan,
    request: SweepRequest,
    resources: Any,
    results_dir: Path,
    stream: TextIO,
) -> tuple[SweepState, Path]:
    """The tracking server checked, Ray started, the parent run opened and the state
    saved: everything a new sweep does before its first trial."""
    file = plan.file
    identity = RunIdentity(
        tracking_uri=request.tracking_uri,
        experiment=request.experiment or f"clarlab-{file.ablation}",
        ablation=file.ablation,
        results_dir=results_dir,
    )
    tracking_uri = resolve_tracking_uri(identity)
    server_checked = check_tracking_before_ray(tracking_uri, request)  # exit 2, one line
    run_name = request.run_name or unique_run_name(results_dir, plan.run_name_stem(request.preset))
    run_dir = results_dir / run_name
    if (run_dir / SWEEP_FILE).exists():
        raise SweepError(f"{run_dir} already holds a sweep; --resume {run_name} continues it")
    resources = replan(resources, start_ray(request))
    identity = replace(identity, tracking_uri=reachable_tracking_uri(tracking_uri, stream))
    if not server_checked:  # the address the trials use is known now; nothing launched yet
        check_tracking_server(identity.tracking_uri)
    command_line = mask_secrets(request.command_line or " ".join(sys.argv))
    tags = {
        "clarlab.preset": request.preset or "none",
        "clarlab.command_line": command_line[:5000],
        "clarlab.space_file": str(file.source),
        "clarlab.sweep_kind": plan.kind,
        "clarlab.sweep_run_name": run_name,
        "clarlab.scheduler": request.scheduler or "fifo",
        "clarlab.results_kind": "pipeline check" if request.preset == "quick" else "results",
        **plan.parent_tags(),
    }
    parent = ParentRun.start(
        identity,
        tags,
        run_name,
        metric=file.metric,
        mode=file.mode,
        cell_settings=plan.view_columns(),
    )
    details = plan.details()
    state = SweepState(
        kind=plan.kind,
        run_name=run_name,
        ablation=file.ablation,
        space_file=str(file.source),
        preset=request.preset,
        identity=replace(identity, parent_run_id=parent.run_id),
        metric=file.metric,
        mode=file.mode,
        resources=resources,
        scheduler=request.scheduler,
        storage_root=request.storage_path.rstrip("/") if request.storage_path else str(results_dir),
        max_failures=request.max_failures,
        command_line=command_line,
        grid=details if plan.kind == "grid" else None,  # type: ignore[arg-type]
        search=details if plan.kind == "search" else None,  # type: ignore[arg-type]
    )
    state.save(run_dir)
    print(
        f"{plan.kind} {run_name}: {plan.announce(resources)}\n  results: {run_dir}\n  "
        f"{parent.hint(parent.experiment_id())}",
        file=stream,
        flush=True,
    )
    return state, run_dir


def _continue_sweep(request: SweepRequest, results_dir: Path, stream: TextIO) -> SweepOutcome:
    """``--resume``: a grid's finished trials stay and its unfinished ones continue from
    their checkpoints in their MLflow runs; a search samples ``--samples`` more into its
    study. ``--report-only``: just rebuild the report. Both only for folders this user's
    clarlab wrote (:mod:`core.sweep.trust`)."""
    which = request.resume or request.report_only
    path, raw = read_space_file(request.space)
    kind = "search" if is_search(raw) else "grid"
    ablation = str(raw.get("ablation") or path.stem) if which is True else None
    run_dir = find_sweep(results_dir, which, kind, ablation)
    SweepState.ensure_trusted(run_dir)  # before Tune unpickles anything from the folder
    state = SweepState.load(run_dir)
    ensure_tune_trusted(run_dir, state.experiment_path, SWEEP_FILE)  # and Tune's own state
    if state.kind != kind:
        raise SweepError(
            f"{run_dir} holds a {state.kind}, and {path} is a {kind}; name the {state.kind}'s "
            f"own space file (--space {state.space_file})"
        )
    if request.report_only:
        return FINISHERS[kind](state, run_dir, stream, set_status=False)
    check_tracking_server(state.tracking_uri)
    check_sweep_disk(run_dir, state.storage_root)
    samples = 0
    if kind == "grid":
        request = grid_resume_request(state, request, stream)
    check_trials(trials_to_resume(state, request.retry_failed))  # before Ray, like a new sweep
    if kind == "search":
        assert state.search is not None
        if request.overrides:
            print(
                f"note: --resume keeps the search's own config; ignoring "
                f"{', '.join(sorted(request.overrides))}",
                file=stream,
            )
        samples = request.samples or state.search.settings.samples
    start_ray(request)
    ParentRun(state.tracking_uri, state.parent_run_id, state.identity.experiment).reopen()
    more = f": {samples} more samples" if samples else f" ({len(state.grid.trials)} trials)"  # type: ignore[union-attr]
    print(f"resuming {kind} {state.run_name} from {run_dir}{more}", file=stream, flush=True)
    return _run_and_finish(state, request, run_dir, stream, restore=True, samples=samples)


def trials_to_resume(state: SweepState, retry_failed: bool) -> list[Trial]:
    """The trials a resume would run, for the preflight: a grid's unfinished ones (its
    failed ones only with ``retry_failed``), or a search's base config. The data is looked
    up again because it moves with ``$CLARLAB_DATA``: a resume from a shell without it
    would otherwise fail every remaining trial, one Ray start after another."""
    if state.grid is None:
        assert state.search is not None
        return [Trial("search-base", "", None, None, state.search.base)]
    skip = {FINISHED} if retry_failed else {FINISHED, FAILED}
    records = collect_records(state.experiment_path, state.grid.trials)
    remaining = {record.trial_id for record in records if record.status not in skip}
    return [trial for trial in state.grid.trials if trial.trial_id in remaining]


def _run_and_finish(
    state: SweepState,
    request: SweepRequest,
    run_dir: Path,
    stream: TextIO,
    *,
    restore: bool,
    samples: int,
) -> SweepOutcome:
    """Run the sweep's Tune experiment (a grid's one, continued on a resume; a search's
    next one), then its report."""
    quiet_trial_errors()
    if state.kind == "grid":
        run = {**grid_tune_run(state, request), "experiment_path": state.experiment_path}
    else:
        run = search_tune_run(state, request, run_dir, samples, stream)
    try:
        fit_seconds = fit(state, request, run, restore=restore and state.kind == "grid")
    finally:  # ended or interrupted: what Tune saved is what the next resume may restore
        record_tune_state(run_dir / SWEEP_FILE, state.experiment_path)
    if state.search is not None:
        state.search.invocations[-1]["fit_seconds"] = fit_seconds
        state.save(run_dir)
    return FINISHERS[state.kind](state, run_dir, stream, set_status=True, fit_seconds=fit_seconds)


def fit(state: SweepState, request: SweepRequest, run: dict[str, Any], restore: bool) -> float:
    """Run (or, with ``restore``, continue) one Tune experiment; failed trials do not
    raise. Returns its wall time in seconds.

    Every trial reuses its actor: reused actors skip the imports and the actor start
    (most of a quick trial's overhead). Each trial runs on a new thread of the same
    process; glibc gives every thread its own malloc arena and keeps freed memory there,
    which grew two reused actors to 10 GB over the quick matrix. The runtime environment
    caps the arenas (MALLOC_ARENA_MAX) and each trial hands its freed memory back
    (malloc_trim), see :data:`core.sweep.trainable.TRIAL_ENV`."""
    allow_sparse_metrics()  # test metrics come at evaluation epochs only
    resources, path = state.resources, run["experiment_path"]
    trainable = tune.with_resources(run["trainable"], resources.trainable_resources())
    if restore and tune.Tuner.can_restore(path):
        # A restored experiment keeps the scheduler it was started with.
        tuner = tune.Tuner.restore(
            path, trainable, resume_unfinished=True, restart_errored=request.retry_failed
        )
    else:  # new, or interrupted before Tune saved any state: start over, same trials
        storage_path, name = path.rsplit("/", 1)
        execution = {
            "torch_trainer": resources.use_torch_trainer,
            "cpus_per_worker": resources.cpus_per_worker,
            "gpus_per_worker": resources.gpus_per_worker,
            "worker_resources": resources.worker_resources(),
            "max_failures": state.max_failures,
            "run_name": state.run_name,
            "train_storage_path": f"{storage_path}/train",
        }
        progress = SweepProgress(run["total"], state.metric, request.progress_every_s, state.mode)
        tuner = tune.Tuner(
            trainable,
            param_space={**run["param_space"], "execution": execution},
            tune_config=tune.TuneConfig(
                search_alg=run.get("search_alg"),
                scheduler=run.get("scheduler"),
                num_samples=run.get("num_samples", 1),
                max_concurrent_trials=resources.max_concurrent_trials,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                # In-process trials retry here; TorchTrainer trials inside the trainer.
                failure_config=tune.FailureConfig(
                    max_failures=0 if resources.use_torch_trainer else state.max_failures
                ),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
                callbacks=[progress],
            ),
        )
    started = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started
