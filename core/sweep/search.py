"""Searches: a search file -> the sampled fields as Optuna distributions -> a validated
base trial every sample starts from.

No Ray here. A grid answers "which of these cells is best" by running all of them; a
search answers "which settings are best" by sampling where the results so far are good
(Optuna's TPE, :mod:`core.sweep.search_plan`). A search file is a space file
(:mod:`core.sweep.spacefile`) with a ``search:`` section instead of ``axes``::

    search:
      samples: 16            # trials per invocation (--samples)
      startup_trials: 8      # random samples before TPE models the results
      seed: 0                # the sampler's seed (shifted by the trials already in the study)
      reduction_factor: 2    # ASHA keeps 1/reduction_factor of the trials at each rung
      params:                # dotted config field -> one distribution
        optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
        method.temperature: {uniform: [0.05, 1.0]}
        model.proj_dim: {choice: [32, 64, 128]}
        train.epochs: {int: [5, 20]}               # {int: [a, b], log: true} for a log scale
        augment.pipeline: {pairs: [PS, FD, TM]}    # the ordered pairs "A+B" (and "A")

Each parameter becomes an ``optuna.distributions`` object (Float, Int or Categorical);
list-valued fields (``augment.pipeline``) are sampled as labels (``"FD+TM"``): Optuna's
categorical values must be plain values, and labels read well in its plots and tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from core.config import ConfigError, ExperimentConfig, compose, known_fields
from core.dotted import get_dotted, nest
from core.sweep.errors import SearchError
from core.sweep.request import SweepRequest, request_overrides
from core.sweep.spacefile import (
    SEARCH_KEY,
    SpaceFile,
    check_overrides,
    parse_space_file,
    read_space_file,
    unknown_field_error,
)
from core.sweep.trials import Trial, label_of

SETTING_KEYS = ("samples", "startup_trials", "seed", "reduction_factor", "params")
KINDS = ("uniform", "loguniform", "int", "choice", "pairs")


def is_list_field(dotted: str) -> bool:
    """Whether the config field holds a list (sampled as labels, see the docstring)."""
    return isinstance(get_dotted(ExperimentConfig().model_dump(), dotted, None), list)


def to_config(dotted: str, value: Any) -> Any:
    """The config value of a sampled one (a label back into its list of codes)."""
    if is_list_field(dotted) and isinstance(value, str):
        return [] if value == "none" else value.split("+")
    return value


def extremes(dotted: str, distribution: BaseDistribution) -> list[Any]:
    """Values that, if valid, make every sample of this parameter valid."""
    if isinstance(distribution, CategoricalDistribution):
        return [to_config(dotted, choice) for choice in distribution.choices]
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    return [distribution.low, distribution.high]


def describe(dotted: str, distribution: BaseDistribution) -> str:
    """A distribution in words, for the dry run."""
    if isinstance(distribution, CategoricalDistribution):
        shown = ", ".join(map(str, distribution.choices))
        if is_list_field(dotted):
            return f"{len(distribution.choices)} choices: {shown}"
        return f"one of {shown}"
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    scale = "log-uniform" if distribution.log else "uniform"
    kind = "integer " if isinstance(distribution, IntDistribution) else ""
    return f"{kind}{scale} in [{distribution.low:g}, {distribution.high:g}]"


def suggest(trial: Any, name: str, distribution: BaseDistribution) -> Any:
    """Draw ``name`` from an Optuna trial through its public ``suggest_*`` methods."""
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, list(distribution.choices))
    raise TypeError(f"{name}: no way to sample a {type(distribution).__name__}")


@dataclass(frozen=True)
class SearchSettings:
    """The ``search:`` section of a search file."""

    params: Mapping[str, BaseDistribution]  # dotted config field -> distribution
    samples: int = 16
    startup_trials: int = 8
    seed: int = 0
    reduction_factor: float = 2.0

    def to_json(self) -> dict[str, Any]:
        return {
            "params": {name: distribution_to_json(d) for name, d in self.params.items()},
            "samples": self.samples,
            "startup_trials": self.startup_trials,
            "seed": self.seed,
            "reduction_factor": self.reduction_factor,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SearchSettings:
        params = {name: json_to_distribution(text) for name, text in raw["params"].items()}
        return cls(**{**raw, "params": params})


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SearchError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _range(kind: str, values: list[Any], spec: Mapping[str, Any], where: str) -> BaseDistribution:
    if len(values) != 2:
        raise SearchError(f"{where}.{kind}: expected [low, high], got {values!r}")
    low, high = (_number(value, f"{where}.{kind}") for value in values)
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise SearchError(f"{where}.int: expected whole numbers, got {values!r}")
    log = kind == "loguniform" or bool(spec.get("log", False))
    if not low < high or (log and low <= 0):
        raise SearchError(
            f"{where}.{kind}: expected low < high{' and low > 0 on a log scale' if log else ''}"
            f", got {values!r}"
        )
    if kind == "int":
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(low, high, log=log)


def _categorical(kind: str, dotted: str, values: list[Any], where: str) -> BaseDistribution:
    if kind == "pairs":
        if not is_list_field(dotted) or not all(isinstance(code, str) for code in values):
            raise SearchError(
                f"{where}.pairs: expects codes (strings) of a list-valued field such as "
                f"augment.pipeline; got {dotted!r} with {values!r}"
            )
        if len(set(values)) != len(values):
            raise SearchError(f"{where}.pairs: duplicate codes in {values!r}")
        pairs = [
            label_of([first] if first == second else [first, second])
            for first, second in itertools.product(values, values)
        ]
        return CategoricalDistribution(pairs)
    labels = [label_of(value) if isinstance(value, list) else value for value in values]
    if not all(isinstance(label, str | int | float | bool) for label in labels):
        raise SearchError(f"{where}.choice: expected plain values or lists, got {values!r}")
    if len(set(map(str, labels))) != len(labels):
        raise SearchError(f"{where}.choice: duplicate values in {values!r}")
    return CategoricalDistribution(labels)


def parse_param(dotted: str, spec: Any, where: str) -> BaseDistribution:
    """One ``params`` entry as an Optuna distribution; errors name the key and the fix."""
    if dotted not in set(known_fields()):
        raise unknown_field_error(dotted, where)
    if not isinstance(spec, Mapping):
        raise SearchError(f"{where}: expected one of {', '.join(f'{{{k}: [...]}}' for k in KINDS)}")
    kinds = [kind for kind in KINDS if kind in spec]
    extra = set(spec) - set(KINDS) - ({"log"} if kinds == ["int"] else set())
    if len(kinds) != 1 or extra:
        raise SearchError(
            f"{where}: exactly one of {', '.join(KINDS)} (plus 'log: true' for int); got keys "
            f"{sorted(spec)}"
        )
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise SearchError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "int"):
        return _range(kind, values, spec, where)
    return _categorical(kind, dotted, values, where)


def parse_settings(raw: Any, where: str) -> SearchSettings:
    """The ``search:`` section, checked key by key."""
    if not isinstance(raw, Mapping):
        raise SearchError(f"{where}: expected a mapping with keys {', '.join(SETTING_KEYS)}")
    unknown = sorted(set(raw) - set(SETTING_KEYS))
    if unknown:
        hint = " (mode is a top-level key of the file)" if "mode" in unknown else ""
        raise SearchError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(SETTING_KEYS)}"
            f"{hint}"
        )
    params_raw = raw.get("params")
    if not isinstance(params_raw, Mapping) or not params_raw:
        raise SearchError(f"{where}.params: expected a mapping dotted field -> distribution")
    params = {
        str(dotted): parse_param(str(dotted), spec, f"{where}.params.{dotted}")
        for dotted, spec in params_raw.items()
    }
    settings = SearchSettings(params=params)
    for key in ("samples", "startup_trials", "seed"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SearchError(f"{where}.{key}: expected a whole number >= 0, got {value!r}")
            settings = replace(settings, **{key: value})
    if settings.samples < 1:
        raise SearchError(f"{where}.samples: expected at least 1")
    if "reduction_factor" in raw:
        factor = _number(raw["reduction_factor"], f"{where}.reduction_factor")
        if factor <= 1:
            raise SearchError(f"{where}.reduction_factor: expected > 1, got {factor:g}")
        settings = replace(settings, reduction_factor=factor)
    return settings


def load_search(name_or_path: str) -> tuple[SpaceFile, SearchSettings]:
    """Read a search file; the shared parts get the same checks as a grid's."""
    path, raw = read_space_file(name_or_path)
    if SEARCH_KEY not in raw:
        raise SearchError(
            f"{path}: no '{SEARCH_KEY}:' section: it is a grid; run it with its own script, "
            f"e.g. ablations/run_aug_matrix.py --space {path}"
        )
    if "report" in raw:
        raise SearchError(f"{path}: report: a grid's table layout; a search has its own report")
    return parse_space_file(path, raw), parse_settings(raw[SEARCH_KEY], f"{path}: search")


@dataclass(frozen=True)
class PreparedSearch:
    """A validated search: the base trial every sample starts from and what is sampled."""

    file: SpaceFile
    settings: SearchSettings
    base: Trial
    notes: tuple[str, ...] = field(default=())

    def largest(self) -> Trial:
        """The base trial at the largest sampled batch size (the preflight's worst case)."""
        batch = self.settings.params.get("train.batch_size")
        if batch is None:
            return self.base
        largest = max(int(value) for value in extremes("train.batch_size", batch))
        config = self.base.config.with_overrides({"train.batch_size": largest})
        return replace(self.base, config=config)


def prepare_search(request: SweepRequest) -> PreparedSearch:
    """Load the search file, compose the base config and check every sample could run
    (each parameter's extremes validate; no Ray yet)."""
    file, settings = load_search(request.space)
    overrides = request_overrides(request)
    check_overrides(overrides, list(settings.params), file.source, "sampled by the search")
    source = f"{file.source} (base of every sample)"
    try:
        layers = [*file.lower_layers(request.preset), nest(overrides)]
        config = ExperimentConfig.from_dict(compose(layers), source=source)
    except ConfigError as error:
        raise SearchError(str(error)) from None
    own_fields = type(config.method).model_fields
    params, notes = {}, []
    for name, distribution in settings.params.items():
        if name.startswith("method.") and name.split(".", 1)[1] not in own_fields:
            notes.append(f"{config.method.name} has no {name}: not searched")
            continue
        for value in extremes(name, distribution):
            try:
                config.with_overrides({name: value}, source=f"{file.source}: search")
            except ConfigError as error:
                raise SearchError(
                    f"{file.source}: search.params.{name}: the value {value!r} is invalid: "
                    f"{error}"
                ) from None
        params[name] = distribution
    if not params:
        raise SearchError(f"{file.source}: nothing left to search for {config.method.name}")
    base = Trial(f"{file.ablation}-base", "all", None, None, config)
    return PreparedSearch(file, replace(settings, params=params), base, tuple(notes))
