"""BalancedBuffer: storage, insertion policies, groups, sampling, Avalanche contract, state."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from avalanche_balanced import AdaptiveThreshold, BalancedBuffer, SemanticSimilarity
from avalanche_balanced.insertion import balanced_keep_mask, class_balanced_slots, reservoir_slots

C, D = 6, 4


def batch(n, classes=range(C), seed=0, shape=(3, 2, 2)):
    g = torch.Generator().manual_seed(seed)
    classes = torch.as_tensor(list(classes))
    y = classes[torch.randint(len(classes), (n,), generator=g)]
    x = torch.rand(n, *shape, generator=g)
    return x, y, torch.randn(n, C, generator=g), torch.randn(n, D, generator=g)


def check_invariants(buf, offered=None):
    """Storage invariants; ``offered`` (samples ever passed to add_data) also pins the fill level."""
    n = buf.size
    # Occupied slots read off the stored inputs (test inputs are never all-zero, free slots are):
    # exactly slots [0, size) hold a sample, so `size` counts what was really written.
    occupied = buf.examples.flatten(1).ne(0).any(1)
    assert occupied.tolist() == [True] * n + [False] * (buf.max_size - n), (n, occupied.tolist())
    if offered is not None:
        assert buf.num_seen == offered, (buf.num_seen, offered)
        assert n == min(buf.max_size, offered), (n, buf.max_size, offered)
    counts = buf.group_counts
    assert int(counts.sum()) == n
    expected_groups = buf._groups_of(buf.labels[:n], buf.features[:n])
    if buf.grouping != "prototype_threshold":  # class-level groups follow the labels exactly
        assert torch.equal(buf.group_ids[:n], expected_groups)
    assert torch.isfinite(buf.features[:n]).all() and torch.isfinite(buf.logits[:n]).all()


# ------------------------------------------------------------------ insertion
def test_reservoir_fills_then_replaces_uniformly():
    src, slots = reservoir_slots(0, 0, 5, 10)
    assert src.tolist() == list(range(5)) and slots.tolist() == list(range(5))
    # Over many streams each of 40 samples ends in a 10-slot reservoir with p = 10/40.
    hits = torch.zeros(40)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        owner = torch.full((10,), -1)
        for start in range(0, 40, 8):
            s, sl = reservoir_slots(start, min(start, 10), 8, 10, generator=gen)
            owner[sl] = start + s
        hits[owner] += 1
    torch.testing.assert_close(hits / 2000, torch.full((40,), 0.25), atol=0.05, rtol=0)


def test_reservoir_later_sample_wins_a_shared_slot():
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        src, slots = reservoir_slots(100, 4, 64, 4, generator=gen)
        assert len(set(slots.tolist())) == len(slots)  # no slot written twice


def test_balanced_keep_mask_balances_classes():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    keep = balanced_keep_mask(labels, 30, 3, generator=torch.Generator().manual_seed(0))
    assert int(keep.sum()) == 30
    assert torch.bincount(labels[keep], minlength=3).tolist() == [13, 12, 5] or \
        torch.bincount(labels[keep], minlength=3).tolist() == [12, 13, 5]


def test_class_balanced_slots_fill_free_then_replace_majority():
    stored = torch.tensor([0] * 8)
    src, slots = class_balanced_slots(stored, torch.tensor([1, 1, 1, 1]), 10, 2)
    assert {8, 9} <= set(slots.tolist()) and len(src) == len(slots)
    final = torch.cat([stored, torch.full((2,), -1)])
    final[slots] = torch.tensor([1, 1, 1, 1])[src]
    assert torch.bincount(final, minlength=2).tolist() == [6, 4]


# --------------------------------------------------------------------- buffer
def test_bad_construction_arguments():
    for bad in (0, -3):
        with pytest.raises(ValueError, match="max_size"):
            BalancedBuffer(bad)
    with pytest.raises(ValueError, match="grouping"):
        BalancedBuffer(10, grouping="nope")
    with pytest.raises(ValueError, match="class_to_group"):
        BalancedBuffer(10, grouping="fixed")
    with pytest.raises(ValueError, match="similarity_net"):
        BalancedBuffer(10, similarity="learned")


def test_bad_batches_raise_clear_errors():
    buf = BalancedBuffer(10)
    x, y, logits, feats = batch(4)
    buf.add_data(x, y, logits, feats)
    with pytest.raises(ValueError, match="features have 5 dims"):
        buf.add_data(x, y, logits, torch.randn(4, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        buf.add_data(x, y, logits, feats.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 6\)"):
        buf.add_data(x, torch.tensor([0, 1, 2, 6]), logits, feats)
    with pytest.raises(ValueError, match="labels must have shape"):
        buf.add_data(x, y[:3], logits, feats)
    with pytest.raises(ValueError, match="features must have shape"):
        buf.update_features(torch.tensor([0]), torch.randn(1, 3))


def test_empty_buffer_sampling_raises_and_small_buffer_draws_what_is_there():
    buf = BalancedBuffer(10)
    with pytest.raises(ValueError, match="empty buffer"):
        buf.get_balanced_data(4)
    x, y, logits, feats = batch(3)
    buf.add_data(x, y, logits, feats)
    out = buf.get_balanced_data(8)
    assert sorted(out.indices.tolist()) == [0, 1, 2]
    assert buf.get_data(8).inputs.shape == (3, 3, 2, 2)


def test_stored_values_sit_in_the_written_slots():
    buf = BalancedBuffer(16, seed=1)
    for step in range(10):
        x, y, logits, feats = batch(8, seed=step)
        slots = buf.add_data(x, y, logits, feats)
        # every written slot holds the same sample in every tensor
        src = torch.stack([torch.nonzero((x == buf.examples[s]).flatten(1).all(1)).squeeze() for s in slots])
        assert torch.equal(buf.labels[slots], y[src])
        assert torch.equal(buf.features[slots], feats[src])
        assert torch.equal(buf.logits[slots], logits[src])
        assert (buf.stored_step[slots] == step).all()
        check_invariants(buf, offered=8 * (step + 1))


def test_features_match_recomputed_features_of_stored_inputs():
    """Regression: the public implementation wrote features into the last B slots."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Flatten(), nn.Linear(12, D))
    head = nn.Linear(D, C)
    buf = BalancedBuffer(20, seed=0)
    for step in range(12):
        x, y, _, _ = batch(8, seed=step)
        with torch.no_grad():
            feats = body(x)
            buf.add_data(x, y, head(feats), feats)
    with torch.no_grad():
        recomputed = body(buf.examples[: buf.size])
    torch.testing.assert_close(buf.features[: buf.size], recomputed)
    torch.testing.assert_close(buf.logits[: buf.size], head(recomputed))


@settings(max_examples=30, deadline=None)
@given(
    capacity=st.integers(1, 30),
    sizes=st.lists(st.integers(0, 17), min_size=1, max_size=8),
    insertion=st.sampled_from(["reservoir", "class_balanced"]),
    grouping=st.sampled_from(["class_similarity", "class", "fixed", "prototype_threshold"]),
    seed=st.integers(0, 1000),
)
def test_invariants_hold_after_any_insertions(capacity, sizes, insertion, grouping, seed):
    buf = BalancedBuffer(capacity, insertion=insertion, grouping=grouping, seed=seed,
                         class_to_group=torch.tensor([0, 0, 1, 1, 2, 2]))
    total, seen = 0, torch.zeros(C, dtype=torch.long)
    for i, n in enumerate(sizes):
        x, y, logits, feats = batch(n, seed=seed + i)
        buf.add_data(x, y, logits, feats)
        total += n
        seen += torch.bincount(y, minlength=C)
        if i % 3 == 2:
            buf.refresh_prototypes()
            buf.regroup()
        if buf.allocated:
            check_invariants(buf, offered=total)
    assert buf.size == min(capacity, total) and buf.num_seen == total
    if insertion == "class_balanced" and total > capacity:
        # Water-filling: the classes that lost samples sit at one level L (or L + 1),
        # and no class holds more than L + 1.
        kept = torch.bincount(buf.labels[: buf.size], minlength=C)
        cut = kept < seen
        level = kept[cut].min()
        assert (kept <= level + 1).all(), (kept, seen)


def test_groupings():
    x, y, logits, feats = batch(30, classes=[0, 1, 2, 3])
    fixed = BalancedBuffer(30, grouping="fixed", class_to_group=torch.tensor([0, 0, 1, 1, 2, 2]))
    fixed.add_data(x, y, logits, feats)
    assert torch.equal(fixed.group_ids[:30], y // 2)
    per_class = BalancedBuffer(30, grouping="class")
    per_class.add_data(x, y, logits, feats)
    assert torch.equal(per_class.group_ids[:30], y)


def test_class_similarity_groups_similar_classes():
    # Classes 0,1 share a direction, 2,3 another, 4,5 a third: three groups.
    dirs = torch.eye(D)[:3].repeat_interleave(2, 0)  # class c -> dirs[c]
    y = torch.arange(C).repeat(10)
    feats = dirs[y] + 0.01 * torch.randn(60, D, generator=torch.Generator().manual_seed(0))
    feats[:, 3] += 0.2 * (y % 2)  # the two classes of a pair are close but not identical
    buf = BalancedBuffer(60, threshold=AdaptiveThreshold(0.8, quantile=0.8, momentum=0.0))
    buf.add_data(torch.rand(60, 1), y, torch.zeros(60, C), feats)
    buf.refresh_prototypes()
    buf.regroup()
    assert torch.equal(buf.class_group, torch.tensor([0, 0, 2, 2, 4, 4]))
    assert torch.equal(buf.group_ids[:60], buf.class_group[y])
    classes, groups = buf.class_groups()
    assert classes.tolist() == list(range(C)) and groups.tolist() == [0, 0, 2, 2, 4, 4]


def test_balanced_draw_favours_small_groups_and_atypical_samples():
    # 90 samples of class 0 (group 0), 10 of class 1 (group 1), all on their prototypes.
    y = torch.cat([torch.zeros(90), torch.ones(10)]).long()
    feats = torch.eye(D)[y]
    buf = BalancedBuffer(100, grouping="class", seed=0)
    buf.add_data(torch.rand(100, 1), y, torch.zeros(100, C), feats)
    buf.refresh_prototypes()
    imp = buf.importance()
    torch.testing.assert_close(imp[:90], torch.full((90,), (2 / 90) / (1 + 1e-6)))
    torch.testing.assert_close(imp[90:], torch.full((10,), (2 / 10) / (1 + 1e-6)))
    drawn = torch.cat([buf.get_balanced_data(1).labels for _ in range(4000)])
    assert abs(drawn.float().mean().item() - 0.5) < 0.03  # both groups drawn equally often
    uniform = torch.cat([buf.get_data(1).labels for _ in range(4000)])
    assert abs(uniform.float().mean().item() - 0.1) < 0.03


def test_learned_similarity_and_op_prototypes():
    net = SemanticSimilarity(D)
    buf = BalancedBuffer(20, similarity="learned", similarity_net=net)
    x, y, logits, feats = batch(20)
    buf.add_data(x, y, logits, feats)
    buf.refresh_prototypes()
    imp = buf.importance()
    assert imp.shape == (20,) and torch.isfinite(imp).all()
    ops = torch.zeros(C, D)
    ops[0] = 1.0  # only class 0 has an op prototype: the rest get a neutral similarity of 1
    out = buf.importance(op_prototypes=ops)
    others = y != 0
    counts = buf.group_counts
    expected = (len(counts[counts > 0]) / counts[buf.group_ids[:20]].float()) / (1 + 1e-6)
    torch.testing.assert_close(out[others], expected[others])
    with pytest.raises(ValueError, match="op_prototypes"):
        buf.importance(op_prototypes=torch.zeros(C, D + 1))


def test_avalanche_dataset_view_and_resize():
    buf = BalancedBuffer(12, seed=0)
    x, y, logits, feats = batch(20)
    buf.add_data(x, y, logits, feats, task_labels=torch.zeros(20, dtype=torch.long))
    ds = buf.buffer
    assert len(ds) == 12
    sample = ds[3]
    assert torch.equal(sample[0], buf.examples[3]) and int(sample[1]) == int(buf.labels[3])
    assert list(ds.targets) == buf.labels[:12].tolist()
    kept = buf.examples[:12].clone()
    buf.resize(None, 5)
    assert len(buf) == 5 and buf.max_size == 5 and buf.examples.shape[0] == 5
    # every kept sample is one that was stored, with its own label and features
    for i in range(5):
        j = int(torch.nonzero((kept == buf.examples[i]).flatten(1).all(1))[0])
        assert j < 12
    buf.resize(None, 9)
    buf.add_data(*batch(3, seed=5))
    assert len(buf) == 8  # growing frees slots that the next samples fill
    check_invariants(buf)


def test_works_as_avalanche_replay_storage_policy():
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.supervised import Naive

    torch.manual_seed(0)
    xs = torch.randn(120, 8)
    ys = torch.arange(C).repeat_interleave(20)
    ds = _make_taskaware_tensor_classification_dataset(xs, ys)
    bm = nc_benchmark(ds, ds, n_experiences=3, task_labels=False, seed=0)
    model = nn.Sequential(nn.Linear(8, D), nn.ReLU(), nn.Linear(D, C))
    buf = BalancedBuffer(30)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=16,
                     train_epochs=1, plugins=[ReplayPlugin(mem_size=30, storage_policy=buf)],
                     evaluator=None)
    seen = set()
    for exp in bm.train_stream:
        strategy.train(exp)
        seen |= set(exp.classes_in_this_experience)
        assert set(buf.labels[: len(buf)].tolist()) <= seen
    assert len(buf) == 30 and len(set(buf.labels.tolist())) >= 4
    check_invariants(buf, offered=sum(len(exp.dataset) for exp in bm.train_stream))


def test_state_dict_round_trip_continues_identically():
    buf = BalancedBuffer(10, seed=0)
    for s in range(3):
        buf.add_data(*batch(6, seed=s))
    buf.refresh_prototypes()
    buf.regroup()
    clone = BalancedBuffer(10, seed=123)
    clone.load_state_dict(buf.state_dict())
    for name in ("examples", "labels", "features", "group_ids", "stored_step"):
        assert torch.equal(getattr(clone, name), getattr(buf, name))
    assert torch.equal(buf.get_balanced_data(4).indices, clone.get_balanced_data(4).indices)
    buf.add_data(*batch(6, seed=9))
    clone.add_data(*batch(6, seed=9))
    assert torch.equal(buf.labels, clone.labels)
    with pytest.raises(ValueError, match="max_size"):
        BalancedBuffer(11).load_state_dict(buf.state_dict())
    with pytest.raises(ValueError, match="config"):
        BalancedBuffer(10, grouping="class").load_state_dict(buf.state_dict())


def test_cached_similarity_tracks_writes_and_prototype_changes():
    buf = BalancedBuffer(30, seed=0)
    buf.add_data(*batch(20, seed=0))
    buf.refresh_prototypes()
    buf.importance()  # fills the cache
    for s in range(1, 6):
        buf.add_data(*batch(8, seed=s))
        idx = buf.get_balanced_data(5).indices
        buf.update_features(idx, torch.randn(len(idx), D))
        fresh = buf._similarity(buf.features[: buf.size], buf.labels[: buf.size])
        torch.testing.assert_close(buf.stored_similarity(), fresh)
    buf.refresh_prototypes()  # new prototype version: the cache must follow
    fresh = buf._similarity(buf.features[: buf.size], buf.labels[: buf.size])
    torch.testing.assert_close(buf.stored_similarity(), fresh)


def test_half_precision_features():
    buf = BalancedBuffer(20, feature_dtype=torch.float16)
    x, y, logits, feats = batch(20)
    buf.add_data(x, y, logits, feats)
    buf.refresh_prototypes()
    buf.regroup()
    assert buf.features.dtype == torch.float16
    torch.testing.assert_close(buf.features[:20].float(), feats, atol=1e-2, rtol=1e-2)
    assert torch.isfinite(buf.importance()).all()
    assert buf.bytes_per_sample()["features"] == D * 2


def test_outside_edits_of_features_or_prototypes_invalidate_the_cache():
    buf = BalancedBuffer(30, grouping="class", seed=0)
    buf.add_data(*batch(20, seed=0))
    buf.refresh_prototypes()
    before = buf.importance().clone()
    buf.features[:20] = buf.prototypes.prototypes[buf.labels[:20]]  # every sample on its prototype
    torch.testing.assert_close(buf.stored_similarity(), torch.ones(20))
    buf.prototypes.prototypes[buf.labels[0]] *= -1  # flip one class's prototype in place
    fresh = buf._similarity(buf.features[:20], buf.labels[:20])
    torch.testing.assert_close(buf.stored_similarity(), fresh)
    assert not torch.equal(buf.importance(), before)
