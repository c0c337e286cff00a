"""MoCo v1 and v2: InfoNCE against a queue of keys from a momentum encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core import losses
from core.methods.base import Method, ema_update, momentum_copy
from core.models.heads import mlp


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
        dim = cfg.method.projector_dim
        queue = F.normalize(torch.randn(cfg.method.queue_size, dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_pointer", torch.zeros(1, dtype=torch.long))

    def _build_head(self) -> nn.Module:
        """MoCo v1's head: one linear layer to ``projector_dim`` (128, "fc 128")."""
        return nn.Linear(self.feature_dim, self.cfg.projector_dim)

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
        ema_update(self.momentum_encoder, self.encoder, self.cfg.momentum)
        ema_update(self.momentum_head, self.head, self.cfg.momentum)


class MoCoV2(MoCo):
    """MoCo v2 (Chen, Fan, Girshick, He 2020): MoCo with an MLP projection head."""

    def _build_head(self) -> nn.Module:
        """Two linear layers with ReLU, no batch norm: 2048 hidden, 128 out."""
        method = self.cfg
        return mlp([self.feature_dim, method.projector_hidden_dim, method.projector_dim])
