"""The typed experiment config: one tree, validated once at the edge.

Everything below the CLI/YAML layer receives an :class:`ExperimentConfig` (or one of its
sections), never a raw dict. The config describes the experiment only: two trials of the
same cell in two sweeps have equal configs. Where a trial logs (tracking URI, parent run,
trial id, results folder) travels beside it as a :class:`core.tracking.RunIdentity`.

Names that refer to registries (augmentation codes, front ends, encoders, optimizers,
datasets, methods) are checked against :mod:`core.registry`, :mod:`core.data` and
:mod:`core.methods.configs`, none of which imports torch, so a driver validates a whole
grid in milliseconds. Each method owns its section (``method.name`` selects the config
class, with that method's published defaults).

Validation errors are raised as :class:`ConfigError`, whose message names the dotted
field, the bad value and the valid choices, so a researcher can fix a YAML file without
reading the code.

Partial configs are layered in one order everywhere (:func:`compose`): code defaults <
preset < a search space's ``base`` < its ``presets.<name>`` < the grid cell < ``--set``.
A preset may hold values for one dataset only (``datasets: {fsdd: {...}}``); they apply
only when that dataset is the one in effect.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core import registry
from core.dotted import DottedKeyError, deep_merge, flatten, get_dotted, set_dotted
from core.methods.configs import DEFAULT_METHOD, MethodConfig, all_method_fields, parse_method

# The key of a preset layer that holds per-dataset values.
PER_DATASET_KEY = "datasets"


class ConfigError(ValueError):
    """A config value is invalid; the message says which field, why, and how to fix it."""


class _Section(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
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
    # Subsample the training/validation pool to this many clips; the test split stays whole.
    max_clips: int | None = Field(None, gt=0)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from core.data import DATASETS  # the dataset modules are torch-free

        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; valid: {', '.join(sorted(DATASETS))}")
        return value


class AugmentConfig(_Section):
    """Signal augmentations (before the front end) and spectrogram ones (after it)."""

    pipeline: list[str] = Field(default_factory=list)
    spec_pipeline: list[str] = Field(default_factory=list)
    probability: float = Field(1.0, ge=0, le=1)
    snr_db: tuple[float, float] = (0.0, 20.0)
    mask_fill: Literal["noise", "constant"] = "noise"
    pitch_semitones: tuple[int, int] = (-15, 15)  # PS range, CLAR 3.4
    stretch_rates: tuple[float, float] = (0.5, 1.5)  # TST range, CLAR 3.4
    vocoder_n_fft: int = Field(2048, ge=16, multiple_of=4)  # PS/TST vocoder (librosa), hop /4
    mix_max: float = Field(0.4, ge=0, le=1)  # MIX: partner weight uniform in [0, mix_max]

    @field_validator("pipeline")
    @classmethod
    def _known_signal_codes(cls, codes: list[str]) -> list[str]:
        for code in codes:
            registry.SIGNAL_AUGMENTATIONS.check(code)
        return codes

    @field_validator("spec_pipeline")
    @classmethod
    def _known_spec_codes(cls, codes: list[str]) -> list[str]:
        for code in codes:
            registry.SPEC_AUGMENTATIONS.check(code)
        return codes

    @field_validator("snr_db", "pitch_semitones", "stretch_rates")
    @classmethod
    def _ordered_range(
        cls, value: tuple[float, float], info: ValidationInfo
    ) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(
                f"{info.field_name} range {value} is reversed; write it as [low, high]"
            )
        return value

    @field_validator("stretch_rates")
    @classmethod
    def _positive_rates(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError(f"stretch_rates {value} must be > 0 (rate 1 keeps the tempo)")
        return value


class FrontendConfig(_Section):
    """Time-frequency front end (CLAR 3.1, QUACLRS Table 2); ``raw1d`` passes audio through."""

    name: str = "stft3"
    setting: Literal["paper", "authors_code", "quaclrs"] = "paper"
    n_fft: int | None = Field(None, gt=0)
    hop_length: int | None = Field(None, gt=0)
    win_length: int | None = Field(None, gt=0)
    n_mels: int | None = Field(None, gt=0)
    n_bins: int | None = Field(None, gt=0)
    fmin: float | None = Field(None, ge=0)
    fmax: float | None = Field(None, gt=0)
    channels: Literal[1, 3] = 3
    normalize: bool = False
    log_floor: float = Field(1e-10, gt=0)
    # STFT by nnAudio's convolution kernels or by FFT (same numbers); auto: FFT on CPU
    stft_backend: Literal["auto", "conv", "fft"] = "auto"

    @field_validator("name")
    @classmethod
    def _known_frontend(cls, value: str) -> str:
        return registry.FRONTENDS.check(value)

    @property
    def is_2d(self) -> bool:
        return self.name != "raw1d"


class ModelConfig(_Section):
    """Encoder and heads (CLAR 3.2)."""

    encoder: str = "resnet18"
    width: int = Field(64, gt=0)  # ResNet base width: 64 is the paper, 16/32 for CPU presets
    authors_code: bool = False  # resnet18_1d: stem kernel 7 + max-pool 9 as in the public code
    pretrained: Path | None = None
    proj_dim: int = Field(128, gt=0)
    proj_hidden_dim: int = Field(512, gt=0)
    eval_hidden_dim: int = Field(512, gt=0)

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        return registry.ENCODERS.check(value)

    @property
    def is_1d(self) -> bool:
        return self.encoder.endswith("_1d")


class OptimConfig(_Section):
    """Optimizer and learning-rate schedule (CLAR: LARS 1.0, wd 1e-4, 10 warmup epochs)."""

    name: str = "lars"
    lr: float = Field(1.0, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(10, ge=0)
    schedule: Literal["warmup_cosine", "plateau", "cosine_annealing", "constant"] = "warmup_cosine"
    lars_eta: float = Field(1e-3, gt=0)
    # schedule='plateau' (QUACLRS): multiply lr by plateau_factor after plateau_patience
    # epochs without improvement of the metric given to Scheduler.step_epoch.
    plateau_mode: Literal["max", "min"] = "max"
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    plateau_patience: int = Field(5, ge=0)
    min_lr: float = Field(0.0, ge=0)  # floor of the cosine schedules

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return registry.OPTIMIZERS.check(value)


class TrainConfig(_Section):
    """Loop settings; ``batch_size`` is the GLOBAL batch, split across workers."""

    epochs: int = Field(1000, gt=0)
    batch_size: int = Field(1024, gt=0)
    num_workers: int = Field(1, gt=0)  # training workers per trial
    use_gpu: bool = False
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    eval_every: int = Field(10, gt=0)
    eval_epochs: int = Field(30, gt=0)
    eval_lr: float = Field(1e-3, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    early_stopping_metric: str = "val_top1"
    # Labelled clips in every batch (CLAR's remedy for small label fractions); None: the
    # paper's random batches, which at 1 % labels and batch 64 hold 0.6 labelled clips.
    labelled_per_batch: int | None = Field(None, gt=0)
    loader_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)  # smoke tests / benchmarks


class ExperimentConfig(_Section):
    """The whole experiment: what a trial trains and how it reports."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    frontend: FrontendConfig = Field(default_factory=FrontendConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    # The class follows method.name (core.methods.configs); SerializeAsAny dumps its fields.
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: parse_method({}))
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("method", mode="before")
    @classmethod
    def _method_by_name(cls, value: Any) -> MethodConfig:
        return parse_method(value)

    @model_validator(mode="after")
    def _compatible(self) -> ExperimentConfig:
        if self.model.is_1d and self.frontend.is_2d:
            raise ValueError(
                f"model.encoder={self.model.encoder!r} is 1D but frontend.name="
                f"{self.frontend.name!r} is 2D; use frontend.name='raw1d' or a 2D encoder"
            )
        if not self.model.is_1d and not self.frontend.is_2d:
            raise ValueError(
                f"frontend.name='raw1d' feeds raw audio but model.encoder="
                f"{self.model.encoder!r} is 2D; use model.encoder='resnet18_1d'"
            )
        if self.augment.spec_pipeline and not self.frontend.is_2d:
            raise ValueError(
                f"augment.spec_pipeline={self.augment.spec_pipeline} works on spectrograms but "
                f"frontend.name='raw1d' has none; clear augment.spec_pipeline or use a 2D front end"
            )
        if self.train.batch_size % self.train.num_workers:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} (global) is not divisible by "
                f"train.num_workers={self.train.num_workers}"
            )
        self.method.check(self)
        if self.data.split_scheme == "quaclrs" and self.data.fold is None:
            raise ValueError("data.split_scheme='quaclrs' needs data.fold (the test fold)")
        return self

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
        """Validate a raw mapping; errors name ``source`` and every bad dotted field."""
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as error:
            raise ConfigError(format_validation_error(error, source)) from None

    def to_payload(self) -> str:
        """This validated config as text for a trial process: a base64 pickle.

        Text, not a dict or bytes: Tune rewrites the values of a param space it restores
        for pending trials (a ``Path`` and ``bytes`` both came back as tuples), and leaves
        strings alone."""
        return base64.b64encode(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)).decode()

    @classmethod
    def from_payload(cls, payload: str) -> ExperimentConfig:
        """The config of :meth:`to_payload`, without validating it again: the driver
        validated the grid once. Only for payloads this project wrote."""
        config = pickle.loads(base64.b64decode(payload))
        if not isinstance(config, cls):
            raise TypeError(f"expected a pickled {cls.__name__}, got {type(config).__name__}")
        return config

    def with_overrides(
        self, overrides: Mapping[str, Any], source: str = "overrides"
    ) -> ExperimentConfig:
        """A new validated config with dotted-key overrides (``{"train.epochs": 3}``).

        Changing ``method.name`` starts the method section afresh from the new method's
        published defaults; other ``method.*`` keys given here still apply.
        """
        layer: dict[str, Any] = {}
        for dotted, value in overrides.items():
            set_dotted(layer, dotted, value)
        try:
            raw = merge_layer(self.model_dump(mode="python"), layer)
        except DottedKeyError as error:
            raise ConfigError(f"{source}: {error}") from None
        return ExperimentConfig.from_dict(raw, source=source)

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.field -> value`` view, e.g. for MLflow params."""
        return flatten(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        """The resolved config as YAML (what a trial logs as ``config.yaml``)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def format_validation_error(error: ValidationError, source: str) -> str:
    """Turn pydantic's error list into lines of ``source: field.path: message``."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see core/config.py for valid fields)"
        if where == "method" and message.startswith("method."):
            where, message = message.split(": ", 1)[0], message.split(": ", 1)[1]
        got = item.get("input")
        shown = (
            ""
            if isinstance(got, dict) or item["type"] == "missing" or "(got " in message
            else f" (got {got!r})"
        )
        lines.append(f"{source}: {where}: {message}{shown}")
    return "invalid experiment config:\n  " + "\n  ".join(lines)


# --- layering partial configs ---------------------------------------------------------
def merge_layer(tree: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``deep_merge(tree, layer)``, except that a layer naming another ``method.name``
    drops the method fields of the layers below: SimCLR's tau 0.5 written in a base must
    not become MoCo's tau when a grid cell switches to MoCo (published: 0.07)."""
    new_method = get_dotted(layer, "method.name")
    if new_method is not None and new_method != get_dotted(tree, "method.name", DEFAULT_METHOD):
        tree = {key: value for key, value in tree.items() if key != "method"}
    return deep_merge(tree, layer)


def dataset_in_effect(layers: Sequence[Mapping[str, Any]]) -> str:
    """The ``data.dataset`` the layers end up with (per-dataset sections cannot set it)."""
    dataset = DataConfig.model_fields["dataset"].default
    for layer in layers:
        dataset = get_dotted(layer, "data.dataset", dataset)
    return dataset


def compose(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Layer partial nested configs, lowest first, into one raw config (not validated).

    A layer may hold a ``datasets: {<dataset>: {...}}`` section: values for one dataset
    only, applied right after the layer's own values when that dataset is the one the
    whole stack selects (so a quick preset's FSDD sample rate never reaches ESC-10).
    """
    dataset = dataset_in_effect(layers)
    raw: dict[str, Any] = {}
    for layer in layers:
        common = {key: value for key, value in layer.items() if key != PER_DATASET_KEY}
        raw = merge_layer(raw, common)
        specific = (layer.get(PER_DATASET_KEY) or {}).get(dataset)
        if specific:
            if get_dotted(specific, "data.dataset") not in (None, dataset):
                raise ConfigError(
                    f"{PER_DATASET_KEY}.{dataset}: data.dataset cannot be changed inside a "
                    f"per-dataset section"
                )
            raw = merge_layer(raw, specific)
    return raw


# --- presets --------------------------------------------------------------------------
# A preset is a partial config layered over the defaults. ``quick`` is a smoke-scale
# pipeline check (FSDD, ResNet width 16, a few steps); ``laptop`` a budget measured to show
# the papers' effects on a 2-core machine; ``paper`` is CLAR's setting for Figure 4. Values
# that only make sense for one dataset go under ``datasets: {<name>: {...}}``.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "data": {"dataset": "fsdd", "sample_rate": 16_000},
        "model": {"width": 16, "proj_hidden_dim": 128, "eval_hidden_dim": 128},
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-6, "warmup_epochs": 0},
        "train": {
            "epochs": 2,
            "batch_size": 64,
            "num_workers": 1,
            "eval_every": 2,
            "eval_epochs": 20,
        },
    },
    # A budget at which SimCLR beats the untrained control beyond noise on a 2-core laptop,
    # found with bench/fidelity.py (README: what it shows, how long it takes).
    "laptop": {
        "data": {"dataset": "fsdd"},
        "model": {"width": 16, "proj_hidden_dim": 128, "eval_hidden_dim": 128},
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-6, "warmup_epochs": 0},
        # 20 epochs: in bench/fidelity.py, 3 seeds, SimCLR FD+TM beat the untrained
        # control by 23 +- 15 points after 20 epochs; a 10-epoch run did not (+14 +- 19).
        "train": {
            "epochs": 20,
            "batch_size": 64,
            "num_workers": 1,
            "eval_every": 5,
            "eval_epochs": 20,
        },
        # FSDD is recorded at 8 kHz: resampling to 16 kHz doubles the work, adds nothing.
        "datasets": {"fsdd": {"data": {"sample_rate": 8000}}},
    },
    "paper": {
        "data": {"dataset": "speech_commands_10", "sample_rate": 16_000},
        "model": {"width": 64},
        "optim": {"name": "lars", "lr": 1.0, "weight_decay": 1e-4, "warmup_epochs": 10},
        "train": {
            "epochs": 1000,
            "batch_size": 1024,
            "num_workers": 4,
            "use_gpu": True,
            "eval_every": 50,
        },
    },
}


def preset_layer(name: str) -> dict[str, Any]:
    """The partial config of preset ``name``; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def preset(name: str, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """A validated config from a named preset plus nested ``overrides``."""
    raw = compose([preset_layer(name), dict(overrides or {})])
    return ExperimentConfig.from_dict(raw, source=f"preset {name!r}")


def known_fields() -> Iterable[str]:
    """Every dotted field name of the config tree, with the fields of every method (what a
    search space may set; whether the chosen method has a field is checked on validation)."""
    sections = {
        name: section.annotation.model_fields
        for name, section in ExperimentConfig.model_fields.items()
        if name != "method"
    }
    fields = [f"{name}.{field}" for name, members in sections.items() for field in members]
    return fields + [f"method.{field}" for field in sorted(all_method_fields())]
