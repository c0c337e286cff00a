"""Departures from a paper, named wherever a researcher reads the results.

A paper preset reproduces a paper value by value; where it cannot (ESC-10's 320 training
clips cannot hold CLAR's batch of 512), the space file declares the departure under
``deviations:``, and where a user departs on the command line (``--preset paper --set
data.dataset=urbansound8k``, the 10-class fallback when sireNNet is missing) the
override itself is one. Both are found here, at plan time, and travel with the sweep: the
dry run prints them, the report's summary and ``deviations.txt`` list them, and the parent
run carries them as the tag ``clarlab.deviations``. A table from a run that departs from
the paper can then never pass for the paper's.

A declared deviation in a space file::

    deviations:
      - preset: paper          # the preset it belongs to
        dataset: esc10         # optional: only the trials on this dataset
        field: train.batch_size
        paper: 512             # the paper's value
        why: "ESC-10 has 320 training clips, fewer than 512"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import compose, known_fields
from core.dotted import get_dotted
from core.presets import PRESETS
from core.sweep.errors import SweepError

DEVIATIONS_KEY = "deviations"
DEVIATIONS_TAG = "clarlab.deviations"  # the parent run's tag
DEVIATIONS_FILE = "deviations.txt"  # in the report folder and the parent run's artifacts
_ENTRY_KEYS = ("preset", "dataset", "field", "paper", "why")


@dataclass(frozen=True)
class DeclaredDeviation:
    """One entry of a space file's ``deviations:`` list."""

    preset: str
    field: str
    paper: Any
    why: str
    dataset: str | None = None


def parse_deviations(raw: Any, where: str) -> tuple[DeclaredDeviation, ...]:
    """The checked ``deviations:`` list of a space file; errors name the entry and key."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise SweepError(f"{where}: {DEVIATIONS_KEY}: expected a list of mappings")
    from core.data import DATASETS

    entries = []
    for number, entry in enumerate(raw):
        at = f"{where}: {DEVIATIONS_KEY}[{number}]"
        if not isinstance(entry, Mapping):
            raise SweepError(f"{at}: expected a mapping with keys {', '.join(_ENTRY_KEYS)}")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        missing = [key for key in ("preset", "field", "paper", "why") if key not in entry]
        if unknown or missing:
            raise SweepError(
                f"{at}: unknown key(s) {unknown}, missing {missing}; valid: {', '.join(_ENTRY_KEYS)}"
            )
        if entry["preset"] not in PRESETS:
            raise SweepError(
                f"{at}.preset: unknown preset {entry['preset']!r}; valid: {', '.join(sorted(PRESETS))}"
            )
        if entry["field"] not in set(known_fields()):
            raise SweepError(f"{at}.field: {entry['field']!r} is not a config field")
        dataset = entry.get("dataset")
        if dataset is not None and dataset not in DATASETS:
            raise SweepError(
                f"{at}.dataset: unknown dataset {dataset!r}; valid: {', '.join(sorted(DATASETS))}"
            )
        if not str(entry["why"]).strip():
            raise SweepError(f"{at}.why: say why the paper's value cannot be used")
        entries.append(
            DeclaredDeviation(
                entry["preset"], entry["field"], entry["paper"], str(entry["why"]), dataset
            )
        )
    return tuple(entries)


def _declared_notes(
    declared: Sequence[DeclaredDeviation], preset: str | None, configs: Sequence[Any]
) -> list[str]:
    """One line per declared deviation that some trial of this preset actually takes."""
    notes = []
    for deviation in declared:
        if deviation.preset != preset:
            continue
        values = [
            get_dotted(config.model_dump(mode="json"), deviation.field)
            for config in configs
            if deviation.dataset in (None, config.data.dataset)
        ]
        taken = sorted({repr(value) for value in values if value != deviation.paper})
        if not taken:
            continue
        scope = f" on {deviation.dataset}" if deviation.dataset else ""
        notes.append(
            f"{deviation.field}={', '.join(taken)}{scope} (the paper: {deviation.paper!r}): "
            f"{deviation.why}"
        )
    return notes


def _class_set_note(dataset: str, paper_dataset: str) -> str:
    """What changing the dataset does to the class set, for the override's line."""
    from core.data import DatasetError, get_spec

    try:
        ours, theirs = (
            get_spec(dataset).num_classes(None),
            get_spec(paper_dataset).num_classes(None),
        )
    except DatasetError:
        return ""
    counts = f" ({ours} classes, the paper's {theirs})" if ours and theirs else ""
    return f"; not the paper's class set{counts}"


def _override_notes(
    lower_layers: Sequence[Mapping[str, Any]], overrides: Mapping[str, Any]
) -> list[str]:
    """One line per ``--set`` that replaces a value the paper preset sets."""
    paper = compose(lower_layers)
    notes = []
    for field, value in overrides.items():
        preset_value = get_dotted(paper, field)
        if preset_value is None or preset_value == value:
            continue
        line = f"--set {field}={value} replaces the paper preset's {preset_value!r}"
        if field == "data.dataset":
            line += _class_set_note(str(value), str(preset_value))
        notes.append(line)
    return notes


def deviation_notes(
    declared: Sequence[DeclaredDeviation],
    preset: str | None,
    lower_layers: Sequence[Mapping[str, Any]],
    overrides: Mapping[str, Any],
    configs: Sequence[Any],
) -> list[str]:
    """Every departure from the paper a sweep of ``preset`` takes: the space file's
    declared ones its trials take, and, under the paper preset, each ``--set`` that
    replaces one of the preset's values (``lower_layers``: the preset, the file's base and
    its paper section)."""
    notes = _declared_notes(declared, preset, configs)
    if preset == "paper":
        notes += _override_notes(lower_layers, overrides)
    return notes


def deviation_lines(deviations: Sequence[str]) -> list[str]:
    """The report's lines: a heading that says these results are not the paper's setting,
    then one line per departure."""
    if not deviations:
        return []
    return ["DEVIATES FROM THE PAPER (these numbers are not the paper's setting):"] + [
        f"  - {line}" for line in deviations
    ]


def write_deviations(deviations: Sequence[str], out_dir: Path) -> Path:
    """``deviations.txt`` in the report folder (attached to the parent run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DEVIATIONS_FILE
    path.write_text("\n".join(deviation_lines(deviations)) + "\n")
    return path
