"""The named presets: partial configs layered over the code defaults.

``quick`` is a smoke-scale pipeline check (FSDD, ResNet width 16, a few steps); ``laptop``
a budget measured to show the papers' effects on a 2-core machine; ``paper`` is CLAR's
setting for Figure 4. Values that only make sense for one dataset go under
``datasets: {<name>: {...}}``. Plain data, so that a search-space reader can check preset
names without building a config (:func:`core.config.preset` builds one).
"""

from __future__ import annotations

from typing import Any

from core.sections import ConfigError

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
        # 20 epochs: in bench/fidelity.py, SimCLR FD+TM beat the untrained control by
        # 23 +- 15 points after 20 epochs in fp32 at 3 seeds (10 epochs: +14 +- 19, within
        # noise), and by 23 +- 9 under the bf16 default at 5 seeds (10 epochs: +20 +- 7).
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
