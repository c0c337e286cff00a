"""How trials are placed on the cluster: workers per trial, CPUs/GPUs per worker, and how
many trials run at once. Checked before Ray starts: a request the cluster can never hold
fails with the flag to change instead of leaving the sweep pending forever."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from core.config import ConfigError
from core.sweep.request import SweepRequest


class ResourceError(ConfigError):
    """A resource request that the cluster can never satisfy (it would wait forever)."""


@dataclass(frozen=True)
class Resources:
    """How each trial is placed on the cluster.

    One worker: the trial itself holds ``cpus_per_worker`` CPUs/``gpus_per_worker`` GPUs and
    runs the loop in-process. Several (or ``force_torch_trainer``): the Tune trial is a
    0-CPU driver and the ``TorchTrainer`` workers hold the resources, so Tune cannot bound
    concurrency by itself and ``max_concurrent_trials`` is always set.
    """

    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent_trials: int | None = None
    force_torch_trainer: bool = False
    # Custom Ray resources each worker needs (e.g. {"v100": 1} to pin trials to a node type)
    custom_per_worker: dict[str, float] = field(default_factory=dict)

    @property
    def use_torch_trainer(self) -> bool:
        return self.force_torch_trainer or self.workers_per_trial > 1

    @property
    def per_trial(self) -> dict[str, float]:
        return {
            "CPU": self.workers_per_trial * self.cpus_per_worker,
            "GPU": self.workers_per_trial * self.gpus_per_worker,
            **{
                name: self.workers_per_trial * amount
                for name, amount in self.custom_per_worker.items()
            },
        }

    def worker_resources(self) -> dict[str, float]:
        """What each ``TorchTrainer`` worker asks Ray for."""
        return {"CPU": self.cpus_per_worker, "GPU": self.gpus_per_worker, **self.custom_per_worker}

    def trainable_resources(self) -> dict[str, float]:
        """What ``tune.with_resources`` gets for the trial function itself."""
        if self.use_torch_trainer:
            return {"cpu": 0, "memory": 1}
        return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker, **self.custom_per_worker}

    def describe(self) -> str:
        path = "TorchTrainer worker group" if self.use_torch_trainer else "in-process loop"
        return (
            f"{self.workers_per_trial} worker(s)/trial x ({self.cpus_per_worker:g} CPU, "
            f"{self.gpus_per_worker:g} GPU) via {path}; max concurrent trials: "
            f"{self.max_concurrent_trials or 'unbounded'}"
        )


def plan_resources(
    *,
    workers_per_trial: int,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    max_concurrent_trials: int | None = None,
    force_torch_trainer: bool = False,
    custom_per_worker: Mapping[str, float] | None = None,
    available: Mapping[str, float] | None = None,
) -> Resources:
    """Check a resource request and derive ``max_concurrent_trials`` from what Ray sees.

    ``available`` is the cluster's total (``ray.cluster_resources()``) or None when unknown
    (dry run on a remote cluster). A request that can never be placed raises
    :class:`ResourceError` instead of leaving the sweep pending forever.
    """
    if workers_per_trial < 1:
        raise ResourceError(f"--workers-per-trial must be >= 1, got {workers_per_trial}")
    if cpus_per_worker <= 0:
        raise ResourceError(f"--cpus-per-worker must be > 0, got {cpus_per_worker}")
    if gpus_per_worker < 0 or (gpus_per_worker > 1 and gpus_per_worker != int(gpus_per_worker)):
        raise ResourceError(
            f"--gpus-per-worker must be a fraction in (0, 1] or a whole number, got {gpus_per_worker}"
        )
    if max_concurrent_trials is not None and max_concurrent_trials < 1:
        raise ResourceError(f"--max-concurrent must be >= 1, got {max_concurrent_trials}")
    custom = {str(name): float(amount) for name, amount in (custom_per_worker or {}).items()}
    for name, amount in custom.items():
        if name in ("CPU", "GPU", "memory") or amount <= 0:
            raise ResourceError(
                f"--worker-resource {name}={amount:g}: expected a custom resource name (not "
                f"CPU/GPU/memory) and an amount > 0"
            )
    plan = Resources(
        workers_per_trial,
        cpus_per_worker,
        gpus_per_worker,
        max_concurrent_trials,
        force_torch_trainer,
        custom,
    )
    if available is None:
        return plan
    fits = []
    for kind, need in plan.per_trial.items():
        have = float(available.get(kind, 0.0))
        if need > have + 1e-9:
            flag = {"GPU": "--gpus-per-worker", "CPU": "--cpus-per-worker"}.get(
                kind, "--worker-resource"
            )
            raise ResourceError(
                f"each trial needs {need:g} {kind} ({workers_per_trial} worker(s) x "
                f"{need / workers_per_trial:g}) but the cluster has {have:g}; lower "
                f"--workers-per-trial or {flag}, or connect to a bigger cluster with --address"
            )
        if need > 0:
            fits.append(math.floor(have / need + 1e-9))
    derived = max(1, min(fits)) if fits else 1
    return replace(plan, max_concurrent_trials=max_concurrent_trials or derived)


def resources_for(request: SweepRequest, train: Any) -> Resources:
    """Resources per trial from the request's flags and a trial's ``train`` section (GPUs
    default to one per worker when the preset trains on GPU)."""
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


def local_resources(num_cpus: int | None = None) -> dict[str, float]:
    """What a local Ray started here will see (for checks before starting it)."""
    gpus = 0
    with contextlib.suppress(Exception):
        import torch

        gpus = torch.cuda.device_count()
    return {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}


def replan(resources: Resources, available: Mapping[str, float] | None) -> Resources:
    """``resources`` checked again against what a cluster has (``None``: unknown)."""
    return plan_resources(
        workers_per_trial=resources.workers_per_trial,
        cpus_per_worker=resources.cpus_per_worker,
        gpus_per_worker=resources.gpus_per_worker,
        max_concurrent_trials=resources.max_concurrent_trials,
        force_torch_trainer=resources.force_torch_trainer,
        custom_per_worker=resources.custom_per_worker,
        available=available,
    )
