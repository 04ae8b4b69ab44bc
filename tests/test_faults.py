"""Faults a user meets: a buffer never holds a half-done state, checkpoints restore whole or not at all,
every setting is checked. One test per fault (docs/design.md, "Faults and what they leave")."""
import copy

import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_balanced import BalancedBuffer, BalancedReplayPlugin, SARLGelu
from avalanche_balanced.checkpoint import load_checkpoint, save_checkpoint
from avalanche_balanced.storage import STORAGE
from synthetic import blobs_benchmark

C, D = 6, 8


def mlp(width=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, width), nn.ReLU(), nn.Linear(width, C))


def naive(plugin, model=None, mb=8):
    model = model or mlp()
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=mb,
                 train_epochs=1, device="cpu", evaluator=EvaluationPlugin(loggers=[]), plugins=[plugin])


def filled(n=20, capacity=40, **kwargs):
    buf = BalancedBuffer(capacity, seed=0, **kwargs)
    g = torch.Generator().manual_seed(1)
    buf.add_data(torch.rand(n, D, generator=g), torch.arange(n) % C, torch.randn(n, C, generator=g),
                 torch.randn(n, 4, generator=g))
    buf.refresh_prototypes()
    buf.regroup()
    return buf


def snapshot(buf):
    """Everything a buffer holds, cloned: tensors, counters, generator, groups, sampler pass."""
    state = buf.state_dict()
    return {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in state.items()}


def assert_same(buf, before):
    now = snapshot(buf)
    assert set(now) == set(before)
    for key in before:
        a, b = before[key], now[key]
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), key
        else:
            assert repr(a) == repr(b), key


# ------------------------------------------------------------------ all or nothing
def test_a_state_with_a_missing_key_leaves_the_buffer_as_it_was():
    buf, other = filled(), filled(n=30)
    before = snapshot(buf)
    state = other.state_dict()
    del state["group_ids"]
    with pytest.raises(ValueError, match="lacks group_ids"):
        buf.load_state_dict(state)
    assert_same(buf, before)
    state = other.state_dict()
    state["labels"] = state["labels"][:10]  # inconsistent rows
    with pytest.raises(ValueError, match="rows"):
        buf.load_state_dict(state)
    assert_same(buf, before)


def test_an_insertion_interrupted_mid_write_puts_everything_back(monkeypatch):
    for insertion in ("reservoir", "class_balanced"):
        buf = filled(n=40, capacity=40, insertion=insertion)  # full: the insertion overwrites rows
        before = snapshot(buf)
        import avalanche_balanced.storage as storage
        real = storage.write_rows if insertion == "class_balanced" else storage.write_rows_masked

        def interrupted(stores, incoming, source, slots):
            stores[0][slots] = incoming[0][source.clamp_min(0)]  # the inputs are written...
            raise KeyboardInterrupt  # ...then Ctrl-C before the labels

        monkeypatch.setattr(storage, "write_rows" if insertion == "class_balanced" else "write_rows_masked",
                            interrupted)
        with pytest.raises(KeyboardInterrupt):
            buf.add_data(torch.rand(8, D), torch.arange(8) % C, torch.randn(8, C), torch.randn(8, 4))
        monkeypatch.setattr(storage, "write_rows" if insertion == "class_balanced" else "write_rows_masked", real)
        assert_same(buf, before)


class _Interrupt(Exception):
    pass


def test_an_interrupted_end_of_experience_insertion_then_a_retry_leaves_no_duplicate(monkeypatch):
    """Ctrl-C while the second chunk of an experience is inserted, then the experience trained again (a
    user resuming by hand): the buffer holds each sample once, as after one clean insertion."""
    bm = blobs_benchmark(C, D, n_per_class=100, n_experiences=1)
    clean = BalancedReplayPlugin(mem_size=600, batch_size_mem=8, insertion="reservoir")
    naive(clean).train(bm.train_stream[0])
    plugin = BalancedReplayPlugin(mem_size=600, batch_size_mem=8, insertion="reservoir")
    strategy = naive(plugin)
    calls, real = [], BalancedBuffer.add_data

    def add_data(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)
    monkeypatch.setattr(BalancedBuffer, "add_data", add_data)
    with pytest.raises(KeyboardInterrupt):
        strategy.train(bm.train_stream[0])
    monkeypatch.setattr(BalancedBuffer, "add_data", real)
    assert len(plugin.buffer) == 0  # nothing of the interrupted experience stayed
    strategy.train(bm.train_stream[0])
    strategy.train(bm.train_stream[0])  # and a whole retry after a clean insertion adds nothing
    rows = plugin.buffer.examples[: len(plugin.buffer)]
    assert len(plugin.buffer) == 600 and torch.unique(rows, dim=0).shape[0] == 600
    assert plugin.buffer.num_seen == clean.buffer.num_seen == 600


def test_deferred_checks_drop_the_bad_rows_they_report():
    buf = filled(n=10, capacity=40)
    good_rows = buf.examples[:10].clone()
    x = torch.rand(4, D)
    buf.add_data(x, torch.tensor([1, 9, 2, 3]), torch.randn(4, C), torch.randn(4, 4), defer_checks=True)
    feats = torch.randn(3, 4)
    feats[1, 0] = float("nan")
    buf.add_data(torch.rand(3, D), torch.tensor([0, 1, 2]), torch.randn(3, C), feats, defer_checks=True)
    assert len(buf) == 17
    with pytest.raises(ValueError, match="outside the classifier's range"):
        buf.check_pending()
    assert len(buf) == 15  # the row labelled 9 (stored as 5 until the check) and the NaN row are gone
    assert torch.equal(buf.examples[:10], good_rows) and torch.isfinite(buf.stored_features).all()
    assert not bool((buf.examples[: len(buf)] == x[1]).all(1).any())
    buf.check_pending()  # reported once


# ------------------------------------------------------------------ checkpoints
def _sarl(width=16, mem_size=10):
    model = mlp(width)
    return SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), mem_size=mem_size,
                    batch_size_mem=2, evaluator=EvaluationPlugin(loggers=[]))


def test_a_checkpoint_that_does_not_fit_leaves_the_strategy_untouched(tmp_path):
    bm = blobs_benchmark(C, D, n_per_class=10, n_experiences=2)
    source = _sarl()
    source.train(bm.train_stream[0])
    save_checkpoint(tmp_path / "ckpt.pt", source)
    target = _sarl(width=12)  # a model the checkpoint does not fit
    target.train(bm.train_stream[1])
    before = snapshot(target.buffer)
    weights = {k: v.clone() for k, v in target.model.state_dict().items()}
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(tmp_path / "ckpt.pt", target)
    assert_same(target.buffer, before)  # the other run's samples were not loaded
    assert all(torch.equal(v, target.model.state_dict()[k]) for k, v in weights.items())


def test_a_corrupted_checkpoint_is_refused_by_name(tmp_path):
    bm = blobs_benchmark(C, D, n_per_class=10, n_experiences=1)
    strategy = _sarl()
    strategy.train(bm.train_stream[0])
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, strategy)
    data = bytearray(path.read_bytes())
    stored = strategy.buffer.examples[0].numpy().tobytes()
    at = bytes(data).find(stored)
    assert at > 0  # a stored example, in the file
    data[at: at + 4] = bytes(b ^ 0xFF for b in data[at: at + 4])
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"ckpt\.pt is corrupted"):
        load_checkpoint(path, _sarl())


def test_a_checkpoint_path_that_is_a_directory_is_refused_without_a_stray_file(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_checkpoint(tmp_path / "dir", _sarl())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"] and not any((tmp_path / "dir").iterdir())


def test_a_state_from_another_group_table_is_refused():
    saved = filled(grouping="fixed", class_to_group=torch.tensor([0, 0, 1, 1, 2, 2]))
    other = BalancedBuffer(40, seed=0, grouping="fixed", class_to_group=torch.tensor([0, 1, 1, 2, 2, 2]))
    with pytest.raises(ValueError, match="group_table"):
        other.load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match="min_group_classes"):
        BalancedBuffer(40, seed=0, min_group_classes=3).load_state_dict(filled().state_dict())


# ------------------------------------------------------------------ settings and inputs
@pytest.mark.parametrize("options, message", [
    (dict(uniform_mix=5.0), "uniform_mix must lie in"), (dict(uniform_mix=-1.0), "uniform_mix must lie in"),
    (dict(eps=float("nan")), "eps must be a finite number"), (dict(balance_weight=float("nan")), "balance_weight"),
    (dict(max_ratio=float("nan")), "max_ratio must be a finite number"), (dict(eps="0.1"), "eps must be a finite"),
    (dict(seed="abc"), "seed must be an integer"), (dict(target_ess=float("inf")), "target_ess"),
])
def test_every_setting_is_checked_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        BalancedBuffer(10, **options)


def test_arguments_a_ready_buffer_makes_meaningless_raise():
    with pytest.raises(ValueError, match=r"\['eps'\] would be ignored"):
        BalancedReplayPlugin(storage_policy=BalancedBuffer(500), eps=0.5)
    with pytest.raises(ValueError, match="mem_size=300 beside storage_policy"):
        BalancedReplayPlugin(300, storage_policy=BalancedBuffer(500))


def test_labels_are_never_truncated():
    buf = BalancedBuffer(10)
    with pytest.raises(ValueError, match="labels must hold integer labels"):
        buf.add_data(torch.rand(3, D), torch.tensor([0.9, 1.5, 2.99]), torch.randn(3, C), torch.randn(3, 4))
    with pytest.raises(ValueError, match="task_labels must hold integer labels"):
        buf.add_data(torch.rand(3, D), torch.tensor([0, 1, 2]), torch.randn(3, C), torch.randn(3, 4),
                     task_labels=torch.tensor([0.5, 0.5, 0.5]))
    assert len(buf) == 0


def test_an_empty_buffer_answers_its_questions():
    buf = BalancedBuffer(10)
    classes, groups = buf.class_groups()
    assert classes.numel() == groups.numel() == 0 and buf.current_mask().numel() == 0


def test_inputs_of_another_shape_get_a_clear_error():
    plugin = BalancedReplayPlugin(mem_size=20, batch_size_mem=4)
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, C))
    strategy = naive(plugin, model)
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    for side in (8, 12):
        y = torch.arange(C).repeat_interleave(4)
        ds = _make_taskaware_tensor_classification_dataset(torch.rand(len(y), 1, side, side), y)
        bm = nc_benchmark(ds, ds, n_experiences=1, task_labels=False, seed=0)
        if side == 8:
            strategy.train(bm.train_stream[0])
        else:
            with pytest.raises(ValueError, match=r"shape \(1, 12, 12\) per sample, the buffer stores \(1, 8, 8\)"):
                strategy.train(bm.train_stream[0])


def test_an_interrupted_forward_pass_leaves_no_hook_that_breaks_a_copy():
    bm = blobs_benchmark(C, D, n_per_class=10, n_experiences=2)
    plugin = BalancedReplayPlugin(mem_size=20, batch_size_mem=4)
    strategy = naive(plugin)
    strategy.train(bm.train_stream[0])
    hooks = lambda: len(strategy.model[2]._forward_hooks)  # noqa: E731
    real = strategy.model[0].forward
    strategy.model[0].forward = lambda x: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        strategy.train(bm.train_stream[1])
    strategy.model[0].forward = real
    assert hooks() == 1  # the hook of the interrupted pass
    copy.deepcopy(strategy.model)(torch.rand(2, D))  # an EMA or snapshot plugin's copy works
    strategy.train(bm.train_stream[1])
    assert hooks() == 0  # removed by the next pass, none added per interruption


def test_two_replay_plugins_on_one_strategy_are_refused_by_name():
    bm = blobs_benchmark(C, D, n_per_class=10, n_experiences=1)
    model = mlp()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
                     evaluator=EvaluationPlugin(loggers=[]), plugins=[BalancedReplayPlugin(20), BalancedReplayPlugin(20)])
    with pytest.raises(ValueError, match="2 BalancedReplayPlugin instances on one strategy"):
        strategy.train(bm.train_stream[0])
    sarl = _sarl()
    sarl.plugins.append(BalancedReplayPlugin(20))
    with pytest.raises(ValueError, match="SARLGelu brings its own"):
        sarl.train(bm.train_stream[0])


def test_storage_fields_are_read_only_on_the_buffer():
    buf = filled()
    for name in STORAGE + ("size", "num_seen", "eps", "prototypes"):
        with pytest.raises(AttributeError, match="belongs to its"):
            setattr(buf, name, None)
