"""Loss functions: pure functions on tensors, computed in fp32, correct under DDP.

Distributed rule used throughout: a loss that needs the whole global batch (negatives,
batch statistics, Sinkhorn marginals) gathers it with :func:`gather`, whose backward sums
the gradients of every worker's copy and returns each worker its own slice. DDP then
averages parameter gradients over workers. Together this gives exactly the gradient of
the single-process loss on the global batch, both for losses each worker computes on its
own anchors (NT-Xent, MoCo: the global loss is the mean of the workers' losses) and for
losses every worker computes on the whole gathered batch (Barlow Twins). With
``torch.distributed`` not initialised every helper is the identity, so the same code runs
in a notebook.

Inputs are cast to fp32 and autocast is disabled inside the losses: temperature-scaled
logits and exponentials overflow or lose precision in fp16/bf16.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


# --- distributed helpers ---------------------------------------------------------------
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward sums the gathered gradients and keeps the local slice.

    ``torch.distributed.all_gather`` has no gradient; the version here is the one SimCLR's
    and lightly's distributed losses use (all-reduce of the gradients works on gloo and
    NCCL alike, unlike reduce-scatter, which gloo lacks).
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> tuple[Tensor, ...]:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        stacked = torch.stack(grads).contiguous()
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all workers along dim 0, gradient-correct.

    Every worker must pass the same shape (DDP's equal per-worker batches guarantee it).
    """
    if world_size() == 1:
        return tensor
    return torch.cat(_GatherWithGradient.apply(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: Tensor) -> Tensor:
    """All-gather without a gradient (MoCo keys for the queue)."""
    if world_size() == 1:
        return tensor.detach()
    gathered = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over workers (a copy), without a gradient."""
    tensor = tensor.detach().clone()
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def fp32(function: Callable) -> Callable:
    """Run a loss with autocast off; tensor arguments are cast to fp32 by the loss."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        device = next(
            (a.device.type for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), "cpu"
        )
        with torch.autocast(device_type=device, enabled=False):
            return function(*args, **kwargs)

    return wrapper


# --- contrastive ------------------------------------------------------------------------
def _check_pair(z1: Tensor, z2: Tensor, name: str) -> None:
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"{name} needs two (B, D) embeddings of the same shape, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (method.temperature), got {temperature}")


@fp32
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent (CLAR Eq. 1, SimCLR): each of the 2N views must pick its positive among the
    2N-1 other views of the global batch; averaged over both directions of every pair.

    Under DDP each worker computes the loss of its own 2B anchors against all 2N gathered
    embeddings, so negatives are global (the authors' code used only local ones); the mean
    over workers equals the single-process loss on the global batch.
    """
    _check_pair(z1, z2, "nt_xent")
    _check_temperature(temperature)
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    local = z1.shape[0]
    z1_all, z2_all = gather(z1), gather(z2)
    total = z1_all.shape[0]
    candidates = torch.cat([z1_all, z2_all], dim=0)  # (2N, D)
    anchors = torch.cat([z1, z2], dim=0)  # (2B, D)
    logits = anchors @ candidates.T / temperature  # (2B, 2N)
    index = rank() * local + torch.arange(local, device=z1.device)
    self_column = torch.cat([index, index + total])
    positive_column = torch.cat([index + total, index])
    rows = torch.arange(2 * local, device=z1.device)
    logits = logits.index_put((rows, self_column), torch.tensor(float("-inf"), device=z1.device))
    return F.cross_entropy(logits, positive_column)


def contrastive_accuracy(z1: Tensor, z2: Tensor) -> Tensor:
    """Share of view-1 embeddings whose nearest view-2 embedding is their own pair.

    A cheap progress metric for contrastive methods (local batch, no gradient).
    """
    with torch.no_grad():
        similarity = F.normalize(z1.float(), dim=1) @ F.normalize(z2.float(), dim=1).T
        target = torch.arange(z1.shape[0], device=z1.device)
        return (similarity.argmax(dim=1) == target).float().mean()


# --- supervised ---------------------------------------------------------------------------
def inverse_frequency_weights(class_counts: np.ndarray | Tensor) -> Tensor:
    """CE class weights inversely proportional to class frequency (QUACLRS 4.6).

    ``w_c = N / (C * n_c)``, so a balanced set gets all ones. A class absent from the
    training set gets weight 0: it has no samples to weigh, and inf would poison the loss.
    """
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0 or bool((counts < 0).any()):
        raise ValueError(f"class_counts must be a 1D array of counts >= 0, got {counts}")
    if counts.sum() == 0:
        raise ValueError("class_counts are all zero: no labelled training samples")
    weights = counts.sum() / (counts.numel() * counts)
    weights[counts == 0] = 0.0
    return weights.float()


@fp32
def labelled_cross_entropy(
    logits: Tensor, labels: Tensor, class_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the samples whose label is not -1, and their (global) count.

    The sum is divided by the global (weighted) count of labelled samples times 1/world
    size, so the mean over workers (what DDP's gradient averaging computes) is the mean
    over all labelled samples of the global batch. A batch with no labels anywhere gives
    an exact zero that still carries a (zero) gradient, never NaN.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"cross-entropy needs (B, C) logits and (B,) labels, got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    # Labels out of range are reported by F.cross_entropy itself; checking here would
    # force a device-to-host sync every step.
    labels = labels.long()
    weight = None if class_weights is None else class_weights.to(logits.device).float()
    per_sample = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
    labelled = labels >= 0
    sample_weight = labelled.float()
    if weight is not None:
        sample_weight = sample_weight * weight[labels.clamp(min=0)]
    local_denominator = sample_weight.sum()
    global_denominator = all_reduce_sum(local_denominator)
    loss = (per_sample * sample_weight).sum() * world_size() / global_denominator.clamp(min=1e-12)
    return loss, all_reduce_sum(labelled.sum())


def clar_loss(
    z1: Tensor,
    z2: Tensor,
    class_logits1: Tensor,
    class_logits2: Tensor,
    labels: Tensor,
    temperature: float = 0.5,
    ce_weight: float = 1.0,
    class_weights: Tensor | None = None,
) -> dict[str, Tensor]:
    """CLAR (Eq. 3): NT-Xent on the projections + CE on the labelled samples' class logits.

    CE uses both views of every labelled clip; unlabelled clips (label -1) contribute only
    to NT-Xent, and a batch without labels has CE exactly 0.
    """
    contrastive = nt_xent(z1, z2, temperature)
    ce, labelled = labelled_cross_entropy(
        torch.cat([class_logits1, class_logits2]), torch.cat([labels, labels]), class_weights
    )
    return {
        "loss": contrastive + ce_weight * ce,
        "nt_xent": contrastive.detach(),
        "ce": ce.detach(),
        "labelled": labelled.float() / 2,
    }


# --- MoCo ---------------------------------------------------------------------------------
@fp32
def moco_loss(query: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of MoCo: each query against its key (positive) and the K queued keys.

    ``queue`` is ``(K, D)`` of normalised keys from earlier batches; ``key`` comes from the
    momentum encoder and carries no gradient.
    """
    _check_pair(query, key, "moco_loss")
    _check_temperature(temperature)
    query = F.normalize(query.float(), dim=1)
    key = F.normalize(key.float().detach(), dim=1)
    positive = (query * key).sum(dim=1, keepdim=True)
    negative = query @ queue.float().detach().T
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(
        logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    )


@torch.no_grad()
def enqueue(queue: Tensor, pointer: Tensor, keys: Tensor) -> None:
    """Write ``keys`` into the ring buffer ``queue`` at ``pointer`` (in place), wrapping.

    Oldest entries are overwritten first; ``pointer`` (a 1-element long tensor) advances by
    the number of keys modulo K. More keys than K keep only the newest K.
    """
    size = queue.shape[0]
    keys = keys.detach().to(queue.dtype)[-size:]
    positions = (pointer + torch.arange(keys.shape[0], device=queue.device)) % size
    queue[positions] = keys
    pointer.copy_((pointer + keys.shape[0]) % size)


# --- BYOL -------------------------------------------------------------------------------
@fp32
def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's normalised MSE ``2 - 2 cos(p, z')`` (Grill et al. 2020, Eq. 2), batch mean.

    The target is the momentum network's projection and is detached.
    """
    _check_pair(prediction, target, "byol_loss")
    cosine = F.cosine_similarity(prediction.float(), target.float().detach(), dim=1)
    return (2 - 2 * cosine).mean()


# --- Barlow Twins -------------------------------------------------------------------------
def _standardise(z: Tensor) -> Tensor:
    # Batch norm without affine (biased variance, eps 1e-5), as in Barlow Twins' code.
    return F.batch_norm(z, None, None, training=True)


@fp32
def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 5e-3) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two standardised
    embeddings is pushed to the identity: ``sum (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2``.

    Standardisation and C use the global batch (embeddings are gathered), as the original
    code does with synchronised batch norm.
    """
    _check_pair(z1, z2, "barlow_twins_loss")
    z1, z2 = gather(z1.float()), gather(z2.float())
    if z1.shape[0] < 2:
        raise ValueError("barlow_twins_loss needs a global batch of at least 2 samples")
    correlation = _standardise(z1).T @ _standardise(z2) / z1.shape[0]
    diagonal = torch.diagonal(correlation)
    on_diagonal = (diagonal - 1).pow(2).sum()
    off_diagonal = correlation.pow(2).sum() - diagonal.pow(2).sum()
    # Every worker computes the same global loss; see the module docstring for why the
    # gradient is still exact under DDP.
    return on_diagonal + lambda_offdiag * off_diagonal


# --- DINO -----------------------------------------------------------------------------------
@fp32
def dino_loss(
    student_logits: list[Tensor],
    teacher_logits: list[Tensor],
    center: Tensor,
    teacher_temperature: float = 0.04,
    student_temperature: float = 0.1,
) -> Tensor:
    """DINO: cross-entropy between the centred, sharpened teacher distribution of one view
    and the student distribution of every other view, averaged over view pairs.
    """
    if len(student_logits) < 2 or len(student_logits) != len(teacher_logits):
        raise ValueError("dino_loss needs the same number (>= 2) of student and teacher views")
    teacher = torch.stack([t.float().detach() for t in teacher_logits])
    teacher = F.softmax((teacher - center.float()) / teacher_temperature, dim=-1)
    student = F.log_softmax(
        torch.stack([s.float() for s in student_logits]) / student_temperature, dim=-1
    )
    cross = -torch.einsum("tbd,sbd->ts", teacher, student)  # summed over batch
    views, batch = teacher.shape[0], teacher.shape[1]
    cross_view = cross.sum() - cross.diagonal().sum()
    return cross_view / (views * (views - 1) * batch)


@torch.no_grad()
def dino_center_update(center: Tensor, teacher_logits: list[Tensor], momentum: float) -> None:
    """EMA of the teacher's mean output over the global batch (in place)."""
    stacked = torch.cat([t.float().detach() for t in teacher_logits])
    batch_sum = all_reduce_sum(stacked.sum(dim=0, keepdim=True))
    count = stacked.shape[0] * world_size()
    center.mul_(momentum).add_(batch_sum.view_as(center) / count, alpha=1 - momentum)


# --- SwAV -----------------------------------------------------------------------------------
def _global_logsumexp(values: Tensor, dim: int) -> Tensor:
    """``logsumexp`` along a dimension split across workers (the batch), no gradient."""
    if world_size() == 1:
        return torch.logsumexp(values, dim=dim, keepdim=True)
    peak = values.amax(dim=dim, keepdim=True)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    total = torch.exp(values - peak).sum(dim=dim, keepdim=True)
    dist.all_reduce(total)
    return peak + torch.log(total)


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp codes for SwAV: equipartition of the global batch over prototypes.

    Returns ``(B, K)`` soft assignments whose rows sum to 1, with every prototype getting
    an equal share of the global batch. The iterations run in the log domain: the same
    fixed point as SwAV's ``exp(scores / epsilon)`` version, but ``exp`` of a large
    ``scores / epsilon`` can neither overflow nor underflow a whole prototype to 0/0.
    Sums over the batch are all-reduced, so the constraint holds over all workers.
    """
    log_codes = scores.float().T / epsilon  # (K, B_local)
    prototypes, batch = log_codes.shape[0], log_codes.shape[1] * world_size()
    for _ in range(iterations):
        # Each prototype gets mass 1/K over the global batch, each sample mass 1/B.
        log_codes = log_codes - _global_logsumexp(log_codes, dim=1) - math.log(prototypes)
        log_codes = log_codes - torch.logsumexp(log_codes, dim=0, keepdim=True) - math.log(batch)
    return torch.exp(log_codes + math.log(batch)).T


def _batch_codes(scores: Tensor, queued: Tensor | None, epsilon: float, iterations: int) -> Tensor:
    """Sinkhorn codes of the batch's ``scores``; with ``queued`` (the scores of past
    features) the equipartition spans both, and the batch's rows are returned."""
    if queued is None:
        return sinkhorn(scores.detach(), epsilon, iterations)
    both = torch.cat([queued.detach().float(), scores.detach().float()])
    return sinkhorn(both, epsilon, iterations)[-scores.shape[0] :]


@fp32
def swav_loss(
    scores1: Tensor,
    scores2: Tensor,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    iterations: int = 3,
    queued1: Tensor | None = None,
    queued2: Tensor | None = None,
) -> Tensor:
    """SwAV swapped prediction: the codes of one view are predicted from the other's
    prototype scores (Caron et al. 2020), averaged over both directions.

    ``queued1`` / ``queued2``: each view's prototype scores of past batches' features
    (SwAV's queue for small batches). They join only the Sinkhorn step, so the codes are
    an equipartition over more samples; the loss covers the current batch alone.
    """
    _check_pair(scores1, scores2, "swav_loss")
    _check_temperature(temperature)
    q1 = _batch_codes(scores1, queued1, epsilon, iterations)
    q2 = _batch_codes(scores2, queued2, epsilon, iterations)
    log_p1 = F.log_softmax(scores1.float() / temperature, dim=1)
    log_p2 = F.log_softmax(scores2.float() / temperature, dim=1)
    return -0.5 * ((q1 * log_p2).sum(dim=1).mean() + (q2 * log_p1).sum(dim=1).mean())


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL/DINO schedule: momentum rises from ``base`` to 1 along a half cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2
