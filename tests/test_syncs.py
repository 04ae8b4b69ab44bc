"""Replay without host syncs: the sync-free paths equal the host paths, and a steady-state
training iteration reads nothing on the host (counted, as benchmarks.syncs does)."""
import statistics

import pytest
import torch
from torch import nn
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

import avalanche_balanced.importance as sampling
from avalanche_balanced import BalancedBuffer, BalancedReplayPlugin, SARLGelu, replay_distribution, sample_indices
from avalanche_balanced.insertion import reservoir_slots, reservoir_writes
from benchmarks.syncs import PerIteration
from synthetic import blobs_benchmark

C, D = 6, 8


def both_paths(monkeypatch, fn):
    """``fn()`` on the host-sync path and on the sync-free path."""
    monkeypatch.setattr(sampling, "SYNC_FREE_CPU_LIMIT", -1)
    host = fn()
    monkeypatch.setattr(sampling, "SYNC_FREE_CPU_LIMIT", 1 << 30)
    return host, fn()


@pytest.mark.parametrize("seed", range(4))
def test_sync_free_replay_distribution_equals_the_host_path(monkeypatch, seed):
    g = torch.Generator().manual_seed(seed)
    n = 300
    importance = torch.rand(n, generator=g).pow(6)
    importance[torch.randperm(n, generator=g)[:20]] = 0.0
    current = torch.rand(n, generator=g) < 0.3
    for is_current in (None, current, torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)):
        for cap in (None, 1.0, 1.5, 4.0):
            host, free = both_paths(monkeypatch, lambda: replay_distribution(importance, is_current, max_ratio=cap))
            torch.testing.assert_close(free, host, atol=1e-6, rtol=1e-5)
            assert free.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sync_free_draw_is_distinct_and_proportional(monkeypatch):
    monkeypatch.setattr(sampling, "SYNC_FREE_CPU_LIMIT", 1 << 30)
    w = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    firsts = torch.stack([sample_indices(w, 3, generator=gen) for _ in range(6000)])
    assert all(len(set(row.tolist())) == 3 for row in firsts[:200])
    assert not (firsts == 4).any()  # a zero weight waits while positive ones remain
    freq = torch.bincount(firsts[:, 0], minlength=5).float() / 6000  # the first pick is proportional
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0]), atol=0.02, rtol=0)
    assert sorted(sample_indices(w, 5, generator=gen).tolist()) == [0, 1, 2, 3, 4]


def test_fixed_length_reservoir_writes_match_the_compact_ones():
    for num_seen, size, batch, cap in ((0, 0, 5, 10), (8, 8, 8, 10), (100, 4, 64, 4), (40, 20, 16, 20)):
        compact = reservoir_slots(num_seen, size, batch, cap, generator=torch.Generator().manual_seed(3))
        source, slot = reservoir_writes(num_seen, size, batch, cap, generator=torch.Generator().manual_seed(3))
        final = {}
        for s, j in zip(slot.tolist(), source.tolist()):
            if j >= 0:
                final[s] = j
        assert final == dict(zip(compact[1].tolist(), compact[0].tolist()))


def test_deferred_checks_raise_at_the_next_regroup():
    buf = BalancedBuffer(10, seed=0)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    buf.add_data(x, y, torch.randn(4, 4), torch.randn(4, 5), defer_checks=True)
    bad = torch.randn(4, 5)
    bad[1, 2] = float("nan")
    buf.add_data(x, y, torch.randn(4, 4), bad, defer_checks=True)  # no host read here
    with pytest.raises(ValueError, match="features inserted since the last check contain NaN"):
        buf.regroup()
    buf.add_data(x, y + 1, torch.randn(4, 4), torch.randn(4, 5), defer_checks=True)
    with pytest.raises(ValueError, match="labels inserted since the last check lie outside"):
        buf.check_pending()
    buf.check_pending()  # nothing pending any more


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))


def steady_state_syncs(strategy_for, n_per_class=40):
    counter = PerIteration(from_experience=1)
    strategy = strategy_for(counter)
    for exp in blobs_benchmark(C, D, n_per_class=n_per_class, seed=0).train_stream:
        strategy.train(exp)
    return [sum(row.values()) for row in counter.rows]


@pytest.mark.parametrize("balanced", [False, True])
def test_plugin_iteration_reads_nothing_on_the_host(balanced):
    def build(counter):
        model = mlp()
        plugin = BalancedReplayPlugin(mem_size=30, batch_size_mem=8, use_balanced_sampling=balanced, regroup_every=None)
        return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                     train_epochs=1, plugins=[counter.start, plugin, counter.stop],
                     evaluator=EvaluationPlugin(loggers=[]))
    counts = steady_state_syncs(build)
    assert len(counts) > 5 and max(counts) == 0


def test_sarl_iteration_reads_the_host_once_for_the_finite_loss_check():
    def build(counter):
        model = mlp()
        return SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=30,
                        batch_size_mem=8, warmup_epochs=0, train_mb_size=16, train_epochs=2, regroup_every=None,
                        plugins=[counter.start, counter.stop], evaluator=EvaluationPlugin(loggers=[]))
    counts = steady_state_syncs(build)
    assert len(counts) > 5 and statistics.median(counts) == 1 and max(counts) == 1
