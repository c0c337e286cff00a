"""The interface every training method implements, and the helpers they share.

``method(view1, view2, labels)`` returns a dict with ``"loss"`` (the fp32 scalar to
backpropagate), its components and cheap metrics (all detached except ``loss``).
``on_after_optimizer_step(progress)`` runs the updates that are not gradient steps:
momentum encoders, EMA teachers, prototype normalisation. Everything a method owns
(heads, momentum copies, queues, DINO's center) is a submodule or registered buffer, so
``state_dict()`` checkpoints it and DDP/SyncBatchNorm see it.

Some published recipes change with the epoch (SwAV's prototypes and DINO's last layer are
held still during the first epoch, SwAV's queue starts later). The training loop calls
``on_epoch_start(epoch)`` before each epoch's first step, and ``on_before_optimizer_step()``
after backward and gradient clipping, before the optimizer steps: it drops the gradients
of ``frozen_parameters()``, so the optimizer skips them (no update, no momentum, no weight
decay). A loop of your own that trains such a method should call both.

Under DDP call these hooks on the wrapped module (``ddp.module``); their updates depend
only on the epoch and the step, so every worker does the same without communication.
Gradients are dropped after DDP has averaged them, so every parameter still takes part
in every backward (no unused-parameter errors).

Adding a method: a config class with its published defaults in
:mod:`core.methods.configs`, a :class:`Method` subclass implementing ``forward``, and the
``@register_method`` line that joins them. ``self.cfg`` is the method's own config.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from core import losses
from core.methods.configs import METHODS
from core.models.heads import ProjectionHead

if TYPE_CHECKING:
    from core.config import ExperimentConfig
    from core.methods.configs import MethodConfig


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` for a momentum encoder / EMA teacher."""
    twin = copy.deepcopy(module)
    for parameter in twin.parameters():
        parameter.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` over all parameters.

    Batch-norm statistics are not averaged: the target network keeps its own, as in
    MoCo, BYOL and DINO.
    """
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1 - momentum)


class Method(nn.Module):
    """Base class: holds the online ``encoder`` (evaluation reads its features)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: nn.Module,
        num_classes: int,
        class_weights: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg: MethodConfig = cfg.method
        self._model_cfg = cfg.model
        self.encoder = encoder
        self.num_classes = num_classes
        self.feature_dim: int = encoder.feature_dim
        self.register_buffer(
            "class_weights",
            class_weights if class_weights is not None else torch.ones(max(num_classes, 1)),
            persistent=False,
        )
        self.use_class_weights = class_weights is not None
        self.epoch = 0  # set by on_epoch_start; counts from 0

    def forward(self, view1: Tensor, view2: Tensor, labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of epoch ``epoch`` (from 0, also after a resume)."""
        self.epoch = epoch

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters the method's recipe holds still at ``self.epoch`` (none here)."""
        return []

    def on_before_optimizer_step(self) -> None:
        """Drop the gradients of :meth:`frozen_parameters` so the optimizer skips them."""
        for parameter in self.frozen_parameters():
            parameter.grad = None

    def on_after_optimizer_step(self, progress: float) -> None:
        """Non-gradient updates after each optimizer step; ``progress`` in [0, 1]."""

    def classify(self, features: Tensor) -> Tensor | None:
        """Class logits ``(B, num_classes)`` of the method's own classifier for encoder
        ``features``, or None for a method without one (contrastive heads predict no
        classes). ``train.scored_classifier='own'`` scores this instead of an evaluation
        head trained on the frozen encoder (QUACLRS's backbone tables)."""
        return None

    def _weights(self) -> Tensor | None:
        return self.class_weights if self.use_class_weights else None

    def _projection_head(self, out_dim: int | None = None) -> ProjectionHead:
        model = self._model_cfg
        return ProjectionHead(self.feature_dim, model.proj_hidden_dim, out_dim or model.proj_dim)


def build_method(
    cfg: ExperimentConfig,
    encoder: nn.Module,
    num_classes: int,
    class_counts: np.ndarray | None = None,
) -> Method:
    """The method named by ``cfg.method.name`` around ``encoder``.

    ``class_counts`` (training-set samples per class) is needed only when
    ``method.class_weights`` asks for inverse-frequency CE weights.
    """
    name = cfg.method.name
    if name not in METHODS:
        raise ValueError(f"unknown method.name {name!r}; valid: {', '.join(sorted(METHODS))}")
    if not hasattr(encoder, "feature_dim"):
        raise TypeError("the encoder must expose feature_dim (build it with build_encoder)")
    uses_labels = METHODS[name].config.uses_labels
    if num_classes < 1 and uses_labels:
        raise ValueError(f"method {name!r} needs num_classes >= 1, got {num_classes}")
    class_weights = None
    if cfg.method.class_weights and uses_labels:
        if class_counts is None:
            raise ValueError(
                "method.class_weights=true needs the training set's class_counts; pass them "
                "to build_method or set method.class_weights=false"
            )
        if len(class_counts) != num_classes:
            raise ValueError(
                f"class_counts has {len(class_counts)} entries but num_classes={num_classes}"
            )
        class_weights = losses.inverse_frequency_weights(class_counts)
    return METHODS[name].load()(cfg, encoder, num_classes, class_weights)
