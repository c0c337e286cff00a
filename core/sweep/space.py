"""Search spaces: YAML -> a typed :class:`SearchSpace` -> validated :class:`Trial` objects.

No Ray here. A search space file has a ``base`` (a partial config), ``presets.<name>``
(partial configs for one preset; a ``datasets: {<name>: ...}`` section inside one applies
to that dataset only), grid ``axes``, and a ``report`` section that says how the parent
run's table is shaped (:class:`ReportSpec`).

Axis kinds:

- ``values``: one trial per value of a config field, optionally with coupled settings
  (``with``), e.g. the front end with its encoder;
- ``matrix``: ordered pairs of codes of a list field (CLAR Figure 4);
- ``cases``: named points, each a set of config fields (``b8-q4096: {train.batch_size: 8,
  method.queue_size: 4096}``), for settings that only make sense together;
- ``folds``: ``data.fold`` over the dataset's declared folds (``all``) or a list of them,
  resolved for the dataset in effect when the grid is expanded. Every trial's config is layered in one order
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
    dataset_in_effect,
    known_fields,
)
from core.dotted import flatten, get_dotted, nest
from core.methods.configs import DEFAULT_METHOD, method_config_class

_TOP_LEVEL_KEYS = ("ablation", "description", "metric", "base", "presets", "axes", "report")
_REPORT_KEYS = ("panels", "rows", "columns", "metrics", "summary", "curves", "per_class", "wall_time")
SUMMARIES = ("mean", "std", "range")
METRICS_COLUMNS = "metrics"  # report.columns value: one column per reported metric
CELL, UNTRAINED, SUPERVISED = "cell", "untrained", "supervised"


class SearchSpaceError(ConfigError):
    """A search-space file (or a request built on it) is invalid; names file and key."""


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


def label_of(value: Any) -> str:
    """How a value reads in trial ids and tables: lists as ``FD+TM`` (``none`` if empty),
    numbers without trailing zeros (``0.01``, ``4096``)."""
    if isinstance(value, list | tuple):
        return "+".join(str(item) for item in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class ReportSpec:
    """How the parent run's table is shaped, in axis names (``report:`` in the YAML).

    ``rows`` and ``columns`` name axes (``columns: metrics`` puts one column per metric
    instead); ``panels`` split the table into one table per label; every other axis (folds
    when they are not the columns, seeds always) is aggregated: a table cell is the mean
    over them with its spread. ``summary`` adds columns across the columns (QUACLRS: mean,
    std and range over folds). ``curves`` draws one figure per label of ``curves.panels``
    with one line per label of ``curves.lines`` (CLAR Figure 5); ``per_class`` adds a
    table of per-class F1 (QUACLRS Table 4); ``wall_time`` a column of training time.
    """

    rows: tuple[str, ...] = ()
    columns: str | None = None
    panels: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()
    curves: Mapping[str, str] = field(default_factory=dict)
    per_class: bool = False
    wall_time: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": list(self.rows),
            "columns": self.columns,
            "panels": list(self.panels),
            "metrics": list(self.metrics),
            "summary": list(self.summary),
            "curves": dict(self.curves),
            "per_class": self.per_class,
            "wall_time": self.wall_time,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ReportSpec | None:
        if not raw:
            return None
        return cls(
            rows=tuple(raw.get("rows") or ()),
            columns=raw.get("columns"),
            panels=tuple(raw.get("panels") or ()),
            metrics=tuple(raw.get("metrics") or ()),
            summary=tuple(raw.get("summary") or ()),
            curves=dict(raw.get("curves") or {}),
            per_class=bool(raw.get("per_class", False)),
            wall_time=bool(raw.get("wall_time", False)),
        )


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
    report: ReportSpec | None = None

    @property
    def matrix_axis(self) -> Axis | None:
        return next((axis for axis in self.axes if axis.kind == "matrix"), None)

    def axis(self, name: str) -> Axis | None:
        """The axis named ``name`` (its field, or a cases axis's name)."""
        return next((axis for axis in self.axes if axis.field == name), None)


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
    # Axis name -> this trial's label on it (a control: the axes it depends on).
    coords: Mapping[str, str] = field(default_factory=dict)

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
def nested_layer(mapping: Any, where: str) -> dict[str, Any]:
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


def parse_preset_layer(settings: Any, where: str) -> dict[str, Any]:
    """A YAML preset: config fields plus an optional per-dataset section."""
    layer = nested_layer(settings or {}, where)
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
        checked[dataset] = nested_layer(values or {}, f"{where}.{PER_DATASET_KEY}.{dataset}")
        check_fields(checked[dataset], f"{where}.{PER_DATASET_KEY}.{dataset}")
    return {**layer, PER_DATASET_KEY: checked} if checked else layer


def _parse_cases(name: str, spec: Mapping[str, Any], where: str) -> Axis:
    cases = spec["cases"]
    if not isinstance(cases, Mapping) or not cases:
        raise SearchSpaceError(f"{where}.cases: expected a mapping label -> settings")
    coupled: dict[str, dict[str, Any]] = {}
    for label, settings in cases.items():
        nested = nested_layer(settings or {}, f"{where}.cases.{label}")
        check_fields(nested, f"{where}.cases.{label}")
        coupled[str(label)] = flatten(nested)
    return Axis(field=name, kind="cases", values=tuple(coupled), coupled=coupled)


def _parse_folds(dotted: str, spec: Mapping[str, Any], where: str) -> Axis:
    if dotted != "data.fold":
        raise SearchSpaceError(f"{where}: a 'folds' axis sweeps data.fold, not {dotted!r}")
    folds = spec["folds"]
    if folds == "all":
        return Axis(field=dotted, kind="folds", values=("all",))
    if not isinstance(folds, list) or not folds or not all(
        isinstance(fold, int) and fold >= 1 for fold in folds
    ):
        raise SearchSpaceError(f"{where}.folds: expected 'all' or a list of folds (1, 2, ...)")
    return Axis(field=dotted, kind="folds", values=tuple(folds))


def _parse_axis(dotted: str, spec: Any, where: str) -> Axis:
    if isinstance(spec, Mapping) and "cases" in spec:
        if set(spec) != {"cases"}:
            raise SearchSpaceError(f"{where}: a 'cases' axis has only the key 'cases'")
        return _parse_cases(dotted, spec, where)
    fields = set(known_fields())
    if dotted not in fields:
        section = dotted.split(".")[0]
        valid = sorted(name for name in fields if name.startswith(f"{section}.")) or sorted(fields)
        raise SearchSpaceError(
            f"{where}: unknown field {dotted!r}; valid: {', '.join(valid)} (or name the axis "
            f"freely and give it 'cases')"
        )
    if isinstance(spec, Mapping) and "folds" in spec:
        if set(spec) != {"folds"}:
            raise SearchSpaceError(f"{where}: a 'folds' axis has only the key 'folds'")
        return _parse_folds(dotted, spec, where)
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(
            f"{where}: expected a list of values, {{values: [...]}}, {{matrix: [...]}}, "
            f"{{cases: {{...}}}} or {{folds: all}}, got {spec!r}"
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
        nested = nested_layer(settings, f"{where}.with.{label}")
        check_fields(nested, f"{where}.with.{label}")
        coupled[str(label)] = flatten(nested)
    return Axis(field=dotted, kind=kind, values=tuple(values), coupled=coupled)


def _parse_report(raw: Any, axes: Sequence[Axis], where: str) -> ReportSpec | None:
    """Check that the report names axes of this space (and known summaries)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{where}: expected a mapping with keys {', '.join(_REPORT_KEYS)}")
    unknown = sorted(set(raw) - set(_REPORT_KEYS))
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_REPORT_KEYS)}"
        )
    spec = ReportSpec.from_dict(raw)
    assert spec is not None
    names = [axis.field for axis in axes]
    named = [*spec.rows, *spec.panels, *spec.curves.values()]
    if spec.columns not in (None, METRICS_COLUMNS):
        named.append(spec.columns)
    for name in named:
        if name not in names:
            raise SearchSpaceError(
                f"{where}: {name!r} is not an axis of this search space; axes: {', '.join(names)}"
            )
    bad = [name for name in spec.summary if name not in SUMMARIES]
    if bad:
        raise SearchSpaceError(f"{where}.summary: {bad} unknown; valid: {', '.join(SUMMARIES)}")
    if set(spec.curves) - {"panels", "lines"}:
        raise SearchSpaceError(f"{where}.curves: expected keys 'panels' and 'lines'")
    return spec


def read_space_file(
    name_or_path: str | Path, valid_keys: Sequence[str]
) -> tuple[Path, Mapping[str, Any]]:
    """Locate and parse a search-space file; its top level must be a mapping of
    ``valid_keys`` (errors name the file, the line and the key)."""
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
        raise SearchSpaceError(f"{path}: expected a mapping with keys {', '.join(valid_keys)}")
    unknown = sorted(set(raw) - set(valid_keys))
    if unknown:
        raise SearchSpaceError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(valid_keys)}"
        )
    return path, raw


def parse_shared_sections(
    raw: Mapping[str, Any], path: Path
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The ``base`` and ``presets`` of a grid or a search file, checked field by field."""
    base = nested_layer(raw.get("base") or {}, f"{path}: base")
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
        presets[name] = parse_preset_layer(settings, f"{path}: presets.{name}")
    return base, presets


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """Read and shape-check a search space; errors name the file and the key."""
    path, raw = read_space_file(name_or_path, _TOP_LEVEL_KEYS)
    base, presets = parse_shared_sections(raw, path)
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, Mapping):
        raise SearchSpaceError(f"{path}: axes: expected a mapping field -> values")
    axes = tuple(
        _parse_axis(str(dotted), spec, f"{path}: axes.{dotted}")
        for dotted, spec in axes_raw.items()
    )
    if sum(axis.kind == "matrix" for axis in axes) > 1:
        raise SearchSpaceError(f"{path}: axes: at most one 'matrix' axis per search space")
    report = _parse_report(raw.get("report"), axes, f"{path}: report")
    return SearchSpace(
        source=path,
        ablation=str(raw.get("ablation") or path.stem),
        description=str(raw.get("description") or ""),
        metric=str(raw.get("metric", "test_top1")),
        base=base,
        presets=presets,
        axes=axes,
        report=report,
    )


def restrict_axes(
    space: SearchSpace, axis_values: Mapping[str, Sequence[Any]] | None
) -> SearchSpace:
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
            raise SearchSpaceError(
                f"{space.source}: no axis {dotted!r} to restrict; axes: {', '.join(by_field)}"
            )
        axis = by_field[dotted]
        values = list(values)
        if not values:
            raise SearchSpaceError(f"{space.source}: axes.{dotted}: empty selection")
        if axis.kind == "cases":
            axes[axes.index(axis)] = _restrict_cases(space, axis, values)
            continue
        if axis.kind == "folds":
            if values != ["all"] and not all(isinstance(v, int) and v >= 1 for v in values):
                raise SearchSpaceError(
                    f"{space.source}: axes.{dotted}: folds are 'all' or numbers from 1, got {values}"
                )
            axes[axes.index(axis)] = replace(axis, values=tuple(values))
            continue
        if axis.coupled:
            unknown = [value for value in values if str(value) not in axis.coupled]
            if unknown:
                raise SearchSpaceError(
                    f"{space.source}: axes.{dotted}: {unknown} not declared; valid: "
                    f"{', '.join(axis.coupled)}"
                )
        axes[axes.index(axis)] = replace(axis, values=tuple(values))
    return replace(space, axes=tuple(axes))


def _restrict_cases(space: SearchSpace, axis: Axis, values: list[Any]) -> Axis:
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
            raise SearchSpaceError(
                f"{space.source}: axes.{axis.field}: {value!r} is not a case; valid: "
                f"{', '.join(axis.coupled)}"
            )
    return replace(axis, values=tuple(coupled), coupled=coupled)


def resolve_folds(space: SearchSpace, dataset: str) -> SearchSpace:
    """A folds axis of ``all`` becomes the declared folds of ``dataset`` (1..k); listed
    folds are checked against them. A dataset without folds cannot have a folds axis."""
    axis = next((axis for axis in space.axes if axis.kind == "folds"), None)
    if axis is None:
        return space
    from core.data import get_spec

    declared = get_spec(dataset).num_folds
    if declared is None:
        folded = sorted(name for name, spec in _datasets().items() if spec.num_folds)
        raise SearchSpaceError(
            f"{space.source}: axes.data.fold: dataset {dataset!r} has no folds; use one of "
            f"{', '.join(folded)} (--dataset)"
        )
    if axis.values == ("all",):
        folds: tuple[Any, ...] = tuple(range(1, declared + 1))
    else:
        folds = axis.values
        outside = [fold for fold in folds if not 1 <= fold <= declared]
        if outside:
            raise SearchSpaceError(
                f"{space.source}: axes.data.fold: folds {outside} do not exist in {dataset!r} "
                f"(folds 1..{declared})"
            )
    axes = tuple(replace(a, values=folds) if a is axis else a for a in space.axes)
    return replace(space, axes=axes)


def _datasets() -> Mapping[str, Any]:
    from core.data import DATASETS

    return DATASETS


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
    if any(axis.kind == "folds" for axis in space.axes):
        if any("data.dataset" in axis.fields for axis in space.axes):
            raise SearchSpaceError(
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
            raise SearchSpaceError(str(error)) from None
        panel = "-".join(panel_labels) or "all"
        trials.append(Trial(trial_id, panel, first, second, config, coords=coords))
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
