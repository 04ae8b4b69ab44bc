"""BalancedReplayPlugin inside real Avalanche strategies on a tiny synthetic benchmark."""
import math
from collections import Counter

import pytest
import torch
from avalanche.logging import TensorboardLogger
from torch import nn
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import LwF, Naive

from avalanche_balanced import BalancedReplayPlugin
from avalanche_balanced.metrics import ReplayGroupEntropyMetric
from synthetic import SEMANTIC, blobs_benchmark

C, D = 6, 8


def tiny_benchmark(seed=0):
    return blobs_benchmark(C, D, separation=2.0, seed=seed)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))


class Recorder(SupervisedPlugin):
    """Records the labels each training forward pass saw."""

    def __init__(self):
        super().__init__()
        self.labels = []

    def after_forward(self, strategy, **kwargs):
        self.labels.append(strategy.mb_y.clone())


@pytest.mark.parametrize("timing", ["after_experience", "online"])
@pytest.mark.parametrize("balanced", [True, False])
def test_naive_with_plugin_replays_old_classes(balanced, timing):
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(mem_size=40, batch_size_mem=8, use_balanced_sampling=balanced,
                                  regroup_every=5, insertion_timing=timing)
    recorder = Recorder()
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=16, train_epochs=1, plugins=[plugin, recorder],
                     evaluator=EvaluationPlugin(loggers=[]))
    seen = set()
    for i, exp in enumerate(bm.train_stream):
        recorder.labels.clear()
        strategy.train(exp)
        new = set(exp.classes_in_this_experience)
        stored = set(plugin.buffer.labels[: len(plugin.buffer)].tolist())
        seen |= new
        assert stored == seen  # buffer holds exactly the classes seen so far
        replayed = set(torch.cat([b[16:] for b in recorder.labels]).tolist())
        if timing == "after_experience":
            # ReplayPlugin's timing: the first experience replays nothing, later ones past classes only
            sizes = {len(b) for b in recorder.labels}
            assert sizes == ({16} if i == 0 else {16 + 8})
            assert replayed <= seen - new
        else:
            # online reservoir: replay from the second iteration on, current classes included
            assert all(len(b) == 16 + 8 for b in recorder.labels[1:])
            assert i > 0 or replayed <= new
        if i > 0:
            assert replayed & (seen - new), "old classes must be replayed"
    assert len(plugin.buffer) == 40


def test_after_experience_storage_uses_one_eval_pass_with_preprocessing():
    """The end-of-experience pass stores raw inputs, with logits and features of the
    preprocessed inputs in eval mode (dropout off), and leaves the model in train mode."""
    bm = tiny_benchmark()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, C))
    plugin = BalancedReplayPlugin(**SEMANTIC, mem_size=30, batch_size_mem=8, preprocess=lambda x: 2 * x)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=10, train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    assert model.training  # the plugin's eval pass restored the training mode
    buf = plugin.buffer
    x = buf.examples[: len(buf)]
    assert len(buf) == 30 and buf.num_seen == len(bm.train_stream[0].dataset)
    assert set(buf.labels[: len(buf)].tolist()) <= set(bm.train_stream[0].classes_in_this_experience)
    model.eval()
    with torch.no_grad():
        feats = model[2](model[1](model[0](2 * x)))
    torch.testing.assert_close(buf.features[: len(buf)], feats)
    torch.testing.assert_close(buf.logits[: len(buf)], model[3](feats))


def test_insertion_timing_is_checked():
    with pytest.raises(ValueError, match="insertion_timing"):
        BalancedReplayPlugin(insertion_timing="end")


def test_features_and_logits_come_from_the_same_forward_pass():
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(**SEMANTIC, mem_size=30, batch_size_mem=8, insertion_timing="online")
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                     train_mb_size=10, train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    buf = plugin.buffer
    with torch.no_grad():
        feats = model[1](model[0](buf.examples[: len(buf)]))  # input of the last linear layer
    torch.testing.assert_close(buf.features[: len(buf)], feats)  # lr 0: features stay exact
    torch.testing.assert_close(buf.logits[: len(buf)], model[2](feats))


def test_transform_applies_to_the_joint_batch_but_raw_inputs_are_stored():
    bm = tiny_benchmark()
    seen_inputs = []

    def shift(x):
        seen_inputs.append(x)
        return x + 100.0

    plugin = BalancedReplayPlugin(**SEMANTIC, mem_size=30, batch_size_mem=8, transform=shift)
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     train_mb_size=10, train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    assert seen_inputs[-1].shape[0] == 10  # nothing stored yet: the first experience replays nothing
    strategy.train(bm.train_stream[1])
    assert plugin.buffer.examples[: len(plugin.buffer)].abs().max() < 50  # stored untransformed
    assert seen_inputs[-1].shape[0] == 18  # 10 current + 8 replayed went through the transform


class ReplayedGroups(SupervisedPlugin):
    """Tallies, per experience, the buffer group of every replayed sample at the time it was drawn."""

    def __init__(self, replay):
        super().__init__()
        self.replay, self.groups = replay, []

    def before_training_exp(self, strategy, **kwargs):
        self.groups = []

    def before_backward(self, strategy, **kwargs):  # the iteration's ReplayStep exists from after_forward on
        if self.replay.step.replay is not None:
            self.groups += self.replay.buffer.group_ids[self.replay.step.replay.indices].tolist()


class HistogramRecorder(TensorboardLogger):
    """A TensorBoard logger that also keeps the last histogram written under each tag."""

    def __init__(self, log_dir):
        super().__init__(tb_log_dir=str(log_dir))
        self.histograms = {}
        add = self.writer.add_histogram

        def record(tag, values, step):
            self.histograms[tag] = values
            add(tag, values, step)
        self.writer.add_histogram = record


def test_plugin_with_lwf_and_monitoring_metrics(tmp_path):
    """Guards the published num_groups, group_sizes and replay group entropy values exactly."""
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(**SEMANTIC, mem_size=30, batch_size_mem=8)
    tally = ReplayedGroups(plugin)
    model = mlp()
    tensorboard = HistogramRecorder(tmp_path)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), ReplayGroupEntropyMetric(), loggers=[tensorboard],
                                 collect_all=True)
    strategy = LwF(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                   criterion=nn.CrossEntropyLoss(), alpha=1.0, temperature=2.0, train_mb_size=16, train_epochs=1,
                   plugins=[plugin, tally], evaluator=evaluator)
    for exp in bm.train_stream:
        strategy.train(exp)
    strategy.eval(bm.test_stream)
    metrics = evaluator.get_last_metrics()
    # Buffer groups, read straight off the stored group ids after the last experience.
    buf = plugin.buffer
    stored = Counter(buf.group_ids[: len(buf)].tolist())
    assert metrics["BalancedReplay/num_groups"] == len(stored)
    # histograms go to TensorBoard, not to the evaluator (a text logger would print them whole)
    assert "BalancedReplay/group_sizes" not in metrics and "BalancedReplay/replay_weight" not in metrics
    assert tensorboard.histograms["BalancedReplay/group_sizes"].tolist() == [stored[g] for g in sorted(stored)]
    assert sum(stored.values()) == 30
    assert tensorboard.histograms["BalancedReplay/replay_weight"].shape == (30,)
    # Replay entropy of the last experience, from our own tally of the drawn groups:
    # H(p) / log(K), K = max(non-empty buffer groups, groups drawn), as the plugin documents.
    drawn = Counter(tally.groups)
    assert sum(drawn.values()) == 8 * (len(bm.train_stream[2].dataset) // 16)  # 8 replayed per step
    counts = plugin.diagnostics.replay_group_counts
    assert counts.tolist() == [drawn[g] for g in range(len(counts))]
    k = max(len(stored), len(drawn))
    total = sum(drawn.values())
    expected = -sum(c / total * math.log(c / total) for c in drawn.values()) / math.log(k)
    assert len(drawn) > 1 and 0.0 < expected < 1.0  # several groups drawn unevenly: strictly inside
    assert metrics["ReplayGroupEntropy_Exp/train_phase/train_stream/Task000/Exp002"] == pytest.approx(
        expected, rel=1e-9)
    assert not any("replay_group_entropy" in name for name in metrics)  # published once, by the metric
    assert metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 1.0 / C  # learned something


def test_bad_plugin_arguments():
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'batch_sizes'; accepted: mem_size, batch_size"):
        BalancedReplayPlugin(mem_size=10, batch_sizes=11)
    with pytest.raises(ValueError, match="mem_size must be a positive integer"):
        BalancedReplayPlugin(mem_size=0)
    with pytest.raises(ValueError, match="batch_size_mem must be a positive integer"):
        BalancedReplayPlugin(mem_size=10, batch_size_mem=0)
    with pytest.raises(ValueError, match="grouping"):
        BalancedReplayPlugin(grouping="superclass")


def test_batch_transforms_as_plugin_and_inside_the_model():
    from avalanche_balanced.transforms import AugmentedModel, BatchTransformPlugin
    bm = tiny_benchmark()
    seen = {"train": [], "eval": []}
    plugin = BatchTransformPlugin(lambda x: seen["train"].append(x.shape[0]) or x,
                                  lambda x: seen["eval"].append(x.shape[0]) or x)
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=16,
                     eval_mb_size=50, train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream[:1])
    assert seen["train"] == [16] * 5 and seen["eval"] == [50, 30]

    wrapped = AugmentedModel(mlp(), train_transform=lambda x: x + 1, eval_transform=lambda x: x - 1)
    x = torch.zeros(2, D)
    torch.testing.assert_close(wrapped.train()(x), wrapped.model(x + 1))
    torch.testing.assert_close(wrapped.eval()(x), wrapped.model(x - 1))


class ReplayedLabels(SupervisedPlugin):
    """Records the labels of the replayed part of every training minibatch."""

    def __init__(self, n_current):
        super().__init__()
        self.n_current, self.per_experience = n_current, []

    def before_training_exp(self, strategy, **kwargs):
        self.per_experience.append([])

    def after_forward(self, strategy, **kwargs):
        self.per_experience[-1].append(strategy.mb_y[self.n_current:].clone())


@pytest.mark.parametrize("timing", ["after_experience", "online"])
def test_current_share_and_effective_sample_size_are_published(timing):
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(**SEMANTIC, mem_size=30, batch_size_mem=8, insertion_timing=timing, regroup_every=2)
    labels = ReplayedLabels(n_current=10)
    # An independent record of the replay distribution's ESS at every point the plugin samples it.
    from avalanche_balanced.importance import effective_sample_size
    seen, record = [], plugin.diagnostics.record_ess

    def spy(buffer):
        seen.append((strategy.clock.train_exp_counter, float(effective_sample_size(
            buffer.replay_probabilities())) if len(buffer) else None))
        record(buffer)
    plugin.diagnostics.record_ess = spy
    model = mlp()
    evaluator = EvaluationPlugin(loggers=[], collect_all=True)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=10,
                     train_epochs=1, plugins=[plugin, labels], evaluator=evaluator)
    for exp in bm.train_stream:
        strategy.train(exp)
    shares = evaluator.get_all_metrics()["BalancedReplay/current_share"][1]
    expected = []
    for exp, replayed in zip(bm.train_stream, labels.per_experience):
        y = torch.cat(replayed) if replayed else torch.zeros(0, dtype=torch.long)
        current = torch.isin(y, torch.tensor(exp.classes_in_this_experience))
        expected.append(current.float().mean().item() if len(y) else 0.0)
    assert shares == pytest.approx(expected)
    if timing == "after_experience":
        assert shares == [0.0] * len(bm.train_stream)  # past experiences only
    else:
        assert all(0.0 < v < 1.0 for v in shares[1:])
    ess = evaluator.get_all_metrics()["BalancedReplay/effective_sample_size"][1]
    last = [v for exp, v in seen if exp == len(bm.train_stream) - 1 and v is not None]
    assert len(last) >= 2 and ess[-1] == pytest.approx(sum(last) / len(last))  # the experience's mean
    assert all(0.0 < v <= 1.0 for v in ess)


def test_uniform_replay_has_full_effective_sample_size():
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(mem_size=30, batch_size_mem=8, use_balanced_sampling=False)
    evaluator = EvaluationPlugin(loggers=[], collect_all=True)
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=10,
                     train_epochs=1, plugins=[plugin], evaluator=evaluator)
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
    assert evaluator.get_all_metrics()["BalancedReplay/effective_sample_size"][1] == [1.0, 1.0]


class CallCounter:
    """Wraps a bound method and counts its calls, with the plugin's iteration count at each."""

    def __init__(self, plugin, name):
        # A method of one of the buffer's parts is wrapped on that part (its storage, groups or sampler).
        owner = plugin.buffer if name in vars(type(plugin.buffer)) and callable(vars(type(plugin.buffer))[name]) \
            else plugin.buffer.groups
        self.plugin, self.wrapped, self.at = plugin, getattr(owner, name), []
        setattr(owner, name, self)

    def __call__(self, *args, **kwargs):
        self.at.append(self.plugin._iterations)
        return self.wrapped(*args, **kwargs)


@pytest.mark.parametrize("config, regrouped_within", [
    (dict(), False),  # the defaults: uniform draws from class-balanced storage
    (dict(insertion="reservoir"), False),
    (SEMANTIC, True),
    (dict(insertion="group_balanced"), True),  # storage allocates by group
])
def test_buffer_is_regrouped_within_an_experience_only_when_training_reads_the_groups(config, regrouped_within):
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(mem_size=40, batch_size_mem=8, regroup_every=2, insertion_timing="online",
                                  **config)
    assert plugin.reads_groups == regrouped_within
    refreshes, checks = CallCounter(plugin, "refresh_features"), CallCounter(plugin, "check_pending")
    regroups = CallCounter(plugin, "regroup")
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                     train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    n = plugin._iterations
    assert n == 5
    # The deferred checks of online insertion keep their interval whatever the draws read.
    assert sorted(set(checks.at)) == [2, 4, 5]
    # Regrouped every 2 iterations and at the end of the experience (its classes are new) only
    # when something reads the groups; never otherwise. Every stored feature is recomputed at a
    # scheduled regrouping once as many samples were trained since the latest refresh as are
    # stored (32 >= 32 at iteration 2; 32 < 40 at 4), and at the new classes' regrouping.
    assert sorted(set(regroups.at)) == ([2, 4, 5] if regrouped_within else [])
    assert refreshes.at == ([2, 5] if regrouped_within else [])


def test_skipping_the_regroupings_changes_nothing_uniform_draws_use():
    """Uniform draws with the within-experience regroupings forced back on train the same model
    and store the same samples as without them: the skipped passes were pure cost."""

    class AlwaysRegroup(BalancedReplayPlugin):
        reads_groups = True

    results = []
    for cls in (BalancedReplayPlugin, AlwaysRegroup):
        bm = tiny_benchmark()
        plugin = cls(mem_size=40, batch_size_mem=8, regroup_every=2, insertion_timing="online")
        model = mlp()
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                         train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
        for exp in bm.train_stream[:2]:
            strategy.train(exp)
        results.append((torch.cat([p.flatten() for p in model.parameters()]), plugin.buffer.stored_labels.clone(),
                        plugin.buffer.examples[: len(plugin.buffer)].clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_replay_in_passes_goes_through_the_buffer_before_repeating():
    """With ``replay_order="passes"`` every stored sample is replayed once before any is replayed
    twice (as Avalanche's ReplayDataLoader cycles its buffer); with ``"independent"`` batches
    (the default) some sample repeats within the first pass's worth of draws."""
    repeats = {}
    for order in ("passes", "independent"):
        bm = tiny_benchmark()
        plugin = BalancedReplayPlugin(mem_size=40, batch_size_mem=8, replay_order=order)
        drawn, original = [], plugin.draw

        def recorded(original=original, drawn=drawn):
            batch = original()
            drawn.append(batch.indices.clone())
            return batch

        plugin.draw = recorded
        model = mlp()
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                         train_epochs=2, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
        strategy.train(bm.train_stream[0])
        strategy.train(bm.train_stream[1])  # replays the 40 samples stored after experience 0
        assert len(drawn) >= 10
        passes = torch.cat(drawn[:10]).view(2, 40)  # two passes' worth of 8-sample batches
        if order == "passes":
            for one_pass in passes:
                assert sorted(one_pass.tolist()) == list(range(40))
        repeats[order] = 40 - len(set(passes[0].tolist()))
    assert repeats["passes"] == 0 and repeats["independent"] > 0
