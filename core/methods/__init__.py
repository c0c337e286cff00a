"""Training methods: one config class and one module per method behind one interface.

The registry and every method's config (:mod:`core.methods.configs`) import without
torch, so configs validate on a driver that never trains; the implementations
(:mod:`core.methods.base` and one module per method) load on first use.
"""

from __future__ import annotations

from core.lazy import lazy_attributes
from core.methods.configs import (
    METHODS,
    MethodConfig,
    MethodEntry,
    method_config_class,
    parse_method,
    register_method,
    unregister_method,
)

_LAZY = {
    "Method": "core.methods.base",
    "build_method": "core.methods.base",
    "ema_update": "core.methods.base",
    "momentum_copy": "core.methods.base",
}


__getattr__ = lazy_attributes("core.methods", _LAZY)

__all__ = [
    "METHODS",
    "Method",
    "MethodConfig",
    "MethodEntry",
    "build_method",
    "ema_update",
    "method_config_class",
    "momentum_copy",
    "parse_method",
    "register_method",
    "unregister_method",
]
