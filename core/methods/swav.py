"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes over prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core import losses
from core.methods.base import Method


class SwAV(Method):
    """SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster codes over
    learnable prototypes. Prototypes are renormalised after every step, as in the paper.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._projection_head()
        self.prototypes = nn.Linear(cfg.model.proj_dim, cfg.method.prototypes, bias=False)
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
            self.cfg.epsilon,
            self.cfg.sinkhorn_iterations,
        )
        return {"loss": loss, "swav": loss.detach()}

    def on_after_optimizer_step(self, progress):
        self._normalise_prototypes()
