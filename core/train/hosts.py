"""Running the loop: in this process (:func:`train`), or in a ``TorchTrainer`` worker group
(:func:`build_torch_trainer`, whose workers enter at :func:`train_loop_per_worker`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import ExperimentConfig
from core.tracking import RunIdentity
from core.train.context import CallbackContext, RayTrainContext, default_device
from core.train.loop import run_loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``TorchTrainer`` entry point. The config and the identity arrive as JSON (the
    config's hash checked and validated again by :meth:`ExperimentConfig.from_payload`)."""
    cfg = ExperimentConfig.from_payload(loop_config["experiment"])
    identity = loop_config.get("identity")
    run_loop(cfg, RayTrainContext(), RunIdentity.from_dict(identity) if identity else None)


def build_torch_trainer(
    cfg: ExperimentConfig,
    *,
    identity: RunIdentity | None = None,
    run_name: str,
    storage_path: str,
    callbacks: list | None = None,
    max_failures: int = 0,
    resources_per_worker: dict[str, float] | None = None,
) -> Any:
    """A ``TorchTrainer`` running ``run_loop`` on ``train.num_workers`` workers (gloo on
    CPU, NCCL on GPU), checkpoints kept under ``storage_path/run_name``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.train.use_gpu
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": cfg.to_payload(),
            "identity": identity.to_dict() if identity else None,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources_per_worker,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
        ),
    )


def train(
    cfg: ExperimentConfig,
    report_fn: Callable[[dict[str, float], Path | None], None] | None = None,
    identity: RunIdentity | None = None,
) -> dict[str, float]:
    """Run one trial in this process without Ray (notebooks, debugging)."""
    context = CallbackContext(report_fn, device=default_device(cfg.train.use_gpu))
    return run_loop(cfg, context, identity)
