"""Semantic metrics: do predictions and buffer groups respect the superclasses?

Pure tensor functions hold the maths; thin Avalanche ``PluginMetric`` classes
feed them from a strategy and emit Python floats, so that the
``EvaluationPlugin``'s loggers (TensorBoard included) record scalars.

Definitions (``f = fine_to_coarse``, a class -> superclass lookup table;
``p_i`` and ``y_i`` the predicted and true class of item ``i``):

* **semantic consistency**: ``mean_i [f(p_i) == f(y_i)]``, the share of
  predictions that land in the true class's superclass (correct predictions
  count);
* **superclass error share**: ``sum_i [p_i != y_i and f(p_i) == f(y_i)] /
  sum_i [p_i != y_i]``, the share of *wrong* predictions that stay inside the
  true superclass (0.0 when nothing is wrong);
* **group agreement**: the adjusted Rand index (torchmetrics'
  ``adjusted_rand_score``) between the buffer's class -> group assignment and
  the class -> superclass assignment, over the classes present in the buffer.

The metrics that read the replay buffer find it through the strategy they
are given (:func:`find_balanced_buffer`), so they can be built before the
strategy and need no reference to it.

Note ``consistency = accuracy + (1 - accuracy) * error_share``.

Metric names follow Avalanche's ``get_metric_name``; the stream-level ones
carry no task label (like Avalanche's ``MeanScores``), e.g.
``SemanticConsistency_Stream/eval_phase/test_stream``, while the
experience-level replay entropy does:
``ReplayGroupEntropy_Exp/train_phase/train_stream/Task000/Exp000``.
"""
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torchmetrics.functional.clustering import adjusted_rand_score
from avalanche.evaluation.metric_definitions import GenericPluginMetric, PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

from .buffer import BalancedBuffer
from .validation import as_labels, check_labels_in_range

__all__ = [
    "semantic_consistency",
    "superclass_error_share",
    "adjusted_rand_index",
    "group_agreement",
    "find_balanced_buffer",
    "find_replay_plugin",
    "SemanticConsistency",
    "SuperclassErrorShare",
    "SemanticConsistencyMetric",
    "SuperclassErrorShareMetric",
    "GroupAgreementMetric",
    "ReplayGroupEntropyMetric",
    "semantic_metrics",
]


# ---------------------------------------------------------------- validation
def _as_map(fine_to_coarse, device=None) -> Tensor:
    f2c = as_labels(fine_to_coarse, "fine_to_coarse", device).long()
    if f2c.numel() == 0:
        raise ValueError("fine_to_coarse must map at least one class")
    return f2c


def _pred_target(pred, target, fine_to_coarse) -> Tuple[Tensor, Tensor, Tensor]:
    pred = as_labels(pred, "pred").long()
    target = as_labels(target, "target", pred.device).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if pred.numel() == 0:
        raise ValueError("pred and target are empty; the metric is undefined on no items")
    f2c = _as_map(fine_to_coarse, pred.device)
    check_labels_in_range(torch.cat([pred, target]), f2c.numel(), "labels (pred and target)", "fine_to_coarse's range")
    return pred, target, f2c


# ------------------------------------------------------------ pure functions
def semantic_consistency(pred, target, fine_to_coarse) -> Tensor:
    """Share of predictions whose class lies in the true class's superclass.

    ``mean_i [fine_to_coarse[pred_i] == fine_to_coarse[target_i]]``; a correct
    prediction counts as consistent.

    Args:
        pred: predicted classes, 1-D integer tensor (N,), N > 0.
        target: true classes, same shape.
        fine_to_coarse: class -> superclass table, 1-D integer tensor (C,).

    Returns:
        0-d float64 tensor in [0, 1] on ``pred``'s device.

    Raises:
        ValueError: empty input, mismatched shapes, non-integer labels, or a
        label outside ``[0, C)``.
    """
    pred, target, f2c = _pred_target(pred, target, fine_to_coarse)
    return (f2c[pred] == f2c[target]).double().mean()


def superclass_error_share(pred, target, fine_to_coarse) -> Tensor:
    """Among wrong predictions, the share whose class lies in the true superclass.

    ``sum_i [p_i != y_i and f(p_i) == f(y_i)] / sum_i [p_i != y_i]`` with
    ``f = fine_to_coarse``. Defined as **0.0 when no prediction is wrong**
    (there is no error to attribute), so the value always lies in [0, 1].

    Args and errors as :func:`semantic_consistency`.

    Returns:
        0-d float64 tensor in [0, 1] on ``pred``'s device.
    """
    pred, target, f2c = _pred_target(pred, target, fine_to_coarse)
    wrong = pred != target
    near = (wrong & (f2c[pred] == f2c[target])).sum().double()
    num_wrong = wrong.sum().double()
    return torch.where(num_wrong > 0, near / num_wrong.clamp_min(1), torch.zeros_like(near))


def adjusted_rand_index(labels_a, labels_b) -> Tensor:
    """Adjusted Rand index (Hubert & Arabie, 1985) of two flat clusterings of the same items:
    torchmetrics' ``adjusted_rand_score`` with this library's input checks.

    1 means identical partitions (cluster ids are arbitrary), about 0 a
    chance-level match; it can be negative. Two identical trivial partitions
    (one cluster, all singletons, fewer than two items) score 1.0, as in
    scikit-learn.

    Args:
        labels_a, labels_b: 1-D integer tensors of cluster ids, same shape.

    Returns:
        0-d float tensor on ``labels_a``'s device.
    """
    a = as_labels(labels_a, "labels_a").long()
    b = as_labels(labels_b, "labels_b", a.device).long()
    if a.shape != b.shape:
        raise ValueError(f"labels_a and labels_b must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.numel() < 2:  # nothing to pair: the partitions cannot differ
        return torch.ones((), device=a.device)
    with warnings.catch_warnings():  # torchmetrics builds a sparse table and warns about its checks
        warnings.filterwarnings("ignore", message="Sparse invariant checks")
        return adjusted_rand_score(a, b)


def group_agreement(classes, groups, fine_to_coarse) -> Tensor:
    """ARI between a class -> group assignment and the true superclasses.

    ``adjusted_rand_index(groups, fine_to_coarse[classes])``: each class is one
    item (whatever its number of stored samples). Pass what
    :meth:`BalancedBuffer.class_groups` returns.

    Args:
        classes: 1-D integer tensor of distinct classes in ``[0, C)``.
        groups: their group ids, same shape.
        fine_to_coarse: class -> superclass table (C,).

    Returns:
        0-d float64 tensor (1.0 for fewer than two classes, see
        :func:`adjusted_rand_index`).
    """
    classes = as_labels(classes, "classes").long()
    groups = as_labels(groups, "groups", classes.device)
    if classes.shape != groups.shape:
        raise ValueError(f"classes and groups must have the same shape, got {tuple(classes.shape)} "
                         f"and {tuple(groups.shape)}")
    f2c = _as_map(fine_to_coarse, classes.device)
    if classes.numel():
        check_labels_in_range(classes, f2c.numel(), "classes", "fine_to_coarse's range")
        if torch.unique(classes).numel() != classes.numel():
            raise ValueError("classes must list each class once")
    return adjusted_rand_index(groups, f2c[classes])


def find_replay_plugin(strategy):
    """The strategy's plugin that replays from a :class:`BalancedBuffer` (a
    :class:`BalancedReplayPlugin`, or Avalanche's ``ReplayPlugin`` with one as its
    ``storage_policy``), or None."""
    for plugin in getattr(strategy, "plugins", ()):
        if isinstance(getattr(plugin, "storage_policy", None), BalancedBuffer):
            return plugin
    return None


def find_balanced_buffer(strategy) -> Optional[BalancedBuffer]:
    """The :class:`BalancedBuffer` a strategy replays from (see :func:`find_replay_plugin`), or None."""
    plugin = find_replay_plugin(strategy)
    return None if plugin is None else plugin.storage_policy


# ------------------------------------------------------ standalone metrics
class _SuperclassCounts:
    """Running ``numerator / denominator`` over minibatches (an Avalanche ``Metric``).

    Counts stay 0-d tensors on the data's device; :meth:`result` makes the
    single host transfer. Labels outside ``fine_to_coarse``'s range are
    counted (not indexed) during :meth:`update` and reported by
    :meth:`result` as ``ValueError``, so updating never syncs with the device.
    """

    def __init__(self, fine_to_coarse):
        self.fine_to_coarse = _as_map(fine_to_coarse)
        self._counts: Optional[Tensor] = None  # [numerator, denominator, out of range]

    def _masks(self, wrong: Tensor, same_super: Tensor) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def update(self, predicted_y, true_y) -> None:
        """Add a minibatch: ``predicted_y`` labels (N,) or logits (N, C); ``true_y`` labels (N,)."""
        pred = torch.as_tensor(predicted_y)
        if pred.dim() > 1:
            pred = pred.argmax(1)
        pred = as_labels(pred, "predicted_y").long()
        target = as_labels(true_y, "true_y", pred.device).long()
        if pred.shape != target.shape:
            raise ValueError(f"predictions and targets must have the same shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        if self.fine_to_coarse.device != pred.device:
            self.fine_to_coarse = self.fine_to_coarse.to(pred.device)
        f2c, c = self.fine_to_coarse, self.fine_to_coarse.numel()
        valid = (pred >= 0) & (pred < c) & (target >= 0) & (target < c)
        same_super = f2c[pred.clamp(0, c - 1)] == f2c[target.clamp(0, c - 1)]
        num, den = self._masks(pred != target, same_super)
        counts = torch.stack([(num & valid).sum(), (den & valid).sum(), (~valid).sum()])
        self._counts = counts if self._counts is None else self._counts + counts.to(self._counts.device)

    def result(self) -> float:
        """``numerator / denominator`` as a float; 0.0 before any update or when the denominator is 0."""
        if self._counts is None:
            return 0.0
        num, den, bad = self._counts.tolist()
        if bad:
            raise ValueError(f"{bad} predicted or true labels lie outside [0, "
                             f"{self.fine_to_coarse.numel()}) (fine_to_coarse's range)")
        return num / den if den else 0.0

    def reset(self) -> None:
        self._counts = None


class SemanticConsistency(_SuperclassCounts):
    """Running :func:`semantic_consistency` over all items passed to :meth:`update`."""

    def _masks(self, wrong, same_super):
        return same_super, torch.ones_like(same_super)


class SuperclassErrorShare(_SuperclassCounts):
    """Running :func:`superclass_error_share` over all items passed to :meth:`update`
    (0.0 while no prediction is wrong)."""

    def _masks(self, wrong, same_super):
        return wrong & same_super, wrong


# ---------------------------------------------------------- plugin metrics
def _value(metric, strategy, value: float, add_experience: bool, add_task: bool) -> List[MetricValue]:
    name = get_metric_name(metric, strategy, add_experience=add_experience, add_task=add_task)
    return [MetricValue(metric, name, float(value), strategy.clock.train_iterations)]


class _EvalStreamMetric(GenericPluginMetric[float, _SuperclassCounts]):
    """Reset at ``before_eval``, updated after every eval iteration from
    ``strategy.mb_output`` (argmax) and ``strategy.mb_y``, emitted at ``after_eval``."""

    def __init__(self, metric: _SuperclassCounts):
        super().__init__(metric, reset_at="stream", emit_at="stream", mode="eval")

    def update(self, strategy) -> None:
        self._metric.update(strategy.mb_output, strategy.mb_y)

    def _package_result(self, strategy) -> MetricResult:
        # Stream level over possibly many tasks: no task label in the name.
        return _value(self, strategy, self.result(), add_experience=False, add_task=False)


class SemanticConsistencyMetric(_EvalStreamMetric):
    """Semantic consistency of the predictions over a whole evaluation stream.

    Emits ``SemanticConsistency_Stream/eval_phase/<stream>_stream`` at the end
    of each ``strategy.eval`` call (see :func:`semantic_consistency`; 0.0 for
    an empty stream).
    """

    def __init__(self, fine_to_coarse):
        super().__init__(SemanticConsistency(fine_to_coarse))

    def __str__(self):
        return "SemanticConsistency_Stream"


class SuperclassErrorShareMetric(_EvalStreamMetric):
    """Share of the wrong predictions that stay in the true superclass, over a
    whole evaluation stream (see :func:`superclass_error_share`).

    Emits ``SuperclassErrorShare_Stream/eval_phase/<stream>_stream``.
    """

    def __init__(self, fine_to_coarse):
        super().__init__(SuperclassErrorShare(fine_to_coarse))

    def __str__(self):
        return "SuperclassErrorShare_Stream"


class GroupAgreementMetric(PluginMetric[Optional[float]]):
    """Agreement (ARI) of the buffer's class groups with the superclasses.

    At the end of each ``strategy.eval`` call, emits
    ``GroupAgreement_Stream/eval_phase/<stream>_stream``:
    :func:`group_agreement` of ``buffer.class_groups()``, the buffer being the
    one the strategy replays from (:func:`find_balanced_buffer`). Nothing is
    emitted while that buffer is empty, or for a strategy without one.
    """

    def __init__(self, fine_to_coarse):
        super().__init__()
        self.fine_to_coarse = _as_map(fine_to_coarse)
        self._value: Optional[float] = None

    def result(self) -> Optional[float]:
        """The ARI at the latest evaluation, or None."""
        return self._value

    def reset(self) -> None:
        self._value = None

    def after_eval(self, strategy) -> MetricResult:
        super().after_eval(strategy)
        buffer = find_balanced_buffer(strategy)
        if buffer is None or len(buffer) == 0:
            self._value = None
            return None
        plugin = find_replay_plugin(strategy)
        if callable(getattr(plugin, "fresh_groups", None)):
            plugin.fresh_groups(strategy.model)  # a reader of the groups: brought up to date now, lazily
        classes, groups = buffer.class_groups()
        self._value = float(group_agreement(classes, groups, self.fine_to_coarse.to(classes.device)))
        return _value(self, strategy, self._value, add_experience=False, add_task=False)

    def __str__(self):
        return "GroupAgreement_Stream"


class ReplayGroupEntropyMetric(PluginMetric[Optional[float]]):
    """Balance of the groups replayed during each training experience.

    At ``after_training_exp`` emits the strategy's replay plugin's
    ``diagnostics.replay_group_entropy`` (:meth:`ReplayDiagnostics.replay_group_entropy`: the
    normalised entropy, see
    :func:`~avalanche_balanced.importance.normalized_entropy`, of the groups of
    the samples replayed during the experience; 1 = balanced) as
    ``ReplayGroupEntropy_Exp/train_phase/train_stream/Task000/Exp000``; nothing
    for a strategy without such a plugin.

    Each replayed sample counts in the group it had when it was drawn. Semantic
    draws regroup every ``regroup_every`` iterations, so theirs are current;
    uniform draws skip those regroupings (nothing reads the groups), so theirs
    are the groups of the last end-of-experience regrouping, or, for samples
    inserted during the experience, the groups the rule gave them on insertion.
    Compare the two modes with that in mind.
    """

    def __init__(self):
        super().__init__()
        self._value: Optional[float] = None

    def result(self) -> Optional[float]:
        return self._value

    def reset(self) -> None:
        self._value = None

    def after_training_exp(self, strategy) -> MetricResult:
        super().after_training_exp(strategy)
        plugin = find_replay_plugin(strategy)
        diagnostics = getattr(plugin, "diagnostics", None)
        if diagnostics is None:
            return None
        self._value = float(diagnostics.replay_group_entropy(plugin.buffer))
        return _value(self, strategy, self._value, add_experience=True, add_task=True)

    def __str__(self):
        return "ReplayGroupEntropy_Exp"


def semantic_metrics(fine_to_coarse, replay: bool = True) -> List[PluginMetric]:
    """The semantic metrics, for ``EvaluationPlugin(*semantic_metrics(...), loggers=...)``.

    Semantic consistency and superclass error share; with ``replay`` also group
    agreement and replay group entropy, which read the strategy's balanced
    buffer and emit nothing for a strategy without one.
    """
    metrics: List[PluginMetric] = [SemanticConsistencyMetric(fine_to_coarse),
                                   SuperclassErrorShareMetric(fine_to_coarse)]
    if replay:
        metrics += [GroupAgreementMetric(fine_to_coarse), ReplayGroupEntropyMetric()]
    return metrics
