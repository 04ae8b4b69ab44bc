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
from typing import Optional, Union

import torch
from torch import Tensor

from .sampling import cosine_to_unit
from .semantic import ClassPrototypes, SemanticSimilarity

__all__ = ["SimilarityRule", "CosineSimilarity", "LearnedSimilarity", "NoSimilarity", "SIMILARITIES",
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
