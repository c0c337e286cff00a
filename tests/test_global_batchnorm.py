"""Global batch norm across two gloo processes equals plain batch norm on the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core.models.norm import GlobalBatchNorm, convert_to_global_batchnorm


def _worker(rank: int, init_file: str, x: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    norm = convert_to_global_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    part = x.chunk(2)[rank].clone().requires_grad_(True)
    y = norm(part)
    (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
    out[rank] = (y.detach(), part.grad, norm[0].running_mean.clone(), norm[0].running_var.clone())
    dist.destroy_process_group()


def test_two_workers_match_one_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(8, 3, 5, 4) * 3 + 1
    manager = mp.Manager()
    out = manager.dict()
    init_file = str(tmp_path / "pg")
    mp.spawn(_worker, args=(init_file, x, out), nprocs=2, join=True)

    reference = nn.BatchNorm2d(3)
    whole = x.clone().requires_grad_(True)
    y = reference(whole)
    # The same per-element weights as the workers used, laid out per half.
    weights = torch.cat([torch.arange(y.numel() // 2).view_as(y[:4]).float()] * 2)
    (y * weights).sum().backward()
    outputs = torch.cat([out[0][0], out[1][0]])
    grads = torch.cat([out[0][1], out[1][1]])
    torch.testing.assert_close(outputs, y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads, whole.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[0][2], reference.running_mean)
    torch.testing.assert_close(out[0][3], reference.running_var)


def test_single_process_falls_back_to_plain_batchnorm():
    torch.manual_seed(2)
    x = torch.randn(6, 4, 10)
    plain = nn.BatchNorm1d(4)
    global_norm = GlobalBatchNorm(4)
    torch.testing.assert_close(global_norm(x), plain(x))
