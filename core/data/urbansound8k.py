"""UrbanSound8K: ``metadata/UrbanSound8K.csv`` + ``audio/fold{k}/*.wav``, ten folds.

CSV columns: ``slice_file_name, fsID, start, end, salience, fold, classID, class``.
Clips are at most 4 s and come at many rates, bit depths and channel counts, which the
decoder normalises. The folds are predefined (clips of one recording share a fold), so
evaluation must use them rather than a random split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.data.base import DatasetError, DatasetSpec, Listing, Resource, require_file

COLUMNS = ("slice_file_name", "fold", "classID", "class")
CLASS_NAMES = [
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
]  # fmt: skip


def scan(root: Path, label_field: str | None) -> Listing:
    """All clips of the CSV, label = ``classID``, fold = ``fold``."""
    meta = require_file(root / "metadata" / "UrbanSound8K.csv", "urbansound8k",
                        "metadata/UrbanSound8K.csv")  # fmt: skip
    with meta.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"urbansound8k: {meta} lacks columns {missing}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"urbansound8k: {meta} lists no clips")
    bad = sorted({r["classID"] for r in rows if not 0 <= int(r["classID"]) < 10})
    if bad:
        raise DatasetError(f"urbansound8k: {meta} has classID values {bad} outside 0-9")
    return Listing(
        files=[root / "audio" / f"fold{int(r['fold'])}" / r["slice_file_name"] for r in rows],
        labels=np.array([int(r["classID"]) for r in rows]),
        class_names=list(CLASS_NAMES),
        fold=np.array([int(r["fold"]) for r in rows]),
        metadata_files=[meta],
    )


SPEC = DatasetSpec(
    name="urbansound8k",
    folder="urbansound8k",
    version="1.0",
    clip_seconds=4.0,
    scan=scan,
    description="UrbanSound8K: 8,732 urban sound excerpts (<= 4 s), 10 classes, 10 folds",
    homepage="https://urbansounddataset.weebly.com/urbansound8k.html",
    resources=(
        Resource(
            url="https://zenodo.org/record/1203745/files/UrbanSound8K.tar.gz",
            filename="UrbanSound8K.tar.gz",
            md5="9aa69802bbf37fb986f71ec1483a196e",
            strip="UrbanSound8K",
        ),
    ),
    label_fields=("class",),
    num_folds=10,
    marker="metadata/UrbanSound8K.csv",
    class_names=tuple(CLASS_NAMES),
)
