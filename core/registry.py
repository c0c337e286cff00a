"""Registries by short name, readable without importing torch.

Search spaces are declarative because every pluggable piece has a short name: ``PS``,
``stft3``, ``resnet18``, ``lars``. The config checks those names when it is validated, and
the sweep driver validates every trial of a grid before Ray starts. If the names lived
only in the modules that implement them, validating a config would import torch,
torchaudio and nnAudio (about two seconds, on a driver that never trains), and each of
those modules imports ``core.config`` back: a hidden import loop.

So each registry here maps a name to where its implementation lives
(``"core.augment_signal:fade"``) and imports it on first use. Adding an augmentation,
front end, encoder or optimizer is one function in its module plus one line here; the
modules that use a registry index it like a dict (``SIGNAL_AUGMENTATIONS["FD"]``). Code
outside the package (a notebook, a test) may register objects directly with
:meth:`LazyRegistry.register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


class LazyRegistry(Mapping[str, Any]):
    """A read-mostly mapping ``name -> implementation`` that imports on first lookup.

    Entries are ``"module:attribute"`` strings or the objects themselves. Iterating,
    ``in`` and :meth:`check` touch names only, never the implementing modules.
    """

    def __init__(self, what: str, entries: Mapping[str, Any]) -> None:
        self.what = what  # "augmentation code", for error messages
        self._entries: dict[str, Any] = dict(entries)

    def __getitem__(self, name: str) -> Any:
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = getattr(importlib.import_module(module), attribute)
            self._entries[name] = target
        return target

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def check(self, name: str) -> str:
        """``name`` if registered; otherwise a ValueError that lists the valid names."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self.names())}")
        return name

    def register(self, name: str, target: Any, *, replace: bool = False) -> None:
        """Add ``name``; a second registration of a taken name is refused unless ``replace``."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy entry clean up with this)."""
        self._entries.pop(name, None)


# Signal-level augmentations (CLAR 3.4, QUACLRS Table 15): (B, T) -> (B, T), per-clip draws.
SIGNAL_AUGMENTATIONS = LazyRegistry(
    "augmentation code",
    {
        "PS": "core.augment_signal:pitch_shift",
        "FD": "core.augment_signal:fade",
        "WN": "core.augment_signal:white_noise",
        "MN": "core.augment_signal:mixed_noise",
        "TM": "core.augment_signal:time_mask",
        "TS": "core.augment_signal:time_shift",
        "TST": "core.augment_signal:time_stretch",
        "TST0.8": "core.augment_signal:time_stretch_0_8",
        "TST1.2": "core.augment_signal:time_stretch_1_2",
        "PS+2": "core.augment_signal:pitch_shift_up_2",
        "PS-2": "core.augment_signal:pitch_shift_down_2",
        "WN5": "core.augment_signal:white_noise_5db",
        "WN15": "core.augment_signal:white_noise_15db",
        "TSTQ": "core.augment_signal:quaclrs_time_stretch",
        "PSQ": "core.augment_signal:quaclrs_pitch_shift",
        "WNQ": "core.augment_signal:quaclrs_noise",
        "MIX": "core.augment_signal:mixup",
    },
)

# Spectrogram augmentations, applied after a 2D front end: (B, C, F, frames).
# SA0-SA2 / PA0-PA2 are QUACLRS's offline copies (Tables 15/17): fixed draws per clip.
SPEC_AUGMENTATIONS = LazyRegistry(
    "spectrogram augmentation code",
    {
        "SA": "core.augment_spec:spec_augment",
        "PA": "core.augment_spec:patch_augment",
        "SA0": "core.augment_spec:spec_augment_0",
        "SA1": "core.augment_spec:spec_augment_1",
        "SA2": "core.augment_spec:spec_augment_2",
        "PA0": "core.augment_spec:patch_augment_0",
        "PA1": "core.augment_spec:patch_augment_1",
        "PA2": "core.augment_spec:patch_augment_2",
    },
)

# Codes that transform a clip the same way every time they see it (no random draw per
# call). A view made only of these is a function of the clip alone, so the two views of a
# contrastive pair would be bit-identical and the task trivial: such pipelines get the
# random base ``DEFAULT_VIEW_BASE`` per view (``augment.view_base``, core.augment).
# Kept here, without torch, so a config or a dry run can tell which pipelines need it.
DETERMINISTIC_CODES: frozenset[str] = frozenset(
    {"TST0.8", "TST1.2", "PS+2", "PS-2", "SA0", "SA1", "SA2", "PA0", "PA1", "PA2"}
)

# Codes that draw one of a few fixed settings per clip (QUACLRS's 0.8/1.2 stretch, +-2
# semitones): two views of a clip made only of these (and of the codes above) coincide
# often (1 in 4 pairs for TSTQ then PSQ), so they get the random base too.
FEW_SETTINGS_CODES: frozenset[str] = frozenset({"TSTQ", "PSQ"})

# The base each view gets when its ablated codes alone would not tell the views apart:
# circular time shift then fade, both cheap, label-preserving and random per clip.
DEFAULT_VIEW_BASE: tuple[str, ...] = ("TS", "FD")

# Front ends (CLAR 3.1): raw audio for the 1D encoder, time-frequency maps for the 2D ones.
FRONTENDS = LazyRegistry(
    "front end",
    {
        "raw1d": "core.features:build_raw",
        "stft3": "core.features:STFT3",
        "mel": "core.features:LogMel",
    },
)

# Encoders: the two ResNet18s of our own (width multiplier) and torchvision's backbones.
ENCODERS = LazyRegistry(
    "encoder",
    {
        "resnet18_1d": "core.models.backbones:build_resnet18_1d",
        "resnet18": "core.models.backbones:build_resnet18",
        "alexnet": "core.models.backbones:build_alexnet",
        "vgg16": "core.models.backbones:build_vgg16",
        "mobilenet_v2": "core.models.backbones:build_mobilenet_v2",
        "efficientnet_b0": "core.models.backbones:build_efficientnet_b0",
        "convnext_tiny": "core.models.backbones:build_convnext_tiny",
        "inception_v3": "core.models.backbones:build_inception_v3",
    },
)

OPTIMIZERS = LazyRegistry(
    "optimizer",
    {
        "lars": "core.optim:build_lars",
        "sgd": "core.optim:build_sgd",
        "adam": "core.optim:build_adam",
        "adamw": "core.optim:build_adamw",
    },
)
