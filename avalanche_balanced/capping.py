"""Capping a replay distribution: no stored sample may take more than ``max_ratio`` times its
uniform share (exact water-filling).

Pure tensor functions, used by :mod:`avalanche_balanced.importance` (the replay distribution,
equal group shares) and :mod:`avalanche_balanced.draws`. :func:`cap_weights` finds the clipped set
by fixed-point iteration and reads a few values on the host; :func:`capped_by_sort` finds the same
scale in one sort with no host read (the path an accelerator takes).
"""
import torch
from torch import Tensor

__all__ = ["cap_weights", "capped_by_sort"]


def cap_weights(weights: Tensor, max_ratio: float) -> Tensor:
    """Exact water-filling: the largest ``p`` such that ``p = min(c * w, cap)`` sums to 1.

    ``cap`` is ``max_ratio / n``, raised to ``1 / n_pos`` when the ``n_pos``
    positive weights could not take all the mass under it: zero weights get
    probability 0, always (a zero-weight item is never drawn while a
    positive-weight one is left), and with too few positive weights the cap is
    the tightest one that can be met, which makes them equally likely.

    A single clip-then-renormalise overshoots the cap again. Here the clipped
    set grows to its fixed point: clip what exceeds the cap, rescale the rest
    to the remaining mass, repeat until nothing new exceeds it (a few passes
    over the weights in practice: the set only grows, and each pass is one
    vectorised step). Pathological weights that need many rounds fall back to
    one sort, which finds the scale directly. No weight ends above the cap.
    """
    if max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1 (a cap below the uniform share cannot be met), got {max_ratio}")
    n = weights.shape[0]
    positive = (weights > 0).sum()
    # A cap below 1 / n_pos cannot be met by the positive weights alone.
    cap = torch.maximum(torch.as_tensor(max_ratio / n, dtype=weights.dtype, device=weights.device),
                        1.0 / positive.clamp_min(1).to(weights.dtype))
    total = weights.sum()
    if not bool(total > 0):  # all zero: the uniform distribution is the only capped one
        return torch.full_like(weights, 1.0 / n)
    if not bool(weights.max() > cap * total * (1 + 1e-6)):  # nothing to clip
        return weights / total
    if bool(cap * positive <= 1.0 + 1e-6):  # a cap at 1 / n_pos: only uniform over the positives fits
        return (weights > 0).to(weights.dtype) / positive.to(weights.dtype)
    clipped = weights > cap * total
    for _ in range(16):
        free = torch.where(clipped, torch.zeros_like(weights), weights)
        scale = (1.0 - cap * clipped.sum()) / free.sum().clamp_min(torch.finfo(weights.dtype).tiny)
        grown = clipped | (weights * scale > cap * (1 + 1e-6))
        if torch.equal(grown, clipped):
            return torch.where(clipped, cap.expand_as(weights), weights * scale)
        clipped = grown
    return _cap_weights_by_sort(weights, cap)


def _cap_weights_by_sort(weights: Tensor, cap: Tensor) -> Tensor:
    """:func:`cap_weights` in one sort: the scale for every possible number of clipped weights
    (``cap`` is already feasible: at least ``1 / n_pos``)."""
    n, positive = weights.shape[0], (weights > 0).sum()
    if bool(cap * positive <= 1.0 + 1e-6):  # a cap at 1 / n_pos: only uniform over the positives fits
        return (weights > 0).to(weights.dtype) / positive.clamp_min(1).to(weights.dtype)
    w_sorted, order = torch.sort(weights, descending=True)
    # If the j largest weights are capped, the rest scale by (1 - j * cap) / tail_j.
    tail = w_sorted.flip(0).cumsum(0).flip(0)  # tail[j] = sum of w_sorted[j:]
    j = torch.arange(n, device=weights.device, dtype=weights.dtype)
    scale = (1.0 - j * cap) / tail.clamp_min(torch.finfo(weights.dtype).tiny)
    # Feasible j: the first uncapped weight stays below the cap after scaling.
    feasible = w_sorted * scale <= cap * (1 + 1e-6)
    # feasible is monotone in j and holds at j = n - 1 at the latest; argmax finds the first.
    first = torch.argmax(feasible.to(torch.int8))
    # The j < first largest weights scale above the cap, so min() caps exactly them.
    capped_sorted = torch.minimum(w_sorted * scale[first], cap)
    out = torch.empty_like(weights)
    out[order] = capped_sorted
    return out


def capped_by_sort(weights: Tensor, cap: Tensor) -> Tensor:
    """:func:`cap_weights` for normalised weights in one sort and no host sync: the cap is
    raised to ``1 / n_pos`` where the positive weights cannot meet it, zero weights stay 0."""
    positive = (weights > 0).sum().to(weights.dtype)
    cap = torch.maximum(cap.to(weights.dtype), 1.0 / positive.clamp_min(1))
    n = weights.shape[0]
    w_sorted, order = torch.sort(weights, descending=True)
    tail = w_sorted.flip(0).cumsum(0).flip(0)  # tail[j] = sum of w_sorted[j:]
    j = torch.arange(n, device=weights.device, dtype=weights.dtype)
    scale = (1.0 - j * cap) / tail.clamp_min(torch.finfo(weights.dtype).tiny)
    # The first j whose weight, scaled, fits under the cap: it exists at the last positive weight.
    feasible = (w_sorted * scale <= cap * (1 + 1e-6)) & (w_sorted > 0)
    first = torch.argmax(feasible.to(torch.int8))
    capped = torch.minimum(w_sorted * scale[first], cap).clamp_min(0)
    out = torch.empty_like(weights).scatter_(0, order, capped)
    uniform = (weights > 0).to(weights.dtype) / positive.clamp_min(1)
    return torch.where(cap * positive <= 1.0 + 1e-6, uniform, out)


def _cap_on_support(p: Tensor, support: Tensor, max_ratio: float) -> Tensor:
    """:func:`cap_weights` over the entries of ``support`` only (others stay 0)."""
    if bool(support.all()):
        return cap_weights(p, max_ratio)
    idx = torch.nonzero(support).squeeze(1)
    out = torch.zeros_like(p)
    if idx.numel():
        out[idx] = cap_weights(p[idx], max_ratio)
    return out


def _cap_within_groups(p: Tensor, g: Tensor, mask: Tensor, cap: Tensor, num_groups: int) -> Tensor:
    """:func:`capped_by_sort` in every group at once (``p`` sums to 1 within each group, ``cap``
    is per sample, constant within a group and at least ``1 / size``)."""
    n = p.shape[0]
    order = torch.argsort(p, descending=True, stable=True)
    order = order[torch.argsort(g[order], stable=True)]  # by group, largest weight first within it
    ps, gs, cs, ms = p[order], g[order], cap[order], mask[order]
    sizes = torch.bincount(g, minlength=num_groups)
    start = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(n, device=p.device) - start[gs]  # position within the group
    # Weight of this sample and the smaller ones of its group, as a suffix sum (accurate when small).
    suffix = ps.flip(0).cumsum(0).flip(0)
    after_group = torch.cat([suffix, suffix.new_zeros(1)])[(start + sizes)[gs]]
    tail = (suffix - after_group).clamp_min(torch.finfo(p.dtype).tiny)
    # With the first `rank` samples of a group clipped to the cap, the others scale by this:
    scale = ((1.0 - rank.to(p.dtype) * cs) / tail).clamp_min(0)
    positives = torch.zeros(num_groups, dtype=torch.long, device=p.device).index_add_(0, g, mask.long())
    last_positive = rank == positives[gs] - 1  # always feasible: the cap is at least 1 / size
    feasible = ((ps * scale <= cs * (1 + 1e-6)) & ms) | last_positive
    first = torch.full((num_groups,), n, dtype=torch.long, device=p.device).scatter_reduce(
        0, gs, torch.where(feasible, rank, torch.full_like(rank, n)), reduce="amin")
    group_scale = scale[(start + first.clamp_max(n - 1)).clamp_max(n - 1)]
    capped = torch.minimum(ps * group_scale[gs], cs)
    out = torch.empty_like(p).scatter_(0, order, capped)
    return torch.where(mask, out, torch.zeros_like(out))
