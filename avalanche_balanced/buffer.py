"""``BalancedBuffer``: a replay buffer that keeps semantic groups of its samples.

Storage is a set of preallocated tensors of fixed capacity on the training
device (inputs, labels, task labels, logits, features, group ids, the loss at
the latest replay; :mod:`~avalanche_balanced.buffer_storage`). Everything that
touches all stored samples (regrouping, importance, sampling) is one vectorised
pass over those tensors. Which similarity and which groups are used is decided
by two policy objects (``similarity_rules``, ``grouping_rules``), where a sample
goes by the insertion functions (``insertion``), how much it is replayed by pure
functions (``replay_weights``, ``sampling``); the buffer stores, caches and draws.
"""
from typing import Callable, Iterable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import buffer_storage
from .buffer_state import buffer_state_dict, load_buffer_state
from .grouping_rules import GroupingRule, majority_groups, make_grouping
from .model_passes import stored_features
from .replay_weights import past_importance, task_balanced_weights
from .draws import draw_proportional, next_in_pass, uniform_indices
from .sampling import group_share_weights, replay_distribution
from .semantic import AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from .similarity_rules import SimilarityRule, make_similarity
from .storage_policy import StoragePolicyContract
from .validation import (PendingChecks, check_buffer_options, check_finite, check_incoming_shapes,
                         check_labels_in_range, check_rows)

__all__ = ["BalancedBuffer", "ReplayBatch", "INSERTIONS"]

INSERTIONS = buffer_storage.INSERTIONS
REPLAY_ORDERS = ("independent", "passes")  # of uniform draws (get_data)


class ReplayBatch(NamedTuple):
    """A replay minibatch: inputs (after ``transform``), labels, stored logits (None from a
    :class:`~avalanche_balanced.plugin.BalancedReplayPlugin` that stores none, see its
    ``store_logits``), the buffer slots they came from, and task labels."""

    inputs: Tensor
    labels: Tensor
    logits: Tensor
    indices: Tensor
    task_labels: Tensor


class BalancedBuffer(StoragePolicyContract):
    """Replay buffer with semantic groups and importance-weighted sampling.

    Groups (``grouping``: ``"class_similarity"``, default, ``"prototype_threshold"``,
    ``"class"``, ``"fixed"`` with ``class_to_group``, or a
    :class:`~avalanche_balanced.grouping_rules.GroupingRule`) and the similarity of a sample
    to its class prototype (``similarity``: ``"cosine"``, ``"learned"`` with
    ``similarity_net``, ``"none"``, or a :class:`~avalanche_balanced.similarity_rules.SimilarityRule`)
    are policy objects the buffer calls.

    Replay distribution (:meth:`replay_probabilities`): the current experience's samples
    (:meth:`set_current_classes`) keep their uniform share when ``protect_current``; the past
    samples share the rest. ``share="sample"`` (default, the design note's rule): in
    proportion to :func:`~avalanche_balanced.sampling.balanced_importance` (``eps`` bounds
    the similarity term), each capped at ``max_ratio`` times the uniform probability, with the
    options ``balance_weight`` (``"auto"``: by ``target_ess``), ``hierarchical`` and
    ``difficulty_weight``. ``share="group"``: every group exactly the same share, split inside
    it by similarity, capped at ``max_ratio`` times the group's uniform share
    (:func:`~avalanche_balanced.sampling.group_share_weights`; with ``grouping="class"``,
    exactly class-balanced).

    Insertion (``insertion``): ``"reservoir"``, ``"class_balanced"`` (equal slots per class)
    or ``"group_balanced"`` (equal slots per semantic group of the moment). Tensors are
    allocated at the first insertion, when the input shape, the number of classes (the
    logits' width) and the feature width are known.

    Sampling: :meth:`get_balanced_data` draws from :meth:`replay_probabilities`,
    :meth:`get_data` uniformly, in independent batches or, with ``replay_order="passes"``, in
    reshuffled passes over the buffer (every stored sample once per pass, as Avalanche's
    ``ReplayDataLoader`` replays); asking for more samples than are stored draws every stored
    sample once; sampling an empty buffer raises ``ValueError``. As an Avalanche
    ``ExemplarsBuffer`` (:class:`~avalanche_balanced.storage_policy.StoragePolicyContract`) it
    also serves as ``ReplayPlugin(storage_policy=...)``. The rules and fallbacks in full:
    ``docs/design.md``.
    """

    def __init__(
        self,
        max_size: int,
        *,
        grouping: Union[str, GroupingRule] = "class_similarity",
        insertion: str = "reservoir",
        similarity: Union[str, SimilarityRule] = "cosine",
        similarity_net: Optional[SemanticSimilarity] = None,
        threshold: Optional[AdaptiveThreshold] = None,
        prototypes: Optional[ClassPrototypes] = None,
        class_to_group: Optional[Tensor] = None,
        balance_weight: Union[float, str] = 1.0,
        eps: float = 0.1,
        uniform_mix: float = 0.0,
        max_ratio: Optional[float] = 4.0,
        protect_current: bool = True,
        centered: bool = True,
        min_group_classes: int = 2,
        hierarchical: bool = False,
        difficulty_weight: float = 0.0,
        target_ess: float = 0.7,
        share: str = "sample",
        replay_order: str = "independent",
        feature_dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
    ):
        check_buffer_options(max_size=max_size, insertion=insertion, insertions=INSERTIONS,
                             balance_weight=balance_weight, eps=eps, max_ratio=max_ratio,
                             difficulty_weight=difficulty_weight, target_ess=target_ess, share=share,
                             hierarchical=hierarchical)
        super().__init__(max_size)
        self.device = torch.device(device)
        self.similarity_rule = make_similarity(similarity, similarity_net=similarity_net, centered=centered)
        self.grouping_rule = make_grouping(grouping, threshold=threshold, class_to_group=class_to_group,
                                           min_group_classes=min_group_classes).to(self.device)
        self.similarity_rule.to(self.device)
        self.insertion = insertion
        self.balance_weight = balance_weight if balance_weight == "auto" else float(balance_weight)
        self.eps, self.uniform_mix, self.max_ratio = float(eps), float(uniform_mix), max_ratio
        self.protect_current, self.hierarchical = protect_current, hierarchical
        self.difficulty_weight, self.target_ess = float(difficulty_weight), float(target_ess)
        self.share = share
        if replay_order not in REPLAY_ORDERS:
            raise ValueError(f"unknown replay_order {replay_order!r}; choose one of {REPLAY_ORDERS}")
        self.replay_order = replay_order
        self._pass: tuple = (None, 0, None)  # uniform draws in passes: (order, position, contents it is for)
        self._current_classes: Optional[Tensor] = None  # class ids of the experience being trained
        self.feature_dtype = feature_dtype
        self.prototypes = prototypes.to(self.device) if prototypes is not None else None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.num_seen = 0  # samples offered to the buffer so far (reservoir counter)
        self.size = 0  # slots filled
        self.step = 0  # insertion calls so far
        # Similarity of each stored sample to its prototype, cached per slot: refreshed
        # for the slots written or replayed, and in full on regroup() (a learned
        # similarity drifts in between) or when anything it depends on was
        # changed behind the buffer's back (tensor version counters, see _cache_key).
        self._similarity_cache: Optional[Tensor] = None
        self._cache_version: Optional[tuple] = None
        self._distribution: Optional[Tensor] = None  # replay_probabilities(), until an input changes
        self._distribution_version: Optional[tuple] = None
        self._current_version = 0
        self._pending = PendingChecks()  # value checks deferred by add_data(..., defer_checks=True)
        for name in buffer_storage.STORAGE:
            setattr(self, name, None)

    @property
    def grouping(self) -> str:
        """Name of the grouping rule."""
        return self.grouping_rule.name

    @property
    def similarity(self) -> str:
        """Name of the similarity rule."""
        return self.similarity_rule.name

    @property
    def threshold(self) -> Optional[AdaptiveThreshold]:
        """The grouping rule's adaptive threshold (None for rules without one)."""
        return self.grouping_rule.threshold

    @property
    def class_group(self) -> Optional[Tensor]:
        """Class -> group table of a class-level rule with one (``"class_similarity"``), else None."""
        return getattr(self.grouping_rule, "class_group", None)

    # ------------------------------------------------------------------ storage
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

    def to(self, device: Union[str, torch.device]) -> "BalancedBuffer":
        """Move storage and components to ``device`` (a no-op when already there); the
        generator is reseeded from the old one (a generator cannot change device)."""
        if torch.device(device) != self.device:
            buffer_storage.move(self, torch.device(device))
            self._pass = (None, 0, None)  # a new generator: the next uniform draw starts a new pass
        return self

    def grow_classes(self, num_classes: int) -> None:
        """Widen the stored logits, the prototypes and the grouping rule to ``num_classes``
        (a classifier head that grew, e.g. Avalanche's ``IncrementalClassifier``). Stored
        logits get zero columns for the new units; nothing shrinks."""
        buffer_storage.widen_logits(self, num_classes)

    def bytes_per_sample(self) -> dict:
        """Bytes one stored sample takes in each preallocated tensor (empty before allocation)."""
        return buffer_storage.bytes_per_sample(self)

    def invalidate_caches(self) -> None:
        """Forget the cached similarities and replay distribution (after a change of layout)."""
        self._similarity_cache, self._distribution = None, None

    def check_pending(self) -> None:
        """Raise for values offered with ``add_data(..., defer_checks=True)`` since the last
        check: labels outside the classifier's range, or NaN / inf features. One host read."""
        self._pending.raise_if_failed()

    @torch.no_grad()
    def add_data(self, examples: Tensor, labels: Tensor, logits: Tensor, features: Tensor,
                 task_labels: Optional[Tensor] = None, defer_checks: bool = False) -> Tensor:
        """Insert a minibatch (non-augmented inputs); returns, per incoming sample, the slot it
        was stored in, or -1 when the insertion policy did not keep it.

        Inputs, labels, logits, features, groups and the step are written to
        exactly the slots the insertion policy chose. Reservoir insertion into a
        buffer on an accelerator, or of at most 4096 slots, is fixed-length tensor
        code with no host sync; ``defer_checks`` then also defers the checks of
        the values (label range, finite features) to :meth:`check_pending`, which
        :meth:`regroup` calls: a training loop inserting every iteration reads
        nothing on the host.
        """
        examples, labels = examples.detach().to(self.device), labels.to(self.device).long()
        logits = buffer_storage.fit_width(self, logits.detach().to(self.device))
        features = features.detach().to(self.device).flatten(1)
        task_labels = (torch.zeros_like(labels) if task_labels is None
                       else torch.as_tensor(task_labels, device=self.device).long().expand_as(labels))
        check_incoming_shapes(self, examples, labels, logits, features, task_labels)
        if defer_checks:  # an out-of-range label is reported at the check; until then it cannot index
            self._pending.add(labels, logits.shape[1], features)
            labels = labels.clamp(0, logits.shape[1] - 1)
        else:
            check_labels_in_range(labels, logits.shape[1], what="the classifier's range")
            check_finite(features, "features")
        if examples.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        if not self.allocated:
            buffer_storage.allocate(self, examples, logits, features)
        cache_was_fresh = self._cache_fresh()
        slots_of_incoming, written = buffer_storage.insert(self, examples, labels, task_labels, logits, features)
        self._refresh_cached_similarity(written, cache_was_fresh)
        return slots_of_incoming

    @torch.no_grad()
    def update_features(self, indices: Tensor, features: Tensor) -> None:
        """Refresh stored features of replayed samples from the forward pass that replayed them."""
        features = features.detach().to(self.device).flatten(1)
        check_rows(features, "features", indices.shape[0], self.num_feats)
        check_finite(features, "features")
        indices = indices.to(self.device)
        cache_was_fresh = self._cache_fresh()
        self.features[indices] = features.to(self.feature_dtype)
        self._refresh_cached_similarity(indices, cache_was_fresh)

    @torch.no_grad()
    def refresh_features(self, model: torch.nn.Module, preprocess: Optional[Callable] = None,
                         batch_size: int = 256) -> None:
        """Recompute every stored sample's features in one no-grad, eval-mode pass of ``model``.

        The same mode and ``preprocess`` as the prototypes' pass, so that
        similarities compare like with like; the model's mode is restored and
        BatchNorm statistics are untouched. Stored logits (replay targets) stay.
        """
        if self.size:
            self.features[: self.size] = stored_features(model, self.examples[: self.size],
                                                         self.task_labels[: self.size], preprocess, batch_size,
                                                         width=self.num_feats).to(self.feature_dtype)

    @torch.no_grad()
    def refresh_prototypes(self, momentum: float = 0.0) -> None:
        """Recompute class prototypes from the stored features."""
        if self.size:
            self.prototypes.update_from_features(self.stored_features, self.stored_labels, momentum=momentum)

    @torch.no_grad()
    def record_losses(self, indices: Tensor, losses: Tensor) -> None:
        """Keep each replayed sample's loss from the forward pass that replayed it (difficulty)."""
        self.losses[indices.to(self.device)] = losses.detach().float().to(self.device)

    def set_current_classes(self, classes: Optional[Iterable[int]]) -> None:
        """Classes of the experience being trained (None: none). Their stored samples keep a
        uniform share of replay under ``protect_current``."""
        self._current_classes = (None if classes is None else
                                 torch.as_tensor(list(classes), dtype=torch.long, device=self.device))
        self._current_version += 1

    def current_mask(self) -> Tensor:
        """Boolean mask of the stored samples whose class belongs to the current experience."""
        labels = self.labels[: self.size]
        if self._current_classes is None or self._current_classes.numel() == 0:
            return torch.zeros_like(labels, dtype=torch.bool)
        is_current = torch.zeros(self.num_classes + 1, dtype=torch.bool, device=self.device)
        is_current[self._current_classes.clamp(0, self.num_classes)] = True
        is_current[self.num_classes] = False  # ids beyond the classifier match no stored label
        return is_current[labels]

    @property
    def stored_features(self) -> Tensor:
        return self.features[: self.size]

    @property
    def stored_labels(self) -> Tensor:
        return self.labels[: self.size]

    # --------------------------------------------------------- similarity cache
    def _cache_key(self) -> tuple:
        # In-place writes bump a tensor's _version: an outside edit of the features,
        # labels or prototypes invalidates the cache instead of leaving it stale. A learned
        # similarity changes with every update of its network (its version).
        protos = self.prototypes
        return (protos.version, protos.prototypes._version, protos.valid._version,
                self.features._version, self.labels._version, self.size, self.similarity_rule.version)

    def _cache_fresh(self) -> bool:
        return self._similarity_cache is not None and self._cache_version == self._cache_key()

    def _refresh_cached_similarity(self, slots: Tensor, was_fresh: bool) -> None:
        """After our own write of ``slots``: refresh just those if the cache was fresh before it."""
        if was_fresh:
            self._similarity_cache[slots] = self.similarity_of(self.features[slots], self.labels[slots])
            self._cache_version = self._cache_key()

    def stored_similarity(self) -> Tensor:
        """Similarity in [0, 1] of every stored sample to its class prototype (cached)."""
        if not self._cache_fresh():
            self._similarity_cache = torch.ones(self.max_size, device=self.device)
            self._similarity_cache[: self.size] = self.similarity_of(self.stored_features, self.stored_labels)
            self._cache_version = self._cache_key()
        return self._similarity_cache[: self.size]

    def similarity_of(self, features: Tensor, labels: Tensor) -> Tensor:
        """Similarity in [0, 1] of each feature row to its class prototype (the similarity rule, uncached)."""
        return self.similarity_rule(features, labels, self.prototypes)

    def class_similarity(self) -> Tensor:
        """Similarity in [0, 1] between all pairs of class prototypes (C x C)."""
        return self.similarity_rule.between_classes(self.prototypes)

    # ----------------------------------------------------------------- grouping
    @torch.no_grad()
    def regroup(self, update_threshold: bool = True) -> None:
        """Recompute every stored sample's group (after prototypes or features changed):
        the grouping rule adapts to the stored samples (``update_threshold``), then assigns."""
        self.check_pending()
        if not self.allocated or self.size == 0:
            return
        self.grouping_rule.update(self, update_threshold)
        self._cache_version = None  # full refresh: a learned similarity may have moved
        self.group_ids[: self.size] = self.grouping_rule(self, self.stored_labels, self.stored_features)

    @property
    def group_counts(self) -> Tensor:
        """Number of stored samples in each group id (index = group id), computed from ``group_ids``."""
        if not self.allocated or self.size == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.bincount(self.group_ids[: self.size])

    @property
    def group_width(self) -> int:
        """A host-known bound on the group ids (plus one): fixed-width group counts, no host sync."""
        return max(self.grouping_rule.group_width(self.num_classes), 2)

    def class_groups(self):
        """``(classes, groups)``: each class present in the buffer and its group
        (the most frequent group of its samples, for ``prototype_threshold``)."""
        return majority_groups(self.stored_labels, self.group_ids[: self.size], self.num_classes)

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def importance(self) -> Tensor:
        """Importance of every stored sample, computed over the samples of past experiences.

        The balance factor counts the groups and group sizes of the past
        samples only (all samples when ``protect_current`` is off); the current
        experience's samples get 0 here and their uniform share in
        :meth:`replay_probabilities`.
        """
        n = self.size
        if n == 0:
            return torch.zeros(0, device=self.device)
        past = ~self.current_mask() if self.protect_current and self._current_classes is not None else None
        if self.share == "group":
            return group_share_weights(self.stored_similarity(), self.group_ids[:n],
                                       torch.ones_like(self.labels[:n], dtype=torch.bool) if past is None else past,
                                       num_groups=self.group_width, eps=self.eps, max_ratio=self.max_ratio)
        return past_importance(self.stored_similarity(), self.group_ids[:n], self.labels[:n], self.losses[:n], past,
                               num_groups=self.group_width, eps=self.eps, balance_weight=self.balance_weight,
                               hierarchical=self.hierarchical, difficulty_weight=self.difficulty_weight,
                               target_ess=self.target_ess)

    @torch.no_grad()
    def replay_probabilities(self) -> Tensor:
        """The distribution :meth:`get_balanced_data` draws from (sums to 1 over stored samples).

        See :func:`~avalanche_balanced.sampling.replay_distribution`: the
        current experience's samples keep their uniform share, the past ones
        share the rest by importance, each at most ``max_ratio / n``.
        """
        if self.size == 0:
            return torch.zeros(0, device=self.device)
        # Everything the distribution depends on, as host-side counters: the cached similarity's
        # inputs, the groups, the current classes and (difficulty) the losses.
        key = (self._cache_key(), self.group_ids._version, self._current_version,
               self.losses._version if self.difficulty_weight > 0 else None)
        if self._distribution is None or self._distribution_version != key:
            protected = self.protect_current and self._current_classes is not None
            self._distribution = replay_distribution(  # share="group" caps within each group already
                self.importance(), self.current_mask() if protected else None,
                max_ratio=None if self.share == "group" else self.max_ratio)
            self._distribution_version = key
        return self._distribution

    def _gather(self, indices: Tensor, transform: Optional[Callable]) -> ReplayBatch:
        inputs = self.examples[indices]
        if transform is not None:
            inputs = transform(inputs)
        return ReplayBatch(inputs, self.labels[indices], self.logits[indices], indices,
                           self.task_labels[indices])

    def _check_sample_size(self, minibatch_size: int) -> int:
        if minibatch_size < 0:
            raise ValueError(f"minibatch_size must be >= 0, got {minibatch_size}")
        if self.size == 0:
            raise ValueError("cannot sample from an empty buffer; check len(buffer) > 0 first")
        return min(minibatch_size, self.size)  # fewer stored than asked: draw what is there

    @torch.no_grad()
    def get_data(self, minibatch_size: int, transform: Optional[Callable] = None) -> ReplayBatch:
        """Uniform replay minibatch of ``min(minibatch_size, len(self))`` distinct samples:
        independent batches, or the next ones of a reshuffled pass over the buffer
        (``replay_order="passes"``, see :func:`~avalanche_balanced.draws.next_in_pass`; a pass
        restarts whenever the contents change, so with online insertion every batch starts one)."""
        k = self._check_sample_size(minibatch_size)
        if self.replay_order == "independent":
            idx = uniform_indices(self.size, k, generator=self.generator, device=self.device)
        else:
            order, position, contents = self._pass
            now = (self.step, self.size, self.max_size)
            idx, order, position = next_in_pass(order if contents == now else None, position, self.size, k,
                                                generator=self.generator, device=self.device)
            self._pass = (order, position, now)
        return self._gather(idx, transform)

    @torch.no_grad()
    def get_balanced_data(self, minibatch_size: int, transform: Optional[Callable] = None) -> ReplayBatch:
        """Importance-weighted replay minibatch (the design note's name), drawn from
        :meth:`replay_probabilities`."""
        k = self._check_sample_size(minibatch_size)
        idx = draw_proportional(self.replay_probabilities(), k, generator=self.generator,
                                uniform_mix=self.uniform_mix)
        return self._gather(idx, transform)

    @torch.no_grad()
    def get_task_balanced_data(self, minibatch_size: int, balanced: bool = True,
                               transform: Optional[Callable] = None) -> ReplayBatch:
        """A replay minibatch in which every stored task label has the same expected share; within
        a task, the balanced distribution (``balanced``) or uniform."""
        k = self._check_sample_size(minibatch_size)
        n = self.size
        base = self.replay_probabilities() if balanced else torch.full((n,), 1.0 / n, device=self.device)
        weights = task_balanced_weights(base, self.task_labels[:n])
        return self._gather(draw_proportional(weights, k, generator=self.generator), transform)

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: tensors, counters, groups, RNG, components
        (see :mod:`~avalanche_balanced.buffer_state`)."""
        return buffer_state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; a state from another configuration raises ``ValueError``
        naming every setting that differs."""
        load_buffer_state(self, state)
