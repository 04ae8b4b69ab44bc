"""``SemanticGroups``: the semantic side of a replay buffer: class prototypes, how typical each stored
sample is of its class (a similarity rule, cached per slot) and which group it belongs to (a grouping
rule). It reads the samples of a :class:`~avalanche_balanced.storage.BufferStorage` and writes only
their group ids, through the storage.
"""
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .grouping_rules import GroupingRule, majority_groups, make_grouping
from .model_passes import stored_features
from .semantic import AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from .similarity_rules import PrototypeSimilarity, SimilarityCache, SimilarityRule, make_similarity

__all__ = ["SemanticGroups"]


class SemanticGroups:
    """Prototypes, similarities and groups of the samples in ``storage``.

    ``similarity``: ``"cosine"`` (default), ``"learned"`` (with ``similarity_net``), ``"none"``
    or a :class:`~avalanche_balanced.similarity_rules.SimilarityRule`. ``grouping``:
    ``"class_similarity"`` (default), ``"prototype_threshold"``, ``"class"``, ``"fixed"`` (with
    ``class_to_group``) or a :class:`~avalanche_balanced.grouping_rules.GroupingRule`.
    ``prototypes`` may be shared with a strategy that sets them itself (SARL-GELU); otherwise
    they are created at the storage's first insertion.
    """

    def __init__(self, storage, *, grouping: Union[str, GroupingRule] = "class_similarity",
                 similarity: Union[str, SimilarityRule] = "cosine", similarity_net: Optional[SemanticSimilarity] = None,
                 threshold: Optional[AdaptiveThreshold] = None, prototypes: Optional[ClassPrototypes] = None,
                 class_to_group: Optional[Tensor] = None, centered: bool = True, min_group_classes: int = 2):
        self.storage = storage
        self.similarity_rule = make_similarity(similarity, similarity_net=similarity_net, centered=centered)
        self.grouping_rule = make_grouping(grouping, threshold=threshold, class_to_group=class_to_group,
                                           min_group_classes=min_group_classes).to(storage.device)
        self.similarity_rule.to(storage.device)
        self.prototypes = prototypes.to(storage.device) if prototypes is not None else None
        self.cache = SimilarityCache(storage)

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

    @property
    def bound(self) -> PrototypeSimilarity:
        """The similarity rule bound to the prototypes (what grouping rules read)."""
        return PrototypeSimilarity(self.similarity_rule, self.prototypes)

    def config(self) -> dict:
        """The settings a state must share to load: the rules, the fixed group table, the minimum group."""
        table = getattr(self.grouping_rule, "class_to_group", None)
        return dict(grouping=self.grouping, similarity=self.similarity,
                    centered=getattr(self.similarity_rule, "centered", None),
                    group_table=None if table is None else table.tolist(),
                    min_group_classes=getattr(self.grouping_rule, "min_size", None))

    def allocate(self, num_classes: int, num_feats: int) -> None:
        """At the storage's first insertion: the rule's tables, and the prototypes unless given."""
        if self.prototypes is not None and (self.prototypes.num_classes, self.prototypes.num_feats) != (
                num_classes, num_feats):
            raise ValueError(f"prototypes are {self.prototypes.num_classes} x {self.prototypes.num_feats} but the "
                             f"data has {num_classes} classes (logits) and {num_feats}-dim features")
        self.grouping_rule.allocate(num_classes, self.storage.device)
        if self.prototypes is None:
            self.prototypes = ClassPrototypes(num_classes, num_feats).to(self.storage.device)

    def grow(self, num_classes: int) -> None:
        self.prototypes.grow(num_classes)
        self.grouping_rule.grow(num_classes, self.storage.device)
        self.cache.clear()

    def to(self, device) -> None:
        for part in (self.prototypes, self.grouping_rule, self.similarity_rule):
            if part is not None:
                part.to(device)
        self.cache.clear()

    # ------------------------------------------------------------ similarities
    def stored_similarity(self) -> Tensor:
        """Similarity in [0, 1] of every stored sample to its class prototype (cached)."""
        return self.cache.all(self.bound)

    def similarity_of(self, features: Tensor, labels: Tensor) -> Tensor:
        """Similarity in [0, 1] of each feature row to its class prototype (uncached)."""
        return self.bound.of(features, labels)

    def class_similarity(self) -> Tensor:
        """Similarity in [0, 1] between all pairs of class prototypes (C x C)."""
        return self.bound.between_classes()

    @torch.no_grad()
    def refresh_features(self, model: torch.nn.Module, preprocess: Optional[Callable] = None,
                         batch_size: int = 256) -> None:
        """Recompute every stored sample's features in one no-grad, eval-mode pass of ``model`` (the
        prototypes' mode and ``preprocess``; the model's mode is restored, BatchNorm statistics are
        untouched). Stored logits (replay targets) stay."""
        s = self.storage
        if s.size:
            s.write_features(slice(0, s.size), stored_features(model, s.examples[: s.size], s.task_labels[: s.size],
                                                               preprocess, batch_size, width=s.num_feats))

    @torch.no_grad()
    def refresh_prototypes(self, momentum: float = 0.0) -> None:
        """Recompute class prototypes from the stored features."""
        if self.storage.size:
            self.prototypes.update_from_features(self.storage.stored_features, self.storage.stored_labels,
                                                 momentum=momentum)

    # ------------------------------------------------------------------ groups
    def groups_of(self, labels: Tensor, features: Tensor) -> Tensor:
        """The group of each incoming sample (at insertion)."""
        return self.grouping_rule(labels, features, self.bound)

    @torch.no_grad()
    def regroup(self, update_threshold: bool = True) -> None:
        """Every stored sample's group: the rule adapts to the stored samples, then assigns."""
        s = self.storage
        if not s.allocated or s.size == 0:
            return
        features, labels, bound = s.features[: s.size], s.labels[: s.size], self.bound
        self.grouping_rule.update(bound, features, labels, update_threshold)
        self.cache.clear()  # a full refresh: a learned similarity may have moved
        s.write_groups(self.grouping_rule(labels, features, bound))

    @property
    def group_width(self) -> int:
        """A host-known bound on the group ids (plus one): fixed-width group counts, no host sync."""
        return max(self.grouping_rule.group_width(self.storage.num_classes), 2)

    @property
    def group_counts(self) -> Tensor:
        """Number of stored samples in each group id (index = group id)."""
        s = self.storage
        if not s.allocated or s.size == 0:
            return torch.zeros(0, dtype=torch.long, device=s.device)
        return torch.bincount(s.group_ids[: s.size])

    def class_groups(self):
        """``(classes, groups)``: each stored class and its group (the most frequent of its samples')."""
        s = self.storage
        if not s.allocated:
            empty = torch.zeros(0, dtype=torch.long, device=s.device)
            return empty, empty
        return majority_groups(s.labels[: s.size], s.group_ids[: s.size], s.num_classes)

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        return dict(grouping=self.grouping_rule.state_dict(),
                    prototypes=self.prototypes.state_dict() if self.prototypes is not None else None)

    def check_state(self, state: dict) -> None:
        missing = [k for k in ("grouping", "prototypes") if k not in state]
        if missing:
            raise ValueError(f"buffer state lacks {', '.join(missing)}")
        if state.get("examples") is not None and state["prototypes"] is None:
            raise ValueError("buffer state holds samples but no prototypes")
        lacking = set(self.grouping_rule.state_dict()) - set(state["grouping"] or {})
        if lacking:
            raise ValueError(f"buffer state's grouping rule lacks {', '.join(sorted(lacking))}")

    def load_state_dict(self, state: dict) -> None:
        if state["examples"] is not None:
            num_classes, num_feats = state["logits"].shape[1], state["features"].shape[1]
            if self.prototypes is None:
                self.prototypes = ClassPrototypes(num_classes, num_feats).to(self.storage.device)
            self.prototypes.grow(num_classes)  # a head that grew after the strategy was built
            self.prototypes.load_state_dict(state["prototypes"])
        self.grouping_rule.load_state_dict(state["grouping"])
        self.cache.clear()
