"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes over prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import losses
from core.methods.base import Method
from core.models.heads import mlp


class SwAV(Method):
    """SwAV (Caron et al. 2020): swapped prediction of Sinkhorn-Knopp cluster codes over
    learnable prototypes. Prototypes are renormalised after every step, as in the paper,
    and get no update during the first ``freeze_prototypes_epochs``.

    Below a global batch of 256 each worker keeps a queue of its past batches' normalised
    projections, one per view, as SwAV's code does: from ``queue_start_epoch`` it fills,
    and once full its prototype scores join the Sinkhorn step (the sums there are
    all-reduced, so the equipartition spans every worker's queue and batch). The queue
    is not checkpointed: a checkpoint written by rank 0 would hand every worker rank 0's
    queue, counting the same features once per worker; after a resume it refills.
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        method = cfg.method
        # Projection MLP: 2048 hidden with batch norm and ReLU, 128 out.
        dims = [self.feature_dim, method.projector_hidden_dim, method.projector_dim]
        self.head = mlp(dims, batch_norm=True)
        self.prototypes = nn.Linear(method.projector_dim, method.prototypes, bias=False)
        self._normalise_prototypes()
        queue_rows = 0
        if method.uses_queue(cfg.train.batch_size):
            queue_rows = method.queue_length // losses.world_size()
        queue = torch.zeros(2, queue_rows, method.projector_dim)
        self.register_buffer("queue", queue, persistent=False)
        self.queue_filled = 0  # rows of the queue that hold features

    @torch.no_grad()
    def _normalise_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    @property
    def queue_active(self) -> bool:
        """Whether the queue fills this epoch (it exists and its start epoch has come)."""
        return self.queue.shape[1] > 0 and self.epoch >= self.cfg.queue_start_epoch

    def _queued_scores(self) -> tuple[Tensor | None, Tensor | None]:
        """Each view's prototype scores of the queued features, once the queue is full
        (until then its zero rows would count as samples)."""
        if not self.queue_active or self.queue_filled < self.queue.shape[1]:
            return None, None
        with torch.no_grad():
            queued1, queued2 = self.prototypes(self.queue).unbind(0)
        return queued1, queued2

    @torch.no_grad()
    def _enqueue(self, z: Tensor) -> None:
        """Put this batch's projections ``(2B, D)`` (view 1, then view 2) first, dropping
        the oldest."""
        rows = self.queue.shape[1]
        batch = z.view(2, -1, z.shape[1]).to(self.queue.dtype)
        self.queue.copy_(torch.cat([batch, self.queue], dim=1)[:, :rows])
        self.queue_filled = min(rows, self.queue_filled + batch.shape[1])

    def forward(self, view1, view2, labels):
        z = F.normalize(self.head(self.encoder(torch.cat([view1, view2]))), dim=1)
        scores1, scores2 = self.prototypes(z).chunk(2)
        queued1, queued2 = self._queued_scores()
        loss = losses.swav_loss(
            scores1,
            scores2,
            self.cfg.temperature,
            self.cfg.epsilon,
            self.cfg.sinkhorn_iterations,
            queued1,
            queued2,
        )
        if self.training and self.queue_active:
            self._enqueue(z.detach())
        return {"loss": loss, "swav": loss.detach()}

    def frozen_parameters(self) -> list[nn.Parameter]:
        if self.epoch < self.cfg.freeze_prototypes_epochs:
            return [self.prototypes.weight]
        return []

    def on_after_optimizer_step(self, progress):
        self._normalise_prototypes()
