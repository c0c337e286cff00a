"""Train/validation/test splits and label fractions over a cache's clips.

Split schemes (``data.split_scheme``):

- ``official``: the dataset's own split (FSDD takes, Speech Commands list files, NSynth
  subsets); for fold-based datasets, leave-one-fold-out with ``data.fold`` as the test
  fold (default: the last fold, which for ESC-50 is the paper's scheme).
- ``quaclrs``: QUACLRS k-fold: test fold k, validation fold k-1 (fold 1 wraps around to
  the last fold), train on the remaining folds. FSDD has both a split and speaker folds:
  ``official`` uses its split, ``quaclrs`` its folds.
- ``esc50_paper``: ESC-50/ESC-10 as in CLAR: train on folds 1-4, test on fold 5.

Fold numbers come from the dataset's declared folds (``DatasetSpec.num_folds``), never
from the folds that happen to be in a cache: when every file of fold 10 failed to decode,
"the last fold" is still 10, and a test or validation fold without clips is an error that
points at the excluded files, rather than a run that silently tests on fold 9.

Label fractions (CLAR Table 2: 100/20/10/1 %) hide labels of training clips (label -1)
while keeping the clips in the training set for the contrastive loss. The choice is
deterministic by seed and nested: for one seed, the clips labelled at 1 % are among those
labelled at 10 %, so a fraction sweep compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.data.base import DatasetError

if TYPE_CHECKING:
    from core.data.config import DataConfig

UNLABELED = -1


class ClipTable(Protocol):
    """What a split reads per clip: the dataset's name, labels, official split (or None)
    and folds (or None). An :class:`~core.data.cache.AudioCache` has these, and so does a
    scanned listing (the sweep's preflight splits before anything is decoded)."""

    dataset: str
    labels: np.ndarray
    split: np.ndarray | None
    fold: np.ndarray | None


@dataclass(frozen=True)
class Split:
    """Index arrays into a cache; ``train_labels`` has -1 where a label is hidden."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray

    @property
    def labeled(self) -> np.ndarray:
        """Cache indices of the training clips whose label is visible."""
        return self.train[self.train_labels != UNLABELED]

    def sizes(self) -> dict[str, int]:
        return {
            "train": int(self.train.size),
            "train_labeled": int(self.labeled.size),
            "val": int(self.val.size),
            "test": int(self.test.size),
        }


def label_fraction_mask(
    labels: np.ndarray, fraction: float, seed: int, stratified: bool = False
) -> np.ndarray:
    """Boolean mask of the labels to keep: ``round(fraction * n)`` of them (at least one).

    ``stratified`` keeps that fraction of every class (at least one per class) instead of
    a uniform random draw over all clips, which at 1 % could miss a class entirely.
    Both draws rank the clips by one seeded permutation, so smaller fractions select
    subsets of larger ones.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    count = labels.size
    keep = np.zeros(count, dtype=bool)
    if count == 0:
        return keep
    if fraction == 1:
        keep[:] = True
        return keep
    priority = np.empty(count, dtype=np.int64)
    priority[np.random.default_rng(seed).permutation(count)] = np.arange(count)
    if not stratified:
        keep[priority < max(1, round(fraction * count))] = True
        return keep
    # Per class: rank the class's clips by their global priority, keep the first k.
    order = np.lexsort((priority, labels))  # grouped by label, then by priority
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, count])
    rank_in_class = np.arange(count) - np.repeat(starts, sizes)
    quota = np.maximum(1, np.round(fraction * sizes)).astype(np.int64)
    keep[order] = rank_in_class < np.repeat(quota, sizes)
    return keep


def test_clip_mask(
    split: np.ndarray | None,
    fold: np.ndarray | None,
    split_scheme: str,
    test_fold: int | None,
    num_folds: int | None = None,
) -> np.ndarray | None:
    """Which clips of a listing the test split of ``split_scheme`` takes (None: unknown).

    ``data.max_clips`` subsamples the other clips only: a smaller test split would make
    every score coarser (31 FSDD test clips score in steps of 3 %) without saving
    training time. ``num_folds`` is the dataset's declared fold count, whose last fold is
    the default test fold of ``official``; without it, the largest fold listed.
    """
    if split is not None and split_scheme == "official":
        return np.asarray(split) == "test"
    if fold is None:
        return None
    fold = np.asarray(fold)
    if split_scheme == "esc50_paper":
        return fold == 5
    if test_fold is not None:
        return fold == test_fold
    last = num_folds if num_folds is not None else (int(fold.max()) if fold.size else None)
    return None if last is None else fold == last


def kfold_quaclrs(
    folds: np.ndarray, test_fold: int, num_folds: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """QUACLRS k-fold: (train, val, test) indices for test fold ``test_fold`` (1-based).

    The validation fold is the preceding one, wrapping from fold 1 to fold ``num_folds``
    (default: the largest fold number present).
    """
    folds = np.asarray(folds)
    num_folds = int(num_folds or folds.max())
    if not 1 <= test_fold <= num_folds:
        raise DatasetError(f"data.fold={test_fold} is out of range; valid: 1..{num_folds}")
    val_fold = num_folds if test_fold == 1 else test_fold - 1
    test = np.flatnonzero(folds == test_fold)
    val = np.flatnonzero(folds == val_fold)
    train = np.flatnonzero((folds != test_fold) & (folds != val_fold))
    return train, val, test


def _declared_folds(cache: ClipTable) -> int:
    """The dataset's fold count from its spec; the largest cached fold only for a dataset
    whose spec declares none (a cache of a dataset no longer registered)."""
    from core.data import DATASETS  # the package imports this module

    spec = DATASETS.get(cache.dataset)
    if spec is not None and spec.num_folds is not None:
        return spec.num_folds
    return int(cache.fold.max()) if cache.fold is not None and cache.fold.size else 0


def _require_clips(cache: ClipTable, indices: np.ndarray, role: str, fold: int) -> None:
    """A test or validation fold without clips is an error, not an empty evaluation."""
    if indices.size:
        return
    path = getattr(cache, "path", None)  # preflight passes a listing, which has no folder
    if path is None:
        cause = (
            "The scanned dataset lists none for it; check its metadata against the official archive"
        )
    else:
        cause = (
            f"Its files were most likely excluded from the cache as unreadable or missing "
            f"(see the 'excluded' list of {path / 'manifest.json'}); restore them from the "
            f"official archive"
        )
    raise DatasetError(
        f"{cache.dataset}: the {role} fold {fold} has no clips. {cause}, or choose another "
        f"data.fold"
    )


def _official(cache: ClipTable, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if cache.split is not None:
        if cfg.fold is not None and cache.fold is not None:  # FSDD: a split and folds
            raise DatasetError(
                f"data.fold={cfg.fold} is set but split_scheme='official' on {cache.dataset!r} "
                f"uses its official train/validation/test split, not its folds; remove "
                f"data.fold, or set split_scheme='quaclrs' to test on fold {cfg.fold}"
            )
        if cfg.fold is not None:
            raise DatasetError(
                f"data.fold={cfg.fold} is set but {cache.dataset!r} has an official "
                f"train/validation/test split, not folds; remove data.fold"
            )
        return tuple(
            np.flatnonzero(cache.split == name) for name in ("train", "validation", "test")
        )  # type: ignore[return-value]
    if cache.fold is None:
        raise DatasetError(f"{cache.dataset!r} has neither an official split nor folds")
    num_folds = _declared_folds(cache)
    test_fold = num_folds if cfg.fold is None else cfg.fold
    if not 1 <= test_fold <= num_folds:
        raise DatasetError(f"data.fold={test_fold} is out of range; valid: 1..{num_folds}")
    test = np.flatnonzero(cache.fold == test_fold)
    _require_clips(cache, test, "test", test_fold)
    return np.flatnonzero(cache.fold != test_fold), np.array([], dtype=np.int64), test


def _esc50_paper(cache: ClipTable, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if cache.dataset not in ("esc50", "esc10") or cache.fold is None:
        raise DatasetError(
            f"data.split_scheme='esc50_paper' needs esc50 or esc10, not {cache.dataset!r}; "
            f"use split_scheme='official' or 'quaclrs'"
        )
    if cfg.fold not in (None, 5):
        raise DatasetError(
            f"data.split_scheme='esc50_paper' always tests on fold 5 (data.fold={cfg.fold}); "
            f"use split_scheme='official' with data.fold to test on another fold"
        )
    test = np.flatnonzero(cache.fold == 5)
    _require_clips(cache, test, "test", 5)
    return np.flatnonzero(cache.fold <= 4), np.array([], dtype=np.int64), test


def _quaclrs(cache: ClipTable, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if cache.fold is None:
        from core.data import DATASETS

        folded = ", ".join(sorted(name for name, spec in DATASETS.items() if spec.num_folds))
        raise DatasetError(
            f"data.split_scheme='quaclrs' needs a fold-based dataset ({folded}), not "
            f"{cache.dataset!r}; use split_scheme='official'"
        )
    if cfg.fold is None:
        raise DatasetError("data.split_scheme='quaclrs' needs data.fold (the test fold)")
    num_folds = _declared_folds(cache)
    train, val, test = kfold_quaclrs(cache.fold, cfg.fold, num_folds)
    _require_clips(cache, test, "test", cfg.fold)
    _require_clips(cache, val, "validation", num_folds if cfg.fold == 1 else cfg.fold - 1)
    return train, val, test


def make_split(cache: ClipTable, cfg: DataConfig, seed: int = 0) -> Split:
    """The split ``cfg.split_scheme`` names, with ``cfg.label_fraction`` of train labels."""
    if cfg.split_scheme == "official":
        train, val, test = _official(cache, cfg)
    elif cfg.split_scheme == "esc50_paper":
        train, val, test = _esc50_paper(cache, cfg)
    elif cfg.split_scheme == "quaclrs":
        train, val, test = _quaclrs(cache, cfg)
    else:  # the config's Literal makes this unreachable unless a scheme is added there
        raise DatasetError(
            f"unknown data.split_scheme {cfg.split_scheme!r}; valid: official, quaclrs, esc50_paper"
        )
    if train.size == 0:
        raise DatasetError(f"{cache.dataset}: the {cfg.split_scheme} split has no training clips")
    labels = cache.labels[train]
    keep = label_fraction_mask(
        labels, cfg.label_fraction, seed, stratified=cfg.label_sampling == "stratified"
    )
    return Split(
        train=train.astype(np.int64),
        val=val.astype(np.int64),
        test=test.astype(np.int64),
        train_labels=np.where(keep, labels, UNLABELED).astype(np.int64),
    )
