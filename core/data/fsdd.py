"""Free Spoken Digit Dataset: ``recordings/{digit}_{speaker}_{take}.wav`` (8 kHz mono).

The conventional split holds out takes 0-4 of every speaker and digit as the test set
(300 clips) and trains on takes 5-49 (2,700): ``split_scheme: official`` uses it. Class
names are the English digit words in digit order, the same as Speech Commands-10, so FSDD
is a drop-in stand-in for SC-10.

Speaker folds: every clip also gets ``fold`` = its speaker's number in the sorted list of
the six published speakers, fixed so that a fold means the same speaker on any copy:

    1 george, 2 jackson, 3 lucas, 4 nicolas, 5 theo, 6 yweweler

so the fold-based schemes run on FSDD too: ``split_scheme: quaclrs`` with ``data.fold: k``
tests on speaker k, validates on speaker k-1 (speaker 1 wraps to 6) and trains on the
other four, a speaker-independent split (no voice is seen in training and testing), where
the takes-based official split tests on the training speakers' voices. A recording of a
speaker outside the six has no fold and is excluded (listed in the cache manifest).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.data.base import DatasetError, DatasetSpec, Listing, Resource

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_TAKES = range(0, 5)
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # fold = index + 1
_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<take>\d+)\.wav$")
_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"


def scan(root: Path, label_field: str | None) -> Listing:
    """List ``recordings/*.wav`` with the takes split and speaker folds; names that do not
    follow the layout, or name an unknown speaker, are excluded."""
    recordings = root / "recordings"
    if not recordings.is_dir():
        raise DatasetError(f"fsdd: {recordings} is not a folder; expected recordings/*.wav")
    files, labels, split, fold, excluded = [], [], [], [], []
    for path in sorted(recordings.glob("*.wav")):
        match = _NAME.match(path.name)
        if match is None:
            excluded.append((str(path.relative_to(root)), "name is not digit_speaker_take.wav"))
            continue
        if match["speaker"] not in SPEAKERS:
            excluded.append((
                str(path.relative_to(root)),
                f"speaker {match['speaker']!r} is not one of FSDD's six ({', '.join(SPEAKERS)}), "
                f"so it has no speaker fold; rename or remove the file",
            ))  # fmt: skip
            continue
        files.append(path)
        labels.append(int(match["digit"]))
        split.append("test" if int(match["take"]) in TEST_TAKES else "train")
        fold.append(SPEAKERS.index(match["speaker"]) + 1)
    if not files:
        raise DatasetError(f"fsdd: no recordings/*.wav found under {root}")
    return Listing(
        files=files,
        labels=np.array(labels),
        class_names=list(DIGIT_WORDS),
        split=np.array(split),
        fold=np.array(fold, dtype=np.int64),
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
    num_folds=len(SPEAKERS),
    marker="recordings",
)
