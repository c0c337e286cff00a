"""The sections of an experiment config (augment, front end, model, optim, train), their
common base and the error a bad value raises.

:class:`core.config.ExperimentConfig` composes them with the data layer's section
(:mod:`core.data.config`) and the chosen method's (:mod:`core.methods.configs`). The base
sits here, below all of them, so that they share it without importing each other. Names
that refer to registries (augmentation codes, front ends, encoders, optimizers) are
checked against :mod:`core.registry`, which does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core import registry


class ConfigError(ValueError):
    """A config value is invalid; the message says which field, why, and how to fix it."""


class Section(BaseModel):
    """Base for every section: unknown keys are errors (a typo must not pass silently),
    and an assignment is validated like a construction."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
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

    def views_can_coincide(self) -> bool:
        """Whether two views of one clip can come out identical from the ablated codes
        alone: they are deterministic, or each code draws among a few fixed settings
        (``registry.FEW_SETTINGS_CODES``: QUACLRS's 0.8/1.2 stretch, +-2 semitones)."""
        if self.views_are_deterministic():
            return True
        few = registry.DETERMINISTIC_CODES | registry.FEW_SETTINGS_CODES
        return all(code in few for code in [*self.pipeline, *self.spec_pipeline])

    def resolved_view_base(self, views: int = 2) -> list[str]:
        """The base codes each view actually gets, ``view_base`` with None resolved: the
        random base only where two views (``views``, the method's count) would otherwise
        be identical or could often be (:meth:`views_can_coincide`); one view (supervised training) gets none unless ``view_base`` names
        one.

        Torch-free, so a dry run can show what a trial will train on.
        """
        if self.view_base is not None:
            return list(self.view_base)
        if views < 2:
            return []
        return list(registry.DEFAULT_VIEW_BASE) if self.views_can_coincide() else []

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


class FrontendConfig(Section):
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


class ModelConfig(Section):
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
            raise ValueError("model.weights='imagenet' and model.pretrained are both set; keep one")
        if self.encoder == "resnet18" and self.width != 64:
            raise ValueError(
                f"model.weights='imagenet' for resnet18 needs model.width=64 (torchvision's "
                f"width), got {self.width}"
            )
        return self

    @property
    def is_1d(self) -> bool:
        return self.encoder.endswith("_1d")


class OptimConfig(Section):
    """Optimizer and learning-rate schedule (CLAR: LARS 1.0, wd 1e-4, 10 warmup epochs)."""

    name: str = "lars"
    lr: float = Field(1.0, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(10, ge=0)
    schedule: Literal["warmup_cosine", "plateau", "cosine_annealing", "constant"] = "warmup_cosine"
    lars_eta: float = Field(1e-3, gt=0)
    # schedule='plateau' (QUACLRS): multiply lr by plateau_factor after plateau_patience
    # epochs without improvement of the metric given to LearningRateSchedule.step_epoch.
    plateau_mode: Literal["max", "min"] = "max"
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    plateau_patience: int = Field(5, ge=0)
    min_lr: float = Field(0.0, ge=0)  # floor of the cosine schedules

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return registry.OPTIMIZERS.check(value)


class TrainConfig(Section):
    """Loop settings; ``batch_size`` is the GLOBAL batch, split across workers."""

    epochs: int = Field(1000, gt=0)
    batch_size: int = Field(1024, gt=0)
    num_workers: int = Field(1, gt=0)  # training workers per trial
    use_gpu: bool = False
    # auto: bf16 autocast where the GPU or CPU does bf16 natively (AMX, AVX512-BF16),
    # fp16 + GradScaler on a GPU without it, fp32 on other CPUs (core.train.precision).
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    # auto: channels-last for 2D encoders and their inputs, contiguous for 1D ones.
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
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
    # The final test evaluation's ROC curves and Grad-CAM maps as MLflow images (QUACLRS
    # 4.6, Figures 5-6): about a CPU-second a trial, which a suite of tiny trials that
    # does not look at them can spare. The ROC AUCs are metrics either way.
    final_figures: bool = True

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
        with_classifier = ("supervised", "linear_probe")  # their Method.classify gives logits
        if self.scored_classifier == "own" and method_name not in with_classifier:
            raise ValueError(
                f"train.scored_classifier='own' scores the trained network's own classifier, "
                f"but method.name={method_name!r} has none; use method.name="
                f"{' or '.join(repr(name) for name in with_classifier)}, or set "
                f"train.scored_classifier='evaluation_head'"
            )
