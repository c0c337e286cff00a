"""QUACLRS Tables 2 and 5-13: AlexNet, VGG16, ResNet18, MobileNetV2, InceptionV3,
EfficientNet-B0 and ConvNeXt-Tiny on mel-spectrogram images with class-weighted
cross-entropy, Adam, ReduceLROnPlateau and early stopping on validation accuracy (the
best epoch is scored), over QUACLRS k-fold; each scored by its own classifier on the test
fold. One recipe per table (``--recipe``):

=========  ================================================================================
table2     Tables 2 (the headline): ImageNet-pretrained, fine-tuned end to end, FP32
table5     Tables 5-8, linear probing: ImageNet-pretrained backbone frozen, one linear
           layer trained and scored (``--set model.weights=random`` probes a random one)
table9     Tables 9-10, from scratch: random initialisation, trained end to end, FP32
table11    Tables 11-13, mixed precision: ImageNet-pretrained, fine-tuned, FP16 with
           PyTorch's GradScaler (QUACLRS 4.6; on CUDA, a CPU trains in FP32)
=========  ================================================================================

    python ablations/run_backbones.py --preset paper --address auto       # Table 2
    python ablations/run_backbones.py --preset paper --recipe table5 --address auto
    python ablations/run_backbones.py --recipe table9 --encoders resnet18 --folds 1

The pretrained recipes read torchvision's ImageNet checkpoints from its cache
($TORCH_HOME/hub/checkpoints) or ``--weights-dir``; nothing is downloaded, and a missing
file stops the dry run naming the path (``table9`` needs none). The parent run gets the
per-fold table with mean, range and std per backbone. The grid is
``search_spaces/backbones.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
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
        "--recipe",
        choices=sorted(RECIPES),
        default=DEFAULT_RECIPE,
        help="which QUACLRS table to reproduce: "
        + "; ".join(f"{name}: {recipe.description}" for name, recipe in RECIPES.items())
        + f" (default: {DEFAULT_RECIPE})",
    )
    parser.what.add_argument(
        "--weights-dir",
        type=Path,
        help="a folder holding torchvision's ImageNet checkpoint files (default: its cache)",
    )
    _cli.add_folds_flag(parser)
    return parser


@dataclass(frozen=True)
class Recipe:
    """How one QUACLRS table trained its backbones: config settings applied as ``--set``
    (a later ``--set`` on the command line still wins)."""

    description: str
    settings: tuple[tuple[str, Any], ...]


# torchvision's ResNet18 checkpoint is width 64 (the other backbones ignore width).
_IMAGENET = (("model.weights", "imagenet"), ("model.width", 64))
RECIPES = {
    "table2": Recipe(
        "Table 2, ImageNet-pretrained, fine-tuned, FP32", (*_IMAGENET, ("train.amp", "off"))
    ),
    "table5": Recipe(
        "Tables 5-8, linear probing: the pretrained backbone frozen, a linear layer trained",
        (*_IMAGENET, ("method.name", "linear_probe"), ("train.amp", "off")),
    ),
    "table9": Recipe(
        "Tables 9-10, from scratch: random initialisation, FP32",
        (("model.weights", "random"), ("train.amp", "off")),
    ),
    "table11": Recipe(
        "Tables 11-13, mixed precision: pretrained, fine-tuned, FP16 + GradScaler",
        (*_IMAGENET, ("train.amp", "fp16")),
    ),
}
DEFAULT_RECIPE = "table2"  # QUACLRS's headline table


def adjust(args: argparse.Namespace, axis_values: dict[str, list[Any]]) -> None:
    """The recipe's settings go under the command line's own ``--set`` values; being the
    paper's protocol for its table, they are not deviations from it."""
    recipe = RECIPES[args.recipe]
    args.recipe_settings = list(recipe.settings)
    print(f"recipe {args.recipe}: QUACLRS {recipe.description}", flush=True)
    if args.weights_dir:
        args.settings.append(("model.weights_dir", str(args.weights_dir.expanduser().resolve())))


def main(argv: list[str] | None = None) -> int:
    flags = {"encoders": "model.encoder", "folds": "data.fold"}
    return _cli.run(build_parser(), argv, flags, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
