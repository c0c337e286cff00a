"""Training methods: one small class per method behind one interface.

``method(view1, view2, labels)`` returns a dict with ``"loss"`` (the fp32 scalar to
backpropagate), its components and cheap metrics (all detached except ``loss``).
``on_after_optimizer_step(progress)`` runs the updates that are not gradient steps:
momentum encoders, EMA teachers, prototype normalisation. Everything a method owns
(heads, momentum copies, queues, DINO's center) is a submodule or registered buffer, so
``state_dict()`` checkpoints it and DDP/SyncBatchNorm see it.

Under DDP call ``on_after_optimizer_step`` on the wrapped module (``ddp.module``); its
updates are deterministic, so every worker stays in sync without communication.

Adding a method: subclass :class:`Method`, implement ``forward``, add one line to
``METHODS``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import losses
from core.models.heads import DINOHead, ProjectionHead, mlp

if TYPE_CHECKING:
    from core.config import ExperimentConfig


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
        self.cfg = cfg.method
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

    def forward(self, view1: Tensor, view2: Tensor, labels: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def on_after_optimizer_step(self, progress: float) -> None:
        """Non-gradient updates after each optimizer step; ``progress`` in [0, 1]."""

    def _weights(self) -> Tensor | None:
        return self.class_weights if self.use_class_weights else None

    def _projection_head(self, out_dim: int | None = None) -> ProjectionHead:
        model = self._model_cfg
        return ProjectionHead(self.feature_dim, model.proj_hidden_dim, out_dim or model.proj_dim)


class Supervised(Method):
    """Cross-entropy on the projection head's output, which has one unit per class."""

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._projection_head(num_classes)

    def forward(self, view1, view2, labels):
        logits = self.head(self.encoder(torch.cat([view1, view2])))
        both = torch.cat([labels, labels])
        ce, _ = losses.labelled_cross_entropy(logits, both, self._weights())
        with torch.no_grad():
            labelled = both >= 0
            correct = ((logits.argmax(1) == both) & labelled).sum()
            accuracy = correct / labelled.sum().clamp(min=1)
        return {"loss": ce, "ce": ce.detach(), "accuracy": accuracy.float()}


class SimCLR(Method):
    """NT-Xent on the projections of two views (Chen et al. 2020; CLAR's self-supervised)."""

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._projection_head()

    def project(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, Tensor]:
        # One encoder pass over both views: batch norm sees the whole 2B batch, as in
        # SimCLR, and the encoder runs once.
        z = self.head(self.encoder(torch.cat([view1, view2])))
        return z.chunk(2)

    def forward(self, view1, view2, labels):
        z1, z2 = self.project(view1, view2)
        loss = losses.nt_xent(z1, z2, self.cfg.temperature)
        return {
            "loss": loss,
            "nt_xent": loss.detach(),
            "contrastive_accuracy": losses.contrastive_accuracy(z1, z2),
        }


class CLAR(SimCLR):
    """SimCLR plus a linear layer from the projection to the classes, trained with
    cross-entropy on whichever samples of the batch are labelled (CLAR Eq. 3).
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.classifier = nn.Linear(cfg.model.proj_dim, num_classes)

    def forward(self, view1, view2, labels):
        z1, z2 = self.project(view1, view2)
        out = losses.clar_loss(
            z1,
            z2,
            self.classifier(z1),
            self.classifier(z2),
            labels,
            self.cfg.temperature,
            self.cfg.ce_weight,
            self._weights(),
        )
        out["contrastive_accuracy"] = losses.contrastive_accuracy(z1, z2)
        return out


class MoCo(Method):
    """MoCo v1 (He et al. 2020): linear projection, momentum key encoder, queue of keys.

    The loss is the original asymmetric InfoNCE (queries from view 1, keys from view 2).
    Keys are gathered over workers before they enter the queue, so every worker holds
    the same queue; ``K`` must be a multiple of the global batch (checked by the config).
    Shuffled batch norm is not used; under DDP, SyncBatchNorm is the training loop's
    alternative.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._build_head()
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_head = momentum_copy(self.head)
        dim = cfg.model.proj_dim
        queue = F.normalize(torch.randn(cfg.method.moco_queue_size, dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_pointer", torch.zeros(1, dtype=torch.long))

    def _build_head(self) -> nn.Module:
        return nn.Linear(self.feature_dim, self._model_cfg.proj_dim)

    def forward(self, view1, view2, labels):
        query = self.head(self.encoder(view1))
        with torch.no_grad():
            key = F.normalize(self.momentum_head(self.momentum_encoder(view2)).float(), dim=1)
        # The queue is cloned: it is updated in place below, after the loss has used it.
        loss = losses.moco_loss(query, key, self.queue.clone(), self.cfg.temperature)
        if self.training:
            losses.enqueue(self.queue, self.queue_pointer, losses.gather_no_grad(key))
        return {
            "loss": loss,
            "info_nce": loss.detach(),
            "contrastive_accuracy": losses.contrastive_accuracy(query, key),
        }

    def on_after_optimizer_step(self, progress):
        ema_update(self.momentum_encoder, self.encoder, self.cfg.moco_momentum)
        ema_update(self.momentum_head, self.head, self.cfg.moco_momentum)


class MoCoV2(MoCo):
    """MoCo v2 (Chen et al. 2020): MoCo with an MLP projection head."""

    def _build_head(self) -> nn.Module:
        return self._projection_head()


class BYOL(Method):
    """BYOL (Grill et al. 2020): an online network with a predictor regresses the
    projections of an EMA target network; momentum follows a cosine schedule to 1.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._projection_head()
        dim, hidden = cfg.model.proj_dim, cfg.model.proj_hidden_dim
        self.predictor = mlp([dim, hidden, dim], batch_norm=True)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_head = momentum_copy(self.head)

    def forward(self, view1, view2, labels):
        both = torch.cat([view1, view2])
        p1, p2 = self.predictor(self.head(self.encoder(both))).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_head(self.target_encoder(both)).chunk(2)
        loss = losses.byol_loss(p1, t2) + losses.byol_loss(p2, t1)
        return {"loss": loss, "byol": loss.detach()}

    def on_after_optimizer_step(self, progress):
        momentum = losses.cosine_momentum(self.cfg.byol_momentum, progress)
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_head, self.head, momentum)


class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views' projections
    driven to the identity (invariance + redundancy reduction).
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._projection_head()

    def forward(self, view1, view2, labels):
        # Separate passes: each view's batch statistics are its own, as in the paper.
        z1 = self.head(self.encoder(view1))
        z2 = self.head(self.encoder(view2))
        loss = losses.barlow_twins_loss(z1, z2, self.cfg.barlow_lambda)
        return {"loss": loss, "barlow_twins": loss.detach()}


class DINO(Method):
    """DINO (Caron et al. 2021) with two views: the student matches the centred,
    sharpened output of an EMA teacher of the other view.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        model, method = cfg.model, cfg.method
        self.head = DINOHead(
            self.feature_dim, model.proj_hidden_dim, model.proj_dim, method.dino_out_dim
        )
        self.teacher_encoder = momentum_copy(self.encoder)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, method.dino_out_dim))

    def forward(self, view1, view2, labels):
        both = torch.cat([view1, view2])
        student = list(self.head(self.encoder(both)).chunk(2))
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_encoder(both)).chunk(2))
        loss = losses.dino_loss(
            student,
            teacher,
            self.center,
            self.cfg.dino_teacher_temperature,
            self.cfg.dino_student_temperature,
        )
        if self.training:
            losses.dino_center_update(self.center, teacher, self.cfg.dino_center_momentum)
        return {"loss": loss, "dino": loss.detach()}

    def on_after_optimizer_step(self, progress):
        momentum = losses.cosine_momentum(self.cfg.dino_momentum, progress)
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)


class SwAV(Method):
    """SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster codes over
    learnable prototypes. Prototypes are renormalised after every step, as in the paper.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._projection_head()
        self.prototypes = nn.Linear(cfg.model.proj_dim, cfg.method.swav_prototypes, bias=False)
        self._normalise_prototypes()

    @torch.no_grad()
    def _normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, view1, view2, labels):
        z = F.normalize(self.head(self.encoder(torch.cat([view1, view2]))), dim=1)
        scores1, scores2 = self.prototypes(z).chunk(2)
        loss = losses.swav_loss(
            scores1,
            scores2,
            self.cfg.temperature,
            self.cfg.swav_epsilon,
            self.cfg.swav_sinkhorn_iterations,
        )
        return {"loss": loss, "swav": loss.detach()}

    def on_after_optimizer_step(self, progress):
        self._normalise_prototypes()


METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "simclr": SimCLR,
    "clar": CLAR,
    "moco": MoCo,
    "mocov2": MoCoV2,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "dino": DINO,
    "swav": SwAV,
}

# Methods with a cross-entropy term, where method.class_weights means something.
LABELLED_METHODS = frozenset({"supervised", "clar"})


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
    if num_classes < 1 and name in LABELLED_METHODS:
        raise ValueError(f"method {name!r} needs num_classes >= 1, got {num_classes}")
    class_weights = None
    if cfg.method.class_weights and name in LABELLED_METHODS:
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
    return METHODS[name](cfg, encoder, num_classes, class_weights)
