"""BalancedReplayPlugin inside real Avalanche strategies on a tiny synthetic benchmark."""
import pytest
import torch
from torch import nn
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import LwF, Naive

from avalanche_balanced import BalancedReplayPlugin
from synthetic import blobs_benchmark

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


@pytest.mark.parametrize("balanced", [True, False])
def test_naive_with_plugin_replays_old_classes(balanced):
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(mem_size=40, batch_size_mem=8, use_balanced_sampling=balanced,
                                  regroup_every=5)
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
        seen_in_batches = set(torch.cat(recorder.labels).tolist())
        if i > 0:
            assert seen_in_batches & (seen - new), "old classes must be replayed"
        assert all(len(b) == 16 + 8 for b in recorder.labels[1:])  # 16 current + 8 replayed
    assert len(plugin.buffer) == 40


def test_features_and_logits_come_from_the_same_forward_pass():
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(mem_size=30, batch_size_mem=8)
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

    plugin = BalancedReplayPlugin(mem_size=30, batch_size_mem=8, transform=shift)
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     train_mb_size=10, train_epochs=1, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    strategy.train(bm.train_stream[0])
    assert plugin.buffer.examples[: len(plugin.buffer)].abs().max() < 50  # stored untransformed
    assert seen_inputs[-1].shape[0] == 18  # 10 current + 8 replayed went through the transform


def test_plugin_with_lwf_and_monitoring_metrics():
    bm = tiny_benchmark()
    plugin = BalancedReplayPlugin(mem_size=30, batch_size_mem=8)
    model = mlp()
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[], collect_all=True)
    strategy = LwF(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                   criterion=nn.CrossEntropyLoss(), alpha=1.0, temperature=2.0, train_mb_size=16, train_epochs=1,
                   plugins=[plugin], evaluator=evaluator)
    for exp in bm.train_stream:
        strategy.train(exp)
    strategy.eval(bm.test_stream)
    metrics = evaluator.get_last_metrics()
    assert metrics["BalancedReplay/num_groups"] >= 1
    assert metrics["BalancedReplay/group_sizes"].sum().item() == 30
    assert metrics["BalancedReplay/importance"].shape == (30,)
    assert 0.0 <= metrics["BalancedReplay/replay_group_entropy"] <= 1.0
    assert metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 1.0 / C  # learned something


def test_bad_plugin_arguments():
    with pytest.raises(ValueError, match="batch_size_mem"):
        BalancedReplayPlugin(mem_size=10, batch_size_mem=11)
    with pytest.raises(ValueError, match="max_size"):
        BalancedReplayPlugin(mem_size=0)
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
