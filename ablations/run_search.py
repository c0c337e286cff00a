"""Optuna TPE search (with ASHA stopping) for one contrastive method at a given budget.

    python ablations/run_search.py --method simclr --samples 16        # laptop: FSDD
    python ablations/run_search.py --dry-run                           # the space, no Ray
    python ablations/run_search.py --resume RUN_NAME --samples 8       # 8 more, same study
    python ablations/run_search.py --preset paper --address auto --samples 64

The sampled fields and their distributions are the `search:` section of
``search_spaces/search.yaml``. The study is kept in ``<results>/<run name>/optuna.db``,
so --resume continues it (TPE learns from every earlier trial). Each sample is a nested
MLflow run under one parent run, which gets the best config (tags best.<field>, the
metric best_<metric>, search/best_config.yaml), Optuna's optimisation-history and
parameter-importance plots and the table of trials.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli
from ablations._cli import EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_OK, EXIT_TRIALS_FAILED
from core.config import ConfigError

__all__ = ["EXIT_BAD_INPUT", "EXIT_INCOMPLETE", "EXIT_OK", "EXIT_TRIALS_FAILED", "main"]

# Shared flags that shape a grid and mean nothing to a search; refused rather than ignored.
_GRID_ONLY = {
    "seeds": "--seeds",
    "cell_settings": "--cell-set",
    "retry_failed": "--retry-failed",
    "throughput": "--throughput",
}


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_search", __doc__ or "", search_space="search")
    parser.what.add_argument(
        "--method",
        help="the method to search for (method.name, e.g. simclr, moco, byol); "
        "default: the search space's (simclr)",
    )
    parser.what.add_argument(
        "--samples",
        type=int,
        help="trials to sample in this invocation (with --resume: how many more); "
        "default: the search space's search.samples",
    )
    # A search is where early stopping pays most: ASHA is its default.
    parser.set_defaults(scheduler="asha")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.show_config and not args.dry_run:
        parser.error("--show-config goes with --dry-run")
    for dest, flag in _GRID_ONLY.items():
        if getattr(args, dest):
            parser.error(f"{flag} applies to grids; a search samples its trials")
    request = _cli.request_from_args(args, argv, parser.prog, {})
    request.controls = False
    request.samples = args.samples
    if args.method:
        request.overrides["method.name"] = args.method
    from core.sweep.search import run_search

    if args.trust_results:
        from core.sweep.trust import trust_results

        trust_results()
    try:
        outcome = run_search(request)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if outcome is None:  # dry run
        return EXIT_OK
    if not outcome.complete:
        return EXIT_INCOMPLETE
    return EXIT_TRIALS_FAILED if outcome.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
