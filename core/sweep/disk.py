"""Free disk space, checked before a sweep writes anything.

A sweep writes a checkpoint per trial and epoch (Tune's storage, under the results folder
unless ``--storage-path`` moves it) and the MLflow store with its artifacts (the results
folder). On a nearly full disk the first sign would otherwise be a trial failing with
``ENOSPC`` from ``torch.save`` or SQLite minutes into the sweep, after Ray started and the
parent run was opened; :func:`check_sweep_disk` refuses the sweep before any of that, naming
the folder, its free space and the fix. (Checkpoints are written atomically, see
:func:`core.train.save_checkpoint`, so a disk that fills up later still leaves no torn one.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

from core.config import ConfigError

MIN_FREE_ENV = "CLARLAB_MIN_FREE_MB"
# A quick-preset sweep writes a few MB per trial; a paper-scale ResNet18 checkpoint is
# ~100 MB with its optimizer state. Half a gigabyte keeps a short sweep and the MLflow
# store's growth safe without refusing a laptop with a modest amount of room.
DEFAULT_MIN_FREE_MB = 512.0
_MB = 1024 * 1024


class DiskSpaceError(ConfigError):
    """Too little free space where a sweep writes (a ``ConfigError``: the CLI exits 2)."""


def min_free_mb() -> float:
    """The threshold: ``$CLARLAB_MIN_FREE_MB`` if set, else :data:`DEFAULT_MIN_FREE_MB`."""
    raw = os.environ.get(MIN_FREE_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MIN_FREE_MB
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{MIN_FREE_ENV}={raw!r} is not a number of megabytes") from None
    if value < 0:
        raise ConfigError(f"{MIN_FREE_ENV}={raw!r} must be >= 0 (megabytes)")
    return value


def free_mb(folder: str | Path) -> float:
    """Free megabytes on the file system that holds ``folder``, or would hold it: a folder
    not created yet is measured at its nearest existing parent."""
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / _MB


def check_free_space(folder: str | Path, what: str, needed_mb: float | None = None) -> float:
    """Raise :class:`DiskSpaceError` when ``folder`` (the ``what``, for the message) has
    less than ``needed_mb`` (default :func:`min_free_mb`) free; returns the free MB."""
    needed = min_free_mb() if needed_mb is None else needed_mb
    free = free_mb(folder)
    if free < needed:
        shown = Path(folder).expanduser().absolute()
        raise DiskSpaceError(
            f"only {free:,.0f} MB free under {shown} (the {what}); a sweep needs at least "
            f"{needed:,.0f} MB there for its checkpoints and MLflow records. Free some space, "
            f"or point --results (and --storage-path) at a disk with room, or lower the "
            f"threshold with {MIN_FREE_ENV}=<megabytes>"
        )
    return free


def _local_folder(storage_path: str) -> Path | None:
    """The local folder of a storage path; ``None`` for cloud storage (``s3://`` ...),
    whose space is not ours to measure."""
    parsed = urlparse(storage_path)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme:
        return None
    return Path(storage_path)


def check_sweep_disk(results_dir: str | Path, storage_path: str | None = None) -> None:
    """Check the free space where a sweep (new or resumed) writes: the results folder and,
    when it is a separate local folder, Tune's storage path. Call it before Ray starts."""
    check_free_space(results_dir, "results folder")
    if storage_path:
        folder = _local_folder(storage_path)
        if folder is not None:
            check_free_space(folder, "Tune storage path (--storage-path)")
