"""Long-tailed Split CIFAR-100: the frequency profile, both orders, and accuracy by bucket."""
import math

import pytest
import torch

from avalanche_balanced.long_tail import (
    FrequencyBucketAccuracy, bucket_thresholds, frequency_buckets, long_tail_counts,
)


def test_profile_follows_the_formula_in_both_orders():
    order = torch.randperm(100, generator=torch.Generator().manual_seed(3)).tolist()
    ordered = long_tail_counts(order, 500, 0.01, "ordered")
    expected = [math.floor(500 * 0.01 ** (r / 99)) for r in range(100)]
    assert ordered[order].tolist() == expected  # the first class to arrive is the most frequent
    assert ordered.max() == 500 and ordered.min() == 5
    assert 10_500 < int(ordered.sum()) < 11_000  # the CIFAR-100-LT size at ratio 0.01
    shuffled = long_tail_counts(order, 500, 0.01, "shuffled", torch.Generator().manual_seed(0))
    assert sorted(shuffled.tolist(), reverse=True) == expected  # same counts, other classes
    assert shuffled[order].tolist() != expected
    again = long_tail_counts(order, 500, 0.01, "shuffled", torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, again)  # the seed decides
    assert long_tail_counts(order, 100, 1.0, "ordered").unique().tolist() == [100]  # ratio 1: balanced


@pytest.mark.parametrize("kwargs, match", [
    (dict(imbalance_ratio=0.0), "imbalance_ratio"), (dict(imbalance_ratio=1.5), "imbalance_ratio"),
    (dict(imbalance_order="sorted"), "imbalance_order"), (dict(n_max=0), "n_max"),
])
def test_bad_values_name_the_argument(kwargs, match):
    args = {**dict(n_max=500, imbalance_ratio=0.01, imbalance_order="shuffled"), **kwargs}
    with pytest.raises(ValueError, match=match):
        long_tail_counts(range(10), args["n_max"], args["imbalance_ratio"], args["imbalance_order"])


def test_buckets_scale_with_the_cap():
    assert bucket_thresholds(500) == {"many": 100, "few": 20}
    counts = torch.tensor([500, 101, 100, 20, 19, 5])
    assert frequency_buckets(counts, 500).tolist() == [0, 0, 1, 1, 2, 2]
    assert frequency_buckets(torch.tensor([100, 21, 20, 4, 3]), 100).tolist() == [0, 0, 1, 1, 2]


def test_bucket_accuracy_counts_each_bucket():
    metric = FrequencyBucketAccuracy(torch.tensor([500, 50, 5, 5]), n_max=500)  # head, medium, tail, tail
    targets = torch.tensor([0, 0, 1, 2, 3, 3])
    preds = torch.tensor([0, 1, 1, 0, 3, 3])
    metric.update(torch.nn.functional.one_hot(preds, 4).float(), targets)  # logits: argmax
    assert metric.result() == {"head": 0.5, "medium": 1.0, "tail": 2 / 3}
    metric.reset()
    metric.update(torch.tensor([1]), torch.tensor([1]))
    assert metric.result() == {"medium": 1.0}  # buckets without samples are left out
    with pytest.raises(ValueError, match="targets"):
        metric.update(torch.tensor([0]), torch.tensor([7]))


def test_superclass_skew_accuracy_splits_crowded_and_lone_classes():
    from avalanche_balanced.superclass_skew import SuperclassSkewAccuracy
    crowded = torch.tensor([True, True, False, False, False])
    metric = SuperclassSkewAccuracy(crowded, kept=torch.tensor([0, 1, 2, 3]))  # class 4: not in the stream
    metric.update(torch.tensor([0, 2, 2, 0]), torch.tensor([0, 1, 2, 3]))
    assert metric.result() == {"crowded": 0.5, "lone": 0.5}
    metric.update(torch.tensor([3]), torch.tensor([3]))
    assert metric.result() == {"crowded": 0.5, "lone": 2 / 3}
    metric.update(torch.tensor([4]), torch.tensor([4]))  # a class outside the stream counts nowhere
    assert metric.result() == {"crowded": 0.5, "lone": 2 / 3}
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        metric.update(torch.tensor([0]), torch.tensor([5]))
    metric.reset()
    assert metric.result() == {}
