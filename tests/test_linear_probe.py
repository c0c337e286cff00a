"""Linear probing (QUACLRS Tables 5-8): only the linear layer learns; the backbone, its
weights and its batch-norm statistics, stay exactly as loaded."""

from __future__ import annotations

import torch

from core.config import ExperimentConfig
from core.methods import build_method
from core.models import build_encoder
from core.optim import build_optimizer


def _probe(seed: int = 0) -> torch.nn.Module:
    cfg = ExperimentConfig.from_dict(
        {
            "model": {"encoder": "resnet18", "width": 8},
            "method": {"name": "linear_probe", "class_weights": False},
            "optim": {"name": "adam", "lr": 1e-2, "weight_decay": 1e-4, "warmup_epochs": 0},
            "train": {"batch_size": 8, "scored_classifier": "own"},
        }
    )
    torch.manual_seed(seed)
    method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=5)
    return method, build_optimizer(cfg.optim, method)


def test_only_the_linear_layer_trains_and_the_backbone_keeps_its_statistics() -> None:
    method, optimizer = _probe()
    assert isinstance(method.head, torch.nn.Linear)
    assert method.head.weight.shape == (5, method.feature_dim)
    trained = {name for name, p in method.named_parameters() if p.requires_grad}
    assert trained == {"head.weight", "head.bias"}
    before = {key: value.clone() for key, value in method.encoder.state_dict().items()}
    head_before = method.head.weight.clone()
    method.train()
    assert method.training and not method.encoder.training  # BN statistics stay as loaded
    maps = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 5
    for _ in range(3):
        out = method(maps, None, labels)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    after = method.encoder.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before), "the backbone moved"
    assert not torch.equal(head_before, method.head.weight)
    assert set(out) == {"loss", "ce", "accuracy"}


def test_the_probe_is_scored_through_its_own_linear_layer() -> None:
    method, _ = _probe()
    method.eval()
    features = method.encoder(torch.randn(4, 1, 32, 32))
    logits = method.classify(features)
    assert logits.shape == (4, 5)
    assert torch.allclose(logits, method.head(features))
