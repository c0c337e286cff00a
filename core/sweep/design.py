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

from core.config import ExperimentConfig
from core.dotted import get_dotted
from core.sweep.space import SUPERVISED, UNTRAINED, SearchSpace, Trial


def _control_config(
    cell: Trial, role: str, matrix_default: tuple[str, Any] | None
) -> ExperimentConfig:
    """The control of ``role`` for ``cell``: the cell's config with the method replaced.

    The untrained control ignores augmentations and labels (its evaluation head sees all
    labels, as every cell's does); the supervised reference keeps the cell's label
    fraction and the sweep's own augmentations (not the swept matrix value).
    """
    if role == UNTRAINED:
        changes: dict[str, Any] = {
            "method.name": UNTRAINED,
            "augment.pipeline": [],
            "augment.spec_pipeline": [],
            "data.label_fraction": 1.0,
            "train.labelled_per_batch": None,
        }
    else:
        changes = {"method.name": SUPERVISED}
        if matrix_default is not None:
            changes[matrix_default[0]] = matrix_default[1]
    return cell.config.with_overrides(changes, source=f"{role} control of {cell.trial_id}")


def add_controls(
    space: SearchSpace, cells: Sequence[Trial], lower: Mapping[str, Any]
) -> list[Trial]:
    """``cells`` followed by their controls; each cell names its controls.

    ``lower`` is the sweep's layered config without the grid cells (preset, base,
    ``--set``): where the supervised reference takes the matrix field's value from.
    """
    matrix = space.matrix_axis
    matrix_default = None
    if matrix is not None:
        default = get_dotted(ExperimentConfig().model_dump(), matrix.field)
        matrix_default = (matrix.field, get_dotted(lower, matrix.field, default))
    existing = [(cell.config, cell.cell_id) for cell in cells]
    controls: list[Trial] = []
    linked: list[Trial] = []
    for cell in cells:
        links: dict[str, str] = {}
        for role in (UNTRAINED, SUPERVISED):
            if role == SUPERVISED and cell.config.method.name == SUPERVISED:
                continue  # a supervised cell is its own reference
            config = _control_config(cell, role, matrix_default)
            found = next((name for known, name in existing if known == config), None)
            if found is None:
                found = _control_id(cell.panel, role, {t.trial_id for t in controls})
                controls.append(Trial(found, cell.panel, None, None, config, role=role))
                existing.append((config, found))
            links[role] = found
        linked.append(replace(cell, controls=links))
    return linked + controls


def _control_id(panel: str, role: str, taken: set[str]) -> str:
    name = f"{panel}-{role}" if panel != "all" else role
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
