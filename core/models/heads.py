"""Heads on top of the encoder's pooled features (CLAR 3.2).

The projection head maps features to the space where the contrastive loss is applied;
the evaluation head has the same architecture and is trained on the frozen encoder.
Both are three fully connected layers with ReLU between them, as in the paper; the
evaluation head can also be one linear layer (linear probing, QUACLRS).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def mlp(dims: Sequence[int], batch_norm: bool = False) -> nn.Sequential:
    """Linear layers through ``dims`` with ReLU (and optionally BatchNorm) between them.

    The last layer is plain linear: no activation, so logits and embeddings are unbounded.
    """
    if len(dims) < 2 or min(dims) < 1:
        raise ValueError(f"an MLP needs at least two positive sizes, got {list(dims)}")
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        last = index == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=last or not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(d_out))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """Three fully connected layers with ReLU: ``in_dim -> hidden -> hidden -> out_dim``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.layers = mlp([in_dim, hidden_dim, hidden_dim, out_dim])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class EvaluationHead(ProjectionHead):
    """Same architecture as the projection head, ``out_dim`` = number of classes.

    Trained on detached features of the frozen encoder to measure representation quality.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, hidden_dim, num_classes)
        self.num_classes = num_classes


class DINOHead(nn.Module):
    """DINO's head: an MLP to a bottleneck, L2 normalisation, then a weight-normalised
    linear layer to ``out_dim`` logits whose norm (``g``) is frozen at 1 (Caron et al. 2021).
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim])
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad = False

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def build_evaluation_head(kind: str, in_dim: int, hidden_dim: int, num_classes: int) -> nn.Module:
    """The evaluation head named by ``model.eval_head``.

    ``mlp`` is CLAR's three-layer head; ``linear`` a single ``nn.Linear``: the linear probe
    of QUACLRS (Tables 5-8), which measures how linearly separable the frozen features are,
    so a strong head cannot make up for a weak representation.
    """
    if kind == "mlp":
        return EvaluationHead(in_dim, hidden_dim, num_classes)
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    raise ValueError(f"model.eval_head={kind!r} is unknown; valid: 'mlp', 'linear'")
