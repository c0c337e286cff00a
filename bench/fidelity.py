"""The science check of this tool: do the papers' effects show at a laptop budget?

On real FSDD, with several seeds, it measures with 95 % intervals (paired by seed):

  (a) SimCLR with FD+TM against the untrained-encoder control (CLAR Figure 4's premise:
      contrastive training must beat random weights), as a curve over epochs;
  (b) CLAR against supervised at 10 % and 1 % labels (CLAR Table 2), and at 1 % with and
      without labelled clips in every batch (train.labelled_per_batch);
  (c) stft3 against raw1d for SimCLR FD+TM (CLAR Table 1), when asked for (raw1d trains
      about 8x slower on CPU);
  (p) SimCLR FD+TM under the default precision and memory format (bf16 autocast and
      channels-last on a CPU with native bf16) against fp32 and contiguous, same seeds:
      what the speed-up costs in top-1;
  (o) CLAR against supervised at 1 % labels alone (part b's 1 % pair, without the 10 %
      runs), with ``--labelled-per-batch`` labelled clips dealt into every batch (0: the
      paper's random batches): the part to search a laptop setting for CLAR Table 2 with.

Trials run as plain processes (no Ray), two at a time, each on one CPU thread, with the
budget printed first. The last line is one JSON object of the headline figures: mean
differences in top-1 points with ``*_ci`` half-widths, and ``minutes``.

    python bench/fidelity.py                      # the laptop budget, parts a and b
    python bench/fidelity.py --parts a --epochs 30 --eval-every 5   # the curve only
    python bench/fidelity.py --parts ap                              # a, and fp32 against it
    python bench/fidelity.py --parts o --seeds 5 --labelled-per-batch 16 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLARLAB_DATA", str(ROOT.parent / "shared/datasets"))

from core.dotted import deep_merge  # noqa: E402
from core.stats import CellScores, compare, decode_correct  # noqa: E402


@dataclass(frozen=True)
class Run:
    """One trial of the bench: a name, the config overrides, a seed."""

    name: str
    overrides: dict[str, Any]
    seed: int


def budget_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The laptop budget under test, as nested overrides of the laptop preset."""
    return {
        "data": {"dataset": "fsdd", "sample_rate": args.sample_rate, "max_clips": args.clips},
        "model": {"width": args.width},
        "optim": {"name": "adam", "lr": args.lr, "weight_decay": 1e-6, "warmup_epochs": 0},
        "train": {
            "epochs": args.epochs,
            "batch_size": args.batch,
            "eval_every": args.eval_every or args.epochs,
            "max_steps_per_epoch": None,
        },
    }


def run_one(job: tuple[Run, dict[str, Any], str]) -> dict[str, Any]:
    """Train one run in this (fresh) process; its per-evaluation top-1 and correctness."""
    run, budget, store = job
    import torch

    torch.set_num_threads(1)
    from core.config import preset
    from core.tracking import RunIdentity
    from core.train import train

    overrides = deep_merge(deep_merge(budget, run.overrides), {"train": {"seed": run.seed}})
    cfg = preset("laptop", overrides)
    evaluations: dict[int, tuple[float, str]] = {}
    epoch_seconds: list[float] = []

    def collect(metrics: dict[str, Any], _checkpoint: Path | None) -> None:
        if "epoch_seconds" in metrics:
            epoch_seconds.append(float(metrics["epoch_seconds"]))
        if "test_top1" in metrics and "test_correct" in metrics:
            evaluations[int(metrics["epoch"]) + 1] = (metrics["test_top1"], metrics["test_correct"])

    started = time.perf_counter()
    identity = RunIdentity(
        tracking_uri=store, experiment="bench-fidelity", run_name=f"{run.name}-s{run.seed}"
    )
    train(cfg, report_fn=collect, identity=identity)
    return {
        "name": run.name,
        "seed": run.seed,
        "evaluations": evaluations,
        "seconds": time.perf_counter() - started,
        "epoch_seconds": sum(epoch_seconds) / max(len(epoch_seconds), 1),
    }


FP32 = {"train": {"amp": "off", "memory_format": "contiguous"}}


def one_percent_names(labelled_per_batch: int) -> tuple[str, str]:
    """Part o's CLAR and supervised run names (those of part b's 1 % pair they repeat)."""
    suffix = "_stratified" if labelled_per_batch else ""
    return f"clar_1{suffix}", f"supervised_1{suffix}"


def plan(parts: str, seeds: Sequence[int], labelled_per_batch: int) -> list[Run]:
    runs: list[Run] = []
    fd_tm = {"augment": {"pipeline": ["FD", "TM"]}}
    simclr = Run("simclr_fd_tm", {**fd_tm, "method": {"name": "simclr"}}, 0)
    for seed in seeds:
        if "a" in parts or "c" in parts or "p" in parts:
            runs.append(Run(simclr.name, simclr.overrides, seed))
        if "a" in parts:
            runs.append(Run("untrained", {"method": {"name": "untrained"}}, seed))
        if "p" in parts:
            runs.append(Run("simclr_fd_tm_fp32", deep_merge(simclr.overrides, FP32), seed))
        if "o" in parts and "b" not in parts:
            batches = {"train": {"labelled_per_batch": labelled_per_batch or None}}
            labels = {"data": {"label_fraction": 0.01}, **batches}
            clar, supervised = one_percent_names(labelled_per_batch)
            for name, method in ((clar, "clar"), (supervised, "supervised")):
                runs.append(Run(name, {**fd_tm, **labels, "method": {"name": method}}, seed))
        if "b" in parts:
            for fraction, tag in ((0.1, "10"), (0.01, "1")):
                labels = {"data": {"label_fraction": fraction}}
                runs.append(
                    Run(f"clar_{tag}", {**fd_tm, **labels, "method": {"name": "clar"}}, seed)
                )
                runs.append(
                    Run(
                        f"supervised_{tag}",
                        {**fd_tm, **labels, "method": {"name": "supervised"}},
                        seed,
                    )
                )
            stratified = {
                "data": {"label_fraction": 0.01},
                "train": {"labelled_per_batch": labelled_per_batch},
            }
            runs.append(
                Run("clar_1_stratified", {**fd_tm, **stratified, "method": {"name": "clar"}}, seed)
            )
            runs.append(
                Run(
                    "supervised_1_stratified",
                    {**fd_tm, **stratified, "method": {"name": "supervised"}},
                    seed,
                )
            )
        if "c" in parts:
            raw = {"frontend": {"name": "raw1d"}, "model": {"encoder": "resnet18_1d"}}
            runs.append(
                Run("simclr_fd_tm_raw1d", {**fd_tm, **raw, "method": {"name": "simclr"}}, seed)
            )
    # Longest first, so that two workers finish together.
    return sorted(runs, key=lambda run: run.name == "untrained")


def scores(results: list[dict[str, Any]], name: str, epoch: int | None = None) -> CellScores:
    """A run's per-seed top-1 at ``epoch`` (default: its last evaluation)."""
    by_seed, correct = {}, None
    for result in results:
        if result["name"] != name:
            continue
        evaluations = result["evaluations"]
        at = epoch if epoch in evaluations else max(evaluations)
        by_seed[result["seed"]] = evaluations[at][0]
        correct = decode_correct(evaluations[at][1])
    return CellScores(by_seed, correct if len(by_seed) == 1 else None)


def difference(
    results: list[dict[str, Any]], a: str, b: str, epoch: int | None = None
) -> tuple[float, float, float]:
    """(mean difference in points, 95 % half-width in points, p) of a - b, paired by seed."""
    comparison = compare(scores(results, a, epoch), scores(results, b, epoch))
    interval = comparison.difference
    return 100 * interval.mean, 100 * interval.half_width, comparison.p_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ab", help="a, b, c, p and/or o (default: ab)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="default: the laptop preset's")
    parser.add_argument("--eval-every", type=int, default=None, help="default: at the end only")
    parser.add_argument("--clips", type=int, default=None, help="training clips (default: all)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument(
        "--labelled-per-batch",
        type=int,
        default=8,
        help="labelled clips dealt into every batch of part b's stratified pair and of part o "
        "(0 in part o: random batches)",
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from core.config import PRESETS
    from core.train.precision import cpu_bf16_native

    args.epochs = args.epochs or PRESETS["laptop"]["train"]["epochs"]
    budget = budget_overrides(args)
    runs = plan(args.parts, range(args.seeds), args.labelled_per_batch)
    print(
        f"budget: FSDD at {args.sample_rate} Hz, {args.clips or 'all'} training clips, "
        f"ResNet18 width {args.width}, stft3, batch {args.batch}, Adam lr {args.lr:g}, "
        f"{args.epochs} epochs, evaluation every {args.eval_every or args.epochs} epochs; "
        f"default precision {'bf16 autocast' if cpu_bf16_native() else 'fp32'}, stft3 "
        f"channels-last; "
        f"{args.seeds} seeds; {len(runs)} trials, {args.workers} at a time",
        flush=True,
    )
    store = f"sqlite:///{Path(tempfile.mkdtemp(prefix='clarlab-fidelity-')) / 'mlflow.db'}"
    started = time.perf_counter()
    from core.config import preset
    from core.data import open_cache

    open_cache(preset("laptop", budget).data)  # decode once, before the trials share it
    context = multiprocessing.get_context("spawn")
    results = []
    jobs = [(run, budget, store) for run in runs]
    with ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        for future in as_completed([pool.submit(run_one, job) for job in jobs]):
            result = future.result()
            last = max(result["evaluations"])
            print(
                f"  {result['name']:<24} seed {result['seed']}: top-1 "
                f"{result['evaluations'][last][0]:.3f} ({result['seconds'] / 60:.1f} min, "
                f"{result['epoch_seconds']:.1f} s/epoch)",
                flush=True,
            )
            results.append(result)
    minutes = (time.perf_counter() - started) / 60

    figures: dict[str, float] = {}

    def report(key: str, a: str, b: str, epoch: int | None = None) -> None:
        mean, half, p_value = difference(results, a, b, epoch)
        figures[key], figures[f"{key}_ci"] = round(mean, 2), round(half, 2)
        verdict = "beyond noise" if p_value < 0.05 else "within noise"
        print(f"  {key:<34} {mean:+6.1f} +- {half:4.1f} points  (p = {p_value:.3f}, {verdict})")

    print("\nmean over seeds and 95 % interval (t over seeds; differences paired by seed)")
    names = sorted({result["name"] for result in results})
    for name in names:
        print(f"  {name:<24} {scores(results, name).interval().describe()}")
    print()
    if "a" in args.parts:
        epochs = sorted(next(r for r in results if r["name"] == "simclr_fd_tm")["evaluations"])
        print("SimCLR FD+TM minus the untrained control, by epoch:")
        for epoch in epochs:
            report(f"simclr_minus_control_at_{epoch}", "simclr_fd_tm", "untrained", epoch)
        report("simclr_minus_control", "simclr_fd_tm", "untrained")
    if "b" in args.parts:
        report("clar_minus_supervised_10", "clar_10", "supervised_10")
        report("clar_minus_supervised_1", "clar_1", "supervised_1")
        report("clar_minus_supervised_1_stratified", "clar_1_stratified", "supervised_1_stratified")
        report("clar_1_stratified_minus_random", "clar_1_stratified", "clar_1")
    if "c" in args.parts:
        report("stft3_minus_raw1d", "simclr_fd_tm", "simclr_fd_tm_raw1d")
    if "p" in args.parts:
        report("default_minus_fp32", "simclr_fd_tm", "simclr_fd_tm_fp32")
    if "o" in args.parts and "b" not in args.parts:
        clar, supervised = one_percent_names(args.labelled_per_batch)
        report(f"clar_minus_{supervised}", clar, supervised)
    figures["minutes"] = round(minutes, 1)
    figures["epochs"] = args.epochs
    figures["seeds"] = args.seeds
    figures["labelled_per_batch"] = args.labelled_per_batch
    figures["cpu_bf16_native"] = cpu_bf16_native()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
