"""Search spaces: YAML -> a typed :class:`SearchSpace` -> validated :class:`Trial` objects.

No Ray here. A search space file has a ``base`` (a partial config), ``presets.<name>``
(partial configs for one preset; a ``datasets: {<name>: ...}`` section inside one applies
to that dataset only), and grid ``axes``. Every trial's config is layered in one order
(:func:`core.config.compose`): code defaults < preset < ``base`` < ``presets.<name>`` <
the grid cell < ``--set`` < ``--cell-set``, and validated once, before Ray starts, so a
typo in an augmentation code fails in a second with the file, trial and field named.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from core.config import (
    PER_DATASET_KEY,
    PRESETS,
    ConfigError,
    ExperimentConfig,
    compose,
    known_fields,
)
from core.dotted import flatten, get_dotted, nest
from core.methods.configs import DEFAULT_METHOD, method_config_class

_TOP_LEVEL_KEYS = ("ablation", "description", "metric", "base", "presets", "axes")
CELL, UNTRAINED, SUPERVISED = "cell", "untrained", "supervised"


class SearchSpaceError(ConfigError):
    """A search-space file (or a request built on it) is invalid; names file and key."""


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
        """(labels, dotted settings) per point, in grid order (row-major for a matrix)."""
        if self.kind == "matrix":
            return [
                ([first, second], {self.field: [first] if first == second else [first, second]})
                for first in self.values
                for second in self.values
            ]
        return [
            ([str(value)], {self.field: value, **self.coupled.get(str(value), {})})
            for value in self.values
        ]

    @property
    def fields(self) -> set[str]:
        """The axis's field and every field its coupled settings set."""
        return {self.field, *(name for settings in self.coupled.values() for name in settings)}


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


@dataclass(frozen=True)
class Trial:
    """One validated trial: a grid cell, or a control, at one seed. ``trial_id`` is stable
    across restarts and resumes."""

    trial_id: str
    panel: str  # labels of the non-matrix axes, e.g. "stft3"
    first: str | None  # matrix row (first augmentation)
    second: str | None  # matrix column (second augmentation)
    config: ExperimentConfig
    role: str = CELL  # CELL, or the control it is: UNTRAINED | SUPERVISED
    cell_id: str = ""  # the cell (or control) this trial replicates; trial_id w/o seed
    # The controls this cell is compared with: role -> their cell_id.
    controls: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cell_id:
            object.__setattr__(self, "cell_id", self.trial_id)

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def pipeline(self) -> list[str]:
        return list(self.config.augment.pipeline)


# --- loading ------------------------------------------------------------------------------
def _nested(mapping: Any, where: str) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping of config fields, got {mapping!r}")
    return nest(mapping)


def check_fields(nested: Mapping[str, Any], where: str) -> None:
    """Every leaf must be a known config field (the message lists the section's fields)."""
    fields = set(known_fields())
    sections = {name.split(".")[0] for name in fields}
    for dotted in flatten(nested):
        if dotted in fields:
            continue
        section = dotted.split(".")[0]
        if section not in sections:
            raise SearchSpaceError(
                f"{where}: {dotted}: unknown section {section!r}; valid: {', '.join(sorted(sections))}"
            )
        valid = sorted(name for name in fields if name.startswith(f"{section}."))
        raise SearchSpaceError(f"{where}: {dotted}: unknown field; valid: {', '.join(valid)}")


def _preset_layer(settings: Any, where: str) -> dict[str, Any]:
    """A YAML preset: config fields plus an optional per-dataset section."""
    layer = _nested(settings or {}, where)
    per_dataset = layer.pop(PER_DATASET_KEY, None) or {}
    check_fields(layer, where)
    if not isinstance(per_dataset, Mapping):
        raise SearchSpaceError(f"{where}.{PER_DATASET_KEY}: expected dataset name -> settings")
    from core.data import DATASETS

    checked = {}
    for dataset, values in per_dataset.items():
        if dataset not in DATASETS:
            raise SearchSpaceError(
                f"{where}.{PER_DATASET_KEY}.{dataset}: unknown dataset; valid: "
                f"{', '.join(sorted(DATASETS))}"
            )
        checked[dataset] = _nested(values or {}, f"{where}.{PER_DATASET_KEY}.{dataset}")
        check_fields(checked[dataset], f"{where}.{PER_DATASET_KEY}.{dataset}")
    return {**layer, PER_DATASET_KEY: checked} if checked else layer


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
        if not isinstance(get_dotted(ExperimentConfig().model_dump(), dotted), list):
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
        nested = _nested(settings, f"{where}.with.{label}")
        check_fields(nested, f"{where}.with.{label}")
        coupled[str(label)] = flatten(nested)
    return Axis(field=dotted, kind=kind, values=tuple(values), coupled=coupled)


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
    base = _nested(raw.get("base") or {}, f"{path}: base")
    check_fields(base, f"{path}: base")
    presets_raw = raw.get("presets") or {}
    if not isinstance(presets_raw, Mapping):
        raise SearchSpaceError(f"{path}: presets: expected a mapping preset name -> settings")
    presets = {}
    for name, settings in presets_raw.items():
        if name not in PRESETS:
            raise SearchSpaceError(
                f"{path}: presets.{name}: unknown preset; valid: {', '.join(sorted(PRESETS))}"
            )
        presets[name] = _preset_layer(settings, f"{path}: presets.{name}")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, Mapping):
        raise SearchSpaceError(f"{path}: axes: expected a mapping field -> values")
    axes = tuple(
        _parse_axis(str(dotted), spec, f"{path}: axes.{dotted}")
        for dotted, spec in axes_raw.items()
    )
    if sum(axis.kind == "matrix" for axis in axes) > 1:
        raise SearchSpaceError(f"{path}: axes: at most one 'matrix' axis per search space")
    return SearchSpace(
        source=path,
        ablation=str(raw.get("ablation") or path.stem),
        description=str(raw.get("description") or ""),
        metric=str(raw.get("metric", "test_top1")),
        base=base,
        presets=presets,
        axes=axes,
    )


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
        axes[axes.index(axis)] = replace(axis, values=tuple(values))
    return replace(space, axes=tuple(axes))


# --- expansion ----------------------------------------------------------------------------
def _check_overrides(space: SearchSpace, overrides: Mapping[str, Any], where: str) -> None:
    """``--set`` fields must exist and must not be swept by an axis (every cell would be
    the same; the axis restriction flags choose an axis's values)."""
    check_fields(nest(overrides), where)
    swept = {name for axis in space.axes for name in axis.fields}
    clash = sorted(set(overrides) & swept)
    if clash:
        raise SearchSpaceError(
            f"{where}: {', '.join(clash)} is swept by an axis of {space.source}; choose the "
            f"axis values with the script's flags (e.g. --augs, --frontends) or edit the "
            f"search space"
        )


def expand_trials(
    space: SearchSpace,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    trial_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seeds: int = 1,
    controls: bool = False,
) -> list[Trial]:
    """Every grid cell as a validated :class:`Trial`, in grid order, then (``controls``)
    the controls, each replicated over ``seeds`` seeds (:mod:`core.sweep.design`).

    ``overrides`` are dotted ``--set`` fields for every cell; ``trial_overrides`` maps a
    cell id to dotted settings for that cell only, at every seed (injecting a fault in
    tests, or giving one cell another setting).
    """
    cells = _expand_cells(space, preset, overrides, trial_overrides)
    if not controls and seeds == 1:
        return cells
    from core.sweep.design import add_controls, replicate

    if controls:
        sweep_wide = [*_lower_layers(space, preset), nest(dict(overrides or {}))]
        cells = add_controls(space, cells, compose(sweep_wide))
    return replicate(cells, seeds)


def _lower_layers(space: SearchSpace, preset: str | None) -> list[Mapping[str, Any]]:
    """The layers under every grid cell: the preset, the base, the space's preset section."""
    if preset is None:
        return [space.base]
    if preset not in PRESETS:
        raise SearchSpaceError(f"unknown preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
    return [PRESETS[preset], space.base, space.presets.get(preset, {})]


def _expand_cells(
    space: SearchSpace,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
    trial_overrides: Mapping[str, Mapping[str, Any]] | None,
) -> list[Trial]:
    lower = _lower_layers(space, preset)
    overrides = dict(overrides or {})
    _check_overrides(space, overrides, "overrides (--set)")
    trial_overrides = {key: dict(value) for key, value in (trial_overrides or {}).items()}
    for trial_id, settings in trial_overrides.items():
        check_fields(nest(settings), f"cell overrides ({trial_id})")
    matrix = space.matrix_axis
    method_swept = any(axis.field == "method.name" for axis in space.axes)
    lower_method = get_dotted(compose(lower), "method.name", DEFAULT_METHOD)
    unused_method_fields = {key for key in overrides if key.startswith("method.")}
    trials: list[Trial] = []
    for combination in itertools.product(*(axis.points() for axis in space.axes)):
        labels: list[str] = []
        cell: dict[str, Any] = {}
        panel_labels: list[str] = []
        first = second = None
        for axis, (axis_labels, axis_settings) in zip(space.axes, combination, strict=True):
            labels += axis_labels
            cell.update(axis_settings)
            if axis is matrix:
                first, second = axis_labels
            else:
                panel_labels += axis_labels
        trial_id = "-".join(labels) or space.ablation
        cell_overrides = overrides
        if method_swept:
            # With a method axis, a --set method.<field> applies to the methods that have it.
            method = cell.get("method.name") or lower_method
            accepted = method_config_class(method).model_fields
            cell_overrides = {
                key: value
                for key, value in overrides.items()
                if not key.startswith("method.") or key.split(".", 1)[1] in accepted
            }
            unused_method_fields -= set(cell_overrides)
        layers = [*lower, nest(cell), nest(cell_overrides), nest(trial_overrides.pop(trial_id, {}))]
        source = f"{space.source} (trial {trial_id})"
        try:
            config = ExperimentConfig.from_dict(compose(layers), source=source)
        except ConfigError as error:
            raise SearchSpaceError(str(error)) from None
        trials.append(Trial(trial_id, "-".join(panel_labels) or "all", first, second, config))
    if method_swept and unused_method_fields:
        raise SearchSpaceError(
            f"overrides (--set): no method of the grid has {', '.join(sorted(unused_method_fields))}"
        )
    if trial_overrides:
        raise SearchSpaceError(
            f"trial overrides name unknown trial id(s) {sorted(trial_overrides)}; valid ids "
            f"look like {trials[0].trial_id!r} ({len(trials)} trials)"
        )
    return trials
