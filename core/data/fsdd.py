"""Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{take}.wav`` (8 kHz mono).

The conventional split holds out takes 0-4 of every speaker and digit as the test set
(300 clips) and trains on takes 5-49 (2,700). Class names are the English digit words in
digit order, the same as Speech Commands-10, so FSDD is a drop-in stand-in for SC-10.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.data.base import DatasetError, DatasetSpec, Listing, Resource

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_TAKES = range(0, 5)
_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<take>\d+)\.wav$")
_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"


def scan(root: Path, label_field: str | None) -> Listing:
    """List ``recordings/*.wav``; names that do not follow the layout are excluded."""
    recordings = root / "recordings"
    if not recordings.is_dir():
        raise DatasetError(f"fsdd: {recordings} is not a folder; expected recordings/*.wav")
    files, labels, split, excluded = [], [], [], []
    for path in sorted(recordings.glob("*.wav")):
        match = _NAME.match(path.name)
        if match is None:
            excluded.append((str(path.relative_to(root)), "name is not digit_speaker_take.wav"))
            continue
        files.append(path)
        labels.append(int(match["digit"]))
        split.append("test" if int(match["take"]) in TEST_TAKES else "train")
    if not files:
        raise DatasetError(f"fsdd: no recordings/*.wav found under {root}")
    return Listing(
        files=files,
        labels=np.array(labels),
        class_names=list(DIGIT_WORDS),
        split=np.array(split),
        excluded=excluded,
    )


SPEC = DatasetSpec(
    name="fsdd",
    folder="fsdd",
    version=_COMMIT[:12],
    clip_seconds=1.0,
    scan=scan,
    description="Free Spoken Digit Dataset: 3,000 spoken digits, 6 speakers, 8 kHz",
    homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
    resources=(
        Resource(
            url=f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{_COMMIT}.tar.gz",
            filename=f"free-spoken-digit-dataset-{_COMMIT[:12]}.tar.gz",
            strip=f"free-spoken-digit-dataset-{_COMMIT}",
        ),
    ),
    label_fields=("digit",),
    marker="recordings",
)
