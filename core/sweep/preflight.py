"""Checks of what a sweep would hit, made before Ray starts: each trial's dataset is where
its config says, in its official layout (scanned, not decoded), its training split holds
at least one batch, and a pretrained-weights file it names exists. The split sizes go into the dry-run table.

A failure here is a :class:`PreflightError` naming the trial, the folder or field and the
fix, raised in seconds instead of once per trial after the cluster has come up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.config import ConfigError, DataConfig
from core.data import DatasetError, DatasetNotFoundError, dataset_root, extra_root, get_spec
from core.data.base import Listing, check_verifiable, subsample
from core.data.splits import make_split, test_clip_mask
from core.sweep.trials import Trial


class PreflightError(ConfigError):
    """A trial would fail on its data; the message says which trial, why and the fix."""


@dataclass(frozen=True)
class SplitSizes:
    """Clips per split of one trial, from the scanned listing (files that fail to decode
    later are left out of the cache, so the trained split can be slightly smaller)."""

    train: int
    val: int
    test: int
    labelled: int
    scanned: bool = True  # False: the dataset would be downloaded first, sizes unknown
    classes: int | None = None  # classes in the listing (None: not scanned)

    def describe(self) -> str:
        if not self.scanned:
            return "(download)"
        return f"{self.train}/{self.val}/{self.test}"


@dataclass(frozen=True)
class _ListingAsCache:
    """The four attributes :func:`make_split` reads from a cache, taken from a listing."""

    dataset: str
    labels: np.ndarray
    split: np.ndarray | None
    fold: np.ndarray | None


def _listing(data: DataConfig) -> Listing | None:
    """The scanned listing of ``data`` (None when ``data.download`` would fetch it first).

    A second folder that cannot be downloaded (sireNNet) is checked first, so that its
    absence fails the dry run even when the first dataset would be downloaded."""
    spec = get_spec(data.dataset)
    if spec.extra_check is not None:
        spec.extra_check(extra_root(data))
    try:
        root = dataset_root(data.model_copy(update={"download": False}), progress=False)
    except DatasetNotFoundError:
        if data.download:
            check_verifiable(spec, data.allow_unverified)  # a dry run says so, not a trial
            return None
        raise
    listing = spec.list_clips(root, spec.label_field(data.label_field), extra_root(data))
    whole = test_clip_mask(
        listing.split, listing.fold, data.split_scheme, data.fold, num_folds=spec.num_folds
    )
    return subsample(listing, data.max_clips, keep_whole=whole)


def check_trials(trials: Sequence[Trial]) -> dict[str, SplitSizes]:
    """Split sizes per trial id; raises :class:`PreflightError` on the first trial whose
    data is missing, not in its official layout, or too small for one batch."""
    listings: dict[str, Listing | None] = {}
    sizes: dict[str, SplitSizes] = {}
    for trial in trials:
        data, train = trial.config.data, trial.config.train
        where = f"trial {trial.trial_id}"
        pretrained = trial.config.model.pretrained
        if pretrained is not None and not pretrained.expanduser().is_file():
            raise PreflightError(
                f"{where}: model.pretrained={str(pretrained)!r} is not a file; weights are read "
                f"from local files only (no downloads): point it at a saved state_dict or set "
                f"it to null"
            )
        if trial.config.model.weights == "imagenet":
            from core.imagenet import imagenet_checkpoint

            try:
                imagenet_checkpoint(trial.config.model.encoder, trial.config.model.weights_dir)
            except FileNotFoundError as error:
                raise PreflightError(f"{where}: {error}") from None
        # The subsample keeps the test split whole, so it depends on the split and fold.
        scan_key = repr(
            (data.dataset, data.root, data.extra_root, data.label_field, data.max_clips,
             data.split_scheme, data.fold)
        )  # fmt: skip
        try:
            if scan_key not in listings:
                listings[scan_key] = _listing(data)
            listing = listings[scan_key]
            if listing is None:
                sizes[trial.trial_id] = SplitSizes(0, 0, 0, 0, scanned=False)
                continue
            view = _ListingAsCache(data.dataset, listing.labels, listing.split, listing.fold)
            split = make_split(view, data, seed=train.seed)  # type: ignore[arg-type]
        except (DatasetError, OSError) as error:
            raise PreflightError(f"{where}: {error}") from None
        sizes[trial.trial_id] = SplitSizes(
            train=len(split.train),
            val=len(split.val),
            test=len(split.test),
            labelled=int(split.labeled.size),
            classes=len(listing.class_names),
        )
        if len(split.train) < train.batch_size:
            raise PreflightError(
                f"{where}: train.batch_size={train.batch_size} is larger than the training "
                f"split ({len(split.train)} clips of {data.dataset!r} with data.max_clips="
                f"{data.max_clips}, split_scheme={data.split_scheme!r}); lower "
                f"train.batch_size for this dataset alone in the space file "
                f"(presets.<preset>.datasets.{data.dataset}.train.batch_size, as features.yaml "
                f"does for ESC-10 and ESC-50: CLAR reduced 1024 to 512 where it did not fit; "
                f"name a value below the paper's under deviations:), or for every trial with "
                f"--set train.batch_size=..., or raise data.max_clips"
            )
    return sizes
