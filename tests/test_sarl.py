"""SARL-GELU: every loss term, prototypes, the frozen model, the similarity net, determinism."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_balanced import SARLEnhancedGeluBalanced, SARLGelu, gelu_resnet18
from avalanche_balanced.experiment import seed_everything
from synthetic import blobs_benchmark

C, D = 6, 10


def tiny_benchmark(seed=0, n_per_class=40):
    return blobs_benchmark(C, D, n_per_class=n_per_class, separation=2.5, seed=seed)


def mlp():
    return nn.Sequential(nn.Linear(D, 32), nn.GELU(), nn.Linear(32, C))


class TermRecorder(SupervisedPlugin):
    """(task, epoch, loss terms) after every training iteration."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def after_training_iteration(self, strategy, **kwargs):
        self.rows.append((strategy.task_id, strategy.clock.train_exp_epochs, dict(strategy.loss_terms),
                          float(strategy.loss)))


def make_strategy(model=None, epochs=2, plugins=(), seed=0, **kw):
    seed_everything(seed)
    model = model or mlp()
    params = dict(mem_size=40, batch_size_mem=8, train_mb_size=16, train_epochs=epochs, warmup_epochs=0,
                  seed=seed, evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    params.update(kw)
    return SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                    plugins=list(plugins), **params)


def run(strategy, bm, n=3):
    for exp in list(bm.train_stream)[:n]:
        strategy.train(exp)
    return strategy.eval(bm.test_stream)


def test_alias_and_defaults():
    assert SARLEnhancedGeluBalanced is SARLGelu
    s = SARLGelu(model=mlp(), optimizer=torch.optim.SGD(mlp().parameters(), lr=0.1))
    assert (s.alpha, s.beta, s.op_weight, s.sm_weight, s.warmup_epochs) == (0.5, 1.0, 0.5, 0.01, 5)
    assert s.buffer.max_size == 200 and s.replay.batch_size_mem == 32
    assert s.threshold.value.item() == pytest.approx(0.8) and s.similarity_net.sim_lr == 0.001


def test_each_term_appears_exactly_when_its_condition_holds():
    rec = TermRecorder()
    run(make_strategy(plugins=[rec], warmup_epochs=0), tiny_benchmark(), n=2)
    for task, epoch, terms, loss in rec.rows:
        expected = {"ce", "similarity"}
        if not (task == 0 and epoch == 0 and "replay_ce" not in terms):
            expected |= {"replay_mse", "replay_ce"}
        if task > 0:
            expected |= {"prototype"}
        if task > 0 and epoch > 0:
            expected |= {"distill", "semantic"}
        if task == 0 and epoch == 0 and "replay_ce" not in terms:
            continue  # only the very first iteration has an empty buffer
        assert set(terms) == expected, (task, epoch, set(terms))
        # the optimised loss is exactly the sum of the backbone terms
        assert loss == pytest.approx(sum(float(v) for k, v in terms.items() if k != "similarity"), rel=1e-5)
    assert any(t > 0 and float(terms["distill"]) > 0 for t, e, terms, _ in rec.rows if "distill" in terms)


@pytest.mark.parametrize("zeroed, term", [("alpha", "replay_mse"), ("op_weight", "prototype"),
                                          ("beta", "distill"), ("sm_weight", "semantic")])
def test_zero_weight_switches_a_term_off(zeroed, term):
    rec = TermRecorder()
    run(make_strategy(plugins=[rec], **{zeroed: 0.0}), tiny_benchmark(), n=2)
    assert all(term not in terms for _, _, terms, _ in rec.rows)
    assert any("replay_ce" in terms for _, _, terms, _ in rec.rows)


def test_warmup_delays_distillation_and_semantic_terms():
    rec = TermRecorder()
    run(make_strategy(plugins=[rec], warmup_epochs=1, epochs=3), tiny_benchmark(), n=2)
    for task, epoch, terms, _ in rec.rows:
        assert ("distill" in terms) == (task > 0 and epoch > 1)


def test_prototypes_are_means_of_normalised_eval_features():
    bm = tiny_benchmark()
    s = make_strategy()
    s.train(bm.train_stream[0])
    model = s.model.eval()
    xs, ys = zip(*[(b[0], b[1]) for b in torch.utils.data.DataLoader(bm.train_stream[0].dataset, batch_size=64)])
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        feats = model[1](model[0](x))
    for c in bm.train_stream[0].classes_in_this_experience:
        expected = F.normalize(feats[y == c], dim=1).mean(0)
        torch.testing.assert_close(s.prototypes.prototypes[c], expected, rtol=1e-4, atol=1e-5)
    seen = set(bm.train_stream[0].classes_in_this_experience)
    assert set(torch.nonzero(s.prototypes.valid).flatten().tolist()) == seen


def mlp_bn():
    return nn.Sequential(nn.Linear(D, 32), nn.BatchNorm1d(32), nn.GELU(), nn.Linear(32, C))


def record_bn_refresh(strategy, monkeypatch):
    """Wrap the end-of-experience BatchNorm refresh; returns [(state before, state after)] per call."""
    calls, refresh = [], strategy._refresh_batchnorm_on_buffer

    def snapshot():
        return {k: v.detach().clone() for k, v in strategy.model.state_dict().items()}

    def recording_refresh():
        before = snapshot()
        refresh()
        calls.append((before, snapshot()))

    monkeypatch.setattr(strategy, "_refresh_batchnorm_on_buffer", recording_refresh)
    return calls


def test_previous_model_is_a_frozen_copy(monkeypatch):
    """Guards the order in _after_training_exp: frozen copy first, then the BatchNorm refresh."""
    bm = tiny_benchmark()
    s = make_strategy(model=mlp_bn())
    refreshes = record_bn_refresh(s, monkeypatch)
    for i in range(2):
        s.train(bm.train_stream[i])
        assert len(refreshes) == i + 1
        trained, refreshed = refreshes[-1]
        old = dict(s.old_model.state_dict())
        # The old model is the model as training left it, BatchNorm statistics included ...
        for stat in ("1.running_mean", "1.running_var"):
            torch.testing.assert_close(old[stat], trained[stat], rtol=0, atol=0, msg=f"old model {stat}")
        torch.testing.assert_close(old, trained, rtol=0, atol=0)
        # ... not the model after the refresh pass over the buffer (which did move the statistics).
        torch.testing.assert_close(dict(s.model.state_dict()), refreshed, rtol=0, atol=0)
        assert not torch.equal(refreshed["1.running_mean"], trained["1.running_mean"])
        assert not torch.equal(old["1.running_mean"], refreshed["1.running_mean"])
        assert not torch.equal(old["1.running_var"], refreshed["1.running_var"])
        assert all(not p.requires_grad for p in s.old_model.parameters())
        assert not s.old_model.training
        assert all(a is not b for a, b in zip(s.old_model.parameters(), s.model.parameters()))


def test_similarity_network_learns_during_training():
    rec = TermRecorder()
    run(make_strategy(plugins=[rec], epochs=6, sim_lr=0.01), tiny_benchmark(n_per_class=80), n=1)
    sims = [float(t["similarity"]) for _, _, t, _ in rec.rows]
    assert np.mean(sims[-5:]) < 0.8 * np.mean(sims[:5])


def test_same_seed_same_metrics_and_learns_above_chance():
    a = run(make_strategy(seed=3), tiny_benchmark())
    b = run(make_strategy(seed=3), tiny_benchmark())
    key = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
    assert a[key] == b[key]
    assert a[key] > 2.0 / C


def test_uniform_replay_and_buffer_are_the_strategy_s():
    s = make_strategy(use_balanced_sampling=False)
    run(s, tiny_benchmark(), n=2)
    assert s.replay.use_balanced_sampling is False
    assert s.buffer.prototypes is s.prototypes
    assert s.buffer.threshold is s.threshold
    assert len(s.buffer) == 40


def test_bad_arguments():
    with pytest.raises(ValueError, match="mem_size"):
        make_strategy(mem_size=0)
    with pytest.raises(ValueError, match="batch_size_mem"):
        make_strategy(mem_size=10, batch_size_mem=20)
    with pytest.raises(ValueError, match="alpha"):
        make_strategy(alpha=-1.0)


def test_resnet_with_batched_transforms_and_buffer_batchnorm_refresh(monkeypatch):
    """The GELU ResNet path: return_features, batched transforms, and the end-of-experience
    BatchNorm refresh, which must equal a train-mode pass over the buffer without updates."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(12)
    x = torch.rand(len(y), 3, 8, 8, generator=g)
    ds = _make_taskaware_tensor_classification_dataset(x, y)
    bm = nc_benchmark(ds, ds, n_experiences=2, task_labels=False, seed=0)
    model = gelu_resnet18(num_classes=4, nf=4)
    calls = []
    s = make_strategy(model=model, mem_size=16, batch_size_mem=4, epochs=2,
                      transform=lambda t: calls.append(t.shape[0]) or t * 2 - 1,
                      eval_transform=lambda t: t * 2 - 1)
    refreshes = record_bn_refresh(s, monkeypatch)
    for i in range(2):
        s.train(bm.train_stream[i])
        before, after = refreshes[i]
        # Independent reference: the pre-refresh model, one train-mode pass over the stored
        # inputs (transformed, in train_mb_size chunks), no parameter update.
        ref = copy.deepcopy(s.model)
        ref.load_state_dict(before)
        ref.train()
        stored = s.buffer.examples[: len(s.buffer)]
        assert len(stored) == 16
        with torch.no_grad():
            for start in range(0, len(stored), s.train_mb_size):
                ref(stored[start: start + s.train_mb_size] * 2 - 1)
        torch.testing.assert_close(after, dict(ref.state_dict()))
        assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
        assert int(after["bn1.num_batches_tracked"]) == int(before["bn1.num_batches_tracked"]) + 1
        for name, p in s.model.named_parameters():  # statistics only: no weight moved
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert 16 + 4 in calls  # current and replayed inputs transformed together


class LrRecorder(SupervisedPlugin):
    """The optimiser's learning rate at the start of every training epoch, per experience."""

    def __init__(self):
        super().__init__()
        self.lrs = []

    def before_training_exp(self, strategy, **kwargs):
        self.lrs.append([])

    def before_training_epoch(self, strategy, **kwargs):
        self.lrs[-1].append(strategy.optimizer.param_groups[0]["lr"])


def test_lr_steps_decay_within_and_reset_between_experiences():
    """Guards lr_steps: MultiStepLR steps per epoch and restarts at 0.05 in every experience."""
    rec = LrRecorder()
    s = make_strategy(epochs=2, lr_steps=[1], plugins=[rec])
    run(s, tiny_benchmark(), n=2)
    assert rec.lrs == [pytest.approx([0.05, 0.005])] * 2
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def _fake_torchvision_cifar(images, labels):
    from torchvision.datasets import CIFAR100
    ds = object.__new__(CIFAR100)  # skip the download / integrity check of the real class
    ds.data, ds.targets = images, list(labels)
    ds.transform = ds.target_transform = None
    ds.train, ds.root = True, "unused"
    return ds


def test_runs_on_avalanches_own_split_cifar100(cifar_root, monkeypatch):
    """Avalanche's SplitCIFAR100 with its PIL transforms, fed from the shared arrays."""
    from avalanche.benchmarks.classic import ccifar100
    data = np.load(cifar_root / "cifar100_train.npz")
    test = np.load(cifar_root / "cifar100_test.npz")
    pick = np.concatenate([np.nonzero(data["y"] == c)[0][:4] for c in range(100)])
    pick_test = np.concatenate([np.nonzero(test["y"] == c)[0][:2] for c in range(100)])
    fake = (_fake_torchvision_cifar(data["x"][pick], data["y"][pick]),
            _fake_torchvision_cifar(test["x"][pick_test], test["y"][pick_test]))
    monkeypatch.setattr(ccifar100, "get_cifar100_dataset", lambda root: fake)
    bm = ccifar100.SplitCIFAR100(n_experiences=5, seed=0)
    s = make_strategy(model=gelu_resnet18(100, nf=4), mem_size=40, batch_size_mem=8, epochs=1)
    for exp in list(bm.train_stream)[:2]:
        s.train(exp)
    stored = s.buffer.examples[: len(s.buffer)]
    # The buffer holds what the dataset delivered: augmented and normalised tensors.
    assert stored.shape[1:] == (3, 32, 32) and stored.min() < -0.5
    seen = set(bm.train_stream[0].classes_in_this_experience) | set(bm.train_stream[1].classes_in_this_experience)
    assert set(s.buffer.labels[: len(s.buffer)].tolist()) <= seen
    assert s.prototypes.valid.sum() == 40


def test_semantic_term_stays_bounded_when_every_weight_nears_one():
    """With every pair weighted 0.999, SARL's ratio pos / neg was 999 per new class (9,990 over
    ten): unbounded. The term is pos / (pos + neg) per new class, in [0, 1]."""
    from avalanche_balanced.semantic import ClassPrototypes
    from avalanche_balanced.strategies.sarl_terms import semantic_contrastive

    torch.manual_seed(0)
    prototypes = ClassPrototypes(20, 8)
    prototypes.set_from_features(torch.randn(100, 8), torch.arange(10).repeat(10))  # classes 0-9 old
    features, labels = torch.randn(40, 8), torch.arange(10, 20).repeat(4)  # ten new classes

    def constant(w):
        return lambda a, b: torch.full(a.shape[:-1], w)

    near_one = semantic_contrastive(features, labels, prototypes, constant(0.999))
    half = semantic_contrastive(features, labels, prototypes, constant(0.5))
    assert 0 < float(near_one) <= 10 and float(near_one) == pytest.approx(9.99, rel=1e-4)
    assert float(half) == pytest.approx(5.0, rel=1e-4)  # 0.5 / (0.5 + 0.5) per new class


def test_alpha_follows_the_buffer_size_in_the_harness():
    """compare.py kept alpha 0.2 with --buffer_size 200; SARL uses 0.5 there and 0.2 at 500."""
    import argparse
    from benchmarks import compare
    from avalanche_balanced.protocols import sarl_alpha_for

    assert sarl_alpha_for(200) == 0.5 and sarl_alpha_for(500) == 0.2

    class Bench:
        fine_to_coarse = torch.arange(100) // 5

    for size, alpha in ((200, 0.5), (500, 0.2), (None, 0.2)):
        args = argparse.Namespace(buffer_size=size, device="cpu")
        assert compare.run_setting("quick", Bench(), 0, args).sarl_alpha == alpha


# ------------------------------------------------------------------ SARL as its authors wrote it
def test_sarl_positives_are_fixed_once_per_task_after_the_warm_up():
    """semantic_positives="threshold": no positives during the warm-up; fixed at the first step
    past it (prototype cosine > sim_thresh) and unchanged for the rest of the task; new ones next task."""
    bm = tiny_benchmark()
    s = make_strategy(epochs=3, warmup_epochs=1, semantic_positives="threshold", sim_thresh=0.0)
    snapshots = []

    class Spy(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            pairs = strategy.positive_pairs
            snapshots.append((strategy.task_id, strategy.clock.train_exp_epochs,
                              None if pairs is None else pairs.clone()))

    s.plugins.append(Spy())
    for exp in list(bm.train_stream)[:3]:
        s.train(exp)
    for task in (1, 2):
        rows = [(e, p) for t, e, p in snapshots if t == task]
        assert all(p is None for e, p in rows if e <= 1)  # the warm-up: epochs 0 and 1
        fixed = [p for e, p in rows if e > 1]
        assert fixed and all(torch.equal(p, fixed[0]) for p in fixed)
        new_classes = set(list(bm.train_stream)[task].classes_in_this_experience)
        assert set(torch.nonzero(fixed[0].any(1)).flatten().tolist()) <= new_classes  # rows: new classes only
    first, second = ([p for t, e, p in snapshots if t == task and p is not None][0] for task in (1, 2))
    assert not torch.equal(first, second)


def test_sarl_ratio_skips_a_class_whose_negatives_sum_to_zero():
    """The authors add pos / neg only when neg > 0: every other class a positive gives 0, not inf."""
    from avalanche_balanced.semantic import ClassPrototypes
    from avalanche_balanced.strategies.sarl_terms import semantic_contrastive

    torch.manual_seed(0)
    prototypes = ClassPrototypes(6, 8)
    prototypes.set_from_features(torch.randn(12, 8), torch.arange(3).repeat(4))
    feats, labels = torch.randn(8, 8), torch.tensor([3, 3, 4, 4, 5, 5, 3, 4])
    all_positive = torch.ones(6, 6)
    assert float(semantic_contrastive(feats, labels, prototypes, pair_weights=all_positive, ratio="sarl")) == 0.0
    some = torch.zeros(6, 6)
    some[3, 0] = 1
    value = semantic_contrastive(feats, labels, prototypes, pair_weights=some, ratio="sarl")
    assert 0 < float(value) < float("inf")
    with pytest.raises(ValueError, match="ratio"):
        semantic_contrastive(feats, labels, prototypes, pair_weights=some, ratio="other")


def test_sarl_separate_batches_normalise_current_and_replayed_apart():
    """separate_batches=True: BatchNorm sees the replayed batch (8), then the current one (16),
    as the authors' observe; the joint default sees 24 at once. Logits and features keep the
    joint layout either way (the loss terms read them by position)."""
    bm = tiny_benchmark()
    seen = {}
    for separate in (False, True):
        model = mlp_bn()
        sizes = []
        model[1].register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]) if m.training else None)
        s = make_strategy(model=model, epochs=1, separate_batches=separate, train_mb_size=16)
        for exp in list(bm.train_stream)[:2]:
            s.train(exp)
        seen[separate] = list(zip(sizes[:-1], sizes[1:]))  # consecutive train-mode BatchNorm batches
    assert (16, 24) in seen[False] or (24, 24) in seen[False]
    assert (8, 16) in seen[True] and not any(24 in pair for pair in seen[True])


def test_sarl_prototypes_from_augmented_views_when_asked():
    calls = []

    def transform(x):
        calls.append(x.shape[0])
        return x + 0.0

    bm = tiny_benchmark()
    for views, expect_calls in (("clean", False), ("augmented", True)):
        s = make_strategy(epochs=1, prototype_views=views, transform=transform)
        during = []
        original = s._set_prototypes_of_experience

        def spied(original=original, during=during):
            before = len(calls)
            original()
            during.append(len(calls) - before)

        s._set_prototypes_of_experience = spied
        s.train(bm.train_stream[0])
        assert (during[0] > 0) == expect_calls  # the prototype pass went through the augmentation
        assert int(s.prototypes.valid.sum()) == 2
    with pytest.raises(ValueError, match="prototype_views"):
        make_strategy(prototype_views="noisy")
    with pytest.raises(ValueError, match="semantic_positives"):
        make_strategy(semantic_positives="oracle")
    with pytest.raises(TypeError, match="separate_batches"):
        make_strategy(separate_batches="yes")
