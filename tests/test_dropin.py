"""BalancedReplayPlugin and BalancedBuffer where Avalanche's ReplayPlugin works: its constructor,
growing and multi-head classifiers, generic experiences, dictionary minibatches, LwF in both orders."""
import copy

import pytest
import torch
from torch import nn
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier, MTSimpleMLP
from avalanche.training.plugins import EvaluationPlugin, LwFPlugin, ReplayPlugin
from avalanche.training.supervised import Naive

from avalanche_balanced import BalancedBuffer, BalancedReplayPlugin
from avalanche_balanced.plugin import experience_classes
from synthetic import blobs_benchmark

C, D = 6, 8


class ReplayCounter(SupervisedPlugin):
    """Minibatch sizes after the plugin joined the replayed samples (before_forward runs after it)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def after_forward(self, strategy, **kwargs):
        self.sizes.append(strategy.mb_x.shape[0])


def naive(model, plugins, mb=16, epochs=1):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=mb,
                 train_epochs=epochs, plugins=plugins, evaluator=EvaluationPlugin(loggers=[]))


def mlp(width=C):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, width))


def test_replay_plugin_signature_and_defaults():
    """ReplayPlugin(mem_size=200, batch_size=32, batch_size_mem=32) raised a misleading TypeError."""
    plugin = BalancedReplayPlugin(mem_size=200, batch_size=32, batch_size_mem=32)
    assert plugin.buffer.max_size == 200 and plugin.batch_size == 32
    default = BalancedReplayPlugin()
    assert (default.buffer.max_size, default.batch_size, default.batch_size_mem,
            default.task_balanced_dataloader) == (200, None, None, False)  # ReplayPlugin's defaults
    # The best-measured configuration (docs/results.md): class-balanced storage, uniform draws.
    assert (default.buffer.insertion, default.use_balanced_sampling) == ("class_balanced", False)


def test_default_storage_is_class_balanced_and_fills_what_class_balanced_buffer_leaves_empty():
    """With its defaults the plugin stores every class at least as many samples as Avalanche's
    ClassBalancedBuffer after every experience; where a class has fewer samples than its equal
    quota, ClassBalancedBuffer leaves the slots empty and the plugin gives them to the larger
    classes (water-level quotas), so its buffer is full. Draws are uniform."""
    from avalanche.training.storage_policy import ClassBalancedBuffer
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([40, 3, 25, 9, 30, 2])  # unequal classes, two experiences of three
    y = torch.arange(6).repeat_interleave(sizes)
    x = torch.randn(len(y), D, generator=g)
    bm = nc_benchmark(_make_taskaware_tensor_classification_dataset(x, y),
                      _make_taskaware_tensor_classification_dataset(x, y), n_experiences=2, task_labels=False,
                      seed=0, fixed_class_order=list(range(6)))
    plugin, reference = BalancedReplayPlugin(mem_size=12, batch_size_mem=4), ClassBalancedBuffer(12)
    strategy = naive(mlp(6), [plugin], mb=8)
    theirs_total = {0: 11, 1: 12}  # after experience 0, class 1 (3 samples) leaves one of its 4 slots empty
    for exp in bm.train_stream:
        strategy.train(exp)
        reference.update_from_dataset(exp.dataset)
        ours = torch.bincount(plugin.buffer.labels[: len(plugin.buffer)], minlength=6)
        theirs = torch.bincount(torch.tensor([int(t) for t in reference.buffer.targets]), minlength=6)
        assert bool((ours >= theirs).all()) and int(ours.sum()) == 12
        assert int(theirs.sum()) == theirs_total[exp.current_experience]
        seen = ours[: 3 * (exp.current_experience + 1)]
        assert int(seen.max() - seen[seen < sizes[: seen.numel()]].min()) <= 1  # equal up to one, unless all kept
    assert plugin.use_balanced_sampling is False and plugin.diagnostics.effective_sample_size(plugin.buffer) == 1.0


def test_batch_size_mem_none_is_the_strategy_minibatch_and_larger_than_the_buffer_draws_it_all():
    bm = blobs_benchmark(C, D, seed=0)
    counter = ReplayCounter()
    naive(mlp(), [BalancedReplayPlugin(mem_size=30), counter], mb=12).train(bm.train_stream[0])
    naive_with = naive(mlp(), [BalancedReplayPlugin(mem_size=30), counter], mb=12)
    counter.sizes.clear()
    for exp in bm.train_stream[:2]:
        counter.sizes.clear()
        naive_with.train(exp)
    assert set(counter.sizes[:-1]) == {24}  # 12 current + 12 replayed (the strategy's minibatch)
    big, counter.sizes = naive(mlp(), [BalancedReplayPlugin(mem_size=10, batch_size_mem=50), counter], mb=12), []
    for exp in bm.train_stream[:2]:
        counter.sizes.clear()
        big.train(exp)
    assert set(counter.sizes[:-1]) == {22}  # every one of the 10 stored samples


def test_batch_size_sets_the_current_samples_per_iteration():
    bm = blobs_benchmark(C, D, seed=0)
    counter = ReplayCounter()
    strategy = naive(mlp(), [BalancedReplayPlugin(mem_size=30, batch_size=8, batch_size_mem=4), counter], mb=16)
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[1])
    assert max(counter.sizes) == 12


def test_task_balanced_replay_gives_each_task_an_equal_share():
    buf = BalancedBuffer(100, seed=0)
    x, y = torch.randn(100, D), torch.arange(100) % 4
    tasks = (torch.arange(100) >= 80).long()  # 80 samples of task 0, 20 of task 1
    buf.add_data(x, y, torch.randn(100, 4), torch.randn(100, 5), task_labels=tasks)
    drawn = torch.cat([buf.get_task_balanced_data(10, balanced=b).task_labels for b in (True, False)
                       for _ in range(300)])
    assert drawn.float().mean().item() == pytest.approx(0.5, abs=0.03)


def incremental_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), IncrementalClassifier(16, initial_out_features=2))


@pytest.mark.parametrize("as_storage_policy", [False, True])
def test_growing_head_widens_the_stored_logits(as_storage_policy):
    """With IncrementalClassifier the buffer fixed the logit width at the first insertion:
    'logits must have shape (120, 2), got (120, 4)' in the second experience."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C).repeat_interleave(40)
    ds = _make_taskaware_tensor_classification_dataset(torch.randn(len(y), D, generator=g) + 2.0 * torch.eye(C, D)[y], y)
    bm = nc_benchmark(ds, ds, n_experiences=3, task_labels=False, fixed_class_order=list(range(C)))
    buf = BalancedBuffer(30, seed=0)
    plugin = (ReplayPlugin(mem_size=30, batch_size_mem=8, storage_policy=buf) if as_storage_policy
              else BalancedReplayPlugin(mem_size=30, batch_size_mem=8, storage_policy=buf))
    model = incremental_mlp()
    strategy = naive(model, [plugin])
    widths = []
    for exp in bm.train_stream:
        strategy.train(exp)
        widths.append(buf.num_classes)
    assert widths == [2, 4, 6] and buf.prototypes.num_classes == 6
    stored = buf.labels[: len(buf)]
    assert set(stored.tolist()) == set(range(C))
    # the first experience's samples keep their logits, with zeros for the units added later
    first = torch.isin(stored, torch.tensor(list(bm.train_stream[0].classes_in_this_experience)))
    assert first.any()
    assert torch.equal(buf.logits[: len(buf)][first][:, 4:], torch.zeros(int(first.sum()), 2))


def test_multi_task_model_gets_task_labels_and_all_heads_features():
    """forward_with_features called model(x) without task labels: TypeError with MTSimpleMLP."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C).repeat_interleave(30)
    x = torch.randn(len(y), 20, generator=g) + 2.0 * torch.eye(C, 20)[y]
    ds = _make_taskaware_tensor_classification_dataset(x, y)
    bm = nc_benchmark(ds, ds, n_experiences=3, task_labels=True, seed=0)
    torch.manual_seed(0)
    model = MTSimpleMLP(input_size=20, hidden_size=16)
    plugin = BalancedReplayPlugin(mem_size=30, batch_size_mem=8, store_logits=True)  # the insertion pass runs
    strategy = naive(model, [plugin])
    for exp in bm.train_stream:
        strategy.train(exp)
    buf = plugin.buffer
    assert set(buf.task_labels[: len(buf)].tolist()) == {0, 1, 2}
    assert buf.num_feats == 16  # the heads' shared input, not one head's output
    # stored features are what the model gives for each sample under its own task
    with torch.no_grad():
        model.eval()
        hidden = model.features(buf.examples[: len(buf)])
    # Nothing refreshes stored features here (nothing reads the groups): the last experience's
    # samples hold the features of the model as it is now, from the insertion pass.
    last = buf.task_labels[: len(buf)] == 2
    torch.testing.assert_close(buf.features[: len(buf)][last], hidden[last])


def test_experience_without_class_list_uses_its_targets():
    class Plain:  # a generic CLExperience: a dataset, no classes_in_this_experience
        dataset = _make_taskaware_tensor_classification_dataset(torch.randn(5, D), torch.tensor([3, 1, 3, 0, 1]))
    assert experience_classes(Plain(), "cpu").tolist() == [0, 1, 3]

    class Bare:
        pass
    assert experience_classes(Bare(), "cpu").tolist() == []


class DictNaive(Naive):
    """A strategy whose minibatches are dictionaries (Avalanche lets a strategy define its fields)."""

    def _unpack_minibatch(self):
        super()._unpack_minibatch()
        x, y, t = self.mbatch[:3]
        self.mbatch = {"image": x, "label": y, "task": t}

    @property
    def mb_x(self):
        return self.mbatch["image"]

    @property
    def mb_y(self):
        return self.mbatch["label"]

    @property
    def mb_task_id(self):
        return self.mbatch["task"]


def test_dictionary_minibatches():
    bm = blobs_benchmark(C, D, seed=0)
    model = mlp()
    plugin, counter = BalancedReplayPlugin(mem_size=30, batch_size_mem=8), ReplayCounter()
    strategy = DictNaive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                         train_epochs=1, plugins=[plugin, counter], evaluator=EvaluationPlugin(loggers=[]))
    for exp in bm.train_stream[:2]:
        counter.sizes.clear()
        strategy.train(exp)
    assert set(counter.sizes[:-1]) == {24} and len(plugin.buffer) == 30


class DeepCopyEveryIteration(SupervisedPlugin):
    def after_training_iteration(self, strategy, **kwargs):
        copy.deepcopy(strategy.model)


@pytest.mark.parametrize("lwf_first", [True, False])
def test_model_can_be_deep_copied_with_lwf_in_either_order(lwf_first):
    """plugins=[LwFPlugin(), BalancedReplayPlugin(...)] failed in copy.deepcopy(model): the feature
    hook still held the last forward's graph."""
    bm = blobs_benchmark(C, D, seed=0)
    replay = BalancedReplayPlugin(mem_size=30, batch_size_mem=8)
    plugins = [LwFPlugin(), replay] if lwf_first else [replay, LwFPlugin()]
    strategy = naive(mlp(), plugins + [DeepCopyEveryIteration()])
    for exp in bm.train_stream:
        strategy.train(exp)
    assert len(replay.buffer) == 30
    assert not strategy.model[-1]._forward_hooks  # no hook left between iterations


class PoisonWeights(SupervisedPlugin):
    """Turns one weight into NaN after the updates of the second experience (as a diverging
    regulariser would)."""

    def after_update(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 1:
            with torch.no_grad():
                strategy.model[0].weight[0, 0] = float("nan")


def test_non_finite_weights_are_reported_with_where_they_came_from():
    bm = blobs_benchmark(C, D, seed=0)
    # store_logits: the end-of-experience insertion runs the model (the defaults run none)
    strategy = naive(mlp(), [BalancedReplayPlugin(mem_size=30, batch_size_mem=8, store_logits=True), PoisonWeights()])
    strategy.train(bm.train_stream[0])
    with pytest.raises(ValueError, match=r"experience \d, insertion at the end of the experience: features contain "
                                         r"NaN or inf; the model's weights are non-finite \(0.weight.*PoisonWeights"):
        strategy.train(bm.train_stream[1])
