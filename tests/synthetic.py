"""A tiny class-incremental benchmark of separable Gaussian blobs, and the plugin settings, for strategy tests."""
import torch
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

# The design note's configuration of BalancedReplayPlugin: semantic draws from a reservoir buffer
# (the plugin's defaults are class-balanced storage and uniform draws).
SEMANTIC = dict(use_balanced_sampling=True, insertion="reservoir", replay_order="independent")


def blobs_benchmark(num_classes: int, dim: int, *, n_per_class: int = 40, separation: float = 2.0,
                    n_experiences: int = 3, seed: int = 0):
    """Class c is a unit Gaussian around ``separation * e_c``; train and test streams share the data."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = torch.randn(len(y), dim, generator=g) + separation * torch.eye(num_classes, dim)[y]
    ds = _make_taskaware_tensor_classification_dataset(x, y)
    return nc_benchmark(ds, ds, n_experiences=n_experiences, task_labels=False, seed=seed)
