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
    # Signal codes each view gets first, with its own draws and always (``probability``
    # is for the ablated codes). None: ``DEFAULT_VIEW_BASE`` when the ablated codes alone
    # would make the two views identical, else none (QUACLRS: the ablated augmentation on
    # top of a random base). [] never adds one, even if the views come out identical.
    view_base: list[str] | None = None

    @field_validator("pipeline", "view_base")
    @classmethod
    def _known_signal_codes(cls, codes: list[str] | None) -> list[str] | None:
        for code in codes or ():
            registry.SIGNAL_AUGMENTATIONS.check(code)
        return codes

    def views_are_deterministic(self) -> bool:
        """Whether the ablated codes alone make each view a fixed function of its clip.

        True for an empty pipeline (the "original" row), for pipelines made only of
        fixed-setting codes (``registry.DETERMINISTIC_CODES``) and for ``probability`` 0
        (no code ever applies): two views of a clip would then be bit-identical and the
        contrastive task trivial.
        """
        codes = [*self.pipeline, *self.spec_pipeline]
        if self.probability == 0:
            return True
        return all(code in registry.DETERMINISTIC_CODES for code in codes)

    def resolved_view_base(self) -> list[str]:
        """The base codes each view actually gets, ``view_base`` with None resolved.

        Torch-free, so a dry run can show what a trial will train on.
        """
        if self.view_base is not None:
            return list(self.view_base)
        return list(registry.DEFAULT_VIEW_BASE) if self.views_are_deterministic() else []

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
    # QUACLRS feeds its ImageNet backbones a 224x224 RGB image of the log-mel spectrogram.
    # image_size: resize the (C, F, frames) map bilinearly to image_size x image_size.
    # None: the setting's size (224 for name='mel' with setting='quaclrs', else the map's
    # own); 0: never resize. None rather than a number so that switching the setting (also
    # through with_overrides, which re-validates every field) brings its default along.
    image_size: int | None = Field(None, ge=0)
    # Min-max each clip's map to [0, 1] like an RGB image, then ImageNet's per-channel mean
    # and std (needs channels=3). None: on for name='mel' with setting='quaclrs'.
    imagenet_norm: bool | None = None

    @field_validator("name")
    @classmethod
    def _known_frontend(cls, value: str) -> str:
        return registry.FRONTENDS.check(value)

    @model_validator(mode="after")
    def _image_options(self) -> FrontendConfig:
        if not self.is_2d and (self.image_size or self.imagenet_norm):
            raise ValueError(
                "frontend.image_size / frontend.imagenet_norm shape a spectrogram image, but "
                "frontend.name='raw1d' passes audio through; unset them or use a 2D front end"
            )
        if self.imagenet_norm and self.channels != 3:
            raise ValueError(
                f"frontend.imagenet_norm=true applies ImageNet's three RGB channel statistics "
                f"but frontend.channels={self.channels}; set frontend.channels=3 or "
                f"frontend.imagenet_norm=false"
            )
        return self

    @property
    def is_2d(self) -> bool:
        return self.name != "raw1d"

    @property
    def _quaclrs_image(self) -> bool:
        """Whether the setting's defaults make QUACLRS's ImageNet-style input."""
        return self.name == "mel" and self.setting == "quaclrs"

    @property
    def resolved_image_size(self) -> int | None:
        """The side of the square image the front end resizes to; None: no resize."""
        if self.image_size is not None:
            return self.image_size or None
        return 224 if self._quaclrs_image else None

    @property
    def resolved_imagenet_norm(self) -> bool:
        """Whether the front end applies [0, 1] scaling and ImageNet's mean and std."""
        if self.imagenet_norm is not None:
            return self.imagenet_norm
        return self._quaclrs_image and self.channels == 3

    def check_sample_rate(self, sample_rate: int) -> None:
        """Refuse a setting at a rate it is not defined for. QUACLRS resamples every clip
        to 48 kHz; its hop of 512 samples at 16 kHz would be 3x coarser in time than the
        paper's, so the results would not be QUACLRS's. Raises ValueError."""
        if self.is_2d and self.setting == "quaclrs" and sample_rate != 48_000:
            raise ValueError(
                f"frontend.setting='quaclrs' is defined at 48 kHz (QUACLRS resamples every "
                f"clip to 48000 Hz) but data.sample_rate={sample_rate}; set "
                f"data.sample_rate=48000 or choose another frontend.setting"
            )


class ModelConfig(_Section):
    """Encoder and heads (CLAR 3.2)."""

    encoder: str = "resnet18"
    width: int = Field(64, gt=0)  # ResNet base width: 64 is the paper, 16/32 for CPU presets
    authors_code: bool = False  # resnet18_1d: stem kernel 7 + max-pool 9 as in the public code
    pretrained: Path | None = None
    proj_dim: int = Field(128, gt=0)
    proj_hidden_dim: int = Field(512, gt=0)
    eval_hidden_dim: int = Field(512, gt=0)
    # The evaluation head on the frozen encoder: CLAR's three-layer MLP, or one linear
    # layer (the linear probing of QUACLRS Tables 5-8).
    eval_head: Literal["mlp", "linear"] = "mlp"
    # Initial weights: random, or torchvision's ImageNet weights read from a local file
    # (weights_dir, else torchvision's cache; see core/imagenet.py). QUACLRS Tables 9-12.
    weights: Literal["random", "imagenet"] = "random"
    weights_dir: Path | None = None

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        return registry.ENCODERS.check(value)

    @model_validator(mode="after")
    def _imagenet_weights_fit(self) -> ModelConfig:
        if self.weights != "imagenet":
            return self
        from core.imagenet import IMAGENET_CHECKPOINTS

        if self.encoder not in IMAGENET_CHECKPOINTS:
            raise ValueError(
                f"model.weights='imagenet': no ImageNet weights for {self.encoder!r}; they "
                f"exist for {', '.join(IMAGENET_CHECKPOINTS)}"
            )
        if self.pretrained is not None:
            raise ValueError(
                "model.weights='imagenet' and model.pretrained are both set; keep one"
            )
        if self.encoder == "resnet18" and self.width != 64:
            raise ValueError(
                f"model.weights='imagenet' for resnet18 needs model.width=64 (torchvision's "
                f"width), got {self.width}"
            )
        return self

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
    # Watched by early stopping and optim.schedule='plateau', every epoch: a val_ metric
    # (the validation split is scored each epoch) or one the epoch reports (loss, lr).
    early_stopping_metric: str = "val_top1"
    # What the test scores measure: CLAR's tables score an evaluation head trained on the
    # frozen encoder; the backbone tables of QUACLRS score the trained network's own
    # classifier ("own", for methods that have one: supervised).
    scored_classifier: Literal["evaluation_head", "own"] = "evaluation_head"
    # Labelled clips in every batch (CLAR's remedy for small label fractions); None: the
    # paper's random batches, which at 1 % labels and batch 64 hold 0.6 labelled clips.
    labelled_per_batch: int | None = Field(None, gt=0)
    loader_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, gt=0)  # smoke tests / benchmarks

    @field_validator("early_stopping_metric")
    @classmethod
    def _not_a_test_metric(cls, value: str) -> str:
        if value.startswith("test_"):
            raise ValueError(
                f"early_stopping_metric={value!r} would select on the test split and leak it "
                f"into the result; watch a validation metric, e.g. "
                f"{'val_' + value.removeprefix('test_')!r} (needs a split with a validation "
                f"fold, such as data.split_scheme='quaclrs')"
            )
        return value

    def check_method(self, method_name: str) -> None:
        """Refuse ``scored_classifier='own'`` for a method without a classifier of its own
        (a contrastive method's projection head does not predict classes). Raises
        ValueError naming the field and the fix."""
        with_classifier = ("supervised",)  # methods whose Method.classify gives logits
        if self.scored_classifier == "own" and method_name not in with_classifier:
            raise ValueError(
                f"train.scored_classifier='own' scores the trained network's own classifier, "
                f"but method.name={method_name!r} has none; use method.name="
                f"{' or '.join(repr(name) for name in with_classifier)}, or set "
                f"train.scored_classifier='evaluation_head'"
            )


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
        self.frontend.check_sample_rate(self.data.sample_rate)
        self.train.check_method(self.method.name)
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
        # The paper's datasets are fetched into $CLARLAB_DATA where missing (once per
        # node, atomically): the preset is meant for a cluster, not this checkout's data.
        "data": {"dataset": "speech_commands_10", "sample_rate": 16_000, "download": True},
        "model": {"width": 64},
        "optim": {"name": "lars", "lr": 1.0, "weight_decay": 1e-4, "warmup_epochs": 10},
        "train": {
            "epochs": 1000,
            "batch_size": 1024,
            "num_workers": 4,
            "use_gpu": True,
            # CLAR Figure 5 plots test accuracy every 10 epochs of training.
            "eval_every": 10,
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
