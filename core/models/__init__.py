"""Encoders by short name, and the heads that sit on them.

``build_encoder(cfg.model, in_channels)`` is the one entry point the training loop uses;
``ENCODERS`` is the registry the config validates ``model.encoder`` against, declared in
:mod:`core.registry` so that validating a config does not import torch. Adding a backbone
is one builder function ``(width, in_channels, pretrained, authors_code) -> Encoder`` in
:mod:`core.models.backbones` plus one line in :mod:`core.registry`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from torch import nn

from core.models.backbones import Encoder
from core.models.heads import EvaluationHead, ProjectionHead
from core.registry import ENCODERS

if TYPE_CHECKING:
    from core.config import ModelConfig

__all__ = [
    "ENCODERS",
    "Encoder",
    "EvaluationHead",
    "ProjectionHead",
    "build_encoder",
    "count_parameters",
]

# Encoders whose width follows model.width; the others have torchvision's fixed widths.
WIDTH_ENCODERS = frozenset({"resnet18_1d", "resnet18"})


def build_encoder(cfg: ModelConfig, in_channels: int) -> Encoder:
    """The encoder named by ``cfg.encoder``, taking ``in_channels`` input channels."""
    if cfg.encoder not in ENCODERS:
        raise ValueError(
            f"unknown model.encoder {cfg.encoder!r}; valid: {', '.join(ENCODERS.names())}"
        )
    if cfg.encoder not in WIDTH_ENCODERS and cfg.width != 64:
        # Not an error: presets set a small ResNet width that other backbones inherit.
        warnings.warn(
            f"model.width={cfg.width} only applies to {sorted(WIDTH_ENCODERS)}; "
            f"{cfg.encoder!r} keeps torchvision's widths",
            stacklevel=2,
        )
    pretrained = cfg.pretrained
    if cfg.weights == "imagenet":
        from core.imagenet import imagenet_checkpoint

        pretrained = imagenet_checkpoint(cfg.encoder, cfg.weights_dir)
    return ENCODERS[cfg.encoder](
        width=cfg.width,
        in_channels=in_channels,
        pretrained=pretrained,
        authors_code=cfg.authors_code,
    )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
