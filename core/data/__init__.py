"""The data layer: datasets by short name, a decode-once memory-mapped cache, and splits.

Typical use (what the training loop does)::

    cache = open_cache(cfg.data)             # decoded once per node, then memory-mapped
    split = make_split(cache, cfg.data, cfg.train.seed)
    waveforms = cache.batch(split.train[:256])   # float32 (256, clip_samples) in [-1, 1]

Each dataset module reads the dataset's official on-disk layout and official split or
folds; :func:`dataset_root` finds (or, with ``data.download``, fetches) the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from core.data import esc50, fsdd, nsynth, speech_commands, urbansound8k, urbansound8k_sirennet
from core.data.base import DatasetError, DatasetNotFoundError, DatasetSpec, Listing, Resource
from core.data.splits import Split, kfold_quaclrs, label_fraction_mask, make_split
from core.lazy import lazy_attributes

if TYPE_CHECKING:
    from core.data.cache import AudioCache
    from core.data.config import DataConfig

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        fsdd.SPEC,
        speech_commands.SPEC,
        speech_commands.SPEC_10,
        esc50.SPEC,
        esc50.SPEC_10,
        urbansound8k.SPEC,
        urbansound8k_sirennet.SPEC,
        nsynth.SPEC,
    )
}

DATA_ENV = "CLARLAB_DATA"
CACHE_ENV = "CLARLAB_CACHE"


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; an unknown name is an error listing the valid ones."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def data_home() -> Path:
    """Where datasets live when ``data.root`` is not set: ``$CLARLAB_DATA`` or ~/clarlab-data."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured).expanduser() if configured else Path.home() / "clarlab-data"


def cache_home(cfg: DataConfig) -> Path:
    """``data.cache_dir``, else ``$CLARLAB_CACHE``, else ~/.cache/clarlab."""
    if cfg.cache_dir is not None:
        return Path(cfg.cache_dir).expanduser()
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "clarlab"


def dataset_root(cfg: DataConfig, progress: bool = True) -> Path:
    """The dataset's folder: ``data.root`` or ``$CLARLAB_DATA/<folder>``.

    When it is missing, ``data.download=true`` fetches the official archives into it
    (atomically); otherwise the error names the folder, the ways to point at existing
    data, and where the dataset comes from.
    """
    spec = get_spec(cfg.dataset)
    root = Path(cfg.root).expanduser() if cfg.root is not None else data_home() / spec.folder
    present = root.is_dir() and (not spec.marker or (root / spec.marker).exists())
    if present:
        return root
    if cfg.download:
        from core.data.download import download_dataset

        download_dataset(spec, root, progress=progress, allow_unverified=cfg.allow_unverified)
        return root
    urls = ", ".join(r.url for r in spec.resources) or spec.homepage
    where = "data.root" if cfg.root is not None else f"${DATA_ENV}/{spec.folder}"
    raise DatasetNotFoundError(
        f"dataset {spec.name!r} not found at {root} ({where}"
        f"{', marker ' + spec.marker + ' missing' if root.is_dir() else ''}). Fix: set "
        f"{DATA_ENV} to the folder that holds {spec.folder}/ or data.root to the dataset "
        f"folder itself, or set data.download=true to fetch it from {urls}"
    )


def extra_root(cfg: DataConfig) -> Path | None:
    """The second folder of a dataset merged from two: ``data.extra_root`` or
    ``$CLARLAB_DATA/<extra_folder>``; None for every other dataset.

    It is never downloaded (the merged-in dataset has no stable download), so a missing
    folder is an error naming where to get it, raised before the first dataset would be.
    """
    spec = get_spec(cfg.dataset)
    if not spec.extra_folder:
        return None
    configured = cfg.extra_root is not None
    root = Path(cfg.extra_root).expanduser() if configured else data_home() / spec.extra_folder
    if not root.is_dir():
        where = "data.extra_root" if configured else f"${DATA_ENV}/{spec.extra_folder}"
        raise DatasetNotFoundError(
            f"dataset {spec.name!r} needs {spec.extra_folder} at {root} ({where}), which is "
            f"not a folder. clarlab cannot download it: get it from {spec.extra_source}, "
            f"unpack it there, or set data.extra_root to the folder that holds it"
            + (f". {spec.extra_fallback}" if spec.extra_fallback else "")
        )
    return root


def open_cache(cfg: DataConfig, progress: bool = True) -> AudioCache:
    """Build the decoded cache once (a no-op when its inputs are unchanged), then map it."""
    from core.data.cache import open_cache as _open_cache

    return _open_cache(cfg, progress=progress)


# ``AudioCache``/``CacheDataset`` on demand: importing torch only when the cache is used.
__getattr__ = lazy_attributes(
    "core.data",
    {name: "core.data.cache" for name in ("AudioCache", "CacheDataset", "describe")},
)


__all__ = [
    "DATASETS",
    "AudioCache",
    "CacheDataset",
    "Split",
    "describe",
    "kfold_quaclrs",
    "label_fraction_mask",
    "make_split",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "Listing",
    "Resource",
    "cache_home",
    "data_home",
    "dataset_root",
    "extra_root",
    "get_spec",
    "open_cache",
]
