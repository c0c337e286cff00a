"""CLAR Table 1: raw audio vs time-frequency features, three augmentation sets each, on
seven datasets (SimCLR, frozen-encoder evaluation).

    python ablations/run_features.py --preset quick                 # laptop: FSDD only
    python ablations/run_features.py --preset paper --address auto  # all seven datasets
    python ablations/run_features.py --sets raw1d:FD+TST stft3:FD+TM --datasets fsdd esc10

The parent run gets the table (rows: front end + augmentation set, columns: datasets) as
PNG, CSV and markdown, next to the untrained-encoder control and the supervised
reference of every front end and dataset. The grid is ``search_spaces/features.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli
from core.config import ConfigError

ENCODER_OF = {"raw1d": "resnet18_1d", "stft3": "resnet18", "mel": "resnet18"}
# Datasets a laptop preset runs when --datasets is not given: the ones it can hold.
LAPTOP_DATASETS = ["fsdd"]


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_features", __doc__ or "", space="features")
    parser.what.add_argument(
        "--datasets",
        nargs="+",
        metavar="NAME",
        help="columns of the table: esc10 esc50 sc10 sc35 nsynth11 nsynth128 fsdd (default: "
        "all seven with --preset paper, fsdd with quick and laptop)",
    )
    parser.what.add_argument(
        "--sets",
        nargs="+",
        metavar="FRONTEND:CODES",
        help="rows of the table: a front end and an augmentation set, e.g. raw1d:FD+TST "
        "stft3:FD+TM+TS (default: the paper's three sets per front end)",
    )
    return parser


def feature_cases(sets: list[str]) -> list[dict[str, dict[str, Any]]]:
    """``raw1d:FD+TST`` -> a case with its front end, encoder and pipeline."""
    cases = []
    for text in sets:
        frontend, sep, codes = text.partition(":")
        if not sep or frontend not in ENCODER_OF or not codes:
            raise ConfigError(
                f"--sets {text!r}: expected FRONTEND:CODE+CODE with FRONTEND one of "
                f"{', '.join(ENCODER_OF)} (e.g. stft3:FD+TM)"
            )
        pipeline = [code for code in codes.split("+") if code]
        settings = {
            "frontend.name": frontend,
            "model.encoder": ENCODER_OF[frontend],
            "augment.pipeline": pipeline,
        }
        cases.append({f"{frontend}-{'+'.join(pipeline)}": settings})
    return cases


def adjust(args: argparse.Namespace, axis_values: dict[str, list[Any]]) -> None:
    if args.sets:
        axis_values["features"] = feature_cases(args.sets)
    if not args.datasets and args.preset != "paper" and not args.dataset:
        axis_values["dataset"] = list(LAPTOP_DATASETS)


def main(argv: list[str] | None = None) -> int:
    return _cli.run(build_parser(), argv, {"datasets": "dataset"}, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
