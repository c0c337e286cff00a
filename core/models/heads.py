"""Heads on top of the encoder's pooled features (CLAR 3.2).

The projection head maps features to the space where the contrastive loss is applied;
the evaluation head has the same architecture and is trained on the frozen encoder.
Both are three fully connected layers with ReLU between them, as in the paper; the
evaluation head can also be one linear layer (linear probing, QUACLRS).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

_RELU = partial(nn.ReLU, inplace=True)


def mlp(
    dims: Sequence[int],
    batch_norm: bool = False,
    activation: Callable[[], nn.Module] = _RELU,
) -> nn.Sequential:
    """Linear layers through ``dims`` with ``activation`` (ReLU unless told; optionally
    after BatchNorm) between them.

    The last layer is plain linear: no activation, so logits and embeddings are unbounded.
    A linear layer followed by batch norm has no bias (the norm's shift replaces it).
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
            layers.append(activation())
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
    """DINO's head (Caron et al. 2021): a three-layer MLP with GELU to a bottleneck, L2
    normalisation, then a weight-normalised linear layer without bias to ``out_dim``
    logits.

    With ``norm_last_layer`` (DINO's default) the weight-norm gain ``g`` is fixed at 1, so
    every output unit is a unit vector: the paper found this stabilises training. The MLP's
    linear layers start from a truncated normal with std 0.02 and zero bias, as in DINO's
    code; the last layer keeps PyTorch's default initialisation, as there.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        out_dim: int,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = mlp([in_dim, hidden_dim, hidden_dim, bottleneck_dim], activation=nn.GELU)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        gain = self.last_layer.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

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
