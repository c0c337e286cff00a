"""QUACLRS Tables 3-4: SimCLR, MoCo, MoCoV2, BYOL, Barlow Twins, DINO and SwAV on the same
encoder, front end and budget, each with its published hyperparameters.

    python ablations/run_ssl_methods.py --preset quick
    python ablations/run_ssl_methods.py --methods simclr byol --folds all
    python ablations/run_ssl_methods.py --preset paper --address auto

The parent run gets Table 3 (rows: method, columns: accuracy, macro F1, weighted F1) and
Table 4 (test F1 per class and method). The grid is ``search_spaces/ssl_methods.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_ssl_methods", __doc__ or "", space="ssl_methods")
    parser.what.add_argument(
        "--methods",
        nargs="+",
        metavar="NAME",
        help="rows (default: simclr moco mocov2 byol barlow_twins dino swav)",
    )
    _cli.add_folds_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _cli.run(build_parser(), argv, {"methods": "method.name", "folds": "data.fold"})


if __name__ == "__main__":
    sys.exit(main())
