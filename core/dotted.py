"""Dotted config keys (``train.epochs``) over nested dicts: the one place that knows them.

Configs arrive in two spellings: nested YAML (``train: {epochs: 3}``) and dotted keys from
``--set train.epochs=3`` or a search-space axis. Everything that layers partial configs
(presets, a search space's ``base``, overrides) goes through these helpers, so the two
spellings mean exactly the same thing everywhere.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


class DottedKeyError(ValueError):
    """A dotted key walks into something that is not a section."""


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, *, create: bool = True) -> None:
    """``tree["a"]["b"] = value`` for ``dotted="a.b"``.

    ``create=True`` makes missing sections (a partial config being layered);
    ``create=False`` refuses them and lists the sections that exist (a full config dump,
    where a missing section is a typo).
    """
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None and create:
            child = node[part] = {}
        if not isinstance(child, dict):
            valid = ", ".join(key for key, value in node.items() if isinstance(value, dict))
            raise DottedKeyError(f"{dotted}: unknown section {part!r}; valid: {valid}")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def get_dotted(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``dotted="a.b"``, or ``default`` when any part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values, empty sections vanish."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def nest(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": {"d.e": 2}}`` -> nested dicts; both spellings may be mixed."""
    nested: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            value = nest(value)
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = value
    return nested


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: ``update`` wins; nested mappings are merged, not replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
