"""Per-trial overhead of the sweep machinery, and (``--full``) the quick 72-trial matrix.

Overhead = (wall time of a Tune run of N trials, one at a time) / N - (time of the same
trials' loops called directly in this process, the reference, measured in the same run).
It covers scheduling, actor start or reuse, imports, reporting and checkpoint persistence:
everything the sweep adds to the training loop. Measured for the in-process path (single
worker trials) and for the ``TorchTrainer`` path (forced, to see its start/stop cost).

    python bench/sweep.py            # overheads, a couple of minutes
    python bench/sweep.py --full     # + the quick preset's full matrix (about 20 minutes)

The last line is one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLARLAB_DATA", str(Path(__file__).resolve().parents[2] / "shared/datasets"))

from core.sweep import SweepRequest, init_ray, prepare_grid, run_sweep  # noqa: E402
from core.tracking import RunIdentity  # noqa: E402
from core.train import CallbackContext, run_loop  # noqa: E402

# Cheap augmentations: the loop time stays small next to the overhead. The in-process path
# runs a 3x3 matrix so that the one actor start of a sweep (trial actors are reused) is
# shared by 9 trials, as it is by 72 in the real matrix; the TorchTrainer path starts a
# worker group per trial anyway, and 2x2 keeps its measurement short.
CODES = {"in_process": ["FD", "TM", "TS"], "torch_trainer": ["FD", "TM"]}


def tiny_overrides(cache_dir: Path) -> dict[str, object]:
    """One short epoch with evaluation: small enough that overhead is visible."""
    return {
        "data.cache_dir": str(cache_dir),
        "data.max_clips": 200,
        "data.sample_rate": 8000,
        "model.width": 8,
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.max_steps_per_epoch": 2,
        "train.eval_epochs": 2,
    }


def reference_seconds(request: SweepRequest) -> float:
    """The same trials' loops called directly here (warm imports, no Ray)."""
    import torch

    torch.set_num_threads(1)  # as a 1-CPU trial does
    configs = [trial.config for trial in prepare_grid(request).trials]
    identity = RunIdentity(tracking_uri=request.tracking_uri, results_dir=request.results_dir)
    run_loop(configs[0], CallbackContext(), identity)  # warm-up: cache, imports, MLflow store
    started = time.perf_counter()
    for config in configs:
        run_loop(config, CallbackContext(), identity)
    return time.perf_counter() - started


_FRESH_VALIDATION = """
import sys, time
started = time.perf_counter()
from core.sweep.design import expand_trials
from core.sweep.grid import load_grid
imported = time.perf_counter()
trials = expand_trials(load_grid("aug_matrix"), preset="quick")
done = time.perf_counter()
assert len(trials) == 72 and "torch" not in sys.modules
print(imported - started, done - imported)
"""
_FRESH_TORCH = """
import time
started = time.perf_counter()
import torch, torchaudio, nnAudio.features
print(time.perf_counter() - started)
"""


def validation_figures() -> dict[str, float]:
    """How long the driver takes to validate the 72-trial quick matrix, in a fresh process
    (imports included, as a user's first command pays them), against what loading torch,
    torchaudio and nnAudio alone costs (validation used to import them)."""
    import subprocess

    def fresh(code: str) -> list[float]:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        return [float(value) for value in out.stdout.split()]

    imports, expand = min((fresh(_FRESH_VALIDATION) for _ in range(3)), key=sum)
    torch_stack = min(fresh(_FRESH_TORCH)[0] for _ in range(3))
    print("\nvalidating the 72-trial quick matrix on the driver (fresh process, best of 3)")
    print(f"  imports (pydantic, YAML, registries; no torch): {imports:.2f} s")
    print(f"  expand + validate 72 configs:                   {expand * 1000:.1f} ms")
    print(f"  reference: import torch + torchaudio + nnAudio:  {torch_stack:.2f} s")
    return {
        "grid72_validate_ms": round(expand * 1000, 1),
        "grid72_validate_with_imports_s": round(imports + expand, 2),
        "torch_stack_import_s": round(torch_stack, 2),
    }


def _busy_cpu_seconds() -> float:
    """CPU time all processes of this machine have used so far (Linux /proc/stat)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _no_op(config: dict[str, object]) -> None:
    """The emptiest training function: what remains of a fit is Ray Train's own cost."""


def bare_torch_trainer(storage: Path, runs: int = 3) -> tuple[float, float]:
    """Median wall seconds and machine CPU seconds of ``TorchTrainer.fit`` on a no-op
    function (1 worker, gloo), with the trial environment's settings.

    The floor under the TorchTrainer path's overhead: each fit starts fresh processes
    (controller, worker, synchronisation actor, placement-group cleaner, dataset manager)
    that each import Ray, so on a small machine it is CPU-bound.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from core.sweep import trial_environment

    os.environ.update(trial_environment())
    walls, cpus = [], []
    for run in range(runs + 1):  # the first run warms the cluster up
        cpu, started = _busy_cpu_seconds(), time.perf_counter()
        TorchTrainer(
            _no_op,
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"bare-{run}", storage_path=str(storage)),
        ).fit()
        if run:
            walls.append(time.perf_counter() - started)
            cpus.append(_busy_cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def sweep_seconds(request: SweepRequest) -> tuple[float, int]:
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        outcome = run_sweep(request, stream=quiet)
    finished = sum(record.status == "FINISHED" for record in outcome.records)
    return float(outcome.fit_seconds or 0.0), finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also run the full quick matrix")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument(
        "--skip-overhead", action="store_true", help="with --full: only the full matrix"
    )
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="clarlab-bench-sweep-"))
    cache = work / "cache"
    figures: dict[str, float] = validation_figures()
    init_ray(num_cpus=args.num_cpus)
    rows: list[tuple[str, float, float, float]] = []

    def request(name: str, codes: list[str], **extra: object) -> SweepRequest:
        return SweepRequest(
            preset="quick",
            overrides=tiny_overrides(cache),
            axis_values={"augment.pipeline": codes, "frontend.name": ["stft3"]},
            max_concurrent=1,
            controls=False,  # trials per sweep are counted; controls would add two
            results_dir=work / "results",
            tracking_uri=f"sqlite:///{work}/mlflow.db",
            run_name=name,
            **extra,
        )

    paths = [
        ("in-process (1 worker)", "trial_overhead_s", CODES["in_process"], {}),
        (
            "TorchTrainer (1 worker, forced)",
            "torch_trainer_overhead_s",
            CODES["torch_trainer"],
            {"force_torch_trainer": True},
        ),
    ]
    if args.full and args.skip_overhead:
        paths = []
    for label, key, codes, extra in paths:
        trials = len(codes) ** 2
        reference = reference_seconds(request(f"reference-{key}", codes))
        sweep_seconds(request(f"warm-{key}", codes, **extra))  # warm: cache, store, images
        wall, finished = sweep_seconds(request(key, codes, **extra))
        if finished != trials:
            raise SystemExit(f"{label}: only {finished}/{trials} trials finished")
        overhead = (wall - reference) / trials
        figures[key] = round(overhead, 2)
        rows.append((label, trials, wall / trials, reference / trials, overhead))

    if rows:
        bare_wall, bare_cpu = bare_torch_trainer(work / "bare")
        figures["bare_torch_trainer_fit_s"] = round(bare_wall, 2)
        figures["bare_torch_trainer_cpu_s"] = round(bare_cpu, 2)
        print("\nper-trial wall time, trials one at a time, warm local Ray")
        print(
            f"{'path':<34}{'trials':>7}{'sweep s/trial':>14}{'direct s/trial':>16}"
            f"{'overhead s':>12}"
        )
        for label, trials, per_trial, direct, overhead in rows:
            print(f"{label:<34}{trials:>7}{per_trial:>14.2f}{direct:>16.2f}{overhead:>12.2f}")
        print("targets: overhead <= 2 s (in-process), <= 10 s (TorchTrainer)")
        print(
            f"a bare TorchTrainer.fit of a no-op function: {bare_wall:.2f} s wall, "
            f"{bare_cpu:.1f} CPU-seconds over the machine's {os.cpu_count()} cores"
        )

    if args.full:
        outcome = run_sweep(
            SweepRequest(
                preset="quick",
                results_dir=work / "results",
                tracking_uri=f"sqlite:///{work}/mlflow.db",
                run_name="full",
                num_cpus=args.num_cpus,
                overrides={"data.cache_dir": str(cache)},
                progress_every_s=120,
            )
        )
        minutes = (outcome.fit_seconds or 0.0) / 60
        best = outcome.report.matrices["stft3"].best if outcome.report else None
        figures["quick_matrix_minutes"] = round(minutes, 2)
        figures["best_stft3_top1"] = round(best[2], 4) if best else float("nan")
        print(
            f"\nquick matrix: {len(outcome.records)} trials in {minutes:.1f} min (target 20); "
            f"failed: {len(outcome.failed)}"
        )
        if best:
            print(f"best stft3 pair: {best[0]} > {best[1]}  top-1 {best[2]:.4f}")
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
