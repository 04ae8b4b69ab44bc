"""Torch DDP with 2 CPU processes (gloo): one buffer, identical on every rank; sharded draws."""
import pytest
import torch
import torch.multiprocessing as mp

from avalanche_balanced import BalancedBuffer
from avalanche_balanced.distributed import check_divisible, free_port, shard_rows
from once import computed_once


def _spawn(folder, scenario, world=2):
    import distributed_worker  # tests/ is on the path (pytest's rootdir-relative import)
    # Forked, not spawned: a fresh interpreter would spend longer importing Avalanche than the
    # scenarios take. Safe here: the suite runs torch on one thread (conftest.py), so no OpenMP
    # pool is copied half-alive into the children.
    mp.start_processes(distributed_worker.run, args=(world, free_port(), str(folder), scenario), nprocs=world,
                       join=True, start_method="fork")


@pytest.fixture(scope="session")
def ddp_ranks(tmp_path_factory):
    """Every 2-rank scenario (plugin, checkpoint and resume, SARL-GELU, data order, then the bad
    configurations), started once per session."""
    folder = computed_once(tmp_path_factory, "ddp", lambda folder: _spawn(folder, "every_scenario"))
    ranks = [torch.load(folder / f"every_scenario_rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        assert "error" not in r, r.get("traceback")
    return ranks


@pytest.mark.long  # the first to ask for the ranks spawns them
def test_two_ranks_keep_one_buffer_and_split_each_draw(ddp_ranks):
    ranks = [r["consistency"] for r in ddp_ranks]
    for timing in ("after_experience", "online"):
        a, b = ranks[0][timing], ranks[1][timing]
        assert len(a["fingerprints"]) == 3
        for fa, fb in zip(a["fingerprints"], b["fingerprints"]):
            assert torch.equal(fa, fb), timing  # the same buffer after every experience
        for pa, pb in zip(a["params"], b["params"]):
            assert torch.equal(pa, pb)  # DDP kept the model identical
        assert len(a["draws"]) == len(b["draws"]) > 0
        for (global_a, mine_a), (global_b, mine_b) in zip(a["draws"], b["draws"]):
            assert torch.equal(global_a, global_b)  # one global draw, computed on every rank
            assert not set(mine_a.tolist()) & set(mine_b.tolist())  # no sample on two ranks in one step
            assert torch.equal(torch.cat([mine_a, mine_b]), global_a)  # the union is the whole draw
            assert mine_a.shape[0] == global_a.shape[0] // 2
        # The union of the ranks' draws is the single-process draw: a single process holding the
        # same buffer state draws exactly the same global indices (tolerance 0, not only in law).
        single = BalancedBuffer(24, insertion="reservoir")
        single.load_state_dict(a["state"])
        assert single.size == 24
        assert torch.equal(single.get_balanced_data(8).indices, a["next_draw"])
    # online insertion fed every rank's minibatches into the buffer: it saw the whole stream
    assert ranks[0]["online"]["state"]["num_seen"] == 6 * 24


def test_a_draw_split_over_ranks_has_the_single_process_distribution():
    """Statistical check of the sharding rule over many steps (tolerance: 4 standard errors)."""
    buf = BalancedBuffer(40, seed=0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(8).repeat_interleave(5)
    buf.add_data(torch.rand(40, 3) + 0.01, y, torch.randn(40, 8, generator=g), torch.randn(40, 4, generator=g))
    buf.refresh_prototypes()
    buf.regroup()
    steps, k, world = 3000, 8, 2
    union = torch.zeros(40)
    for _ in range(steps):
        batch = buf.get_balanced_data(k)
        shards = [shard_rows([batch.indices], r, world)[0] for r in range(world)]
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
        union += torch.bincount(torch.cat(shards), minlength=40)
    single = BalancedBuffer(40, seed=0)
    single.load_state_dict(buf.state_dict())
    expected = torch.zeros(40)
    for _ in range(steps):
        expected += torch.bincount(single.get_balanced_data(k).indices, minlength=40)
    rate, ref = union / steps, expected / steps
    stderr = (ref.clamp(1e-3, 1 - 1e-3) * (1 - ref.clamp(1e-3, 1 - 1e-3)) / steps).sqrt() * 2 ** 0.5
    assert bool(((rate - ref).abs() <= 4 * stderr + 1e-9).all())


def test_bad_configurations_get_clear_errors(ddp_ranks):
    with pytest.raises(ValueError, match=r"batch_size_mem=30\) must be divisible by the number of processes \(4\)"):
        check_divisible(30, 4)
    ranks = [r["bad_configurations"] for r in ddp_ranks]
    for r in ranks:  # each rank is told which setting differs, and on which rank
        assert "ranks have different buffer settings: eps: 0.1 (rank 0) vs 0.2 (rank 1)" in r.get("mismatch", "") \
            or "ranks have different buffer settings: eps: 0.2 (rank 1) vs 0.1 (rank 0)" in r.get("mismatch", ""), r
    assert "rank 1 fails" in ranks[1]["error"]
    assert ranks[0].get("error"), "rank 0 must stop with an error (a collective timeout), not hang"


def test_a_checkpoint_written_by_rank_0_resumes_every_rank_to_the_same_metrics(ddp_ranks):
    ranks = [r["resume"] for r in ddp_ranks]
    for r in ranks:
        assert r["files"] == ["checkpoint.pt"]  # one file, written once (rank 0), no temporary left
        full, resumed = r["full"], r["resumed"]
        assert resumed["accuracy"] == full["accuracy"]
        # Every rank evaluates the whole test stream (Avalanche would give each rank half of it).
        assert full["evaluated"] == resumed["evaluated"] == full["test_size"]
        assert abs(full["accuracy"] - full["direct_accuracy"]) < 1e-6
        assert torch.equal(resumed["fingerprint"], full["fingerprint"])
        assert all(torch.equal(a, b) for a, b in zip(resumed["params"], full["params"]))
    assert torch.equal(ranks[0]["resumed"]["fingerprint"], ranks[1]["resumed"]["fingerprint"])


def test_the_current_data_order_changes_every_epoch_and_follows_the_run_seed(ddp_ranks):
    """Avalanche gives every epoch a fresh DistributedSampler with seed 0 (the same order every
    epoch and every run); DataParallelPlugin seeds each epoch's sampler from the run's seed."""
    ranks = [r["data_order"] for r in ddp_ranks]
    for r in ranks:
        assert not torch.equal(r[0]["first"][0], r[0]["first"][1])  # epoch 1 is not epoch 0 again
        assert not torch.equal(r[0]["first"][0], r[1]["first"][0])  # the run's seed sets the order
    # In one epoch the two ranks' shards are disjoint and together the whole experience.
    together = torch.cat([ranks[0][0]["seen"], ranks[1][0]["seen"]])
    dataset = ranks[0][0]["dataset"]
    assert together.shape == dataset.shape
    assert torch.equal(torch.sort(together.sum(1)).values, torch.sort(dataset.sum(1)).values)


def test_sarl_gelu_keeps_every_synchronised_part_identical_across_ranks(ddp_ranks):
    a, b = (r["sarl"] for r in ddp_ranks)
    assert torch.equal(a["fingerprint"], b["fingerprint"])  # buffer (online insertion of both ranks' batches)
    assert a["seen"] == 2 * 6 * 24  # two epochs over the whole stream, every rank's minibatches inserted
    assert torch.equal(a["prototypes"], b["prototypes"])
    for key in ("similarity_net", "teacher", "model"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key


def test_our_plugins_declare_distributed_support():
    """Avalanche warns about (and lists) every plugin without ``supports_distributed``; its
    ``__init_subclass__`` resets a class attribute, so the flag must be a class keyword."""
    from avalanche_balanced import BalancedReplayPlugin, BatchTransformPlugin, MixedPrecisionPlugin, TrainingGuardPlugin
    from avalanche_balanced.distributed import DataParallelPlugin
    from avalanche_balanced.figures import FigureLoggerPlugin
    for plugin in (BalancedReplayPlugin, BatchTransformPlugin, MixedPrecisionPlugin, TrainingGuardPlugin,
                   DataParallelPlugin, FigureLoggerPlugin):
        assert plugin.supports_distributed is True, plugin.__name__
