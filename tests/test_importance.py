"""The pure sampling maths: formula, draw frequencies, fallbacks, errors."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from avalanche_balanced import balanced_importance, cosine_to_unit, normalized_entropy, sample_indices


def test_importance_matches_hand_computed_values():
    sim = torch.tensor([0.5, 0.25, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 3])  # group 0 has 3 samples, group 3 has 1; 2 groups
    eps = 1e-6
    got = balanced_importance(sim, groups, eps=eps)
    expected = torch.tensor([
        (1 / (0.5 + eps)) * (2 / 3),
        (1 / (0.25 + eps)) * (2 / 3),
        (1 / (1.0 + eps)) * (2 / 3),
        (1 / (0.0 + eps)) * (2 / 1),
    ])
    torch.testing.assert_close(got, expected)


def test_balance_weight_scales_only_the_balance_factor():
    sim = torch.tensor([0.5, 0.5, 0.5])
    groups = torch.tensor([0, 1, 1])
    zero = balanced_importance(sim, groups, balance_weight=0.0)
    torch.testing.assert_close(zero, torch.full((3,), 1 / (0.5 + 1e-6)))
    half = balanced_importance(sim, groups, balance_weight=0.5)
    torch.testing.assert_close(half, (1 / (0.5 + 1e-6)) * torch.tensor([2.0, 1.0, 1.0]).sqrt())


def test_single_group_gives_pure_similarity_term():
    sim = torch.rand(50)
    got = balanced_importance(sim, torch.zeros(50, dtype=torch.long))
    # balance factor 1/50 for everyone: only the similarity term orders the samples
    torch.testing.assert_close(got, (1 / 50) / (sim + 1e-6))


def test_zero_similarity_is_finite():
    """Guards the eps term: zero similarity gives exactly (1 / eps) * balance factor, never inf."""
    # 4 singleton groups: balance factor 4 / 1 for everyone, similarity term 1 / 1e-6 (default eps).
    got = balanced_importance(torch.zeros(4), torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(got, torch.full((4,), 4.0 / 1e-6))
    # Mixed: groups of 3, 1, 1 (3 groups), balance_weight 0.5, custom eps; sim 0 next to sim 1.
    sim = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 2])
    got = balanced_importance(sim, groups, balance_weight=0.5, eps=1e-3)
    factor = torch.tensor([3 / 3, 3 / 3, 3 / 3, 3 / 1, 3 / 1]) ** 0.5
    torch.testing.assert_close(got, factor / (sim + 1e-3))
    assert got[0] / got[1] == pytest.approx((1 + 1e-3) / 1e-3, rel=1e-5)
    # The draw accepts these weights (finite), and their probabilities are finite and sum to 1.
    p = got / got.sum()
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    assert sorted(sample_indices(got, 5, generator=gen).tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 1.5])
def test_similarity_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match="similarity"):
        balanced_importance(torch.tensor([0.5, bad]), torch.tensor([0, 1]))


def test_importance_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="entries"):
        balanced_importance(torch.rand(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        balanced_importance(torch.rand(3), torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        balanced_importance(torch.rand(3, 1), torch.zeros(3, dtype=torch.long))
    assert balanced_importance(torch.empty(0), torch.empty(0, dtype=torch.long)).numel() == 0


def test_cosine_to_unit_maps_range():
    torch.testing.assert_close(cosine_to_unit(torch.tensor([-1.0, 0.0, 1.0, 1.0000001])),
                               torch.tensor([0.0, 0.5, 1.0, 1.0]))


def test_single_draw_frequencies_match_weights():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 10.0])
    gen = torch.Generator().manual_seed(0)
    n = 10000  # binomial s.d. at most 0.005: the tolerance is four of them
    draws = torch.cat([sample_indices(weights, 1, generator=gen) for _ in range(n)])
    freq = torch.bincount(draws, minlength=6).float() / n
    torch.testing.assert_close(freq, weights / weights.sum(), atol=0.02, rtol=0)
    assert freq[4] == 0  # zero weight never drawn while positive weights remain


def inclusion_without_replacement(weights, k):
    """Exact probability that each index is among ``k`` successive draws without replacement,
    each draw proportional to the remaining weights (``torch.multinomial(replacement=False)``'s
    law), by enumerating every ordered draw."""
    w = [float(v) for v in weights]
    inclusion = [0.0] * len(w)
    for order in itertools.permutations(range(len(w)), k):
        p, left = 1.0, sum(w)
        for i in order:
            if w[i] == 0.0:
                p = 0.0
                break
            p, left = p * w[i] / left, left - w[i]
        for i in order:
            inclusion[i] += p
    return torch.tensor(inclusion)


def test_exact_inclusion_matches_multinomial():
    weights = torch.tensor([5.0, 1.0, 1.0, 2.0, 0.5, 0.5])
    gen = torch.Generator().manual_seed(3)
    ref = torch.stack([torch.multinomial(weights, 3, replacement=False, generator=gen) for _ in range(4000)])
    freq = torch.bincount(ref.flatten(), minlength=6).float() / 4000  # s.d. at most 0.008
    torch.testing.assert_close(freq, inclusion_without_replacement(weights, 3).float(), atol=0.035, rtol=0)
    assert inclusion_without_replacement(weights, 3).sum().item() == pytest.approx(3.0)


@pytest.mark.parametrize("weights, k, n, atol", [
    # binomial s.d. of an inclusion frequency at most 0.5 / sqrt(n): the tolerances are 4 of them
    ([5.0, 1.0, 1.0, 2.0, 0.5, 0.5], 3, 10000, 0.02),
    # One huge weight makes most with-replacement candidates repeats: the key fallback runs.
    ([1e6, 1.0, 2.0, 3.0, 0.0, 4.0], 4, 6000, 0.026),
])
def test_draw_without_replacement_matches_multinomial(weights, k, n, atol):
    weights = torch.tensor(weights)
    gen = torch.Generator().manual_seed(1)
    ours = torch.stack([sample_indices(weights, k, generator=gen) for _ in range(n)])
    assert all(len(set(row.tolist())) == k for row in ours[:200])  # no repeats
    inclusion = torch.bincount(ours.flatten(), minlength=6).float() / n
    exact = inclusion_without_replacement(weights, k).float()
    torch.testing.assert_close(inclusion, exact, atol=atol, rtol=0)


def test_replacement_only_when_k_exceeds_n():
    gen = torch.Generator().manual_seed(0)
    idx = sample_indices(torch.ones(5), 5, generator=gen)
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]
    idx = sample_indices(torch.ones(5), 12, generator=gen)
    assert idx.shape == (12,) and idx.max() < 5


def test_all_zero_weights_fall_back_to_uniform():
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_indices(torch.zeros(4), 1, generator=gen) for _ in range(8000)])
    freq = torch.bincount(draws, minlength=4).float() / 8000
    torch.testing.assert_close(freq, torch.full((4,), 0.25), atol=0.02, rtol=0)


def test_uniform_mix_and_cap():
    weights = torch.tensor([100.0, 1.0, 1.0, 1.0])
    gen = torch.Generator().manual_seed(0)
    # uniform_mix=1: uniform; a cap at 2x the mean: p = [0.5, 1/6, 1/6, 1/6] exactly (water-filling)
    for options, expected in ((dict(uniform_mix=1.0), torch.full((4,), 0.25)),
                              (dict(max_ratio=2.0), torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6]))):
        # k > n draws with replacement: each index follows p (tight: 20000 draws in one call)...
        draws = sample_indices(weights, 20000, generator=gen, **options)
        torch.testing.assert_close(torch.bincount(draws, minlength=4).float() / 20000, expected, atol=0.015, rtol=0)
        # ...and so does a single draw without replacement (looser: 2000 calls)
        draws = torch.cat([sample_indices(weights, 1, generator=gen, **options) for _ in range(2000)])
        torch.testing.assert_close(torch.bincount(draws, minlength=4).float() / 2000, expected, atol=0.05, rtol=0)


def test_cap_weights_is_exact():
    from avalanche_balanced.capping import cap_weights as _cap_weights
    w = torch.rand(1000) ** 4
    w = w / w.sum()
    capped = _cap_weights(w, 3.0)
    assert abs(capped.sum().item() - 1) < 1e-5
    assert capped.max().item() <= 3.0 / 1000 * (1 + 1e-4)
    # order of the uncapped weights is preserved (a common scale)
    small = capped < 3.0 / 1000 * 0.999
    ratio = capped[small] / w[small]
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio))


def test_sample_errors():
    with pytest.raises(ValueError, match="empty"):
        sample_indices(torch.empty(0), 3)
    with pytest.raises(ValueError, match="non-negative"):
        sample_indices(torch.tensor([1.0, -1.0]), 1)
    with pytest.raises(ValueError, match="non-negative"):
        sample_indices(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="uniform_mix"):
        sample_indices(torch.ones(3), 1, uniform_mix=1.5)
    with pytest.raises(ValueError, match="max_ratio"):
        sample_indices(torch.ones(3), 1, max_ratio=0.5)
    with pytest.raises(ValueError, match="k must"):
        sample_indices(torch.ones(3), -1)
    assert sample_indices(torch.ones(3), 0).numel() == 0


def test_same_generator_seed_same_draws():
    w = torch.rand(1000)
    a = sample_indices(w, 32, generator=torch.Generator().manual_seed(7))
    b = sample_indices(w, 32, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_normalized_entropy():
    assert normalized_entropy(torch.tensor([5, 5, 5, 5])).item() == pytest.approx(1.0)
    assert normalized_entropy(torch.tensor([7, 0, 0])).item() == 0.0
    assert normalized_entropy(torch.tensor([5, 5, 0, 0]), num_bins=4).item() == pytest.approx(0.5)
    p = torch.tensor([0.5, 0.25, 0.25])
    expected = -(p * p.log()).sum().item() / math.log(3)
    assert normalized_entropy(torch.tensor([2, 1, 1])).item() == pytest.approx(expected)


def test_zero_weights_fill_in_only_when_needed():
    gen = torch.Generator().manual_seed(0)
    weights = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0])
    for _ in range(50):
        idx = sample_indices(weights, 2, generator=gen)
        assert sorted(idx.tolist()) == [1, 3]
        idx = sample_indices(weights, 4, generator=gen)
        assert {1, 3} <= set(idx.tolist()) and len(set(idx.tolist())) == 4


def test_uniform_indices_are_distinct_and_uniform():
    from avalanche_balanced.draws import uniform_indices
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(100)
    for _ in range(3000):
        idx = uniform_indices(100, 5, generator=gen)
        assert len(set(idx.tolist())) == 5
        counts[idx] += 1
    torch.testing.assert_close(counts / 3000, torch.full((100,), 0.05), atol=0.02, rtol=0)
    assert sorted(uniform_indices(7, 10, generator=gen).tolist()) == list(range(7))


def test_effective_sample_size_values_and_fallbacks():
    from avalanche_balanced.importance import effective_sample_size
    assert float(effective_sample_size(torch.ones(10))) == pytest.approx(1.0)
    one_dominates = torch.tensor([1.0] + [0.0] * 9)
    assert float(effective_sample_size(one_dominates)) == pytest.approx(0.1)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(effective_sample_size(w)) == pytest.approx(w.sum().item() ** 2 / (4 * (w ** 2).sum().item()))
    assert float(effective_sample_size(w * 1e30)) == pytest.approx(float(effective_sample_size(w)))  # no overflow
    assert float(effective_sample_size(torch.zeros(5))) == 1.0  # all-zero weights are drawn uniformly
    assert float(effective_sample_size(torch.zeros(0))) == 0.0


# ------------------------------------------------------------ issue 11: the replay distribution
from avalanche_balanced.importance import (  # noqa: E402
    auto_balance_weight, balance_factor, cap_weights, difficulty_factor, effective_sample_size,
    hierarchical_importance, replay_distribution,
)


def test_replay_distribution_keeps_the_current_share_uniform_and_caps_the_past():
    g = torch.Generator().manual_seed(0)
    n = 50
    importance = torch.rand(n, generator=g).pow(6) * 100  # a few samples far above the rest
    current = torch.zeros(n, dtype=torch.bool)
    current[-12:] = True
    p = replay_distribution(importance, current, max_ratio=3.0)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(p[current], torch.full((12,), 1 / n))  # exactly their uniform share
    past = p[~current]
    assert past.max().item() <= 3.0 / n * (1 + 1e-5)  # capped at 3x the uniform probability
    # among the past samples the order of importance is kept (ties where the cap binds)
    order = importance[~current].argsort()
    assert bool((past[order].diff() >= -1e-9).all())
    # without a cap the past samples share n_past / n in proportion to importance
    free = replay_distribution(importance, current)
    torch.testing.assert_close(free[~current], importance[~current] / importance[~current].sum() * 38 / n)


def test_replay_distribution_fallbacks():
    # no current samples: just the normalised, capped importance
    w = torch.tensor([1.0, 1.0, 8.0])
    torch.testing.assert_close(replay_distribution(w, torch.zeros(3, dtype=torch.bool), max_ratio=1.5),
                               cap_weights(w / w.sum(), 1.5))
    # all-zero past importance: uniform over the past
    p = replay_distribution(torch.zeros(4), torch.tensor([False, False, False, True]))
    torch.testing.assert_close(p, torch.full((4,), 0.25))
    # only current samples: uniform
    torch.testing.assert_close(replay_distribution(torch.zeros(2), torch.ones(2, dtype=torch.bool)),
                               torch.full((2,), 0.5))
    assert replay_distribution(torch.zeros(0), torch.zeros(0, dtype=torch.bool)).numel() == 0


def test_balance_factor_and_hierarchical_importance_by_hand():
    groups = torch.tensor([0, 0, 0, 2])
    torch.testing.assert_close(balance_factor(groups), torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0]))
    # group 0 holds classes 0 (two samples) and 1 (one sample); group 2 holds class 3 alone
    labels = torch.tensor([0, 0, 1, 3])
    sim = torch.tensor([0.9, 0.4, 0.5, 1.0])
    s = 1 / (sim + 0.1)
    got = hierarchical_importance(sim, groups, labels, eps=0.1)
    expected = torch.tensor([0.5 * 0.5 * s[0] / (s[0] + s[1]), 0.5 * 0.5 * s[1] / (s[0] + s[1]), 0.25, 0.5])
    torch.testing.assert_close(got, expected)
    assert got.sum().item() == pytest.approx(1.0)


def test_difficulty_factor_is_relative_and_neutral_for_unknown_losses():
    losses = torch.tensor([1.0, 3.0, -1.0, 2.0])  # -1: never replayed
    torch.testing.assert_close(difficulty_factor(losses, 1.0), torch.tensor([0.5, 1.5, 1.0, 1.0]))
    torch.testing.assert_close(difficulty_factor(losses, 2.0), torch.tensor([0.25, 2.25, 1.0, 1.0]))
    torch.testing.assert_close(difficulty_factor(torch.full((3,), -1.0), 1.0), torch.ones(3))
    with pytest.raises(ValueError, match="difficulty weight"):
        difficulty_factor(losses, -1.0)


def test_auto_balance_weight_keeps_the_effective_sample_size():
    term = torch.ones(100)
    even = balance_factor(torch.arange(100) % 4)  # equal groups: balancing costs nothing
    assert auto_balance_weight(term, even).item() == 1.0
    skewed_groups = torch.cat([torch.zeros(95, dtype=torch.long), torch.arange(1, 6)])  # five lone samples
    skewed = balance_factor(skewed_groups)
    assert effective_sample_size(term * skewed).item() < 0.7  # the full factor would cost diversity
    w = auto_balance_weight(term, skewed, target_ess=0.7)
    assert 0.0 <= w.item() < 1.0
    assert effective_sample_size(term * skewed.pow(w)).item() >= 0.7
    assert auto_balance_weight(term, skewed, target_ess=1.0).item() == 0.0  # only w = 0 reaches ESS 1


def test_cap_fixed_point_equals_the_sort_solution():
    from avalanche_balanced.capping import _cap_weights_by_sort
    g = torch.Generator().manual_seed(0)
    cases = [torch.rand(1000, generator=g).pow(8), torch.rand(50, generator=g),
             0.5 ** torch.arange(60.0)]  # geometric: many rounds, the sort fallback
    for w in cases:
        for ratio in (1.0, 1.5, 4.0):
            got = cap_weights(w, ratio)
            torch.testing.assert_close(got, _cap_weights_by_sort(w, torch.tensor(ratio / w.shape[0])),
                                       atol=1e-6, rtol=1e-5)
            assert got.sum().item() == pytest.approx(1.0, abs=1e-5)
            assert got.max().item() <= ratio / w.shape[0] * (1 + 1e-5)
    # one positive weight cannot take the mass under a cap: the cap rises to 1 / n_pos, zeros stay 0
    torch.testing.assert_close(cap_weights(torch.tensor([0.0, 0.0, 1.0, 0.0]), 1.5),
                               torch.tensor([0.0, 0.0, 1.0, 0.0]))
    # two positive weights under a cap of 1.5 / 4 = 0.375 < 1 / 2: both at 0.5
    torch.testing.assert_close(cap_weights(torch.tensor([0.0, 3.0, 1.0, 0.0]), 1.5),
                               torch.tensor([0.0, 0.5, 0.5, 0.0]))
    # all zero: uniform, never NaN
    torch.testing.assert_close(cap_weights(torch.zeros(4), 2.0), torch.full((4,), 0.25))


def test_capped_draw_never_takes_a_zero_weight_while_positive_ones_remain():
    """Review defect: one positive weight among ten zeros was drawn with probability 0.40
    under max_ratio (the zeros took the rest). Contract: zero weight is never drawn while
    k <= the number of positive weights; beyond that the zeros fill in."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.zeros(11)
    weights[3] = 1.0
    draws = torch.cat([sample_indices(weights, 1, generator=gen, max_ratio=4.0) for _ in range(500)])
    assert draws.eq(3).all()
    weights[7] = 5.0
    for _ in range(200):
        assert sorted(sample_indices(weights, 2, generator=gen, max_ratio=2.0).tolist()) == [3, 7]
        three = sample_indices(weights, 3, generator=gen, max_ratio=2.0).tolist()
        assert {3, 7} <= set(three) and len(set(three)) == 3


def test_replay_distribution_refuses_an_infeasible_cap():
    """Review defect: max_ratio < 1 returned probabilities summing to 0.5."""
    for current in (None, torch.tensor([True, False, False, False])):
        with pytest.raises(ValueError, match="max_ratio"):
            replay_distribution(torch.rand(4), current, max_ratio=0.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.floats(1.0, 6.0))
def test_group_share_weights_match_per_group_water_filling(seed, groups, max_ratio):
    """Every group gets exactly 1 / G; inside it, the one-sort cap equals cap_weights run on the
    group alone (the reference water-filling); unmasked samples get 0."""
    from avalanche_balanced.importance import cap_weights, group_share_weights
    g = torch.Generator().manual_seed(seed)
    n = 30
    group_ids = torch.randint(groups, (n,), generator=g)
    sim = torch.rand(n, generator=g)
    mask = torch.rand(n, generator=g) < 0.8
    w = group_share_weights(sim, group_ids, mask, num_groups=groups, eps=0.1, max_ratio=max_ratio)
    present = torch.unique(group_ids[mask])
    assert bool((w[~mask] == 0).all())
    if present.numel() == 0:
        assert float(w.sum()) == 0.0
        return
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    for k in present.tolist():
        members = mask & (group_ids == k)
        term = 1.0 / (sim[members] + 0.1)
        expected = cap_weights(term, max_ratio) / present.numel()
        torch.testing.assert_close(w[members], expected, rtol=1e-5, atol=1e-7)


def test_group_share_weights_reject_similarity_outside_the_unit_interval():
    from avalanche_balanced.importance import group_share_weights
    with pytest.raises(ValueError):
        group_share_weights(torch.tensor([0.5, float("nan")]), torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool),
                            num_groups=2)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), k=st.integers(1, 40), steps=st.integers(1, 25), seed=st.integers(0, 1000))
def test_passes_draw_every_index_once_per_pass(n, k, steps, seed):
    """Reshuffled passes: every batch distinct and full (min(k, n)); at any point the replay
    counts of any two indices differ by at most one (each pass is a permutation)."""
    from avalanche_balanced.draws import next_in_pass
    g = torch.Generator().manual_seed(seed)
    order, position, counts = None, 0, torch.zeros(n, dtype=torch.long)
    for _ in range(steps):
        idx, order, position = next_in_pass(order, position, n, k, generator=g)
        assert idx.shape[0] == min(k, n) and idx.unique().shape[0] == idx.shape[0]
        assert torch.equal(order.sort().values, torch.arange(n))
        counts += torch.bincount(idx, minlength=n)
        assert int(counts.max() - counts.min()) <= 1


def test_passes_are_reproducible_and_restart_on_another_length():
    from avalanche_balanced.draws import next_in_pass
    draws = []
    for _ in range(2):
        g, order, position, seq = torch.Generator().manual_seed(3), None, 0, []
        for _ in range(7):
            idx, order, position = next_in_pass(order, position, 10, 4, generator=g)
            seq.append(idx)
        draws.append(torch.cat(seq))
    assert torch.equal(draws[0], draws[1])
    idx, order, position = next_in_pass(order, position, 12, 4, generator=torch.Generator().manual_seed(0))
    assert order.shape[0] == 12 and position == 4  # a buffer of another size starts a new pass
