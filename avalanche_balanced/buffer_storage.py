"""A :class:`~avalanche_balanced.buffer.BalancedBuffer`'s preallocated per-slot tensors: their
layout, allocation at the first insertion, growth with a classifier head, moves between devices,
and the fixed-length writes of an insertion policy's ``(source, slot)`` pairs."""
from typing import Sequence

import torch
from torch import Tensor

from .insertion import class_balanced_slots, reservoir_slots, reservoir_writes
from .semantic import ClassPrototypes

__all__ = ["STORAGE", "INSERTIONS", "insert", "allocate", "widen_logits", "fit_width", "move", "bytes_per_sample", "write_rows",
           "write_rows_masked"]

STORAGE = ("examples", "labels", "task_labels", "logits", "features", "group_ids", "losses")
"""The buffer's preallocated per-slot tensors."""
INSERTIONS = ("reservoir", "class_balanced", "group_balanced")
"""Insertion policies (see :mod:`~avalanche_balanced.insertion`)."""
SYNC_FREE_INSERTION_LIMIT = 4096  # reservoir buffers on the CPU up to this size write fixed-length rows


@torch.no_grad()
def insert(buffer, examples: Tensor, labels: Tensor, task_labels: Tensor, logits: Tensor, features: Tensor):
    """Write a checked batch into the slots ``buffer.insertion`` chooses, with its groups, and
    advance the counters. Returns ``(slot of each incoming sample or -1, slots written)``.

    Reservoir insertion on an accelerator, or into at most 4,096 slots, writes a
    fixed number of rows (unkept ones with their old value): no host sync.
    """
    n = examples.shape[0]
    stores = tuple(getattr(buffer, name) for name in STORAGE)
    losses = torch.full((n,), -1.0, device=buffer.device)  # not replayed since insertion
    if buffer.insertion == "reservoir" and (buffer.device.type != "cpu"
                                            or buffer.max_size <= SYNC_FREE_INSERTION_LIMIT):
        source, slots = reservoir_writes(buffer.num_seen, buffer.size, n, buffer.max_size,
                                         device=buffer.device, generator=buffer.generator)
        groups = buffer.grouping_rule(buffer, labels, features)
        write_rows_masked(stores, (examples, labels, task_labels, logits, features, groups, losses), source, slots)
        placed = torch.where(source == torch.arange(n, device=buffer.device), slots, -1)
    else:
        groups = buffer.grouping_rule(buffer, labels, features)
        if buffer.insertion == "reservoir":
            source, slots = reservoir_slots(buffer.num_seen, buffer.size, n, buffer.max_size,
                                            device=buffer.device, generator=buffer.generator)
        else:  # balanced storage: per class, or per semantic group (the groups of now, incoming included)
            by_class = buffer.insertion == "class_balanced"
            stored, incoming, width = ((buffer.labels, labels, buffer.num_classes) if by_class
                                       else (buffer.group_ids, groups, buffer.group_width))
            source, slots = class_balanced_slots(stored[: buffer.size], incoming, buffer.max_size, width,
                                                 generator=buffer.generator)
        write_rows(stores, (examples, labels, task_labels, logits, features, groups, losses), source, slots)
        placed = torch.full_like(labels, -1).index_copy_(0, source, slots)
    buffer.num_seen += n
    buffer.size = min(buffer.max_size, buffer.size + n)  # every policy fills free slots first
    buffer.step += 1
    return placed, slots


def allocate(buffer, examples: Tensor, logits: Tensor, features: Tensor) -> None:
    """Create every storage tensor at ``buffer.max_size`` slots, shaped after the first batch
    (input shape, logit width = number of classes, feature width), and the prototypes."""
    cap, dev = buffer.max_size, buffer.device
    num_classes, num_feats = logits.shape[1], features.shape[1]
    buffer.examples = torch.zeros((cap, *examples.shape[1:]), dtype=examples.dtype, device=dev)
    buffer.labels = torch.zeros(cap, dtype=torch.long, device=dev)
    buffer.task_labels = torch.zeros(cap, dtype=torch.long, device=dev)
    buffer.logits = torch.zeros((cap, num_classes), dtype=torch.float32, device=dev)
    buffer.features = torch.zeros((cap, num_feats), dtype=buffer.feature_dtype, device=dev)
    buffer.group_ids = torch.zeros(cap, dtype=torch.long, device=dev)
    buffer.losses = torch.full((cap,), -1.0, device=dev)  # -1: not replayed since insertion
    buffer.grouping_rule.allocate(num_classes, dev)
    if buffer.prototypes is None:
        buffer.prototypes = ClassPrototypes(num_classes, num_feats).to(dev)
    elif (buffer.prototypes.num_classes, buffer.prototypes.num_feats) != (num_classes, num_feats):
        raise ValueError(
            f"prototypes are {buffer.prototypes.num_classes} x {buffer.prototypes.num_feats} but the "
            f"data has {num_classes} classes (logits) and {num_feats}-dim features")


@torch.no_grad()
def widen_logits(buffer, num_classes: int) -> None:
    """Widen the stored logits, the prototypes and the grouping rule to ``num_classes``: new
    units get zero logit columns; nothing shrinks."""
    if not buffer.allocated or num_classes <= buffer.num_classes:
        return
    extra = num_classes - buffer.num_classes
    buffer.logits = torch.cat([buffer.logits, buffer.logits.new_zeros(buffer.max_size, extra)], dim=1)
    buffer.prototypes.grow(num_classes)
    buffer.grouping_rule.grow(num_classes, buffer.device)
    buffer.invalidate_caches()


def fit_width(buffer, logits: Tensor) -> Tensor:
    """Incoming logits at the stored width: a wider head grows the storage, a narrower one (a
    multi-head model's smaller head) is padded with zeros."""
    if not buffer.allocated or logits.dim() != 2:
        return logits
    if logits.shape[1] > buffer.num_classes:
        widen_logits(buffer, logits.shape[1])
    elif logits.shape[1] < buffer.num_classes:
        logits = torch.cat([logits, logits.new_zeros(logits.shape[0], buffer.num_classes - logits.shape[1])], 1)
    return logits


def move(buffer, device: torch.device) -> None:
    """Storage, current classes and components to ``device``. A generator cannot change device,
    so the new one is seeded from the old one."""
    for name in STORAGE + ("_current_classes",):
        value = getattr(buffer, name)
        if value is not None:
            setattr(buffer, name, value.to(device))
    if buffer.prototypes is not None:
        buffer.prototypes.to(device)
    buffer.grouping_rule.to(device)
    buffer.similarity_rule.to(device)
    seed = int(torch.randint(2**62, (1,), generator=buffer.generator, device=buffer.device))
    buffer.generator = torch.Generator(device=device)
    buffer.generator.manual_seed(seed)
    buffer.device = device
    buffer.invalidate_caches()


def bytes_per_sample(buffer) -> dict:
    """Bytes one stored sample takes in each preallocated tensor (empty before allocation)."""
    if not buffer.allocated:
        return {}
    sizes = {name: getattr(buffer, name)[0].numel() * getattr(buffer, name).element_size() for name in STORAGE}
    sizes["similarity_cache"] = 4
    return sizes


def write_rows(stores: Sequence[Tensor], incoming: Sequence[Tensor], source: Tensor, slots: Tensor) -> None:
    """``store[slots] = incoming[source]`` for every pair (cast to the store's dtype)."""
    for store, rows in zip(stores, incoming):
        store[slots] = rows[source].to(store.dtype)


def write_rows_masked(stores: Sequence[Tensor], incoming: Sequence[Tensor], source: Tensor, slots: Tensor) -> None:
    """:func:`write_rows` for fixed-length writes: where ``source < 0`` the slot keeps its row
    (the write happens, with the old value), so no host sync selects the rows."""
    keep, src = source < 0, source.clamp_min(0)
    for store, rows in zip(stores, incoming):
        mask = keep.view(-1, *([1] * (store.dim() - 1)))
        store[slots] = torch.where(mask, store[slots], rows[src].to(store.dtype))
