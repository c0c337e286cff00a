"""Which clips each rank trains on, epoch by epoch, reproducibly.

A seeded global shuffle sharded like ``DistributedSampler`` (drop_last); every seed comes
from (trial seed, epoch, rank, stream), so a trial resumed at an epoch boundary replays
exactly the random numbers an uninterrupted run would draw.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed the global generators (model init, dropout) for reproducible trials."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    """A distinct, reproducible seed per (seed, epoch, rank, stream): resuming at an epoch
    boundary replays exactly the random numbers an uninterrupted run would draw."""
    return int(np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1)[0])


def _dealt(pool: np.ndarray, steps: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``steps`` hands of ``size`` distinct items of ``pool``, dealt from shuffled decks: a
    pool smaller than ``steps * size`` is reshuffled when it runs out, and a hand never
    holds an item twice (a clip twice in a batch would be its own false negative)."""
    deck = list(rng.permutation(pool))
    hands = []
    for _ in range(steps):
        hand, deck = deck[:size], deck[size:]
        if len(hand) < size:
            fresh = [item for item in rng.permutation(pool) if item not in set(hand)]
            need = size - len(hand)
            hand, deck = hand + fresh[:need], fresh[need:]
        hands.append(np.asarray(hand, dtype=np.int64))
    return hands


def _labelled_first_order(
    labelled: np.ndarray, per_batch: int, global_batch: int, rng: np.random.Generator
) -> np.ndarray:
    """A global order in which every batch holds ``per_batch`` labelled clips.

    The labelled clips are dealt from shuffled decks (at 1 % of FSDD there are 27, so
    they repeat within an epoch); the rest of each batch comes from the unlabelled clips.
    The epoch keeps its number of steps.
    """
    steps = len(labelled) // global_batch
    # More than the labelled pool would repeat a clip inside a batch.
    per_batch = min(per_batch, global_batch, int(labelled.sum()))
    with_label = _dealt(np.flatnonzero(labelled), steps, per_batch, rng)
    without = _dealt(np.flatnonzero(~labelled), steps, global_batch - per_batch, rng)
    batches = [
        rng.permutation(np.concatenate(pair)) for pair in zip(with_label, without, strict=True)
    ]
    return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)


def epoch_batches(
    train_indices: np.ndarray,
    local_batch: int,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    labelled: np.ndarray | None = None,
    labelled_per_batch: int | None = None,
) -> Iterator[np.ndarray]:
    """This rank's batches of one epoch: a seeded global shuffle, sharded like
    ``DistributedSampler`` (drop_last), each batch sorted for sequential memmap reads.

    With ``labelled_per_batch`` (and a ``labelled`` mask over the training clips), each
    global batch holds that many labelled clips (CLAR names stratified batches as the
    remedy for a label fraction too small to put labels in every random batch).
    """
    rng = np.random.default_rng(epoch_seed(seed, epoch, 0, 0))
    global_batch = local_batch * world_size
    if labelled_per_batch and labelled is not None and labelled.any() and not labelled.all():
        order = _labelled_first_order(labelled, labelled_per_batch, global_batch, rng)
    else:
        order = rng.permutation(len(train_indices))
    steps = len(order) // global_batch
    for step in range(steps):
        chunk = order[step * global_batch : (step + 1) * global_batch]
        mine = chunk[rank::world_size]
        mine = mine[np.argsort(train_indices[mine], kind="stable")]
        yield train_indices[mine], mine
