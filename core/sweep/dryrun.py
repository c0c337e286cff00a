"""What ``--dry-run`` prints: one line per trial with the settings that tell trials apart
and the split sizes its data would give, the resources, and with ``--show-config`` every
trial's resolved config as the YAML it would log to MLflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from core.sweep.preflight import SplitSizes
from core.sweep.resources import ResourceError, Resources, replan
from core.sweep.space import SearchSpace, Trial

if TYPE_CHECKING:
    from core.sweep.driver import SweepRequest

_COLUMNS = (
    ("#", 3, ">"),
    ("trial", 20, "<"),
    ("augment", 10, "<"),
    ("front end", 9, "<"),
    ("encoder", 12, "<"),
    ("method", 12, "<"),
    ("tau", 5, ">"),
    ("dataset", 18, "<"),
    ("rate", 6, ">"),
    ("train/val/test", 14, ">"),
    ("batch", 5, ">"),
    ("epochs", 6, ">"),
    ("workers", 7, ">"),
    ("per trial", 12, ">"),
)


def _row(values: Sequence[Any]) -> str:
    return " ".join(
        f"{str(value):{align}{width}}"
        for value, (_, width, align) in zip(values, _COLUMNS, strict=True)
    )


def trial_table(
    trials: Sequence[Trial], split_sizes: Mapping[str, SplitSizes], resources: Resources
) -> str:
    """The dry-run listing; every cell is one word so the table splits on white space."""
    per_trial = ",".join(
        f"{amount:g}{kind}" for kind, amount in resources.per_trial.items() if amount
    )
    header = _row([name for name, _, _ in _COLUMNS])
    lines = [header, "-" * len(header)]
    for number, trial in enumerate(trials, 1):
        cfg = trial.config
        augment = ">".join(cfg.augment.pipeline) or "(none)"
        if cfg.augment.spec_pipeline:
            augment += "|" + ">".join(cfg.augment.spec_pipeline)
        tau = cfg.method.temperature_shown
        sizes = split_sizes.get(trial.trial_id)
        lines.append(
            _row(
                [
                    number,
                    trial.trial_id,
                    augment,
                    cfg.frontend.name,
                    cfg.model.encoder,
                    cfg.method.name,
                    "-" if tau is None else f"{tau:g}",
                    cfg.data.dataset,
                    cfg.data.sample_rate,
                    sizes.describe() if sizes else "?",
                    cfg.train.batch_size,
                    cfg.train.epochs,
                    cfg.train.num_workers,
                    per_trial or "-",
                ]
            )
        )
    return "\n".join(lines)


def print_dry_run(
    request: SweepRequest,
    space: SearchSpace,
    trials: Sequence[Trial],
    resources: Resources,
    split_sizes: Mapping[str, SplitSizes],
    here: Mapping[str, float],
    stream: TextIO,
) -> None:
    """The table, the trial count, the resources and whether this machine can run them."""
    if request.show_config:
        for trial in trials:
            print(f"# --- trial {trial.trial_id}", file=stream)
            print(trial.config.to_yaml(), file=stream)
    print(trial_table(trials, split_sizes, resources), file=stream)
    print(f"\n{len(trials)} trials from {space.source} (preset {request.preset})", file=stream)
    print("train/val/test: clips per split, from the dataset's listing", file=stream)
    try:
        resources = replan(resources, None if request.address else here)
        print(f"resources: {resources.describe()}", file=stream)
    except ResourceError as error:
        print(f"resources: {resources.describe()}", file=stream)
        print(
            f"note: not runnable on this machine ({here['CPU']:g} CPU, {here['GPU']:g} GPU): "
            f"{error}",
            file=stream,
        )
