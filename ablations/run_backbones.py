"""QUACLRS Tables 2 and 9-13: AlexNet, VGG16, ResNet18, MobileNetV2, InceptionV3,
EfficientNet-B0 and ConvNeXt-Tiny trained supervised on mel-spectrogram images with
class-weighted cross-entropy, Adam, ReduceLROnPlateau and early stopping, over QUACLRS
k-fold; each scored by its own classifier on the test fold.

    python ablations/run_backbones.py --preset quick --encoders resnet18 mobilenet_v2 --folds 1
    python ablations/run_backbones.py --pretrained                 # ImageNet weights
    python ablations/run_backbones.py --set train.amp=off          # Table 11's other arm
    python ablations/run_backbones.py --preset paper --address auto

The parent run gets the per-fold table with mean, range and std per backbone. The grid is
``search_spaces/backbones.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file from a plain checkout: make `core` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations import _cli


def build_parser() -> _cli.AblationParser:
    parser = _cli.build_parser("run_backbones", __doc__ or "", space="backbones")
    parser.what.add_argument(
        "--encoders",
        nargs="+",
        metavar="NAME",
        help="rows (default: alexnet vgg16 resnet18 mobilenet_v2 inception_v3 "
        "efficientnet_b0 convnext_tiny)",
    )
    parser.what.add_argument(
        "--pretrained",
        action="store_true",
        help="start from ImageNet weights, read from torchvision's cache ($TORCH_HOME/hub/"
        "checkpoints) or --weights-dir; nothing is downloaded, a missing file is an error "
        "naming the path it expected",
    )
    parser.what.add_argument(
        "--weights-dir",
        type=Path,
        help="with --pretrained: a folder holding torchvision's ImageNet checkpoint files",
    )
    _cli.add_folds_flag(parser)
    return parser


def adjust(args: argparse.Namespace, axis_values: dict[str, list[Any]]) -> None:
    if args.pretrained:
        # torchvision's ResNet18 checkpoint is width 64 (the other backbones ignore width).
        args.settings += [("model.weights", "imagenet"), ("model.width", 64)]
        if args.weights_dir:
            args.settings.append(
                ("model.weights_dir", str(args.weights_dir.expanduser().resolve()))
            )


def main(argv: list[str] | None = None) -> int:
    flags = {"encoders": "model.encoder", "folds": "data.fold"}
    return _cli.run(build_parser(), argv, flags, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
