"""The typed experiment config: one tree, validated once at the edge.

Everything below the CLI/YAML layer receives an :class:`ExperimentConfig` (or one of its
sections), never a raw dict. Names that refer to registries (augmentation codes, front
ends, encoders, methods, optimizers, datasets) are checked against those registries
lazily, so that adding an entry to a registry is enough to make it valid here.

Validation errors are raised as :class:`ConfigError`, whose message names the dotted
field, the bad value and the valid choices, so a researcher can fix a YAML file without
reading the code.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A config value is invalid; the message says which field, why, and how to fix it."""


def _registry_names(module: str, attribute: str) -> list[str]:
    """Names of a registry, imported lazily so config stays importable on its own."""
    registry = getattr(importlib.import_module(module), attribute)
    return sorted(registry)


def _check_in_registry(value: str, module: str, attribute: str, what: str) -> str:
    names = _registry_names(module, attribute)
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(names)}")
    return value


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
    max_clips: int | None = Field(None, gt=0)  # subsample for smoke runs

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _check_in_registry(value, "core.data", "DATASETS", "dataset")


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
            _check_in_registry(code, "core.augment", "SIGNAL_AUGMENTATIONS", "augmentation code")
        return codes

    @field_validator("spec_pipeline")
    @classmethod
    def _known_spec_codes(cls, codes: list[str]) -> list[str]:
        for code in codes:
            _check_in_registry(
                code, "core.augment", "SPEC_AUGMENTATIONS", "spectrogram augmentation code"
            )
        return codes

    @field_validator("snr_db", "pitch_semitones", "stretch_rates")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"{info.field_name} range {value} is reversed; write it as [low, high]")
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
        return _check_in_registry(value, "core.features", "FRONTENDS", "front end")

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
        return _check_in_registry(value, "core.models", "ENCODERS", "encoder")

    @property
    def is_1d(self) -> bool:
        return self.encoder.endswith("_1d")


class MethodConfig(_Section):
    """Training method and its loss hyperparameters."""

    name: str = "simclr"
    temperature: float = 0.5
    class_weights: bool = False  # inverse-frequency CE weights (QUACLRS 4.6)
    ce_weight: float = Field(1.0, ge=0)  # CLAR: weight of the CE term
    moco_queue_size: int = Field(4096, gt=0)
    moco_momentum: float = Field(0.99, ge=0, le=1)
    byol_momentum: float = Field(0.99, ge=0, le=1)
    barlow_lambda: float = Field(5e-3, ge=0)
    dino_out_dim: int = Field(1024, gt=0)
    dino_teacher_temperature: float = Field(0.04, gt=0)
    dino_center_momentum: float = Field(0.9, ge=0, le=1)
    dino_student_temperature: float = Field(0.1, gt=0)
    dino_momentum: float = Field(0.996, ge=0, le=1)  # teacher EMA, cosine-scheduled to 1
    swav_prototypes: int = Field(100, gt=0)
    swav_epsilon: float = Field(0.05, gt=0)
    swav_sinkhorn_iterations: int = Field(3, gt=0)

    @field_validator("name")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return _check_in_registry(value, "core.methods", "METHODS", "method")

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"temperature must be > 0, got {value}")
        return value


class OptimConfig(_Section):
    """Optimizer and learning-rate schedule (CLAR: LARS 1.0, wd 1e-4, 10 warmup epochs)."""

    name: str = "lars"
    lr: float = Field(1.0, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(10, ge=0)
    schedule: Literal["warmup_cosine", "plateau", "cosine_annealing", "constant"] = (
        "warmup_cosine"
    )
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
        return _check_in_registry(value, "core.optim", "OPTIMIZERS", "optimizer")


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
    loader_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)  # smoke tests / benchmarks


class TrackingConfig(_Section):
    """Where and under which names the trial is logged (MLflow)."""

    tracking_uri: str | None = None
    experiment: str = "clarlab"
    parent_run_id: str | None = None
    ablation: str = "adhoc"
    trial_id: str | None = None
    run_name: str | None = None  # None: built from method/encoder/front end/augmentations
    # Made absolute when the config is validated (at the edge, in the user's folder): Ray
    # changes the working directory of trials, so a relative path would land elsewhere.
    results_dir: Path = Field(Path("results"), validate_default=True)

    @field_validator("results_dir")
    @classmethod
    def _absolute_results_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()


class ExperimentConfig(_Section):
    """The whole experiment: what a trial trains and how it reports."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    frontend: FrontendConfig = Field(default_factory=FrontendConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

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
        if self.method.name in ("moco", "mocov2") and (
            self.method.moco_queue_size % self.train.batch_size
        ):
            raise ValueError(
                f"method.moco_queue_size={self.method.moco_queue_size} must be a multiple of "
                f"the global train.batch_size={self.train.batch_size} (keys are enqueued a "
                f"whole global batch at a time)"
            )
        if self.method.class_weights and self.method.name not in ("supervised", "clar"):
            raise ValueError(
                f"method.class_weights=true weighs a cross-entropy term, but method.name="
                f"{self.method.name!r} has none; use method.name='supervised' or 'clar', or "
                f"set method.class_weights=false"
            )
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

    def with_overrides(
        self, overrides: Mapping[str, Any], source: str = "overrides"
    ) -> ExperimentConfig:
        """A new validated config with dotted-key overrides (``{"train.epochs": 3}``)."""
        raw = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value, source=source)
        return ExperimentConfig.from_dict(raw, source=source)

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.field -> value`` view, e.g. for MLflow params."""
        return flatten(self.model_dump(mode="json"))


def format_validation_error(error: ValidationError, source: str) -> str:
    """Turn pydantic's error list into lines of ``source: field.path: message``."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see core/config.py for valid fields)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) or item["type"] == "missing" else f" (got {got!r})"
        lines.append(f"{source}: {where}: {message}{shown}")
    return "invalid experiment config:\n  " + "\n  ".join(lines)


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str = "overrides") -> None:
    """Set ``raw["a"]["b"] = value`` for ``dotted="a.b"``, refusing unknown sections."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            valid = ", ".join(k for k, v in node.items() if isinstance(v, dict))
            raise ConfigError(f"{source}: {dotted}: unknown section {part!r}; valid: {valid}")
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``update`` wins; nested mappings are merged, not replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --- presets --------------------------------------------------------------------------
# A preset is a partial config layered over the defaults. ``quick`` fits a 2-core laptop
# (FSDD, ResNet width 16, a few epochs); ``paper`` is CLAR's setting for Figure 4.
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


def preset(name: str, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """A validated config from a named preset plus nested ``overrides``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}")
    raw = deep_merge(PRESETS[name], overrides or {})
    return ExperimentConfig.from_dict(raw, source=f"preset {name!r}")


def known_fields() -> Iterable[str]:
    """Every dotted field name of the config tree (for error messages and docs)."""
    return flatten(ExperimentConfig.model_construct().model_dump(mode="json")).keys()
