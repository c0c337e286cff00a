"""The training loop: set up, then per epoch train, evaluate, decide, checkpoint and report.

:func:`set_up` opens the data and builds the front end, augmentations, encoder, method,
optimizer and learning-rate schedule; whatever can fail on a bad config or bad data fails
there, before any training. ``run_loop`` then reads as plain PyTorch: each step is a named
function over the trial's parts (:class:`~core.train.epoch.TrialParts`) and one small :class:`Progress` (where the trial
stands between epochs: what a checkpoint saves and what the decisions read). Its MLflow
run is :class:`~core.tracking.TrialLog`'s business, fault injection
:class:`~core.train.faults.FaultHooks`'; the host (in-process or a Ray Train worker) is a
:class:`~core.train.context.TrialContext`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from core.augment import build_spec_pipeline, build_view_augment
from core.config import ExperimentConfig
from core.data import open_cache
from core.data.splits import make_split
from core.evaluate import EvaluationResult, evaluate_method
from core.features import build_frontend
from core.gradcam import GradCamMaps, trial_gradcam
from core.memory import keep_freed_pages
from core.methods.base import build_method
from core.models import build_encoder
from core.models.norm import convert_for_distributed
from core.optim import build_optimizer, build_schedule
from core.roc import ROC_KEY, macro_roc_json
from core.stats import CORRECT_KEY, PER_CLASS_KEY, encode_correct
from core.tracking import RunIdentity, TrialLog, finish_completed_run
from core.train.batches import seed_everything
from core.train.checkpoint import load_checkpoint, save_checkpoint
from core.train.context import TrialContext, all_placements
from core.train.epoch import TrialData, TrialParts, train_epoch, unwrap
from core.train.faults import FaultHooks
from core.train.precision import (
    PRECISION_NAMES,
    amp_settings,
    memory_format,
    memory_format_name,
)


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


def set_up(cfg: ExperimentConfig, context: TrialContext) -> TrialParts:
    """Seed, open the data and build every part of the trial on the context's device."""
    world, device = context.world_size, context.device
    if device.type == "cpu":
        keep_freed_pages()  # every batch reuses the last one's pages (see core.memory)
    seed_everything(cfg.train.seed)  # same init on every rank; DDP broadcasts it anyway
    data = load_trial_data(cfg, progress=context.rank == 0)
    method_cfg, fitted = cfg.method.fitted_to(len(data.split.train), cfg.train.batch_size)
    if fitted:
        cfg = cfg.model_copy(update={"method": method_cfg})  # what the trial logs and runs
        if context.rank == 0:
            print(f"note: {fitted}", file=sys.stderr, flush=True)
    sample_rate = cfg.data.sample_rate
    frontend = build_frontend(cfg.frontend, sample_rate).to(device)
    views = type(cfg.method).views
    signal_augment = build_view_augment(cfg.augment, sample_rate, views).to(device)
    spec_augment = build_spec_pipeline(cfg.augment).to(device)
    encoder = build_encoder(cfg.model, in_channels=frontend.out_channels)
    method = build_method(cfg, encoder, data.num_classes, data.class_counts)
    if cfg.frontend.normalize:
        train_rows = np.sort(data.split.train)
        frontend.fit_normalization(
            data.cache.batch(train_rows[start : start + 256]).to(device)
            for start in range(0, len(train_rows), 256)
        )
    layout = memory_format(cfg)
    method = method.to(memory_format=layout)  # conv weights; 1D and dense ones keep theirs
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
        memory_format=layout,
        steps_per_epoch=steps_per_epoch,
        local_batch=cfg.train.batch_size // world,
        hooks=FaultHooks(context.rank),
    )


@dataclass
class EarlyStopping:
    """Stop once ``patience`` epochs pass without a new best of a maximised metric
    (QUACLRS 4.6: validation accuracy). ``patience=None`` never stops."""

    patience: int | None
    best: float = -math.inf
    epochs_since_best: int = 0

    def update(self, value: float | None, epochs_elapsed: int) -> bool:
        """Record an evaluation; True when training should stop."""
        if self.patience is None or value is None:
            return False
        if value > self.best:
            self.best, self.epochs_since_best = value, 0
        else:
            self.epochs_since_best += epochs_elapsed
        return self.epochs_since_best >= self.patience

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "epochs_since_best": self.epochs_since_best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.epochs_since_best = state["best"], int(state["epochs_since_best"])


@dataclass
class Progress:
    """Where a trial stands between epochs: what its checkpoint saves and its decisions
    read."""

    stopper: EarlyStopping
    next_epoch: int = 0
    run_id: str = ""  # the MLflow run the epochs so far were logged to
    finished: bool = False  # the last epoch ran, or early stopping ended the trial
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    # With early stopping: the epoch of the best watched score and the method's weights
    # then (on the CPU), which the trial is scored with when it ends (QUACLRS 4.6).
    best_epoch: int | None = None
    best_model: dict[str, torch.Tensor] | None = None

    def keep_best(self, method: torch.nn.Module, epoch: int) -> None:
        self.best_epoch = epoch
        self.best_model = {
            name: tensor.detach().to("cpu", copy=True)
            for name, tensor in method.state_dict().items()
        }


@dataclass
class Evaluation:
    """An epoch's scores: the splits scored (rank 0) and whether the test split was."""

    results: dict[str, EvaluationResult]
    full: bool  # the test split was scored (an evaluation epoch, the last, an early stop)

    @property
    def test(self) -> EvaluationResult | None:
        return self.results.get("test")


def run_loop(
    cfg: ExperimentConfig, context: TrialContext, identity: RunIdentity | None = None
) -> dict[str, float]:
    """Train one trial, evaluate it every ``train.eval_every`` epochs and at the end (the
    validation split every epoch while early stopping or the plateau schedule watch a val_
    metric), report and checkpoint every epoch, and log to MLflow from rank 0 as
    ``identity`` (default: a standalone run in ``./results``)."""
    identity = identity or RunIdentity()
    trial = set_up(cfg, context)  # everything that can fail on bad input fails here
    progress = restore(trial, context.latest_checkpoint_dir())
    if progress.finished:
        # The trial had ended when its host was interrupted: nothing is left to train;
        # only make sure its MLflow run says so.
        if trial.is_main and progress.run_id:
            last = progress.next_epoch - 1
            finish_completed_run(cfg, identity, progress.run_id, last, progress.metrics)
        return dict(progress.metrics)
    log = open_log(trial, identity, progress)
    with log.ending():
        for epoch in range(progress.next_epoch, trial.epochs):
            metrics = train_epoch(trial, epoch)
            evaluation = evaluate(trial, epoch, metrics, watched_only=False)
            stop = decide(trial, progress, epoch, metrics, evaluation)
            checkpoint_and_report(trial, progress, log, epoch, metrics, evaluation)
            if stop:
                break
    return progress.metrics


def restore(trial: TrialParts, restore_dir: Path | None) -> Progress:
    """The progress of a fresh trial, or the model, optimizer, schedule, scaler, random
    state and progress of the checkpoint in ``restore_dir``."""
    progress = Progress(EarlyStopping(trial.cfg.train.early_stopping_patience))
    if restore_dir is None:
        return progress
    state = load_checkpoint(restore_dir)
    trial.method.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    trial.schedule.load_state_dict(state["schedule"])
    trial.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    progress.stopper.load_state_dict(state["early_stopping"])
    progress.next_epoch = state["epoch"] + 1
    progress.run_id = state.get("mlflow_run_id") or ""
    progress.finished = bool(state["finished"])
    progress.metrics = dict(state["metrics"])
    if state.get("best_model") is not None:
        progress.best_epoch, progress.best_model = state["best_epoch"], state["best_model"]
    return progress


def open_log(trial: TrialParts, identity: RunIdentity, progress: Progress) -> TrialLog:
    """Rank 0's MLflow run, tagged with the data cache and the nodes every rank runs on
    (a collective: every rank takes part); the other ranks get a silent log."""
    context = trial.context
    placement = all_placements(context.placement_tags(), context.world_size)
    if not trial.is_main:
        return TrialLog()
    log = TrialLog.open(
        trial.cfg,
        identity,
        run_id=progress.run_id or None,
        start_epoch=progress.next_epoch,
        restored_metrics=progress.metrics,
        extra_tags={
            "clarlab.cache_hash": trial.data.cache.content_hash,
            # What train.amp and train.memory_format resolved to on this device.
            "clarlab.precision": PRECISION_NAMES[trial.amp_dtype],
            "clarlab.memory_format": memory_format_name(trial.memory_format),
            **placement,
        },
    )
    progress.run_id = log.run_id
    return log


def _watching(cfg: ExperimentConfig) -> bool:
    """Whether early stopping or the plateau schedule watch a metric every epoch."""
    return bool(cfg.train.early_stopping_patience) or cfg.optim.schedule == "plateau"


def evaluate(
    trial: TrialParts, epoch: int, metrics: dict[str, float], *, watched_only: bool
) -> Evaluation:
    """Score this epoch's splits on rank 0 and add their flat metrics (``val_top1``,
    ``test_weighted_f1``, ...) to ``metrics``.

    The test split at the ``eval_every`` pace and at the last epoch; the validation split
    then too, and EVERY epoch while early stopping or the plateau schedule watch a val_
    metric (a 5-epoch QUACLRS run with eval_every=10 must still be able to stop). With
    ``watched_only`` only the test split (the scores of a trial that stops here)."""
    cfg = trial.cfg
    full = (epoch + 1) % cfg.train.eval_every == 0 or epoch == trial.epochs - 1
    if watched_only:
        splits: tuple[str, ...] = ("test",)
    elif full:
        splits = ("test", "val")
    elif _watching(cfg) and cfg.train.early_stopping_metric.startswith("val_"):
        splits = ("val",)
    else:
        splits = ()
    if not (splits and trial.is_main):
        return Evaluation({}, full)
    context = trial.context
    results = evaluate_method(
        trial.method, trial.frontend, trial.data.cache, trial.data.split, cfg, context.device,
        splits,
    )  # fmt: skip
    for result in results.values():
        metrics.update(result.metrics())
    return Evaluation(results, full or watched_only)


def decide(
    trial: TrialParts,
    progress: Progress,
    epoch: int,
    metrics: dict[str, float],
    evaluation: Evaluation,
) -> bool:
    """Early stopping and the plateau schedule, on the watched metric (rank 0's, so that
    every rank takes the same decisions); True when the trial stops after this epoch. A
    trial that stops between evaluations is scored on the test split here; with early
    stopping, a trial that ends is scored with the weights of its best watched epoch
    (``scored_epoch`` says which epoch's weights the test scores are from)."""
    cfg = trial.cfg
    name = cfg.train.early_stopping_metric
    watched = metrics.get(name) if trial.is_main else None
    if _watching(cfg):
        watched = _broadcast_from_main(watched, trial.context)
        if watched is None:
            raise ValueError(
                f"train.early_stopping_metric={name!r} (watched by early stopping and the "
                f"plateau schedule) is not among this epoch's metrics; use a val_ metric "
                f"(val_top1, val_macro_f1, val_weighted_f1) or one of: "
                f"{', '.join(sorted(metrics))}"
            )
    stopper = progress.stopper
    stop = stopper.update(watched, epochs_elapsed=1)
    if stopper.patience is not None and watched is not None and stopper.epochs_since_best == 0:
        progress.keep_best(trial.method, epoch)
    progress.finished = stop or epoch == trial.epochs - 1
    metrics["early_stopped"] = float(stop)
    metrics["scored_epoch"] = float(epoch)
    rescore = stop and not evaluation.full
    if progress.finished and progress.best_model is not None and progress.best_epoch != epoch:
        # QUACLRS 4.6: "the best model based on validation accuracy is saved"; that model
        # is the trial's result, so its weights are the ones the test split scores.
        trial.method.load_state_dict(progress.best_model)
        metrics["scored_epoch"] = float(progress.best_epoch)
        rescore = True
    if rescore:
        at_stop = evaluate(trial, epoch, metrics, watched_only=True)
        evaluation.results.update(at_stop.results)
        evaluation.full = True
    trial.schedule.step_epoch(watched)
    return stop


def checkpoint_and_report(
    trial: TrialParts,
    progress: Progress,
    log: TrialLog,
    epoch: int,
    metrics: dict[str, float],
    evaluation: Evaluation,
) -> None:
    """Rank 0 saves the checkpoint and logs the epoch (before the checkpoint is reported:
    see :class:`~core.tracking.TrialLog`); every rank reports the epoch's metrics, with the
    per-clip results of a test evaluation beside them for the sweep's report."""
    progress.next_epoch, progress.metrics = epoch + 1, metrics
    checkpoint_dir = None
    if trial.is_main:
        checkpoint_dir = Path(tempfile.mkdtemp(prefix="clarlab-ckpt-"))
        save_checkpoint(checkpoint_dir, _checkpoint_state(trial, progress, epoch))
        shown = evaluation.test or next(iter(evaluation.results.values()), None)
        # Artifacts at the test pace only, not for every epoch's validation check; the
        # figures too slow for every evaluation (ROC, Grad-CAM) at the final one only.
        log.epoch(epoch, metrics, shown if evaluation.full else None)
        if progress.finished and evaluation.test is not None and trial.cfg.train.final_figures:
            log.final(evaluation.test, _gradcam(trial, evaluation.test))
    reported = dict(metrics)
    test = evaluation.test
    if test is not None:
        curve = macro_roc_json(test.roc) if test.roc is not None else None
        if curve is not None:  # the parent run's per-fold ROC figure (core.fold_report)
            reported[ROC_KEY] = curve
        if test.correct is not None:
            # Per-clip correctness for intervals over test clips and McNemar's test in the
            # sweep report (text, not a metric: MLflow gets the predictions CSV).
            reported[CORRECT_KEY] = encode_correct(test.correct)
        # Text beside the metrics, for per-class tables (QUACLRS Table 4).
        reported[PER_CLASS_KEY] = json.dumps(
            dict(zip(test.class_names, test.per_class_f1, strict=True))
        )
    trial.hooks.before_report(epoch)
    trial.context.report(reported, checkpoint_dir)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _gradcam(trial: TrialParts, test: EvaluationResult) -> GradCamMaps | None:
    """Grad-CAM of a few test clips (:func:`core.gradcam.trial_gradcam`). A figure must not
    cost a trained trial its scores: should it fail, the trial says so and goes on."""
    try:
        return trial_gradcam(
            trial.method, trial.frontend, trial.data.cache, test, trial.context.device
        )
    except Exception as error:  # any failure of an optional figure
        print(f"warning: no Grad-CAM figure ({type(error).__name__}: {error})",
              file=sys.stderr, flush=True)  # fmt: skip
        return None


def _checkpoint_state(trial: TrialParts, progress: Progress, epoch: int) -> dict[str, object]:
    return {
        "epoch": epoch,
        "model": trial.method.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "schedule": trial.schedule.state_dict(),
        "scaler": trial.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "mlflow_run_id": progress.run_id,
        "early_stopping": progress.stopper.state_dict(),
        "finished": progress.finished,
        "metrics": progress.metrics,
        "best_epoch": progress.best_epoch,
        "best_model": progress.best_model,
    }


def _broadcast_from_main(value: float | None, context: TrialContext) -> float | None:
    """Rank 0's value on every rank (None travels as NaN)."""
    if context.world_size == 1:
        return value
    carrier = torch.tensor([math.nan if value is None else value], device=context.device)
    dist.broadcast(carrier, src=0)
    received = float(carrier.item())
    return None if math.isnan(received) else received
