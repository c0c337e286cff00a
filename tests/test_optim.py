"""LARS against lightly's, parameter groups, and the learning-rate schedules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from lightly.utils.lars import LARS as LightlyLARS
from torch import nn

from core.config import ConfigError, OptimConfig
from core.optim import LARS, build_optimizer, build_schedule, parameter_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    )


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    x = torch.randn(8, 1, 10, generator=torch.Generator().manual_seed(step))
    return model(x).pow(2).mean()


def test_lars_steps_equal_lightlys_lars():
    ours_model = _model()
    initial = [p.detach().clone() for p in ours_model.parameters()]
    theirs_model = copy.deepcopy(ours_model)
    ours = LARS(parameter_groups(ours_model, 1e-4), lr=0.5, momentum=0.9, eta=1e-3)
    # lightly adapts (and decays) exactly the groups with weight_decay != 0, which is how
    # parameter_groups marks its two groups; eta is lightly's trust_coefficient.
    theirs = LightlyLARS(
        parameter_groups(theirs_model, 1e-4), lr=0.5, momentum=0.9, trust_coefficient=1e-3
    )
    for step in range(5):
        for model, optimizer in ((ours_model, ours), (theirs_model, theirs)):
            optimizer.zero_grad()
            _loss(model, step).backward()
            optimizer.step()
        for mine, reference in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
            assert torch.allclose(mine, reference, atol=1e-6)
    assert all(not torch.equal(p, q) for p, q in zip(ours_model.parameters(), initial, strict=True))


def test_lars_trust_ratio_scales_the_update():
    weight = nn.Parameter(torch.full((4,), 2.0))  # ||w|| = 4
    weight.grad = torch.full((4,), 0.5)  # ||g|| = 1
    LARS([weight], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.01).step()
    # trust ratio 0.01 * 4 / 1 = 0.04; update = 0.04 * 0.5 per entry.
    assert torch.allclose(weight, torch.full((4,), 2.0 - 0.02))


def test_parameter_groups_exclude_biases_and_norms_and_frozen():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    frozen = nn.Linear(2, 2)
    for p in frozen.parameters():
        p.requires_grad_(False)
    model.append(frozen)
    adapted, plain = parameter_groups(model, 1e-4)
    assert {id(p) for p in adapted["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
    }
    assert plain["weight_decay"] == 0.0 and not plain["lars_adapt"]


@pytest.mark.parametrize(
    "name, kind",
    [
        ("lars", LARS),
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_build_optimizer_by_name(name, kind):
    optimizer = build_optimizer(OptimConfig(name=name, lr=0.1), nn.Linear(3, 2))
    assert isinstance(optimizer, kind)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'; valid: adam, adamw, lars"):
        from core.config import ExperimentConfig

        ExperimentConfig.from_dict({"optim": {"name": "rmsprop"}})


def _lrs(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=cfg.lr)
    schedule = build_schedule(cfg, optimizer, steps_per_epoch, epochs)
    values = []
    for _ in range(steps_per_epoch * epochs):
        values.append(schedule.current_lr())
        optimizer.step()
        schedule.step_batch()
    return values


def test_warmup_then_cosine_without_restarts():
    lrs = _lrs(OptimConfig(name="sgd", lr=1.0, warmup_epochs=2), steps_per_epoch=5, epochs=10)
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warmup
    decay = lrs[9:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))  # monotone
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[10] < lrs[9] == pytest.approx(1.0)  # the peak is used once
    assert lrs[9 + 20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))  # half-way


def test_cosine_annealing_and_min_lr():
    cfg = OptimConfig(name="adam", lr=1e-3, schedule="cosine_annealing", min_lr=1e-5)
    lrs = _lrs(cfg, steps_per_epoch=4, epochs=3)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-5)


def test_plateau_reduces_after_patience_and_needs_a_metric():
    cfg = OptimConfig(
        name="adam", lr=1e-3, schedule="plateau", plateau_patience=1, plateau_factor=0.5
    )
    optimizer = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=cfg.lr)
    schedule = build_schedule(cfg, optimizer, steps_per_epoch=3, epochs=10)
    schedule.step_batch()
    assert schedule.current_lr() == pytest.approx(1e-3)
    for accuracy in (0.5, 0.6, 0.6, 0.6):
        schedule.step_epoch(accuracy)
    assert schedule.current_lr() == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="needs the validation metric"):
        schedule.step_epoch(None)


def test_scheduler_state_round_trip():
    cfg = OptimConfig(name="sgd", lr=1.0, warmup_epochs=1)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=cfg.lr)
    schedule = build_schedule(cfg, optimizer, steps_per_epoch=4, epochs=5)
    for _ in range(7):
        schedule.step_batch()
    state = schedule.state_dict()
    fresh_optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=cfg.lr)
    restored = build_schedule(cfg, fresh_optimizer, steps_per_epoch=4, epochs=5)
    restored.load_state_dict(state)
    assert restored.current_lr() == pytest.approx(schedule.current_lr())
    schedule.step_batch()
    restored.step_batch()
    assert restored.current_lr() == pytest.approx(schedule.current_lr())
