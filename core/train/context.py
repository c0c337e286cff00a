"""The loop's two hosts, behind one small protocol.

``run_loop`` talks to its host through a :class:`TrialContext` (rank, world size, device,
report, latest checkpoint, model preparation):

* :class:`RayTrainContext`, inside a ``TorchTrainer`` worker group of any size (DDP, gloo
  on CPU, NCCL on GPU);
* :class:`CallbackContext`, in-process: a single-worker trial runs the same loop inside its
  Tune function trial, because starting a ``TorchTrainer`` costs about 25 s per trial on a
  laptop against 0.8 s for a plain function trial.

With :mod:`core.train.hosts`, the only modules of ``core`` that import ``ray.train``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn


class TrialContext(Protocol):
    """What the loop needs from its host."""

    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint_dir(self) -> Path | None: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def placement_tags(self) -> dict[str, str]: ...


def default_device(use_gpu: bool) -> torch.device:
    """CUDA when the config asks for a GPU and one is there, else the CPU."""
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


class CallbackContext:
    """In-process host: one worker, reports go to ``report_fn`` (e.g. ``ray.tune.report``).

    ``report_fn`` receives the checkpoint folder and must copy it before returning if it
    wants to keep it: the loop deletes the folder afterwards.
    """

    rank = 0
    world_size = 1

    def __init__(
        self,
        report_fn: Callable[[dict[str, float], Path | None], None] | None = None,
        restore_dir: Path | None = None,
        device: torch.device | None = None,
    ) -> None:
        self._report_fn = report_fn
        self._restore_dir = restore_dir
        self.device = device if device is not None else torch.device("cpu")

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if self._report_fn is not None:
            self._report_fn(metrics, checkpoint_dir)

    def latest_checkpoint_dir(self) -> Path | None:
        return self._restore_dir

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def placement_tags(self) -> dict[str, str]:
        """The Ray node the trial ran on, when it runs inside Ray (for the MLflow run)."""
        return ray_node_tags()


class RayTrainContext:
    """Host for a ``TorchTrainer`` worker: Ray Train set up the process group already."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._checkpoint = ray.train.get_checkpoint()
        self._restored: tempfile.TemporaryDirectory[str] | None = None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        )
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint_dir(self) -> Path | None:
        """The checkpoint to restore from, downloaded into a folder of this worker's own.

        ``Checkpoint.to_directory()`` without a path gives every worker of the node one
        shared folder, and a worker that finds the download lock free downloads again into
        it, rewriting ``state.pt`` while another worker reads it: restoring two workers at
        once failed with "PytorchStreamReader failed reading file" here."""
        if self._checkpoint is None:
            return None
        if self._restored is None:
            self._restored = tempfile.TemporaryDirectory(prefix=f"clarlab-restore-{self.rank}-")
        return Path(self._checkpoint.to_directory(self._restored.name))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # Buffers (BN statistics, MoCo queues, DINO centres) are identical on every rank by
        # construction, so DDP's per-forward buffer broadcast is pure overhead.
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"broadcast_buffers": False}
        )

    def placement_tags(self) -> dict[str, str]:
        return ray_node_tags()


def all_placements(own: dict[str, str], world: int) -> dict[str, str]:
    """Rank 0's placement tags plus ``clarlab.ray_node_ids``: the nodes of every worker
    of a multi-worker trial (sorted, comma-separated), so a run says which machines
    trained it. A collective: every rank calls it."""
    if world == 1:
        return dict(own)
    gathered: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(gathered, own)
    nodes = sorted({tags.get("clarlab.ray_node_id", "") for tags in gathered if tags} - {""})
    return {**own, "clarlab.ray_node_ids": ",".join(nodes)} if nodes else dict(own)


def ray_node_tags() -> dict[str, str]:
    """``clarlab.ray_node_id`` of this process when Ray runs it (rank 0 on a cluster), so a
    run says which machine trained it; empty outside Ray."""
    if "ray" not in sys.modules:
        return {}
    import ray

    if not ray.is_initialized():
        return {}
    return {"clarlab.ray_node_id": ray.get_runtime_context().get_node_id()}
