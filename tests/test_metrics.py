"""Semantic metrics: pure functions, Avalanche PluginMetrics in a real run, figures."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.supervised import Naive

from avalanche_balanced import BalancedBuffer, BalancedReplayPlugin
from avalanche_balanced.experiment import accuracy_matrix
from avalanche_balanced.figures import FigureLoggerPlugin, accuracy_matrix_figure, group_sizes_figure
from avalanche_balanced.metrics import (
    GroupAgreementMetric, ReplayGroupEntropyMetric, SemanticConsistency, SemanticConsistencyMetric,
    SuperclassErrorShare, SuperclassErrorShareMetric, adjusted_rand_index, group_agreement,
    find_balanced_buffer, find_replay_plugin, semantic_consistency, semantic_metrics, superclass_error_share,
)
from synthetic import SEMANTIC

F2C = torch.tensor([0, 0, 1, 1, 2, 2])  # 6 classes, 3 superclasses of 2
C, D = 6, 8

# pred vs target: 0/0 correct, 1/0 same super, 2/3 same super, 4/0 other super,
# 5/5 correct, 3/1 other super, 1/1 correct, 5/4 same super
PRED = torch.tensor([0, 1, 2, 4, 5, 3, 1, 5])
TARGET = torch.tensor([0, 0, 3, 0, 5, 1, 1, 4])
# consistent: 0,1,2,4,6,7 -> 6/8; wrong: 1,2,3,5,7 -> 5, of which same super: 1,2,7 -> 3/5


# ------------------------------------------------------------ pure functions

def test_semantic_consistency_hand_made():
    assert semantic_consistency(PRED, TARGET, F2C).item() == pytest.approx(0.75)
    assert semantic_consistency(TARGET, TARGET, F2C).item() == 1.0
    assert semantic_consistency(torch.tensor([2, 4]), torch.tensor([0, 0]), F2C).item() == 0.0
    out = semantic_consistency([0, 1], [1, 0], [0, 0])  # lists accepted
    assert out.dim() == 0 and out.dtype == torch.float64 and out.item() == 1.0


def test_superclass_error_share_hand_made():
    assert superclass_error_share(PRED, TARGET, F2C).item() == pytest.approx(3 / 5)
    # no wrong prediction: defined as 0.0
    assert superclass_error_share(TARGET, TARGET, F2C).item() == 0.0
    # all wrong, all in the other superclass
    assert superclass_error_share(torch.tensor([2, 4]), torch.tensor([0, 0]), F2C).item() == 0.0
    # consistency = accuracy + (1 - accuracy) * error share
    acc = (PRED == TARGET).double().mean()
    share = superclass_error_share(PRED, TARGET, F2C)
    assert semantic_consistency(PRED, TARGET, F2C).item() == pytest.approx((acc + (1 - acc) * share).item())


@pytest.mark.parametrize("fn", [semantic_consistency, superclass_error_share])
def test_semantic_functions_reject_bad_input(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), F2C)
    with pytest.raises(ValueError, match="empty"):
        fn(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), F2C)
    with pytest.raises(ValueError, match="range"):
        fn(torch.tensor([0, 6]), torch.tensor([0, 1]), F2C)
    with pytest.raises(ValueError, match="range"):
        fn(torch.tensor([0, 1]), torch.tensor([-1, 1]), F2C)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), F2C)
    with pytest.raises(ValueError, match="integer"):
        fn(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), F2C)


def test_ari_identical_and_relabelled_partitions():
    a = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert adjusted_rand_index(a, a).item() == 1.0
    perm = torch.tensor([7, -3, 4])  # arbitrary (even negative) cluster names
    assert adjusted_rand_index(a, perm[a]).item() == pytest.approx(1.0, abs=1e-6)
    assert adjusted_rand_index(perm[a], a).item() == pytest.approx(1.0, abs=1e-6)


def test_ari_hand_computed():
    a = torch.tensor([0, 0, 0, 1, 1, 1])
    b = torch.tensor([0, 0, 1, 1, 2, 2])
    # n_ij = [[2, 1, 0], [0, 1, 2]]: index = 1 + 1 = 2; rows: 3 + 3 = 6; cols: 1 + 1 + 1 = 3;
    # C(6) = 15; expected = 6 * 3 / 15 = 1.2; max = 4.5 -> (2 - 1.2) / (4.5 - 1.2) = 8/33
    assert adjusted_rand_index(a, b).item() == pytest.approx(8 / 33, abs=1e-6)
    assert adjusted_rand_index(b, a).item() == pytest.approx(8 / 33, abs=1e-6)
    # all singletons vs pairs: index 0, expected 0, max 1.5 -> 0
    assert adjusted_rand_index(torch.arange(6), F2C).item() == 0.0
    # worse than chance is negative: [0,0,1,1] vs [0,1,0,1] -> (0 - 1/3) / (1 - 1/3)
    assert adjusted_rand_index(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])).item() == \
        pytest.approx(-0.5, abs=1e-6)


@pytest.mark.parametrize("a, b", [
    ([], []),
    ([3], [5]),
    ([0, 0, 0, 0], [1, 1, 1, 1]),  # both one cluster
    ([0, 1, 2, 3], [3, 1, 2, 0]),  # both all singletons
])
def test_ari_degenerate_cases_are_one(a, b):
    out = adjusted_rand_index(torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long))
    assert out.item() == 1.0


def test_ari_one_cluster_vs_split_is_zero():
    # one side a single cluster, other side not: expected == index -> 0 (not degenerate)
    assert adjusted_rand_index(torch.zeros(4, dtype=torch.long), torch.tensor([0, 0, 1, 1])).item() == 0.0


def test_ari_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        adjusted_rand_index(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        adjusted_rand_index(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))


@pytest.mark.parametrize("seed", range(6))
def test_ari_matches_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 300, (1,), generator=g))
    a = torch.randint(int(torch.randint(1, 12, (1,), generator=g)), (n,), generator=g)
    b = torch.randint(int(torch.randint(1, 12, (1,), generator=g)), (n,), generator=g)
    # mix in a correlated partition so values are not all near 0
    b_corr = torch.where(torch.rand(n, generator=g) < 0.7, a // 2, b)
    for x, y in ((a, b), (a, b_corr), (a, a // 3)):
        expected = metrics.adjusted_rand_score(x.numpy(), y.numpy())
        assert adjusted_rand_index(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_group_agreement_function():
    classes = torch.tensor([0, 1, 2, 3])
    assert group_agreement(classes, torch.tensor([9, 9, 4, 4]), F2C).item() == 1.0
    assert group_agreement(classes, classes, F2C).item() == 0.0
    with pytest.raises(ValueError, match="once"):
        group_agreement(torch.tensor([0, 0]), torch.tensor([1, 1]), F2C)
    with pytest.raises(ValueError, match="range"):
        group_agreement(torch.tensor([0, 6]), torch.tensor([1, 1]), F2C)
    with pytest.raises(ValueError, match="same shape"):
        group_agreement(torch.tensor([0, 1]), torch.tensor([1]), F2C)


# ---------------------------------------------------- standalone metrics
def test_standalone_metrics_accumulate_and_reset():
    cons, share = SemanticConsistency(F2C), SuperclassErrorShare(F2C)
    assert cons.result() == 0.0 and share.result() == 0.0  # nothing seen yet
    logits = nn.functional.one_hot(PRED, C).float()  # logits are argmax-ed
    for m in (cons, share):
        m.update(logits[:3], TARGET[:3])
        m.update(PRED[3:], TARGET[3:])
    assert cons.result() == pytest.approx(0.75) and isinstance(cons.result(), float)
    assert share.result() == pytest.approx(3 / 5)
    cons.reset()
    assert cons.result() == 0.0


def test_standalone_metric_reports_out_of_range_labels_at_result():
    m = SemanticConsistency(F2C)
    m.update(torch.tensor([0, 7]), torch.tensor([0, 1]))  # no device sync in update
    with pytest.raises(ValueError, match="outside"):
        m.result()


# ------------------------------------------------------------ buffers
def filled_buffer(grouping, class_to_group=None, classes=range(C), n=60):
    buf = BalancedBuffer(100, grouping=grouping, class_to_group=class_to_group)
    g = torch.Generator().manual_seed(0)
    y = torch.as_tensor(list(classes)).repeat(n // len(classes))
    buf.add_data(torch.rand(len(y), 3, generator=g), y, torch.randn(len(y), C, generator=g),
                 torch.randn(len(y), 4, generator=g))
    return buf


def test_group_agreement_on_buffer_with_superclass_groups_is_one():
    buf = filled_buffer("fixed", class_to_group=F2C)
    assert group_agreement(*buf.class_groups(), F2C).item() == 1.0
    relabelled = filled_buffer("fixed", class_to_group=torch.tensor([4, 4, 0, 0, 7, 7]))
    assert group_agreement(*relabelled.class_groups(), F2C).item() == 1.0


def test_group_agreement_on_buffer_with_class_groups():
    # every class its own group vs superclasses of 2: ARI 0 (hand-computed above)
    buf = filled_buffer("class")
    assert group_agreement(*buf.class_groups(), F2C).item() == 0.0
    sk = pytest.importorskip("sklearn.metrics")
    classes, groups = filled_buffer("class", classes=[0, 1, 2, 4]).class_groups()
    assert group_agreement(classes, groups, F2C).item() == pytest.approx(
        sk.adjusted_rand_score(groups.numpy(), F2C[classes].numpy()), abs=1e-6)


def test_metrics_find_the_buffer_through_the_strategy():
    buf = BalancedBuffer(10)
    plugin = BalancedReplayPlugin(mem_size=10, batch_size_mem=2, storage_policy=buf)
    avalanche_replay = ReplayPlugin(mem_size=10, storage_policy=buf)
    assert find_balanced_buffer(SimpleNamespace(plugins=[object(), plugin])) is buf
    assert find_replay_plugin(SimpleNamespace(plugins=[avalanche_replay])) is avalanche_replay
    uniform_er = SimpleNamespace(plugins=[ReplayPlugin(mem_size=10)])  # Avalanche's own buffer: not ours
    assert find_balanced_buffer(uniform_er) is None and find_replay_plugin(uniform_er) is None
    # no buffer, or an empty one: nothing emitted
    assert GroupAgreementMetric(F2C).after_eval(uniform_er) is None
    assert GroupAgreementMetric(F2C).after_eval(SimpleNamespace(plugins=[plugin])) is None
    assert ReplayGroupEntropyMetric().after_training_exp(uniform_er) is None


def test_semantic_metrics_helper():
    assert [type(m) for m in semantic_metrics(F2C, replay=False)] == [SemanticConsistencyMetric,
                                                                     SuperclassErrorShareMetric]
    assert [str(m) for m in semantic_metrics(F2C)] == ["SemanticConsistency_Stream", "SuperclassErrorShare_Stream",
                                                       "GroupAgreement_Stream", "ReplayGroupEntropy_Exp"]


# --------------------------------------------------- inside a real Avalanche run
def tiny_benchmark():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(C).repeat_interleave(30)
    x = torch.randn(len(y), D, generator=g) + 2.0 * torch.eye(C, D)[y]
    ds = _make_taskaware_tensor_classification_dataset(x, y)
    return nc_benchmark(ds, ds, n_experiences=3, task_labels=False, seed=0)


STREAM = "/eval_phase/test_stream"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three experiences of Naive + BalancedReplayPlugin, evaluated on the test stream after each."""
    log_dir = tmp_path_factory.mktemp("run")
    bm = tiny_benchmark()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, C))
    plugin = BalancedReplayPlugin(**SEMANTIC, mem_size=20, batch_size_mem=8)
    figures = FigureLoggerPlugin(log_dir, fine_to_coarse=F2C)
    evaluator = EvaluationPlugin(*semantic_metrics(F2C), accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=16,
                     train_epochs=1, eval_mb_size=64, plugins=[plugin, figures], evaluator=evaluator)
    records = []
    for exp in bm.train_stream:
        strategy.train(exp)
        strategy.eval(bm.test_stream)
        # independent recomputation from the model's predictions on the test set
        batches = [next(iter(torch.utils.data.DataLoader(e.dataset.eval(), batch_size=len(e.dataset))))
                   for e in bm.test_stream]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        with torch.no_grad():
            pred = model(x).argmax(1)
        records.append(dict(
            metrics=evaluator.get_last_metrics(), pred=pred, y=y,
            ari=float(group_agreement(*plugin.buffer.class_groups(), F2C)),
            entropy=plugin.diagnostics.replay_group_entropy(plugin.buffer),
        ))
    return dict(records=records, log_dir=log_dir, figures=figures, evaluator=evaluator)


def test_metric_names_and_values_in_run(run):
    for k, rec in enumerate(run["records"]):
        m = rec["metrics"]
        for name in ("SemanticConsistency_Stream", "SuperclassErrorShare_Stream", "GroupAgreement_Stream"):
            assert type(m[name + STREAM]) is float  # Python floats -> TensorBoard scalars
        cons, share = m["SemanticConsistency_Stream" + STREAM], m["SuperclassErrorShare_Stream" + STREAM]
        assert 0.0 <= cons <= 1.0 and 0.0 <= share <= 1.0
        assert -1.0 <= m["GroupAgreement_Stream" + STREAM] <= 1.0
        entropy = m[f"ReplayGroupEntropy_Exp/train_phase/train_stream/Task000/Exp{k:03}"]
        assert type(entropy) is float and 0.0 <= entropy <= 1.0
        # consistency = accuracy + (1 - accuracy) * error share, with Avalanche's own accuracy
        acc = m["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
        assert cons == pytest.approx(acc + (1 - acc) * share, abs=1e-9)


def test_metric_values_match_independent_computation(run):
    for rec in run["records"]:
        m = rec["metrics"]
        assert m["SemanticConsistency_Stream" + STREAM] == pytest.approx(
            semantic_consistency(rec["pred"], rec["y"], F2C).item(), abs=1e-12)
        assert m["SuperclassErrorShare_Stream" + STREAM] == pytest.approx(
            superclass_error_share(rec["pred"], rec["y"], F2C).item(), abs=1e-12)
        assert m["GroupAgreement_Stream" + STREAM] == pytest.approx(rec["ari"], abs=1e-12)
    # the entropy of the last experience is still the plugin's current value
    last = run["records"][-1]
    assert last["metrics"]["ReplayGroupEntropy_Exp/train_phase/train_stream/Task000/Exp002"] == last["entropy"]


def test_figure_plugin_in_run(run):
    log_dir = run["log_dir"]
    for k in range(3):
        assert (log_dir / f"group_sizes_exp{k}.png").stat().st_size > 0
        assert (log_dir / f"accuracy_matrix_exp{k}.png").stat().st_size > 0
    matrix = accuracy_matrix(run["evaluator"])  # what the figures show
    assert matrix.shape == (3, 3) and not torch.isnan(matrix).any()  # whole test stream evaluated each time
    assert ((matrix >= 0) & (matrix <= 1)).all()
    # experiences have equal sizes, so each row's mean is Avalanche's stream accuracy at that point
    for k, rec in enumerate(run["records"]):
        assert matrix[k].mean().item() == pytest.approx(rec["metrics"]["Top1_Acc_Stream" + STREAM + "/Task000"])
    assert isinstance(run["evaluator"].get_last_metrics()["Figures/accuracy_matrix"], Figure)
    xs, figs = run["evaluator"].get_all_metrics()["Figures/group_sizes"]
    assert xs == [0, 1, 2] and all(isinstance(f, Figure) for f in figs)


# ------------------------------------------------------------------ figures
def test_figure_functions():
    fig = group_sizes_figure(torch.tensor([3, 0, 5, 1]))
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].patches) == 3  # empty group 1 not drawn
    assert fig.axes[0].get_title() == "3 groups, 9 samples"
    assert isinstance(group_sizes_figure(torch.zeros(0, dtype=torch.long)), Figure)
    matrix = torch.tensor([[0.9, math.nan], [0.4, 0.8]])
    fig = accuracy_matrix_figure(matrix)
    assert isinstance(fig, Figure) and len(fig.axes[0].texts) == 3  # NaN cell left blank
    with pytest.raises(ValueError, match="2-D"):
        accuracy_matrix_figure(torch.zeros(3))


class RecordingLogger:
    def __init__(self):
        self.values = []

    def log_metrics(self, values):
        self.values.extend(values)


def test_figure_logger_log_writes_png_and_publishes(tmp_path):
    plugin = FigureLoggerPlugin(tmp_path / "figs")
    paths = plugin.log(None, 2, group_counts=torch.tensor([4, 2]), acc_matrix=np.eye(2))
    assert sorted(p.name for p in paths) == ["accuracy_matrix_exp2.png", "group_sizes_exp2.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)

    logger = RecordingLogger()
    evaluator = EvaluationPlugin(loggers=[logger])
    plugin.log(evaluator, 3, acc_matrix=np.eye(3))  # queued until the evaluator's next callback
    assert logger.values == [] and isinstance(evaluator.get_last_metrics()["Figures/accuracy_matrix"], Figure)
    plugin.log(evaluator, 4, group_counts=torch.tensor([1]), flush=True)  # handed over now
    assert [(v.name, v.x_plot) for v in logger.values] == [("Figures/group_sizes", 4)]
    assert isinstance(logger.values[0].value, Figure)
    assert (tmp_path / "figs" / "group_sizes_exp4.png").is_file()
