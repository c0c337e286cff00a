"""Grids: a grid file -> a typed :class:`GridSpace` -> its cells as validated trials.

No Ray here. A grid file is a space file (:mod:`core.sweep.spacefile`) with ``axes`` and
an optional ``report`` section that says how the parent run's table is shaped
(:mod:`core.sweep.table_spec`). Axis kinds:

- ``values``: one trial per value of a config field, optionally with coupled settings
  (``with``), e.g. the front end with its encoder;
- ``matrix``: ordered pairs of codes of a list field (CLAR Figure 4);
- ``cases``: named points, each a set of config fields (``b8-q4096: {train.batch_size: 8,
  method.queue_size: 4096}``), for settings that only make sense together;
- ``folds``: ``data.fold`` over the dataset's declared folds (``all``) or a list of them,
  resolved for the dataset in effect when the grid is expanded.

Every cell's config is validated once, before Ray starts, so a typo in an augmentation
code fails in a second with the file, trial and field named.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.config import ConfigError, ExperimentConfig, compose, dataset_in_effect, known_fields
from core.dotted import flatten, get_dotted, nest
from core.methods.configs import DEFAULT_METHOD, method_config_class
from core.sweep.errors import GridError
from core.sweep.spacefile import (
    GRID_KEY,
    SpaceFile,
    check_fields,
    check_overrides,
    is_search,
    nested_layer,
    parse_space_file,
    read_space_file,
    unknown_field_error,
)
from core.sweep.table_spec import ReportSpec, parse_report
from core.sweep.trials import Trial, label_of


@dataclass(frozen=True)
class Axis:
    """One grid axis over a dotted config field.

    ``kind="values"``: one trial per value, optionally with coupled settings (``with``).
    ``kind="matrix"``: the field is a list; one trial per ordered pair of ``values``,
    ``[a, b]`` off the diagonal and ``[a]`` on it (a single augmentation applied once).
    ``kind="cases"``: ``field`` is the axis's name (not a config field), ``values`` the
    case labels, ``coupled`` each case's dotted settings.
    ``kind="folds"``: ``field`` is ``data.fold``; ``values`` the folds, or ``("all",)``
    until :func:`resolve_folds` replaces it with the dataset's declared folds.
    """

    field: str
    kind: str  # "values" | "matrix" | "cases" | "folds"
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
        if self.kind == "cases":
            return [([str(label)], dict(self.coupled[str(label)])) for label in self.values]
        if self.kind == "folds":
            return [([f"fold{fold}"], {self.field: fold}) for fold in self.values]
        return [
            ([label_of(value)], {self.field: value, **self.coupled.get(str(value), {})})
            for value in self.values
        ]

    def labels(self) -> list[str]:
        """The labels of the axis's points in order (a matrix axis: its codes)."""
        if self.kind == "matrix":
            return [str(value) for value in self.values]
        return [labels[0] for labels, _ in self.points()]

    @property
    def fields(self) -> set[str]:
        """The axis's field and every field its coupled settings set."""
        own = set() if self.kind == "cases" else {self.field}
        return own | {name for settings in self.coupled.values() for name in settings}


@dataclass(frozen=True)
class GridSpace:
    """A parsed grid file (shape checked; trial configs are checked on expansion)."""

    file: SpaceFile
    axes: tuple[Axis, ...]
    report: ReportSpec | None = None

    @property
    def source(self) -> Path:
        return self.file.source

    @property
    def ablation(self) -> str:
        return self.file.ablation

    @property
    def metric(self) -> str:
        return self.file.metric

    @property
    def mode(self) -> str:
        return self.file.mode

    @property
    def matrix_axis(self) -> Axis | None:
        return next((axis for axis in self.axes if axis.kind == "matrix"), None)

    @property
    def swept_fields(self) -> set[str]:
        """Every config field an axis sets."""
        return {name for axis in self.axes for name in axis.fields}

    def axis(self, name: str) -> Axis | None:
        """The axis named ``name`` (its field, or a cases axis's name)."""
        return next((axis for axis in self.axes if axis.field == name), None)


def load_grid(name_or_path: str | Path) -> GridSpace:
    """Read and shape-check a grid file; errors name the file and the key."""
    path, raw = read_space_file(name_or_path)
    if is_search(raw):
        raise GridError(
            f"{path}: no '{GRID_KEY}:' section: it is an Optuna search; run it with "
            f"ablations/run_search.py --space {path}"
        )
    file = parse_space_file(path, raw)
    axes_raw = raw.get(GRID_KEY) or {}
    if not isinstance(axes_raw, Mapping):
        raise GridError(f"{path}: axes: expected a mapping field -> values")
    axes = tuple(
        _parse_axis(str(dotted), spec, f"{path}: axes.{dotted}")
        for dotted, spec in axes_raw.items()
    )
    if sum(axis.kind == "matrix" for axis in axes) > 1:
        raise GridError(f"{path}: axes: at most one 'matrix' axis per grid")
    report = parse_report(raw.get("report"), [axis.field for axis in axes], f"{path}: report")
    return GridSpace(file=file, axes=axes, report=report)


def _parse_cases(name: str, spec: Mapping[str, Any], where: str) -> Axis:
    cases = spec["cases"]
    if not isinstance(cases, Mapping) or not cases:
        raise GridError(f"{where}.cases: expected a mapping label -> settings")
    coupled: dict[str, dict[str, Any]] = {}
    for label, settings in cases.items():
        nested = nested_layer(settings or {}, f"{where}.cases.{label}")
        check_fields(nested, f"{where}.cases.{label}")
        coupled[str(label)] = flatten(nested)
    return Axis(field=name, kind="cases", values=tuple(coupled), coupled=coupled)


def _parse_folds(dotted: str, spec: Mapping[str, Any], where: str) -> Axis:
    if dotted != "data.fold":
        raise GridError(f"{where}: a 'folds' axis sweeps data.fold, not {dotted!r}")
    folds = spec["folds"]
    if folds == "all":
        return Axis(field=dotted, kind="folds", values=("all",))
    if not isinstance(folds, list) or not folds or not all(
        isinstance(fold, int) and fold >= 1 for fold in folds
    ):
        raise GridError(f"{where}.folds: expected 'all' or a list of folds (1, 2, ...)")
    return Axis(field=dotted, kind="folds", values=tuple(folds))


def _parse_axis(dotted: str, spec: Any, where: str) -> Axis:
    if isinstance(spec, Mapping) and "cases" in spec:
        if set(spec) != {"cases"}:
            raise GridError(f"{where}: a 'cases' axis has only the key 'cases'")
        return _parse_cases(dotted, spec, where)
    if dotted not in set(known_fields()):
        raise unknown_field_error(
            dotted, where, " (or name the axis freely and give it 'cases')"
        )
    if isinstance(spec, Mapping) and "folds" in spec:
        if set(spec) != {"folds"}:
            raise GridError(f"{where}: a 'folds' axis has only the key 'folds'")
        return _parse_folds(dotted, spec, where)
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, Mapping):
        raise GridError(
            f"{where}: expected a list of values, {{values: [...]}}, {{matrix: [...]}}, "
            f"{{cases: {{...}}}} or {{folds: all}}, got {spec!r}"
        )
    unknown = set(spec) - {"values", "with", "matrix"}
    if unknown or ("values" in spec) == ("matrix" in spec):
        raise GridError(
            f"{where}: an axis has exactly one of 'values' or 'matrix' (plus optional 'with' "
            f"for values); got keys {sorted(spec)}"
        )
    kind = "matrix" if "matrix" in spec else "values"
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise GridError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if len({json.dumps(value, sort_keys=True, default=str) for value in values}) != len(values):
        raise GridError(f"{where}.{kind}: duplicate values in {values!r}")
    if kind == "matrix":
        if not isinstance(get_dotted(ExperimentConfig().model_dump(), dotted), list):
            raise GridError(
                f"{where}: 'matrix' needs a list-valued field (e.g. augment.pipeline); "
                f"{dotted!r} is not one"
            )
        if not all(isinstance(value, str) for value in values):
            raise GridError(f"{where}.matrix: expected codes (strings), got {values!r}")
        return Axis(field=dotted, kind=kind, values=tuple(values))
    coupled_raw = spec.get("with") or {}
    if not isinstance(coupled_raw, Mapping):
        raise GridError(f"{where}.with: expected a mapping value -> settings")
    labels = [str(value) for value in values]
    coupled: dict[str, dict[str, Any]] = {}
    for label, settings in coupled_raw.items():
        if str(label) not in labels:
            raise GridError(
                f"{where}.with.{label}: not one of the axis values; valid: {', '.join(labels)}"
            )
        nested = nested_layer(settings, f"{where}.with.{label}")
        check_fields(nested, f"{where}.with.{label}")
        coupled[str(label)] = flatten(nested)
    return Axis(field=dotted, kind=kind, values=tuple(values), coupled=coupled)


def restrict_axes(
    space: GridSpace, axis_values: Mapping[str, Sequence[Any]] | None
) -> GridSpace:
    """Replace some axes' values (``--augs PS FD``, ``--frontends stft3``, ``--folds 1 2``).

    Values of an axis with coupled settings must be among the declared ones, since their
    coupled settings (e.g. the encoder of a front end) would otherwise be unknown. A cases
    axis takes case labels, or mappings ``{label: {dotted: value}}`` that define new cases
    (``run_features.py --sets raw1d:FD+TST``).
    """
    if not axis_values:
        return space
    by_field = {axis.field: axis for axis in space.axes}
    axes = list(space.axes)
    for dotted, values in axis_values.items():
        if dotted not in by_field:
            raise GridError(
                f"{space.source}: no axis {dotted!r} to restrict; axes: {', '.join(by_field)}"
            )
        axis = by_field[dotted]
        values = list(values)
        if not values:
            raise GridError(f"{space.source}: axes.{dotted}: empty selection")
        if axis.kind == "cases":
            axes[axes.index(axis)] = _restrict_cases(space, axis, values)
            continue
        if axis.kind == "folds":
            if values != ["all"] and not all(isinstance(v, int) and v >= 1 for v in values):
                raise GridError(
                    f"{space.source}: axes.{dotted}: folds are 'all' or numbers from 1, got {values}"
                )
            axes[axes.index(axis)] = replace(axis, values=tuple(values))
            continue
        if axis.coupled:
            unknown = [value for value in values if str(value) not in axis.coupled]
            if unknown:
                raise GridError(
                    f"{space.source}: axes.{dotted}: {unknown} not declared; valid: "
                    f"{', '.join(axis.coupled)}"
                )
        axes[axes.index(axis)] = replace(axis, values=tuple(values))
    return replace(space, axes=tuple(axes))


def _restrict_cases(space: GridSpace, axis: Axis, values: list[Any]) -> Axis:
    coupled: dict[str, dict[str, Any]] = {}
    for value in values:
        if isinstance(value, Mapping):
            for label, settings in value.items():
                where = f"{space.source}: axes.{axis.field} (case {label})"
                check_fields(nest(dict(settings)), where)
                coupled[str(label)] = dict(settings)
        elif str(value) in axis.coupled:
            coupled[str(value)] = dict(axis.coupled[str(value)])
        else:
            raise GridError(
                f"{space.source}: axes.{axis.field}: {value!r} is not a case; valid: "
                f"{', '.join(axis.coupled)}"
            )
    return replace(axis, values=tuple(coupled), coupled=coupled)


def resolve_folds(space: GridSpace, dataset: str) -> GridSpace:
    """A folds axis of ``all`` becomes the declared folds of ``dataset`` (1..k); listed
    folds are checked against them. A dataset without folds cannot have a folds axis."""
    axis = next((axis for axis in space.axes if axis.kind == "folds"), None)
    if axis is None:
        return space
    from core.data import get_spec

    declared = get_spec(dataset).num_folds
    if declared is None:
        from core.data import DATASETS

        folded = sorted(name for name, spec in DATASETS.items() if spec.num_folds)
        raise GridError(
            f"{space.source}: axes.data.fold: dataset {dataset!r} has no folds; use one of "
            f"{', '.join(folded)} (--dataset)"
        )
    if axis.values == ("all",):
        folds: tuple[Any, ...] = tuple(range(1, declared + 1))
    else:
        folds = axis.values
        outside = [fold for fold in folds if not 1 <= fold <= declared]
        if outside:
            raise GridError(
                f"{space.source}: axes.data.fold: folds {outside} do not exist in {dataset!r} "
                f"(folds 1..{declared})"
            )
    axes = tuple(replace(a, values=folds) if a is axis else a for a in space.axes)
    return replace(space, axes=axes)


def expand_cells(
    space: GridSpace,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
    trial_overrides: Mapping[str, Mapping[str, Any]] | None,
) -> list[Trial]:
    """Every grid cell as a validated :class:`Trial`, in grid order (no controls, one
    seed: :func:`core.sweep.design.expand_trials` adds those).

    ``overrides`` are dotted ``--set`` fields for every cell; ``trial_overrides`` maps a
    cell id to dotted settings for that cell only (injecting a fault in tests, or giving
    one cell another setting)."""
    lower = space.file.lower_layers(preset)
    overrides = dict(overrides or {})
    check_overrides(overrides, sorted(space.swept_fields), space.source, "swept by an axis")
    if any(axis.kind == "folds" for axis in space.axes):
        if any("data.dataset" in axis.fields for axis in space.axes):
            raise GridError(
                f"{space.source}: a folds axis and a dataset axis cannot be combined (each "
                f"dataset has its own folds)"
            )
        space = resolve_folds(space, dataset_in_effect([*lower, nest(overrides)]))
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
        coords: dict[str, str] = {}
        first = second = None
        for axis, (axis_labels, axis_settings) in zip(space.axes, combination, strict=True):
            labels += axis_labels
            cell.update(axis_settings)
            if axis is matrix:
                first, second = axis_labels
            else:
                panel_labels += axis_labels
                coords[axis.field] = axis_labels[0]
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
            raise GridError(str(error)) from None
        panel = "-".join(panel_labels) or "all"
        trials.append(Trial(trial_id, panel, first, second, config, coords=coords))
    if method_swept and unused_method_fields:
        raise GridError(
            f"overrides (--set): no method of the grid has {', '.join(sorted(unused_method_fields))}"
        )
    if trial_overrides:
        raise GridError(
            f"trial overrides name unknown trial id(s) {sorted(trial_overrides)}; valid ids "
            f"look like {trials[0].trial_id!r} ({len(trials)} trials)"
        )
    return trials
