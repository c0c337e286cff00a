"""One epoch of training: batches from the cache, two augmented views, one optimizer step
per batch, and the epoch's mean losses and throughput.

Plain PyTorch over the :class:`TrialParts` that :func:`core.train.loop.set_up` built;
heavy work stays on the device the batch lives on (augmentations and the front end are
batched).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.config import ExperimentConfig
from core.data.cache import AudioCache
from core.data.splits import Split
from core.optim import LearningRateSchedule
from core.train.batches import epoch_batches, epoch_seed
from core.train.context import TrialContext
from core.train.faults import FaultHooks


@dataclass
class TrialData:
    """The cache and the split a trial trains and evaluates on."""

    cache: AudioCache
    split: Split
    num_classes: int
    class_counts: np.ndarray


def unwrap(model: nn.Module) -> nn.Module:
    """The method inside a DDP wrapper (or the method itself)."""
    return model.module if hasattr(model, "module") else model


@dataclass
class TrialParts:
    """What one trial trains with; built once by :func:`core.train.loop.set_up`, read by every epoch."""

    cfg: ExperimentConfig
    context: TrialContext
    data: TrialData
    frontend: nn.Module
    signal_augment: nn.Module
    spec_augment: nn.Module
    model: nn.Module  # the method, wrapped for DDP when there are several workers
    optimizer: torch.optim.Optimizer
    schedule: LearningRateSchedule
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format  # of the encoder's weights and inputs
    steps_per_epoch: int
    local_batch: int
    hooks: FaultHooks

    @property
    def method(self) -> nn.Module:
        return unwrap(self.model)

    @property
    def is_main(self) -> bool:
        return self.context.rank == 0

    @property
    def epochs(self) -> int:
        """Epochs to run: the untrained control trains nothing, and one epoch measures its
        batch-norm statistics."""
        return self.cfg.train.epochs if type(self.cfg.method).trains else 1


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf: the trial stops at once instead of training on garbage."""


def train_epoch(trial: TrialParts, epoch: int) -> dict[str, float]:
    """One epoch of training; returns the epoch's mean losses and throughput figures."""
    cfg, context, data = trial.cfg, trial.context, trial.data
    rank, world, device = context.rank, context.world_size, context.device
    trial.model.train()
    trial.method.on_epoch_start(epoch)
    generator = torch.Generator(device=device)
    generator.manual_seed(epoch_seed(cfg.train.seed, epoch, rank, 1))
    sums: dict[str, Tensor] = {}
    data_seconds = augment_seconds = 0.0
    started = time.perf_counter()
    steps = 0
    batches = epoch_batches(
        data.split.train,
        trial.local_batch,
        epoch,
        cfg.train.seed,
        rank,
        world,
        labelled=data.split.train_labels >= 0,
        labelled_per_batch=cfg.train.labelled_per_batch,
    )
    for step, (cache_rows, positions) in enumerate(batches):
        if step >= trial.steps_per_epoch:
            break
        tick = time.perf_counter()
        waves = data.cache.batch(cache_rows).to(device, non_blocking=True)
        labels = torch.from_numpy(data.split.train_labels[positions]).to(device)
        data_seconds += time.perf_counter() - tick
        steps += 1
        if not type(cfg.method).trains:
            # The control: no augmentation and no second view, only batch-norm statistics.
            with torch.no_grad():
                trial.method.calibrate(trial.frontend(waves))
            continue
        tick = time.perf_counter()
        with torch.no_grad():
            views = [
                trial.spec_augment(
                    trial.frontend(trial.signal_augment(waves, generator)), generator
                )
                for _ in range(type(cfg.method).views)
            ]
            views = [view.contiguous(memory_format=trial.memory_format) for view in views]
        augment_seconds += time.perf_counter() - tick
        outputs = train_step(trial, views, labels, epoch, step)
        for key, value in outputs.items():
            if value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + value.detach().float()
    seconds = max(time.perf_counter() - started, 1e-9)
    metrics = _mean_over_workers(sums, steps, world)
    metrics.update(
        epoch=float(epoch),
        lr=float(trial.schedule.current_lr()),
        samples_per_s=steps * trial.local_batch * world / seconds,
        epoch_seconds=seconds,
        data_wait_share=data_seconds / seconds,
        augment_frontend_share=augment_seconds / seconds,
        steps=float(steps),
    )
    return metrics


def train_step(
    trial: TrialParts, views: list[Tensor], labels: Tensor, epoch: int, step: int
) -> dict[str, Tensor]:
    """Forward the views (two, or one with ``None`` for the second; under autocast where
    AMP is on), check the loss, step the optimizer (after the method has dropped the
    gradients of the parameters its recipe holds still this epoch), the learning-rate
    schedule and the method's momentum updates."""
    cfg, device = trial.cfg, trial.context.device
    autocast = (
        torch.autocast(device.type, dtype=trial.amp_dtype)
        if trial.amp_dtype is not None
        else nullcontext()
    )
    with autocast:
        outputs = trial.model(views[0], views[1] if len(views) > 1 else None, labels)
    loss = outputs["loss"].float()
    if trial.hooks.poisons_loss(epoch, step):
        loss = loss * float("nan")
    if not torch.isfinite(loss):
        parts = ", ".join(
            f"{k}={float(v.detach()):.4g}" for k, v in outputs.items() if v.numel() == 1
        )
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, step {step} (rank {trial.context.rank}): "
            f"{parts}; lower optim.lr, set train.grad_clip, or check the input audio"
        )
    optimizer, scaler = trial.optimizer, trial.scaler
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.train.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(trial.model.parameters(), cfg.train.grad_clip)
    trial.method.on_before_optimizer_step()  # drops the gradients of frozen parameters
    scaler.step(optimizer)
    scaler.update()
    trial.schedule.step_batch()
    total_steps = cfg.train.epochs * trial.steps_per_epoch
    trial.method.on_after_optimizer_step((epoch * trial.steps_per_epoch + step + 1) / total_steps)
    trial.hooks.after_step(epoch, step)
    return outputs


def _mean_over_workers(sums: dict[str, Tensor], steps: int, world: int) -> dict[str, float]:
    """Each summed output as its mean per step, averaged over the workers (the global
    mean, not rank 0's share of the batch)."""
    if world > 1 and sums:
        stacked = torch.stack([sums[key] for key in sorted(sums)])
        dist.all_reduce(stacked)
        sums = dict(zip(sorted(sums), stacked / world, strict=True))
    return {key: float(total) / max(steps, 1) for key, total in sums.items()}
