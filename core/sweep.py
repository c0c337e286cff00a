"""Search space -> validated trials -> Ray Tune -> MLflow parent run and report.

The only module that imports Ray Tune or reads search-space YAML. It does four things:

1. **Load** a search space (``search_spaces/<name>.yaml``) and check its shape, naming the
   file and key of anything wrong.
2. **Expand** it into :class:`Trial` objects: defaults <- YAML ``base`` <- preset <- YAML
   ``presets.<name>`` <- caller overrides <- grid axes. Every trial's config is validated
   *before* Ray starts, so a typo in an augmentation code fails in a second, not after the
   cluster has come up.
3. **Run** the trials with Tune. Each trial is a plain Tune function trainable
   (:func:`run_trial`): with one worker it runs :func:`core.train.run_loop` in-process
   (~1 s of overhead), with several it launches a ``TorchTrainer`` wrapped in
   ``TuneReportCallback`` (Ray Train V2 cannot be passed to the Tuner directly).
4. **Report**: read Tune's experiment state back, write the Figure 4 matrices and the
   trials table (:mod:`core.report`), attach them to the sweep's MLflow parent run.

A sweep lives in ``<results>/<run_name>/``: ``sweep.json`` (what was asked, the parent
run id, how to resume), ``tune/`` (Tune's experiment state, trial logs and checkpoints,
unless a separate ``storage_path`` was given) and ``report/``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from ray import tune

from core.config import (
    PRESETS,
    ConfigError,
    ExperimentConfig,
    TrackingConfig,
    deep_merge,
    known_fields,
)
from core.memory import release_freed_memory
from core.report import (
    FAILED,
    FINISHED,
    ReportFiles,
    TrialRecord,
    log_report_to_run,
    write_report,
)

SWEEP_FILE = "sweep.json"
TUNE_DIR_NAME = "tune"
_TOP_LEVEL_KEYS = ("ablation", "description", "metric", "base", "presets", "axes")


class SearchSpaceError(ConfigError):
    """A search-space file (or a request built on it) is invalid; names file and key."""


class ResourceError(ConfigError):
    """A resource request that the cluster can never satisfy (it would wait forever)."""


# --- search spaces ----------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One grid axis over a dotted config field.

    ``kind="values"``: one trial per value, optionally with coupled settings (``with``).
    ``kind="matrix"``: the field is a list; one trial per ordered pair of ``values``,
    ``[a, b]`` off the diagonal and ``[a]`` on it (a single augmentation applied once).
    """

    field: str
    kind: str  # "values" | "matrix"
    values: tuple[Any, ...]
    coupled: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def points(self) -> list[tuple[list[str], dict[str, Any]]]:
        """(labels, dotted overrides) per point, in grid order (row-major for a matrix)."""
        if self.kind == "matrix":
            return [
                ([first, second], {self.field: [first] if first == second else [first, second]})
                for first in self.values
                for second in self.values
            ]
        points = []
        for value in self.values:
            label = str(value)
            points.append(([label], {self.field: value, **self.coupled.get(label, {})}))
        return points


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file (shape checked; trial configs are checked on expansion)."""

    source: Path
    ablation: str
    description: str
    metric: str
    base: Mapping[str, Any]
    presets: Mapping[str, Mapping[str, Any]]
    axes: tuple[Axis, ...]

    @property
    def matrix_axis(self) -> Axis | None:
        return next((axis for axis in self.axes if axis.kind == "matrix"), None)


def _nest(mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Turn ``{"a.b": 1, "c": {"d": 2}}`` into nested dicts (YAML may use either form)."""
    if not isinstance(mapping, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping of config fields, got {mapping!r}")
    nested: dict[str, Any] = {}
    for key, value in mapping.items():
        value = _nest(value, f"{where}.{key}") if isinstance(value, Mapping) else value
        node = nested
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return nested


def _check_fields(nested: Mapping[str, Any], where: str) -> None:
    """Every leaf must be a known config field (the message lists the section's fields)."""
    fields = set(known_fields())
    sections = {name.split(".")[0] for name in fields}
    for dotted in _leaves(nested):
        if dotted in fields:
            continue
        section = dotted.split(".")[0]
        if section not in sections:
            raise SearchSpaceError(
                f"{where}: {dotted}: unknown section {section!r}; valid: {', '.join(sorted(sections))}"
            )
        valid = sorted(name for name in fields if name.startswith(f"{section}."))
        raise SearchSpaceError(f"{where}: {dotted}: unknown field; valid: {', '.join(valid)}")


def _leaves(nested: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _leaves(value, f"{name}.")  # an empty section sets nothing
        else:
            out.append(name)
    return out


def _parse_axis(dotted: str, spec: Any, where: str) -> Axis:
    fields = set(known_fields())
    if dotted not in fields:
        section = dotted.split(".")[0]
        valid = sorted(name for name in fields if name.startswith(f"{section}.")) or sorted(fields)
        raise SearchSpaceError(f"{where}: unknown field {dotted!r}; valid: {', '.join(valid)}")
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"{where}: expected a list of values, {{values: [...]}} or {{matrix: [...]}}, "
            f"got {spec!r}"
        )
    unknown = set(spec) - {"values", "with", "matrix"}
    if unknown or ("values" in spec) == ("matrix" in spec):
        raise SearchSpaceError(
            f"{where}: an axis has exactly one of 'values' or 'matrix' (plus optional 'with' "
            f"for values); got keys {sorted(spec)}"
        )
    kind = "matrix" if "matrix" in spec else "values"
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise SearchSpaceError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if len({json.dumps(value, sort_keys=True, default=str) for value in values}) != len(values):
        raise SearchSpaceError(f"{where}.{kind}: duplicate values in {values!r}")
    if kind == "matrix":
        default = ExperimentConfig.model_construct().flat().get(dotted)
        if not isinstance(default, list):
            raise SearchSpaceError(
                f"{where}: 'matrix' needs a list-valued field (e.g. augment.pipeline); "
                f"{dotted!r} is not one"
            )
        if not all(isinstance(value, str) for value in values):
            raise SearchSpaceError(f"{where}.matrix: expected codes (strings), got {values!r}")
        return Axis(field=dotted, kind=kind, values=tuple(values))
    coupled_raw = spec.get("with") or {}
    if not isinstance(coupled_raw, Mapping):
        raise SearchSpaceError(f"{where}.with: expected a mapping value -> settings")
    labels = [str(value) for value in values]
    coupled: dict[str, dict[str, Any]] = {}
    for label, settings in coupled_raw.items():
        if str(label) not in labels:
            raise SearchSpaceError(
                f"{where}.with.{label}: not one of the axis values; valid: {', '.join(labels)}"
            )
        nested = _nest(settings, f"{where}.with.{label}")
        _check_fields(nested, f"{where}.with.{label}")
        coupled[str(label)] = {name: _get(nested, name) for name in _leaves(nested)}
    return Axis(field=dotted, kind=kind, values=tuple(values), coupled=coupled)


def _get(nested: Mapping[str, Any], dotted: str) -> Any:
    node: Any = nested
    for part in dotted.split("."):
        node = node[part]
    return node


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """Read and shape-check a search space; errors name the file and the key."""
    from search_spaces import locate

    try:
        path = locate(name_or_path)
    except FileNotFoundError as error:
        raise SearchSpaceError(str(error)) from None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise SearchSpaceError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{path}: expected a mapping with keys {', '.join(_TOP_LEVEL_KEYS)}")
    unknown = sorted(set(raw) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise SearchSpaceError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(_TOP_LEVEL_KEYS)}"
        )
    base = _nest(raw.get("base") or {}, f"{path}: base")
    _check_fields(base, f"{path}: base")
    presets_raw = raw.get("presets") or {}
    if not isinstance(presets_raw, Mapping):
        raise SearchSpaceError(f"{path}: presets: expected a mapping preset name -> settings")
    presets = {}
    for name, settings in presets_raw.items():
        if name not in PRESETS:
            raise SearchSpaceError(
                f"{path}: presets.{name}: unknown preset; valid: {', '.join(sorted(PRESETS))}"
            )
        presets[name] = _nest(settings or {}, f"{path}: presets.{name}")
        _check_fields(presets[name], f"{path}: presets.{name}")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, Mapping):
        raise SearchSpaceError(f"{path}: axes: expected a mapping field -> values")
    axes = tuple(
        _parse_axis(str(dotted), spec, f"{path}: axes.{dotted}")
        for dotted, spec in axes_raw.items()
    )
    if sum(axis.kind == "matrix" for axis in axes) > 1:
        raise SearchSpaceError(f"{path}: axes: at most one 'matrix' axis per search space")
    metric = str(raw.get("metric", "test_top1"))
    return SearchSpace(
        source=path,
        ablation=str(raw.get("ablation") or path.stem),
        description=str(raw.get("description") or ""),
        metric=metric,
        base=base,
        presets=presets,
        axes=axes,
    )


# --- expansion ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One validated cell of the grid. ``trial_id`` is stable across restarts and resumes."""

    trial_id: str
    panel: str  # labels of the non-matrix axes, e.g. "stft3"
    first: str | None  # matrix row (first augmentation)
    second: str | None  # matrix column (second augmentation)
    config: ExperimentConfig

    @property
    def pipeline(self) -> list[str]:
        return list(self.config.augment.pipeline)


def restrict_axes(
    space: SearchSpace, axis_values: Mapping[str, Sequence[Any]] | None
) -> SearchSpace:
    """Replace some axes' values (``--augs PS FD``, ``--frontends stft3``).

    Values of an axis with coupled settings must be among the declared ones, since their
    coupled settings (e.g. the encoder of a front end) would otherwise be unknown.
    """
    if not axis_values:
        return space
    by_field = {axis.field: axis for axis in space.axes}
    axes = list(space.axes)
    for dotted, values in axis_values.items():
        if dotted not in by_field:
            raise SearchSpaceError(
                f"{space.source}: no axis {dotted!r} to restrict; axes: {', '.join(by_field)}"
            )
        axis = by_field[dotted]
        values = list(values)
        if not values:
            raise SearchSpaceError(f"{space.source}: axes.{dotted}: empty selection")
        if axis.coupled:
            unknown = [value for value in values if str(value) not in axis.coupled]
            if unknown:
                raise SearchSpaceError(
                    f"{space.source}: axes.{dotted}: {unknown} not declared; valid: "
                    f"{', '.join(axis.coupled)}"
                )
        restricted = Axis(
            field=axis.field, kind=axis.kind, values=tuple(values), coupled=axis.coupled
        )
        axes[axes.index(axis)] = restricted
    return SearchSpace(**{**space.__dict__, "axes": tuple(axes)})


def layered_base(
    space: SearchSpace, preset: str | None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """defaults <- YAML base <- preset <- YAML presets.<preset> <- overrides (dotted keys)."""
    raw = deep_merge({}, space.base)
    if preset is not None:
        if preset not in PRESETS:
            raise SearchSpaceError(
                f"unknown preset {preset!r}; valid: {', '.join(sorted(PRESETS))}"
            )
        raw = deep_merge(raw, PRESETS[preset])
        raw = deep_merge(raw, space.presets.get(preset, {}))
    for dotted, value in (overrides or {}).items():
        _check_fields(_nest({dotted: value}, "overrides"), "overrides")
        set_dotted_path(raw, dotted, value)
    return raw


def set_dotted_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Like :func:`core.config.set_dotted` but creates missing sections of a partial tree."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def expand_trials(
    space: SearchSpace,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    trial_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    tracking: Mapping[str, Any] | None = None,
) -> list[Trial]:
    """Every grid cell as a validated :class:`Trial`, in grid order.

    ``trial_overrides`` maps a trial id to extra dotted settings for that cell only
    (re-running one cell with another seed, or injecting a fault in tests); ``tracking``
    holds the ``tracking.*`` fields every trial shares (parent run id, URI, ...).
    """
    base = layered_base(space, preset, overrides)
    trial_overrides = dict(trial_overrides or {})
    trials: list[Trial] = []
    matrix = space.matrix_axis
    for combination in itertools.product(*(axis.points() for axis in space.axes)):
        labels: list[str] = []
        settings: dict[str, Any] = {}
        panel_labels: list[str] = []
        first = second = None
        for axis, (axis_labels, axis_settings) in zip(space.axes, combination, strict=True):
            labels += axis_labels
            settings.update(axis_settings)
            if axis is matrix:
                first, second = axis_labels
            else:
                panel_labels += axis_labels
        trial_id = "-".join(labels) or space.ablation
        raw = deep_merge({}, base)
        for dotted, value in settings.items():
            set_dotted_path(raw, dotted, value)
        for dotted, value in trial_overrides.pop(trial_id, {}).items():
            set_dotted_path(raw, dotted, value)
        for name, value in {**(tracking or {}), "trial_id": trial_id}.items():
            set_dotted_path(raw, f"tracking.{name}", value)
        try:
            config = ExperimentConfig.from_dict(raw, source=f"{space.source} (trial {trial_id})")
        except ConfigError as error:
            raise SearchSpaceError(str(error)) from None
        trials.append(Trial(trial_id, "-".join(panel_labels) or "all", first, second, config))
    if trial_overrides:
        raise SearchSpaceError(
            f"trial overrides name unknown trial id(s) {sorted(trial_overrides)}; valid ids "
            f"look like {trials[0].trial_id!r} ({len(trials)} trials)"
        )
    return trials


def trial_table(trials: Sequence[Trial]) -> str:
    """The dry-run listing: one line per trial with the settings that tell them apart."""
    header = (
        f"{'#':>3}  {'trial':<20} {'pipeline':<10} {'front end':<9} {'encoder':<12} "
        f"{'method':<8} {'dataset':<18} {'epochs':>6} {'batch':>5} {'workers':>7}"
    )
    lines = [header, "-" * len(header)]
    for number, trial in enumerate(trials, 1):
        cfg = trial.config
        pipeline = ">".join(cfg.augment.pipeline) or "(none)"
        lines.append(
            f"{number:>3}  {trial.trial_id:<20} {pipeline:<10} {cfg.frontend.name:<9} "
            f"{cfg.model.encoder:<12} {cfg.method.name:<8} {cfg.data.dataset:<18} "
            f"{cfg.train.epochs:>6} {cfg.train.batch_size:>5} {cfg.train.num_workers:>7}"
        )
    return "\n".join(lines)


# --- resources ----------------------------------------------------------------------------
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

    @property
    def use_torch_trainer(self) -> bool:
        return self.force_torch_trainer or self.workers_per_trial > 1

    @property
    def per_trial(self) -> dict[str, float]:
        return {
            "CPU": self.workers_per_trial * self.cpus_per_worker,
            "GPU": self.workers_per_trial * self.gpus_per_worker,
        }

    def trainable_resources(self) -> dict[str, float]:
        """What ``tune.with_resources`` gets for the trial function itself."""
        if self.use_torch_trainer:
            return {"cpu": 0, "memory": 1}
        return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker}

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
    plan = Resources(
        workers_per_trial,
        cpus_per_worker,
        gpus_per_worker,
        max_concurrent_trials,
        force_torch_trainer,
    )
    if available is None:
        return plan
    fits = []
    for kind, need in plan.per_trial.items():
        have = float(available.get(kind, 0.0))
        if need > have + 1e-9:
            flag = "--gpus-per-worker" if kind == "GPU" else "--cpus-per-worker"
            raise ResourceError(
                f"each trial needs {need:g} {kind} ({workers_per_trial} worker(s) x "
                f"{need / workers_per_trial:g}) but the cluster has {have:g}; lower "
                f"--workers-per-trial or {flag}, or connect to a bigger cluster with --address"
            )
        if need > 0:
            fits.append(math.floor(have / need + 1e-9))
    derived = max(1, min(fits)) if fits else 1
    return Resources(
        workers_per_trial,
        cpus_per_worker,
        gpus_per_worker,
        max_concurrent_trials or derived,
        force_torch_trainer,
    )


# --- the Tune trial ------------------------------------------------------------------------
# Environment of every trial process. Two malloc arenas bound what a long-lived, reused
# trial actor can hold on to (see reuse_actors below); the loop is not malloc-bound.
# Ray Train's controller looks at its workers every 2 s by default, so a TorchTrainer trial
# waited a second on average to see its worker group start and again to see it finish;
# a look costs one small RPC per worker, so four a second cost nothing.
_TRIAL_ENV = {"MALLOC_ARENA_MAX": "2", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def trial_environment() -> dict[str, str]:
    """``_TRIAL_ENV``, where a value the user exported wins over the default."""
    return {name: os.environ.get(name, value) for name, value in _TRIAL_ENV.items()}


def run_trial(params: dict[str, Any]) -> None:
    """The Tune function trainable: one grid cell, trained by :mod:`core.train`.

    ``params["cell"]`` holds the trial id and its validated config dumped to JSON (Tune
    stores it in its experiment state, so a resumed sweep runs exactly what was
    validated); ``params["execution"]`` says how to run it.
    """
    config = ExperimentConfig.model_validate(params["cell"]["experiment"])
    execution = params["execution"]
    try:
        if execution["torch_trainer"]:
            _run_worker_group(config, params["cell"]["trial_id"], execution)
        else:
            _run_in_process(config, execution)
    except Exception as error:
        _ensure_failed_run(config, error)
        raise
    finally:
        release_freed_memory()


def _run_worker_group(config: ExperimentConfig, trial_id: str, execution: dict[str, Any]) -> None:
    """Several workers: a ``TorchTrainer`` whose reports reach Tune through the callback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from core import train

    trainer = train.build_torch_trainer(
        config,
        # Stable per trial: a trial restarted by --resume restores its trainer's checkpoint.
        run_name=f"{execution['run_name']}-{trial_id}",
        storage_path=execution["train_storage_path"],
        callbacks=[TuneReportCallback()],
        max_failures=execution["max_failures"],
        resources_per_worker={
            "CPU": execution["cpus_per_worker"],
            "GPU": execution["gpus_per_worker"],
        },
    )
    trainer.fit()


def _run_in_process(config: ExperimentConfig, execution: dict[str, Any]) -> None:
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
        train.run_loop(config, context)


def _ensure_failed_run(config: ExperimentConfig, error: BaseException) -> None:
    """Give a trial that failed before the loop opened its MLflow run (bad data, a batch
    larger than the split...) a FAILED run with the error, so that every cell of the grid
    can be found under the parent. A run the loop already ended is left alone."""
    from core import tracking

    tracking_cfg = config.tracking
    if not (tracking_cfg.parent_run_id and tracking_cfg.trial_id):
        return
    with contextlib.suppress(Exception):  # never hide the trial's own error behind this one
        uri = tracking.resolve_tracking_uri(tracking_cfg)
        runs = tracking.find_trial_runs(uri, tracking_cfg.parent_run_id)
        if any(run.data.tags.get(tracking.TAG_TRIAL_ID) == tracking_cfg.trial_id for run in runs):
            return
        tracking.TrialRun.open(config).finish("FAILED", error=f"{type(error).__name__}: {error}")


def _trial_name(trial: Any) -> str:
    """Tune trial names (and folders) are the stable trial ids, not a hash of the config."""
    return str(trial.config["cell"]["trial_id"])


# --- progress ---------------------------------------------------------------------------------
class SweepProgress(tune.Callback):
    """A quiet replacement for Tune's tables: one line per finished or failed trial and a
    status line (done / running / pending, best so far) at most every ``every_s`` seconds.

    It prints to ``sys.stdout`` at call time rather than holding a stream, because Tune
    pickles its callbacks into the experiment state that ``--resume`` restores.
    """

    def __init__(self, total: int, metric: str, every_s: float = 30.0) -> None:
        self.total = total
        self.metric = metric
        self.every_s = every_s
        self.best: tuple[float, str] | None = None
        self.last_print = 0.0
        self.started = time.time()

    def status_line(self, trials: Sequence[Any]) -> str:
        done = sum(trial.status == "TERMINATED" for trial in trials)
        failed = sum(trial.status == "ERROR" for trial in trials)
        running = sum(trial.status == "RUNNING" for trial in trials)
        pending = self.total - done - failed - running
        best = f"; best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        minutes = (time.time() - self.started) / 60
        return (
            f"[{minutes:5.1f} min] {done + failed}/{self.total} done ({failed} failed), "
            f"{running} running, {pending} pending{best}"
        )

    def _say(self, text: str) -> None:
        print(text, flush=True)
        self.last_print = time.time()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        value = result.get(self.metric)
        if value is not None and (self.best is None or value > self.best[0]):
            self.best = (float(value), _trial_name(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{self.metric}={value:.4f}" if value is not None else f"no {self.metric}"
        self._say(f"  finished {_trial_name(trial)}: {shown}")
        self._say(self.status_line(trials))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(f"  FAILED   {_trial_name(trial)}: see {trial.error_file or trial.path}")
        self._say(self.status_line(trials))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.time() - self.last_print >= self.every_s:
            self._say(self.status_line(trials))


# --- the sweep request -----------------------------------------------------------------------
@dataclass
class SweepRequest:
    """Everything a sweep invocation asks for (the CLI fills it; tests build it directly)."""

    search_space: str = "aug_matrix"
    preset: str | None = "quick"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config fields
    axis_values: dict[str, list[Any]] = field(default_factory=dict)  # restrict axes
    trial_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    workers_per_trial: int | None = None  # default: the preset's train.num_workers
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # default: 1 if the preset uses GPUs else 0
    max_concurrent: int | None = None
    force_torch_trainer: bool = False
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
    dry_run: bool = False
    report_only: str | bool = False  # like resume: which sweep to report on
    command_line: str = ""
    progress_every_s: float = 30.0


@dataclass
class SweepOutcome:
    """What a sweep left behind (a dry run fills only the first fields)."""

    run_name: str
    run_dir: Path
    trials: list[Trial]
    resources: Resources
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    records: list[TrialRecord] = field(default_factory=list)
    report: ReportFiles | None = None
    summary: str = ""
    fit_seconds: float | None = None  # wall time of this invocation's Tune run

    @property
    def complete(self) -> bool:
        """Every trial ended (finished or failed): nothing is left to resume."""
        return len(self.records) == len(self.trials) and all(
            record.status in (FINISHED, FAILED) for record in self.records
        )

    @property
    def failed(self) -> list[str]:
        return [record.trial_id for record in self.records if record.status == FAILED]


def prepare_trials(
    request: SweepRequest, tracking: Mapping[str, Any] | None = None
) -> tuple[SearchSpace, list[Trial], Resources]:
    """Load, restrict and expand the search space and size the trials (no Ray yet)."""
    space = restrict_axes(load_search_space(request.search_space), request.axis_values)
    overrides = dict(request.overrides)
    if request.workers_per_trial is not None:
        overrides["train.num_workers"] = request.workers_per_trial
    if request.gpus_per_worker is not None:
        overrides["train.use_gpu"] = request.gpus_per_worker > 0
    for name in ("data.root", "data.cache_dir", "model.pretrained"):
        # Trials run in other processes whose working directory is not the caller's
        # (Tune moves them into their trial folders): relative paths are resolved here.
        if overrides.get(name) is not None:
            overrides[name] = str(Path(overrides[name]).expanduser().resolve())
    trials = expand_trials(
        space,
        preset=request.preset,
        overrides=overrides,
        trial_overrides=request.trial_overrides,
        tracking=tracking,
    )
    first = trials[0].config.train
    gpus = request.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if first.use_gpu else 0.0
    resources = plan_resources(
        workers_per_trial=first.num_workers,
        cpus_per_worker=request.cpus_per_worker,
        gpus_per_worker=gpus,
        max_concurrent_trials=request.max_concurrent,
        force_torch_trainer=request.force_torch_trainer,
    )
    return space, trials, resources


def _local_resources(num_cpus: int | None = None) -> dict[str, float]:
    """What a local Ray started here will see (for checks before starting it)."""
    gpus = 0
    with contextlib.suppress(Exception):
        import torch

        gpus = torch.cuda.device_count()
    return {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}


def _replan(resources: Resources, available: Mapping[str, float] | None) -> Resources:
    return plan_resources(
        workers_per_trial=resources.workers_per_trial,
        cpus_per_worker=resources.cpus_per_worker,
        gpus_per_worker=resources.gpus_per_worker,
        max_concurrent_trials=resources.max_concurrent_trials,
        force_torch_trainer=resources.force_torch_trainer,
        available=available,
    )


def _unique_run_name(results_dir: Path, stem: str) -> str:
    name = f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, number = name, 2
    while (results_dir / candidate).exists():
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def find_sweep(results_dir: Path, which: str | bool, ablation: str | None = None) -> Path:
    """The folder of a previous sweep: by run name (or path), or the latest of ``ablation``."""
    if isinstance(which, str):
        for candidate in (Path(which), results_dir / which):
            if (candidate / SWEEP_FILE).is_file():
                return candidate.resolve()
        raise SearchSpaceError(
            f"no sweep {which!r} under {results_dir} (no {results_dir / which / SWEEP_FILE}); "
            f"pass the run name printed when the sweep started"
        )
    found = []
    for state_file in results_dir.glob(f"*/{SWEEP_FILE}"):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(state_file.read_text())
            if ablation is None or state.get("ablation") == ablation:
                found.append((float(state.get("created", 0.0)), str(state_file.parent)))
    if not found:
        raise SearchSpaceError(
            f"no previous sweep{f' of {ablation}' if ablation else ''} under {results_dir}"
        )
    return Path(max(found)[1])


def mlflow_hint(tracking_uri: str, experiment: str, run_id: str | None) -> str:
    """How to look at the sweep: the UI command for a local store, the URL for a server."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow: {tracking_uri.rstrip('/')}/#/experiments (experiment {experiment!r}, parent run {run_id})"
    return (
        f"MLflow: mlflow ui --host 127.0.0.1 --backend-store-uri {tracking_uri}\n"
        f"        then open http://127.0.0.1:5000 (experiment {experiment!r}, parent run {run_id})"
    )


# --- driver -----------------------------------------------------------------------------------
def run_sweep(request: SweepRequest, stream: TextIO | None = None) -> SweepOutcome:
    """Validate, then run, resume or only report on a sweep (see the module docstring)."""
    stream = stream or sys.stdout  # looked up per call: callers may redirect stdout
    results_dir = Path(request.results_dir).expanduser().resolve()
    if request.resume or request.report_only:
        return _continue_sweep(request, results_dir, stream)

    space, trials, resources = prepare_trials(request)
    if request.dry_run:
        return _dry_run(request, space, trials, resources, results_dir, stream)
    if not request.address:  # a local cluster: refuse what it can never hold before starting it
        resources = _replan(resources, _local_resources(request.num_cpus))

    from core import tracking as mlflow_tracking

    run_name = request.run_name or _unique_run_name(
        results_dir, f"{space.ablation}-{request.preset or 'base'}"
    )
    run_dir = results_dir / run_name
    if (run_dir / SWEEP_FILE).exists():
        raise SearchSpaceError(f"{run_dir} already holds a sweep; --resume {run_name} continues it")
    parent_cfg = TrackingConfig(
        tracking_uri=request.tracking_uri,
        experiment=request.experiment or f"clarlab-{space.ablation}",
        ablation=space.ablation,
        results_dir=results_dir,
    )
    tracking_uri = mlflow_tracking.resolve_tracking_uri(parent_cfg)
    if request.address and tracking_uri.startswith("sqlite:"):
        print(
            f"warning: MLflow store {tracking_uri} is a file on this machine; trials on other "
            f"nodes cannot write to it. Pass --tracking-uri http://<head>:5000 (the MLflow "
            f"server of cluster.yaml) or set MLFLOW_TRACKING_URI.",
            file=stream,
        )
    available = _start_ray(request)
    resources = _replan(resources, available)
    parent_run_id = mlflow_tracking.start_parent_run(
        parent_cfg,
        tags={
            "clarlab.preset": request.preset or "none",
            "clarlab.dataset": trials[0].config.data.dataset,
            "clarlab.command_line": (request.command_line or " ".join(sys.argv))[:5000],
            "clarlab.search_space": str(space.source),
            "clarlab.sweep_run_name": run_name,
        },
        run_name=run_name,
    )
    # Expanded again with the parent's identity, so that every trial nests under it.
    shared = {
        "tracking_uri": tracking_uri,
        "experiment": parent_cfg.experiment,
        "parent_run_id": parent_run_id,
        "ablation": space.ablation,
        "results_dir": str(results_dir),
    }
    space, trials, _ = prepare_trials(request, tracking=shared)
    storage_root = request.storage_path.rstrip("/") if request.storage_path else str(results_dir)
    state = {
        "run_name": run_name,
        "ablation": space.ablation,
        "search_space": str(space.source),
        "preset": request.preset,
        "created": time.time(),
        "parent_run_id": parent_run_id,
        "tracking_uri": tracking_uri,
        "experiment": parent_cfg.experiment,
        "experiment_path": f"{storage_root}/{run_name}/{TUNE_DIR_NAME}",
        "metric": space.metric,
        "matrix_codes": list(space.matrix_axis.values) if space.matrix_axis else None,
        "panels": list(dict.fromkeys(trial.panel for trial in trials)),
        "resources": asdict(resources),
        "max_failures": request.max_failures,
        "command_line": request.command_line or " ".join(sys.argv),
        "trials": [
            {
                "trial_id": trial.trial_id,
                "panel": trial.panel,
                "first": trial.first,
                "second": trial.second,
                "config": trial.config.model_dump(mode="json"),
            }
            for trial in trials
        ],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SWEEP_FILE).write_text(json.dumps(state, indent=1))
    print(
        f"sweep {run_name}: {len(trials)} trials; {resources.describe()}\n"
        f"  results: {run_dir}\n  {mlflow_hint(tracking_uri, parent_cfg.experiment, parent_run_id)}",
        file=stream,
        flush=True,
    )
    fit_seconds = _fit(state, trials, resources, request, restore=False)
    return _finish(state, run_dir, trials, stream, set_status=True, fit_seconds=fit_seconds)


def _dry_run(
    request: SweepRequest,
    space: SearchSpace,
    trials: list[Trial],
    resources: Resources,
    results_dir: Path,
    stream: TextIO,
) -> SweepOutcome:
    print(trial_table(trials), file=stream)
    print(f"\n{len(trials)} trials from {space.source} (preset {request.preset})", file=stream)
    here = _local_resources(request.num_cpus)
    try:
        resources = _replan(resources, None if request.address else here)
        print(f"resources: {resources.describe()}", file=stream)
    except ResourceError as error:
        print(f"resources: {resources.describe()}", file=stream)
        print(
            f"note: not runnable on this machine ({here['CPU']:g} CPU, {here['GPU']:g} GPU): "
            f"{error}",
            file=stream,
        )
    return SweepOutcome("dry-run", results_dir, trials, resources)


def _load_state(run_dir: Path) -> tuple[dict[str, Any], list[Trial]]:
    state = json.loads((run_dir / SWEEP_FILE).read_text())
    trials = [
        Trial(
            item["trial_id"],
            item["panel"],
            item["first"],
            item["second"],
            ExperimentConfig.model_validate(item["config"]),
        )
        for item in state["trials"]
    ]
    return state, trials


def _continue_sweep(request: SweepRequest, results_dir: Path, stream: TextIO) -> SweepOutcome:
    """``--resume``: finished trials stay, unfinished ones continue from their checkpoints,
    and they all keep their MLflow runs. ``--report-only``: just rebuild the report."""
    which = request.resume or request.report_only
    ablation = load_search_space(request.search_space).ablation if which is True else None
    run_dir = find_sweep(results_dir, which, ablation)
    state, trials = _load_state(run_dir)
    if request.report_only:
        return _finish(state, run_dir, trials, stream, set_status=False)

    from core import tracking as mlflow_tracking

    resources = Resources(**state["resources"])
    _start_ray(request)
    client = mlflow_tracking.tracking_client(state["tracking_uri"])
    client.update_run(state["parent_run_id"], status="RUNNING")
    print(
        f"resuming sweep {state['run_name']} ({len(trials)} trials) from {run_dir}",
        file=stream,
        flush=True,
    )
    fit_seconds = _fit(state, trials, resources, request, restore=True)
    return _finish(state, run_dir, trials, stream, set_status=True, fit_seconds=fit_seconds)


def _fit(
    state: Mapping[str, Any],
    trials: Sequence[Trial],
    resources: Resources,
    request: SweepRequest,
    restore: bool,
) -> float:
    """Run the Tune experiment (or continue it); failed trials do not raise. Returns the
    wall time of the run in seconds."""
    experiment_path = state["experiment_path"]
    trainable = tune.with_resources(run_trial, resources.trainable_resources())
    if restore and tune.Tuner.can_restore(experiment_path):
        tuner = tune.Tuner.restore(
            experiment_path,
            trainable,
            resume_unfinished=True,
            restart_errored=request.retry_failed,
        )
    else:  # new, or interrupted before Tune saved any state: start over, same trials
        storage_path, name = experiment_path.rsplit("/", 1)
        execution = {
            "torch_trainer": resources.use_torch_trainer,
            "cpus_per_worker": resources.cpus_per_worker,
            "gpus_per_worker": resources.gpus_per_worker,
            "max_failures": state["max_failures"],
            "run_name": state["run_name"],
            "train_storage_path": f"{storage_path}/train",
        }
        cells = [
            {"trial_id": trial.trial_id, "experiment": trial.config.model_dump(mode="json")}
            for trial in trials
        ]
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(cells), "execution": execution},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=resources.max_concurrent_trials,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                # Reused actors skip the imports and the actor start (most of a quick
                # trial's overhead). Each trial runs on a new thread of the same process;
                # glibc gives every thread its own malloc arena and keeps freed memory
                # there, which grew two reused actors to 10 GB over the quick matrix. The
                # runtime environment caps the arenas (MALLOC_ARENA_MAX) and each trial
                # hands its freed memory back (malloc_trim), see _TRIAL_ENV.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                # In-process trials retry here; TorchTrainer trials retry inside the trainer.
                failure_config=tune.FailureConfig(
                    max_failures=0 if resources.use_torch_trainer else state["max_failures"]
                ),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
                callbacks=[SweepProgress(len(trials), state["metric"], request.progress_every_s)],
            ),
        )
    started = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """``ray.init`` with the trial environment (``_TRIAL_ENV``): a running cluster at
    ``address`` (e.g. ``"auto"``) or a local one with ``num_cpus``."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
    runtime_env = {"env_vars": trial_environment()}
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env
        )


def _start_ray(request: SweepRequest) -> dict[str, float] | None:
    """Connect to ``--address`` or start a local Ray; the totals that bound the request.

    A remote cluster may still grow (autoscaler), so its totals are not used to refuse a
    request; a local cluster's are final.
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # never write ~/.ray/auth_token
    # Every epoch checkpoints with num_to_keep=1, so Tune snapshots its state often on
    # purpose (a resume must see the latest checkpoint); its warning about that is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        init_ray(address=request.address, num_cpus=request.num_cpus)
    if request.address:
        return None
    return {key: float(value) for key, value in ray.cluster_resources().items()}


# --- results ----------------------------------------------------------------------------------
_REPORTED_METRICS = ("test_top1", "test_macro_f1", "val_top1", "val_macro_f1", "loss", "epoch")


def collect_records(experiment_path: str, trials: Sequence[Trial]) -> list[TrialRecord]:
    """One :class:`TrialRecord` per trial, from Tune's experiment state (any progress).

    A metric's value is its last reported one (evaluation epochs report ``test_*``, other
    epochs do not); trials Tune never started are PENDING.
    """
    found: dict[str, tuple[Any, Any]] = {}
    if tune.Tuner.can_restore(experiment_path):
        analysis = tune.ExperimentAnalysis(experiment_path)
        frames = analysis.trial_dataframes
        for tune_trial in analysis.trials:
            found[_trial_name(tune_trial)] = (tune_trial, frames.get(tune_trial.trial_id))
    records = []
    for trial in trials:
        cfg = trial.config
        record = TrialRecord(
            trial_id=trial.trial_id,
            status="PENDING",
            panel=trial.panel,
            first=trial.first,
            second=trial.second,
            pipeline=list(cfg.augment.pipeline),
            frontend=cfg.frontend.name,
            encoder=cfg.model.encoder,
        )
        if trial.trial_id in found:
            tune_trial, frame = found[trial.trial_id]
            record.status = {"TERMINATED": FINISHED, "ERROR": FAILED}.get(
                tune_trial.status, tune_trial.status
            )
            if frame is not None and not frame.empty:
                for name in _REPORTED_METRICS:
                    if name in frame.columns and frame[name].notna().any():
                        record.metrics[name] = float(frame[name].dropna().iloc[-1])
            if "epoch" in record.metrics:
                record.epochs = int(record.metrics["epoch"]) + 1
            record.wall_seconds = (tune_trial.last_result or {}).get("time_total_s")
            if record.status == FAILED:
                record.error = _error_summary(tune_trial.error_file)
        records.append(record)
    return records


def _error_summary(error_file: str | None) -> str:
    """The exception line of a Tune error file (its last non-empty line), shortened."""
    if not error_file or not Path(error_file).is_file():
        return "failed (no error file)"
    lines = [line.strip() for line in Path(error_file).read_text().splitlines() if line.strip()]
    return (lines[-1] if lines else "failed")[:300]


def _finish(
    state: Mapping[str, Any],
    run_dir: Path,
    trials: list[Trial],
    stream: TextIO,
    set_status: bool,
    fit_seconds: float | None = None,
) -> SweepOutcome:
    """Write the report, attach it to the parent run, end the parent, print the summary."""
    from core import tracking as mlflow_tracking

    records = collect_records(state["experiment_path"], trials)
    report = write_report(
        records,
        run_dir / "report",
        codes=state["matrix_codes"],
        panels=state["panels"],
        metric=state["metric"],
        name=state["ablation"],
    )
    uri, parent = state["tracking_uri"], state["parent_run_id"]
    log_report_to_run(uri, parent, report.files)
    client = mlflow_tracking.tracking_client(uri)
    for panel, matrix in report.matrices.items():
        corner = matrix.values[-1, -1]
        if not math.isnan(corner):
            client.log_metric(parent, f"{state['metric']}_mean_{panel}", float(corner))
        if matrix.best is not None:
            client.log_metric(parent, f"{state['metric']}_best_{panel}", matrix.best[2])
    outcome = SweepOutcome(
        run_name=state["run_name"],
        run_dir=run_dir,
        trials=trials,
        resources=Resources(**state["resources"]),
        parent_run_id=parent,
        tracking_uri=uri,
        experiment=state["experiment"],
        records=records,
        report=report,
        fit_seconds=fit_seconds,
    )
    if set_status:
        mlflow_tracking.finish_run(uri, parent, "FINISHED" if outcome.complete else "KILLED")
    lines = [
        "",
        f"sweep {state['run_name']}"
        + (f" ({fit_seconds / 60:.1f} min)" if fit_seconds is not None else ""),
        report.summary,
        f"report: {run_dir / 'report'}",
        mlflow_hint(uri, state["experiment"], parent),
    ]
    if not outcome.complete:
        lines.append(
            f"the sweep is incomplete; continue it with --resume {state['run_name']} "
            f"(--results {run_dir.parent})"
        )
    outcome.summary = "\n".join(lines)
    print(outcome.summary, file=stream, flush=True)
    return outcome
