"""The flags every ablation script shares, and the one ``run`` they all end in.

An ablation script is a docstring, a space file's name, and its own flags (a grid's axis
selections such as ``--augs``, a search's ``--method``); everything else (preset,
dataset, epochs, workers, GPUs, cluster address, tracking, results, resume, dry run,
``--set``) is here, so every script behaves the same way and a new one is 20-40 lines.
Grids and searches share every flag but the few that only mean something to one of them
(``--seeds``, ``--no-controls``, ``--cell-set``, ``--retry-failed``, ``--throughput``
for a grid; ``--samples`` for a search).

Exit codes: 0 all trials finished (or a dry run passed), 2 bad input (one line on
stderr, before Ray starts: a bad field, a missing dataset, a tracking server that does not
answer, a nearly full disk), 3 some trials failed, 130 the sweep is incomplete
(interrupted, or the tracking server became unreachable: resume it).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from core.config import PRESETS, ConfigError

EXIT_OK, EXIT_BAD_INPUT, EXIT_TRIALS_FAILED, EXIT_INCOMPLETE = 0, 2, 3, 130
GRID, SEARCH = "grid", "search"


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


def _resource_amount(text: str) -> tuple[str, float]:
    """``v100=1`` -> ("v100", 1.0)."""
    name, sep, amount = text.partition("=")
    try:
        return name.strip(), float(amount) if sep else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=AMOUNT (e.g. v100=1), got {text!r}"
        ) from None


class AblationParser(argparse.ArgumentParser):
    """``argparse`` with the shared groups exposed, so a script adds its own flags to
    ``parser.what``; ``kind`` says whether it runs a grid or a search."""

    what: argparse._ArgumentGroup
    kind: str


def build_parser(prog: str, description: str, space: str, kind: str = GRID) -> AblationParser:
    """The shared flags; ``space`` is the script's default space file."""
    parser = AblationParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.kind = kind
    parser.what = parser.add_argument_group("what to run")
    _what_flags(parser.what, space, kind)
    _resource_flags(parser.add_argument_group("resources and cluster"))
    _result_flags(parser.add_argument_group("results and tracking"), space)
    _control_flags(parser.add_argument_group("control"), kind)
    return parser


def _what_flags(what: argparse._ArgumentGroup, space: str, kind: str) -> None:
    what.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="scale of every trial: 'quick' (FSDD, ResNet width 16, 1 CPU worker, minutes on "
        "a laptop), 'laptop' (a budget measured to show the papers' effects on 2 cores) or "
        "'paper' (the paper's dataset and budget, 4 GPU workers per trial). Default: quick",
    )
    what.add_argument(
        "--space",
        "--search-space",
        dest="space",
        default=space,
        help=f"space file: a name in search_spaces/ or a path to a YAML file (default: {space})",
    )
    what.add_argument("--dataset", help="dataset registry name (default: the preset's)")
    what.add_argument(
        "--data-root", help="dataset folder (default: $CLARLAB_DATA/<dataset>)", type=Path
    )
    what.add_argument(
        "--epochs", type=int, help="training epochs per trial (default: the preset's)"
    )
    what.add_argument("--seed", type=int, help="first training seed of every trial (default: 0)")
    what.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="any config field for every trial, e.g. --set train.batch_size=32 "
        "--set method.temperature=0.2 (repeatable; values are YAML). Order of precedence: "
        "code defaults < preset < the space file's base < its presets.<preset> < the grid "
        "cell or the sample < --set < --cell-set",
    )
    if kind == SEARCH:
        what.add_argument(
            "--samples",
            type=int,
            help="trials to sample in this invocation (with --resume: how many more); "
            "default: the search file's search.samples",
        )
        return
    what.add_argument(
        "--seeds",
        type=int,
        help="replicate every cell and control over this many seeds (seed, seed+1, ...): "
        "each changes the initialisation, augmentation draws and labelled subset, and the "
        "report shows a 95%% interval over them (default: 1 for quick, 3 for laptop)",
    )
    what.add_argument(
        "--no-controls",
        dest="controls",
        action="store_false",
        help="leave out the untrained-encoder control and the supervised reference that "
        "every grid otherwise carries",
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


def _resource_flags(where: argparse._ArgumentGroup) -> None:
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
        "--worker-resource",
        dest="worker_resources",
        action="append",
        type=_resource_amount,
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each worker needs, e.g. --worker-resource v100=1 to run "
        "trials only on nodes that declare it (repeatable)",
    )
    where.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as many as the cluster holds)"
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
        help="CPUs of the local Ray (default: all cores); not with --address",
    )


def _result_flags(out: argparse._ArgumentGroup, space: str) -> None:
    out.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="folder for sweeps (<results>/<run name>/) and the default MLflow store "
        "(<results>/mlflow.db); default: ./results",
    )
    out.add_argument(
        "--storage-path",
        default=os.environ.get("CLARLAB_STORAGE_PATH") or None,
        help="shared or cloud storage for Tune's trial state and checkpoints on a multi-node "
        "cluster (e.g. s3://bucket/clarlab or an NFS path); default: $CLARLAB_STORAGE_PATH "
        "(set on every node by cluster.yaml), else under --results",
    )
    out.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (e.g. http://localhost:5000 on the head: on a multi-node "
        "cluster a loopback host is replaced by the head's address so every node reaches it); "
        "default: $MLFLOW_TRACKING_URI, else sqlite:///<results>/mlflow.db. Credentials go in "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, not in the URI",
    )
    out.add_argument("--experiment", help=f"MLflow experiment name (default: clarlab-{space})")
    out.add_argument("--run-name", help=f"name of this sweep (default: {space}-<preset>-<time>)")


def _control_flags(control: argparse._ArgumentGroup, kind: str) -> None:
    control.add_argument(
        "--dry-run",
        action="store_true",
        help="validate everything (configs, resources, each trial's dataset and split sizes, "
        "the metric), print the plan and exit",
    )
    control.add_argument(
        "--show-config",
        action="store_true",
        help="with --dry-run: print every trial's resolved config as YAML (what it logs to MLflow)",
    )
    control.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_NAME",
        help="continue an interrupted sweep (default: the latest under --results). A grid keeps "
        "its finished trials and continues the others from their checkpoints in the same "
        "MLflow runs; a search samples --samples more into the same study",
    )
    control.add_argument(
        "--trust-results",
        action="store_true",
        help="with --resume/--report-only: accept a results folder this user's clarlab did "
        "not write (copied from another machine). Resuming unpickles Tune's state from it, "
        "so only for folders you trust; the folder is then recorded as trusted",
    )
    control.add_argument(
        "--report-only",
        nargs="?",
        const=True,
        default=False,
        metavar="RUN_NAME",
        help="rebuild the report of a finished or partial sweep and attach it to its MLflow "
        "parent run, without running anything",
    )
    control.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds between progress lines (default: 30)",
    )
    _scheduler_flag(control, kind)
    if kind == GRID:
        control.add_argument(
            "--retry-failed",
            action="store_true",
            help="with --resume: also rerun the trials that failed, from scratch",
        )
        control.add_argument(
            "--throughput",
            type=float,
            metavar="CLIPS_PER_S",
            help="with --dry-run: training clips per second per worker on your hardware, for "
            "the cost estimate (default: measured on a 2-core laptop for CPU, an assumption "
            "for GPU)",
        )


def _scheduler_flag(control: argparse._ArgumentGroup, kind: str) -> None:
    # A search is where stopping weak trials early pays most: ASHA is its default.
    default = "asha" if kind == SEARCH else "fifo"
    control.add_argument(
        "--scheduler",
        choices=("fifo", "asha"),
        default=default,
        help="the trial scheduler (default: %(default)s). 'fifo': every trial runs its whole "
        "budget. 'asha': successive halving: at the evaluation epochs train.eval_every, 2x, "
        "4x ... that (before the last), a trial worse than the median of those that reached "
        "that epoch stops (better and worse by the space file's metric and mode). A grid's "
        "controls always run their whole budget, and its report marks the cells stopped "
        "early. Needs train.epochs > train.eval_every",
    )


def request_from_args(
    args: argparse.Namespace, argv: Sequence[str], prog: str, axis_values: Mapping[str, list[Any]]
) -> Any:
    """Translate the shared flags (and the script's axis selections) into a
    :class:`core.sweep.SweepRequest`."""
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
    for trial_id, key, value in getattr(args, "cell_settings", []):
        trial_overrides.setdefault(trial_id, {})[key] = value
    return SweepRequest(
        space=args.space,
        preset=args.preset,
        overrides=overrides,
        recipe=dict(getattr(args, "recipe_settings", [])),
        axis_values=dict(axis_values),
        trial_overrides=trial_overrides,
        seeds=getattr(args, "seeds", None),
        controls=getattr(args, "controls", False),
        samples=getattr(args, "samples", None),
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        worker_resources=dict(args.worker_resources),
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
        retry_failed=getattr(args, "retry_failed", False),
        dry_run=args.dry_run,
        show_config=args.show_config,
        throughput=getattr(args, "throughput", None),
        report_only=args.report_only,
        command_line=shlex.join([f"{prog}.py", *argv]),
        progress_every_s=args.progress_every,
        scheduler=None if args.scheduler == "fifo" else args.scheduler,
    )


def add_folds_flag(parser: AblationParser) -> None:
    """``--folds``: which test folds of a folded dataset (QUACLRS k-fold) to run."""
    parser.what.add_argument(
        "--folds",
        nargs="+",
        type=_fold,
        metavar="K",
        help="test folds to run, or 'all' (the dataset's declared folds: UrbanSound8K 10, "
        "ESC-50 5, FSDD 6 speaker folds); validation is the fold before the test fold",
    )


def _fold(text: str) -> int | str:
    if text == "all":
        return text
    try:
        fold = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a fold is a number from 1 or 'all', got {text!r}"
        ) from None
    if fold < 1:
        raise argparse.ArgumentTypeError(f"folds count from 1, got {fold}")
    return fold


Adjust = Callable[[argparse.Namespace, dict[str, list[Any]]], None]


def run(
    parser: AblationParser,
    argv: Sequence[str] | None,
    axis_flags: Mapping[str, str],
    adjust: Adjust | None = None,
) -> int:
    """Parse, run the sweep (grid or search), and map the outcome to an exit code.

    ``axis_flags`` maps a flag's ``dest`` (``"augs"``) to the grid axis it restricts
    (``"augment.pipeline"``). ``adjust(args, axis_values)`` lets a script turn its own
    flags into axis selections or settings (new cases, a preset-dependent default); it
    raises :class:`~core.config.ConfigError` for bad input.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.show_config and not args.dry_run:
        parser.error("--show-config goes with --dry-run")
    axis_values = {
        axis: list(getattr(args, dest)) for dest, axis in axis_flags.items() if getattr(args, dest)
    }
    try:
        if adjust is not None:
            adjust(args, axis_values)
        if args.trust_results:
            from core.sweep.trust import trust_results

            trust_results()
        from core.sweep import run_sweep

        outcome = run_sweep(request_from_args(args, argv, parser.prog, axis_values))
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        return EXIT_OK
    if not outcome.complete:
        return EXIT_INCOMPLETE
    return EXIT_TRIALS_FAILED if outcome.failed else EXIT_OK
