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

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli
from ablations._cli import EXIT_BAD_INPUT, EXIT_INCOMPLETE, EXIT_OK, EXIT_TRIALS_FAILED

__all__ = ["EXIT_BAD_INPUT", "EXIT_INCOMPLETE", "EXIT_OK", "EXIT_TRIALS_FAILED", "main"]


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_aug_matrix", __doc__ or "", space="aug_matrix")
    parser.what.add_argument(
        "--augs",
        nargs="+",
        metavar="CODE",
        help="matrix of these augmentation codes only (e.g. --augs PS FD TM); default: all six "
        "of the paper (PS FD WN TM TS TST)",
    )
    parser.what.add_argument(
        "--frontends",
        nargs="+",
        metavar="NAME",
        help="front ends to run, each a matrix of its own (default: raw1d stft3, as in the paper)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return _cli.run(
        build_parser(), argv, {"augs": "augment.pipeline", "frontends": "frontend.name"}
    )


if __name__ == "__main__":
    sys.exit(main())
