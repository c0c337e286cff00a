"""Throughput of the full training step on this machine: 1D vs 2D, and fp32 vs the default.

The step is what every trial repeats: cache read -> two augmented views -> front end ->
encoder + heads -> loss -> backward -> optimizer step, timed by the loop itself (its
data-wait and augmentation + front-end shares are those of the real loop). Two parts:

  1. the quick preset's SimCLR step, raw1d against stft3, under the default precision and
     memory format (targets on CPU: augmentation + front end under 20 % of the step, data
     wait under 5 %);
  2. the laptop preset's SimCLR step and its supervised step (ResNet18 width 16, stft3 at
     8 kHz, batch 64) in fp32 and contiguous memory against the default (``train.amp=auto``,
     ``train.memory_format=auto``: bf16 autocast and channels-last on a CPU with native
     bf16), measured alternately, ``--repeats`` times each, median kept: the speed-up is a
     ratio of two figures taken in the same minutes, so machine load moves both.

Usage: python bench/train.py [--steps 12] [--repeats 3] [--threads N] [--gpu]
Last line: one JSON object of the headline figures, ``cpu_bf16_native`` and
``laptop_step_speedup`` (fp32 ms / default ms, SimCLR step) among them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import preset  # noqa: E402
from core.tracking import RunIdentity  # noqa: E402
from core.train import CallbackContext, run_loop, set_up  # noqa: E402
from core.train.epoch import train_step  # noqa: E402
from core.train.precision import cpu_bf16_native  # noqa: E402

FP32 = {"amp": "off", "memory_format": "contiguous"}
DEFAULT = {"amp": "auto", "memory_format": "auto"}


def measure(
    preset_name: str, overrides: dict[str, Any], steps: int, device: torch.device
) -> dict[str, float]:
    """Run 2 epochs of ``steps`` steps and keep the second (warm) epoch's figures."""
    results = Path(tempfile.mkdtemp(prefix="clarlab-bench-train-"))
    train = {
        "epochs": 2,
        "max_steps_per_epoch": steps,
        "eval_every": 1000,
        "eval_epochs": 1,
        "final_figures": False,
        "use_gpu": device.type == "cuda",
        **overrides.pop("train", {}),
    }
    cfg = preset(preset_name, {"data": {"dataset": "fsdd"}, **overrides, "train": train})
    identity = RunIdentity(results_dir=results, experiment="bench-train")
    reports: list[dict[str, float]] = []
    context = CallbackContext(lambda metrics, _: reports.append(metrics), device=device)
    run_loop(cfg, context, identity)
    warm = [report for report in reports if "epoch_seconds" in report][-1]
    return {
        "samples_per_s": warm["samples_per_s"],
        "aug_frontend_share": warm["augment_frontend_share"],
        "data_wait_share": warm["data_wait_share"],
        "step_ms": 1000 * warm["epoch_seconds"] / max(warm["steps"], 1),
    }


def quick_step(frontend: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Part 1: the quick preset's SimCLR step on one front end, default precision."""
    encoder = "resnet18_1d" if frontend == "raw1d" else "resnet18"
    overrides = {
        "augment": {"pipeline": ["FD", "TM"]},
        "frontend": {"name": frontend},
        "model": {"encoder": encoder, "width": 16},
        "method": {"name": "simclr"},
        "train": {"batch_size": 64},
    }
    return measure("quick", overrides, args.steps, device)


def laptop_overrides(method: str, precision: dict[str, str]) -> dict[str, Any]:
    """Part 2's trial: the laptop preset's SimCLR (or supervised) step on FD > TM, stft3."""
    return {
        "augment": {"pipeline": ["FD", "TM"]},
        "frontend": {"name": "stft3"},
        "model": {"encoder": "resnet18"},
        "method": {"name": method},
        "train": dict(precision),
    }


def laptop_step(method: str, precision: dict[str, str], steps: int) -> float:
    """Part 2: ms per step of the laptop preset's whole loop step on the CPU."""
    return measure("laptop", laptop_overrides(method, precision), steps, torch.device("cpu"))[
        "step_ms"
    ]


def model_step_ms(method: str, precision: dict[str, str], steps: int) -> float:
    """Part 2's model step alone: the loop's own ``train_step`` (forward under the trial's
    autocast, loss, backward, Adam) on one batch of views made once, in the trial's
    memory format; the median of ``steps`` steps after 3 warm-up steps."""
    overrides = laptop_overrides(method, {**precision, "max_steps_per_epoch": steps})
    cfg = preset("laptop", {"data": {"dataset": "fsdd"}, **overrides})
    trial = set_up(cfg, CallbackContext(device=torch.device("cpu")))
    rows = np.sort(trial.data.split.train[: cfg.train.batch_size])
    waves = trial.data.cache.batch(rows)
    labels = torch.from_numpy(trial.data.cache.labels[rows])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        views = [
            trial.spec_augment(trial.frontend(trial.signal_augment(waves, generator)), generator)
            for _ in range(type(cfg.method).views)
        ]
    views = [view.contiguous(memory_format=trial.memory_format) for view in views]
    trial.model.train()
    seconds = []
    for step in range(steps + 3):
        started = time.perf_counter()
        train_step(trial, views, labels, 0, step)
        seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds[3:])


def laptop_comparison(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median ms per step, fp32 and default alternating, for SimCLR and supervised: the
    whole loop step and the model step alone."""
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.repeats):
        for method in ("simclr", "supervised"):
            for name, precision in (("fp32", FP32), ("default", DEFAULT)):
                loop_ms = laptop_step(method, precision, args.steps)
                times.setdefault((method, "loop", name), []).append(loop_ms)
                model_ms = model_step_ms(method, precision, args.steps)
                times.setdefault((method, "model", name), []).append(model_ms)
    return {
        f"{method}_{part}": {
            name: statistics.median(times[(method, part, name)]) for name in ("fp32", "default")
        }
        for method in ("simclr", "supervised")
        for part in ("model", "loop")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of fp32/default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--gpu", action="store_true", help="also measure part 1 on CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    native = cpu_bf16_native()
    print(
        f"CPU: native bf16 (AMX or AVX512-BF16): {'yes' if native else 'no'}; "
        f"{torch.get_num_threads()} torch threads; default precision on this CPU: "
        f"{'bf16 autocast' if native else 'fp32'}, 2D encoders channels-last"
    )
    devices = [torch.device("cpu")]
    if args.gpu and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = {
        (device.type, frontend): quick_step(frontend, args, device)
        for device in devices
        for frontend in ("raw1d", "stft3")
    }
    print("\n1. quick preset, SimCLR, batch 64, ResNet18 width 16, FD -> TM, default precision")
    print(
        f"{'device':<6} {'front end':<9} {'samples/s':>10} {'step ms':>8} "
        f"{'aug+fe share':>13} {'data wait':>10}"
    )
    for (device, frontend), row in rows.items():
        print(
            f"{device:<6} {frontend:<9} {row['samples_per_s']:10.1f} {row['step_ms']:8.1f} "
            f"{row['aug_frontend_share']:13.1%} {row['data_wait_share']:10.2%}"
        )

    laptop = laptop_comparison(args)
    print(
        f"\n2. laptop preset step on the CPU (stft3 at 8 kHz, batch 64, FD -> TM), median of "
        f"{args.repeats}, fp32 and default measured alternately"
    )
    print(
        "model: the encoder's forward, backward and Adam on ready views; loop: the whole "
        "step (cache read, both views, front end, then the model step)"
    )
    print(f"{'step':<17} {'fp32 ms':>8} {'default ms':>11} {'speed-up':>9}")
    for name, row in laptop.items():
        print(
            f"{name:<17} {row['fp32']:8.1f} {row['default']:11.1f} "
            f"{row['fp32'] / row['default']:8.2f}x"
        )

    cpu_raw, cpu_stft = rows[("cpu", "raw1d")], rows[("cpu", "stft3")]
    headline: dict[str, Any] = {
        "samples_per_s_raw1d": round(cpu_raw["samples_per_s"], 1),
        "samples_per_s_stft3": round(cpu_stft["samples_per_s"], 1),
        "aug_frontend_share": round(
            max(cpu_raw["aug_frontend_share"], cpu_stft["aug_frontend_share"]), 4
        ),
        "data_wait_share": round(max(cpu_raw["data_wait_share"], cpu_stft["data_wait_share"]), 4),
        "cpu_bf16_native": native,
    }

    def speedup(name: str) -> float:
        return round(laptop[name]["fp32"] / laptop[name]["default"], 2)

    # The SimCLR step as issue 20 timed it (forward + backward + Adam), then the whole
    # loop step around it, then the supervised step's.
    headline["laptop_step_ms_fp32"] = round(laptop["simclr_model"]["fp32"], 1)
    headline["laptop_step_ms_default"] = round(laptop["simclr_model"]["default"], 1)
    headline["laptop_step_speedup"] = speedup("simclr_model")
    headline["laptop_loop_step_ms_fp32"] = round(laptop["simclr_loop"]["fp32"], 1)
    headline["laptop_loop_step_ms_default"] = round(laptop["simclr_loop"]["default"], 1)
    headline["laptop_loop_step_speedup"] = speedup("simclr_loop")
    headline["laptop_supervised_step_speedup"] = speedup("supervised_model")
    headline["laptop_supervised_loop_step_speedup"] = speedup("supervised_loop")
    for (device, frontend), row in rows.items():
        if device == "cuda":
            headline[f"gpu_samples_per_s_{frontend}"] = round(row["samples_per_s"], 1)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
