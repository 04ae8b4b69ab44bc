"""Long-tailed class frequencies and accuracy by frequency bucket.

The CIFAR-100-LT profile (Cao et al., *LDAM*, NeurIPS 2019; used by Liu et al.,
*Long-Tailed Class Incremental Learning*, ECCV 2022): the class of frequency
rank ``r`` (0 = most frequent) keeps ``n_max * ratio ** (r / (C - 1))`` training
images. Liu et al. order the ranks two ways: ``"ordered"``, head classes in the
first experiences and tail classes last, and ``"shuffled"``, frequencies
assigned to classes at random. Accuracy is then reported per frequency bucket,
the usual many / medium / few-shot split (more than 100, 20 to 100, fewer than
20 images per class at ``n_max = 500``), with the thresholds scaled to the cap
in use: many ``> n_max / 5``, few ``< n_max / 25``.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor
from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.evaluation.metric_results import MetricResult, MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

__all__ = [
    "IMBALANCE_ORDERS",
    "BUCKETS",
    "long_tail_counts",
    "frequency_buckets",
    "bucket_thresholds",
    "BucketAccuracy",
    "FrequencyBucketAccuracy",
]

IMBALANCE_ORDERS = ("shuffled", "ordered")
BUCKETS = ("head", "medium", "tail")


def long_tail_counts(class_order: Sequence[int], n_max: int, imbalance_ratio: float,
                     imbalance_order: str = "shuffled", generator: Optional[torch.Generator] = None) -> Tensor:
    """Training images per class (index = class id) for a long-tailed stream.

    ``class_order`` is the order in which classes arrive; with ``"ordered"`` the
    first class to arrive is the most frequent, with ``"shuffled"`` ranks are a
    random permutation drawn from ``generator``. Every class keeps at least one
    image.
    """
    if isinstance(imbalance_ratio, bool) or not isinstance(imbalance_ratio, (int, float)) \
            or not 0 < imbalance_ratio <= 1:
        raise ValueError(f"imbalance_ratio must lie in (0, 1], got {imbalance_ratio!r}")
    if imbalance_order not in IMBALANCE_ORDERS:
        raise ValueError(f"imbalance_order must be one of {IMBALANCE_ORDERS}, got {imbalance_order!r}")
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ValueError(f"n_max must be a positive int, got {n_max!r}")
    order = torch.as_tensor(list(class_order), dtype=torch.long)
    c = order.numel()
    ranks = torch.arange(c) if imbalance_order == "ordered" else torch.randperm(c, generator=generator)
    per_rank = (n_max * imbalance_ratio ** (torch.arange(c, dtype=torch.float64) / max(c - 1, 1))).floor()
    counts = torch.zeros(int(order.max()) + 1, dtype=torch.long)
    counts[order] = per_rank[ranks].long().clamp_min(1)
    return counts


def bucket_thresholds(n_max: int) -> Dict[str, float]:
    """``{"many": n_max / 5, "few": n_max / 25}``: head classes have more than ``many`` images,
    tail classes fewer than ``few`` (100 and 20 at the standard cap of 500)."""
    return {"many": n_max / 5, "few": n_max / 25}


def frequency_buckets(class_counts: Tensor, n_max: int) -> Tensor:
    """Bucket of every class: 0 head, 1 medium, 2 tail (see :func:`bucket_thresholds`)."""
    t = bucket_thresholds(n_max)
    counts = torch.as_tensor(class_counts)
    return torch.where(counts > t["many"], 0, torch.where(counts < t["few"], 2, 1)).long()


class BucketAccuracy(PluginMetric[Dict[str, float]]):
    """Accuracy on the test samples of each bucket of classes, over an evaluation stream.

    Emits ``<Name>Accuracy_Stream/eval_phase/<stream>_stream`` for every bucket name
    at the end of every ``strategy.eval`` call, computed from ``strategy.mb_output``
    (argmax) and ``strategy.mb_y``. A bucket without test samples in the stream is not
    emitted; a target outside ``bucket_of_class`` raises ``ValueError``.

    Args:
        bucket_of_class: bucket index of every class id (LongTensor[C]), ``-1`` for a class
            in no bucket (its samples are not counted).
        names: the buckets' names, by index.
    """

    def __init__(self, bucket_of_class: Tensor, names: Sequence[str]):
        super().__init__()
        self.buckets, self.names = torch.as_tensor(bucket_of_class).long(), tuple(names)
        self._correct = torch.zeros(len(self.names), dtype=torch.long)
        self._total = torch.zeros(len(self.names), dtype=torch.long)

    def reset(self) -> None:
        self._correct.zero_()
        self._total.zero_()

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        """Count one batch: ``predictions`` as class ids or logits (argmax over the last dim)."""
        if predictions.dim() > 1:
            predictions = predictions.argmax(-1)
        targets = targets.detach().cpu().long()
        if bool((targets >= self.buckets.numel()).any()) or bool((targets < 0).any()):
            raise ValueError(f"targets must lie in [0, {self.buckets.numel()}), the classes with a bucket")
        bucket = self.buckets[targets]
        counted = bucket >= 0
        hit = (predictions.detach().cpu() == targets).long()[counted]
        self._correct += torch.bincount(bucket[counted], weights=hit, minlength=len(self.names)).long()
        self._total += torch.bincount(bucket[counted], minlength=len(self.names))

    def result(self) -> Dict[str, float]:
        """``{bucket: accuracy}`` for the buckets with at least one sample."""
        return {name: float(self._correct[i]) / float(self._total[i])
                for i, name in enumerate(self.names) if int(self._total[i]) > 0}

    def before_eval(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        self.update(strategy.mb_output, strategy.mb_y)

    def after_eval(self, strategy) -> MetricResult:
        values: List[MetricValue] = []
        for name, value in self.result().items():
            self._name = f"{name.capitalize()}Accuracy_Stream"
            metric_name = get_metric_name(self, strategy, add_experience=False, add_task=False)
            values.append(MetricValue(self, metric_name, value, strategy.clock.train_iterations))
        return values

    def __str__(self):
        return getattr(self, "_name", f"{self.names[0].capitalize()}Accuracy_Stream")


class FrequencyBucketAccuracy(BucketAccuracy):
    """Accuracy on the test samples of head, medium and tail classes (``HeadAccuracy_Stream``,
    ``MediumAccuracy_Stream``, ``TailAccuracy_Stream``); see :class:`BucketAccuracy`.

    Args:
        class_counts: training images per class (e.g. ``benchmark.class_counts``).
        n_max: the per-class cap the counts were derived from (sets the thresholds).
    """

    def __init__(self, class_counts: Tensor, n_max: int):
        super().__init__(frequency_buckets(class_counts, n_max), BUCKETS)
