"""What one sweep invocation asks for: :class:`SweepRequest`, filled by the command line
(``ablations/_cli.py``) or built directly by tests and notebooks, and the settings every
sweep derives from it the same way (seeds, ``--set`` fields with their paths resolved)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.sweep.errors import SweepError

# Seeds per cell when --seeds is not given: one for a smoke-scale check, three where the
# budget is meant to show effects (a 95 % interval needs at least two).
DEFAULT_SEEDS = {"quick": 1, "laptop": 3, "paper": 1}

# Config fields that hold paths. Trials run in other processes whose working directory
# is not the caller's (Tune moves them into their trial folders): a relative path given on
# the command line is resolved against the caller's folder before it travels.
PATH_FIELDS = (
    "data.root",
    "data.extra_root",
    "data.cache_dir",
    "model.pretrained",
    "model.weights_dir",
)


@dataclass
class SweepRequest:
    """Everything a sweep invocation asks for, grid or search alike."""

    space: str = "aug_matrix"  # a space file: a shipped name or a path
    preset: str | None = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config fields (--set)
    # A script's recipe (run_backbones.py --recipe table5): settings that are the paper's
    # protocol for one table, applied under --set and never counted as deviations from it.
    recipe: dict[str, Any] = field(default_factory=dict)
    axis_values: dict[str, list[Any]] = field(default_factory=dict)  # a grid: restrict axes
    trial_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # --cell-set
    workers_per_trial: int | None = None  # default: the preset's train.num_workers
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # default: 1 if the preset uses GPUs else 0
    max_concurrent: int | None = None
    force_torch_trainer: bool = False
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources
    max_failures: int = 0  # automatic retries of a failed trial (from its checkpoint)
    address: str | None = None  # None: start a local Ray; "auto": the running cluster
    num_cpus: int | None = None  # local Ray only (default: all cores)
    results_dir: Path = Path("results")
    storage_path: str | None = None  # shared/cloud storage for Tune (cluster); default local
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI or <results>/mlflow.db
    experiment: str | None = None  # MLflow experiment name; default clarlab-<ablation>
    run_name: str | None = None
    resume: str | bool = False  # True: the latest sweep of this ablation; str: its run name
    retry_failed: bool = False  # with resume: also rerun failed trials from scratch
    seeds: int | None = None  # a grid: replicates of every cell and control; None: preset's
    controls: bool = True  # a grid: the untrained-encoder control and supervised reference
    samples: int | None = None  # a search: trials per invocation; None: its file's
    dry_run: bool = False
    show_config: bool = False  # with dry_run: print every trial's resolved config as YAML
    throughput: float | None = None  # with dry_run: training clips/s per worker, for the cost
    report_only: str | bool = False  # like resume: which sweep to report on
    command_line: str = ""
    progress_every_s: float = 30.0
    # The trial scheduler: "asha" stops weak trials at evaluation epochs (a grid's controls
    # are exempt); None or "fifo": every trial runs its whole budget.
    scheduler: str | None = None


def seeds_for(request: SweepRequest) -> int:
    """``--seeds``, else the preset's default."""
    if request.seeds is not None:
        if request.seeds < 1:
            raise SweepError(f"--seeds must be >= 1, got {request.seeds}")
        return request.seeds
    return DEFAULT_SEEDS.get(request.preset or "", 1)


def request_overrides(request: SweepRequest) -> dict[str, Any]:
    """The recipe, then ``--set`` and the shared flags, as dotted config fields, paths
    made absolute."""
    overrides = {**request.recipe, **request.overrides}
    if request.workers_per_trial is not None:
        overrides["train.num_workers"] = request.workers_per_trial
    if request.gpus_per_worker is not None:
        overrides["train.use_gpu"] = request.gpus_per_worker > 0
    for name in PATH_FIELDS:
        if overrides.get(name) is not None:
            overrides[name] = str(Path(overrides[name]).expanduser().resolve())
    return overrides
