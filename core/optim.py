"""Optimizers and learning-rate schedules built from ``OptimConfig``.

CLAR trains with LARS (lr 1.0, weight decay 1e-4), a linear warmup over 10 epochs and
a cosine decay without restarts, stepped every iteration. QUACLRS uses Adam with
ReduceLROnPlateau or CosineAnnealingLR. All are here behind one :class:`LearningRateSchedule`
with ``step_batch`` (per iteration) and ``step_epoch`` (per epoch, with the metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from core.registry import OPTIMIZERS

if TYPE_CHECKING:
    from core.config import OptimConfig

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and Layer-wise Adaptive Rate Scaling (You et al. 2017).

    Each parameter tensor's update is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w|| + eps)`` (1 when either norm is 0).
    Groups with ``lars_adapt=False`` (biases and normalisation parameters, see
    :func:`parameter_groups`) get plain SGD with momentum and no weight decay, as in
    SimCLR. Written here rather than taken from a library because the core must not
    depend on a test-only package; the tests check it step for step against lightly's.
    Trust ratios are computed with tensor ops, so the step never syncs with the host.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0, eta > 0; got lr={lr},"
                f" momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            eps=eps,
            lars_adapt=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if group["lars_adapt"]:
                    weight_norm = torch.linalg.vector_norm(param)
                    grad_norm = torch.linalg.vector_norm(update)
                if group["weight_decay"]:
                    update = update.add(param, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    ratio = (
                        group["eta"]
                        * weight_norm
                        / (grad_norm + group["weight_decay"] * weight_norm + group["eps"])
                    )
                    usable = (weight_norm > 0) & (grad_norm > 0)
                    update = update * torch.where(usable, ratio, torch.ones_like(ratio))
                state = self.state[param]
                if group["momentum"]:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                    update = state["momentum_buffer"]
                param.add_(update, alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into (weights) and (biases + normalisation parameters).

    The second group gets no weight decay and no LARS adaptation: shrinking a batch-norm
    scale or a bias towards 0 is not regularisation, and their trust ratios are unstable.
    Frozen parameters (momentum encoders, EMA teachers) are left out.
    """
    excluded: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORM_TYPES):
            excluded.update(id(p) for p in module.parameters(recurse=False))
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            excluded.add(id(parameter))
    adapted, plain = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (plain if id(parameter) in excluded else adapted).append(parameter)
    return [
        {"params": adapted, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": plain, "weight_decay": 0.0, "lars_adapt": False},
    ]


def _trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def build_lars(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``lars`` (CLAR): LARS on the weights; biases and norms get plain momentum SGD."""
    return LARS(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        eta=cfg.lars_eta,
    )


def build_sgd(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``sgd``: SGD with momentum and weight decay on every trainable parameter."""
    return torch.optim.SGD(
        _trainable(model), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def build_adam(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``adam`` (QUACLRS): Adam with L2 weight decay folded into the gradient."""
    return torch.optim.Adam(_trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_adamw(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``adamw``: Adam with decoupled weight decay."""
    return torch.optim.AdamW(_trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable parameters.

    Names resolve through :data:`OPTIMIZERS` (declared in :mod:`core.registry`); adding an
    optimizer is one ``build_<name>(cfg, model)`` here plus one line there.
    """
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"unknown optim.name {cfg.name!r}; valid: {', '.join(OPTIMIZERS.names())}")
    if not _trainable(model):
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    return OPTIMIZERS[cfg.name](cfg, model)


class LearningRateSchedule:
    """Learning-rate schedule with one interface for per-iteration and per-epoch rules.

    - ``warmup_cosine``: linear warmup over ``warmup_epochs`` then cosine decay to
      ``min_lr`` at the last iteration, no restarts (CLAR); stepped by ``step_batch``.
    - ``cosine_annealing``: cosine from the base lr to ``min_lr`` over all iterations.
    - ``plateau``: ReduceLROnPlateau on the metric passed to ``step_epoch`` (QUACLRS).
    - ``constant``: the base lr throughout.

    The lr for the first iteration is set at construction, so the first optimizer step
    already uses the warmup value.
    """

    def __init__(
        self,
        cfg: OptimConfig,
        optimizer: torch.optim.Optimizer,
        steps_per_epoch: int,
        epochs: int,
    ) -> None:
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(
                f"the learning-rate schedule needs steps_per_epoch >= 1 and epochs >= 1, got {steps_per_epoch},"
                f" {epochs}"
            )
        self.cfg = cfg
        self.optimizer = optimizer
        self.total_steps = steps_per_epoch * epochs
        warmup = (
            round(cfg.warmup_epochs * steps_per_epoch) if cfg.schedule == "warmup_cosine" else 0
        )
        self.warmup_steps = min(warmup, self.total_steps)
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if cfg.schedule == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode=cfg.plateau_mode,
                factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
                min_lr=cfg.min_lr,
            )
        self._apply(self.factor(0))

    def factor(self, step: int) -> float:
        """Multiplier of the base lr at iteration ``step`` (0-based)."""
        schedule = self.cfg.schedule
        if schedule in ("constant", "plateau"):
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        # The cosine starts at the last warmup step (the peak), so the peak lr is used
        # once, and reaches its floor at the last iteration.
        peak = max(self.warmup_steps - 1, 0)
        progress = min((step - peak) / max(self.total_steps - 1 - peak, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            floor = min(self.cfg.min_lr, base)
            group["lr"] = floor + (base - floor) * factor

    def step_batch(self) -> None:
        """Call after every optimizer step: sets the lr of the next iteration."""
        self.step_count += 1
        if self.cfg.schedule in ("warmup_cosine", "cosine_annealing"):
            self._apply(self.factor(self.step_count))

    def step_epoch(self, metric: float | None = None) -> None:
        """Call after every epoch; ``plateau`` needs the monitored ``metric``."""
        if self.plateau is not None:
            if metric is None:
                raise ValueError(
                    "optim.schedule='plateau' needs the validation metric at every epoch; "
                    "pass it to step_epoch or choose another optim.schedule"
                )
            self.plateau.step(metric)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "base_lrs": list(self.base_lrs),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        self.base_lrs = list(state["base_lrs"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
        if self.cfg.schedule in ("warmup_cosine", "cosine_annealing"):
            self._apply(self.factor(self.step_count))


def build_schedule(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> LearningRateSchedule:
    """The schedule named by ``cfg.schedule`` over ``epochs * steps_per_epoch`` iterations."""
    return LearningRateSchedule(cfg, optimizer, steps_per_epoch, epochs)
