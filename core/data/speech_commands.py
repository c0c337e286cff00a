"""Speech Commands v0.02: ``<word>/<speaker>_nohash_<n>.wav`` at 16 kHz, 1 s.

The official split is by list files: ``validation_list.txt`` and ``testing_list.txt``
name the validation and test clips (relative paths); every other clip is training. A
listed clip whose file is missing is excluded with the reason "listed in testing_list.txt
but missing" (so it appears in the cache manifest and the build warns), as a clip listed
in UrbanSound8K's CSV or NSynth's JSON without its file is: a test split that quietly
shrank would make scores incomparable with the official ones.
``_background_noise_`` holds long noise recordings, not keyword clips, and is excluded.
``speech_commands_10`` (the CLAR paper's SC-10) keeps the ten digit words, labelled by
digit value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.base import DatasetError, DatasetSpec, Listing, Resource, require_file
from core.data.fsdd import DIGIT_WORDS

WORDS_V2 = [
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward",
    "four", "go", "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on",
    "one", "right", "seven", "sheila", "six", "stop", "three", "tree", "two", "up", "visual",
    "wow", "yes", "zero",
]  # fmt: skip
BACKGROUND = "_background_noise_"


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _scan(root: Path, class_names: list[str], name: str) -> Listing:
    validation_file = require_file(root / "validation_list.txt", name, "validation_list.txt")
    testing_file = require_file(root / "testing_list.txt", name, "testing_list.txt")
    validation, testing = _read_list(validation_file), _read_list(testing_file)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != BACKGROUND)
    unknown = [f for f in folders if f not in WORDS_V2 and not f.startswith(".")]
    if unknown:
        raise DatasetError(
            f"{name}: folders {unknown} under {root} are not Speech Commands v0.02 words; "
            f"valid words: {', '.join(WORDS_V2)}"
        )
    index = {word: i for i, word in enumerate(class_names)}
    files, labels, split, found = [], [], [], set()
    for word in folders:
        if word not in index:
            continue
        for path in sorted((root / word).glob("*.wav")):
            relative = f"{word}/{path.name}"
            files.append(path)
            labels.append(index[word])
            found.add(relative)
            split.append(
                "test" if relative in testing else "validation" if relative in validation
                else "train"
            )  # fmt: skip
    if not files:
        raise DatasetError(f"{name}: no <word>/*.wav clips found under {root}")
    return Listing(
        files=files,
        labels=np.array(labels),
        class_names=list(class_names),
        split=np.array(split),
        metadata_files=[validation_file, testing_file],
        excluded=_missing_entries(
            {testing_file.name: testing, validation_file.name: validation}, found, index
        ),
    )


def _missing_entries(
    lists: dict[str, set[str]], found: set[str], words: dict[str, int]
) -> list[tuple[str, str]]:
    """``(path, reason)`` for every list entry of this dataset's words without its file.

    Entries of words the dataset leaves out (SC-10 keeps the digits only) are not its
    clips, so their absence is not reported. An entry in both lists is reported once, for
    the list that decides its split (testing wins, as in the scan).
    """
    missing: dict[str, str] = {}
    for list_name, entries in lists.items():
        for entry in sorted(entries - found):
            if entry.split("/", 1)[0] in words and entry not in missing:
                missing[entry] = f"listed in {list_name} but missing"
    return sorted(missing.items())


def scan(root: Path, label_field: str | None) -> Listing:
    """All 35 words of v0.02, labelled by their index in the sorted word list."""
    return _scan(root, WORDS_V2, "speech_commands")


def scan_digits(root: Path, label_field: str | None) -> Listing:
    """SC-10: the ten digit words only, label = digit value."""
    return _scan(root, DIGIT_WORDS, "speech_commands_10")


_RESOURCES = (
    Resource(
        url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        filename="speech_commands_v0.02.tar.gz",
        sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
        size=2_428_923_189,
    ),
)
_HOME = "https://arxiv.org/abs/1804.03209"

SPEC = DatasetSpec(
    name="speech_commands",
    folder="speech_commands",
    version="v0.02",
    clip_seconds=1.0,
    scan=scan,
    description="Speech Commands v0.02: 105,829 one-second utterances of 35 words",
    homepage=_HOME,
    resources=_RESOURCES,
    label_fields=("word",),
    marker="testing_list.txt",
)
SPEC_10 = DatasetSpec(
    name="speech_commands_10",
    folder="speech_commands",
    version="v0.02",
    clip_seconds=1.0,
    scan=scan_digits,
    description="Speech Commands v0.02, the ten digit words (CLAR's SC-10)",
    homepage=_HOME,
    resources=_RESOURCES,
    label_fields=("word",),
    marker="testing_list.txt",
)
