"""CLAR Table 2 and Figure 5: supervised, SimCLR and CLAR with 100, 20, 10 and 1 % of the
labels; the evaluation head is trained on all labels of the frozen encoder every
``train.eval_every`` epochs (every 10 with --preset paper).

    python ablations/run_label_fraction.py --preset quick
    python ablations/run_label_fraction.py --preset laptop --fractions 1.0 0.01
    python ablations/run_label_fraction.py --preset paper --address auto

The parent run gets the Table 2 grid (rows: method, columns: fraction) and the Figure 5
curves (top-1 against epochs, one panel per fraction, one line per method, bands over
seeds). The grid is ``search_spaces/label_fraction.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_label_fraction", __doc__ or "", space="label_fraction")
    parser.what.add_argument(
        "--methods", nargs="+", metavar="NAME", help="rows (default: supervised simclr clar)"
    )
    parser.what.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        metavar="F",
        help="labelled fractions in (0, 1] (default: 1.0 0.2 0.1 0.01)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    flags = {"methods": "method.name", "fractions": "data.label_fraction"}
    return _cli.run(build_parser(), argv, flags)


if __name__ == "__main__":
    sys.exit(main())
