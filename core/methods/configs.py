"""Each method's hyperparameters, with the published defaults, and the method registry.

A method is one config class here plus one ``nn.Module`` class that implements it; the
``@register_method`` line on the config joins the two. The configs live in this torch-free
module, apart from their implementations, so that the sweep driver validates a whole grid
(method names, fields, cross-section checks) without importing torch.

Defaults are the values of the method's own paper, so a cross-method comparison is not
biased by one method running with another's settings:

=============  ============================================================================
simclr, clar   tau 0.5 (SimCLR's batch-1024+ setting, CLAR 3.3); CLAR's head, read from
               ``model.proj_hidden_dim`` / ``model.proj_dim`` (the projection ablation's axis)
moco           tau 0.07, key-encoder momentum 0.999, queue 65,536; linear head to 128
               (He et al. 2020)
mocov2         tau 0.2, momentum 0.999, queue 65,536; MLP head 2048 (ReLU) -> 128
               (Chen, Fan, Girshick, He 2020)
byol           base momentum 0.996, cosine-scheduled to 1; projector 4096 (BN, ReLU) -> 256,
               predictor 256 -> 4096 (BN, ReLU) -> 256 (Grill et al. 2020)
barlow_twins   lambda 5e-3; projector of three 8192-unit layers, BN and ReLU after the first
               two (Zbontar et al. 2021)
dino           teacher tau 0.04, student tau 0.1, centre momentum 0.9, teacher momentum
               0.996 to 1; head 2048 -> 2048 (GELU) -> 256, L2-normalised, weight-normalised
               last layer (gain fixed to 1) to 65,536, frozen in the first epoch
               (Caron et al. 2021)
swav           tau 0.1, Sinkhorn epsilon 0.05 and 3 iterations; projector 2048 (BN, ReLU)
               -> 128, 3,000 prototypes frozen in the first epoch; below a global batch of
               256, a queue of 3,840 past features in the Sinkhorn step from epoch 15
               (Caron et al. 2020)
=============  ============================================================================

The heads of MoCo, BYOL, Barlow Twins, DINO and SwAV are fields of their own configs
(``method.projector_dim`` and so on); ``model.proj_dim`` / ``model.proj_hidden_dim`` shape
only the SimCLR / CLAR head.

A search space or ``--set method.<field>=...`` overrides any of them; a field the named
method does not have is an error that lists the fields it has.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field, ValidationError

from core.sections import Section, TrainConfig


class ExperimentSections(Protocol):
    """What a method's cross-section check reads of the experiment being validated
    (:class:`core.config.ExperimentConfig` has it). A protocol, so that this module stays
    below the config that composes it."""

    @property
    def train(self) -> TrainConfig: ...


class MethodConfig(Section):
    """Fields every method has. Subclasses add their own and set ``name``'s Literal."""

    name: str
    # Inverse-frequency weights on the cross-entropy term (QUACLRS 4.6); only methods
    # whose loss has such a term (``uses_labels``) accept true.
    class_weights: bool = False

    uses_labels: ClassVar[bool] = False  # the loss reads the labels of the batch
    trains: ClassVar[bool] = True  # False: the encoder is never trained (the control)
    # Views of each clip per step: two for a contrastive pair; one for cross-entropy alone,
    # which then trains on exactly the augmentation its config names (no view base).
    views: ClassVar[int] = 2
    # The scalars the method's forward returns, each reported per epoch as its mean (the
    # names a space file's metric may use; tests check them against the forward's output).
    reported: ClassVar[tuple[str, ...]] = ("loss",)

    def check(self, experiment: ExperimentSections) -> None:
        """Cross-section checks, run when the experiment is validated. Raise ValueError
        with a message naming the fields and the fix."""
        if self.class_weights and not self.uses_labels:
            labelled = ", ".join(repr(n) for n in sorted(METHODS) if METHODS[n].config.uses_labels)
            raise ValueError(
                f"method.class_weights=true weighs a cross-entropy term, but method.name="
                f"{self.name!r} has none; use method.name={labelled}, or set "
                f"method.class_weights=false"
            )

    @property
    def temperature_shown(self) -> float | None:
        """The temperature to show in tables (None for methods without one)."""
        return getattr(self, "temperature", None)

    def fitted_to(self, train_clips: int, global_batch: int) -> tuple[MethodConfig, str | None]:
        """This config for a training split of ``train_clips`` clips: itself, or, where a
        setting cannot sensibly exceed the split (MoCo's queue), the config fitted to it
        and a line saying what changed (the trial and the dry run print it)."""
        return self, None


def whole_global_batches(rows: int, global_batch: int) -> int:
    """The largest multiple of the global batch that is at most ``rows``, and at least one
    batch: a queue of keys or features fills a whole global batch at a time (MoCo, SwAV)."""
    return max(global_batch, rows // global_batch * global_batch)


@dataclass
class MethodEntry:
    """A registered method: its config class and its implementation (a ``Method``
    subclass, or ``"module:Class"`` imported on first use)."""

    config: type[MethodConfig]
    implementation: Any

    def load(self) -> Any:
        if isinstance(self.implementation, str):
            module, _, attribute = self.implementation.partition(":")
            self.implementation = getattr(importlib.import_module(module), attribute)
        return self.implementation


METHODS: dict[str, MethodEntry] = {}
DEFAULT_METHOD = "simclr"  # what an experiment without method.name trains


def register_method(config: type[MethodConfig] | None = None, implementation: Any = None) -> Any:
    """Register a method: ``register_method(ToyConfig, Toy)``, or as a decorator on a
    config, ``@register_method(implementation="core.methods.simclr:SimCLR")``.

    The method's name is the default of its config's ``name`` field.
    """

    def add(config_class: type[MethodConfig]) -> type[MethodConfig]:
        name = config_class.model_fields["name"].default
        if not isinstance(name, str) or not name:
            raise TypeError(f"{config_class.__name__}.name needs a default, e.g. 'simclr'")
        if implementation is None:
            raise TypeError(f"register_method({config_class.__name__}) needs its implementation")
        METHODS[name] = MethodEntry(config_class, implementation)
        return config_class

    if config is not None:
        return add(config)
    return add


def unregister_method(name: str) -> None:
    """Remove a registered method (tests that add a toy method clean up with this)."""
    METHODS.pop(name, None)


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of method ``name``; unknown names list the registered ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name].config


def method_fields(name: str) -> list[str]:
    """The fields method ``name`` accepts, for error messages."""
    return list(method_config_class(name).model_fields)


def all_method_fields() -> set[str]:
    """Every field any registered method has (what a search space may set under method.)."""
    return {field for entry in METHODS.values() for field in entry.config.model_fields}


# --- the built-in methods ---------------------------------------------------------------
@register_method(implementation="core.methods.untrained:Untrained")
class UntrainedConfig(MethodConfig):
    """The control every sweep carries: the same encoder, never trained, evaluated by the
    same evaluation head on its frozen features. A method that scores below this has made
    the representation worse than random weights.

    ``calibrate_batch_norm`` measures the batch-norm statistics on one epoch of training
    clips first (still no weight changes). Off by default: on FSDD (stft3, width 16) the
    network as initialised scores higher (0.66 against 0.49 at seed 0), so it is the
    stricter control."""

    name: Literal["untrained"] = "untrained"
    reported: ClassVar[tuple[str, ...]] = ()
    calibrate_batch_norm: bool = False
    trains: ClassVar[bool] = False


@register_method(implementation="core.methods.supervised:Supervised")
class SupervisedConfig(MethodConfig):
    """Cross-entropy on the labelled clips (CLAR's and QUACLRS's supervised baseline)."""

    name: Literal["supervised"] = "supervised"
    reported: ClassVar[tuple[str, ...]] = ("loss", "ce", "accuracy")
    uses_labels: ClassVar[bool] = True
    views: ClassVar[int] = 1


@register_method(implementation="core.methods.linear_probe:LinearProbe")
class LinearProbeConfig(MethodConfig):
    """Linear probing (QUACLRS Tables 5-8): the encoder frozen as loaded (ImageNet's or
    random weights), one linear layer trained with cross-entropy and scored as the
    network's own classifier."""

    name: Literal["linear_probe"] = "linear_probe"
    reported: ClassVar[tuple[str, ...]] = ("loss", "ce", "accuracy")
    uses_labels: ClassVar[bool] = True
    views: ClassVar[int] = 1


@register_method(implementation="core.methods.simclr:SimCLR")
class SimCLRConfig(MethodConfig):
    """SimCLR's NT-Xent (Chen et al. 2020); CLAR's self-supervised setting."""

    name: Literal["simclr"] = "simclr"
    reported: ClassVar[tuple[str, ...]] = ("loss", "nt_xent", "contrastive_accuracy")
    temperature: float = Field(0.5, gt=0)


@register_method(implementation="core.methods.simclr:CLAR")
class CLARConfig(MethodConfig):
    """NT-Xent plus cross-entropy on the batch's labelled clips (CLAR Eq. 3)."""

    name: Literal["clar"] = "clar"
    reported: ClassVar[tuple[str, ...]] = (
        "loss", "nt_xent", "ce", "labelled", "contrastive_accuracy",
    )  # fmt: skip
    temperature: float = Field(0.5, gt=0)
    ce_weight: float = Field(1.0, ge=0)  # weight of the cross-entropy term
    uses_labels: ClassVar[bool] = True


class _MoCoBase(MethodConfig):
    momentum: float = Field(0.999, ge=0, le=1)  # key encoder EMA
    reported: ClassVar[tuple[str, ...]] = ("loss", "info_nce", "contrastive_accuracy")
    queue_size: int = Field(65_536, gt=0)
    # Output of the projection head: 128 in MoCo v1 ("fc 128", He et al. 2020) and v2.
    projector_dim: int = Field(128, gt=0)

    def fitted_to(self, train_clips: int, global_batch: int) -> tuple[MethodConfig, str | None]:
        """A queue longer than the training split is capped at the largest multiple of the
        global batch that fits it. The queue takes one global batch of keys per step, so
        after an epoch a longer one still holds random initial vectors as negatives.
        65,536 (He et al. 2020) was sized for ImageNet's 1.28M images; QUACLRS Table 18
        uses 4,096 and 8,192."""
        if self.queue_size <= train_clips:
            return self, None
        fitted = whole_global_batches(train_clips, global_batch)
        note = (
            f"method.queue_size={self.queue_size} is longer than the training split "
            f"({train_clips} clips): capped to {fitted}, the largest multiple of the global "
            f"batch ({global_batch}) that fits, so that an epoch replaces every random "
            f"initial key; set method.queue_size to choose another"
        )
        return self.model_copy(update={"queue_size": fitted}), note

    def check(self, experiment: ExperimentSections) -> None:
        super().check(experiment)
        batch = experiment.train.batch_size
        if self.queue_size % batch:
            raise ValueError(
                f"method.queue_size={self.queue_size} must be a multiple of the global "
                f"train.batch_size={batch} (keys are enqueued a whole global batch at a time)"
            )


@register_method(implementation="core.methods.moco:MoCo")
class MoCoConfig(_MoCoBase):
    """MoCo v1 (He et al. 2020): linear head, InfoNCE against a queue of momentum keys."""

    name: Literal["moco"] = "moco"
    temperature: float = Field(0.07, gt=0)


@register_method(implementation="core.methods.moco:MoCoV2")
class MoCoV2Config(_MoCoBase):
    """MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved Baselines"): MoCo with a
    two-layer MLP head (2048 hidden, ReLU, 128 out) and tau 0.2."""

    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0)
    projector_hidden_dim: int = Field(2048, gt=0)  # MoCo v2's MLP head: hidden 2048


@register_method(implementation="core.methods.byol:BYOL")
class BYOLConfig(MethodConfig):
    """BYOL (Grill et al. 2020): projector and predictor are both MLPs with one hidden
    layer of 4096 units (batch norm, ReLU) and a 256-d output."""

    name: Literal["byol"] = "byol"
    reported: ClassVar[tuple[str, ...]] = ("loss", "byol")
    momentum: float = Field(0.996, ge=0, le=1)  # base of the cosine schedule to 1
    projector_hidden_dim: int = Field(4096, gt=0)  # BYOL's projector: hidden 4096
    projector_dim: int = Field(256, gt=0)  # BYOL's projector: output 256
    predictor_hidden_dim: int = Field(4096, gt=0)  # BYOL's predictor: the projector's shape


@register_method(implementation="core.methods.barlow_twins:BarlowTwins")
class BarlowTwinsConfig(MethodConfig):
    """Barlow Twins (Zbontar et al. 2021): a projector of three linear layers of 8192
    units, the first two followed by batch norm and ReLU. Its accuracy falls with smaller
    projectors (the paper's ablation of the projector's size), so 8192 is part of the
    method, not a detail."""

    name: Literal["barlow_twins"] = "barlow_twins"
    reported: ClassVar[tuple[str, ...]] = ("loss", "barlow_twins")
    lambda_offdiag: float = Field(5e-3, ge=0)  # weight of the redundancy-reduction term
    projector_hidden_dim: int = Field(8192, gt=0)  # Barlow Twins: 8192 in both hidden layers
    projector_dim: int = Field(8192, gt=0)  # ... and in the output layer


@register_method(implementation="core.methods.dino:DINO")
class DINOConfig(MethodConfig):
    """DINO (Caron et al. 2021) with two views. The head: a three-layer MLP (hidden 2048,
    GELU) to a 256-d bottleneck, L2-normalised, then a weight-normalised linear layer to
    ``out_dim``, held still during the first epoch (DINO's ``freeze_last_layer``)."""

    name: Literal["dino"] = "dino"
    reported: ClassVar[tuple[str, ...]] = ("loss", "dino")
    out_dim: int = Field(65_536, gt=0)
    teacher_temperature: float = Field(0.04, gt=0)
    student_temperature: float = Field(0.1, gt=0)
    center_momentum: float = Field(0.9, ge=0, le=1)
    momentum: float = Field(0.996, ge=0, le=1)  # teacher EMA, cosine-scheduled to 1
    head_hidden_dim: int = Field(2048, gt=0)  # DINO's head: hidden_dim 2048
    bottleneck_dim: int = Field(256, gt=0)  # DINO's head: bottleneck_dim 256
    # The last layer's weight-norm gain fixed to 1 (DINO's norm_last_layer=True).
    norm_last_layer: bool = True
    # Epochs during which the last layer gets no update (DINO's freeze_last_layer=1).
    freeze_last_layer_epochs: int = Field(1, ge=0)

    @property
    def temperature_shown(self) -> float | None:
        return self.student_temperature


# SwAV's queue helps "when the batch is under 256" (Caron et al. 2020);
# at 256 and above the batch alone is large enough for the Sinkhorn step.
SWAV_QUEUE_BELOW_BATCH = 256


@register_method(implementation="core.methods.swav:SwAV")
class SwAVConfig(MethodConfig):
    """SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp codes.

    Below a global batch of 256 the Sinkhorn step also sees a queue of past batches'
    features (its codes are then an equipartition over more samples than prototypes);
    the loss still covers only the current batch."""

    name: Literal["swav"] = "swav"
    reported: ClassVar[tuple[str, ...]] = ("loss", "swav")
    temperature: float = Field(0.1, gt=0)
    prototypes: int = Field(3_000, gt=0)
    epsilon: float = Field(0.05, gt=0)
    sinkhorn_iterations: int = Field(3, gt=0)
    projector_hidden_dim: int = Field(2048, gt=0)  # SwAV's code: hidden_mlp 2048 (BN, ReLU)
    projector_dim: int = Field(128, gt=0)  # SwAV's code: feat_dim 128
    # Past features in the Sinkhorn step, 0 for none: 3840 for batch 256 (SwAV's code,
    # queue_length 3840), used only below a global batch of SWAV_QUEUE_BELOW_BATCH.
    queue_length: int = Field(3_840, ge=0)
    # The epoch from which the queue fills and is used (SwAV's code, epoch_queue_starts 15):
    # early in training the features change too fast to be worth keeping.
    queue_start_epoch: int = Field(15, ge=0)
    # Epochs during which the prototypes get no update (SwAV's freeze_prototypes_niters,
    # 313 iterations = one ImageNet epoch at batch 4096).
    freeze_prototypes_epochs: int = Field(1, ge=0)

    def uses_queue(self, global_batch: int) -> bool:
        """Whether a trial at ``global_batch`` keeps a queue of past features."""
        return self.queue_length > 0 and global_batch < SWAV_QUEUE_BELOW_BATCH

    def fitted_to(self, train_clips: int, global_batch: int) -> tuple[MethodConfig, str | None]:
        """The queue in whole global batches (SwAV's code rounds it down the same way) and
        no longer than the training split: a longer one would hold the same clips twice."""
        if not self.uses_queue(global_batch):
            return self, None
        fitted = whole_global_batches(min(self.queue_length, train_clips), global_batch)
        if fitted == self.queue_length:
            return self, None
        note = (
            f"method.queue_length={self.queue_length} is set to {fitted}, the largest "
            f"multiple of the global batch ({global_batch}) that fits both it and the "
            f"training split ({train_clips} clips); set method.queue_length to choose "
            f"another, 0 for none"
        )
        return self.model_copy(update={"queue_length": fitted}), note

    def check(self, experiment: ExperimentSections) -> None:
        super().check(experiment)
        batch = experiment.train.batch_size
        if self.uses_queue(batch) and self.queue_length < batch:
            raise ValueError(
                f"method.queue_length={self.queue_length} is shorter than one global "
                f"train.batch_size={batch}: set it to a multiple of the batch, or 0 for no queue"
            )


def parse_method(raw: Any) -> MethodConfig:
    """Validate a raw ``method`` section by the config class its ``name`` selects.

    Raises ValueError naming the bad field; an unknown field lists the fields the method
    has (not every method's).
    """
    if isinstance(raw, MethodConfig):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"expected a mapping with at least 'name', got {raw!r}")
    name = raw.get("name", DEFAULT_METHOD)
    config_class = method_config_class(name)
    unknown = sorted(set(raw) - set(config_class.model_fields))
    if unknown:
        raise ValueError(
            f"method {name!r} has no field(s) {', '.join(unknown)}; its fields: "
            f"{', '.join(config_class.model_fields)}"
        )
    try:
        return config_class.model_validate({**raw, "name": name})
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"method.{where}: {message} (got {item.get('input')!r})")
        raise ValueError("; ".join(problems)) from None
