"""NSynth: ``nsynth-{train,valid,test}/examples.json`` + ``audio/<note_str>.wav`` (16 kHz, 4 s).

Each JSON maps a note name to its attributes, among them ``instrument_family`` (11
classes, with ``instrument_family_str``) and ``pitch`` (MIDI 0-127, 128 classes); the
label field picks one. The three subsets are the official train/validation/test split
(instruments do not overlap between train and the others).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.data.base import DatasetError, DatasetSpec, Listing, Resource

FAMILIES = [
    "bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
    "synth_lead", "vocal",
]  # fmt: skip
SUBSETS = {"train": "train", "valid": "validation", "test": "test"}
_BASE = "http://download.magenta.tensorflow.org/datasets/nsynth"


def scan(root: Path, label_field: str | None) -> Listing:
    """Every subset present under ``root``; at least one must be."""
    field = SPEC.label_field(label_field)
    files, labels, split, metadata = [], [], [], []
    for subset, split_name in SUBSETS.items():
        examples_file = root / f"nsynth-{subset}" / "examples.json"
        if not examples_file.is_file():
            continue
        metadata.append(examples_file)
        try:
            examples = json.loads(examples_file.read_text())
        except json.JSONDecodeError as error:
            raise DatasetError(f"nsynth: {examples_file} is not valid JSON: {error}") from None
        for note in sorted(examples):
            attributes = examples[note]
            if field not in attributes:
                raise DatasetError(f"nsynth: {examples_file}: note {note!r} has no {field!r}")
            files.append(examples_file.parent / "audio" / f"{note}.wav")
            labels.append(int(attributes[field]))
            split.append(split_name)
    if not files:
        raise DatasetError(
            f"nsynth: none of nsynth-train/, nsynth-valid/, nsynth-test/ with examples.json "
            f"found under {root}"
        )
    class_names = FAMILIES if field == "instrument_family" else [str(p) for p in range(128)]
    labels_array = np.array(labels)
    if labels_array.min() < 0 or labels_array.max() >= len(class_names):
        raise DatasetError(f"nsynth: {field} values outside 0-{len(class_names) - 1}")
    return Listing(
        files=files,
        labels=labels_array,
        class_names=list(class_names),
        split=np.array(split),
        metadata_files=metadata,
    )


SPEC = DatasetSpec(
    name="nsynth",
    folder="nsynth",
    version="2.2",
    clip_seconds=4.0,
    scan=scan,
    description="NSynth: 305,979 four-second musical notes, 11 families / 128 pitches",
    homepage="https://magenta.tensorflow.org/datasets/nsynth",
    resources=tuple(
        Resource(url=f"{_BASE}/nsynth-{s}.jsonwav.tar.gz", filename=f"nsynth-{s}.jsonwav.tar.gz")
        for s in ("train", "valid", "test")
    ),
    label_fields=("instrument_family", "pitch"),
    marker="",
)
