"""Losses against lightly's independent implementations, and their DDP behaviour.

Where our definition and lightly's coincide the two must agree to 1e-5 on random
inputs; where they differ on purpose the test states the exact relation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import (
    BarlowTwinsLoss,
    DINOLoss,
    NegativeCosineSimilarity,
    NTXentLoss,
    SwaVLoss,
)

from core import losses

ATOL = 1e-5


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _randn(generator, *shape, requires_grad=False):
    return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightly_loss_and_gradient(generator, temperature):
    z1 = _randn(generator, 16, 32, requires_grad=True)
    z2 = _randn(generator, 16, 32, requires_grad=True)
    ours = losses.nt_xent(z1, z2, temperature)
    grads = torch.autograd.grad(ours, (z1, z2))
    reference = NTXentLoss(temperature=temperature)(z1, z2)
    reference_grads = torch.autograd.grad(reference, (z1, z2))
    assert torch.allclose(ours, reference, atol=ATOL)
    for mine, theirs in zip(grads, reference_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=ATOL)


def test_nt_xent_rewards_aligned_views(generator):
    z = _randn(generator, 32, 16)
    aligned = losses.nt_xent(z, z + 0.01 * _randn(generator, 32, 16))
    unrelated = losses.nt_xent(z, _randn(generator, 32, 16))
    # Perfect positives still compete with 2N-2 negatives, so the loss stays above 0.
    assert 0 < aligned < unrelated


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        losses.nt_xent(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=0.0)


def test_nt_xent_is_fp32_under_autocast(generator):
    z1, z2 = _randn(generator, 8, 16), _randn(generator, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.nt_xent(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, losses.nt_xent(z1.bfloat16().float(), z2.bfloat16().float()))


def test_moco_logits_with_memory_bank_equal_lightly(generator):
    batch, dim, size = 8, 16, 32
    query = _randn(generator, batch, dim, requires_grad=True)
    key = _randn(generator, batch, dim)
    reference_loss = NTXentLoss(temperature=0.2, memory_bank_size=(size, dim))
    queue = reference_loss.memory_bank.bank.clone()  # (K, D), normalised random init
    ours = losses.moco_loss(query, key, queue, temperature=0.2)
    theirs = reference_loss(query, key)  # uses the bank, then enqueues the keys
    assert torch.allclose(ours, theirs, atol=ATOL)
    (grad_ours,) = torch.autograd.grad(ours, query)
    (grad_theirs,) = torch.autograd.grad(theirs, query)
    assert torch.allclose(grad_ours, grad_theirs, atol=ATOL)
    # Same enqueue order: lightly writes the new (normalised) keys at the pointer.
    pointer = torch.zeros(1, dtype=torch.long)
    losses.enqueue(queue, pointer, F.normalize(key, dim=1))
    assert torch.allclose(queue, reference_loss.memory_bank.bank, atol=ATOL)
    assert pointer.item() == batch


def test_enqueue_order_and_wrap_around():
    queue = torch.zeros(6, 2)
    pointer = torch.zeros(1, dtype=torch.long)
    first = torch.arange(8, dtype=torch.float).view(4, 2)  # keys 0..3
    losses.enqueue(queue, pointer, first)
    assert pointer.item() == 4
    assert torch.equal(queue[:4], first)
    second = 10 + torch.arange(8, dtype=torch.float).view(4, 2)  # keys 10..13
    losses.enqueue(queue, pointer, second)
    # Wrapped: slots 4, 5 then 0, 1 hold the new keys; the oldest (keys 0, 1) are gone.
    # (lightly's bank drops keys that do not fit before the end instead of wrapping;
    # with K a multiple of the batch, as our config enforces, both agree.)
    assert torch.equal(queue[4:], second[:2])
    assert torch.equal(queue[:2], second[2:])
    assert torch.equal(queue[2:4], first[2:])
    assert pointer.item() == 2
    losses.enqueue(queue, pointer, torch.ones(9, 2))  # more than K: newest K kept
    assert torch.equal(queue, torch.ones(6, 2))


def test_byol_loss_is_lightlys_negative_cosine_shifted(generator):
    prediction = _randn(generator, 16, 32, requires_grad=True)
    target = _randn(generator, 16, 32)
    ours = losses.byol_loss(prediction, target)
    theirs = NegativeCosineSimilarity()(prediction, target)
    # BYOL's paper writes the loss as 2 - 2 cos (a normalised MSE); lightly returns -cos.
    # Same minimiser, gradient scaled by 2.
    assert torch.allclose(ours, 2 + 2 * theirs, atol=ATOL)
    (grad_ours,) = torch.autograd.grad(ours, prediction)
    (grad_theirs,) = torch.autograd.grad(theirs, prediction)
    assert torch.allclose(grad_ours, 2 * grad_theirs, atol=ATOL)


def test_byol_target_is_detached(generator):
    prediction = _randn(generator, 4, 8, requires_grad=True)
    target = _randn(generator, 4, 8, requires_grad=True)
    losses.byol_loss(prediction, target).backward()
    assert target.grad is None


@pytest.mark.parametrize("lambda_offdiag", [5e-3, 0.1])
def test_barlow_twins_equals_lightly(generator, lambda_offdiag):
    z1 = _randn(generator, 32, 24, requires_grad=True)
    z2 = _randn(generator, 32, 24, requires_grad=True)
    ours = losses.barlow_twins_loss(z1, z2, lambda_offdiag)
    theirs = BarlowTwinsLoss(lambda_param=lambda_offdiag)(z1, z2)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=ATOL)
    for mine, reference in zip(
        torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(theirs, (z1, z2)), strict=True
    ):
        assert torch.allclose(mine, reference, atol=ATOL)


def test_dino_loss_and_center_equal_lightly(generator):
    out_dim = 64
    student = [_randn(generator, 8, out_dim, requires_grad=True) for _ in range(2)]
    teacher = [_randn(generator, 8, out_dim) for _ in range(2)]
    reference = DINOLoss(
        output_dim=out_dim,
        teacher_temp=0.04,
        warmup_teacher_temp=0.04,
        student_temp=0.1,
        center_momentum=0.9,
    )
    reference.center.copy_(_randn(generator, 1, 1, out_dim))
    center = reference.center.view(1, out_dim).clone()
    ours = losses.dino_loss(student, teacher, center, 0.04, 0.1)
    theirs = reference(teacher, student)  # lightly's argument order: teacher first
    assert torch.allclose(ours, theirs, atol=ATOL)
    for mine, ref in zip(
        torch.autograd.grad(ours, student), torch.autograd.grad(theirs, student), strict=True
    ):
        assert torch.allclose(mine, ref, atol=ATOL)
    losses.dino_center_update(center, teacher, momentum=0.9)
    assert torch.allclose(center, reference.center.view(1, out_dim), atol=ATOL)


def test_swav_loss_equals_lightly(generator):
    prototypes = F.normalize(_randn(generator, 20, 16), dim=1)
    z1 = F.normalize(_randn(generator, 32, 16), dim=1)
    z2 = F.normalize(_randn(generator, 32, 16), dim=1)
    scores1 = (z1 @ prototypes.T).requires_grad_(True)
    scores2 = (z2 @ prototypes.T).requires_grad_(True)
    ours = losses.swav_loss(scores1, scores2, temperature=0.1, epsilon=0.05, iterations=3)
    theirs = SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(
        [scores1, scores2], []
    ).squeeze()
    assert torch.allclose(ours, theirs, atol=ATOL)
    for mine, ref in zip(
        torch.autograd.grad(ours, (scores1, scores2)),
        torch.autograd.grad(theirs, (scores1, scores2)),
        strict=True,
    ):
        assert torch.allclose(mine, ref, atol=ATOL)


def test_sinkhorn_equipartitions_and_survives_tiny_epsilon(generator):
    scores = (
        F.normalize(_randn(generator, 64, 8), dim=1)
        @ F.normalize(_randn(generator, 16, 8), dim=1).T
    )
    codes = losses.sinkhorn(scores, epsilon=0.05, iterations=100)
    assert torch.allclose(codes.sum(dim=1), torch.ones(64), atol=1e-4)
    # Columns: every prototype receives B/K of the mass.
    assert torch.allclose(codes.sum(dim=0), torch.full((16,), 64 / 16), rtol=1e-3)
    # exp(scores / epsilon) would span e^-8000..e^8000 here: the log domain keeps it finite.
    sharp = losses.sinkhorn(scores * 40, epsilon=0.01, iterations=3)
    assert torch.isfinite(sharp).all()
    assert torch.allclose(sharp.sum(dim=1), torch.ones(64), atol=1e-4)


def test_clar_loss_without_labels_is_zero_ce_not_nan(generator):
    z1 = _randn(generator, 8, 16, requires_grad=True)
    z2 = _randn(generator, 8, 16, requires_grad=True)
    logits1 = _randn(generator, 8, 5, requires_grad=True)
    logits2 = _randn(generator, 8, 5, requires_grad=True)
    out = losses.clar_loss(z1, z2, logits1, logits2, torch.full((8,), -1), 0.5)
    assert out["ce"].item() == 0.0
    assert torch.allclose(out["loss"], losses.nt_xent(z1, z2, 0.5))
    out["loss"].backward()
    assert torch.count_nonzero(logits1.grad) == 0
    assert torch.isfinite(z1.grad).all()


def test_clar_ce_uses_only_labelled_samples(generator):
    z1, z2 = _randn(generator, 6, 16), _randn(generator, 6, 16)
    logits1, logits2 = _randn(generator, 6, 4), _randn(generator, 6, 4)
    labels = torch.tensor([0, -1, 3, -1, 2, -1])
    out = losses.clar_loss(z1, z2, logits1, logits2, labels, 0.5, ce_weight=2.0)
    known = labels >= 0
    expected = F.cross_entropy(
        torch.cat([logits1[known], logits2[known]]), torch.cat([labels[known]] * 2)
    )
    assert torch.allclose(out["ce"], expected, atol=ATOL)
    assert torch.allclose(out["loss"], out["nt_xent"] + 2.0 * expected, atol=ATOL)
    assert out["labelled"].item() == 3


def test_weighted_cross_entropy_matches_torch_and_inverse_frequency():
    counts = np.array([50, 10, 0, 40])
    weights = losses.inverse_frequency_weights(counts)
    assert torch.allclose(weights, torch.tensor([0.5, 2.5, 0.0, 0.625]))
    assert torch.allclose(losses.inverse_frequency_weights([5, 5, 5]), torch.ones(3))
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 3, 0, -1, 1, 3, 3, -1, 0, 1, 1])
    ours, count = losses.labelled_cross_entropy(logits, labels, weights)
    reference = F.cross_entropy(logits, labels, weight=weights, ignore_index=-1)
    assert torch.allclose(ours, reference, atol=ATOL)
    assert count.item() == 10
    with pytest.raises(ValueError, match="all zero"):
        losses.inverse_frequency_weights([0, 0])


def test_cosine_momentum_schedule():
    assert losses.cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert losses.cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert losses.cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
