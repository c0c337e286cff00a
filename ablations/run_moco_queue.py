"""QUACLRS Table 18: MoCo's batch size and queue length on one fold, with the training
time of each setting.

    python ablations/run_moco_queue.py --preset quick
    python ablations/run_moco_queue.py --full-grid                 # every batch x queue
    python ablations/run_moco_queue.py --preset paper --address auto

By default the paper's four settings (batch, queue): (8, 4096), (16, 4096), (32, 4096),
(32, 8192). The parent run gets the table (rows: setting, columns: top-1, macro F1 and
wall time). The grid is ``search_spaces/moco_queue.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli
from core.sweep.grid import load_grid


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_moco_queue", __doc__ or "", space="moco_queue")
    parser.what.add_argument(
        "--full-grid",
        action="store_true",
        help="the cross product of the batch sizes and queue lengths instead of the paper's "
        "four pairs",
    )
    parser.what.add_argument(
        "--batch-sizes", nargs="+", type=int, metavar="B", help="with --full-grid: batch sizes"
    )
    parser.what.add_argument(
        "--queues", nargs="+", type=int, metavar="K", help="with --full-grid: queue lengths"
    )
    return parser


def cross_product(batch_sizes: list[int], queues: list[int]) -> list[dict[str, dict[str, Any]]]:
    """Every (batch, queue) pair as a case labelled like the paper's (``b16-q8192``)."""
    return [
        {f"b{batch}-q{queue}": {"train.batch_size": batch, "method.queue_size": queue}}
        for batch in batch_sizes
        for queue in queues
    ]


def adjust(args: argparse.Namespace, axis_values: dict[str, list[Any]]) -> None:
    if not args.full_grid:
        if args.batch_sizes or args.queues:
            from core.config import ConfigError

            raise ConfigError("--batch-sizes and --queues go with --full-grid")
        return
    axis = load_grid(args.space).axis("batch_queue")
    declared = list(axis.coupled.values()) if axis else []
    batches = args.batch_sizes or sorted({case["train.batch_size"] for case in declared})
    queues = args.queues or sorted({case["method.queue_size"] for case in declared})
    axis_values["batch_queue"] = cross_product(batches, queues)


def main(argv: list[str] | None = None) -> int:
    return _cli.run(build_parser(), argv, {}, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
