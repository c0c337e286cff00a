"""BYOL: an online network with a predictor regresses an EMA target network."""

from __future__ import annotations

import torch

from core import losses
from core.methods.base import Method, ema_update, momentum_copy
from core.models.heads import mlp


class BYOL(Method):
    """BYOL (Grill et al. 2020): an online network with a predictor regresses the
    projections of an EMA target network; momentum follows a cosine schedule to 1.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        method = cfg.method
        # Projector and predictor: one hidden layer of 4096 with batch norm and ReLU, 256 out.
        dim = method.projector_dim
        self.head = mlp([self.feature_dim, method.projector_hidden_dim, dim], batch_norm=True)
        self.predictor = mlp([dim, method.predictor_hidden_dim, dim], batch_norm=True)
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
        momentum = losses.cosine_momentum(self.cfg.momentum, progress)
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_head, self.head, momentum)
