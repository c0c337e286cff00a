"""Everything a trial builds before its first step, and the checks that fail on bad input.

:func:`set_up` opens the data, builds the front end, augmentations, encoder, method,
optimizer and learning-rate schedule, and returns them as one :class:`TrialParts` that the
epoch and the loop's decisions read. Whatever can fail on a bad config or bad data fails
here, before any training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.augment import build_spec_pipeline, build_view_augment
from core.config import ExperimentConfig
from core.data import open_cache
from core.data.cache import AudioCache
from core.data.splits import Split, make_split
from core.features import build_frontend
from core.memory import keep_freed_pages
from core.methods import build_method
from core.models import build_encoder
from core.models.norm import convert_for_distributed
from core.optim import LearningRateSchedule, build_optimizer, build_schedule
from core.train.batches import seed_everything
from core.train.context import TrialContext
from core.train.faults import FaultHooks


@dataclass
class TrialData:
    """The cache and the split a trial trains and evaluates on."""

    cache: AudioCache
    split: Split
    num_classes: int
    class_counts: np.ndarray


def load_trial_data(cfg: ExperimentConfig, progress: bool) -> TrialData:
    """Open the shared cache and split it; refuse a split too small for one batch, or
    without the validation clips that early stopping or the plateau schedule watch.

    The cross-section checks that need no data (front-end rate, scored classifier) run
    first, so a bad config fails before a dataset is decoded."""
    cfg.frontend.check_sample_rate(cfg.data.sample_rate)
    cfg.train.check_method(cfg.method.name)
    cache = open_cache(cfg.data, progress=progress)
    split = make_split(cache, cfg.data, seed=cfg.train.seed)
    num_classes = len(cache.class_names)
    if len(split.train) < cfg.train.batch_size:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training split "
            f"({len(split.train)} clips of {cfg.data.dataset!r}); lower train.batch_size"
        )
    labelled = split.train_labels[split.train_labels >= 0]
    class_counts = np.bincount(labelled, minlength=num_classes)
    watched = cfg.train.early_stopping_metric
    uses_metric = cfg.train.early_stopping_patience or cfg.optim.schedule == "plateau"
    if uses_metric and watched.startswith("val_") and not len(split.val):
        raise ValueError(
            f"train.early_stopping_metric={watched!r} (watched by early stopping and the "
            f"plateau schedule) needs a validation split, and {cfg.data.dataset!r} with "
            f"split_scheme={cfg.data.split_scheme!r} has none; use data.split_scheme='quaclrs' "
            f"(it holds out a validation fold), or turn early stopping "
            f"(train.early_stopping_patience=null) and the plateau schedule (optim.schedule) off"
        )
    return TrialData(cache, split, num_classes, class_counts)


def amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed). AMP is CUDA-only."""
    if device.type != "cuda" or mode == "off":
        return None, False
    # Emulated bf16 (a V100, the paper's GPU) runs without tensor cores: fp16 with a
    # scaler is the fast choice there, so "auto" only counts native bf16.
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if mode == "fp16" or (mode == "auto" and not native_bf16):
        return torch.float16, True
    return torch.bfloat16, False


def unwrap(model: nn.Module) -> nn.Module:
    """The method inside a DDP wrapper (or the method itself)."""
    return model.module if hasattr(model, "module") else model


@dataclass
class TrialParts:
    """What one trial trains with; built once by :func:`set_up`, read by every epoch."""

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


def set_up(cfg: ExperimentConfig, context: TrialContext) -> TrialParts:
    """Seed, open the data and build every part of the trial on the context's device."""
    world, device = context.world_size, context.device
    if device.type == "cpu":
        keep_freed_pages()  # every batch reuses the last one's pages (see core.memory)
    seed_everything(cfg.train.seed)  # same init on every rank; DDP broadcasts it anyway
    data = load_trial_data(cfg, progress=context.rank == 0)
    sample_rate = cfg.data.sample_rate
    frontend = build_frontend(cfg.frontend, sample_rate).to(device)
    signal_augment = build_view_augment(cfg.augment, sample_rate).to(device)
    spec_augment = build_spec_pipeline(cfg.augment).to(device)
    encoder = build_encoder(cfg.model, in_channels=frontend.out_channels)
    method = build_method(cfg, encoder, data.num_classes, data.class_counts)
    if cfg.frontend.normalize:
        train_rows = np.sort(data.split.train)
        frontend.fit_normalization(
            data.cache.batch(train_rows[start : start + 256]).to(device)
            for start in range(0, len(train_rows), 256)
        )
    if world > 1:
        method = convert_for_distributed(method, device)
    model = context.prepare_model(method)
    steps_per_epoch = len(data.split.train) // cfg.train.batch_size
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    optimizer = build_optimizer(cfg.optim, unwrap(model))
    amp_dtype, needs_scaler = amp_settings(cfg.train.amp, device)
    return TrialParts(
        cfg=cfg,
        context=context,
        data=data,
        frontend=frontend,
        signal_augment=signal_augment,
        spec_augment=spec_augment,
        model=model,
        optimizer=optimizer,
        schedule=build_schedule(cfg.optim, optimizer, steps_per_epoch, cfg.train.epochs),
        scaler=torch.amp.GradScaler("cuda", enabled=needs_scaler),
        amp_dtype=amp_dtype,
        steps_per_epoch=steps_per_epoch,
        local_batch=cfg.train.batch_size // world,
        hooks=FaultHooks(context.rank),
    )
