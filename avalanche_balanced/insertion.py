"""Insertion policies as pure tensor functions: which buffer slot each incoming sample takes.

Both return ``(source, slot)``: positions in the incoming minibatch and the
buffer slots they are written to (equal lengths, no slot twice), so the caller
writes inputs, labels, logits and features with the same indices and they can
never drift apart.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["reservoir_slots", "reservoir_writes", "class_balanced_slots", "balanced_keep_mask"]


def _reservoir_targets(num_seen, size, batch_size, capacity, device, generator):
    """Algorithm R's target slot of every sample of the batch (``>= capacity``: rejected)."""
    j = torch.arange(batch_size, device=device)
    t = num_seen + j
    draw = (torch.rand(batch_size, device=device, generator=generator) * (t + 1)).long()
    return j, torch.where(j < capacity - size, size + j, torch.minimum(draw, t))


def reservoir_slots(
    num_seen: int, size: int, batch_size: int, capacity: int, *, device=None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Reservoir sampling (Vitter's algorithm R) for a whole minibatch at once.

    While the buffer has free slots (``size < capacity``) incoming samples take
    them in order. After that, sample ``j`` of the batch, the
    ``t = num_seen + j``-th of the stream, takes slot ``r ~ U{0..t}`` if
    ``r < capacity``. When two samples of the same batch draw the same slot the
    later one wins, exactly as in the sequential algorithm. (``size`` and
    ``num_seen`` differ only after the capacity has grown.)
    """
    j, slot = _reservoir_targets(num_seen, size, batch_size, capacity, device, generator)
    accepted = slot < capacity
    source, slot = j[accepted], slot[accepted]
    last_writer = torch.full((capacity,), -1, device=device, dtype=torch.long)
    last_writer.scatter_reduce_(0, slot, source, reduce="amax")
    wins = last_writer[slot] == source
    return source[wins], slot[wins]


def reservoir_writes(
    num_seen: int, size: int, batch_size: int, capacity: int, *, device=None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """:func:`reservoir_slots` as ``batch_size`` writes of fixed length (no host sync).

    Returns ``(source, slot)``: write ``incoming[source[j]]`` to ``slot[j]``, or keep the
    slot's current value where ``source[j] == -1``. Every write to one slot carries the
    same value (the batch's last sample that won the slot, or the old value), so duplicate
    slots are harmless and the result is exactly :func:`reservoir_slots`'s, with the same
    random numbers.
    """
    j, slot = _reservoir_targets(num_seen, size, batch_size, capacity, device, generator)
    accepted = slot < capacity
    slot = torch.where(accepted, slot, torch.zeros_like(slot))  # rejected: a no-op write to slot 0
    last_writer = torch.full((capacity,), -1, device=device, dtype=torch.long)
    last_writer.scatter_reduce_(0, slot, torch.where(accepted, j, torch.full_like(j, -1)), reduce="amax")
    return last_writer[slot], slot


def _water_level_targets(counts: Tensor, capacity: int, generator: Optional[torch.Generator]) -> Tensor:
    """Per-class quotas summing to ``min(capacity, counts.sum())``, as equal as the counts allow.

    Classes with fewer samples than the fair share keep them all; the others
    share the rest equally, the few leftover places going to random classes.
    """
    total = int(counts.sum())
    if total <= capacity:
        return counts.clone()
    c_sorted, _ = torch.sort(counts)
    n = c_sorted.shape[0]
    upto = torch.cumsum(c_sorted, 0)  # kept if every class up to j is kept whole
    remaining = n - 1 - torch.arange(n, device=counts.device)
    # f(c_j): total kept when every class is cut at the j-th smallest count.
    at_breakpoint = upto - c_sorted + c_sorted * (remaining + 1)
    j = int(torch.searchsorted(at_breakpoint, torch.tensor(capacity, device=counts.device), right=True)) - 1
    # Classes 0..j are kept whole; the level for the rest lies in [c_j, c_{j+1}).
    level = capacity // n if j < 0 else (capacity - int(upto[j])) // int(remaining[j])
    quota = torch.clamp(counts, max=level)
    leftover = capacity - int(quota.sum())
    if leftover > 0:
        eligible = counts > level
        keys = torch.rand(counts.shape, device=counts.device, generator=generator)
        keys = torch.where(eligible, keys, torch.full_like(keys, 2.0))
        rank = torch.empty_like(counts)
        rank[torch.argsort(keys)] = torch.arange(counts.shape[0], device=counts.device)
        quota = quota + (eligible & (rank < leftover)).long()
    return quota


def keep_per_class(labels: Tensor, quota: Union[int, Tensor], generator: Optional[torch.Generator] = None) -> Tensor:
    """Boolean mask keeping a uniform random subset of ``quota`` items of each label (an int, or
    per-label quotas indexed by label; a label with fewer items keeps them all).

    The one subset rule of the library: balanced training subsets, class-balanced insertion
    and shrinking all go through it.
    """
    # Random keys, then a stable sort by label: each class becomes one contiguous run in
    # random order, and the first `quota` of every run are kept.
    order = torch.argsort(torch.rand(labels.shape, device=labels.device, generator=generator))
    order = order[torch.argsort(labels[order], stable=True)]
    counts = torch.bincount(labels)
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(labels.shape[0], device=labels.device) - class_start[labels[order]]
    quota = torch.as_tensor(quota, device=labels.device)
    return rank < (quota if quota.dim() == 0 else quota[labels])


def balanced_keep_mask(
    labels: Tensor, capacity: int, num_classes: int, *, generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Boolean mask keeping ``min(capacity, len(labels))`` items with per-class counts balanced
    (water-level quotas, :func:`keep_per_class` inside each class)."""
    quota = _water_level_targets(torch.bincount(labels, minlength=num_classes), capacity, generator)
    return keep_per_class(labels, quota, generator)


def class_balanced_slots(
    stored_labels: Tensor, new_labels: Tensor, capacity: int, num_classes: int, *,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Class-balanced insertion: fill free slots, then keep the pool balanced per class.

    While everything fits, the incoming samples take the free slots in order.
    Otherwise the stored and incoming samples form one pool and
    :func:`balanced_keep_mask` keeps ``capacity`` of them with class counts as
    equal as possible; kept incoming samples take the free slots, then the
    slots of stored samples that were dropped. Within a class, stored and incoming
    samples have the same chance, which favours recent samples more than a
    per-class reservoir would.
    """
    device = new_labels.device
    size, batch = stored_labels.shape[0], new_labels.shape[0]
    if size + batch <= capacity:
        return torch.arange(batch, device=device), size + torch.arange(batch, device=device)
    pool_labels = torch.cat([stored_labels, new_labels])
    keep = balanced_keep_mask(pool_labels, capacity, num_classes, generator=generator)
    # Exactly `capacity` are kept, so kept incoming samples = free slots + dropped stored slots.
    free_slots = torch.arange(size, capacity, device=device)
    dropped_slots = torch.nonzero(~keep[:size]).squeeze(1)
    kept_new = torch.nonzero(keep[size:]).squeeze(1)
    return kept_new, torch.cat([free_slots, dropped_slots])
