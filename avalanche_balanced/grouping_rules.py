"""Grouping rules: which semantic group each stored sample belongs to.

Like the similarity rules, a grouping rule is a small callable object the
buffer calls without knowing which rule it is; chosen by name (``GROUPINGS``)
or passed as an object, so a new rule is one new class.

Contract of every rule (``similarity`` is the buffer's
:class:`~avalanche_balanced.similarity_rules.PrototypeSimilarity`: its similarity rule bound
to its class prototypes; a rule reads nothing else of the buffer):

* ``rule(labels, features, similarity)``: the group id (non-negative, long) of
  each sample, for samples being inserted and at every regrouping;
* ``rule.update(similarity, features, labels, update_threshold)``: adapt to the
  stored samples (``features``, ``labels``) before a regrouping (thresholds,
  class clusters); no-op by default;
* ``rule.allocate(num_classes, device)``: called once the number of classes is
  known (the buffer's first insertion);
* ``rule.state_dict()`` / ``load_state_dict()`` / ``to(device)``: what a
  checkpoint needs; ``rule.threshold`` is its :class:`AdaptiveThreshold`, or None.
"""
from typing import Optional, Union

import torch
from torch import Tensor

from .semantic import AdaptiveThreshold, class_groups_from_similarity
from .similarity_rules import PrototypeSimilarity

__all__ = ["GroupingRule", "ClassSimilarityGrouping", "PrototypeThresholdGrouping", "ClassGrouping",
           "FixedGrouping", "GROUPINGS", "make_grouping", "majority_groups"]


class GroupingRule:
    """Base class; see the module docstring for the contract."""

    name = "base"
    threshold: Optional[AdaptiveThreshold] = None

    def __call__(self, labels: Tensor, features: Tensor, similarity: PrototypeSimilarity) -> Tensor:
        raise NotImplementedError

    def update(self, similarity: PrototypeSimilarity, features: Tensor, labels: Tensor,
               update_threshold: bool = True) -> None:
        pass

    def allocate(self, num_classes: int, device) -> None:
        pass

    def grow(self, num_classes: int, device) -> None:
        """The classifier head grew to ``num_classes``: keep what was learnt, add the new classes."""
        self.allocate(num_classes, device)

    def group_width(self, num_classes: int) -> int:
        """An upper bound on the group ids this rule gives (plus one), known on the host: counts
        over groups then have a fixed width and need no host sync. Class-level rules use class
        indices as group ids."""
        return max(num_classes, 1)

    def to(self, device) -> "GroupingRule":
        if self.threshold is not None:
            self.threshold.to(device)
        return self

    def state_dict(self) -> dict:
        return {"threshold": self.threshold.state_dict() if self.threshold is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.threshold is not None:
            self.threshold.load_state_dict(state["threshold"])


class ClassSimilarityGrouping(GroupingRule):
    """Classes whose prototypes are alike share a group (the default).

    At each update the threshold adapts to the similarities between the
    prototypes of the seen classes (``similarity.between_classes()``),
    then average-linkage clusters them at the threshold, merging groups of
    fewer than ``min_size`` classes into their nearest group; a sample's group
    is its class's group (``class_group``). Unseen classes are singletons.
    """

    name = "class_similarity"

    def __init__(self, threshold: Optional[AdaptiveThreshold] = None, min_size: int = 2):
        if min_size < 1:
            raise ValueError(f"min_group_classes must be >= 1, got {min_size}")
        # Class-pair scores split at a high quantile: only close classes share a group.
        self.threshold = threshold if threshold is not None else AdaptiveThreshold(0.8, quantile=0.96)
        self.min_size = int(min_size)
        self.class_group: Optional[Tensor] = None  # class -> group id

    def allocate(self, num_classes, device):
        self.class_group = torch.arange(num_classes, device=device)

    def grow(self, num_classes, device):
        # New classes are singletons until the next update; their ids are free (ids are class indices).
        old = self.class_group.shape[0] if self.class_group is not None else 0
        new = torch.arange(old, num_classes, device=device)
        self.class_group = new if self.class_group is None else torch.cat([self.class_group.to(device), new])

    def update(self, similarity, features, labels, update_threshold=True):
        scores, seen = similarity.between_classes(), similarity.prototypes.valid
        if update_threshold:
            pairs = seen.unsqueeze(0) & seen.unsqueeze(1)
            pairs.fill_diagonal_(False)
            self.threshold.update(scores[pairs])
        self.class_group = class_groups_from_similarity(scores, seen, self.threshold.value, min_size=self.min_size)

    def __call__(self, labels, features, similarity):
        return self.class_group[labels]

    def to(self, device):
        if self.class_group is not None:
            self.class_group = self.class_group.to(device)
        return super().to(device)

    def state_dict(self):
        return dict(super().state_dict(), class_group=self.class_group)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        table = state["class_group"]
        self.class_group = None if table is None else table.to(self.threshold.value.device)


class PrototypeThresholdGrouping(GroupingRule):
    """The design note's literal rule: a sample's group is the threshold bucket (0 below,
    1 above) of its own similarity to its class prototype; the threshold adapts to the
    stored samples' similarities (split at their median by default)."""

    name = "prototype_threshold"

    def __init__(self, threshold: Optional[AdaptiveThreshold] = None):
        self.threshold = threshold if threshold is not None else AdaptiveThreshold(0.8, quantile=0.5)

    def update(self, similarity, features, labels, update_threshold=True):
        if update_threshold:
            self.threshold.update(similarity.of(features, labels))

    def __call__(self, labels, features, similarity):
        return self.threshold(similarity.of(features, labels)).long()

    def group_width(self, num_classes):
        return 2  # below or above the threshold


class ClassGrouping(GroupingRule):
    """One group per class: class-balanced replay."""

    name = "class"

    def __call__(self, labels, features, similarity):
        return labels


class FixedGrouping(GroupingRule):
    """A user's class -> group table (e.g. CIFAR-100's superclasses)."""

    name = "fixed"

    def __init__(self, class_to_group):
        if class_to_group is None:
            raise ValueError("grouping='fixed' needs class_to_group, a class -> group tensor")
        self.class_to_group = torch.as_tensor(class_to_group, dtype=torch.long)
        self._width = None
        if bool((self.class_to_group < 0).any()):
            raise ValueError("class_to_group must hold non-negative group ids")

    def allocate(self, num_classes, device):
        if self.class_to_group.shape[0] < num_classes:
            raise ValueError(f"class_to_group maps {self.class_to_group.shape[0]} classes but logits "
                             f"have {num_classes}")
        self.class_to_group = self.class_to_group.to(device)

    def __call__(self, labels, features, similarity):
        return self.class_to_group[labels]

    def group_width(self, num_classes):
        if self._width is None:  # once: the table never changes
            self._width = int(self.class_to_group.max()) + 1
        return self._width

    def to(self, device):
        self.class_to_group = self.class_to_group.to(device)
        return self


_RULES = {rule.name: rule for rule in (ClassSimilarityGrouping, PrototypeThresholdGrouping, ClassGrouping,
                                       FixedGrouping)}
GROUPINGS = tuple(_RULES)
"""Names of the built-in grouping rules."""


def make_grouping(grouping: Union[str, GroupingRule], *, threshold: Optional[AdaptiveThreshold] = None,
                  class_to_group=None, min_group_classes: int = 2) -> GroupingRule:
    """The rule named ``grouping`` built from the arguments it uses, or ``grouping`` itself
    when it is a :class:`GroupingRule` (then the other arguments must be left unset)."""
    if isinstance(grouping, GroupingRule):
        if threshold is not None or class_to_group is not None:
            raise ValueError("pass threshold / class_to_group to the GroupingRule itself, not beside it")
        return grouping
    if grouping not in _RULES:
        raise ValueError(f"unknown grouping {grouping!r}; choose one of {GROUPINGS} or pass a GroupingRule")
    if min_group_classes < 1:
        raise ValueError(f"min_group_classes must be >= 1, got {min_group_classes}")
    if grouping == "class_similarity":
        return ClassSimilarityGrouping(threshold, min_size=min_group_classes)
    if grouping == "prototype_threshold":
        return PrototypeThresholdGrouping(threshold)
    if grouping == "fixed":
        return FixedGrouping(class_to_group)
    return ClassGrouping()


def majority_groups(labels: Tensor, group_ids: Tensor, num_classes: int):
    """``(classes, groups)``: each class present in ``labels`` and the most frequent group
    among its samples (a class's group under a per-sample rule)."""
    classes = torch.unique(labels)
    num_groups = int(group_ids.max()) + 1 if group_ids.numel() else 1
    joint = torch.bincount(labels * num_groups + group_ids, minlength=max(num_classes, 1) * num_groups)
    return classes, joint.view(-1, num_groups).argmax(1)[classes]
