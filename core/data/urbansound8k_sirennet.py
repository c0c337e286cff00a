"""QUACLRS's 13-class extension: UrbanSound8K without ``siren`` plus sireNNet's four classes.

QUACLRS drops UrbanSound8K's ``siren`` (it overlaps the emergency-vehicle classes) and adds
``ambulance``, ``firetruck``, ``police`` and ``traffic`` from sireNNet. Classes, in label
order: the nine remaining UrbanSound8K classes in ``classID`` order (``street_music``, ID
9, becomes label 8), then the four sireNNet classes (labels 9-12).

Two folders are read: UrbanSound8K in its official layout (``data.root`` or
``$CLARLAB_DATA/urbansound8k``, downloadable) and sireNNet in its published layout, one
subfolder of ``.wav`` files per class::

    sirennet/ambulance/*.wav  firetruck/*.wav  police/*.wav  traffic/*.wav

(``data.extra_root`` or ``$CLARLAB_DATA/sirennet``). sireNNet has no stable download URL,
so clarlab never fetches it; :data:`SIRENNET_SOURCE` says where it is published.

Folds: UrbanSound8K clips keep their predefined folds. sireNNet has no folds, so each of
its classes is spread over folds 1-10 round-robin, in the order of a permutation of the
class's sorted file names drawn from a fixed seed (per class), so every fold gets a tenth
of each class (to within one clip) and the assignment is the same on every machine and
run. It depends on the set of file names: adding or removing a file of a class
reshuffles that class's folds (and so changes the cache key through the fold array).
Unlike UrbanSound8K's folds, these do not keep clips of one source recording together,
because sireNNet does not say which clips share one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data import urbansound8k
from core.data.base import DatasetError, DatasetNotFoundError, DatasetSpec, Listing

SIRENNET_CLASSES = ("ambulance", "firetruck", "police", "traffic")
DROPPED = "siren"
_DROPPED_ID = urbansound8k.CLASS_NAMES.index(DROPPED)
URBAN_CLASSES = [name for name in urbansound8k.CLASS_NAMES if name != DROPPED]
CLASS_NAMES = URBAN_CLASSES + list(SIRENNET_CLASSES)
NUM_FOLDS = 10
FOLD_SEED = 13  # fixed: the sireNNet fold assignment must not change between runs
EXTRA_FOLDER = "sirennet"
SIRENNET_SOURCE = (
    "the sireNNet dataset ('sireNNet - Emergency Vehicle Siren Classification Dataset For "
    "Urban Applications', Scientific Data 2022, https://doi.org/10.1038/s41597-022-01727-2, "
    "which links the published data)"
)
FALLBACK = (
    "Without it, --set data.dataset=urbansound8k runs UrbanSound8K's own 10 classes (siren "
    "included), which is not the paper's class set (QUACLRS 4.1: 13 classes)"
)


def sirennet_folds(count: int, class_index: int) -> np.ndarray:
    """Folds 1..10 for ``count`` sorted files of one sireNNet class: round-robin over a
    permutation seeded by (:data:`FOLD_SEED`, class), so folds differ in size by <= 1."""
    order = np.random.default_rng([FOLD_SEED, class_index]).permutation(count)
    folds = np.empty(count, dtype=np.int64)
    folds[order] = np.arange(count) % NUM_FOLDS + 1
    return folds


def _sirennet(extra_root: Path) -> tuple[list[Path], list[int], list[int]]:
    """Files, labels and folds of the sireNNet folder; its layout is checked first."""
    if not extra_root.is_dir():
        raise DatasetNotFoundError(
            f"urbansound8k_sirennet: the sireNNet folder {extra_root} does not exist; get it "
            f"from {SIRENNET_SOURCE} and set data.extra_root to it (default "
            f"$CLARLAB_DATA/{EXTRA_FOLDER}). {FALLBACK}"
        )
    absent = [name for name in SIRENNET_CLASSES if not (extra_root / name).is_dir()]
    if absent:
        found = sorted(p.name for p in extra_root.iterdir() if p.is_dir())
        raise DatasetError(
            f"urbansound8k_sirennet: {extra_root} lacks the sireNNet class folder(s) "
            f"{absent}; expected {', '.join(n + '/' for n in SIRENNET_CLASSES)} directly under "
            f"it (found folders: {found or 'none'}). Point data.extra_root at the folder "
            f"that holds them. {FALLBACK}"
        )
    files: list[Path] = []
    labels: list[int] = []
    folds: list[int] = []
    for index, name in enumerate(SIRENNET_CLASSES):
        clips = sorted(
            p for p in (extra_root / name).iterdir()
            if p.suffix.lower() == ".wav" and not p.name.startswith(".")
        )  # fmt: skip
        if not clips:
            raise DatasetError(
                f"urbansound8k_sirennet: {extra_root / name} holds no .wav files; the "
                f"sireNNet folder is incomplete (re-extract it from {SIRENNET_SOURCE}). "
                f"{FALLBACK}"
            )
        files.extend(clips)
        labels.extend([len(URBAN_CLASSES) + index] * len(clips))
        folds.extend(sirennet_folds(len(clips), index).tolist())
    return files, labels, folds


def scan_merged(root: Path, label_field: str | None, extra_root: Path) -> Listing:
    """UrbanSound8K at ``root`` without siren, then sireNNet at ``extra_root``."""
    urban = urbansound8k.scan(root, label_field)
    keep = np.flatnonzero(urban.labels != _DROPPED_ID)
    urban = urban.subset(keep)
    urban_labels = np.where(urban.labels > _DROPPED_ID, urban.labels - 1, urban.labels)
    files, labels, folds = _sirennet(extra_root)
    return Listing(
        files=urban.files + files,
        labels=np.concatenate([urban_labels, np.array(labels, dtype=np.int64)]),
        class_names=list(CLASS_NAMES),
        fold=np.concatenate([np.asarray(urban.fold), np.array(folds, dtype=np.int64)]),
        metadata_files=urban.metadata_files,
        excluded=urban.excluded,
    )


def scan(root: Path, label_field: str | None) -> Listing:
    """The merged listing with sireNNet at its default folder, ``$CLARLAB_DATA/sirennet``
    (the cache reads ``data.extra_root`` through :attr:`DatasetSpec.extra_scan`)."""
    from core.data import data_home  # the package imports this module

    return scan_merged(root, label_field, data_home() / EXTRA_FOLDER)


SPEC = DatasetSpec(
    name="urbansound8k_sirennet",
    folder=urbansound8k.SPEC.folder,
    version=f"{urbansound8k.SPEC.version}+sirennet",
    clip_seconds=4.0,
    scan=scan,
    description=(
        "QUACLRS's 13 classes: UrbanSound8K without siren + sireNNet's ambulance, "
        "firetruck, police, traffic; 10 folds"
    ),
    homepage=urbansound8k.SPEC.homepage,
    resources=urbansound8k.SPEC.resources,  # UrbanSound8K only: sireNNet is user-supplied
    label_fields=("class",),
    num_folds=NUM_FOLDS,
    marker=urbansound8k.SPEC.marker,
    extra_folder=EXTRA_FOLDER,
    extra_source=SIRENNET_SOURCE,
    extra_check=_sirennet,
    extra_fallback=FALLBACK,
    class_names=tuple(CLASS_NAMES),
    extra_scan=scan_merged,
)
