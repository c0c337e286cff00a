"""Global batch normalisation on any backend (CLAR 3.2: "global batch normalization").

With several training workers, each worker sees only its share of the global batch, so
plain batch norm would normalise with per-worker statistics: a different model from the
single-process one, and a leak that contrastive methods exploit. ``torch.nn.SyncBatchNorm``
fixes that on GPUs, but DDP refuses it for CPU modules ("SyncBatchNorm layers only work
with GPU modules"), so gloo runs on CPU workers need this module. It sums each channel's
count, sum and sum of squares over all workers with a differentiable all-reduce, so both
the forward statistics and the gradients are those of the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over every worker's samples; any input ``(B, C, *)`` and any backend."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (B, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        channels = x.shape[1]
        reduce_dims = [0, *range(2, x.dim())]
        values = x.float()
        count = torch.full((1,), values.numel() / channels, device=x.device)
        stats = torch.cat([values.sum(reduce_dims), values.pow(2).sum(reduce_dims), count])
        stats = all_reduce(stats)  # differentiable: gradients flow to every worker's inputs
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean.pow(2)).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        out = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` by :class:`GlobalBatchNorm`,
    keeping parameters and running statistics (like ``SyncBatchNorm.convert_sync_batchnorm``)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm | nn.SyncBatchNorm
    ):
        converted = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        with torch.no_grad():
            if module.affine:
                converted.weight.copy_(module.weight)
                converted.bias.copy_(module.bias)
            if module.track_running_stats:
                converted.running_mean.copy_(module.running_mean)
                converted.running_var.copy_(module.running_var)
                converted.num_batches_tracked.copy_(module.num_batches_tracked)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_batchnorm(child))
    return module


def convert_for_distributed(module: nn.Module, device: torch.device) -> nn.Module:
    """Global batch norm for a multi-worker trial: torch's fused SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_to_global_batchnorm(module)
