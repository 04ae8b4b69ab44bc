"""Importance and replay weights: the pure tensor maths of Balanced Instance Sampling.

Everything here takes tensors and returns tensors on the same device; nothing
keeps state. The buffer (:mod:`avalanche_balanced.buffer`) decides *what* the
similarities and groups are, these functions decide *how* they turn into replay
weights and probabilities, the :class:`~avalanche_balanced.replay_sampler.ReplaySampler`
caches them, and :mod:`avalanche_balanced.draws` draws the minibatch.

The design note's importance of a stored sample ``i`` is::

    importance_i = 1 / (sim_i + eps) * (total_groups / group_size[group_i])

``sim_i`` is the similarity of the sample's features to its class prototype
and ``total_groups`` the number of non-empty groups. Samples far from their
prototype (hard, atypical) and samples of small groups are drawn more often.
"""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .capping import _cap_on_support, _cap_within_groups, cap_weights, capped_by_sort

__all__ = [
    "past_importance",
    "task_balanced_weights",
    "sync_free",
    "masked_balanced_importance",
    "capped_by_sort",
    "cosine_to_unit",
    "balanced_importance",
    "balance_factor",
    "hierarchical_importance",
    "difficulty_factor",
    "cap_weights",
    "replay_distribution",
    "group_share_weights",
    "auto_balance_weight",
    "combined_importance",
    "normalized_entropy",
    "effective_sample_size",
]


# Below this many weights, the CPU takes the same host-sync-free paths as an accelerator (they are
# as fast there); above it, the CPU keeps paths that do less work but read values on the host.
SYNC_FREE_CPU_LIMIT = 65536


def sync_free(weights: Tensor) -> bool:
    """Whether to take the paths that never read a device value on the host: always on an
    accelerator (a host read stalls the queue of launched kernels), on the CPU for small inputs."""
    return weights.device.type != "cpu" or weights.numel() <= SYNC_FREE_CPU_LIMIT


def masked_balanced_importance(similarity: Tensor, group_ids: Tensor, mask: Tensor, *, num_groups: int,
                               balance_weight: float = 1.0, eps: float) -> Tensor:
    """:func:`balanced_importance` over the samples where ``mask`` holds, 0 elsewhere, with
    group counts of fixed width ``num_groups`` (a host-known bound on the ids): no host sync,
    no boolean indexing. Inputs are the buffer's own (finite, in range); nothing is checked."""
    weight = mask.to(similarity.dtype)
    counts = similarity.new_zeros(num_groups).index_add_(0, group_ids, weight)
    per_group = (counts > 0).sum().to(similarity.dtype) / counts.clamp_min(1)
    if balance_weight != 1.0:
        per_group = per_group.pow(balance_weight)
    return per_group.index_select(0, group_ids) * weight / (similarity + eps)


def cosine_to_unit(cosine: Tensor) -> Tensor:
    """Map a cosine similarity from [-1, 1] to the [0, 1] range the importance needs.

    ``(cos + 1) / 2`` keeps the order of similarities and, unlike using the raw
    cosine, never makes ``1 / (sim + eps)`` negative. Values a rounding error
    outside [-1, 1] are clamped.
    """
    return (cosine.clamp(-1.0, 1.0) + 1.0) * 0.5


def _check_finite_unit(similarity: Tensor) -> None:
    # One pass and one host sync: NaN fails both comparisons, +-inf fails one of them.
    lo, hi = torch.aminmax(similarity)
    if not (bool(lo >= 0) and bool(hi <= 1)):
        raise ValueError(
            f"similarity must be finite and lie in [0, 1]; got min={lo.item()}, max={hi.item()} "
            f"(NaN if any value is NaN). Map a cosine similarity with cosine_to_unit() first."
        )


def balanced_importance(
    similarity: Tensor,
    group_ids: Tensor,
    *,
    balance_weight: float = 1.0,
    eps: float = 1e-6,
) -> Tensor:
    """Importance of each stored sample for balanced replay.

    ``importance_i = (1 / (similarity_i + eps)) * (total_groups / group_size[group_ids_i]) ** balance_weight``

    Args:
        similarity: 1-D float tensor in [0, 1], the similarity of each sample to
            its class prototype. Map cosine similarities with
            :func:`cosine_to_unit`; values outside [0, 1], NaN or inf raise.
        group_ids: 1-D integer tensor of non-negative group ids, same length.
        balance_weight: exponent of the balance factor. ``1`` is the design
            note's formula, ``0`` drops the balance factor (similarity only).
        eps: keeps the similarity term finite at zero similarity (the term is
            then ``1 / eps``).

    Returns:
        1-D float tensor of positive importances (not normalised). An empty
        input gives an empty output. With a single group every balance factor
        is the same (``1 / n``), so no special case is needed.
    """
    if similarity.dim() != 1 or group_ids.dim() != 1:
        raise ValueError(
            f"similarity and group_ids must be 1-D, got shapes "
            f"{tuple(similarity.shape)} and {tuple(group_ids.shape)}"
        )
    if similarity.shape[0] != group_ids.shape[0]:
        raise ValueError(
            f"similarity has {similarity.shape[0]} entries but group_ids has "
            f"{group_ids.shape[0]}"
        )
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if balance_weight < 0:
        raise ValueError(f"balance_weight must be >= 0, got {balance_weight}")
    if similarity.numel() == 0:
        return similarity.new_empty(0)
    _check_finite_unit(similarity)
    try:
        counts = torch.bincount(group_ids)
    except RuntimeError as err:  # bincount's own message does not name the argument
        raise ValueError(f"group_ids must be non-negative integers: {err}") from err
    per_group = _balance_per_group(counts, similarity.dtype)
    if balance_weight != 1.0:
        per_group = per_group.pow(balance_weight)
    return per_group.index_select(0, group_ids).div_(similarity + eps)


def _balance_per_group(counts: Tensor, dtype) -> Tensor:
    # The balance factor per group (a short vector); callers gather it per sample.
    return (counts > 0).sum().to(dtype) / counts.to(dtype)


def balance_factor(group_ids: Tensor, dtype=torch.float32) -> Tensor:
    """``total_groups / size of the sample's group`` for every sample (non-negative integer ids)."""
    if group_ids.numel() == 0:
        return torch.empty(0, dtype=dtype, device=group_ids.device)
    return _balance_per_group(torch.bincount(group_ids), dtype).index_select(0, group_ids)


def hierarchical_importance(
    similarity: Tensor, group_ids: Tensor, labels: Tensor, *, eps: float = 0.1
) -> Tensor:
    """Two-level balanced importance: equal mass per group, then per class within the group.

    ``importance_i = 1 / G * 1 / C_g * s_i / sum_{j in class(i)} s_j`` with
    ``s_i = 1 / (similarity_i + eps)``, ``G`` the non-empty groups and ``C_g``
    the classes present in sample ``i``'s group. Within a class the similarity
    term decides; a group of many classes no longer gives each class a smaller
    share than a group of one class gives its class (the design note's future
    work). Sums to 1 over the samples; empty input gives empty output.
    """
    if similarity.numel() == 0:
        return similarity.new_empty(0)
    term = 1.0 / (similarity + eps)
    num_classes = int(labels.max()) + 1
    class_sum = term.new_zeros(num_classes).index_add_(0, labels, term)
    # Classes per group: count distinct (group, class) pairs once each.
    num_groups = int(group_ids.max()) + 1
    pair_present = torch.zeros(num_groups * num_classes, dtype=torch.bool, device=labels.device)
    pair_present[group_ids * num_classes + labels] = True
    classes_per_group = pair_present.view(num_groups, num_classes).sum(1).to(term.dtype)
    total_groups = (classes_per_group > 0).sum().to(term.dtype)
    return term / class_sum[labels] / classes_per_group[group_ids] / total_groups


def difficulty_factor(losses: Tensor, weight: float) -> Tensor:
    """``(loss_i / mean loss) ** weight``: harder stored samples (higher loss at their last
    replay) are drawn more often. Unknown losses (negative: never replayed) count as the mean,
    so they stay neutral; with no known loss, or ``weight == 0``, every factor is 1."""
    if weight < 0:
        raise ValueError(f"difficulty weight must be >= 0, got {weight}")
    known = losses >= 0
    count = known.sum()
    mean = torch.where(known, losses, torch.zeros_like(losses)).sum() / count.clamp_min(1)
    mean = torch.where(count > 0, mean, torch.ones_like(mean)).clamp_min(1e-8)
    ratio = torch.where(known, losses / mean, torch.ones_like(losses)).clamp_min(1e-3)
    return ratio.pow(weight) if weight != 1.0 else ratio


def replay_distribution(
    importance: Tensor, is_current: Optional[Tensor], *, max_ratio: Optional[float] = None
) -> Tensor:
    """Draw probabilities in which balancing only redistributes the *past* experiences' share.

    The samples of the current experience (``is_current``) keep exactly their
    uniform share, ``1 / n`` each: balancing is meant to even out replay among
    the old groups, and a class that has no prototype yet would otherwise be a
    group of its own and take a whole group's share. The past samples split the
    remaining ``n_past / n`` in proportion to ``importance``, each capped at
    ``max_ratio`` times the uniform probability (exact water-filling, so no
    stored sample can take a runaway share). All-zero past importances fall back
    to uniform; ``is_current=None`` means no current samples. Returns a
    probability vector (sums to 1) on the same device; ``max_ratio < 1`` raises
    ``ValueError`` (a cap below the uniform share cannot be met).
    """
    if max_ratio is not None and max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1 (a cap below the uniform share cannot be met), got {max_ratio}")
    n = importance.shape[0]
    if n == 0:
        return importance.new_empty(0)
    weights = importance.to(torch.float32)
    if sync_free(weights):
        return _replay_distribution_sync_free(weights, is_current, max_ratio)
    if is_current is None:  # every sample is past: normalise (uniform if all zero) and cap
        total = weights.sum()
        if not bool(total > 0):
            return torch.full_like(weights, 1.0 / n)
        return cap_weights(weights, max_ratio) if max_ratio is not None else weights / total
    past = ~is_current
    past_count = past.sum()
    past_w = torch.where(past, weights, torch.zeros_like(weights))
    total = past_w.sum()
    uniform_past = past.to(weights.dtype) / past_count.clamp_min(1).to(weights.dtype)
    p_past = torch.where(total > 0, past_w / total.clamp_min(torch.finfo(weights.dtype).tiny), uniform_past)
    if max_ratio is not None:
        # The cap is relative to the uniform probability over the past samples: p * n_past <= max_ratio.
        p_past = _cap_on_support(p_past, past, max_ratio)
    return p_past * (past_count.to(weights.dtype) / n) + is_current.to(weights.dtype) / n


def group_share_weights(similarity: Tensor, group_ids: Tensor, mask: Tensor, *, num_groups: int,
                        eps: float = 0.1, max_ratio: Optional[float] = None) -> Tensor:
    """Weights in which every group present among the ``mask``-ed samples has the same total.

    Each of the ``G`` groups gets ``1 / G``; inside a group the samples share it in
    proportion to the similarity term ``1 / (sim + eps)``, each capped at ``max_ratio``
    times the group's uniform share ``1 / (G * size)`` (exact water-filling per group, one
    sort, no host sync). Sums to 1 over the masked samples, 0 elsewhere (all 0 when none is
    masked). So the balance is exact per group, whatever the similarities, and a group of
    one sample gets the whole share of its group; with two, they split it by similarity.
    """
    if max_ratio is not None and max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1 (a cap below the uniform share cannot be met), got {max_ratio}")
    if similarity.device.type == "cpu":  # on an accelerator the check would stall the queue
        _check_finite_unit(similarity)
    dtype, tiny = torch.float32, torch.finfo(torch.float32).tiny
    g = group_ids.long()
    term = torch.where(mask, 1.0 / (similarity.to(dtype) + eps), torch.zeros((), dtype=dtype, device=g.device))
    counts = torch.zeros(num_groups, dtype=dtype, device=g.device).index_add_(0, g, mask.to(dtype))
    mass = torch.zeros(num_groups, dtype=dtype, device=g.device).index_add_(0, g, term)
    p = term / mass[g].clamp_min(tiny)  # sums to 1 within every present group
    if max_ratio is not None:
        p = _cap_within_groups(p, g, mask, max_ratio / counts[g].clamp_min(1), num_groups)
    return p / (counts > 0).sum().clamp_min(1).to(dtype)


def _replay_distribution_sync_free(weights: Tensor, is_current: Optional[Tensor], max_ratio) -> Tensor:
    """:func:`replay_distribution` in branch-free tensor code (the same result)."""
    n = weights.shape[0]
    past = torch.ones_like(weights, dtype=torch.bool) if is_current is None else ~is_current
    past_count = past.sum().to(weights.dtype)
    w = torch.where(past, weights, torch.zeros_like(weights))
    total = w.sum()
    uniform_past = past.to(weights.dtype) / past_count.clamp_min(1)
    p = torch.where(total > 0, w / total.clamp_min(torch.finfo(weights.dtype).tiny), uniform_past)
    if max_ratio is not None:
        p = capped_by_sort(p, max_ratio / past_count.clamp_min(1))
    current = torch.zeros_like(weights) if is_current is None else is_current.to(weights.dtype) / n
    return p * (past_count / n) + current


def auto_balance_weight(
    similarity_term: Tensor, balance_factor: Tensor, *, target_ess: float = 0.7,
    candidates: Sequence[float] = (1.0, 0.75, 0.5, 0.25, 0.0),
) -> Tensor:
    """The largest balance-factor exponent whose importance keeps Kish's ESS >= ``target_ess``.

    ``importance(w) = similarity_term * balance_factor ** w`` for every
    candidate ``w`` at once (one matrix, no loop over samples); the first
    candidate, in the given order, meeting the target wins, else the last. A
    dynamic balance weight: strong balancing while the groups are even enough
    for it to cost little diversity, weaker as group sizes spread. Returns a
    0-d tensor (no host sync).
    """
    w = torch.tensor(list(candidates), dtype=torch.float64, device=similarity_term.device)
    if similarity_term.numel() == 0:
        return w[0]
    imp = similarity_term.double().unsqueeze(0) * balance_factor.double().unsqueeze(0).pow(w.unsqueeze(1))
    imp = imp / imp.amax(1, keepdim=True).clamp_min(1e-300)
    ess = imp.sum(1).square() / (imp.shape[1] * imp.square().sum(1).clamp_min(1e-300))
    ok = ess >= target_ess
    first = torch.where(ok.any(), torch.argmax(ok.to(torch.int8)), torch.tensor(len(candidates) - 1,
                                                                               device=w.device))
    return w[first]


def combined_importance(
    similarity: Tensor, group_ids: Tensor, labels: Tensor, losses: Tensor, *, eps: float,
    balance_weight: Union[float, str] = 1.0, hierarchical: bool = False, difficulty_weight: float = 0.0,
    target_ess: float = 0.7,
) -> Tensor:
    """The buffer's importance of each sample, every option applied:
    :func:`hierarchical_importance` when ``hierarchical``, else
    :func:`balanced_importance` with ``balance_weight`` (``"auto"``: the
    exponent of :func:`auto_balance_weight` for ``target_ess``), times
    :func:`difficulty_factor` of ``losses`` when ``difficulty_weight > 0``."""
    if hierarchical:
        imp = hierarchical_importance(similarity, group_ids, labels, eps=eps)
    elif balance_weight == "auto":
        term, factor = 1.0 / (similarity + eps), balance_factor(group_ids, similarity.dtype)
        imp = term * factor.pow(auto_balance_weight(term, factor, target_ess=target_ess).to(term))
    else:
        imp = balanced_importance(similarity, group_ids, balance_weight=balance_weight, eps=eps)
    if difficulty_weight > 0:
        imp = imp * difficulty_factor(losses, difficulty_weight)
    return imp


def normalized_entropy(counts: Tensor, num_bins: Optional[int] = None) -> Tensor:
    """Entropy of a histogram divided by ``log(num_bins)``.

    ``num_bins`` defaults to the number of non-empty bins; pass the number of
    groups that *could* have been drawn (e.g. the non-empty groups of the
    buffer) so that never drawing a group lowers the score. 1 means perfectly
    balanced; 0 means a single bin (or nothing) was seen. Returns a 0-d
    float64 tensor on the counts' device.
    """
    counts = counts.to(torch.float64).flatten()
    nonzero = (counts > 0).sum() if num_bins is None else torch.tensor(num_bins, device=counts.device)
    total = counts.sum()
    p = counts / total.clamp_min(1)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return torch.where(nonzero > 1, ent / torch.log(nonzero.clamp_min(2).to(torch.float64)),
                       torch.zeros((), dtype=torch.float64, device=counts.device))


def effective_sample_size(weights: Tensor) -> Tensor:
    """Kish's effective sample size of a weighted draw, as a fraction of the samples.

    ``(sum w)^2 / (n * sum w^2)``: 1 when every sample is equally likely, ``1/n``
    when one sample takes all the weight. All-zero weights are drawn uniformly
    by :func:`~avalanche_balanced.draws.sample_indices`, so they give 1; no samples give 0. Weights must
    be finite and non-negative. Returns a 0-d float64 tensor on the weights'
    device (no host sync).
    """
    w = weights.detach().to(torch.float64).flatten()
    if w.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=weights.device)
    # Scale by the largest weight first: squares of importances near 1/eps would overflow float32.
    w = w / w.max().clamp_min(torch.finfo(torch.float64).tiny)
    total, squares = w.sum(), w.square().sum()
    return torch.where(squares > 0, total.square() / (w.numel() * squares.clamp_min(1e-300)),
                       torch.ones((), dtype=torch.float64, device=weights.device))


def past_importance(similarity: Tensor, group_ids: Tensor, labels: Tensor, losses: Tensor, past: Optional[Tensor],
                    *, num_groups: int, eps: float, balance_weight: Union[float, str], hierarchical: bool,
                    difficulty_weight: float, target_ess: float) -> Tensor:
    """:func:`combined_importance` over the samples where ``past``
    holds (every sample when None), 0 for the others: group counts and group sizes are those of
    the past samples.

    With the default options (flat groups, a fixed balance weight) this is masked
    tensor code of fixed width ``num_groups`` that never reads a device value on the
    host (see :func:`sync_free`); otherwise it selects
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
