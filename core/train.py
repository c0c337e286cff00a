"""The training loop: one readable function, two hosts.

``run_loop`` is plain PyTorch that talks to its host through a small :class:`TrialContext`
(rank, world size, device, report, latest checkpoint). Two hosts implement it:

* :class:`RayTrainContext`, inside a ``TorchTrainer`` worker group of any size (DDP, gloo
  on CPU, NCCL on GPU). ``train_loop_per_worker`` is its entry point.
* :class:`CallbackContext`, in-process: a single-worker trial runs the same loop inside its
  Tune function trial, because starting a ``TorchTrainer`` costs about 25 s per trial on a
  laptop against 0.8 s for a plain function trial.

This is the only module of ``core`` that imports ``ray.train``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.augment import build_spec_pipeline, build_view_augment
from core.config import ExperimentConfig
from core.data import open_cache
from core.data.cache import AudioCache
from core.data.splits import Split, make_split
from core.evaluate import EvaluationResult, evaluate_method
from core.features import build_frontend
from core.memory import keep_freed_pages
from core.methods import build_method
from core.models import build_encoder
from core.models.norm import convert_for_distributed
from core.optim import build_optimizer, build_scheduler
from core.stats import CORRECT_KEY, PER_CLASS_KEY, encode_correct

if TYPE_CHECKING:
    from core.tracking import RunIdentity, TrialRun

CHECKPOINT_FILE = "state.pt"
FAULT_ENV = "CLARLAB_INJECT_FAULT"
# How long a ``pause_before_report`` fault holds a worker (a test kills the driver meanwhile).
FAULT_PAUSE_S = 300.0


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf: the trial stops at once instead of training on garbage."""


class TrialContext(Protocol):
    """What the loop needs from its host."""

    rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint_dir(self) -> Path | None: ...

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def placement_tags(self) -> dict[str, str]: ...


def _default_device(use_gpu: bool) -> torch.device:
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
        return _ray_node_tags()


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
        if self._checkpoint is None:
            return None
        return Path(self._checkpoint.to_directory())

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        # Buffers (BN statistics, MoCo queues, DINO centres) are identical on every rank by
        # construction, so DDP's per-forward buffer broadcast is pure overhead.
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"broadcast_buffers": False}
        )

    def placement_tags(self) -> dict[str, str]:
        return _ray_node_tags()


def _all_placements(own: dict[str, str], world: int) -> dict[str, str]:
    """Rank 0's placement tags plus ``clarlab.ray_node_ids``: the nodes of every worker
    of a multi-worker trial (sorted, comma-separated), so a run says which machines
    trained it. A collective: every rank calls it."""
    if world == 1:
        return dict(own)
    gathered: list[dict[str, str] | None] = [None] * world
    dist.all_gather_object(gathered, own)
    nodes = sorted({tags.get("clarlab.ray_node_id", "") for tags in gathered if tags} - {""})
    return {**own, "clarlab.ray_node_ids": ",".join(nodes)} if nodes else dict(own)


def _ray_node_tags() -> dict[str, str]:
    """``clarlab.ray_node_id`` of this process when Ray runs it (rank 0 on a cluster), so a
    run says which machine trained it; empty outside Ray."""
    import sys

    if "ray" not in sys.modules:
        return {}
    import ray

    if not ray.is_initialized():
        return {}
    return {"clarlab.ray_node_id": ray.get_runtime_context().get_node_id()}


# --- helpers --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed the global generators (model init, dropout) for reproducible trials."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A distinct, reproducible seed per (seed, epoch, rank, stream): resuming at an epoch
    boundary replays exactly the random numbers an uninterrupted run would draw."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def _dealt(pool: np.ndarray, steps: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` hands of ``size`` distinct items of ``pool``, dealt from shuffled decks: a
    pool smaller than ``steps * size`` is reshuffled when it runs out, and a hand never
    holds an item twice (a clip twice in a batch would be its own false negative)."""
    deck = list(rng.permutation(pool))
    hands = []
    for _ in range(steps):
        hand, deck = deck[:size], deck[size:]
        if len(hand) < size:
            fresh = [item for item in rng.permutation(pool) if item not in set(hand)]
            need = size - len(hand)
            hand, deck = hand + fresh[:need], fresh[need:]
        hands.append(np.asarray(hand, dtype=np.int64))
    return hands


def _labelled_first_order(
    labelled: np.ndarray, per_batch: int, global_batch: int, rng: np.random.Generator
) -> np.ndarray:
    """A global order in which every batch holds ``per_batch`` labelled clips.

    The labelled clips are dealt from shuffled decks (at 1 % of FSDD there are 27, so
    they repeat within an epoch); the rest of each batch comes from the unlabelled clips.
    The epoch keeps its number of steps.
    """
    steps = len(labelled) // global_batch
    # More than the labelled pool would repeat a clip inside a batch.
    per_batch = min(per_batch, global_batch, int(labelled.sum()))
    with_label = _dealt(np.flatnonzero(labelled), steps, per_batch, rng)
    without = _dealt(np.flatnonzero(~labelled), steps, global_batch - per_batch, rng)
    batches = [
        rng.permutation(np.concatenate(pair)) for pair in zip(with_label, without, strict=True)
    ]
    return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)


def epoch_batches(
    train_indices: np.ndarray,
    local_batch: int,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    labelled: np.ndarray | None = None,
    labelled_per_batch: int | None = None,
) -> Iterator[np.ndarray]:
    """This rank's batches of one epoch: a seeded global shuffle, sharded like
    ``DistributedSampler`` (drop_last), each batch sorted for sequential memmap reads.

    With ``labelled_per_batch`` (and a ``labelled`` mask over the training clips), each
    global batch holds that many labelled clips (CLAR names stratified batches as the
    remedy for a label fraction too small to put labels in every random batch).
    """
    rng = np.random.default_rng(_epoch_seed(seed, epoch, 0, 0))
    global_batch = local_batch * world_size
    if labelled_per_batch and labelled is not None and labelled.any() and not labelled.all():
        order = _labelled_first_order(labelled, labelled_per_batch, global_batch, rng)
    else:
        order = rng.permutation(len(train_indices))
    steps = len(order) // global_batch
    for step in range(steps):
        chunk = order[step * global_batch : (step + 1) * global_batch]
        mine = chunk[rank::world_size]
        mine = mine[np.argsort(train_indices[mine], kind="stable")]
        yield train_indices[mine], mine


def _amp_settings(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed). AMP is CUDA-only."""
    if device.type != "cuda" or mode == "off":
        return None, False
    # Emulated bf16 (a V100, the paper's GPU) runs without tensor cores: fp16 with a
    # scaler is the fast choice there, so "auto" only counts native bf16.
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if mode == "fp16" or (mode == "auto" and not native_bf16):
        return torch.float16, True
    return torch.bfloat16, False


def _inject_fault(kind: str, epoch: int, step: int, rank: int) -> str | None:
    """Test hook for failure handling: ``CLARLAB_INJECT_FAULT=kind:epoch:step:rank:marker``,
    several such specs separated by commas (a marker path holds no comma).

    A spec fires once (its marker file is removed when it fires), so a restarted trial runs
    clean, and a test arms it by creating the marker. After a training step: ``kill``
    SIGKILLs this worker process; ``nan`` makes the step's loss NaN. At the end of an epoch
    (step 0), after rank 0 logged the epoch to MLflow and before its checkpoint is reported
    -- the window in which a kill made a restarted trial log the epoch twice:
    ``kill_before_report`` SIGKILLs this worker; ``pause_before_report`` sleeps
    :data:`FAULT_PAUSE_S`, so that a test can kill the driver at that exact point.
    """
    specs = os.environ.get(FAULT_ENV)
    if not specs:
        return None
    for spec in specs.split(","):
        want_kind, want_epoch, want_step, want_rank, marker = spec.strip().split(":", 4)
        wanted = (want_kind, int(want_epoch), int(want_step), int(want_rank))
        if wanted != (kind, epoch, step, rank):
            continue
        try:
            os.remove(marker)
        except FileNotFoundError:
            continue  # not armed, or fired already
        if kind in ("kill", "kill_before_report"):
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "pause_before_report":
            time.sleep(FAULT_PAUSE_S)
        return kind
    return None


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


def _broadcast_from_main(value: float | None, world: int, device: torch.device) -> float | None:
    """Rank 0's value on every rank (None travels as NaN)."""
    if world == 1:
        return value
    carrier = torch.tensor([math.nan if value is None else value], device=device)
    dist.broadcast(carrier, src=0)
    received = float(carrier.item())
    return None if math.isnan(received) else received


def _finish_completed_run(
    cfg: ExperimentConfig,
    identity: RunIdentity,
    run_id: str,
    epoch: int,
    metrics: dict[str, float],
) -> None:
    """Mark a completed trial's MLflow run FINISHED unless it already is (then untouched),
    first logging the last checkpoint's epoch should the run's history lack it."""
    from core.tracking import TrialRun, resolve_tracking_uri, tracking_client

    client = tracking_client(resolve_tracking_uri(identity))
    if client.get_run(run_id).info.status != "FINISHED":
        tracker = TrialRun.open(cfg, identity, run_id=run_id)
        if _last_logged_epoch(tracker) < epoch:
            tracker.log_metrics(metrics, step=epoch)
        tracker.finish("FINISHED")


# The metric whose MLflow history says which epochs a run holds: every epoch logs it, for
# every method (the untrained control has no loss).
HISTORY_METRIC = "epoch"
# A from-scratch attempt of a trial gets a new run; the two are linked by these tags.
TAG_SUPERSEDED_BY = "clarlab.superseded_by"
TAG_SUPERSEDES = "clarlab.supersedes"


def _last_logged_epoch(tracker: TrialRun) -> int:
    """The last epoch in the run's MLflow history, -1 when it holds none.

    Epochs are logged in order, each before its checkpoint is reported, so the history
    always reaches at least the epoch of the last persisted checkpoint; what lies beyond it
    was logged by an attempt killed before it could persist that epoch's checkpoint.
    """
    history = tracker.client.get_metric_history(tracker.run_id, HISTORY_METRIC)
    return max((int(point.step) for point in history), default=-1)


def _supersede(
    previous: TrialRun,
    cfg: ExperimentConfig,
    identity: RunIdentity,
    extra_tags: dict[str, str],
) -> TrialRun:
    """A new MLflow run for an attempt that starts from scratch where ``previous`` (the
    trial's run, found again by its trial id) already holds an earlier attempt's history.

    Why a new run rather than new steps in the old one: a run's history then always
    describes one attempt, its ``loss`` steps 0..N-1 of one training, so curves, the last
    values and the report never mix a failed or cut-off attempt with the one that finished
    (a retried trial's steps read ``[0, 1, 0, 1]`` before). The old run keeps what it
    logged, is linked to its successor (``clarlab.superseded_by`` on it,
    ``clarlab.supersedes`` on the new one), ends FAILED if its attempt had failed (its
    error moved to ``clarlab.previous_error`` when the run was reopened) and KILLED
    otherwise, and is then deleted in MLflow's sense (lifecycle ``deleted``, restorable
    with ``mlflow runs restore``): every search of active runs -- the trial lookup of
    :meth:`TrialRun.open`, :func:`core.tracking.find_trial_runs`, the UI's runs table --
    sees exactly one run per trial. The new run is created before the old one is deleted
    and found again by its ``clarlab.supersedes`` tag, so an attempt killed in between
    leaves no second run behind: the next attempt finishes the move.
    """
    from core.tracking import TAG_PARENT, TAG_PREVIOUS_ERROR, TAG_RESUME_COUNT, TrialRun

    client = previous.client
    old = client.get_run(previous.run_id)
    old_id = old.info.run_id
    now_ms = int(time.time() * 1000)
    pending = client.search_runs(
        [old.info.experiment_id], filter_string=f"tags.`{TAG_SUPERSEDES}` = '{old_id}'"
    )
    if pending:
        new_id = pending[0].info.run_id
    else:
        tags = {TAG_SUPERSEDES: old_id}
        if old.data.tags.get(TAG_PARENT):
            tags[TAG_PARENT] = old.data.tags[TAG_PARENT]
        new_id = client.create_run(
            old.info.experiment_id, start_time=now_ms, tags=tags, run_name=old.info.run_name
        ).info.run_id
    client.set_tag(old_id, TAG_SUPERSEDED_BY, new_id)
    failed = TAG_PREVIOUS_ERROR in old.data.tags
    client.set_terminated(old_id, status="FAILED" if failed else "KILLED", end_time=now_ms)
    client.delete_run(old_id)
    tracker = TrialRun.open(cfg, identity, run_id=new_id, extra_tags=extra_tags)
    # Opening by id counts a resume; this run was never resumed.
    client.delete_tag(new_id, TAG_RESUME_COUNT)
    return tracker


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


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


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write the trial state in a ``weights_only=True``-loadable form, atomically.

    The state goes to a temporary file in the same folder, is fsynced, and only then
    replaces ``state.pt`` (``os.replace`` within one file system is atomic); the folder is
    fsynced so the rename itself survives a power cut. A writer killed mid-write, or a full
    disk, therefore leaves the previous complete ``state.pt`` (or none), never a torn file
    that a restore would fail on; the temporary file is removed when the write raises.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT_FILE
    handle, temporary = tempfile.mkstemp(prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    return torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


# --- the loop -------------------------------------------------------------------------


def _score(
    model: nn.Module,
    frontend: nn.Module,
    data: TrialData,
    cfg: ExperimentConfig,
    device: torch.device,
    splits: tuple[str, ...],
    metrics: dict[str, float],
) -> dict[str, EvaluationResult]:
    """Score ``splits`` as ``train.scored_classifier`` asks and add their flat metrics
    (``val_top1``, ``test_weighted_f1``, ...) to ``metrics``; nothing when ``splits`` is
    empty. Rank 0 only: evaluation runs outside DDP."""
    if not splits:
        return {}
    results = evaluate_method(_unwrap(model), frontend, data.cache, data.split, cfg, device, splits)
    for result in results.values():
        metrics.update(result.metrics())
    return results


def run_loop(
    cfg: ExperimentConfig, context: TrialContext, identity: RunIdentity | None = None
) -> dict[str, float]:
    """Train one trial, evaluate it every ``train.eval_every`` epochs and at the end (the
    validation split every epoch while early stopping or the plateau schedule watch a val_
    metric), report every epoch, checkpoint every epoch, and log to MLflow from rank 0 as
    ``identity`` (default: a standalone run in ``./results``)."""
    from core.tracking import RunIdentity, TrialRun

    identity = identity or RunIdentity()
    rank, world, device = context.rank, context.world_size, context.device
    is_main = rank == 0
    if device.type == "cpu":
        keep_freed_pages()  # every batch reuses the last one's pages (see core.memory)
    seed_everything(cfg.train.seed)  # same init on every rank; DDP broadcasts it anyway

    # Everything that can fail on bad input fails here, before any training.
    data = load_trial_data(cfg, progress=is_main)
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

    local_batch = cfg.train.batch_size // world
    steps_per_epoch = len(data.split.train) // cfg.train.batch_size
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    optimizer = build_optimizer(cfg.optim, _unwrap(model))
    scheduler = build_scheduler(cfg.optim, optimizer, steps_per_epoch, cfg.train.epochs)
    amp_dtype, needs_scaler = _amp_settings(cfg.train.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler)

    start_epoch, run_id = 0, None
    stopper = EarlyStopping(cfg.train.early_stopping_patience)
    watched_name = cfg.train.early_stopping_metric
    watching = bool(cfg.train.early_stopping_patience) or cfg.optim.schedule == "plateau"
    restore_dir = context.latest_checkpoint_dir()
    if restore_dir is not None:
        state = load_checkpoint(restore_dir)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, run_id = state["epoch"] + 1, state.get("mlflow_run_id") or None
        stopper.load_state_dict(state["early_stopping"])
        if state["finished"]:
            # The trial had ended (last epoch or early stop) when its host was interrupted:
            # nothing is left to train; only make sure its MLflow run says so.
            if is_main and run_id:
                _finish_completed_run(cfg, identity, run_id, state["epoch"], state["metrics"])
            return dict(state["metrics"])

    # The MLflow history follows the checkpoints. An epoch is logged before its checkpoint
    # is reported, so an attempt killed in between logged an epoch that the next attempt
    # (restored from the checkpoint before) trains again: epochs up to the last one in the
    # history are trained, not logged twice (a resumed trial's steps read [0, 1, 1] before).
    # The replay draws the same seeds (_epoch_seed), so on CPU it computes what was logged.
    # An attempt from scratch in a run that holds history gets a new run (see _supersede).
    tracker = None
    logged_through = -1  # the last epoch already in the run's history
    placement = _all_placements(context.placement_tags(), world)  # every rank takes part
    if is_main:
        extra_tags = {"clarlab.cache_hash": data.cache.content_hash, **placement}
        tracker = TrialRun.open(cfg, identity, run_id=run_id, extra_tags=extra_tags)
        if tracker.resumed:
            logged_through = _last_logged_epoch(tracker)
        if start_epoch == 0 and logged_through >= 0:
            tracker = _supersede(tracker, cfg, identity, extra_tags)
            logged_through = -1
        elif restore_dir is not None and logged_through < start_epoch - 1:
            # Not reached while epochs are logged before their checkpoints; kept so that a
            # checkpoint whose epoch the history lacks still leaves no gap at its epoch.
            tracker.log_metrics(state["metrics"], step=start_epoch - 1)
            logged_through = start_epoch - 1
        if start_epoch == 0:
            tracker.log_config(cfg)
    final: dict[str, float] = {}
    # The untrained control trains nothing: one epoch measures its batch-norm statistics.
    epochs = cfg.train.epochs if type(cfg.method).trains else 1
    try:
        for epoch in range(start_epoch, epochs):
            metrics = _train_epoch(
                cfg,
                model,
                frontend,
                signal_augment,
                spec_augment,
                optimizer,
                scheduler,
                scaler,
                amp_dtype,
                data,
                epoch,
                steps_per_epoch,
                local_batch,
                context,
            )
            last = epoch == epochs - 1
            full_evaluation = (epoch + 1) % cfg.train.eval_every == 0 or last
            # Early stopping and the plateau schedule see their value EVERY epoch (a 5-epoch
            # QUACLRS run with eval_every=10 must still be able to stop): a val_ metric costs
            # a validation pass each epoch; the test split keeps the eval_every pace.
            if full_evaluation:
                splits: tuple[str, ...] = ("test", "val")
            elif watching and watched_name.startswith("val_"):
                splits = ("val",)
            else:
                splits = ()
            evaluation: dict[str, EvaluationResult] = {}
            watched = None
            if is_main:
                evaluation = _score(model, frontend, data, cfg, device, splits, metrics)
                watched = metrics.get(watched_name)
            if watching:
                # Every rank must take the same stop and learning-rate decisions.
                watched = _broadcast_from_main(watched, world, device)
                if watched is None:
                    raise ValueError(
                        f"train.early_stopping_metric={watched_name!r} (watched by early "
                        f"stopping and the plateau schedule) is not among this epoch's "
                        f"metrics; use a val_ metric (val_top1, val_macro_f1, "
                        f"val_weighted_f1) or one of: {', '.join(sorted(metrics))}"
                    )
            stop = stopper.update(watched, epochs_elapsed=1)
            metrics["early_stopped"] = float(stop)
            if stop and not full_evaluation:
                # The trial ends here: it still reports the test scores of what it trained.
                if is_main:
                    evaluation.update(
                        _score(model, frontend, data, cfg, device, ("test",), metrics)
                    )
                full_evaluation = True
            scheduler.step_epoch(watched)

            checkpoint_dir = None
            if is_main:
                checkpoint_dir = Path(tempfile.mkdtemp(prefix="clarlab-ckpt-"))
                save_checkpoint(
                    checkpoint_dir,
                    {
                        "epoch": epoch,
                        "model": _unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "mlflow_run_id": tracker.run_id if tracker else "",
                        "early_stopping": stopper.state_dict(),
                        "finished": stop or last,
                        "metrics": metrics,
                    },
                )
                if epoch > logged_through:
                    tracker.log_metrics(metrics, step=epoch)
                if full_evaluation and evaluation:
                    # Artifacts at the test pace only, not for every epoch's validation check.
                    tracker.log_evaluation(
                        evaluation.get("test") or next(iter(evaluation.values()))
                    )
            reported = dict(metrics)
            test_result = evaluation.get("test")
            if test_result is not None and test_result.correct is not None:
                # Per-clip correctness for intervals over test clips and McNemar's test in
                # the sweep report (text, not a metric: MLflow gets the predictions CSV).
                reported[CORRECT_KEY] = encode_correct(test_result.correct)
            if test_result is not None:
                # Text beside the metrics, for per-class tables (QUACLRS Table 4).
                reported[PER_CLASS_KEY] = json.dumps(
                    dict(zip(test_result.class_names, test_result.per_class_f1, strict=True))
                )
            _inject_fault("kill_before_report", epoch, 0, rank)
            _inject_fault("pause_before_report", epoch, 0, rank)
            context.report(reported, checkpoint_dir)
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
            final = metrics
            if stop:
                break
    except KeyboardInterrupt:
        if tracker:
            tracker.finish("KILLED", error="interrupted")
        raise
    except SystemExit:
        # Tune stopped the trial at a report (ASHA's successive halving): it ended early,
        # it did not fail; its last evaluation stands.
        if tracker:
            tracker.client.set_tag(tracker.run_id, "clarlab.stopped_early", "true")
            tracker.finish("FINISHED")
        raise
    except BaseException as error:
        if tracker:
            # The cause in the run's clarlab.error tag, the whole traceback beside it as
            # error.txt (the terminal shows one line); a dead server loses only the latter.
            with contextlib.suppress(Exception):
                tracker.client.log_text(tracker.run_id, traceback.format_exc(), "error.txt")
            tracker.finish("FAILED", error=f"{type(error).__name__}: {error}")
        raise
    if tracker:
        tracker.finish("FINISHED")
    return final


def _train_epoch(
    cfg: ExperimentConfig,
    model: nn.Module,
    frontend: nn.Module,
    signal_augment: nn.Module,
    spec_augment: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    data: TrialData,
    epoch: int,
    steps_per_epoch: int,
    local_batch: int,
    context: TrialContext,
) -> dict[str, float]:
    """One epoch of training; returns the epoch's mean losses and throughput figures."""
    rank, world, device = context.rank, context.world_size, context.device
    model.train()
    method = _unwrap(model)
    augment_generator = torch.Generator(device=device)
    augment_generator.manual_seed(_epoch_seed(cfg.train.seed, epoch, rank, 1))
    sums: dict[str, torch.Tensor] = {}
    data_seconds = augment_seconds = 0.0
    started = time.perf_counter()
    steps = 0
    batches = epoch_batches(
        data.split.train,
        local_batch,
        epoch,
        cfg.train.seed,
        rank,
        world,
        labelled=data.split.train_labels >= 0,
        labelled_per_batch=cfg.train.labelled_per_batch,
    )
    for step, (cache_rows, positions) in enumerate(batches):
        if step >= steps_per_epoch:
            break
        tick = time.perf_counter()
        waves = data.cache.batch(cache_rows).to(device, non_blocking=True)
        labels = torch.from_numpy(data.split.train_labels[positions]).to(device)
        data_seconds += time.perf_counter() - tick

        if not type(cfg.method).trains:
            # The control: no augmentation and no second view, only batch-norm statistics.
            with torch.no_grad():
                method.calibrate(frontend(waves))
            steps += 1
            continue

        tick = time.perf_counter()
        with torch.no_grad():
            views = [
                spec_augment(frontend(signal_augment(waves, augment_generator)), augment_generator)
                for _ in range(2)
            ]
        augment_seconds += time.perf_counter() - tick

        autocast = (
            torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        )
        with autocast:
            outputs = model(views[0], views[1], labels)
        loss = outputs["loss"].float()
        if _inject_fault("nan", epoch, step, rank):
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            parts = ", ".join(
                f"{k}={float(v.detach()):.4g}" for k, v in outputs.items() if v.numel() == 1
            )
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, step {step} (rank {rank}): {parts}; "
                f"lower optim.lr, set train.grad_clip, or check the input audio"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step_batch()
        method.on_after_optimizer_step(
            (epoch * steps_per_epoch + step + 1) / (cfg.train.epochs * steps_per_epoch)
        )
        _inject_fault("kill", epoch, step, rank)
        for key, value in outputs.items():
            if value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + value.detach().float()
        steps += 1
    seconds = time.perf_counter() - started
    if world > 1 and sums:
        # Report the global mean over workers, not rank 0's share of the batch.
        stacked = torch.stack([sums[key] for key in sorted(sums)])
        dist.all_reduce(stacked)
        sums = dict(zip(sorted(sums), stacked / world, strict=True))
    metrics = {key: float(total) / max(steps, 1) for key, total in sums.items()}
    metrics.update(
        epoch=float(epoch),
        lr=float(scheduler.current_lr()),
        samples_per_s=steps * local_batch * world / max(seconds, 1e-9),
        epoch_seconds=seconds,
        data_wait_share=data_seconds / max(seconds, 1e-9),
        augment_frontend_share=augment_seconds / max(seconds, 1e-9),
        steps=float(steps),
    )
    return metrics


# --- hosts ----------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``TorchTrainer`` entry point. The config arrives as the payload of a validated config
    (the driver validated the grid once), so the worker does not validate it again."""
    cfg = ExperimentConfig.from_payload(loop_config["experiment"])
    run_loop(cfg, RayTrainContext(), loop_config.get("identity"))


def build_torch_trainer(
    cfg: ExperimentConfig,
    *,
    identity: RunIdentity | None = None,
    run_name: str,
    storage_path: str,
    callbacks: list | None = None,
    max_failures: int = 0,
    resources_per_worker: dict[str, float] | None = None,
):
    """A ``TorchTrainer`` running ``run_loop`` on ``train.num_workers`` workers (gloo on
    CPU, NCCL on GPU), checkpoints kept under ``storage_path/run_name``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = cfg.train.use_gpu
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.to_payload(), "identity": identity},
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
    context = CallbackContext(report_fn, device=_default_device(cfg.train.use_gpu))
    return run_loop(cfg, context, identity)
