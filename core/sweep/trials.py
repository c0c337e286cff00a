"""One validated trial: its stable id, its config, and where it sits in the report.

A grid's expansion makes every cell and control a :class:`Trial` (:mod:`core.sweep.grid`,
:mod:`core.sweep.design`); a search makes one for the base config every sample starts
from, so that both are checked against their data the same way
(:mod:`core.sweep.preflight`) before Ray starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.cells import CELL
from core.config import ExperimentConfig
from core.names import check_name


def label_of(value: Any) -> str:
    """How a value reads in trial ids and tables: lists as ``FD+TM`` (``none`` if empty),
    numbers without trailing zeros (``0.01``, ``4096``)."""
    if isinstance(value, list | tuple):
        return "+".join(str(item) for item in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Trial:
    """One validated trial: a grid cell or a control at one seed, or a search's base.
    ``trial_id`` is stable across restarts and resumes."""

    trial_id: str
    panel: str  # labels of the non-matrix axes, e.g. "stft3"
    first: str | None  # matrix row (first augmentation)
    second: str | None  # matrix column (second augmentation)
    config: ExperimentConfig
    role: str = CELL  # CELL, or the control it is (core.cells.UNTRAINED | SUPERVISED)
    cell_id: str = ""  # the cell (or control) this trial replicates; trial_id w/o seed
    # The controls this cell is compared with: role -> their cell_id.
    controls: Mapping[str, str] = field(default_factory=dict)
    # Axis name -> this trial's label on it (a control: the axes it depends on).
    coords: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A trial id names a Tune folder and an MLflow run: a YAML label such as "../x"
        # must not become a path.
        check_name(self.trial_id, "trial")
        if not self.cell_id:
            object.__setattr__(self, "cell_id", self.trial_id)

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def pipeline(self) -> list[str]:
        return list(self.config.augment.pipeline)

    def to_json(self) -> dict[str, Any]:
        """What a sweep's state file keeps of the trial (the config as its JSON dump)."""
        return {
            "trial_id": self.trial_id,
            "panel": self.panel,
            "first": self.first,
            "second": self.second,
            "role": self.role,
            "cell_id": self.cell_id,
            "controls": dict(self.controls),
            "coords": dict(self.coords),
            "config": self.config.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], source: str) -> Trial:
        """The trial of :meth:`to_json`, its config validated again."""
        return cls(
            raw["trial_id"],
            raw["panel"],
            raw["first"],
            raw["second"],
            ExperimentConfig.from_dict(raw["config"], source=f"{source} ({raw['trial_id']})"),
            role=raw["role"],
            cell_id=raw["cell_id"],
            controls=raw["controls"],
            coords=raw.get("coords", {}),
        )
