"""The ``data`` section of the experiment config: which dataset, where it lives, how clips
are decoded and split.

It lives with the data layer, below :mod:`core.config`: the cache, the splits and the
dataset registry read this section, and :mod:`core.config` composes it into the whole
experiment. Neither this module nor the data layer imports :mod:`core.config`, so the
config can check dataset names against the registry without an import loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.sections import Section


class DataConfig(Section):
    """Which dataset, where it lives, how clips are decoded and split."""

    dataset: str = "fsdd"
    root: Path | None = None  # defaults to $CLARLAB_DATA/<dataset>
    sample_rate: int = Field(16_000, gt=0)
    clip_seconds: float | None = Field(None, gt=0)  # None: the dataset's own length
    crop: Literal["right", "center"] = "right"  # CLAR pads/clips on the right
    label_field: str | None = None  # NSynth: instrument_family | pitch
    label_fraction: float = Field(1.0, gt=0, le=1)
    label_sampling: Literal["random", "stratified"] = "random"
    split_scheme: Literal["official", "quaclrs", "esc50_paper"] = "official"
    fold: int | None = Field(None, ge=1)
    cache_dir: Path | None = None  # defaults to $CLARLAB_CACHE or ~/.cache/clarlab
    # int16 keeps 16-bit PCM sources exact and reads ~3x faster on CPU than float16.
    cache_dtype: Literal["int16", "float16", "float32"] = "int16"
    strict: bool = False
    download: bool = False
    # Download an archive whose SHA-256 the project does not know (refused otherwise): the
    # run's parameters and its parent's tag clarlab.data_unverified say it was used.
    allow_unverified: bool = False
    # Subsample the training/validation pool to this many clips; the test split stays whole.
    max_clips: int | None = Field(None, gt=0)
    # The second folder of a dataset merged from two (urbansound8k_sirennet: the sireNNet
    # folder); defaults to $CLARLAB_DATA/sirennet. Never downloaded.
    extra_root: Path | None = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from core.data import DATASETS  # the dataset modules are torch-free

        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; valid: {', '.join(sorted(DATASETS))}")
        return value

    @model_validator(mode="after")
    def _extra_root_is_read(self) -> DataConfig:
        """A set ``extra_root`` that the dataset never reads is a mistake, not a no-op."""
        from core.data import DATASETS

        if self.extra_root is not None and not DATASETS[self.dataset].extra_folder:
            merged = sorted(name for name, spec in DATASETS.items() if spec.extra_folder)
            raise ValueError(
                f"data.extra_root is set but dataset {self.dataset!r} reads no second folder; "
                f"remove data.extra_root (only {', '.join(merged)} read one)"
            )
        return self
