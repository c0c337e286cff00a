"""SimCLR and CLAR: NT-Xent on two views, CLAR adding cross-entropy on labelled clips."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core import losses
from core.methods.base import Method


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
