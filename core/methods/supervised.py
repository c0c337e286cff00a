"""The supervised baseline: cross-entropy through the same encoder and head shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from core import losses
from core.methods.base import Method

if TYPE_CHECKING:
    from core.config import ExperimentConfig


class Supervised(Method):
    """Cross-entropy on the projection head's output, which has one unit per class."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: nn.Module,
        num_classes: int,
        class_weights: Tensor | None = None,
    ) -> None:
        super().__init__(cfg, encoder, num_classes, class_weights)
        self.head = self._build_head(num_classes)

    def _build_head(self, num_classes: int) -> nn.Module:
        """The classifier on the encoder's features: CLAR's head shape, one unit a class."""
        return self._projection_head(num_classes)

    def _logits(self, inputs: Tensor) -> Tensor:
        return self.head(self.encoder(inputs))

    def forward(self, view1: Tensor, view2: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        """Cross-entropy on the batch: one view per clip (``SupervisedConfig.views``; the
        loop passes None as the second), or both views' clips when given two."""
        if view2 is None:
            inputs, targets = view1, labels
        else:
            inputs, targets = torch.cat([view1, view2]), torch.cat([labels, labels])
        logits = self._logits(inputs)
        ce, _ = losses.labelled_cross_entropy(logits, targets, self._weights())
        with torch.no_grad():
            labelled = targets >= 0
            correct = ((logits.argmax(1) == targets) & labelled).sum()
            accuracy = correct / labelled.sum().clamp(min=1)
        return {"loss": ce, "ce": ce.detach(), "accuracy": accuracy.float()}

    def classify(self, features: Tensor) -> Tensor:
        """The trained head's logits: the classifier QUACLRS's backbone tables score."""
        return self.head(features)
