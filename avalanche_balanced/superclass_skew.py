"""Superclass-skewed Split CIFAR-100: a stream where semantically similar classes are
over-represented, the premise of balanced replay (``shared/design/balanced_sampling_design.md``).

CIFAR-100's 100 classes fall into 20 superclasses of 5 classes each, so the plain
split has no semantic over-representation. The skewed stream keeps all five classes
of ``n_crowded`` "crowded" superclasses and one class of each of the other
``20 - n_crowded`` "lone" superclasses: ``5 * n_crowded + (20 - n_crowded)`` classes,
every one with the same number of images. With ``n_crowded = 10``: 60 classes, 50 of
them in crowded superclasses (83%), 10 lone. A buffer filled class-uniformly then
holds five times as many samples of each crowded superclass as of a lone one.
The seed decides which superclasses are crowded and which class represents each
lone superclass.
"""
from typing import Optional

import torch
from torch import Tensor

from .long_tail import BucketAccuracy

__all__ = ["SKEW_BUCKETS", "skewed_classes", "SuperclassSkewAccuracy"]

SKEW_BUCKETS = ("crowded", "lone")


def skewed_classes(fine_to_coarse: Tensor, n_crowded: int, generator: Optional[torch.Generator] = None):
    """``(kept, crowded)``: the sorted fine class ids kept, and a bool mask over all fine
    classes marking those of crowded superclasses (see the module's rule).

    ``fine_to_coarse`` must give every superclass the same number of classes (CIFAR-100: 5);
    ``n_crowded`` must lie in ``[1, n_superclasses - 1]``.
    """
    table = torch.as_tensor(fine_to_coarse).long()
    n_coarse = int(table.max()) + 1
    sizes = torch.bincount(table, minlength=n_coarse)
    if bool((sizes != sizes[0]).any()) or int(sizes[0]) < 2:
        raise ValueError("superclass_skew needs superclasses of equal size (>= 2 classes each)")
    if isinstance(n_crowded, bool) or not isinstance(n_crowded, int) or not 1 <= n_crowded < n_coarse:
        raise ValueError(f"superclass_skew (the number of crowded superclasses) must be an int in "
                         f"[1, {n_coarse - 1}], got {n_crowded!r}")
    crowded_coarse = torch.randperm(n_coarse, generator=generator)[:n_crowded]
    is_crowded_coarse = torch.zeros(n_coarse, dtype=torch.bool)
    is_crowded_coarse[crowded_coarse] = True
    crowded = is_crowded_coarse[table]
    # One class per lone superclass: the class with the smallest random key within it.
    key = torch.rand(table.numel(), generator=generator)
    by_coarse = torch.full((n_coarse,), 2.0).scatter_reduce(0, table, key, reduce="amin")
    representative = (key == by_coarse[table]) & ~crowded
    kept = torch.nonzero(crowded | representative).squeeze(1)
    return kept, crowded


class SuperclassSkewAccuracy(BucketAccuracy):
    """Accuracy on the test samples of crowded-superclass and lone-superclass classes
    (``CrowdedAccuracy_Stream/eval_phase/test_stream`` and ``LoneAccuracy_Stream/...``).

    Args:
        crowded: bool mask over the fine classes (``benchmark.crowded_classes``).
        kept: the fine classes of the stream (``benchmark.classes_kept``); others are in no bucket.
    """

    def __init__(self, crowded: Tensor, kept: Tensor):
        crowded = torch.as_tensor(crowded, dtype=torch.bool)
        bucket = torch.full((crowded.numel(),), -1, dtype=torch.long)
        kept = torch.as_tensor(kept).long()
        bucket[kept] = torch.where(crowded[kept], 0, 1)
        super().__init__(bucket, SKEW_BUCKETS)
