"""Optuna TPE search (with ASHA stopping) for one contrastive method at a given budget.

    python ablations/run_search.py --method simclr --samples 16        # laptop: FSDD
    python ablations/run_search.py --dry-run                           # the space, no Ray
    python ablations/run_search.py --resume RUN_NAME --samples 8       # 8 more, same study
    python ablations/run_search.py --preset paper --address auto --samples 64

The sampled fields and their distributions are the `search:` section of
``search_spaces/search.yaml``; the grid-only flags (--seeds, --no-controls, --cell-set,
--retry-failed, --throughput) do not exist here. The study is kept in
``<results>/<run name>/optuna.db``, so --resume continues it (TPE learns from every
earlier trial). Each sample is a nested
MLflow run under one parent run, which gets the best config (tags best.<field>, the
metric best_<metric>, search/best_config.yaml), Optuna's optimisation-history and
parameter-importance plots and the table of trials.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli
from ablations._cli import EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_OK, EXIT_TRIALS_FAILED

__all__ = ["EXIT_BAD_INPUT", "EXIT_INCOMPLETE", "EXIT_OK", "EXIT_TRIALS_FAILED", "main"]


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_search", __doc__ or "", space="search", kind=_cli.SEARCH)
    parser.what.add_argument(
        "--method",
        help="the method to search for (method.name, e.g. simclr, moco, byol); "
        "default: the search file's (simclr)",
    )
    return parser


def adjust(args: argparse.Namespace, axis_values: dict[str, list[Any]]) -> None:
    if args.method:
        args.settings.append(("method.name", args.method))


def main(argv: list[str] | None = None) -> int:
    return _cli.run(build_parser(), argv, {}, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
