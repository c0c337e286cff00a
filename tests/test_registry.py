"""The lazy registries of core.registry: every entry resolves, and names alone need no torch."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from core.registry import (
    ENCODERS,
    FRONTENDS,
    OPTIMIZERS,
    SIGNAL_AUGMENTATIONS,
    SPEC_AUGMENTATIONS,
    LazyRegistry,
)

REGISTRIES = {
    "SIGNAL_AUGMENTATIONS": SIGNAL_AUGMENTATIONS,
    "SPEC_AUGMENTATIONS": SPEC_AUGMENTATIONS,
    "FRONTENDS": FRONTENDS,
    "ENCODERS": ENCODERS,
    "OPTIMIZERS": OPTIMIZERS,
}

# Where each registry is used: those modules must index the very same object, or an entry
# registered at run time would be seen by the config but not by the builders.
USERS = {
    "SIGNAL_AUGMENTATIONS": "core.augment",
    "SPEC_AUGMENTATIONS": "core.augment",
    "FRONTENDS": "core.features",
    "ENCODERS": "core.models",
    "OPTIMIZERS": "core.optim",
}


@pytest.mark.parametrize("attribute", sorted(REGISTRIES))
def test_every_name_resolves_to_a_callable(attribute: str):
    table = REGISTRIES[attribute]
    assert len(table) > 0
    for name in table:
        assert callable(table[name]), f"{attribute}[{name!r}] is {table[name]!r}"


@pytest.mark.parametrize("attribute", sorted(USERS))
def test_implementing_modules_index_the_registry_itself(attribute: str):
    assert getattr(importlib.import_module(USERS[attribute]), attribute) is REGISTRIES[attribute]


_NAMES_WITHOUT_TORCH = """
import json, sys
from core import registry
names = {}
for attribute in ("SIGNAL_AUGMENTATIONS", "SPEC_AUGMENTATIONS", "FRONTENDS", "ENCODERS",
                  "OPTIMIZERS"):
    table = getattr(registry, attribute)
    names[attribute] = table.names()
    for name in table:
        table.check(name)
        assert name in table
print(json.dumps({"torch": "torch" in sys.modules, "names": names}))
"""


def test_names_and_checks_do_not_import_torch():
    # A fresh interpreter: this one imported torch long ago.
    done = subprocess.run(
        [sys.executable, "-c", _NAMES_WITHOUT_TORCH], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] is False, "validating names must not import torch"
    assert result["names"]["FRONTENDS"] == ["mel", "raw1d", "stft3"]
    assert "PS" in result["names"]["SIGNAL_AUGMENTATIONS"]


def test_an_unknown_name_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError) as error:
        OPTIMIZERS.check("nope")
    message = str(error.value)
    assert "optimizer 'nope'" in message
    for name in ("adam", "adamw", "lars", "sgd"):
        assert name in message
    assert OPTIMIZERS.check("lars") == "lars"


def test_register_and_unregister_a_toy_entry():
    def toy(x):
        return x

    table = SIGNAL_AUGMENTATIONS
    before = table.names()
    table.register("TOY", toy)
    try:
        assert "TOY" in table and table["TOY"] is toy
        assert table.check("TOY") == "TOY"
        with pytest.raises(ValueError, match="already registered"):
            table.register("TOY", toy)
        table.register("TOY", "math:sqrt", replace=True)  # a lazy target, resolved on lookup
        assert table["TOY"](9.0) == 3.0
    finally:
        table.unregister("TOY")
    assert "TOY" not in table
    assert table.names() == before
    table.unregister("TOY")  # removing an absent name is a no-op


def test_a_module_attribute_string_resolves_to_that_attribute():
    table = LazyRegistry("thing", {"b": "json:dumps", "a": "json:loads"})
    assert table.names() == ["a", "b"] and len(table) == 2
    assert table["b"] is json.dumps
    with pytest.raises(ValueError, match="unknown thing 'c'; valid: a, b"):
        table.check("c")
