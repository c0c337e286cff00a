"""Gathered losses on two gloo processes equal one process with the global batch.

Kept apart from the lightly comparisons so the spawned workers import only torch and
``core.losses`` (start-up time dominates this test).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core import losses

ATOL = 1e-5

# --- two gloo processes vs one process with the global batch ------------------------------
WORLD = 2
LOCAL_BATCH = 6


def _global_inputs():
    generator = torch.Generator().manual_seed(42)
    x1 = torch.randn(WORLD * LOCAL_BATCH, 10, generator=generator)
    x2 = torch.randn(WORLD * LOCAL_BATCH, 10, generator=generator)
    # Rank 0's half has 2 labelled samples, rank 1's half 5: the CE mean must still be
    # over all 7 labelled samples.
    labels = torch.tensor([0, -1, -1, 2, -1, -1, 1, 1, 0, 2, 1, -1])
    with torch.random.fork_rng():  # the same initial weights in every process
        torch.manual_seed(123)
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 8))
    return x1, x2, labels, model


def _objectives(model, x1, x2, labels):
    z1, z2 = model(x1), model(x2)
    ce, _ = losses.labelled_cross_entropy(torch.cat([z1, z2])[:, :3], torch.cat([labels] * 2))
    return {
        "nt_xent": losses.nt_xent(z1, z2, 0.5),
        "barlow": losses.barlow_twins_loss(z1, z2, 5e-3),
        "ce": ce,
    }


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    x1, x2, labels, model = _global_inputs()
    part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    results = {}
    for name in ("nt_xent", "barlow", "ce"):
        ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(model))
        loss = _objectives(ddp, x1[part], x2[part], labels[part])[name]
        loss.backward()
        results[name] = {
            "loss": loss.detach(),
            "grads": [p.grad.clone() for p in ddp.module.parameters()],
        }
    # MoCo keys: every worker enqueues the gathered global keys, in rank order.
    queue, pointer = torch.zeros(4 * WORLD * LOCAL_BATCH, 3), torch.zeros(1, dtype=torch.long)
    keys = torch.arange(WORLD * LOCAL_BATCH * 3, dtype=torch.float).view(-1, 3)[part]
    losses.enqueue(queue, pointer, losses.gather_no_grad(keys))
    results["queue"], results["pointer"] = queue, pointer
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(out_dir / "store"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["nt_xent", "barlow", "ce"])
def test_gathered_loss_on_two_processes_equals_one_process(two_process_results, name):
    x1, x2, labels, model = _global_inputs()
    single = _objectives(model, x1, x2, labels)[name]
    single.backward()
    reported = torch.stack([r[name]["loss"] for r in two_process_results])
    # Each worker's loss covers its own anchors; their mean (what DDP optimises) is the
    # loss of one process with batch 2B.
    assert torch.allclose(reported.mean(), single.detach(), atol=ATOL)
    for rank_result in two_process_results:
        for grad, reference in zip(rank_result[name]["grads"], model.parameters(), strict=True):
            assert torch.allclose(grad, reference.grad, atol=ATOL)


def test_moco_queue_gets_gathered_keys_in_rank_order(two_process_results):
    expected = torch.arange(WORLD * LOCAL_BATCH * 3, dtype=torch.float).view(-1, 3)
    for result in two_process_results:
        assert torch.equal(result["queue"][: WORLD * LOCAL_BATCH], expected)
        assert result["pointer"].item() == WORLD * LOCAL_BATCH
