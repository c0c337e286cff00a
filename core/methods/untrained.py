"""The untrained-encoder control: random weights, batch-norm statistics from the data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from core.methods.base import Method


class Untrained(Method):
    """No loss and no optimizer step. With ``calibrate_batch_norm``, ``calibrate`` runs
    the encoder over training batches in train mode so that its batch norms hold the
    data's statistics (a cumulative average); otherwise it does nothing and the encoder
    is evaluated exactly as initialised."""

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        if self.cfg.calibrate_batch_norm:
            for norm in encoder.modules():
                if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                    norm.reset_running_stats()
                    norm.momentum = None  # a cumulative average over every batch

    @torch.no_grad()
    def calibrate(self, views: Tensor) -> None:
        if self.cfg.calibrate_batch_norm:
            self.encoder.train()
            self.encoder(views)

    def forward(self, view1: Tensor, view2: Tensor, labels: Tensor) -> dict[str, Tensor]:
        raise RuntimeError("the untrained control has no loss; the loop calls calibrate()")
