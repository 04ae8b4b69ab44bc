"""The buffer's per-sample replay weights, as pure tensor functions of what it stores: importance
computed over the samples of past experiences only, and task-balanced weights."""
from typing import Optional, Union

import torch
from torch import Tensor

from .sampling import combined_importance, difficulty_factor, masked_balanced_importance, sync_free

__all__ = ["past_importance", "task_balanced_weights"]


def past_importance(similarity: Tensor, group_ids: Tensor, labels: Tensor, losses: Tensor, past: Optional[Tensor],
                    *, num_groups: int, eps: float, balance_weight: Union[float, str], hierarchical: bool,
                    difficulty_weight: float, target_ess: float) -> Tensor:
    """:func:`~avalanche_balanced.sampling.combined_importance` over the samples where ``past``
    holds (every sample when None), 0 for the others: group counts and group sizes are those of
    the past samples.

    With the default options (flat groups, a fixed balance weight) this is masked
    tensor code of fixed width ``num_groups`` that never reads a device value on the
    host (see :func:`~avalanche_balanced.sampling.sync_free`); otherwise it selects
    the past samples first.
    """
    n = similarity.shape[0]
    if not hierarchical and balance_weight != "auto" and sync_free(similarity):
        mask = torch.ones_like(labels, dtype=torch.bool) if past is None else past
        imp = masked_balanced_importance(similarity, group_ids, mask, num_groups=num_groups,
                                         balance_weight=balance_weight, eps=eps)
        if difficulty_weight > 0:
            imp = imp * difficulty_factor(torch.where(mask, losses, torch.full_like(losses, -1.0)), difficulty_weight)
        return imp.float()
    options = dict(eps=eps, balance_weight=balance_weight, hierarchical=hierarchical,
                   difficulty_weight=difficulty_weight, target_ess=target_ess)
    if past is None:
        return combined_importance(similarity, group_ids, labels, losses, **options).float()
    idx = torch.nonzero(past).squeeze(1)
    out = torch.zeros(n, device=similarity.device)
    if idx.numel() == 0:  # only the current experience is stored: nothing to balance
        return out
    imp = combined_importance(similarity[idx], group_ids[idx], labels[idx], losses[idx], **options)
    return out.index_copy_(0, idx, imp.float())


def task_balanced_weights(base: Tensor, task_labels: Tensor) -> Tensor:
    """Rescale the distribution ``base`` so that every task label present has the same total
    mass, keeping the proportions within a task."""
    mass = torch.zeros(int(task_labels.max()) + 1, device=base.device).index_add_(0, task_labels, base)
    present = (torch.zeros_like(mass).index_add_(0, task_labels, torch.ones_like(base)) > 0).sum()
    return base / mass[task_labels].clamp_min(torch.finfo(base.dtype).tiny) / present
