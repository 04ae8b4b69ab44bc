"""Similarity rules: how typical a sample is of its class, and how alike two classes are.

A rule is a small callable object, in the spirit of Avalanche's
``ExemplarsSelectionStrategy``: :class:`~avalanche_balanced.buffer.BalancedBuffer`
calls it and holds no ``if`` chain over modes, so a new rule is one new class.
Chosen by name (``SIMILARITIES``) or passed as an object.

Contract of every rule:

* ``rule(features, labels, prototypes)``: similarity in [0, 1] of each feature
  row (N x D) to the prototype of its label, 1 for a class without a prototype
  yet (no evidence that the sample is atypical: the importance term stays
  neutral);
* ``rule.between_classes(prototypes)``: similarity in [0, 1] of all pairs of
  class prototypes (C x C), what class-level grouping clusters;
* ``rule.version``: changes whenever the rule's answers change for the same
  inputs (a learned rule after a training step), so that cached similarities
  know when they are stale.
"""
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from .importance import cosine_to_unit
from .semantic import ClassPrototypes, SemanticSimilarity

__all__ = ["PrototypeSimilarity", "SimilarityCache", "SimilarityRule", "CosineSimilarity", "LearnedSimilarity", "NoSimilarity", "SIMILARITIES",
           "make_similarity"]


class SimilarityRule:
    """Base class; see the module docstring for the contract."""

    name = "base"
    version = 0

    def __call__(self, features: Tensor, labels: Tensor, prototypes: ClassPrototypes) -> Tensor:
        raise NotImplementedError

    def between_classes(self, prototypes: ClassPrototypes) -> Tensor:
        raise NotImplementedError

    def to(self, device) -> "SimilarityRule":
        return self


class CosineSimilarity(SimilarityRule):
    """``(cos + 1) / 2`` of unit-length features and prototypes, measured from the
    prototypes' common mean when ``centered`` (see :meth:`ClassPrototypes.center`)."""

    name = "cosine"

    def __init__(self, centered: bool = True):
        self.centered = centered

    def __call__(self, features, labels, prototypes):
        return cosine_to_unit(prototypes.cosine_to_own(features, labels, centered=self.centered))

    def between_classes(self, prototypes):
        return cosine_to_unit(prototypes.cosine_matrix(centered=self.centered))


class LearnedSimilarity(SimilarityRule):
    """Scores of a :class:`SemanticSimilarity` network (SARL's learned similarity)."""

    name = "learned"

    def __init__(self, net: SemanticSimilarity):
        if not isinstance(net, SemanticSimilarity):
            raise ValueError(f"similarity='learned' needs a similarity_net (SemanticSimilarity), got {net!r}")
        self.net = net

    @property
    def version(self) -> int:
        return self.net.version

    def __call__(self, features, labels, prototypes):
        sim = self.net(features.float(), prototypes.prototypes[labels].float()).float()
        return torch.where(prototypes.valid[labels], sim, torch.ones_like(sim))  # float32 under autocast too

    def between_classes(self, prototypes):
        return self.net.pairwise(prototypes.prototypes)

    def to(self, device):
        self.net.to(device)
        return self


class NoSimilarity(CosineSimilarity):
    """Every sample scores 1, leaving only the balance factor in the importance (an
    ablation); classes are still compared by (centred) cosine for grouping."""

    name = "none"

    def __call__(self, features, labels, prototypes):
        return torch.ones(labels.shape[0], device=features.device)


_RULES = {rule.name: rule for rule in (CosineSimilarity, LearnedSimilarity, NoSimilarity)}
SIMILARITIES = tuple(_RULES)
"""Names of the built-in similarity rules."""


def make_similarity(similarity: Union[str, SimilarityRule], *, similarity_net: Optional[SemanticSimilarity] = None,
                    centered: bool = True) -> SimilarityRule:
    """The rule named ``similarity`` (``"learned"`` wraps ``similarity_net``), or ``similarity`` itself
    when it is a :class:`SimilarityRule`."""
    if isinstance(similarity, SimilarityRule):
        return similarity
    if similarity not in _RULES:
        raise ValueError(f"unknown similarity {similarity!r}; choose one of {SIMILARITIES} or pass a SimilarityRule")
    if similarity == "learned":
        if similarity_net is None:
            raise ValueError("similarity='learned' needs a similarity_net (SemanticSimilarity)")
        return LearnedSimilarity(similarity_net)
    return _RULES[similarity](centered=centered)


class PrototypeSimilarity(NamedTuple):
    """A similarity rule bound to the class prototypes: all that a grouping rule reads."""

    rule: SimilarityRule
    prototypes: ClassPrototypes

    def of(self, features: Tensor, labels: Tensor) -> Tensor:
        """Similarity in [0, 1] of each feature row to its class prototype."""
        return self.rule(features, labels, self.prototypes)

    def between_classes(self) -> Tensor:
        """Similarity in [0, 1] between all pairs of class prototypes (C x C)."""
        return self.rule.between_classes(self.prototypes)


class SimilarityCache:
    """Each stored sample's similarity to its prototype, kept per slot of ``storage``.

    Valid while its key holds: the version counters of the prototypes, of the stored features and
    labels (an in-place write bumps a tensor's ``_version``, so an outside edit invalidates the
    cache instead of leaving it stale), the number of stored samples and the rule's version (a
    learned rule changes with every step of its network). After its own write of some slots, the
    buffer refreshes just those while the cache was valid (:meth:`refresh_slots`)."""

    def __init__(self, storage):
        self.storage = storage
        self.values: Optional[Tensor] = None
        self.key: Optional[tuple] = None

    def key_of(self, similarity: PrototypeSimilarity) -> tuple:
        protos, s = similarity.prototypes, self.storage
        return (protos.version, protos.prototypes._version, protos.valid._version, s.features._version,
                s.labels._version, s.size, similarity.rule.version)

    def valid(self, similarity: PrototypeSimilarity) -> bool:
        return self.values is not None and self.key == self.key_of(similarity)

    def all(self, similarity: PrototypeSimilarity) -> Tensor:
        """Similarities of the stored samples, recomputed when stale."""
        s = self.storage
        if not self.valid(similarity):
            self.values = torch.ones(s.features.shape[0], device=s.features.device)
            self.values[: s.size] = similarity.of(s.features[: s.size], s.labels[: s.size])
            self.key = self.key_of(similarity)
        return self.values[: s.size]

    def refresh_slots(self, slots: Tensor, similarity: PrototypeSimilarity, was_valid: bool) -> None:
        """After a write of ``slots``: refresh just those when the cache was valid before it."""
        if was_valid:
            self.values[slots] = similarity.of(self.storage.features[slots], self.storage.labels[slots])
            self.key = self.key_of(similarity)

    def clear(self) -> None:
        self.values, self.key = None, None
