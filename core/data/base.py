"""What every dataset module provides: a spec (name, folder, clip length, downloads) and a
scanner that reads the dataset's official on-disk layout into a :class:`Listing`.

Keeping the scan separate from decoding lets the cache decide, from the listing alone
(paths, sizes, mtimes, labels), whether an existing cache is still valid, without decoding
a single file.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset is missing, malformed or misconfigured; the message says how to fix it."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset folder is absent (and was not, or could not be, downloaded)."""


class DownloadError(DatasetError):
    """A download or extraction failed; the message names the URL or archive member.

    Defined here, beside the other dataset errors, because both :mod:`core.data.download`
    and :mod:`core.data.extract` raise it and neither may import the other's error.
    """


@dataclass(frozen=True)
class Resource:
    """One archive of a dataset's official distribution.

    ``strip`` is the archive's top-level folder to drop on extraction (``None`` keeps the
    archive's own layout); checksums are optional because some upstreams publish none or
    serve moving targets (a branch archive), in which case the size announced by the
    server is still checked.
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    strip: str | None = None


@dataclass
class Listing:
    """The clips of a dataset as found on disk, before any decoding.

    ``split`` holds official split names ("train"/"validation"/"test") for datasets that
    have them; ``fold`` holds 1-based fold numbers for fold-based datasets.
    ``metadata_files`` are the CSV/JSON/list files whose content defines labels and
    splits: they are hashed by content into the cache key.
    """

    files: list[Path]
    labels: np.ndarray
    class_names: list[str]
    split: np.ndarray | None = None
    fold: np.ndarray | None = None
    metadata_files: list[Path] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.files)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        for name in ("labels", "split", "fold"):
            array = getattr(self, name)
            if array is not None and len(array) != count:
                raise DatasetError(f"listing has {count} files but {len(array)} {name}")

    def subset(self, keep: np.ndarray) -> Listing:
        """The listing restricted to the clips at positions ``keep`` (in that order)."""
        return Listing(
            files=[self.files[i] for i in keep],
            labels=self.labels[keep],
            class_names=self.class_names,
            split=None if self.split is None else self.split[keep],
            fold=None if self.fold is None else self.fold[keep],
            metadata_files=self.metadata_files,
            excluded=self.excluded,
        )


def subsample(
    listing: Listing, max_clips: int | None, keep_whole: np.ndarray | None = None
) -> Listing:
    """``max_clips`` clips of ``listing`` besides the ``keep_whole`` ones (the test split,
    which is never subsampled), chosen by a fixed seed (the same on every node and in
    every trial, so trials of one sweep share one cache), in listing order."""
    count = len(listing.files)
    whole = np.zeros(count, dtype=bool) if keep_whole is None else np.asarray(keep_whole, bool)
    pool = np.flatnonzero(~whole)
    if max_clips is None or max_clips >= len(pool):
        return listing
    chosen = pool[np.random.default_rng(0).permutation(len(pool))[:max_clips]]
    return listing.subset(np.sort(np.concatenate([chosen, np.flatnonzero(whole)])))


Scanner = Callable[[Path, str | None], Listing]
# A scan that merges a second, user-supplied folder: (root, label_field, extra_root).
ExtraScanner = Callable[[Path, str | None, Path], Listing]


def check_verifiable(spec: DatasetSpec, allow_unverified: bool) -> None:
    """Refuse to download an archive without a known SHA-256 unless the run says it may:
    a corrupted or replaced archive would otherwise train and be reported as the dataset.
    Raised before any request, naming the archives and both ways on."""
    unverified = [resource for resource in spec.resources if not resource.sha256]
    if not unverified or allow_unverified:
        return
    names = ", ".join(f"{resource.filename} ({resource.url})" for resource in unverified)
    raise DatasetError(
        f"{spec.name}: no SHA-256 is recorded for {names}, so the download could not be "
        f"verified; check the archive against a digest its publisher gives and add it to "
        f"the dataset's Resource (sha256=...), or pass --set data.allow_unverified=true "
        f"(the run records that it did)"
    )


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry: everything the data layer needs to know about one dataset.

    ``folder`` is the dataset's folder under ``$CLARLAB_DATA``; several specs may share
    one (``esc10`` reads the ``esc50`` folder). ``label_fields`` lists valid
    ``data.label_field`` values, the first being the default. ``num_folds`` is set for
    fold-based datasets.

    A dataset merged from two (``urbansound8k_sirennet``) names its second one by
    ``extra_folder`` (under ``$CLARLAB_DATA``, or ``data.extra_root``), says where to get
    it in ``extra_source`` (it has no download), and reads both with ``extra_scan``;
    its ``scan`` reads the second from the default folder. ``extra_check`` checks the
    second folder's layout on its own, so that a dry run whose first dataset would be
    downloaded still fails on a second one that cannot be; ``extra_fallback`` is what its
    errors offer instead.
    """

    name: str
    folder: str
    version: str
    clip_seconds: float
    scan: Scanner
    description: str
    homepage: str
    resources: Sequence[Resource] = ()
    label_fields: tuple[str, ...] = ("label",)
    num_folds: int | None = None
    marker: str = ""  # a path under the folder that exists once the dataset is in place
    extra_folder: str = ""
    extra_source: str = ""
    extra_scan: ExtraScanner | None = None
    extra_check: Callable[[Path], object] | None = None
    extra_fallback: str = ""
    # The classes of the default label field where they are fixed by the dataset's own
    # definition, so that a dry run can show them before the data is on disk.
    class_names: tuple[str, ...] = ()

    def num_classes(self, label_field: str | None) -> int | None:
        """Classes of ``label_field`` known without scanning (None where unknown)."""
        if self.class_names and self.label_field(label_field) == self.label_fields[0]:
            return len(self.class_names)
        return None

    def list_clips(self, root: Path, label_field: str | None, extra_root: Path | None) -> Listing:
        """The listing, reading ``extra_root`` too for a dataset merged from two folders."""
        if self.extra_scan is None:
            return self.scan(root, label_field)
        if extra_root is None:
            raise DatasetError(f"{self.name}: needs the folder of {self.extra_folder}")
        return self.extra_scan(root, label_field, extra_root)

    def label_field(self, requested: str | None) -> str:
        """Resolve ``data.label_field``; an unknown one is an error listing the valid ones."""
        if requested is None:
            return self.label_fields[0]
        if requested not in self.label_fields:
            raise DatasetError(
                f"data.label_field={requested!r} is not valid for dataset {self.name!r}; "
                f"valid: {', '.join(self.label_fields)}"
            )
        return requested


def require_file(path: Path, dataset: str, what: str) -> Path:
    """Fail with a message naming the missing official file and the dataset it belongs to."""
    if not path.is_file():
        raise DatasetError(
            f"{dataset}: {what} not found at {path}; the folder does not have the official "
            f"layout (re-extract the official archive there, or set data.download=true on an "
            f"empty folder)"
        )
    return path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes on this node (flock; released on crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
