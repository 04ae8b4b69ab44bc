"""SARL's loss terms as pure tensor functions (Sarfraz, Arani, Zonooz, ICLR 2025): the prototype
regulariser, the semantic contrastive term and the positives it uses after the warm-up.

:class:`~avalanche_balanced.strategies.sarl.SARLGelu` weighs and sums them; nothing here holds state.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..semantic import ClassPrototypes

__all__ = ["prototype_regularizer", "semantic_contrastive", "threshold_positives"]


def prototype_regularizer(features: Tensor, labels: Tensor, prototypes: ClassPrototypes) -> Tensor:
    """SARL's stability term: for each class with a (frozen) prototype present in the
    batch, the MSE between the mean normalised feature of its samples and the prototype, summed.
    Masked by weight rather than selected (no host sync)."""
    normed = F.normalize(features.float(), dim=1)
    weight = prototypes.valid[labels].to(normed.dtype)
    sums = normed.new_zeros(prototypes.num_classes, normed.shape[1]).index_add_(0, labels, normed * weight[:, None])
    counts = normed.new_zeros(prototypes.num_classes).index_add_(0, labels, weight)
    means = sums / counts.clamp_min(1).unsqueeze(1)
    per_class = (means - prototypes.prototypes.to(means.dtype)).pow(2).mean(1)
    return (per_class * (counts > 0)).sum()


def semantic_contrastive(features: Tensor, labels: Tensor, prototypes: ClassPrototypes,
                         similarity: Optional[Callable] = None, *, pair_weights: Optional[Tensor] = None,
                         ratio: str = "bounded", eps: float = 1e-8) -> Tensor:
    """SARL's semantic contrastive term, summed over the new classes in the batch.

    New classes (no frozen prototype yet) take the batch mean of their normalised features; old
    classes their frozen prototype. For each new class ``c`` and every other available class
    ``k``: ``d = MSE(p_c, p_k)`` and a weight ``w`` in [0, 1] (detached): ``pair_weights[c, k]``
    when given (SARL: 1 for the positives fixed after the warm-up, 0 otherwise), else
    ``similarity(p_c, p_k)`` (the variant's learned similarity). ``pos = sum_k(w * d)``,
    ``neg = sum_k((1 - w) * d)``: pull toward similar classes, push away from the rest.

    ``ratio="sarl"``: ``pos / neg``, a class with ``neg == 0`` skipped (the authors' rule, for
    hard positives). ``ratio="bounded"``: ``pos / (pos + neg)``, the same ratio mapped
    monotonically into [0, 1] (``r / (1 + r)``); with soft weights ``pos / neg`` is unbounded
    (9,990 at weights 0.999 over 10 classes). Gradients reach the new classes' batch prototypes only.
    """
    if ratio not in ("bounded", "sarl"):
        raise ValueError(f"ratio must be 'bounded' or 'sarl', got {ratio!r}")
    if (similarity is None) == (pair_weights is None):
        raise ValueError("give exactly one of similarity and pair_weights")
    means, counts = ClassPrototypes.class_means(features, labels, prototypes.num_classes)
    new = (counts > 0) & ~prototypes.valid
    available = new | prototypes.valid
    protos = torch.where(prototypes.valid.unsqueeze(1), prototypes.prototypes.to(means.dtype), means)
    # Rows: at most one per sample of the batch (a fixed bound, no host sync); a row that is not
    # a new class, and every column that is not an available class other than the row's, weighs 0.
    rows = torch.topk(new.to(torch.int8), min(labels.shape[0], new.shape[0])).indices
    row_ok = new[rows]
    p_new = protos[rows]
    d = (p_new.unsqueeze(1) - protos.unsqueeze(0)).pow(2).mean(-1)  # (rows, classes)
    m, c = p_new.shape[0], protos.shape[0]
    with torch.no_grad():
        if pair_weights is not None:
            w = pair_weights[rows].to(d.dtype)
        else:
            w = similarity(p_new.unsqueeze(1).expand(m, c, -1), protos.unsqueeze(0).expand(m, c, -1))
    columns = torch.arange(c, device=labels.device)
    pair = (row_ok.unsqueeze(1) & available.unsqueeze(0) & (rows.unsqueeze(1) != columns.unsqueeze(0))).to(d.dtype)
    pos = (w * d * pair).sum(1)
    neg = ((1 - w) * d * pair).sum(1)
    # The term needs a new class and another available class; otherwise it is 0.
    if ratio == "sarl":
        return torch.where(row_ok & (neg > 0), pos / neg.clamp_min(eps), torch.zeros_like(pos)).sum()
    return torch.where(row_ok, pos / (pos + neg).clamp_min(eps), torch.zeros_like(pos)).sum()


def threshold_positives(candidates: Tensor, prototypes: ClassPrototypes, new: Tensor, threshold: float) -> Tensor:
    """SARL's positive pairs, fixed once per task after the warm-up: ``P[c, k]`` is True for a new
    class ``c`` and a class ``k`` (new, or old with a frozen prototype) whose prototypes have a
    cosine similarity above ``threshold``. ``candidates`` are the new classes' prototypes of the
    moment (C x D; the authors' ``running_op``), ``new`` marks the new classes; the old classes
    use their frozen prototypes."""
    protos = torch.where(new.unsqueeze(1), candidates.to(prototypes.prototypes.dtype), prototypes.prototypes)
    columns_ok = new | prototypes.valid
    cosine = F.cosine_similarity(protos.unsqueeze(1), protos.unsqueeze(0), dim=-1, eps=1e-6)
    return (cosine > threshold) & new.unsqueeze(1) & columns_ok.unsqueeze(0)
