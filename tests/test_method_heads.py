"""Each method's head at its own paper's published shape, the parts held still in the
first epoch, and SwAV's queue for small batches."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from ablations.run_ssl_methods import build_parser
from core import losses
from core.config import ConfigError, ExperimentConfig
from core.methods import Method, build_method
from core.methods.configs import SwAVConfig
from core.models import build_encoder
from core.optim import build_optimizer

FEATURES = 512  # ResNet18's pooled features at its default width
OPTIM = {"name": "adam", "lr": 1e-2, "weight_decay": 0.0, "warmup_epochs": 0}


def _method(name: str, method_fields: dict[str, Any] | None = None, **sections: Any) -> Method:
    """Method ``name`` around a ResNet18 from the project's builders; published defaults
    unless ``method_fields`` says otherwise."""
    cfg = ExperimentConfig.from_dict(
        {
            "method": {"name": name, **(method_fields or {})},
            "optim": OPTIM,
            **sections,
        }
    )
    encoder = build_encoder(cfg.model, 1)
    return build_method(cfg, encoder, num_classes=10)


def _layers(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The linear and batch-norm layers of ``module`` in order, with their weight shapes."""
    return [
        (type(layer).__name__, tuple(layer.weight.shape))
        for layer in module.modules()
        if isinstance(layer, nn.Linear | nn.BatchNorm1d)
    ]


PUBLISHED_HEADS = {
    # MoCo v1: "fc 128".
    "moco": {"head": [("Linear", (128, FEATURES))]},
    # MoCo v2: 2048 hidden, ReLU, 128 out, no batch norm.
    "mocov2": {"head": [("Linear", (2048, FEATURES)), ("Linear", (128, 2048))]},
    # BYOL: 4096 hidden with BN + ReLU, 256 out; the predictor of the same shape.
    "byol": {
        "head": [("Linear", (4096, FEATURES)), ("BatchNorm1d", (4096,)), ("Linear", (256, 4096))],
        "predictor": [("Linear", (4096, 256)), ("BatchNorm1d", (4096,)), ("Linear", (256, 4096))],
    },
    # Barlow Twins: three layers of 8192, BN + ReLU after the first two.
    "barlow_twins": {
        "head": [
            ("Linear", (8192, FEATURES)),
            ("BatchNorm1d", (8192,)),
            ("Linear", (8192, 8192)),
            ("BatchNorm1d", (8192,)),
            ("Linear", (8192, 8192)),
        ]
    },
    # DINO: 2048 -> 2048 -> 256 bottleneck, then the last layer to 65,536 (its weight-norm
    # parametrisation hides the Linear's weight from this listing; checked below).
    "dino": {
        "head.mlp": [
            ("Linear", (2048, FEATURES)),
            ("Linear", (2048, 2048)),
            ("Linear", (256, 2048)),
        ]
    },
    # SwAV: 2048 hidden with BN + ReLU, 128 out, 3,000 prototypes.
    "swav": {
        "head": [("Linear", (2048, FEATURES)), ("BatchNorm1d", (2048,)), ("Linear", (128, 2048))],
        "prototypes": [("Linear", (3000, 128))],
    },
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_HEADS))
def test_each_method_builds_its_papers_head_from_the_default_config(name):
    # The model section's sizes shape the SimCLR / CLAR head only, never these.
    method = _method(name, model={"proj_hidden_dim": 96, "proj_dim": 64})
    assert method.feature_dim == FEATURES
    for path, expected in PUBLISHED_HEADS[name].items():
        assert _layers(method.get_submodule(path)) == expected, (name, path)


def test_the_dino_head_is_gelu_then_a_weight_normalised_last_layer_with_its_gain_fixed():
    head = _method("dino").head
    assert [type(layer) for layer in head.mlp if not isinstance(layer, nn.Linear)] == [nn.GELU] * 2
    weight_norm = head.last_layer.parametrizations.weight
    gain, direction = weight_norm.original0, weight_norm.original1
    assert tuple(direction.shape) == (65_536, 256) and head.last_layer.bias is None
    assert tuple(gain.shape) == (65_536, 1) and not gain.requires_grad
    assert torch.equal(gain, torch.ones_like(gain))
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(65_536))


def test_simclr_and_clar_keep_reading_the_model_sections_projection_sizes():
    for name in ("simclr", "clar"):
        method = _method(name, model={"proj_hidden_dim": 96, "proj_dim": 64})
        assert _layers(method.head)[-1] == ("Linear", (64, 96)), name


def test_a_set_flag_on_a_head_field_changes_that_methods_head():
    args = build_parser().parse_args(
        ["--set", "method.projector_hidden_dim=1024", "--set", "method.projector_dim=64"]
    )
    cfg = ExperimentConfig.from_dict({"method": {"name": "byol"}}).with_overrides(
        dict(args.settings)
    )
    method = build_method(cfg, build_encoder(cfg.model, 1), num_classes=10)
    assert _layers(method.head) == [
        ("Linear", (1024, FEATURES)),
        ("BatchNorm1d", (1024,)),
        ("Linear", (64, 1024)),
    ]
    assert _layers(method.predictor)[0] == ("Linear", (4096, 64))
    with pytest.raises(ConfigError, match="method.projector_dim: Input should be greater than 0"):
        cfg.with_overrides({"method.projector_dim": 0})


def _train_steps(method: Method, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """``steps`` optimizer steps on random views, with the hooks the training loop calls."""
    views = torch.randn(2, 4, 1, 32, 16)
    for _ in range(steps):
        out = method(views[0], views[1], torch.full((4,), -1))
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        method.on_before_optimizer_step()
        optimizer.step()
        method.on_after_optimizer_step(0.5)


# Small heads: the test is about the epoch, not the size (DINO's default takes 6 s here).
SMALL_SWAV = {"projector_hidden_dim": 64, "projector_dim": 32, "prototypes": 100}
SMALL_DINO = {"head_hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 1000}


@pytest.mark.parametrize(
    ("name", "small", "held_still", "trained_meanwhile"),
    [
        ("swav", SMALL_SWAV, "prototypes.weight", "head.0.weight"),
        (
            "dino",
            SMALL_DINO,
            "head.last_layer.parametrizations.weight.original1",
            "head.mlp.0.weight",
        ),
    ],
)
def test_swav_prototypes_and_dino_last_layer_hold_still_in_the_first_epoch_only(
    name, small, held_still, trained_meanwhile
):
    torch.manual_seed(0)
    method = _method(name, small, model={"width": 4})
    optimizer = build_optimizer(ExperimentConfig.from_dict({"optim": OPTIM}).optim, method)
    parameters = dict(method.named_parameters())
    frozen, trained = parameters[held_still], parameters[trained_meanwhile]
    frozen_start, trained_start = frozen.detach().clone(), trained.detach().clone()
    # SwAV renormalises its (unit) prototypes after every step: rounding, not an update.
    unchanged = partial(torch.allclose, rtol=0, atol=1e-6)
    method.on_epoch_start(0)
    _train_steps(method, optimizer, 2)
    assert unchanged(frozen, frozen_start), f"{held_still} moved in the first epoch"
    assert not unchanged(trained, trained_start), "the rest of the head must train"
    method.on_epoch_start(1)
    _train_steps(method, optimizer, 2)
    assert not unchanged(frozen, frozen_start), f"{held_still} must train after the first epoch"


@pytest.fixture
def sinkhorn_rows(monkeypatch) -> list[int]:
    """The number of samples each Sinkhorn call equipartitions."""
    rows: list[int] = []
    sinkhorn = losses.sinkhorn

    def counting(scores, *args, **kwargs):
        rows.append(scores.shape[0])
        return sinkhorn(scores, *args, **kwargs)

    monkeypatch.setattr(losses, "sinkhorn", counting)
    return rows


def test_swav_queue_joins_the_sinkhorn_step_below_a_batch_of_256_once_full(sinkhorn_rows):
    torch.manual_seed(0)
    queue = {"queue_length": 8, "queue_start_epoch": 1}
    method = _method("swav", queue, model={"width": 4}, train={"batch_size": 4})
    views = torch.randn(2, 4, 1, 32, 16)
    labels = torch.full((4,), -1)
    method.on_epoch_start(0)  # before queue_start_epoch: no queue
    method(views[0], views[1], labels)
    assert method.queue_filled == 0 and sinkhorn_rows == [4, 4]
    method.on_epoch_start(1)
    for _ in range(3):  # two batches fill the queue of 8; the third uses it
        method(views[0], views[1], labels)
    assert sinkhorn_rows[2:] == [4, 4, 4, 4, 12, 12]
    assert method.queue.shape == (2, 8, 128) and method.queue_filled == 8
    assert torch.allclose(method.queue.norm(dim=2), torch.ones(2, 8))
    method.eval()
    before = method.queue.clone()
    method(views[0], views[1], labels)
    assert torch.equal(method.queue, before), "evaluation must not enqueue"
    big_batch = _method("swav", model={"width": 4}, train={"batch_size": 256})
    assert big_batch.queue.shape[1] == 0, "at a batch of 256 the batch alone is enough"


def test_swav_queue_is_whole_global_batches_no_longer_than_the_split():
    published = SwAVConfig()
    assert published.queue_length == 3840 and published.queue_start_epoch == 15
    assert published.fitted_to(10_000, 32) == (published, None)  # 3840 = 120 batches of 32
    assert published.fitted_to(10_000, 256) == (published, None)  # no queue at 256
    fitted, note = published.fitted_to(1000, 32)
    assert fitted.queue_length == 992 and "training split (1000 clips)" in note
    assert published.fitted_to(10_000, 100)[0].queue_length == 3800
    with pytest.raises(ConfigError, match="method.queue_length=16 is shorter than one global"):
        ExperimentConfig.from_dict(
            {"method": {"name": "swav", "queue_length": 16}, "train": {"batch_size": 32}}
        )
