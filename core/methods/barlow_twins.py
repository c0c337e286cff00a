"""Barlow Twins: the cross-correlation of two views' projections driven to identity."""

from __future__ import annotations

from core import losses
from core.methods.base import Method
from core.models.heads import mlp


class BarlowTwins(Method):
    """Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views' projections
    driven to the identity (invariance + redundancy reduction).
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        method = cfg.method
        # Three linear layers of 8192, batch norm and ReLU after the first two. The loss
        # standardises each output unit over the batch (the paper's last, affine-free BN).
        hidden = method.projector_hidden_dim
        dims = [self.feature_dim, hidden, hidden, method.projector_dim]
        self.head = mlp(dims, batch_norm=True)

    def forward(self, view1, view2, labels):
        # Separate passes: each view's batch statistics are its own, as in the paper.
        z1 = self.head(self.encoder(view1))
        z2 = self.head(self.encoder(view2))
        loss = losses.barlow_twins_loss(z1, z2, self.cfg.lambda_offdiag)
        return {"loss": loss, "barlow_twins": loss.detach()}
