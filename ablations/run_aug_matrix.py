"""CLAR Figure 4: SimCLR on every ordered pair of signal augmentations, 1D and 2D.

    python ablations/run_aug_matrix.py --preset quick            # laptop: FSDD, minutes
    python ablations/run_aug_matrix.py --preset paper --address auto   # the paper, on a cluster
    python ablations/run_aug_matrix.py --dry-run                 # list the 72 trials
    python ablations/run_aug_matrix.py --resume                  # continue the last sweep

Every trial is a nested MLflow run under one parent run per invocation; the parent gets the
two heatmaps (raw1d, stft3), their CSVs and the table of all trials. The grid itself is
``search_spaces/aug_matrix.yaml``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from core.config import PRESETS, ConfigError

EXIT_OK, EXIT_BAD_INPUT, EXIT_TRIALS_FAILED, EXIT_INCOMPLETE = 0, 2, 3, 130


def _key_value(text: str) -> tuple[str, Any]:
    """``train.lr=0.1`` -> ("train.lr", 0.1); the value is parsed as YAML (numbers, lists)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. train.seed=1), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _cell_key_value(text: str) -> tuple[str, str, Any]:
    """``stft3-FD-TM:train.seed=1`` -> ("stft3-FD-TM", "train.seed", 1)."""
    trial_id, sep, rest = text.partition(":")
    if not sep or not trial_id:
        raise argparse.ArgumentTypeError(
            f"expected TRIAL_ID:KEY=VALUE (e.g. stft3-FD-TM:train.seed=1), got {text!r}"
        )
    key, value = _key_value(rest)
    return trial_id, key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_aug_matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="scale of every trial: 'quick' (FSDD, ResNet width 16, 1 CPU worker, minutes on "
        "a laptop) or 'paper' (Speech Commands-10, CLAR's 1000 epochs, batch 1024, LARS, "
        "4 GPU workers per trial). Default: quick",
    )
    what.add_argument(
        "--search-space",
        default="aug_matrix",
        help="search-space name in search_spaces/ or a path to a YAML file (default: aug_matrix)",
    )
    what.add_argument("--dataset", help="dataset registry name (default: the preset's)")
    what.add_argument(
        "--data-root", help="dataset folder (default: $CLARLAB_DATA/<dataset>)", type=Path
    )
    what.add_argument(
        "--augs",
        nargs="+",
        metavar="CODE",
        help="matrix of these augmentation codes only (e.g. --augs PS FD TM); default: all six "
        "of the paper (PS FD WN TM TS TST)",
    )
    what.add_argument(
        "--frontends",
        nargs="+",
        metavar="NAME",
        help="front ends to run, each a matrix of its own (default: raw1d stft3, as in the paper)",
    )
    what.add_argument(
        "--epochs", type=int, help="training epochs per trial (default: the preset's)"
    )
    what.add_argument("--seed", type=int, help="training seed of every trial (default: 0)")
    what.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="any config field for every trial, e.g. --set train.batch_size=32 "
        "--set data.max_clips=600 (repeatable; values are YAML)",
    )
    what.add_argument(
        "--cell-set",
        dest="cell_settings",
        action="append",
        type=_cell_key_value,
        default=[],
        metavar="TRIAL_ID:KEY=VALUE",
        help="a config field for one cell only, e.g. --cell-set stft3-FD-TM:train.seed=1 "
        "(trial ids as listed by --dry-run; repeatable)",
    )
    where = parser.add_argument_group("resources and cluster")
    where.add_argument(
        "--workers-per-trial",
        type=int,
        help="training workers per trial; more than one runs a TorchTrainer worker group "
        "(default: the preset's, 1 for quick, 4 for paper)",
    )
    where.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: 1)"
    )
    where.add_argument(
        "--gpus-per-worker",
        type=float,
        help="GPUs per worker, fractions allowed (e.g. 0.5 puts two workers on a GPU); "
        "default: 1 if the preset trains on GPU, else 0",
    )
    where.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)",
    )
    where.add_argument(
        "--torch-trainer",
        action="store_true",
        help="run single-worker trials through a TorchTrainer too (slower start; for checking "
        "the multi-worker path on a small machine)",
    )
    where.add_argument(
        "--max-failures",
        type=int,
        default=0,
        help="automatic retries of a failed trial from its last checkpoint (default: 0)",
    )
    where.add_argument(
        "--address",
        help="Ray cluster to join (e.g. 'auto' on a node of a running cluster); "
        "default: start a local Ray",
    )
    where.add_argument(
        "--num-cpus",
        type=int,
        help="CPUs of the local Ray (default: all cores); ignored with --address",
    )
    out = parser.add_argument_group("results and tracking")
    out.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="folder for sweeps (<results>/<run name>/) and the default MLflow store "
        "(<results>/mlflow.db); default: ./results",
    )
    out.add_argument(
        "--storage-path",
        help="shared or cloud storage for Tune's trial state and checkpoints on a multi-node "
        "cluster (e.g. s3://bucket/clarlab or an NFS path); default: under --results",
    )
    out.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (e.g. http://head:5000); default: $MLFLOW_TRACKING_URI, "
        "else sqlite:///<results>/mlflow.db",
    )
    out.add_argument("--experiment", help="MLflow experiment name (default: clarlab-aug_matrix)")
    out.add_argument("--run-name", help="name of this sweep (default: aug_matrix-<preset>-<time>)")
    control = parser.add_argument_group("control")
    control.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything, print the trial table and resources, and exit",
    )
    control.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_NAME",
        help="continue an interrupted sweep (default: the latest under --results): finished "
        "trials are kept, unfinished ones continue from their checkpoints in the same MLflow runs",
    )
    control.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: also rerun the trials that failed, from scratch",
    )
    control.add_argument(
        "--report-only",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_NAME",
        help="rebuild the heatmaps and table of a finished or partial sweep and attach them "
        "to its MLflow parent run, without running anything",
    )
    control.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between progress lines (default: 30)",
    )
    return parser


def request_from_args(args: argparse.Namespace, argv: list[str]) -> Any:
    """Translate the flags into a :class:`core.sweep.SweepRequest`."""
    from core.sweep import SweepRequest

    overrides: dict[str, Any] = {}
    if args.dataset:
        overrides["data.dataset"] = args.dataset
    if args.data_root:
        overrides["data.root"] = str(args.data_root)
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    overrides.update(dict(args.settings))
    trial_overrides: dict[str, dict[str, Any]] = {}
    for trial_id, key, value in args.cell_settings:
        trial_overrides.setdefault(trial_id, {})[key] = value
    axis_values: dict[str, list[Any]] = {}
    if args.augs:
        axis_values["augment.pipeline"] = list(args.augs)
    if args.frontends:
        axis_values["frontend.name"] = list(args.frontends)
    return SweepRequest(
        search_space=args.search_space,
        preset=args.preset,
        overrides=overrides,
        axis_values=axis_values,
        trial_overrides=trial_overrides,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        max_concurrent=args.max_concurrent,
        force_torch_trainer=args.torch_trainer,
        max_failures=args.max_failures,
        address=args.address,
        num_cpus=args.num_cpus,
        results_dir=args.results,
        storage_path=args.storage_path,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        run_name=args.run_name,
        resume=args.resume,
        retry_failed=args.retry_failed,
        dry_run=args.dry_run,
        report_only=args.report_only,
        command_line=shlex.join(["run_aug_matrix.py", *argv]),
        progress_every_s=args.progress_every,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from core.sweep import run_sweep

    try:
        outcome = run_sweep(request_from_args(args, argv))
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        return EXIT_OK
    if not outcome.complete:
        return EXIT_INCOMPLETE
    return EXIT_TRIALS_FAILED if outcome.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
