"""ESC-50: ``meta/esc50.csv`` + ``audio/*.wav`` (44.1 kHz, 5 s), five official folds.

CSV columns: ``filename, fold, target, category, esc10, src_file, take``. ESC-10 is the
subset with ``esc10 == True``; its ten targets are renumbered 0-9 in target order.
Folds are kept per clip; the split scheme (ESC-50 paper: train 1-4, test 5; QUACLRS k-fold)
is chosen in :mod:`core.data.splits`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.data.base import DatasetError, DatasetSpec, Listing, Resource, require_file

COLUMNS = ("filename", "fold", "target", "category", "esc10")


def _scan(root: Path, esc10_only: bool, name: str) -> Listing:
    meta = require_file(root / "meta" / "esc50.csv", name, "meta/esc50.csv")
    with meta.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{name}: {meta} lacks columns {missing}; expected {COLUMNS}")
        rows = [r for r in reader if not esc10_only or r["esc10"].strip().lower() == "true"]
    if not rows:
        raise DatasetError(f"{name}: {meta} lists no clips")
    targets = sorted({int(r["target"]) for r in rows})
    renumber = {target: i for i, target in enumerate(targets)}
    names = {int(r["target"]): r["category"] for r in rows}
    return Listing(
        files=[root / "audio" / r["filename"] for r in rows],
        labels=np.array([renumber[int(r["target"])] for r in rows]),
        class_names=[names[t] for t in targets],
        fold=np.array([int(r["fold"]) for r in rows]),
        metadata_files=[meta],
    )


def scan(root: Path, label_field: str | None) -> Listing:
    """All 50 classes, label = the CSV's ``target``."""
    return _scan(root, esc10_only=False, name="esc50")


def scan_esc10(root: Path, label_field: str | None) -> Listing:
    """The ESC-10 subset, labels 0-9 in the order of the ESC-50 targets."""
    return _scan(root, esc10_only=True, name="esc10")


_RESOURCES = (
    Resource(
        url="https://github.com/karolpiczak/ESC-50/archive/master.zip",
        filename="ESC-50-master.zip",
        strip="ESC-50-master",
    ),
)
_HOME = "https://github.com/karolpiczak/ESC-50"

SPEC = DatasetSpec(
    name="esc50",
    folder="esc50",
    version="master",
    clip_seconds=5.0,
    scan=scan,
    description="ESC-50: 2,000 five-second environmental sounds, 50 classes, 5 folds",
    homepage=_HOME,
    resources=_RESOURCES,
    label_fields=("category",),
    num_folds=5,
    marker="meta/esc50.csv",
)
SPEC_10 = DatasetSpec(
    name="esc10",
    folder="esc50",
    version="master",
    clip_seconds=5.0,
    scan=scan_esc10,
    description="ESC-10: the 400-clip, 10-class subset of ESC-50",
    homepage=_HOME,
    resources=_RESOURCES,
    label_fields=("category",),
    num_folds=5,
    marker="meta/esc50.csv",
)
