"""Model-based search (Optuna TPE through Ray Tune's ``OptunaSearch``) and successive
halving (ASHA) for grids and searches.

A grid answers "which of these cells is best" by running all of them; a search answers
"which settings are best" by sampling where the results so far are good. Both can stop
weak trials early: ASHA compares trials at *rungs* (evaluation epochs ``eval_every``,
2x, 4x ... that) and stops those below the median of the trials that reached the rung.

Search-space files for a search hold ``ablation``, ``description``, ``metric``, ``base``
and ``presets`` as grid files do, and a ``search:`` section instead of ``axes``::

    search:
      samples: 16            # trials per invocation (--samples)
      mode: max              # max or min of ``metric``
      startup_trials: 8      # random samples before TPE models the results
      seed: 0                # the sampler's seed (shifted by the trials already in the study)
      reduction_factor: 2    # ASHA keeps 1/reduction_factor of the trials at each rung
      params:                # dotted config field -> one distribution
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        method.temperature: {uniform: [0.05, 1.0]}
        model.proj_dim: {choice: [32, 64, 128]}
        train.epochs: {int: [5, 20]}               # {int: [a, b], log: true} for a log scale
        augment.pipeline: {pairs: [PS, FD, TM]}    # the ordered pairs "A+B" (and "A")

A search lives in ``<results>/<run name>/``: ``search.json`` (:class:`SearchState`),
``optuna.db`` (the Optuna study, named after the run, that ``--resume`` continues),
``tune/``, ``tune-2/`` ... (one Tune experiment per invocation) and ``search/`` (the
plots, the trials table and the best config, also on the MLflow parent run).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from core.config import ConfigError, ExperimentConfig, known_fields
from core.dotted import get_dotted
from core.sweep.preflight import check_trials
from core.sweep.progress import SweepProgress
from core.sweep.resources import ResourceError, Resources, local_resources, replan
from core.sweep.space import (
    CELL,
    SearchSpace,
    SearchSpaceError,
    Trial,
    expand_trials,
    label_of,
    parse_shared_sections,
    read_space_file,
)
from core.sweep.state import TUNE_DIR_NAME, unique_run_name
from core.sweep.trial import run_trial, trial_name
from core.tracking import RunIdentity

if TYPE_CHECKING:
    import optuna

    from core.sweep.driver import SweepRequest

SEARCH_FILE = "search.json"
STUDY_FILE = "optuna.db"
SEARCH_DIR_NAME = "search"  # local folder and MLflow artifact path of the search's report
_TOP_LEVEL_KEYS = ("ablation", "description", "metric", "base", "presets", "search")
_SEARCH_KEYS = ("samples", "mode", "startup_trials", "seed", "reduction_factor", "params")
_KINDS = ("uniform", "loguniform", "int", "choice", "pairs")


# --- successive halving ---------------------------------------------------------------------
def allow_sparse_metrics() -> None:
    """Let trials report the test metric only at evaluation epochs.

    Tune refuses a result without the metric that its scheduler or searcher watches (the
    whole run fails), but :func:`core.train.run_loop` evaluates every ``eval_every``
    epochs and reports every epoch. ASHA skips results without its metric and
    :class:`_Searcher` does too; its rungs fall on evaluation epochs, so no decision is
    lost."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")


def metric_mode(metric: str) -> str:
    """``min`` for losses and errors, ``max`` for scores (top-1, F1)."""
    return "min" if any(word in metric for word in ("loss", "error")) else "max"


def halving_rungs(eval_every: int, epochs: int, reduction_factor: float = 2) -> list[int]:
    """The epochs at which ASHA compares trials: ``eval_every`` x ``reduction_factor``**k
    before the last epoch (every one an evaluation epoch, so the metric is there)."""
    rungs, rung = [], float(eval_every)
    while rung < epochs:
        rungs.append(int(rung))
        rung *= reduction_factor
    return rungs


def describe_halving(
    eval_every: int, epochs: int, metric: str, mode: str, reduction_factor: float = 2
) -> str:
    """One line on what ASHA will do with these budgets (for dry runs and the driver)."""
    rungs = halving_rungs(eval_every, epochs, reduction_factor)
    if not rungs:
        return (
            f"ASHA: nothing to halve (train.eval_every={eval_every} >= train.epochs={epochs}: "
            f"the first comparison would be at the last epoch); every trial runs to the end. "
            f"Evaluate more often (--set train.eval_every=...) or train longer"
        )
    kept = "the median" if reduction_factor == 2 else f"the best 1/{reduction_factor:g}"
    return (
        f"ASHA on {metric} ({mode}): at epochs {', '.join(map(str, rungs))} of {epochs}, a "
        f"trial worse than {kept} of the trials that reached that epoch stops"
    )


class HalvingScheduler(ASHAScheduler):
    """Ray's ASHA with the two exceptions a clarlab sweep needs.

    - Trials named in ``exempt`` (the untrained control and the supervised reference of
      a grid) are never compared or stopped: they are the reference points of every
      cell, at the full budget, and their scores would move the cells' cutoffs.
    - A trial's last epoch is never a stop: it ends by itself, and a stop there would
      interrupt its final report instead.
    """

    def __init__(self, *, exempt: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.exempt = frozenset(exempt)

    def _is_exempt(self, trial: Any) -> bool:
        cell = (getattr(trial, "config", None) or {}).get("cell") or {}
        return cell.get("trial_id") in self.exempt

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._is_exempt(trial):
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id not in self._trial_info:  # exempt
            return TrialScheduler.CONTINUE
        if self._time_attr in result and result[self._time_attr] >= self._max_t:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)


def halving_scheduler(
    *,
    metric: str,
    mode: str,
    eval_every: int,
    epochs: int,
    reduction_factor: float = 2,
    exempt: Sequence[str] = (),
) -> HalvingScheduler | None:
    """ASHA with rungs on evaluation epochs (grace period ``eval_every``), or None when
    the budget leaves nothing to halve."""
    if not halving_rungs(eval_every, epochs, reduction_factor):
        return None
    return HalvingScheduler(
        exempt=exempt,
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=epochs,
        grace_period=eval_every,
        reduction_factor=reduction_factor,
    )


def check_halving(trials: Sequence[Trial]) -> tuple[int, int]:
    """(eval_every, epochs) shared by the grid's cells; ASHA's rungs must be evaluation
    epochs of every cell, so cells that differ in either cannot be halved together."""
    cells = [trial for trial in trials if trial.role == CELL] or list(trials)
    budgets = {(t.config.train.eval_every, t.config.train.epochs) for t in cells}
    if len(budgets) > 1:
        shown = ", ".join(f"eval_every={e} epochs={n}" for e, n in sorted(budgets))
        raise SearchSpaceError(
            f"--scheduler asha compares cells at the same evaluation epochs, but the cells "
            f"differ ({shown}); give them one train.epochs and train.eval_every, or use "
            f"--scheduler fifo"
        )
    return next(iter(budgets))


def grid_scheduler(
    trials: Sequence[Trial], metric: str, kind: str | None
) -> HalvingScheduler | None:
    """The scheduler of a grid sweep: None for ``fifo`` (every trial runs to the end),
    ASHA over the cells for ``asha``, with the controls exempt."""
    if kind in (None, "fifo"):
        return None
    if kind != "asha":
        raise SearchSpaceError(f"unknown scheduler {kind!r}; valid: fifo, asha")
    eval_every, epochs = check_halving(trials)
    mode = metric_mode(metric)
    print(describe_halving(eval_every, epochs, metric, mode), flush=True)
    return halving_scheduler(
        metric=metric,
        mode=mode,
        eval_every=eval_every,
        epochs=epochs,
        exempt=[trial.trial_id for trial in trials if trial.role != CELL],
    )


# --- the search space -----------------------------------------------------------------------
@dataclass(frozen=True)
class SearchParam:
    """One sampled config field and its distribution.

    List-valued fields (``augment.pipeline``) are sampled as labels (``"FD+TM"``, a
    single code for a one-augmentation pipeline): Optuna's categorical values must be
    plain values, and labels read well in its plots and tables."""

    field: str
    kind: str  # one of _KINDS; "pairs" is a categorical over the pairs of ``codes``
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def is_list(self) -> bool:
        return isinstance(get_dotted(ExperimentConfig().model_dump(), self.field, None), list)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (its name is the dotted field)."""
        if self.kind in ("uniform", "loguniform"):
            return trial.suggest_float(self.field, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.field, list(self.choices))

    def to_config(self, value: Any) -> Any:
        """The config value of a sampled one (a label back into its list of codes)."""
        if self.is_list and isinstance(value, str):
            return [] if value == "none" else value.split("+")
        return value

    def extremes(self) -> list[Any]:
        """Values that, if valid, make every sample of this parameter valid."""
        if self.kind in ("choice", "pairs"):
            return [self.to_config(choice) for choice in self.choices]
        low, high = (int(self.low), int(self.high)) if self.kind == "int" else (self.low, self.high)
        return [low, high]

    def describe(self) -> str:
        if self.kind == "pairs":
            return f"{len(self.choices)} pairs: {', '.join(map(str, self.choices))}"
        if self.kind == "choice":
            return f"one of {', '.join(map(str, self.choices))}"
        scale = "log-uniform" if self.log else "uniform"
        kind = "integer " if self.kind == "int" else ""
        return f"{kind}{scale} in [{self.low:g}, {self.high:g}]"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SearchParam:
        return cls(**{**raw, "choices": tuple(raw.get("choices") or ())})


@dataclass(frozen=True)
class SearchSettings:
    """The ``search:`` section of a search-space file."""

    params: tuple[SearchParam, ...]
    samples: int = 16
    mode: str = "max"
    startup_trials: int = 8
    seed: int = 0
    reduction_factor: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "params": [param.to_dict() for param in self.params]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SearchSettings:
        params = tuple(SearchParam.from_dict(item) for item in raw["params"])
        return cls(**{**raw, "params": params})


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SearchSpaceError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _parse_param(dotted: str, spec: Any, where: str) -> SearchParam:
    fields = set(known_fields())
    if dotted not in fields:
        section = dotted.split(".")[0]
        valid = sorted(name for name in fields if name.startswith(f"{section}.")) or sorted(fields)
        raise SearchSpaceError(f"{where}: unknown field {dotted!r}; valid: {', '.join(valid)}")
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"{where}: expected one of {{{': [...]}, {'.join(_KINDS)}: [...]}}, got {spec!r}"
        )
    kinds = [kind for kind in _KINDS if kind in spec]
    extra = set(spec) - set(_KINDS) - ({"log"} if kinds == ["int"] else set())
    if len(kinds) != 1 or extra:
        raise SearchSpaceError(
            f"{where}: exactly one of {', '.join(_KINDS)} (plus 'log: true' for int); got "
            f"keys {sorted(spec)}"
        )
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise SearchSpaceError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    param = SearchParam(field=dotted, kind=kind)
    if kind in ("uniform", "loguniform", "int"):
        if len(values) != 2:
            raise SearchSpaceError(f"{where}.{kind}: expected [low, high], got {values!r}")
        low, high = (_number(value, f"{where}.{kind}") for value in values)
        if kind == "int" and not (low.is_integer() and high.is_integer()):
            raise SearchSpaceError(f"{where}.int: expected whole numbers, got {values!r}")
        log = kind == "loguniform" or bool(spec.get("log", False))
        if not low < high or (log and low <= 0):
            raise SearchSpaceError(
                f"{where}.{kind}: expected low < high{' and low > 0 on a log scale' if log else ''}"
                f", got {values!r}"
            )
        return replace(param, low=low, high=high, log=log)
    if kind == "pairs":
        if not param.is_list or not all(isinstance(code, str) for code in values):
            raise SearchSpaceError(
                f"{where}.pairs: expects codes (strings) of a list-valued field such as "
                f"augment.pipeline; got {dotted!r} with {values!r}"
            )
        if len(set(values)) != len(values):
            raise SearchSpaceError(f"{where}.pairs: duplicate codes in {values!r}")
        pairs = [
            label_of([first] if first == second else [first, second])
            for first, second in itertools.product(values, values)
        ]
        return replace(param, choices=tuple(pairs))
    labels = [label_of(value) if isinstance(value, list) else value for value in values]
    if not all(isinstance(label, str | int | float | bool) for label in labels):
        raise SearchSpaceError(f"{where}.choice: expected plain values or lists, got {values!r}")
    if len(set(map(str, labels))) != len(labels):
        raise SearchSpaceError(f"{where}.choice: duplicate values in {values!r}")
    return replace(param, choices=tuple(labels))


def _parse_settings(raw: Any, where: str) -> SearchSettings:
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping with keys {', '.join(_SEARCH_KEYS)}")
    unknown = sorted(set(raw) - set(_SEARCH_KEYS))
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_SEARCH_KEYS)}"
        )
    params_raw = raw.get("params")
    if not isinstance(params_raw, Mapping) or not params_raw:
        raise SearchSpaceError(f"{where}.params: expected a mapping dotted field -> distribution")
    params = tuple(
        _parse_param(str(dotted), spec, f"{where}.params.{dotted}")
        for dotted, spec in params_raw.items()
    )
    settings = SearchSettings(params=params)
    for key, kind in (("samples", int), ("startup_trials", int), ("seed", int)):
        if key in raw:
            value = raw[key]
            if not isinstance(value, kind) or isinstance(value, bool) or value < 0:
                raise SearchSpaceError(
                    f"{where}.{key}: expected a whole number >= 0, got {value!r}"
                )
            settings = replace(settings, **{key: value})
    if settings.samples < 1:
        raise SearchSpaceError(f"{where}.samples: expected at least 1")
    if "mode" in raw:
        if raw["mode"] not in ("max", "min"):
            raise SearchSpaceError(f"{where}.mode: expected max or min, got {raw['mode']!r}")
        settings = replace(settings, mode=raw["mode"])
    if "reduction_factor" in raw:
        factor = _number(raw["reduction_factor"], f"{where}.reduction_factor")
        if factor <= 1:
            raise SearchSpaceError(f"{where}.reduction_factor: expected > 1, got {factor:g}")
        settings = replace(settings, reduction_factor=factor)
    return settings


def load_search(name_or_path: str | Path) -> tuple[SearchSpace, SearchSettings]:
    """Read a search-space file with a ``search:`` section; the shared parts (base,
    presets) get the same checks as a grid's, and errors name the file and the key."""
    path, raw = read_space_file(name_or_path, _TOP_LEVEL_KEYS)
    if "search" not in raw:
        raise SearchSpaceError(
            f"{path}: no 'search:' section; a grid (axes) runs with its own script, e.g. "
            f"ablations/run_aug_matrix.py --search-space {path}"
        )
    base, presets = parse_shared_sections(raw, path)
    space = SearchSpace(
        source=path,
        ablation=str(raw.get("ablation") or path.stem),
        description=str(raw.get("description") or ""),
        metric=str(raw.get("metric", "test_top1")),
        base=base,
        presets=presets,
        axes=(),
    )
    return space, _parse_settings(raw["search"], f"{path}: search")


@dataclass(frozen=True)
class PreparedSearch:
    """A validated search: the base trial every sample starts from and what is sampled."""

    space: SearchSpace
    settings: SearchSettings
    base: Trial
    resources: Resources
    notes: tuple[str, ...] = ()


def _request_overrides(request: SweepRequest) -> dict[str, Any]:
    """``--set`` and the shared flags as dotted fields (as ``driver.prepare_trials``)."""
    overrides = dict(request.overrides)
    if request.workers_per_trial is not None:
        overrides["train.num_workers"] = request.workers_per_trial
    if request.gpus_per_worker is not None:
        overrides["train.use_gpu"] = request.gpus_per_worker > 0
    for name in ("data.root", "data.extra_root", "data.cache_dir", "model.pretrained"):
        # Trials run in folders Tune chooses: relative paths are resolved here.
        if overrides.get(name) is not None:
            overrides[name] = str(Path(overrides[name]).expanduser().resolve())
    return overrides


def prepare_search(request: SweepRequest) -> PreparedSearch:
    """Load the search space, compose the base config and check every sample could run
    (each parameter's extremes validate; no Ray yet)."""
    space, settings = load_search(request.search_space)
    overrides = _request_overrides(request)
    sampled = {param.field for param in settings.params}
    clash = sorted(sampled & set(overrides))
    if clash:
        raise SearchSpaceError(
            f"overrides (--set): {', '.join(clash)} is sampled by the search of {space.source}; "
            f"edit its search.params (or remove the field there) to fix it"
        )
    (base,) = expand_trials(space, preset=request.preset, overrides=overrides)
    config = base.config
    notes = []
    own_fields = type(config.method).model_fields
    params = []
    for param in settings.params:
        name = param.field.split(".", 1)[1]
        if param.field.startswith("method.") and name not in own_fields:
            notes.append(f"{config.method.name} has no {param.field}: not searched")
            continue
        params.append(param)
    if not params:
        raise SearchSpaceError(f"{space.source}: nothing left to search for {config.method.name}")
    settings = replace(settings, params=tuple(params))
    for param in settings.params:
        for value in param.extremes():
            try:
                config.with_overrides({param.field: value}, source=f"{space.source}: search")
            except ConfigError as error:
                raise SearchSpaceError(
                    f"{space.source}: search.params.{param.field}: the value {value!r} is "
                    f"invalid: {error}"
                ) from None
    from core.sweep.driver import plan_for_request

    resources = plan_for_request(request, config.train)
    return PreparedSearch(space, settings, base, resources, tuple(notes))


def _largest(search: PreparedSearch) -> Trial:
    """The base trial at the largest sampled batch size (the preflight's worst case)."""
    batch = next((p for p in search.settings.params if p.field == "train.batch_size"), None)
    if batch is None:
        return search.base
    largest = max(int(value) for value in batch.extremes())
    config = search.base.config.with_overrides({"train.batch_size": largest})
    return replace(search.base, config=config)


# --- Tune pieces ----------------------------------------------------------------------------
def sample_id(number: int) -> str:
    """The trial id (Tune trial name, MLflow trial tag) of the study's trial ``number``:
    stable and unique across ``--resume``, which numbers on."""
    return f"sample-{number:03d}"


class _SampleSpace:
    """Optuna's define-by-run space: draws every parameter and names the Tune trial after
    the study's trial number (a class, not a closure: Tune pickles the searcher)."""

    def __init__(self, params: Sequence[SearchParam]) -> None:
        self.params = tuple(params)

    def __call__(self, trial: Any) -> dict[str, Any]:
        for param in self.params:
            param.suggest(trial)
        return {"cell": {"trial_id": sample_id(trial.number)}}


class _Searcher(OptunaSearch):
    """``OptunaSearch`` for trials that report the metric only at evaluation epochs, with
    ASHA's stops told to Optuna as pruned.

    A trial ASHA stopped is PRUNED in the study (its last evaluation is its last
    intermediate value), not COMPLETE with a score from a shorter budget: the best config
    is chosen among trials that ran the whole budget, and TPE ranks the stopped ones below
    the finished ones, as Optuna's own pruners do."""

    def __init__(self, *args: Any, full_budget: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.full_budget = full_budget

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        epochs = int((result or {}).get("training_iteration") or 0)
        with contextlib.suppress(Exception):
            ot_trial.set_user_attr("epochs", epochs)
        stopped = (
            not error
            and result is not None
            and self.metric in result
            and epochs < self.full_budget
            and not result.get("early_stopped")
        )
        if not stopped:
            super().on_trial_complete(trial_id, result, error)
            return
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step reported twice is only a warning
            ot_trial.report(float(result[self.metric]), epochs)
        ot_trial.set_user_attr("stopped_early", True)
        try:
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # the searcher must never end the experiment
            print(f"warning: optuna: {exc}", file=sys.stderr)
        self._completed_trials.add(trial_id)


def run_sample(params: dict[str, Any]) -> None:
    """The Tune trainable of a search: the base config with the sampled fields, validated
    here (a bad sample fails its trial, not the search), run by :func:`run_trial`."""
    search = params["search"]
    trial_id = params["cell"]["trial_id"]
    sampled = {
        param.field: param.to_config(params[param.field])
        for param in map(SearchParam.from_dict, search["params"])
        if param.field in params
    }
    base = ExperimentConfig.from_payload(search["base"])
    config = base.with_overrides(sampled, source=f"{trial_id} ({search['search_space']})")
    identity = RunIdentity.from_dict(search["identity"]).for_trial(trial_id)
    cell = {"trial_id": trial_id, "experiment": config.to_payload(), "identity": identity.to_dict()}
    run_trial({"cell": cell, "execution": params["execution"]})


# --- state ----------------------------------------------------------------------------------
@dataclass
class SearchState:
    """What a search needs to be resumed or reported on (``search.json``)."""

    run_name: str
    ablation: str
    search_space: str
    preset: str | None
    identity: RunIdentity  # the parent's identity: tracking URI, experiment, parent run id
    metric: str
    settings: SearchSettings
    base: ExperimentConfig
    resources: Resources
    scheduler: str | None
    storage_root: str  # where Tune keeps <run name>/tune*/ (local results or shared storage)
    max_failures: int
    command_line: str
    invocations: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def tracking_uri(self) -> str:
        assert self.identity.tracking_uri, "a search's identity always has a resolved URI"
        return self.identity.tracking_uri

    @property
    def parent_run_id(self) -> str:
        assert self.identity.parent_run_id, "a search's identity always has its parent run"
        return self.identity.parent_run_id

    def to_json(self) -> dict[str, Any]:
        return {
            **{key: getattr(self, key) for key in ("run_name", "ablation", "search_space")},
            "preset": self.preset,
            "identity": self.identity.to_dict(),
            "metric": self.metric,
            "settings": self.settings.to_dict(),
            "base": self.base.model_dump(mode="json"),
            "resources": asdict(self.resources),
            "scheduler": self.scheduler,
            "storage_root": self.storage_root,
            "max_failures": self.max_failures,
            "command_line": self.command_line,
            "invocations": self.invocations,
            "created": self.created,
        }

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        temporary = run_dir / f".{SEARCH_FILE}.tmp"
        temporary.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(temporary, run_dir / SEARCH_FILE)
        from core.sweep import trust

        # --resume unpickles Tune's state and opens the Optuna study: only for folders
        # this user's clarlab wrote (core/sweep/trust.py).
        trust.record_trusted(run_dir / SEARCH_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> SearchState:
        path = run_dir / SEARCH_FILE
        raw = json.loads(path.read_text())
        return cls(
            **{key: raw[key] for key in ("run_name", "ablation", "search_space", "preset")},
            identity=RunIdentity.from_dict(raw["identity"]),
            metric=raw["metric"],
            settings=SearchSettings.from_dict(raw["settings"]),
            base=ExperimentConfig.from_dict(raw["base"], source=str(path)),
            resources=Resources(**raw["resources"]),
            scheduler=raw["scheduler"],
            storage_root=raw["storage_root"],
            max_failures=raw["max_failures"],
            command_line=raw["command_line"],
            invocations=raw["invocations"],
            created=raw["created"],
        )


def study_url(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / STUDY_FILE}"


def find_search(results_dir: Path, which: str | bool) -> Path:
    """The folder of a previous search: by run name (or path), or the latest one."""
    if isinstance(which, str):
        for candidate in (Path(which), results_dir / which):
            if (candidate / SEARCH_FILE).is_file():
                return candidate.resolve()
        raise SearchSpaceError(
            f"no search {which!r} under {results_dir} (no {results_dir / which / SEARCH_FILE}); "
            f"pass the run name printed when the search started"
        )
    found = []
    for state_file in results_dir.glob(f"*/{SEARCH_FILE}"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            found.append((float(json.loads(state_file.read_text())["created"]), state_file.parent))
    if not found:
        raise SearchSpaceError(f"no previous search under {results_dir}")
    return max(found)[1]


# --- outcome and report ---------------------------------------------------------------------
@dataclass
class SearchOutcome:
    """What a search invocation left behind."""

    run_name: str
    run_dir: Path
    study_name: str
    storage: str
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    trials: int = 0  # trials in the study (every invocation)
    best: dict[str, Any] | None = None  # number, value, params (config values)
    failed: list[str] = field(default_factory=list)  # this invocation's failed trials
    complete: bool = True  # every trial of this invocation ended
    summary: str = ""
    fit_seconds: float | None = None


def _state_name(trial: optuna.trial.FrozenTrial) -> str:
    return trial.state.name.lower()


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return label_of(value)


def trials_table(study: optuna.Study, metric: str, params: Sequence[SearchParam]) -> str:
    """One line per trial of the study: its id, state, score, epochs and parameters."""
    names = [param.field for param in params]
    header = ["trial", "state", metric, "epochs", *names]
    rows = [header]
    for trial in study.trials:
        # A pruned (ASHA-stopped) trial's value is its last evaluation, at fewer epochs.
        value = "" if trial.value is None else f"{trial.value:.4f}"
        epochs = trial.user_attrs.get("epochs", "")
        shown = [_value_text(trial.params[name]) if name in trial.params else "" for name in names]
        rows.append([sample_id(trial.number), _state_name(trial), value, str(epochs), *shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    return [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]


def _write_plots(study: optuna.Study, folder: Path, metric: str, lines: list[str]) -> list[Path]:
    """Optuna's optimisation history and parameter importances, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    completed = _completed(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        axes = optuna_plots.plot_optimization_history(study, target_name=metric)
        path = folder / "optimization_history.png"
        axes.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
        varying = [
            name
            for name in {name for trial in completed for name in trial.params}
            if len({repr(trial.params.get(name)) for trial in completed}) > 1
        ]
        if len(completed) < 2 or not varying:
            lines.append(
                f"parameter importances: not drawn; they need at least 2 completed trials "
                f"whose parameters differ (the study has {len(completed)} completed)"
            )
            return written
        try:
            importances = optuna.importance.get_param_importances(study)
            axes = optuna_plots.plot_param_importances(study, target_name=metric)
        except (ValueError, RuntimeError) as error:
            lines.append(f"parameter importances: not drawn ({error})")
            return written
        path = folder / "param_importances.png"
        axes.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
    shown = ", ".join(f"{name} {value:.2f}" for name, value in importances.items())
    lines.append(f"parameter importances ({len(completed)} completed trials): {shown}")
    return written


def finish_search(
    state: SearchState,
    run_dir: Path,
    stream: TextIO,
    *,
    set_status: bool,
    complete: bool = True,
    failed: Sequence[str] = (),
    fit_seconds: float | None = None,
) -> SearchOutcome:
    """The study's report: plots, trials table and best config, on disk under ``search/``
    and on the MLflow parent run; ends the parent; prints the best config and the table."""
    import optuna

    from core import tracking as mlflow_tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=state.run_name, storage=study_url(run_dir))
    folder = run_dir / SEARCH_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    files = _write_plots(study, folder, state.metric, lines)
    frame = study.trials_dataframe()
    if not frame.empty:
        frame.insert(0, "trial", [sample_id(number) for number in frame["number"]])
    frame.to_csv(folder / "trials.csv", index=False)
    files.append(folder / "trials.csv")

    outcome = SearchOutcome(
        run_name=state.run_name,
        run_dir=run_dir,
        study_name=state.run_name,
        storage=study_url(run_dir),
        parent_run_id=state.parent_run_id,
        tracking_uri=state.tracking_uri,
        trials=len(study.trials),
        failed=list(failed),
        complete=complete,
        fit_seconds=fit_seconds,
    )
    client = mlflow_tracking.tracking_client(state.tracking_uri)
    parent = state.parent_run_id
    completed = _completed(study)
    params = {param.field: param for param in state.settings.params}
    if completed:
        best = study.best_trial
        values = {name: params[name].to_config(value) for name, value in best.params.items()}
        outcome.best = {"number": best.number, "value": best.value, "params": values}
        best_config = state.base.with_overrides(values, source=f"best trial {best.number}")
        (folder / "best_config.yaml").write_text(best_config.to_yaml())
        files.append(folder / "best_config.yaml")
        # Tags, not params: a resumed search may find a better trial, and MLflow never
        # lets a run's param change.
        client.set_tag(parent, "best.trial", sample_id(best.number))
        for name, value in values.items():
            client.set_tag(parent, f"best.{name}", label_of(value))
        client.log_metric(parent, f"best_{state.metric}", float(best.value), step=len(completed))
        best_lines = [f"  {name}: {label_of(value)}" for name, value in values.items()]
        lines[:0] = [
            f"best {state.metric}: {best.value:.4f} ({sample_id(best.number)}, "
            f"{best.user_attrs.get('epochs', '?')} epochs)",
            *best_lines,
        ]
    else:
        lines.insert(0, f"no trial completed its budget yet; no best {state.metric}")
    client.log_metric(parent, "search_trials", len(study.trials), step=len(state.invocations))
    for path in files:
        client.log_artifact(parent, str(path), artifact_path=SEARCH_DIR_NAME)
    if set_status:
        mlflow_tracking.finish_run(state.tracking_uri, parent, "FINISHED" if complete else "KILLED")

    from core.sweep.results import mlflow_hint

    counts = {}
    for trial in study.trials:
        counts[_state_name(trial)] = counts.get(_state_name(trial), 0) + 1
    shown_counts = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    summary = [
        "",
        f"search {state.run_name}: {len(study.trials)} trials in study {state.run_name!r} "
        f"({shown_counts})" + (f"; {fit_seconds / 60:.1f} min" if fit_seconds else ""),
        *lines,
        "",
        trials_table(study, state.metric, state.settings.params),
        "",
        f"study: {study_url(run_dir)} (study {state.run_name!r})",
        f"report: {folder}",
        mlflow_hint(state.tracking_uri, state.identity.experiment, parent),
    ]
    if failed:
        summary.append(f"failed: {', '.join(failed)} (see their Tune error files)")
    if not complete:
        summary.append(
            f"the search was interrupted; --resume {state.run_name} (--results "
            f"{run_dir.parent}) samples more trials into the same study"
        )
    outcome.summary = "\n".join(summary)
    print(outcome.summary, file=stream, flush=True)
    return outcome


# --- the driver -----------------------------------------------------------------------------
def print_search_dry_run(
    request: SweepRequest, search: PreparedSearch, stream: TextIO, samples: int
) -> None:
    """What a search would run: the sampled parameters, the base trial, ASHA's rungs, the
    resources; checked against the dataset like a grid's trials."""
    sizes = check_trials([_largest(search)])[search.base.trial_id]
    config = search.base.config
    train = config.train
    width = max(len(param.field) for param in search.settings.params)
    lines = [
        f"search {search.space.ablation} ({search.space.source}): {samples} samples of "
        f"{config.method.name} by Optuna TPE ({search.settings.startup_trials} random first), "
        f"{search.settings.mode} {search.space.metric}",
        "",
        "sampled parameters:",
        *(f"  {param.field:<{width}}  {param.describe()}" for param in search.settings.params),
        *(f"  note: {note}" for note in search.notes),
        "",
        f"every sample: {config.frontend.name}/{config.model.encoder}, {config.data.dataset} at "
        f"{config.data.sample_rate} Hz (train/val/test {sizes.describe()}), {train.epochs} "
        f"epochs, evaluated every {train.eval_every}, batch {train.batch_size} unless sampled",
    ]
    if request.scheduler == "asha":
        lines.append(
            describe_halving(
                train.eval_every,
                train.epochs,
                search.space.metric,
                search.settings.mode,
                search.settings.reduction_factor,
            )
        )
    else:
        lines.append("scheduler: fifo (every sample runs its whole budget)")
    here = local_resources(request.num_cpus)
    lines.append(f"resources: {search.resources.describe()}")
    if not request.address:
        try:
            local = replan(search.resources, here)
            lines.append(f"  here: {local.max_concurrent_trials} sample(s) at once")
        except ResourceError as error:  # a cluster-sized preset looked at from a laptop
            lines.append(
                f"note: not runnable on this machine ({here['CPU']:g} CPU, {here['GPU']:g} "
                f"GPU): {error}"
            )
    lines.append(
        f"study: <results>/<run name>/{STUDY_FILE} (Optuna, SQLite); --resume RUN_NAME adds "
        f"--samples more to it"
    )
    if request.show_config:
        lines += ["", f"# base config of every sample ({search.base.trial_id})", config.to_yaml()]
    print("\n".join(lines), file=stream, flush=True)


def run_search(request: SweepRequest, stream: TextIO | None = None) -> SearchOutcome | None:
    """Validate, then start, resume or report on a search (see the module docstring).
    A dry run prints the plan and returns None."""
    stream = stream or sys.stdout
    results_dir = Path(request.results_dir).expanduser().resolve()
    if request.resume or request.report_only:
        run_dir = find_search(results_dir, request.resume or request.report_only)
        from core.sweep.trust import ensure_trusted

        ensure_trusted(run_dir, SEARCH_FILE)
        state = SearchState.load(run_dir)
        if request.report_only:
            return finish_search(state, run_dir, stream, set_status=False)
        return _continue_search(request, state, run_dir, stream)

    search = prepare_search(request)
    samples = request.samples or search.settings.samples
    if samples < 1:
        raise SearchSpaceError(f"--samples must be >= 1, got {samples}")
    if request.dry_run:
        print_search_dry_run(request, search, stream, samples)
        return None
    resources = search.resources
    if not request.address:
        resources = replan(resources, local_resources(request.num_cpus))
    check_trials([_largest(search)])

    from core import tracking as mlflow_tracking
    from core.sweep.driver import check_tracking_before_ray, reachable_tracking_uri, start_ray

    space, config = search.space, search.base.config
    run_name = request.run_name or unique_run_name(
        results_dir, f"{space.ablation}-{config.method.name}-{request.preset or 'base'}"
    )
    run_dir = results_dir / run_name
    if (run_dir / SEARCH_FILE).exists():
        raise SearchSpaceError(
            f"{run_dir} already holds a search; --resume {run_name} continues it"
        )
    identity = RunIdentity(
        tracking_uri=request.tracking_uri,
        experiment=request.experiment or f"clarlab-{space.ablation}",
        ablation=space.ablation,
        results_dir=results_dir,
    )
    tracking_uri = mlflow_tracking.resolve_tracking_uri(identity)
    server_checked = check_tracking_before_ray(tracking_uri, request)  # exit 2, one line
    resources = replan(resources, start_ray(request))
    identity = replace(identity, tracking_uri=reachable_tracking_uri(tracking_uri, stream))
    if not server_checked:
        mlflow_tracking.check_tracking_server(identity.tracking_uri)
    parent_run_id = mlflow_tracking.start_parent_run(
        identity,
        tags={
            "clarlab.preset": request.preset or "none",
            "clarlab.dataset": config.data.dataset,
            "clarlab.method": config.method.name,
            "clarlab.command_line": (request.command_line or " ".join(sys.argv))[:5000],
            "clarlab.search_space": str(space.source),
            "clarlab.sweep_run_name": run_name,
            "clarlab.search": "optuna-tpe",
            "clarlab.scheduler": request.scheduler or "fifo",
            "clarlab.study": f"{run_name} in {study_url(run_dir)}",
            "clarlab.results_kind": "pipeline check" if request.preset == "quick" else "results",
        },
        run_name=run_name,
    )
    state = SearchState(
        run_name=run_name,
        ablation=space.ablation,
        search_space=str(space.source),
        preset=request.preset,
        identity=replace(identity, parent_run_id=parent_run_id),
        metric=space.metric,
        settings=search.settings,
        base=config,
        resources=resources,
        scheduler=request.scheduler,
        storage_root=request.storage_path.rstrip("/") if request.storage_path else str(results_dir),
        max_failures=request.max_failures,
        command_line=request.command_line or " ".join(sys.argv),
    )
    state.save(run_dir)
    print(
        f"search {run_name}: {samples} samples of {config.method.name} over "
        f"{', '.join(param.field for param in search.settings.params)}; "
        f"{resources.describe()}\n  results: {run_dir}\n  " + mlflow_hint_line(state),
        file=stream,
        flush=True,
    )
    for note in search.notes:
        print(f"  note: {note}", file=stream, flush=True)
    return _sample(state, run_dir, samples, request, stream)


def mlflow_hint_line(state: SearchState) -> str:
    from core.sweep.results import mlflow_hint

    return mlflow_hint(state.tracking_uri, state.identity.experiment, state.parent_run_id)


def _continue_search(
    request: SweepRequest, state: SearchState, run_dir: Path, stream: TextIO
) -> SearchOutcome:
    """``--resume``: the same study (and parent run) gets ``--samples`` more trials, with
    the settings it started with (``--set`` and the other config flags do not apply).
    Trials an interrupted invocation left running are marked failed in the study and
    new ones are sampled: TPE learns from every finished trial either way."""
    from core import tracking as mlflow_tracking
    from core.sweep.driver import start_ray

    if request.overrides:
        print(
            f"note: --resume keeps the search's own config; ignoring "
            f"{', '.join(sorted(request.overrides))}",
            file=stream,
        )
    samples = request.samples or state.settings.samples
    mlflow_tracking.check_tracking_server(state.tracking_uri)
    start_ray(request)
    client = mlflow_tracking.tracking_client(state.tracking_uri)
    client.update_run(state.parent_run_id, status="RUNNING")
    print(
        f"resuming search {state.run_name} from {run_dir}: {samples} more samples",
        file=stream,
        flush=True,
    )
    return _sample(state, run_dir, samples, request, stream)


def _fail_stale(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by an interrupted invocation are over: mark them FAIL, so the
    study's counts and plots say what happened (no other process samples this study)."""
    import optuna

    stale = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for number in stale:
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return stale


def _sample(
    state: SearchState, run_dir: Path, samples: int, request: SweepRequest, stream: TextIO
) -> SearchOutcome:
    """Run ``samples`` trials into the study as one Tune experiment; then the report."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    allow_sparse_metrics()
    settings, config = state.settings, state.base
    storage = optuna.storages.RDBStorage(study_url(run_dir))
    study = optuna.create_study(
        study_name=state.run_name,
        storage=storage,
        direction="maximize" if settings.mode == "max" else "minimize",
        load_if_exists=True,
    )
    stale = _fail_stale(study)
    if stale:
        print(f"  trials {stale} were interrupted earlier: marked failed", file=stream)
    existing = len(study.trials)
    # The random start is seeded past the trials the study has, or a resumed search would
    # draw its first samples again.
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=settings.startup_trials,
        seed=settings.seed + existing,
        constant_liar=True,  # concurrent trials do not all get the same suggestion
    )
    searcher = _Searcher(
        _SampleSpace(settings.params),
        metric=state.metric,
        mode=settings.mode,
        sampler=sampler,
        study_name=state.run_name,
        storage=storage,
        # The untrained control's method trains one epoch (core.train.run_loop).
        full_budget=config.train.epochs if type(config.method).trains else 1,
    )
    scheduler = None
    if request.scheduler == "asha":  # each invocation's own (--scheduler; ASHA by default)
        scheduler = halving_scheduler(
            metric=state.metric,
            mode=settings.mode,
            eval_every=config.train.eval_every,
            epochs=config.train.epochs,
            reduction_factor=settings.reduction_factor,
        )
        print(
            "  "
            + describe_halving(
                config.train.eval_every,
                config.train.epochs,
                state.metric,
                settings.mode,
                settings.reduction_factor,
            ),
            file=stream,
            flush=True,
        )
    number = len(state.invocations) + 1
    name = TUNE_DIR_NAME if number == 1 else f"{TUNE_DIR_NAME}-{number}"
    storage_path = f"{state.storage_root}/{state.run_name}"
    resources = state.resources
    execution = {
        "torch_trainer": resources.use_torch_trainer,
        "cpus_per_worker": resources.cpus_per_worker,
        "gpus_per_worker": resources.gpus_per_worker,
        "worker_resources": resources.worker_resources(),
        "max_failures": state.max_failures,
        "run_name": state.run_name,
        "train_storage_path": f"{storage_path}/train",
    }
    constants = {
        "base": config.to_payload(),
        "identity": state.identity.to_dict(),
        "params": [param.to_dict() for param in settings.params],
        "search_space": state.search_space,
    }
    state.invocations.append(
        {
            "experiment_path": f"{storage_path}/{name}",
            "samples": samples,
            "scheduler": request.scheduler or "fifo",
            "started": time.time(),
        }
    )
    state.save(run_dir)
    tuner = tune.Tuner(
        tune.with_resources(run_sample, resources.trainable_resources()),
        param_space={"search": constants, "execution": execution},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=samples,
            max_concurrent_trials=resources.max_concurrent_trials,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            reuse_actors=True,  # as a grid's trials (see driver._fit)
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=tune.FailureConfig(
                max_failures=0 if resources.use_torch_trainer else state.max_failures
            ),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=[SweepProgress(samples, state.metric, request.progress_every_s)],
        ),
    )
    from core.sweep.driver import quiet_trial_errors

    quiet_trial_errors()
    started = time.perf_counter()
    grid = tuner.fit()
    fit_seconds = time.perf_counter() - started
    state.invocations[-1]["fit_seconds"] = fit_seconds
    state.save(run_dir)
    ended = {"TERMINATED", "ERROR"}
    statuses = {}
    with contextlib.suppress(Exception):
        analysis = tune.ExperimentAnalysis(f"{storage_path}/{name}")
        statuses = {trial_name(trial): trial.status for trial in analysis.trials}
    if not statuses:  # nothing saved yet: read what fit returned
        statuses = {
            result.config["cell"]["trial_id"]: "ERROR" if result.error else "TERMINATED"
            for result in grid
        }
    failed = sorted(name for name, status in statuses.items() if status == "ERROR")
    complete = len(statuses) == samples and all(status in ended for status in statuses.values())
    _fail_stale(optuna.load_study(study_name=state.run_name, storage=study_url(run_dir)))
    return finish_search(
        state,
        run_dir,
        stream,
        set_status=True,
        complete=complete,
        failed=failed,
        fit_seconds=fit_seconds,
    )


__all__ = [
    "HalvingScheduler",
    "SearchOutcome",
    "SearchParam",
    "SearchSettings",
    "SearchState",
    "allow_sparse_metrics",
    "check_halving",
    "describe_halving",
    "grid_scheduler",
    "halving_rungs",
    "halving_scheduler",
    "load_search",
    "prepare_search",
    "run_sample",
    "run_search",
    "sample_id",
]
