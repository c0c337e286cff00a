"""QUACLRS Tables 15 and 17: one augmentation per trial (original, noise 5/15 dB, time
stretch 0.8/1.2, pitch shift +-2, SpecAugment and PatchAugment variants, mixup), with
SimCLR and with MoCo, over the folds. Each view also gets its own random base
augmentation, so no row trains on two identical views.

    python ablations/run_augmentations.py --preset quick --folds 1 --augmentations original pitchshift_2
    python ablations/run_augmentations.py --preset paper --address auto

The parent run gets one table per method (rows: augmentation, columns: folds, then the
mean and std). The grid is ``search_spaces/augmentations.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_augmentations", __doc__ or "", space="augmentations")
    parser.what.add_argument(
        "--augmentations",
        nargs="+",
        metavar="NAME",
        help="rows, by the paper's names (default: all; see search_spaces/augmentations.yaml)",
    )
    parser.what.add_argument(
        "--methods", nargs="+", metavar="NAME", help="tables (default: simclr moco)"
    )
    _cli.add_folds_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    flags = {"augmentations": "augmentation", "methods": "method.name", "folds": "data.fold"}
    return _cli.run(build_parser(), argv, flags)


if __name__ == "__main__":
    sys.exit(main())
