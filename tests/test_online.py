"""Online streams (mini-experiences), work that follows what is trained, and dictionary minibatches."""
import pytest
import torch
from torch import nn
from avalanche.benchmarks import CLExperience, CLScenario, CLStream
from avalanche.benchmarks.scenarios.online import OnlineCLScenario, split_online_stream
from avalanche.benchmarks.utils import AvalancheDataset, ConstantSequence, DataAttribute
from avalanche.models import SimpleMLP
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.supervised import Naive, OnlineNaive

from avalanche_balanced import BalancedBuffer, BalancedReplayPlugin
from synthetic import blobs_benchmark

C, D = 6, 8


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))


def online_experiences(bm, experience, split: str, boundaries: bool, size: int = 8):
    if split == "scenario":
        scenario = OnlineCLScenario(original_streams=list(bm.streams.values()), experiences=experience,
                                    experience_size=size, access_task_boundaries=boundaries)
        return list(scenario.streams["train_online"])
    return list(split_online_stream([experience], experience_size=size, shuffle=True, drop_last=True,
                                    access_task_boundaries=boundaries))


def make(template, plugin, model=None):
    model = model or mlp()
    kwargs = dict(train_mb_size=8, device="cpu", evaluator=EvaluationPlugin(loggers=[]), plugins=[plugin])
    if template is Naive:
        kwargs["train_epochs"] = 1
    return template(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


# ------------------------------------------------------------------ smoke runs, every split and setting
# Every split function with every boundary setting; both templates and both draw modes among them.
@pytest.mark.parametrize("template, split, boundaries, balanced", [
    (OnlineNaive, "scenario", False, False), (Naive, "scenario", True, True),
    (Naive, "split_online_stream", False, True), (OnlineNaive, "split_online_stream", True, False),
])
def test_online_streams_train_and_replay_past_classes(template, split, boundaries, balanced):
    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=2)
    plugin = BalancedReplayPlugin(mem_size=24, batch_size_mem=8, use_balanced_sampling=balanced, regroup_every=3)
    strategy = make(template, plugin)
    drawn, draw = [], plugin.draw
    plugin.draw = lambda: (lambda batch: (drawn.append(batch.labels), batch)[1])(draw())
    for experience in bm.train_stream:
        drawn.clear()
        for mini in online_experiences(bm, experience, split, boundaries):
            strategy.train(mini)
    # The second experience replayed the first one's classes.
    first = set(bm.train_stream[0].classes_in_this_experience)
    assert first & set(torch.cat(drawn).tolist())
    # Class-balanced storage over both experiences' classes, full, no slot lost.
    labels = plugin.buffer.stored_labels
    assert len(plugin.buffer) == 24
    counts = torch.bincount(labels, minlength=C)
    assert set(labels.tolist()) == set(range(C))
    assert int(counts.max() - counts[counts > 0].min()) <= 1
    assert torch.isfinite(plugin.buffer.stored_features).all()


# ------------------------------------------------------------------ cost follows what is trained
class ForwardCounter:
    """Counts the samples that go through a model's forward pass."""

    def __init__(self, model):
        self.samples = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, inputs):
        self.samples += inputs[0].shape[0]


@pytest.mark.parametrize("config, per_mini_experience", [
    (dict(), 16),  # 8 current + 8 replayed in training; nothing reads logits or features: no insertion pass
    (dict(store_logits=True), 24),  # + the 8 inserted samples' eval-mode pass
    (dict(use_balanced_sampling=True), 24),
    (dict(group_metrics=True), 24),
])
def test_forward_passes_per_mini_experience_do_not_grow_with_the_buffer(config, per_mini_experience):
    """Samples through the model per mini-experience of 8 (with 8 replayed) are the same whatever
    the buffer holds, once its classes are known: no pass over the whole buffer after each
    mini-experience. (Before: every stored feature was recomputed at the end of every experience.)"""
    per_mini = {}
    for mem_size in (32, 96):
        bm = blobs_benchmark(C, D, n_per_class=32, n_experiences=2)
        plugin = BalancedReplayPlugin(mem_size=mem_size, batch_size_mem=8, regroup_every=1000, **config)
        model = mlp()
        strategy = make(OnlineNaive, plugin, model)
        counter = ForwardCounter(model)
        steady = []
        for experience in bm.train_stream:
            for mini in online_experiences(bm, experience, "scenario", False):
                known, before = plugin.schedule.seen_classes, counter.samples
                known = 0 if known is None else int(known.sum())
                strategy.train(mini)
                if int(plugin.schedule.seen_classes.sum()) == known and len(plugin.buffer) >= 8:
                    steady.append(counter.samples - before)  # no new class in this mini-experience
        assert len(steady) >= 8 and len(plugin.buffer) == min(mem_size, 32 * C)
        per_mini[mem_size] = set(steady)
    assert per_mini[32] == per_mini[96] == {per_mini_experience}


def test_new_classes_trigger_one_regrouping_and_the_schedule_the_rest():
    """With semantic draws online, the end-of-experience regrouping runs only when the mini-
    experience brought new classes; between those, every regroup_every iterations."""
    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=2)
    plugin = BalancedReplayPlugin(mem_size=24, batch_size_mem=8, use_balanced_sampling=True, regroup_every=5)
    calls = []
    original = plugin.buffer.regroup
    plugin.buffer.regroup = lambda *a, **k: (calls.append(plugin._iterations), original(*a, **k))[1]
    strategy = make(OnlineNaive, plugin)
    for experience in bm.train_stream:
        for mini in online_experiences(bm, experience, "scenario", False):
            strategy.train(mini)
    # 6 mini-experiences of 8 per experience: new classes at iterations 1 and 7, schedule at 5, 10.
    assert calls == [1, 5, 7, 10]


# ------------------------------------------------------------------ dictionary minibatches
def collate_dicts(items):
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
            else torch.tensor([it[k] for it in items]) for k in items[0]}


class NaiveDictData(Naive):
    """The strategy of Avalanche's tests/training/test_dictionary_mbatches.py (written anew)."""

    @property
    def mb_x(self):
        return self.mbatch["x"]

    @property
    def mb_y(self):
        return self.mbatch["y"]

    def mb_task_id(self):  # a plain method there, not a property
        return self.mbatch["targets_task_labels"]

    def _unpack_minibatch(self):
        for k in self.mbatch.keys():
            self.mbatch[k] = self.mbatch[k].to(self.device)


def dict_benchmark():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 10, generator=g), torch.randint(0, 2, (100,), generator=g)
    data = [{"x": a, "y": b} for a, b in zip(x, y)]
    experiences = []
    for i in range(2):
        labels = DataAttribute(ConstantSequence(i, len(data)), "targets_task_labels", use_in_getitem=True)
        exp = CLExperience(current_experience=i, origin_stream=None)
        exp.dataset = AvalancheDataset([data], data_attributes=[labels], collate_fn=collate_dicts)
        experiences.append(exp)
    return CLScenario([CLStream("train", experiences), CLStream("test", experiences)])


@pytest.mark.parametrize("mode", ["plugin_uniform", "plugin_balanced", "storage_policy"])
def test_dictionary_minibatches_and_plain_experiences(mode):
    """Avalanche's test_dictionary_train_replay setting: dictionary minibatches, plain
    CLExperiences without classes, collate_fn of the data. (Before: "cannot find the minibatch
    field" for the plugin, KeyError: 0 for the storage policy under ReplayPlugin.)"""
    if mode == "storage_policy":
        plugin = ReplayPlugin(mem_size=50, storage_policy=BalancedBuffer(50))
    else:
        plugin = BalancedReplayPlugin(mem_size=50, use_balanced_sampling=mode == "plugin_balanced")
    torch.manual_seed(0)
    model = SimpleMLP(input_size=10, num_classes=2)
    seen = []

    class Spy(NaiveDictData):
        def forward(self):
            seen.append({k: v.shape[0] for k, v in self.mbatch.items()})
            return super().forward()

    strategy = Spy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=10,
                   plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]))
    for experience in dict_benchmark().train_stream:
        strategy.train(experience)
    buffer = plugin.storage_policy
    assert len(buffer) == 50
    assert set(buffer.task_labels[:50].tolist()) <= {0, 1}
    # In the second experience, every field of the minibatch (task labels included) holds the
    # current samples and the replayed ones.
    assert seen[-1] == {"x": 20, "y": 20, "targets_task_labels": 20}
    # The storage policy's dataset view has the data's own layout.
    item = buffer.buffer[0]
    assert set(item) == {"x", "y", "targets_task_labels"} and isinstance(item["targets_task_labels"], int)


def test_a_strategy_whose_minibatch_hides_mb_x_gets_a_clear_error():
    class Hidden(NaiveDictData):
        @property
        def mb_x(self):
            return self.mbatch["x"].clone()  # not a field of the minibatch

    model = SimpleMLP(input_size=10, num_classes=2)
    strategy = Hidden(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=10,
                      plugins=[BalancedReplayPlugin(mem_size=50)], evaluator=EvaluationPlugin(loggers=[]))
    with pytest.raises(TypeError, match="reads as mb_x in its dict minibatch"):
        strategy.train(next(iter(dict_benchmark().train_stream)))


# ------------------------------------------------------------------ SARL-GELU online
@pytest.mark.parametrize("boundaries", [False, True])
def test_sarl_online_runs_its_end_of_task_steps_when_new_classes_arrive(boundaries):
    """Online, a SARL task is the run of mini-experiences from one that brings new classes to the
    next: the teacher, the BatchNorm pass and the finished task's prototypes come then, once per
    task, not once per mini-experience; the optimiser is not reset within a task."""
    from avalanche_balanced import SARLGelu

    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=3)
    torch.manual_seed(0)
    model = mlp()
    strategy = SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=24,
                        batch_size_mem=8, train_mb_size=8, train_epochs=1, warmup_epochs=0, teacher_ratio=None,
                        evaluator=EvaluationPlugin(loggers=[]))
    teachers, valid = [], []
    original = strategy._update_teacher
    strategy._update_teacher = lambda m: (teachers.append(strategy.clock.train_exp_counter), original(m))[1]
    for experience in bm.train_stream:
        minis = online_experiences(bm, experience, "split_online_stream", boundaries)
        for mini in minis:
            strategy.train(mini)
        valid.append(int(strategy.prototypes.valid.sum()))
        assert strategy.task_id == experience.current_experience
    # 4 mini-experiences of 8 per experience: the teacher is taken when experiences 1 and 2 begin.
    assert teachers == [4, 8]
    assert valid == [0, 2, 4]  # the finished tasks' classes have prototypes
    assert strategy.old_model is not None and strategy.past_warmup
    assert {"distill", "semantic", "prototype"} <= set(strategy.loss_terms)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sarl_online_refuses_a_per_task_lr_schedule():
    from avalanche_balanced import SARLGelu

    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=3)
    model = mlp()
    strategy = SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=24,
                        batch_size_mem=8, train_mb_size=8, train_epochs=1, lr_steps=[3],
                        evaluator=EvaluationPlugin(loggers=[]))
    with pytest.raises(ValueError, match="lr_steps.*online"):
        strategy.train(online_experiences(bm, bm.train_stream[0], "scenario", False)[0])


# ------------------------------------------------------------------ readers ask; bad input
def test_a_group_metric_brings_the_groups_up_to_date_when_it_reads_them():
    """The defaults never regroup during training; the group agreement metric, a reader, asks the
    plugin at evaluation, which then regroups from fresh features (once per change)."""
    from avalanche_balanced.metrics import GroupAgreementMetric

    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=2)
    plugin = BalancedReplayPlugin(mem_size=24, batch_size_mem=8)
    regroups = []
    original = plugin.buffer.regroup
    plugin.buffer.regroup = lambda *a, **k: (regroups.append(1), original(*a, **k))[1]
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                     train_epochs=1, plugins=[plugin],
                     evaluator=EvaluationPlugin(GroupAgreementMetric(torch.arange(C) // 2), loggers=[]))
    for experience in bm.train_stream:
        strategy.train(experience)
    assert regroups == []  # nothing read the groups during training
    strategy.eval(bm.test_stream)
    strategy.eval(bm.test_stream)  # nothing changed since: no second regrouping
    assert regroups == [1]
    with torch.no_grad():
        model.eval()
        fresh = model[:-1](plugin.buffer.examples[: len(plugin.buffer)])
    torch.testing.assert_close(plugin.buffer.stored_features, fresh)


def test_experiences_larger_than_the_buffer_and_fewer_slots_than_classes():
    """Documented behaviour: an experience larger than the buffer leaves a class-balanced subset of
    it (nothing of the past lost beyond what balance requires); with fewer slots than classes,
    each slot holds a different class."""
    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=2)
    for mem_size, expect in ((10, None), (4, 4)):
        plugin = BalancedReplayPlugin(mem_size=mem_size, batch_size_mem=8)
        strategy = make(OnlineNaive, plugin)
        for experience in bm.train_stream:
            strategy.train(experience)  # whole experiences of 48, more than the buffer holds
        labels = plugin.buffer.stored_labels
        counts = torch.bincount(labels, minlength=C)
        assert len(plugin.buffer) == mem_size
        if expect is None:  # 10 slots over 6 classes: 2 or 1 each, every class kept
            assert int(counts.min()) >= 1 and int(counts.max()) <= 2
        else:  # 4 slots, 6 classes: 4 distinct classes
            assert int((counts > 0).sum()) == 4 and int(counts.max()) == 1


def test_without_readers_draws_carry_no_logits_and_a_reader_gets_fresh_features():
    """Defaults: stored without a model pass, drawn without logits (None, not zeros); with
    store_logits the stored logits are the model's at insertion."""
    bm = blobs_benchmark(C, D, n_per_class=16, n_experiences=2)
    for store, expect_logits in ((False, False), (True, True)):
        plugin = BalancedReplayPlugin(mem_size=24, batch_size_mem=8, store_logits=store)
        strategy = make(Naive, plugin)
        strategy.train(bm.train_stream[0])
        assert (plugin.draw().logits is not None) == expect_logits
        stored = plugin.buffer.logits[: len(plugin.buffer)]
        assert bool(stored.abs().sum() > 0) == expect_logits
        if store:
            with torch.no_grad():
                strategy.model.eval()
                torch.testing.assert_close(stored, strategy.model(plugin.buffer.examples[: len(plugin.buffer)]))


def test_new_arguments_are_checked():
    with pytest.raises(TypeError, match="group_metrics"):
        BalancedReplayPlugin(mem_size=10, group_metrics="yes")
    with pytest.raises(TypeError, match="store_logits"):
        BalancedReplayPlugin(mem_size=10, store_logits=1)
    from avalanche_balanced import SARLGelu
    with pytest.raises(ValueError, match="online_warmup_iterations"):
        SARLGelu(model=mlp(), optimizer=torch.optim.SGD(mlp().parameters(), lr=0.1), online_warmup_iterations=-1)
