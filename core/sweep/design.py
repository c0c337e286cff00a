"""The experimental design around a grid: controls, and replicates over seeds.

A number without a reference point is not a result. Every sweep can carry, next to its
cells, an **untrained-encoder control** (the same encoder and evaluation head, never
trained: what the representation is worth before training) and a **supervised
reference** (labels, same budget). Both are ordinary trials with their own MLflow runs.
Controls are shared by the cells they fit: the 36 cells of one front end in the
augmentation matrix differ only in their augmentations, so they share one control of
each kind.

Every cell and control can be replicated over seeds; a seed changes the
initialisation, the augmentation draws and the labelled subset, so the spread over
seeds is the noise a difference between cells must beat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from core.cells import SUPERVISED, UNTRAINED
from core.config import ExperimentConfig, compose
from core.dotted import get_dotted, nest
from core.sweep.grid import Axis, GridSpace, expand_cells
from core.sweep.trials import Trial, label_of


def expand_trials(
    space: GridSpace,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    trial_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    seeds: int = 1,
    controls: bool = False,
) -> list[Trial]:
    """Every grid cell as a validated :class:`Trial`, in grid order, then (``controls``)
    the controls, each replicated over ``seeds`` seeds.

    ``overrides`` are dotted ``--set`` fields for every cell; ``trial_overrides`` maps a
    cell id to dotted settings for that cell only, at every seed.
    """
    cells = expand_cells(space, preset, overrides, trial_overrides)
    if controls:
        sweep_wide = [*space.file.lower_layers(preset), nest(dict(overrides or {}))]
        cells = add_controls(space, cells, compose(sweep_wide))
    return replicate(cells, seeds)


def _control_changes(
    cell: Trial, role: str, swept_augment: dict[str, Any]
) -> dict[str, Any]:
    """What turns ``cell`` into its control of ``role`` (dotted fields).

    The untrained control ignores augmentations and labels (its evaluation head sees all
    labels, as every cell's does); the supervised reference keeps the cell's label
    fraction and the sweep's own augmentations (not a swept augmentation). Neither uses a
    projection head's output size, so controls of cells that differ only in it are one.
    """
    defaults = ExperimentConfig()
    changes: dict[str, Any] = {"model.proj_dim": defaults.model.proj_dim}
    if role == UNTRAINED:
        changes |= {
            "method.name": UNTRAINED,
            "augment.pipeline": [],
            "augment.spec_pipeline": [],
            "data.label_fraction": 1.0,
            "train.labelled_per_batch": None,
        }
        if "scored_classifier" in type(defaults.train).model_fields:
            changes["train.scored_classifier"] = "evaluation_head"  # it has no classifier
    else:
        changes |= {"method.name": SUPERVISED, **swept_augment}
    return changes


def add_controls(
    space: GridSpace, cells: Sequence[Trial], lower: Mapping[str, Any]
) -> list[Trial]:
    """``cells`` followed by their controls; each cell names its controls.

    ``lower`` is the sweep's layered config without the grid cells (preset, base,
    ``--set``): where the supervised reference takes a swept augmentation field's value
    from. A control is named after the axes it still depends on (``fold3-untrained``,
    ``stft3-supervised``), and shared by every cell whose control config is the same.
    """
    defaults = ExperimentConfig().model_dump()
    swept_augment = {
        name: get_dotted(lower, name, get_dotted(defaults, name))
        for axis in space.axes
        for name in axis.fields
        if name.startswith("augment.")
    }
    axes = {axis.field: axis for axis in space.axes if axis.kind != "matrix"}
    existing = [(cell.config, cell.cell_id) for cell in cells]
    controls: list[Trial] = []
    linked: list[Trial] = []
    for cell in cells:
        links: dict[str, str] = {}
        for role in (UNTRAINED, SUPERVISED):
            if role == SUPERVISED and cell.config.method.name == SUPERVISED:
                continue  # a supervised cell is its own reference
            changes = _control_changes(cell, role, swept_augment)
            config = cell.config.with_overrides(
                changes, source=f"{role} control of {cell.trial_id}"
            )
            found = next((name for known, name in existing if known == config), None)
            if found is None:
                coords = _control_coords(cell, axes, config, set(changes))
                found = _control_id(list(coords.values()), role, {t.trial_id for t in controls})
                controls.append(
                    Trial(found, cell.panel, None, None, config, role=role, coords=coords)
                )
                existing.append((config, found))
            links[role] = found
        linked.append(replace(cell, controls=links))
    return linked + controls


def _reset(name: str, changed: set[str]) -> bool:
    """Whether a control sets ``name`` itself (a new method drops every method field)."""
    return name in changed or (name.startswith("method.") and "method.name" in changed)


def _control_coords(
    cell: Trial, axes: Mapping[str, Axis], config: ExperimentConfig, changed: set[str]
) -> dict[str, str]:
    """The cell's labels on the axes the control still depends on. A case that the
    control depends on only in part is labelled by what remains (``batch_size32`` for a
    (batch, queue) case of an untrained control, which has no queue)."""
    coords = {}
    dumped = config.model_dump(mode="json")
    for name, label in cell.coords.items():
        axis = axes.get(name)
        if axis is None:
            continue
        kept = [field for field in axis.fields if not _reset(field, changed)]
        if not kept:
            continue
        if axis.kind == "cases" and len(kept) < len(axis.fields):
            # Named by the first setting it keeps, in the order the case declares them
            # (the front end of a front end + encoder + augmentations case).
            declared = list(axis.coupled[label])
            first = min(kept, key=lambda field: declared.index(field) if field in declared else 99)
            value = get_dotted(dumped, first)
            shown = label_of(value)
            label = f"{first.split('.')[-1]}{shown}" if isinstance(value, int | float) else shown
        coords[name] = label
    return coords


def _control_id(labels: list[str], role: str, taken: set[str]) -> str:
    name = "-".join([*labels, role])
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    return candidate


def replicate(trials: Sequence[Trial], seeds: int) -> list[Trial]:
    """Each trial at ``seeds`` seeds: its own ``train.seed`` and the next ones. Trial ids
    get a ``-seed<N>`` suffix when there is more than one seed; ``cell_id`` stays."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if seeds == 1:
        return list(trials)
    replicated = []
    for trial in trials:
        base = trial.config.train.seed
        for seed in range(base, base + seeds):
            train = trial.config.train.model_copy(update={"seed": seed})
            config = trial.config.model_copy(update={"train": train})
            replicated.append(replace(trial, trial_id=f"{trial.cell_id}-seed{seed}", config=config))
    return replicated
