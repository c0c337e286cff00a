"""Layering partial configs, lowest first, into one raw config (not validated yet).

Partial configs are layered in one order everywhere: code defaults < preset < a search
space's ``base`` < its ``presets.<name>`` < the grid cell < ``--set``. A layer may hold
values for one dataset only (``datasets: {fsdd: {...}}``); they apply only when that
dataset is the one in effect. Torch-free and below :mod:`core.config`, which validates the
result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.data.config import DataConfig
from core.dotted import deep_merge, get_dotted
from core.methods.configs import DEFAULT_METHOD
from core.sections import ConfigError

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
