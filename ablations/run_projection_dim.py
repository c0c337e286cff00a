"""QUACLRS Table 16: SimCLR with projection outputs of 64, 128 and 256 dimensions over the
dataset's folds (test fold k, validation fold k-1).

    python ablations/run_projection_dim.py --preset quick --folds 1 2   # FSDD speaker folds
    python ablations/run_projection_dim.py --preset paper --address auto  # UrbanSound8K, 10 folds

The parent run gets the table (rows: projection dim, columns: folds, then mean and std
over folds and the training time). The grid is ``search_spaces/projection_dim.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_projection_dim", __doc__ or "", space="projection_dim")
    parser.what.add_argument(
        "--dims", nargs="+", type=int, metavar="D", help="projection outputs (default: 64 128 256)"
    )
    _cli.add_folds_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _cli.run(build_parser(), argv, {"dims": "model.proj_dim", "folds": "data.fold"})


if __name__ == "__main__":
    sys.exit(main())
