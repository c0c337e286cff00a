"""What a grid's ``--dry-run`` prints: one line per trial with the settings that tell
trials apart and the split sizes its data would give, the cost, the resources, and with
``--show-config`` every trial's resolved config as the YAML it would log to MLflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from core.sweep.preflight import SplitSizes
from core.sweep.request import SweepRequest
from core.sweep.resources import ResourceError, Resources, replan
from core.sweep.trials import Trial

_COLUMNS = (
    ("#", 3, ">"),
    ("trial", 26, "<"),
    ("augment", 10, "<"),
    ("front end", 9, "<"),
    ("encoder", 12, "<"),
    ("method", 12, "<"),
    ("tau", 5, ">"),
    ("dataset", 21, "<"),
    ("classes", 7, ">"),
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


def _known_classes(data: Any) -> int | None:
    """The classes a dataset's definition fixes (QUACLRS's 13), for a trial whose data is
    not scanned (to be downloaded, or missing)."""
    from core.data import DatasetError, get_spec

    try:
        return get_spec(data.dataset).num_classes(data.label_field)
    except DatasetError:
        return None


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
        # What each view gets: the random base (in parentheses), then the pipeline.
        base = cfg.augment.resolved_view_base(type(cfg.method).views)
        codes = [f"({'>'.join(base)})"] if base else []
        augment = ">".join([*codes, *cfg.augment.pipeline]) or "(none)"
        if cfg.augment.spec_pipeline:
            augment += "|" + ">".join(cfg.augment.spec_pipeline)
        tau = cfg.method.temperature_shown
        sizes = split_sizes.get(trial.trial_id)
        classes = sizes.classes if sizes and sizes.classes else _known_classes(cfg.data)
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
                    classes or "?",
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


# Training clips per second per worker (both views of each clip through the encoder), by
# device, encoder kind and the precision the trial trains in on this CPU (train.amp=auto:
# bf16 where the CPU does bf16 natively, core.train.precision). CPU: one core of a 2-core
# laptop, two trials at a time, ResNet18 width 16 on FSDD at 8 kHz, batch 64. stft3 in
# bf16 and channels-last: the laptop matrix's full run, median plain epoch 8.9 s per
# 2,688 clips over its 27 cells without PS or TST (bench/fidelity.py's FD+TM alone: 7.65
# s); in fp32, bench/fidelity.py's 10.1 s. raw1d in fp32 from bench/train.py's 1D/2D
# ratio, in bf16 that times the 1.88x its laptop step gained at one thread, 25.0 -> 47.2
# clips/s. Wider encoders and longer clips are slower.
# GPU: not measured on this project's machines (bench/gpu.py measures yours); 1,000 is a
# placeholder of the right order for a width-64 ResNet18 with AMP, shown as an assumption.
MEASURED_CLIPS_PER_S = {
    ("cpu", "2d", "fp32"): 266.0,
    ("cpu", "2d", "bf16"): 302.0,
    ("cpu", "1d", "fp32"): 33.0,
    ("cpu", "1d", "bf16"): 62.0,
}
ASSUMED_GPU_CLIPS_PER_S = 1000.0
# What a CPU trial spends beside its training steps, measured in the laptop matrix's full
# run (run_aug_matrix.py --preset laptop --frontends stft3, fifo; one core a trial, bf16):
# an evaluation epoch took 3.2 s longer than a plain one for FSDD's 300 test, 2,700
# training clips (1.06 ms a clip: features of every clip, then the head), and a cell with
# PS or TST in its views 2.6 s longer per 2,688-clip epoch for each (two views of 1 s at
# 8 kHz: 61 ns a sample through the phase vocoder, which runs in fp32, core.vocoder).
EVAL_SECONDS_PER_CLIP = 1.06e-3
VOCODER_SECONDS_PER_SAMPLE = 61e-9
VOCODER_CODES = frozenset({"PS", "TST", "TST0.8", "TST1.2", "PS+2", "PS-2", "TSTQ", "PSQ"})


def _evaluations(epochs: int, eval_every: int) -> int:
    """Evaluation epochs of a trial: every ``eval_every`` and the last (core.train.loop)."""
    return epochs // eval_every + (epochs % eval_every > 0)


def cost_estimate(
    trials: Sequence[Trial],
    split_sizes: Mapping[str, SplitSizes],
    resources: Resources,
    clips_per_s: float | None = None,
) -> str:
    """Device-hours of the whole sweep and its wall time at the sweep's concurrency:
    training (epochs x training clips, capped by max_steps_per_epoch, / throughput), the
    evaluations and, on a CPU, the PS/TST phase vocoder, times the devices each trial
    holds. A GPU's evaluation and vocoder are not measured here and are left out."""
    import torch  # the driver has it loaded by now; kept out of this module's import

    from core.data import get_spec
    from core.train.precision import PRECISION_NAMES, amp_settings, cpu_bf16_native

    on_gpu = resources.gpus_per_worker > 0
    parts = {"training": 0.0, "evaluation": 0.0, "PS/TST vocoder": 0.0}
    unknown = 0
    for trial in trials:
        cfg, sizes = trial.config, split_sizes.get(trial.trial_id)
        if sizes is None or not sizes.scanned:
            unknown += 1
            continue
        trains = type(cfg.method).trains
        epochs = cfg.train.epochs if trains else 1  # a control: one evaluation, no training
        if not on_gpu:
            clips = sizes.labelled + sizes.val + sizes.test
            evaluations = _evaluations(epochs, cfg.train.eval_every)
            parts["evaluation"] += evaluations * clips * EVAL_SECONDS_PER_CLIP
        if not trains:
            continue
        steps = sizes.train // cfg.train.batch_size
        if cfg.train.max_steps_per_epoch:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        kind = "2d" if cfg.frontend.is_2d else "1d"
        precision = PRECISION_NAMES[amp_settings(cfg.train.amp, torch.device("cpu"))[0]]
        rate = clips_per_s or (
            ASSUMED_GPU_CLIPS_PER_S if on_gpu else MEASURED_CLIPS_PER_S[("cpu", kind, precision)]
        )
        clips = epochs * steps * cfg.train.batch_size / cfg.train.num_workers
        parts["training"] += clips / rate
        vocoders = sum(code in VOCODER_CODES for code in cfg.augment.pipeline)
        if vocoders and not on_gpu:
            seconds = cfg.data.clip_seconds or get_spec(cfg.data.dataset).clip_seconds
            samples = clips * 2 * seconds * cfg.data.sample_rate  # two views a clip
            parts["PS/TST vocoder"] += vocoders * samples * VOCODER_SECONDS_PER_SAMPLE
    devices = resources.workers_per_trial * (
        resources.gpus_per_worker if on_gpu else resources.cpus_per_worker
    )
    hours = {name: seconds / 3600 * devices for name, seconds in parts.items()}
    total = sum(hours.values())
    unit = "GPU-hours" if on_gpu else "CPU-core-hours"
    if clips_per_s:
        basis = f"at {clips_per_s:g} clips/s per worker (given)"
    elif on_gpu:
        basis = f"at an assumed {ASSUMED_GPU_CLIPS_PER_S:g} clips/s per GPU (not measured here: run bench/gpu.py on your GPU and pass --throughput)"
    else:
        basis = (
            "at the clips/s measured for width 16 at 8 kHz on one laptop core, in the "
            f"precision train.amp gives on this CPU (native bf16: {'yes' if cpu_bf16_native() else 'no'})"
        )
    if unknown == len(trials):
        return f"estimated cost: unknown ({unit}): no trial's dataset could be scanned"
    shown = ", ".join(
        f"{name} {value:,.2f}" for name, value in hours.items() if value or name == "training"
    )
    text = f"estimated cost: {total:,.2f} {unit} ({shown}) {basis}"
    if on_gpu:
        text += "; evaluation not included"
    concurrent = max(1, min(resources.max_concurrent_trials or len(trials), len(trials)))
    wall = total / devices / concurrent
    text += f"; about {wall:,.1f} h of wall time at {concurrent} trial(s) at a time"
    if unknown:
        text += f"; {unknown} trial(s) without a scanned dataset are not counted"
    return text


def precision_summary(trials: Sequence[Trial], resources: Resources) -> str:
    """What ``train.amp`` and ``train.memory_format`` resolve to: on this CPU for CPU
    trials (the probe runs here, as it will in each trial on this machine), by rule for
    GPU trials (their GPU is not here to ask)."""
    import torch

    from core.train.precision import (
        PRECISION_NAMES,
        amp_settings,
        cpu_bf16_native,
        memory_format,
        memory_format_name,
    )

    if resources.gpus_per_worker > 0:
        return (
            "precision: train.amp=auto trains bf16 on a GPU with native bf16 (compute "
            "capability 8+), fp16 with a gradient scaler on older ones; 2D encoders "
            "channels-last (each trial's run tags clarlab.precision, clarlab.memory_format)"
        )
    counts: dict[str, int] = {}
    for trial in trials:
        cfg = trial.config
        precision = PRECISION_NAMES[amp_settings(cfg.train.amp, torch.device("cpu"))[0]]
        key = f"{precision}, {memory_format_name(memory_format(cfg))}"
        counts[key] = counts.get(key, 0) + 1
    native = "does" if cpu_bf16_native() else "does not do"
    shares = "; ".join(f"{n} trial(s) {key}" for key, n in counts.items())
    return f"precision on this CPU, which {native} bf16 natively (AMX or AVX512-BF16): {shares}"


def _fitted_notes(trials: Sequence[Trial], split_sizes: Mapping[str, SplitSizes]) -> list[str]:
    """What the trials will fit to their training split (MoCo's queue), per trial."""
    notes = []
    for trial in trials:
        sizes = split_sizes.get(trial.trial_id)
        if sizes is None or not sizes.scanned:
            continue
        cfg = trial.config
        _, note = cfg.method.fitted_to(sizes.train, cfg.train.batch_size)
        if note:
            notes.append(f"{trial.trial_id}: {note}")
    return notes


def print_grid_dry_run(
    request: SweepRequest,
    source: Any,
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
    for note in dict.fromkeys(_fitted_notes(trials, split_sizes)):
        print(f"note: {note}", file=stream)
    print(f"\n{len(trials)} trials from {source} (preset {request.preset})", file=stream)
    print("train/val/test: clips per split, from the dataset's listing", file=stream)
    print(
        "augment: what each view gets, the random view base (in parentheses) then the "
        "pipeline; supervised training has one view and no base",
        file=stream,
    )
    try:  # the concurrency this machine (or the cluster) gives: the estimate's wall time
        planned, problem = replan(resources, None if request.address else here), None
    except ResourceError as error:
        planned, problem = resources, error
    print(cost_estimate(trials, split_sizes, planned, request.throughput), file=stream)
    print(precision_summary(trials, resources), file=stream)
    print(f"resources: {planned.describe()}", file=stream)
    if problem is not None:
        print(
            f"note: not runnable on this machine ({here['CPU']:g} CPU, {here['GPU']:g} GPU): "
            f"{problem}",
            file=stream,
        )
