"""Label fractions and k-fold schemes as pure functions on label/fold arrays."""

from __future__ import annotations

import numpy as np
import pytest

from core.data import kfold_quaclrs, label_fraction_mask
from core.data import splits as split_module  # test_clip_mask imported bare would be collected
from core.data.base import DatasetError

# An imbalanced label set, like UrbanSound8K (car_horn and gun_shot are rare).
LABELS = np.repeat(np.arange(10), [1000, 429, 1000, 1000, 1000, 1000, 374, 1000, 929, 1000])


@pytest.mark.parametrize("fraction", [1.0, 0.2, 0.1, 0.01, 0.37])
def test_random_fraction_keeps_round_fraction_of_labels(fraction: float) -> None:
    mask = label_fraction_mask(LABELS, fraction, seed=0, stratified=False)
    assert mask.dtype == bool and mask.shape == LABELS.shape
    assert mask.sum() == round(fraction * LABELS.size)


def test_fraction_is_deterministic_by_seed_and_nested() -> None:
    first = label_fraction_mask(LABELS, 0.1, seed=3, stratified=False)
    assert np.array_equal(first, label_fraction_mask(LABELS, 0.1, seed=3, stratified=False))
    assert not np.array_equal(first, label_fraction_mask(LABELS, 0.1, seed=4, stratified=False))
    for stratified in (False, True):
        masks = [label_fraction_mask(LABELS, f, 7, stratified) for f in (0.01, 0.1, 0.2, 1.0)]
        for smaller, larger in zip(masks, masks[1:], strict=False):
            assert np.all(larger[smaller]), "a smaller fraction must be a subset of a larger one"


def test_random_fraction_is_uniform_across_classes_on_average() -> None:
    kept = np.mean(
        [np.bincount(LABELS[label_fraction_mask(LABELS, 0.2, s, False)], minlength=10)
         for s in range(30)], axis=0,
    )  # fmt: skip
    expected = 0.2 * np.bincount(LABELS)
    assert np.allclose(kept, expected, rtol=0.1)


def test_stratified_fraction_keeps_every_class_in_proportion() -> None:
    mask = label_fraction_mask(LABELS, 0.01, seed=0, stratified=True)
    per_class = np.bincount(LABELS[mask], minlength=10)
    assert per_class.tolist() == [10, 4, 10, 10, 10, 10, 4, 10, 9, 10]
    tiny = label_fraction_mask(LABELS, 0.0001, seed=0, stratified=True)
    assert np.bincount(LABELS[tiny], minlength=10).tolist() == [1] * 10  # never lose a class


def test_fraction_bounds_and_empty_input() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        label_fraction_mask(LABELS, 0.0, seed=0)
    assert label_fraction_mask(np.array([], dtype=np.int64), 0.5, seed=0).size == 0


def test_quaclrs_kfold_every_fold_tested_once_validation_wraps() -> None:
    folds = np.tile(np.arange(1, 11), 7)
    tested = np.zeros(folds.size, dtype=int)
    for k in range(1, 11):
        train, val, test = kfold_quaclrs(folds, k)
        assert set(folds[test]) == {k}
        assert set(folds[val]) == {10 if k == 1 else k - 1}
        assert len(set(folds[train])) == 8
        assert np.intersect1d(train, np.r_[val, test]).size == 0
        assert train.size + val.size + test.size == folds.size
        tested[test] += 1
    assert np.all(tested == 1)
    with pytest.raises(DatasetError, match=r"valid: 1\.\.10"):
        kfold_quaclrs(folds, 0)


def test_test_clip_mask_follows_the_declared_folds_and_the_scheme() -> None:
    clip_mask = split_module.test_clip_mask
    folds = np.repeat(np.arange(1, 10), 3)  # fold 10 absent from the listing
    # official without data.fold: the declared last fold, even though none of it is listed
    assert not clip_mask(None, folds, "official", None, num_folds=10).any()
    assert np.array_equal(clip_mask(None, folds, "official", None), folds == 9)
    assert np.array_equal(clip_mask(None, folds, "quaclrs", 4, num_folds=10), folds == 4)
    assert np.array_equal(clip_mask(None, folds, "esc50_paper", None), folds == 5)
    # A dataset with both (FSDD): official uses the split, quaclrs the folds.
    split = np.where(np.arange(folds.size) % 3 == 0, "test", "train")
    assert np.array_equal(clip_mask(split, folds, "official", None, 10), split == "test")
    assert np.array_equal(clip_mask(split, folds, "quaclrs", 2, 10), folds == 2)
    assert clip_mask(split, None, "quaclrs", 2) is None
