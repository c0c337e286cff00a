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
preset < a space file's ``base`` < its ``presets.<name>`` < the grid cell or the sample <
``--set``. A layer may hold values for one dataset only (``datasets: {fsdd: {...}}``);
they apply only when that dataset is the one in effect. The presets are in
:mod:`core.presets`, the sections in :mod:`core.sections`, and the ``data`` section lives
with the data layer (:mod:`core.data.config`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from core.data.config import DataConfig
from core.dotted import DottedKeyError, deep_merge, flatten, get_dotted, set_dotted
from core.methods.configs import DEFAULT_METHOD, MethodConfig, all_method_fields, parse_method
from core.presets import PRESETS, preset_layer
from core.sections import (
    AugmentConfig,
    ConfigError,
    FrontendConfig,
    ModelConfig,
    OptimConfig,
    Section,
    TrainConfig,
)

# Re-exported: callers build configs from here without knowing where each piece lives.
__all__ = [
    "PER_DATASET_KEY",
    "PRESETS",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "FrontendConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "compose",
    "dataset_in_effect",
    "format_validation_error",
    "known_fields",
    "merge_layer",
    "preset",
    "preset_layer",
]


class ExperimentConfig(Section):
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
        if self.train.memory_format == "channels_last" and not self.frontend.is_2d:
            raise ValueError(
                f"train.memory_format='channels_last' needs a 2D front end, and frontend.name="
                f"{self.frontend.name!r} feeds a 1D encoder; use 'auto' or 'contiguous'"
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
        """This validated config as text for a trial process: canonical JSON of the model
        dump with its SHA-256 beside it.

        JSON, never a pickle: Tune keeps the payload in its experiment state, which a
        resume reads back, and unpickling runs code. Text, not a dict: Tune rewrites the
        values of a param space it restores for pending trials (a ``Path`` came back as a
        tuple), and leaves strings alone."""
        dumped = _canonical(self.model_dump(mode="json"))
        return json.dumps({"sha256": hashlib.sha256(dumped.encode()).hexdigest(), "config": dumped})

    @classmethod
    def from_payload(cls, payload: str) -> ExperimentConfig:
        """The config of :meth:`to_payload`, validated again (milliseconds) after its hash
        is checked: a payload edited in Tune's state, or written by another version of the
        config, fails here with the reason instead of training something else."""
        try:
            envelope = json.loads(payload)
            dumped, digest = envelope["config"], envelope["sha256"]
        except (TypeError, ValueError, KeyError):
            raise ConfigError("a trial's config payload is not clarlab's JSON envelope") from None
        if hashlib.sha256(dumped.encode()).hexdigest() != digest:
            raise ConfigError("a trial's config payload does not match its SHA-256; refusing it")
        config = cls.from_dict(json.loads(dumped), source="trial payload")
        if _canonical(config.model_dump(mode="json")) != dumped:
            raise ConfigError(
                "a trial's config payload validates to a different config (written by another "
                "version of clarlab?); rerun the sweep with this version"
            )
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


def _canonical(dumped: Mapping[str, Any]) -> str:
    """One text per config: sorted keys, no spaces, so equal configs hash equally."""
    return json.dumps(dumped, sort_keys=True, separators=(",", ":"))


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
# The key of a preset layer that holds per-dataset values.
PER_DATASET_KEY = "datasets"


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
