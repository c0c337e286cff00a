"""The Tune trainables: a grid's cell (:func:`run_trial`) or a search's sample
(:func:`run_sample`), each run by :mod:`core.train` in one of two hosts.

With one worker the loop runs in-process inside the Tune function trial (~1 s of
overhead); with several it launches a ``TorchTrainer`` wrapped in ``TuneReportCallback``
(Ray Train V2 cannot be passed to the Tuner directly), about 25 s to start on a laptop.
Configs arrive as JSON (:meth:`~core.config.ExperimentConfig.to_payload`), never pickles.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ray import tune

from core.config import ExperimentConfig
from core.memory import release_freed_memory
from core.sweep.trials import Trial
from core.tracking import RunIdentity

# Environment of every trial process. Two malloc arenas bound what a long-lived, reused
# trial actor can hold on to (see reuse_actors below); the loop is not malloc-bound.
# Ray Train's controller looks at its workers every 2 s by default, so a TorchTrainer trial
# waited a second on average to see its worker group start and again to see it finish;
# a look costs one small RPC per worker, so four a second cost nothing.
TRIAL_ENV = {"MALLOC_ARENA_MAX": "2", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


# Passed on to trials when the driver has them set: the fault-injection hook of the
# failure tests (core.train.FAULT_ENV; named here so that the driver need not import torch),
# and how MLflow calls are retried (core.tracking.HTTP_RETRY_ENV: the driver sets clarlab's
# defaults, a user's exported values win). Trials on a cluster started elsewhere do not
# inherit the driver's environment, so without this a trial would retry a dead server for
# MLflow's own four and a half minutes per call, whatever the user chose.
FORWARDED_ENV = (
    "CLARLAB_INJECT_FAULT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def trial_environment() -> dict[str, str]:
    """``TRIAL_ENV``, where a value the user exported wins over the default, plus the
    ``FORWARDED_ENV`` variables the driver has: a worker of a cluster that was started
    elsewhere (``--address``) does not inherit the driver's environment."""
    environment = {name: os.environ.get(name, value) for name, value in TRIAL_ENV.items()}
    environment.update({name: os.environ[name] for name in FORWARDED_ENV if name in os.environ})
    return environment


def cell_params(trial: Trial, identity: RunIdentity) -> dict[str, Any]:
    """What Tune carries for one cell: its id, its validated config as hashed JSON (Tune
    keeps it in its experiment state, so a trial, and a resumed sweep, runs exactly what
    the driver validated) and its identity."""
    return {
        "trial_id": trial.trial_id,
        "experiment": trial.config.to_payload(),
        "identity": identity.to_dict(),
    }


def run_trial(params: dict[str, Any]) -> None:
    """The Tune function trainable of a grid: one cell, trained by :mod:`core.train`.

    ``params["cell"]`` is :func:`cell_params`; ``params["execution"]`` says how to run it.
    """
    config = ExperimentConfig.from_payload(params["cell"]["experiment"])
    identity = RunIdentity.from_dict(params["cell"]["identity"])
    execution = params["execution"]
    try:
        if execution["torch_trainer"]:
            _run_worker_group(config, identity, execution)
        else:
            _run_in_process(config, identity, execution)
    except Exception as error:
        _ensure_failed_run(config, identity, error)
        raise
    finally:
        release_freed_memory()


def _run_worker_group(
    config: ExperimentConfig, identity: RunIdentity, execution: dict[str, Any]
) -> None:
    """Several workers: a ``TorchTrainer`` whose reports reach Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from core import train

    trainer = train.build_torch_trainer(
        config,
        identity=identity,
        # Stable per trial: a trial restarted by --resume restores its trainer's checkpoint.
        run_name=f"{execution['run_name']}-{identity.trial_id}",
        storage_path=execution["train_storage_path"],
        callbacks=[TuneReportCallback()],
        max_failures=execution["max_failures"],
        resources_per_worker=execution["worker_resources"],
    )
    trainer.fit()


def _run_in_process(
    config: ExperimentConfig, identity: RunIdentity, execution: dict[str, Any]
) -> None:
    """One worker: the loop runs right here, reporting and checkpointing through Tune."""
    import torch

    from core import train

    # This actor holds the worker's CPUs, so torch should use exactly those.
    torch.set_num_threads(max(1, int(execution["cpus_per_worker"])))
    use_cuda = execution["gpus_per_worker"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        # Tune persists the checkpoint folder before returning; the loop deletes it after.
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(dict(metrics), checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    with (
        checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext()
    ) as restore:
        context = train.CallbackContext(
            report, restore_dir=Path(restore) if restore else None, device=device
        )
        train.run_loop(config, context, identity)


def _ensure_failed_run(
    config: ExperimentConfig, identity: RunIdentity, error: BaseException
) -> None:
    """Give a trial that failed before the loop opened its MLflow run (bad data, a batch
    larger than the split...) a FAILED run with the error, so that every cell of the grid
    can be found under the parent. A run the loop already ended is left alone."""
    from core import tracking

    if not (identity.parent_run_id and identity.trial_id):
        return
    with contextlib.suppress(Exception):  # never hide the trial's own error behind this one
        uri = tracking.resolve_tracking_uri(identity)
        runs = tracking.find_trial_runs(uri, identity.parent_run_id)
        if any(run.data.tags.get(tracking.TAG_TRIAL_ID) == identity.trial_id for run in runs):
            return
        run = tracking.TrialRun.open(config, identity)
        run.finish("FAILED", error=f"{type(error).__name__}: {error}")


def run_sample(params: dict[str, Any]) -> None:
    """The Tune function trainable of a search: the base config with the sampled fields
    (Optuna's define-by-run names each after its dotted field), validated here (a bad
    sample fails its trial, not the search), then run as a cell by :func:`run_trial`."""
    from core.sweep.search import to_config

    search = params["search"]
    trial_id = params["cell"]["trial_id"]
    sampled = {name: to_config(name, params[name]) for name in search["params"] if name in params}
    base = ExperimentConfig.from_payload(search["base"])
    config = base.with_overrides(sampled, source=f"{trial_id} ({search['space_file']})")
    identity = RunIdentity.from_dict(search["identity"]).for_trial(trial_id)
    cell = {"trial_id": trial_id, "experiment": config.to_payload(), "identity": identity.to_dict()}
    run_trial({"cell": cell, "execution": params["execution"]})
