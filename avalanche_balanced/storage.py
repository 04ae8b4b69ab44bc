"""``BufferStorage``: the preallocated per-slot tensors of a replay buffer, with the counters and
the generator that decide where a sample goes.

It is the only writer of its fields: allocation at the first insertion, widening with a
classifier head, insertion by a policy (:mod:`~avalanche_balanced.insertion`), in-place updates
of features, losses and groups, resizing, moves between devices, and its state dict.
"""
import contextlib
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .insertion import balanced_keep_mask, class_balanced_slots, reservoir_slots, reservoir_writes

__all__ = ["BufferStorage", "STORAGE", "INSERTIONS", "write_rows", "write_rows_masked"]

STORAGE = ("examples", "labels", "task_labels", "logits", "features", "group_ids", "losses")
"""The per-slot tensors."""
INSERTIONS = ("reservoir", "class_balanced", "group_balanced")
"""Insertion policies (see :mod:`~avalanche_balanced.insertion`)."""
SYNC_FREE_INSERTION_LIMIT = 4096  # reservoir buffers on the CPU up to this size write fixed-length rows


class BufferStorage:
    """``max_size`` slots of inputs, labels, task labels, logits, features, group ids and the loss at
    the latest replay (-1: not replayed since insertion); ``size`` filled, ``num_seen`` samples
    offered (the reservoir counter), ``step`` insertions so far. Tensors are allocated at the first
    insertion, when the input shape, the logit width (number of classes) and the feature width are
    known. ``insertion`` decides the slots: ``"reservoir"``, ``"class_balanced"`` (equal slots per
    class) or ``"group_balanced"`` (equal slots per group of the moment)."""

    def __init__(self, max_size: int, insertion: str = "class_balanced", feature_dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu", seed: int = 0):
        if insertion not in INSERTIONS:
            raise ValueError(f"unknown insertion {insertion!r}; choose one of {INSERTIONS}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.max_size, self.insertion, self.feature_dtype = max_size, insertion, feature_dtype
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.num_seen = self.size = self.step = 0
        for name in STORAGE:
            setattr(self, name, None)
        self.unchecked_bad: Optional[Tensor] = None  # rows stored with deferred checks that failed them
        self.inserted: list = []  # fingerprints of the datasets inserted whole (StoragePolicyContract.add_dataset)
        self._undo: Optional[list] = None  # within transaction(): how to undo each insertion, in order

    @property
    def allocated(self) -> bool:
        return self.examples is not None

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1] if self.allocated else 0

    @property
    def num_feats(self) -> int:
        return self.features.shape[1] if self.allocated else 0

    def __len__(self) -> int:
        return self.size

    @property
    def stored_features(self) -> Tensor:
        return self.features[: self.size]

    @property
    def stored_labels(self) -> Tensor:
        return self.labels[: self.size]

    def allocate(self, examples: Tensor, logits: Tensor, features: Tensor) -> None:
        """Create every tensor at ``max_size`` slots, shaped after the first batch."""
        cap, dev = self.max_size, self.device
        self.examples = torch.zeros((cap, *examples.shape[1:]), dtype=examples.dtype, device=dev)
        self.labels = torch.zeros(cap, dtype=torch.long, device=dev)
        self.task_labels = torch.zeros(cap, dtype=torch.long, device=dev)
        self.logits = torch.zeros((cap, logits.shape[1]), dtype=torch.float32, device=dev)
        self.features = torch.zeros((cap, features.shape[1]), dtype=self.feature_dtype, device=dev)
        self.group_ids = torch.zeros(cap, dtype=torch.long, device=dev)
        self.losses = torch.full((cap,), -1.0, device=dev)
        self.unchecked_bad = torch.zeros(cap, dtype=torch.bool, device=dev)

    def widen(self, num_classes: int) -> None:
        """Zero logit columns for the units of a classifier head that grew; nothing shrinks."""
        if self.allocated and num_classes > self.num_classes:
            self.logits = torch.cat([self.logits, self.logits.new_zeros(self.max_size, num_classes - self.num_classes)],
                                    dim=1)

    def pad_width(self, logits: Tensor) -> Tensor:
        """Incoming logits of a narrower head (a multi-head model's smaller head) padded with zeros."""
        if not self.allocated or logits.dim() != 2 or logits.shape[1] >= self.num_classes:
            return logits
        return torch.cat([logits, logits.new_zeros(logits.shape[0], self.num_classes - logits.shape[1])], 1)

    def balance_keys(self, group_width: int) -> Tuple[Tensor, int]:
        """What balanced storage equalises: the stored labels (``class_balanced``) or group ids
        (``group_balanced``), and the key's width."""
        if self.insertion == "class_balanced":
            return self.labels[: self.size], self.num_classes
        return self.group_ids[: self.size], group_width

    @torch.no_grad()
    def insert(self, examples: Tensor, labels: Tensor, task_labels: Tensor, logits: Tensor, features: Tensor,
               groups_of: Callable[[Tensor, Tensor], Tensor], group_width: int,
               row_ok: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Write a batch into the slots the policy chooses, with its groups (``groups_of(labels,
        features)``), and advance the counters. Returns ``(slot of each incoming sample or -1, slots
        written)``. ``row_ok`` (deferred checks) marks the rows that passed them; the others are
        dropped at :meth:`drop_unchecked_bad`.

        All or nothing: an exception (a ``KeyboardInterrupt`` included) during the insertion puts
        back the written rows, the counters and the generator. Reservoir insertion on an
        accelerator, or into at most 4,096 slots, writes a fixed number of rows (unkept ones with
        their old value): no host sync."""
        n = examples.shape[0]
        before = (self.num_seen, self.size, self.step, self.generator.get_state())
        stores = tuple(getattr(self, name) for name in STORAGE) + (self.unchecked_bad,)
        bad = torch.zeros(n, dtype=torch.bool, device=self.device) if row_ok is None else ~row_ok
        losses = torch.full((n,), -1.0, device=self.device)
        written = None
        try:
            groups = groups_of(labels, features)
            incoming = (examples, labels, task_labels, logits, features, groups, losses, bad)
            if self.insertion == "reservoir" and (self.device.type != "cpu"
                                                  or self.max_size <= SYNC_FREE_INSERTION_LIMIT):
                source, slots = reservoir_writes(self.num_seen, self.size, n, self.max_size, device=self.device,
                                                 generator=self.generator)
                written = (slots, [store[slots].clone() for store in stores])
                write_rows_masked(stores, incoming, source, slots)
                placed = torch.where(source == torch.arange(n, device=self.device), slots, -1)
            else:
                if self.insertion == "reservoir":
                    source, slots = reservoir_slots(self.num_seen, self.size, n, self.max_size, device=self.device,
                                                    generator=self.generator)
                else:  # balanced storage: by class, or by semantic group (the groups of now, incoming included)
                    stored, width = self.balance_keys(group_width)
                    keys = labels if self.insertion == "class_balanced" else groups
                    source, slots = class_balanced_slots(stored, keys, self.max_size, width, generator=self.generator)
                written = (slots, [store[slots].clone() for store in stores])
                write_rows(stores, incoming, source, slots)
                placed = torch.full_like(labels, -1).index_copy_(0, source, slots)
            self.num_seen, self.size, self.step = self.num_seen + n, min(self.max_size, self.size + n), self.step + 1
            if self._undo is not None:
                self._undo.append((stores, written, before))
        except BaseException:
            if written is not None:
                for store, rows in zip(stores, written[1]):
                    store[written[0]] = rows
            self.num_seen, self.size, self.step = before[:3]
            self.generator.set_state(before[3])
            raise
        return placed, slots

    @contextlib.contextmanager
    def transaction(self):
        """Several insertions as one: an exception (a ``KeyboardInterrupt`` included) inside the block
        undoes every insertion made in it, in reverse order, and the allocation if it made one."""
        if self._undo is not None:  # nested: the outer transaction undoes everything
            yield
            return
        was_allocated, inserted, self._undo = self.allocated, list(self.inserted), []
        try:
            yield
        except BaseException:
            for stores, (slots, rows), before in reversed(self._undo):
                for store, old in zip(stores, rows):
                    store[slots] = old
                self.num_seen, self.size, self.step = before[:3]
                self.generator.set_state(before[3])
            if not was_allocated:
                for name in STORAGE + ("unchecked_bad",):
                    setattr(self, name, None)
            self.inserted = inserted
            raise
        finally:
            self._undo = None

    def drop_unchecked_bad(self) -> int:
        """Remove the stored rows whose deferred checks failed (compacting the rest, in order);
        returns how many (one host read)."""
        if not self.allocated:
            return 0
        keep = torch.nonzero(~self.unchecked_bad[: self.size]).squeeze(1)
        dropped = self.size - keep.shape[0]
        if dropped:
            self._keep_rows(keep, self.max_size)
        return dropped

    def write_features(self, slots: Union[Tensor, slice], features: Tensor) -> None:
        self.features[slots] = features.to(self.feature_dtype)

    def record_losses(self, slots: Tensor, losses: Tensor) -> None:
        """Each replayed sample's loss from the forward pass that replayed it (difficulty-aware draws)."""
        self.losses[slots.to(self.device)] = losses.detach().float().to(self.device)

    def write_groups(self, groups: Tensor) -> None:
        """Every stored sample's group id, in slot order."""
        self.group_ids[: self.size] = groups

    @torch.no_grad()
    def resize(self, new_size: int, group_width: int) -> None:
        """Change the capacity. Shrinking keeps a uniform random subset (class- or group-balanced under
        balanced storage), which preserves each policy's invariant."""
        if not self.allocated:
            self.max_size = new_size
            return
        n = self.size
        if new_size >= n:
            keep = torch.arange(n, device=self.device)
        elif self.insertion in ("class_balanced", "group_balanced"):
            keys, width = self.balance_keys(group_width)
            keep = torch.nonzero(balanced_keep_mask(keys, new_size, width, generator=self.generator)).squeeze(1)
        else:
            keep = torch.randperm(n, device=self.device, generator=self.generator)[:new_size].sort().values
        self._keep_rows(keep, new_size)

    def _keep_rows(self, keep: Tensor, new_size: int) -> None:
        """Rows ``keep`` (in order) become slots ``0..len(keep)-1`` of tensors of ``new_size`` slots;
        built aside, then swapped in."""
        new = {}
        for name in STORAGE + ("unchecked_bad",):
            old = getattr(self, name)
            new[name] = old.new_zeros((new_size, *old.shape[1:]))
            new[name][: keep.shape[0]] = old[keep]
        for name, value in new.items():
            setattr(self, name, value)
        self.max_size, self.size = new_size, keep.shape[0]

    def to(self, device: torch.device) -> None:
        """Tensors to ``device``; a generator cannot change device, so the new one is seeded from the old."""
        for name in STORAGE + ("unchecked_bad",):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.device = device

    def bytes_per_sample(self) -> dict:
        """Bytes one stored sample takes in each tensor (empty before allocation)."""
        if not self.allocated:
            return {}
        return {name: getattr(self, name)[0].numel() * getattr(self, name).element_size() for name in STORAGE}

    def state_dict(self) -> dict:
        state = {name: getattr(self, name) for name in STORAGE}
        state.update(max_size=self.max_size, size=self.size, num_seen=self.num_seen, step=self.step,
                     generator=self.generator.get_state(), unchecked_bad=self.unchecked_bad,
                     inserted=list(self.inserted))
        return state

    def check_state(self, state: dict) -> None:
        """Raise ``ValueError`` naming what is missing or inconsistent in ``state``, before anything
        is assigned (:meth:`load_state_dict` is then all or nothing)."""
        missing = [k for k in STORAGE + ("max_size", "size", "num_seen", "step", "generator") if k not in state]
        if missing:
            raise ValueError(f"buffer state lacks {', '.join(missing)}")
        tensors = [state[name] for name in STORAGE]
        if any(t is None for t in tensors) and any(t is not None for t in tensors):
            raise ValueError("buffer state holds some storage tensors and not others")
        if tensors[0] is not None:
            rows = {name: state[name].shape[0] for name in STORAGE}
            if len(set(rows.values())) != 1 or rows["examples"] != state["max_size"]:
                raise ValueError(f"buffer state's tensors have {rows} rows for max_size {state['max_size']}")
            if not 0 <= state["size"] <= state["max_size"]:
                raise ValueError(f"buffer state's size {state['size']} is outside [0, {state['max_size']}]")

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (checked by :meth:`check_state` first)."""
        self.check_state(state)
        tensors = {name: None if state[name] is None else state[name].to(self.device) for name in STORAGE}
        bad = state.get("unchecked_bad")
        if tensors["examples"] is not None and bad is None:  # a state from before deferred-row tracking
            bad = torch.zeros(state["max_size"], dtype=torch.bool)
        generator = state["generator"].cpu()  # a generator state is a CPU byte tensor
        for name, value in tensors.items():
            setattr(self, name, value)
        self.unchecked_bad = None if bad is None else bad.to(self.device)
        self.size, self.num_seen, self.step = state["size"], state["num_seen"], state["step"]
        self.inserted = list(state.get("inserted", []))
        self.generator.set_state(generator)


def write_rows(stores: Sequence[Tensor], incoming: Sequence[Tensor], source: Tensor, slots: Tensor) -> None:
    """``store[slots] = incoming[source]`` for every pair (cast to the store's dtype)."""
    for store, rows in zip(stores, incoming):
        store[slots] = rows[source].to(store.dtype)


def write_rows_masked(stores: Sequence[Tensor], incoming: Sequence[Tensor], source: Tensor, slots: Tensor) -> None:
    """:func:`write_rows` for fixed-length writes: where ``source < 0`` the slot keeps its row (the
    write happens, with the old value), so no host sync selects the rows."""
    keep, src = source < 0, source.clamp_min(0)
    for store, rows in zip(stores, incoming):
        mask = keep.view(-1, *([1] * (store.dim() - 1)))
        store[slots] = torch.where(mask, store[slots], rows[src].to(store.dtype))
