"""Linear probing (QUACLRS Tables 5-8): a frozen backbone and one trained linear layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from core.methods.supervised import Supervised

if TYPE_CHECKING:
    from core.config import ExperimentConfig


class LinearProbe(Supervised):
    """Cross-entropy through one linear layer on the features of a frozen encoder.

    The encoder's weights never receive a gradient and its batch-norm statistics are not
    updated (it stays in eval mode while the method trains), so the backbone that is
    scored is exactly the one loaded: ImageNet's (QUACLRS Table 5) or a random one. Only
    the linear layer is trained and scored (``train.scored_classifier='own'``); the loss
    and its metrics are the supervised method's."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: nn.Module,
        num_classes: int,
        class_weights: Tensor | None = None,
    ) -> None:
        super().__init__(cfg, encoder, num_classes, class_weights)
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)

    def _build_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.feature_dim, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        """Train the head only: the frozen encoder keeps its batch-norm statistics."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _logits(self, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.encoder(inputs)
        return self.head(features.float())

    def classify(self, features: Tensor) -> Tensor:
        """The linear layer's logits: what Tables 5-8 score."""
        return self.head(features.float())
