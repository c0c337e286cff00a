"""What grid and search files share: reading a space file, its metric and mode, and its
``base`` and ``presets`` sections, checked field by field.

A space file is a YAML file in ``search_spaces/`` (or a path). Its top level holds
``ablation``, ``description``, ``metric`` (what a trial is scored by; default
``test_top1``), ``mode`` (``max`` or ``min`` of that metric; default ``min`` for a loss or
an error, else ``max``), ``base`` (a partial config) and ``presets.<name>`` (partial
configs for one preset; a ``datasets: {<name>: ...}`` section inside one applies to that
dataset only), and then either ``axes`` (a grid, :mod:`core.sweep.grid`; no axes is a grid
of one trial) or ``search`` (an Optuna search, :mod:`core.sweep.search`). Every trial's config is layered in one
order (:func:`core.config.compose`): code defaults < preset < ``base`` <
``presets.<name>`` < the grid cell or the sample < ``--set`` < ``--cell-set``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config import PER_DATASET_KEY, known_fields
from core.dotted import flatten, nest
from core.presets import PRESETS
from core.sweep.deviations import DEVIATIONS_KEY, DeclaredDeviation, parse_deviations
from core.sweep.errors import SweepError

SHARED_KEYS = ("ablation", "description", "metric", "mode", "base", "presets")
GRID_KEY, SEARCH_KEY = "axes", "search"
MODES = ("max", "min")


def metric_mode(metric: str) -> str:
    """The default direction of a metric: ``min`` for losses and errors, ``max`` for scores
    (top-1, F1)."""
    return "min" if any(word in metric for word in ("loss", "error")) else "max"


@dataclass(frozen=True)
class SpaceFile:
    """The shared part of a parsed space file (the kind-specific part is checked by the
    grid or search reader)."""

    source: Path
    ablation: str
    description: str
    metric: str
    mode: str  # "max" or "min" of ``metric``
    base: Mapping[str, Any]
    presets: Mapping[str, Mapping[str, Any]]
    # Named departures from the paper (core.sweep.deviations), per preset.
    deviations: tuple[DeclaredDeviation, ...] = ()

    def lower_layers(self, preset: str | None) -> list[Mapping[str, Any]]:
        """The layers under every grid cell or sample: the preset, the base, and the
        file's own section for that preset."""
        if preset is None:
            return [self.base]
        if preset not in PRESETS:
            raise SweepError(f"unknown preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
        return [PRESETS[preset], self.base, self.presets.get(preset, {})]


def read_space_file(name_or_path: str | Path) -> tuple[Path, Mapping[str, Any]]:
    """Locate and parse a space file; its top level must be a mapping of the shared keys
    and exactly one of ``axes`` or ``search`` (errors name the file, the line and the key)."""
    from search_spaces import locate

    try:
        path = locate(name_or_path)
    except FileNotFoundError as error:
        raise SweepError(str(error)) from None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise SweepError(f"{where}: not valid YAML: {problem}") from None
    valid = (*SHARED_KEYS, GRID_KEY, SEARCH_KEY, "report", DEVIATIONS_KEY)
    if not isinstance(raw, Mapping):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(valid)}")
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise SweepError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    if GRID_KEY in raw and SEARCH_KEY in raw:
        raise SweepError(
            f"{path}: a space file has either '{GRID_KEY}:' (a grid) or '{SEARCH_KEY}:' (an "
            f"Optuna search), not both"
        )
    return path, raw


def is_search(raw: Mapping[str, Any]) -> bool:
    """Whether a read space file is a search (it has ``search:``); otherwise it is a grid,
    whose ``axes`` may be empty (one trial)."""
    return SEARCH_KEY in raw


def parse_space_file(path: Path, raw: Mapping[str, Any]) -> SpaceFile:
    """The shared sections of a read space file, checked."""
    metric = raw.get("metric", "test_top1")
    if not isinstance(metric, str) or not metric:
        raise SweepError(f"{path}: metric: expected a metric name such as test_top1")
    mode = raw.get("mode", metric_mode(metric))
    if mode not in MODES:
        raise SweepError(f"{path}: mode: expected max or min, got {mode!r}")
    base = nested_layer(raw.get("base") or {}, f"{path}: base")
    check_fields(base, f"{path}: base")
    presets_raw = raw.get("presets") or {}
    if not isinstance(presets_raw, Mapping):
        raise SweepError(f"{path}: presets: expected a mapping preset name -> settings")
    presets = {}
    for name, settings in presets_raw.items():
        if name not in PRESETS:
            raise SweepError(
                f"{path}: presets.{name}: unknown preset; valid: {', '.join(sorted(PRESETS))}"
            )
        presets[name] = parse_preset_layer(settings, f"{path}: presets.{name}")
    return SpaceFile(
        source=path,
        ablation=str(raw.get("ablation") or path.stem),
        description=str(raw.get("description") or ""),
        metric=metric,
        mode=mode,
        base=base,
        presets=presets,
        deviations=parse_deviations(raw.get(DEVIATIONS_KEY), str(path)),
    )


def nested_layer(mapping: Any, where: str) -> dict[str, Any]:
    """A partial config in either spelling (nested or dotted keys), nested."""
    if not isinstance(mapping, Mapping):
        raise SweepError(f"{where}: expected a mapping of config fields, got {mapping!r}")
    return nest(mapping)


def unknown_field_error(dotted: str, where: str, hint: str = "") -> SweepError:
    """The error for a field the config does not have, listing its section's fields."""
    fields = set(known_fields())
    sections = {name.split(".")[0] for name in fields}
    section = dotted.split(".")[0]
    if section not in sections:
        return SweepError(
            f"{where}: {dotted}: unknown section {section!r}; valid: {', '.join(sorted(sections))}"
        )
    valid = sorted(name for name in fields if name.startswith(f"{section}."))
    return SweepError(f"{where}: {dotted}: unknown field; valid: {', '.join(valid)}{hint}")


def check_fields(nested: Mapping[str, Any], where: str) -> None:
    """Every leaf must be a known config field (the message lists the section's fields)."""
    fields = set(known_fields())
    for dotted in flatten(nested):
        if dotted not in fields:
            raise unknown_field_error(dotted, where)


def parse_preset_layer(settings: Any, where: str) -> dict[str, Any]:
    """A YAML preset: config fields plus an optional per-dataset section."""
    layer = nested_layer(settings or {}, where)
    per_dataset = layer.pop(PER_DATASET_KEY, None) or {}
    check_fields(layer, where)
    if not isinstance(per_dataset, Mapping):
        raise SweepError(f"{where}.{PER_DATASET_KEY}: expected dataset name -> settings")
    from core.data import DATASETS

    checked = {}
    for dataset, values in per_dataset.items():
        if dataset not in DATASETS:
            raise SweepError(
                f"{where}.{PER_DATASET_KEY}.{dataset}: unknown dataset; valid: "
                f"{', '.join(sorted(DATASETS))}"
            )
        checked[dataset] = nested_layer(values or {}, f"{where}.{PER_DATASET_KEY}.{dataset}")
        check_fields(checked[dataset], f"{where}.{PER_DATASET_KEY}.{dataset}")
    return {**layer, PER_DATASET_KEY: checked} if checked else layer


def check_overrides(
    overrides: Mapping[str, Any], taken: Sequence[str], source: Path, what: str
) -> None:
    """``--set`` fields must exist and must not be ones the grid sweeps or the search
    samples (``taken``): every trial would otherwise ignore them or be the same."""
    check_fields(nest(dict(overrides)), "overrides (--set)")
    clash = sorted(set(overrides) & set(taken))
    if clash:
        raise SweepError(
            f"overrides (--set): {', '.join(clash)} is {what} of {source}; choose its values "
            f"with the script's flags (e.g. --augs, --frontends) or edit the space file"
        )
