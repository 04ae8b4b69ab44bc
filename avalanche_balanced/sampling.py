"""Pure tensor maths of Balanced Instance Sampling.

Everything here takes tensors and returns tensors on the same device; nothing
keeps state. The buffer (:mod:`avalanche_balanced.buffer`) decides *what* the
similarities and groups are, these functions decide *how* they turn into a
replay minibatch.

The design note's importance of a stored sample ``i`` is::

    importance_i = 1 / (sim_i + eps) * (total_groups / group_size[group_i])

``sim_i`` is the similarity of the sample's features to its class prototype
and ``total_groups`` the number of non-empty groups. Samples far from their
prototype (hard, atypical) and samples of small groups are drawn more often.
"""
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "cosine_to_unit",
    "balanced_importance",
    "sample_indices",
    "normalized_entropy",
]


def cosine_to_unit(cosine: Tensor) -> Tensor:
    """Map a cosine similarity from [-1, 1] to the [0, 1] range the importance needs.

    ``(cos + 1) / 2`` keeps the order of similarities and, unlike using the raw
    cosine, never makes ``1 / (sim + eps)`` negative. Values a rounding error
    outside [-1, 1] are clamped.
    """
    return (cosine.clamp(-1.0, 1.0) + 1.0) * 0.5


def _check_finite_unit(similarity: Tensor) -> None:
    # One host sync for the whole check, not one per element.
    bad = ~(torch.isfinite(similarity) & (similarity >= 0) & (similarity <= 1))
    if bool(bad.any()):
        raise ValueError(
            "similarity must be finite and lie in [0, 1]; got values outside "
            f"(min={similarity.min().item()}, max={similarity.max().item()}, "
            f"non-finite={int((~torch.isfinite(similarity)).sum())}). Map a cosine "
            "similarity with cosine_to_unit() first."
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
    if bool((group_ids < 0).any()):
        raise ValueError("group_ids must be non-negative")

    counts = torch.bincount(group_ids)
    total_groups = (counts > 0).sum().to(similarity.dtype)
    balance = total_groups / counts[group_ids].to(similarity.dtype)
    if balance_weight != 1.0:
        balance = balance.pow(balance_weight)
    return balance / (similarity + eps)


def _cap_weights(weights: Tensor, max_ratio: float) -> Tensor:
    """Exact water-filling: the largest ``p`` such that ``p = min(c * w, max_ratio / n)`` sums to 1.

    A single clip-then-renormalise overshoots the cap again; this finds the
    scale ``c`` in one sort, so no weight ends above ``max_ratio`` times the mean.
    """
    n = weights.shape[0]
    cap = max_ratio / n
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
    capped_sorted = torch.minimum(w_sorted * scale[first], w_sorted.new_tensor(cap))
    out = torch.empty_like(weights)
    out[order] = capped_sorted
    return out / out.sum()


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
    ``torch.multinomial(p, k, replacement=False)``, done in one vectorised pass
    with exponential keys: ``argtopk(-log(E_i) + log p_i)``), and *with*
    replacement only when ``k > n``.

    Fallbacks: all-zero weights give a uniform draw; zero-weight entries are
    drawn only once every positive-weight entry has been taken.

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
    bad = ~torch.isfinite(importance) | (importance < 0)
    if bool(bad.any()):
        raise ValueError("importance must be finite and non-negative")
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=importance.device)

    total = importance.sum()
    # Degenerate weights (all zero) fall back to uniform, without a host sync.
    p = torch.where(total > 0, importance / total.clamp_min(torch.finfo(importance.dtype).tiny),
                    importance.new_full((), 1.0 / n))
    if uniform_mix > 0:
        p = (1.0 - uniform_mix) * p + uniform_mix / n
    if max_ratio is not None:
        p = _cap_weights(p, max_ratio)

    if k > n:
        return torch.multinomial(p, k, replacement=True, generator=generator)
    # Exponential-key (Gumbel-top-k) sampling: key_i = log p_i - log E_i, E ~ Exp(1).
    # log(0) is clamped far below any real log-probability so zero weights come last,
    # in random order among themselves.
    noise = torch.empty_like(p).exponential_(generator=generator)
    keys = torch.log(p).clamp_min(-1e4) - torch.log(noise)
    return torch.topk(keys, k, sorted=False).indices


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
