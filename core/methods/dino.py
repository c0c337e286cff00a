"""DINO with two views: the student matches a centred, sharpened EMA teacher."""

from __future__ import annotations

import torch
from torch import nn

from core import losses
from core.methods.base import Method, ema_update, momentum_copy
from core.models.heads import DINOHead


class DINO(Method):
    """DINO (Caron et al. 2021) with two views: the student matches the centred,
    sharpened output of an EMA teacher of the other view.

    The student's last layer gets no update during the first ``freeze_last_layer_epochs``
    (DINO's ``freeze_last_layer``; its code notes that this helps training).
    """

    def __init__(self, cfg, encoder, num_classes, class_weights=None):
        super().__init__(cfg, encoder, num_classes, class_weights)
        method = cfg.method
        self.head = DINOHead(
            self.feature_dim,
            method.head_hidden_dim,
            method.bottleneck_dim,
            method.out_dim,
            norm_last_layer=method.norm_last_layer,
        )
        self.teacher_encoder = momentum_copy(self.encoder)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, method.out_dim))

    def forward(self, view1, view2, labels):
        both = torch.cat([view1, view2])
        student = list(self.head(self.encoder(both)).chunk(2))
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_encoder(both)).chunk(2))
        loss = losses.dino_loss(
            student,
            teacher,
            self.center,
            self.cfg.teacher_temperature,
            self.cfg.student_temperature,
        )
        if self.training:
            losses.dino_center_update(self.center, teacher, self.cfg.center_momentum)
        return {"loss": loss, "dino": loss.detach()}

    def frozen_parameters(self) -> list[nn.Parameter]:
        if self.epoch < self.cfg.freeze_last_layer_epochs:
            return list(self.head.last_layer.parameters())
        return []

    def on_after_optimizer_step(self, progress):
        momentum = losses.cosine_momentum(self.cfg.momentum, progress)
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)
