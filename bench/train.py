"""Throughput of the full training step on this machine, 1D vs 2D, at the quick preset.

The step is what every trial repeats: cache read -> two augmented views -> front end ->
encoder + heads -> SimCLR loss -> backward -> optimizer step. The loop itself measures the
time spent waiting for data and in augmentation + front end, so the shares printed here
are those of the real loop, not of a re-implementation. Targets (CPU): augmentation +
front end under 20 % of the step, data wait under 5 %.

Usage: python bench/train.py [--steps 12] [--batch 64] [--width 16] [--gpu]
Last line: one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import preset  # noqa: E402
from core.tracking import RunIdentity  # noqa: E402
from core.train import CallbackContext, run_loop  # noqa: E402


def measure(frontend: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Run 2 epochs of ``args.steps`` steps and keep the second (warm) epoch's figures."""
    encoder = "resnet18_1d" if frontend == "raw1d" else "resnet18"
    results = Path(tempfile.mkdtemp(prefix="clarlab-bench-train-"))
    cfg = preset(
        "quick",
        {
            "data": {"dataset": "fsdd"},
            "augment": {"pipeline": ["FD", "TM"]},
            "frontend": {"name": frontend},
            "model": {"encoder": encoder, "width": args.width},
            "method": {"name": "simclr"},
            "train": {
                "epochs": 2,
                "batch_size": args.batch,
                "max_steps_per_epoch": args.steps,
                "eval_every": 1000,
                "eval_epochs": 1,
                "use_gpu": device.type == "cuda",
                "amp": "auto" if device.type == "cuda" else "off",
            },
        },
    )
    identity = RunIdentity(results_dir=results, experiment="bench-train")
    reports: list[dict[str, float]] = []
    context = CallbackContext(lambda metrics, _: reports.append(metrics), device=device)
    run_loop(cfg, context, identity)
    warm = reports[-1]
    return {
        "samples_per_s": warm["samples_per_s"],
        "aug_frontend_share": warm["augment_frontend_share"],
        "data_wait_share": warm["data_wait_share"],
        "step_ms": 1000 * warm["epoch_seconds"] / max(warm["steps"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per epoch")
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--width", type=int, default=16, help="ResNet base width")
    parser.add_argument("--gpu", action="store_true", help="also measure on CUDA (AMP on)")
    args = parser.parse_args()

    devices = [torch.device("cpu")]
    if args.gpu and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = {}
    for device in devices:
        for frontend in ("raw1d", "stft3"):
            rows[(device.type, frontend)] = measure(frontend, args, device)

    print(f"training step, batch {args.batch}, ResNet18 width {args.width}, FD -> TM, SimCLR")
    print(
        f"{'device':<6} {'front end':<9} {'samples/s':>10} {'step ms':>8} "
        f"{'aug+fe share':>13} {'data wait':>10}"
    )
    for (device, frontend), row in rows.items():
        print(
            f"{device:<6} {frontend:<9} {row['samples_per_s']:10.1f} {row['step_ms']:8.1f} "
            f"{row['aug_frontend_share']:13.1%} {row['data_wait_share']:10.2%}"
        )
    cpu_raw, cpu_stft = rows[("cpu", "raw1d")], rows[("cpu", "stft3")]
    headline = {
        "samples_per_s_raw1d": round(cpu_raw["samples_per_s"], 1),
        "samples_per_s_stft3": round(cpu_stft["samples_per_s"], 1),
        "aug_frontend_share": round(
            max(cpu_raw["aug_frontend_share"], cpu_stft["aug_frontend_share"]), 4
        ),
        "data_wait_share": round(max(cpu_raw["data_wait_share"], cpu_stft["data_wait_share"]), 4),
    }
    for (device, frontend), row in rows.items():
        if device == "cuda":
            headline[f"gpu_samples_per_s_{frontend}"] = round(row["samples_per_s"], 1)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
