"""Dotted keys, the layering of partial configs, and the config's trip to a trial."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
from pathlib import Path

import pytest

from core.config import (
    ConfigError,
    ExperimentConfig,
    compose,
    known_fields,
    merge_layer,
    preset,
)
from core.dotted import DottedKeyError, deep_merge, flatten, get_dotted, nest, set_dotted


def test_dotted_keys_and_nested_yaml_mean_the_same() -> None:
    assert nest({"train.epochs": 3, "train": {"seed": 1}, "data": {"sample_rate": 8000}}) == {
        "train": {"epochs": 3, "seed": 1},
        "data": {"sample_rate": 8000},
    }
    tree: dict = {}
    set_dotted(tree, "model.width", 16)
    assert tree == {"model": {"width": 16}} and get_dotted(tree, "model.width") == 16
    assert get_dotted(tree, "model.nope", "default") == "default"
    with pytest.raises(DottedKeyError, match="unknown section 'trian'; valid: model"):
        set_dotted(tree, "trian.epochs", 3, create=False)
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2]}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_later_layers_win_and_per_dataset_values_apply_to_their_dataset_only() -> None:
    preset_layer = {
        "train": {"epochs": 2},
        "datasets": {"fsdd": {"data": {"sample_rate": 8000}}},
    }
    fsdd = compose([preset_layer, {"train": {"epochs": 5}}])
    assert fsdd == {"train": {"epochs": 5}, "data": {"sample_rate": 8000}}
    esc = compose([preset_layer, {"data": {"dataset": "esc10"}}])
    assert esc == {"train": {"epochs": 2}, "data": {"dataset": "esc10"}}
    # A later layer's dataset decides even for the values of an earlier layer.
    override = compose(
        [{"data": {"dataset": "esc10"}}, preset_layer, {"data": {"dataset": "fsdd"}}]
    )
    assert override["data"] == {"dataset": "fsdd", "sample_rate": 8000}
    with pytest.raises(ConfigError, match="cannot be changed inside a per-dataset section"):
        compose([{"datasets": {"fsdd": {"data": {"dataset": "esc10"}}}}])


def test_a_layer_that_switches_method_drops_the_old_methods_fields() -> None:
    base = {"method": {"name": "simclr", "temperature": 0.5}, "train": {"epochs": 3}}
    assert merge_layer(base, {"method": {"name": "moco"}}) == {
        "train": {"epochs": 3},
        "method": {"name": "moco"},
    }
    assert merge_layer(base, {"method": {"temperature": 0.2}})["method"] == {
        "name": "simclr",
        "temperature": 0.2,
    }
    cfg = preset("quick", {"method": {"name": "mocov2"}})
    assert cfg.method.temperature == 0.2


def test_known_fields_include_every_methods_fields() -> None:
    fields = set(known_fields())
    assert {"method.name", "method.temperature", "method.queue_size", "method.out_dim"} <= fields
    assert "train.epochs" in fields and not any(name.startswith("tracking.") for name in fields)


def test_a_validated_config_reaches_a_trial_as_hashed_json_unchanged() -> None:
    cfg = preset(
        "quick",
        {"method": {"name": "swav", "prototypes": 30}, "data": {"root": "/data/fsdd"}},
    )
    payload = cfg.to_payload()
    assert isinstance(payload, str)  # Tune leaves strings alone when it restores a sweep
    again = ExperimentConfig.from_payload(payload)
    assert again == cfg and again.data.root == Path("/data/fsdd")
    assert type(again.method).__name__ == "SwAVConfig"
    # JSON, not a pickle: readable, and nothing in it runs code when a trial reads it.
    envelope = json.loads(payload)
    assert set(envelope) == {"config", "sha256"}
    assert json.loads(envelope["config"])["method"]["prototypes"] == 30


def test_a_tampered_or_foreign_payload_is_refused() -> None:
    payload = json.loads(preset("quick").to_payload())
    edited = payload["config"].replace('"epochs":2', '"epochs":2000')
    assert edited != payload["config"]
    with pytest.raises(ConfigError, match="does not match its SHA-256"):
        ExperimentConfig.from_payload(json.dumps({**payload, "config": edited}))
    pickled = base64.b64encode(pickle.dumps(preset("quick"))).decode()  # the old format
    with pytest.raises(ConfigError, match="not clarlab's JSON envelope"):
        ExperimentConfig.from_payload(pickled)
    # Hashed correctly but invalid (say, written by another version): validated again.
    broken = payload["config"].replace('"epochs":2', '"epochs":-1')
    forged = {"config": broken, "sha256": hashlib.sha256(broken.encode()).hexdigest()}
    with pytest.raises(ConfigError, match="train.epochs"):
        ExperimentConfig.from_payload(json.dumps(forged))

