"""Drawing a replay minibatch from weights: in proportion, uniformly, or in passes.

:mod:`avalanche_balanced.importance` turns similarities and groups into weights; the
functions here turn weights into indices. Proportional draws are without replacement
(successive sampling, the distribution of ``torch.multinomial(p, k, replacement=False)``)
and take a path with no host sync on an accelerator and for small CPU inputs
(:func:`~avalanche_balanced.importance.sync_free`).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .capping import cap_weights, capped_by_sort
from .importance import SYNC_FREE_CPU_LIMIT, sync_free

__all__ = ["sample_indices", "draw_proportional", "uniform_indices", "next_in_pass", "first_occurrences"]


def sample_indices(
    importance: Tensor,
    k: int,
    *,
    generator: Optional[torch.Generator] = None,
    uniform_mix: float = 0.0,
    max_ratio: Optional[float] = None,
) -> Tensor:
    """Draw ``k`` indices with probability proportional to ``importance``.

    The weights are normalised, optionally mixed with the uniform distribution
    (``p = (1 - uniform_mix) * p + uniform_mix / n``) and optionally capped at
    ``max_ratio`` times the mean weight (``1 / n``), exactly, by water-filling.
    With the defaults (``uniform_mix=0``, ``max_ratio=None``) the draw follows
    the design note's normalised importance unchanged.

    Replacement rule: indices are drawn *without* replacement when ``k <= n``
    (successive sampling, the same distribution as
    ``torch.multinomial(p, k, replacement=False)``: draws with replacement from
    one cumulative sum, repeats skipped, and exponential keys
    ``argtopk(log(U_i) / p_i)`` when the weights are too concentrated for that),
    and *with* replacement only when ``k > n``.

    Fallbacks: all-zero weights give a uniform draw. Zero-weight entries are
    never drawn while ``k`` does not exceed the number of positive-weight
    entries (with or without ``max_ratio``: a cap the positive entries cannot
    meet is raised to ``1 / n_pos``, see :func:`~avalanche_balanced.capping.cap_weights`); beyond that they
    fill the rest of the draw, uniformly among themselves.

    Args:
        importance: 1-D non-negative finite tensor of length ``n >= 1``.
        k: number of indices, ``k >= 0``.
        generator: a ``torch.Generator`` on the importance's device, for
            reproducible draws.
        uniform_mix: weight of the uniform distribution, in [0, 1].
        max_ratio: cap on ``p_i / mean(p)``; must be >= 1.

    Returns:
        1-D ``long`` tensor of ``k`` indices on the importance's device.
    """
    if importance.dim() != 1:
        raise ValueError(f"importance must be 1-D, got shape {tuple(importance.shape)}")
    n = importance.shape[0]
    if n == 0:
        raise ValueError("cannot sample from an empty set of importances (is the buffer empty?)")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"uniform_mix must lie in [0, 1], got {uniform_mix}")
    if max_ratio is not None and max_ratio < 1.0:
        raise ValueError(f"max_ratio must be >= 1 (a cap below the mean is infeasible), got {max_ratio}")
    if not importance.dtype.is_floating_point:
        importance = importance.float()
    lo, hi = torch.aminmax(importance)
    if not (bool(lo >= 0) and bool(hi < float("inf"))):  # NaN fails both
        raise ValueError(f"importance must be finite and non-negative, got min={lo.item()}, max={hi.item()}")
    return draw_proportional(importance, k, generator=generator, uniform_mix=uniform_mix, max_ratio=max_ratio)


def draw_proportional(
    weights: Tensor,
    k: int,
    *,
    generator: Optional[torch.Generator] = None,
    uniform_mix: float = 0.0,
    max_ratio: Optional[float] = None,
) -> Tensor:
    """The draw of :func:`sample_indices` without the argument checks (for callers
    whose weights are known to be finite, non-negative and 1-D, such as the buffer)."""
    n = weights.shape[0]
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=weights.device)
    if sync_free(weights):
        return _draw_sync_free(weights, k, generator, uniform_mix, max_ratio)
    if uniform_mix > 0 or max_ratio is not None or k > n:
        p = _mixed(weights, uniform_mix)
        if max_ratio is not None:
            p = cap_weights(p, max_ratio)
        if k > n:
            return torch.multinomial(p, k, replacement=True, generator=generator)
        weights = p
    chosen = _draw_by_rejection(weights, k, generator)
    if chosen.shape[0] == k:
        return chosen
    return _draw_by_keys(weights, k, generator, forced=chosen)


def _mixed(weights: Tensor, uniform_mix: float) -> Tensor:
    """Normalised weights (uniform when all are zero, without a host sync), mixed with the
    uniform distribution at ``uniform_mix``."""
    n = weights.shape[0]
    total = weights.sum()
    p = torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny),
                    weights.new_full((), 1.0 / n))
    return (1.0 - uniform_mix) * p + uniform_mix / n if uniform_mix > 0 else p


def _draw_sync_free(weights: Tensor, k: int, generator, uniform_mix: float, max_ratio) -> Tensor:
    """Successive sampling without replacement by Gumbel-top-k (Vieira 2014; the exponential keys
    of Efraimidis & Spirakis 2006 in log space): the ``k`` largest ``log p_i + G_i``, ``G`` i.i.d.
    Gumbel. Zero weights get keys below every positive one (random among themselves), so they
    fill in only after every positive weight; all-zero weights are a uniform draw. ``k > n``
    draws with replacement. One pass over the weights and no host sync."""
    n = weights.shape[0]
    p = _mixed(weights, uniform_mix)
    if max_ratio is not None:
        p = capped_by_sort(p, p.new_tensor(max_ratio / n))
    if k > n:
        return torch.multinomial(p, k, replacement=True, generator=generator)
    u = torch.rand(n, device=weights.device, generator=generator).clamp_(1e-12, 1 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    # log p >= log(smallest normal float) > -104 for positive p; zeros sit a thousand below.
    keys = torch.where(p > 0, torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), p.new_tensor(-1000.0)) + gumbel
    return torch.topk(keys, k).indices


def next_in_pass(order: Optional[Tensor], position: int, n: int, k: int, *,
                 generator: Optional[torch.Generator] = None, device=None) -> Tuple[Tensor, Tensor, int]:
    """Uniform draws in reshuffled passes: ``min(k, n)`` distinct indices of ``range(n)``, the
    next ones of the pass ``order`` (a permutation of ``range(n)``) from ``position`` on, and
    the pass and position to continue from.

    Every index is drawn exactly once per pass, as by Avalanche's ``ReplayDataLoader`` (which
    cycles through the buffer), but every batch is full: when a pass runs out mid-batch, a new
    permutation starts with indices not in the batch's tail of the old pass, and those tail
    indices go to the end of the new pass. ``order=None`` (or of another length) starts a pass.
    One permutation per pass, no host sync.
    """
    k = min(k, n)
    if order is None or order.shape[0] != n:
        order, position = torch.randperm(n, device=device, generator=generator), 0
    if position + k <= n:
        return order[position:position + k], order, position + k
    tail = order[position:]
    fresh = torch.randperm(n, device=device, generator=generator)
    in_tail = torch.zeros(n, dtype=torch.bool, device=fresh.device)
    in_tail[tail] = True
    # A stable sort by the mask moves the old pass's tail to the end of the new pass, in order.
    fresh = fresh[torch.sort(in_tail[fresh].to(torch.uint8), stable=True).indices]
    need = k - tail.shape[0]
    return torch.cat([tail, fresh[:need]]), fresh, need


def uniform_indices(n: int, k: int, *, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """``min(k, n)`` distinct indices of ``range(n)`` uniformly at random, in random order.

    ``O(k)`` work when ``k`` is small against ``n`` (random draws, repeats skipped),
    a permutation otherwise.
    """
    k = min(k, n)
    if (torch.device(device).type != "cpu" if device is not None else False) or n <= SYNC_FREE_CPU_LIMIT:
        # the k largest of n uniform keys: a uniform subset in random order, no host sync
        return torch.topk(torch.rand(n, device=device, generator=generator), k).indices
    if 4 * k > n:
        return torch.randperm(n, device=device, generator=generator)[:k]
    distinct = first_occurrences(torch.randint(n, (4 * k,), device=device, generator=generator))
    if distinct.shape[0] >= k:  # P(fewer than k distinct of 4k draws from n >= 4k) is tiny
        return distinct[:k]
    return torch.randperm(n, device=device, generator=generator)[:k]


def first_occurrences(candidates: Tensor) -> Tensor:
    """The distinct values of a 1-D tensor in order of first appearance."""
    unique, inverse = torch.unique(candidates, return_inverse=True)
    position = torch.arange(candidates.shape[0], device=candidates.device)
    first = torch.full_like(unique, candidates.shape[0]).scatter_reduce_(0, inverse, position, "amin")
    return candidates[first.sort().values]


def _draw_by_rejection(weights: Tensor, k: int, generator, rounds: int = 3) -> Tensor:
    """Successive sampling as draws *with* replacement, keeping first occurrences.

    Skipping repeats of i.i.d. draws proportional to ``w`` is exactly sequential
    sampling without replacement, and needs one cumulative sum plus ``O(k log n)``
    work instead of a random number per stored sample. Returns fewer than ``k``
    indices (a valid prefix of the draw) when the weights are so concentrated
    that ``rounds`` rounds of ``2k`` candidates do not find ``k`` distinct ones.
    """
    cdf = torch.cumsum(weights, 0, dtype=torch.float64)  # float64: exact enough for 1e6+ items
    chosen = torch.empty(0, dtype=torch.long, device=weights.device)
    if not bool(cdf[-1] > 0):
        return chosen
    for _ in range(rounds):
        u = torch.rand(2 * (k - chosen.shape[0]) + 8, dtype=torch.float64, device=weights.device,
                       generator=generator) * cdf[-1]
        candidates = torch.searchsorted(cdf, u, right=True).clamp_max(len(cdf) - 1)
        chosen = first_occurrences(torch.cat([chosen, candidates]))[:k]  # the chosen prefix stays first
        if chosen.shape[0] == k:
            break
    return chosen


def _draw_by_keys(weights: Tensor, k: int, generator, forced: Tensor) -> Tensor:
    """Exponential keys (Efraimidis & Spirakis 2006): the k largest ``log(U_i) / w_i``,
    ``U ~ U(0, 1)``, are a draw without replacement proportional to ``w``.

    ``forced`` indices (a prefix already drawn) get key +inf; conditioned on that
    prefix the rest is again successive sampling, so the result stays exact.
    Zero weights go last, in random order, so all-zero weights are a uniform draw.
    """
    n = weights.shape[0]
    keys = torch.rand(n, device=weights.device, generator=generator).log_()
    positive = weights > 0
    keys = torch.where(positive, keys / weights, keys.new_tensor(float("-inf")))
    keys[forced] = float("inf")
    num_positive = int(positive.sum())
    if k <= num_positive:
        return torch.topk(keys, k, sorted=False).indices
    zeros = torch.nonzero(~positive).squeeze(1)
    fill = zeros[torch.topk(torch.rand(zeros.shape[0], device=weights.device, generator=generator),
                            k - num_positive, sorted=False).indices]
    return torch.cat([torch.nonzero(positive).squeeze(1), fill])
