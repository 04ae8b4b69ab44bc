"""``BalancedBuffer``: a replay buffer that keeps semantic groups of its samples.

It checks what comes in, then hands it to three parts: a
:class:`~avalanche_balanced.storage.BufferStorage` (``storage``: tensors, counters, generator),
:class:`~avalanche_balanced.semantic_groups.SemanticGroups` (``groups``: prototypes, similarities,
groups) and a :class:`~avalanche_balanced.replay_sampler.ReplaySampler` (``sampler``: the replay
distribution and the draws). Their fields read as the buffer's (``buffer.labels``,
``buffer.prototypes``, ``buffer.eps``); only the part that owns a field changes it.
"""
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .replay_sampler import ReplayBatch, ReplaySampler
from .semantic_groups import SemanticGroups
from .storage import INSERTIONS, STORAGE, BufferStorage
from .storage_policy import StoragePolicyContract
from .validation import (PendingChecks, as_labels, as_task_labels, check_finite, check_incoming_shapes,
                         check_labels_in_range, check_positive_int, check_rows, check_same_config)

__all__ = ["BalancedBuffer", "ReplayBatch", "INSERTIONS"]


class _Part:
    """The same-named attribute of one of the buffer's parts, read-only on the buffer."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, buffer, owner=None):
        return self if buffer is None else getattr(getattr(buffer, self.part), self.name)

    def __set__(self, buffer, value):
        raise AttributeError(f"BalancedBuffer.{self.name} belongs to its {self.part}; change it through the "
                             "buffer's methods (add_data, update_features, resize, load_state_dict)")


class BalancedBuffer(StoragePolicyContract):
    """Replay buffer with semantic groups and importance-weighted draws.

    ``insertion`` says what is kept: ``"class_balanced"`` (equal slots per class, the default),
    ``"reservoir"`` or ``"group_balanced"``. ``grouping``, ``similarity``, ``similarity_net``,
    ``threshold``, ``prototypes``, ``class_to_group``, ``centered`` and ``min_group_classes`` go
    to :class:`~avalanche_balanced.semantic_groups.SemanticGroups`; the other keywords
    (``balance_weight``, ``eps``, ``max_ratio``, ``protect_current``, ``share``, ``replay_order``,
    ...) to :class:`~avalanche_balanced.replay_sampler.ReplaySampler`.

    Draws: :meth:`get_balanced_data` from :meth:`replay_probabilities`, :meth:`get_data`
    uniformly, :meth:`get_task_balanced_data` with an equal share per task label; asking for
    more samples than are stored draws every stored sample once; an empty buffer raises
    ``ValueError``. As an Avalanche ``ExemplarsBuffer`` it also serves as
    ``ReplayPlugin(storage_policy=...)``. Rules and fallbacks in full: ``docs/design.md``.
    """

    examples, labels, task_labels, logits, features, group_ids, losses = (_Part("storage") for _ in STORAGE)
    size, num_seen, step, generator, device, insertion, allocated, num_classes, num_feats, feature_dtype, \
        stored_features, stored_labels, record_losses = (_Part("storage") for _ in range(13))
    prototypes, similarity_rule, grouping_rule, grouping, similarity, threshold, class_group, group_width, \
        group_counts, stored_similarity, similarity_of, class_similarity, class_groups, refresh_features, \
        refresh_prototypes = (_Part("groups") for _ in range(15))
    eps, uniform_mix, max_ratio, protect_current, balance_weight, hierarchical, difficulty_weight, target_ess, \
        share, replay_order, set_current_classes, current_mask = (_Part("sampler") for _ in range(12))

    GROUP_KEYWORDS = ("grouping", "similarity", "similarity_net", "threshold", "prototypes", "class_to_group",
                      "centered", "min_group_classes")

    def __init__(self, max_size: int, *, insertion: str = "class_balanced", feature_dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu", seed: int = 0, **options):
        check_positive_int(max_size, "max_size (mem_size)")
        self.storage = BufferStorage(max_size, insertion, feature_dtype, device, seed)
        super().__init__(max_size)
        self.groups = SemanticGroups(self.storage, **{k: options.pop(k) for k in self.GROUP_KEYWORDS if k in options})
        self.sampler = ReplaySampler(self.storage, **options)
        self._pending = PendingChecks()  # value checks deferred by add_data(..., defer_checks=True)

    @property
    def max_size(self) -> int:
        return self.storage.max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        if value != self.storage.max_size:  # ExemplarsBuffer.__init__ assigns it once
            raise AttributeError("change a BalancedBuffer's capacity with resize(strategy, new_size)")

    def __len__(self) -> int:
        return self.storage.size

    def to(self, device: Union[str, torch.device]) -> "BalancedBuffer":
        """Move storage and components to ``device`` (a no-op when already there); the generator is
        reseeded from the old one (a generator cannot change device)."""
        device = torch.device(device)
        if device != self.device:
            self.storage.to(device)
            self.groups.to(device)
            self.sampler.to(device)
        return self

    def grow_classes(self, num_classes: int) -> None:
        """Widen the stored logits, the prototypes and the grouping rule to ``num_classes`` (a
        classifier head that grew); new units get zero logits; nothing shrinks."""
        if self.allocated and num_classes > self.num_classes:
            self.storage.widen(num_classes)
            self.groups.grow(num_classes)
            self.sampler.invalidate()

    def bytes_per_sample(self) -> dict:
        """Bytes one stored sample takes in each preallocated tensor (empty before allocation)."""
        sizes = self.storage.bytes_per_sample()
        return dict(sizes, similarity_cache=4) if sizes else sizes

    def invalidate_caches(self) -> None:
        """Forget the cached similarities and replay distribution (after a change of layout)."""
        self.groups.cache.clear()
        self.sampler.invalidate()

    def check_pending(self) -> None:
        """Raise for values offered with ``add_data(..., defer_checks=True)`` since the last check,
        after removing the rows that failed them (the buffer never keeps them)."""
        try:
            self._pending.raise_if_failed()
        except ValueError:
            if self.storage.drop_unchecked_bad():
                self.invalidate_caches()
            raise

    # ---------------------------------------------------------------- writing
    @torch.no_grad()
    def add_data(self, examples: Tensor, labels: Tensor, logits: Tensor, features: Tensor,
                 task_labels: Optional[Tensor] = None, defer_checks: bool = False) -> Tensor:
        """Insert a minibatch (non-augmented inputs); returns each incoming sample's slot, or -1
        when the insertion policy did not keep it. ``defer_checks`` defers the value checks
        (label range, finite features) to :meth:`check_pending` (called by :meth:`regroup`): with
        reservoir insertion, a loop inserting every iteration then reads nothing on the host."""
        labels = as_labels(labels, "labels").to(self.device).long()  # integer dtypes only: never truncated
        examples = examples.detach().to(self.device)
        logits = logits.detach().to(self.device)
        features = features.detach().to(self.device).flatten(1)
        task_labels = (torch.zeros_like(labels) if task_labels is None
                       else as_task_labels(task_labels, self.device).expand_as(labels))
        check_incoming_shapes(self, examples, labels, logits, features, task_labels)
        width, row_ok = max(logits.shape[1], self.num_classes), None  # the classes after widening or padding
        if defer_checks:  # reported at the check, which drops these rows; until then a bad label cannot index
            row_ok = self._pending.add(labels, width, features)
            labels = labels.clamp(0, width - 1)
        else:
            check_labels_in_range(labels, width, what="the classifier's range")
            check_finite(features, "features")
        if examples.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        if self.allocated and logits.shape[1] > self.num_classes:  # checked: now the head may grow
            self.grow_classes(logits.shape[1])
        logits = self.storage.pad_width(logits)  # a narrower head's logits, zero-padded
        if not self.allocated:
            self.groups.allocate(logits.shape[1], features.shape[1])
            self.storage.allocate(examples, logits, features)
        bound = self.groups.bound
        was_valid = self.groups.cache.valid(bound)
        placed, written = self.storage.insert(examples, labels, task_labels, logits, features, self.groups.groups_of,
                                              self.group_width, row_ok)
        self.groups.cache.refresh_slots(written, bound, was_valid)
        return placed

    @torch.no_grad()
    def update_features(self, indices: Tensor, features: Tensor) -> None:
        """Refresh stored features of replayed samples from the forward pass that replayed them."""
        features = features.detach().to(self.device).flatten(1)
        check_rows(features, "features", indices.shape[0], self.num_feats)
        check_finite(features, "features")
        indices, bound = indices.to(self.device), self.groups.bound
        was_valid = self.groups.cache.valid(bound)
        self.storage.write_features(indices, features)
        self.groups.cache.refresh_slots(indices, bound, was_valid)

    @torch.no_grad()
    def regroup(self, update_threshold: bool = True) -> None:
        """Check the deferred values, then recompute every stored sample's group
        (:meth:`SemanticGroups.regroup <avalanche_balanced.semantic_groups.SemanticGroups.regroup>`)."""
        self.check_pending()
        self.groups.regroup(update_threshold)

    # ------------------------------------------------------------------ draws
    @torch.no_grad()
    def importance(self) -> Tensor:
        """Importance of every stored sample over the past samples (see ``ReplaySampler.importance``)."""
        if self.size == 0:
            return torch.zeros(0, device=self.device)
        return self.sampler.importance(*self._distribution_inputs())

    def _distribution_inputs(self):
        n = self.size
        current = self.current_mask() if self.sampler.current_class_ids is not None else None
        return (self.stored_similarity(), self.group_ids[:n], self.labels[:n], self.losses[:n], current,
                self.group_width)

    @torch.no_grad()
    def replay_probabilities(self) -> Tensor:
        """The distribution :meth:`get_balanced_data` draws from (sums to 1 over stored samples)."""
        if self.size == 0:
            return torch.zeros(0, device=self.device)
        # Everything it depends on, as host-side counters: the similarities' inputs, the groups, the
        # current classes and (difficulty) the losses.
        key = (self.groups.cache.key_of(self.groups.bound), self.group_ids._version, self.sampler.current_version,
               self.losses._version if self.sampler.reads_losses else None)
        return self.sampler.probabilities(key, self._distribution_inputs)

    def _gather(self, indices: Tensor, transform: Optional[Callable]) -> ReplayBatch:
        inputs = self.examples[indices]
        return ReplayBatch(transform(inputs) if transform is not None else inputs, self.labels[indices],
                           self.logits[indices], indices, self.task_labels[indices])

    def _sample_size(self, minibatch_size: int) -> int:
        if minibatch_size < 0:
            raise ValueError(f"minibatch_size must be >= 0, got {minibatch_size}")
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer; check len(buffer) > 0 first")
        return min(minibatch_size, self.size)  # fewer stored than asked: draw what is there

    @torch.no_grad()
    def get_data(self, minibatch_size: int, transform: Optional[Callable] = None) -> ReplayBatch:
        """Uniform replay minibatch of ``min(minibatch_size, len(self))`` distinct samples."""
        k = self._sample_size(minibatch_size)
        contents = (self.step, self.size, self.max_size)
        return self._gather(self.sampler.uniform(self.size, k, contents, self.generator, self.device), transform)

    @torch.no_grad()
    def get_balanced_data(self, minibatch_size: int, transform: Optional[Callable] = None) -> ReplayBatch:
        """Importance-weighted replay minibatch, drawn from :meth:`replay_probabilities`."""
        k = self._sample_size(minibatch_size)
        return self._gather(self.sampler.proportional(self.replay_probabilities(), k, self.generator), transform)

    @torch.no_grad()
    def get_task_balanced_data(self, minibatch_size: int, balanced: bool = True,
                               transform: Optional[Callable] = None) -> ReplayBatch:
        """Every stored task label the same expected share; within a task, balanced or uniform."""
        k, n = self._sample_size(minibatch_size), self.size
        base = self.replay_probabilities() if balanced else torch.full((n,), 1.0 / n, device=self.device)
        return self._gather(self.sampler.task_balanced(base, self.task_labels[:n], k, self.generator), transform)

    # ------------------------------------------------------------ persistence
    def config(self) -> dict:
        """Every setting a resumed run must share: storage, rules and the sampler's."""
        return dict(self.sampler.config(), **self.groups.config(), insertion=self.insertion,
                    feature_dtype=str(self.feature_dtype), max_size=self.max_size)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: tensors, counters, generator, groups, prototypes."""
        return dict(self.storage.state_dict(), **self.groups.state_dict(), **self.sampler.state_dict(),
                    config=self.config())

    def check_state_dict(self, state: dict) -> None:
        """Raise ``ValueError`` unless ``state`` loads here: same configuration (every setting that
        differs is named), every part's entries present and consistent. Nothing is assigned."""
        saved = {"share": "sample", "replay_order": "independent",  # states from before these options
                 **state["config"], "max_size": state["max_size"]}
        check_same_config(saved, self.config(), "buffer state", "buffer")
        self.storage.check_state(state)
        self.groups.check_state(state)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`, all or nothing: :meth:`check_state_dict` first."""
        self.check_state_dict(state)
        self.storage.load_state_dict(state)
        self.groups.load_state_dict(state)
        self.sampler.load_state_dict(state)
        self.invalidate_caches()
