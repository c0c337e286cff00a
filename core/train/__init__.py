"""The training loop and its two hosts.

- :mod:`~core.train.loop`: ``set_up`` (data, front end, augmentations, model, optimizer,
  learning-rate schedule), then ``run_loop``: per epoch train, evaluate, decide, checkpoint and
  report, as plain PyTorch over the trial's parts and one small progress object;
- :mod:`~core.train.epoch`: what a trial trains with (``TrialParts``) and one epoch of
  training steps;
- :mod:`~core.train.batches`: each rank's reproducible batches;
- :mod:`~core.train.checkpoint`: atomic, ``weights_only`` checkpoints;
- :mod:`~core.train.faults`: fault injection for the failure tests;
- :mod:`~core.train.context` and :mod:`~core.train.hosts`: in-process or in a Ray Train
  worker group (the only modules of ``core`` that import ``ray.train``).
"""

from __future__ import annotations

from core.train.batches import epoch_batches, seed_everything
from core.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from core.train.context import CallbackContext, RayTrainContext, TrialContext
from core.train.epoch import NonFiniteLossError, TrialData, TrialParts, train_epoch
from core.train.faults import FAULT_ENV, FaultHooks
from core.train.hosts import build_torch_trainer, train, train_loop_per_worker
from core.train.loop import EarlyStopping, Progress, load_trial_data, run_loop, set_up

__all__ = [
    "CHECKPOINT_FILE",
    "FAULT_ENV",
    "CallbackContext",
    "EarlyStopping",
    "FaultHooks",
    "NonFiniteLossError",
    "Progress",
    "RayTrainContext",
    "TrialContext",
    "TrialData",
    "TrialParts",
    "build_torch_trainer",
    "epoch_batches",
    "load_checkpoint",
    "load_trial_data",
    "run_loop",
    "save_checkpoint",
    "seed_everything",
    "set_up",
    "train",
    "train_epoch",
    "train_loop_per_worker",
]
