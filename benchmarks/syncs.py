"""Device-to-host synchronisations per training iteration, for Naive + BalancedReplayPlugin and
SARL-GELU, each with uniform and balanced draws.

    python -m benchmarks.syncs                 # on the CPU: operations that would sync on a GPU
    python -m benchmarks.syncs --device cuda   # on a GPU: torch.cuda.set_sync_debug_mode counts too

On the CPU nothing synchronises, so the count is of the operations that force a device-to-host
copy on a GPU, seen through a ``TorchFunctionMode``: ``.item()``, ``.tolist()``, ``.cpu()``,
``bool()``/``int()``/``float()`` of a tensor, a tensor used as a Python index, ``nonzero``,
``unique``, ``bincount``, ``torch.equal``, ``masked_select`` and indexing with a boolean mask.
Counted from the start of each training iteration to its end (every plugin hook included;
``before_training_iteration`` of the first plugin to ``after_training_iteration`` of the last),
over experiences 2 to 4 of a 5-experience stream (steady state: the buffer is full). The
mean includes the iterations that regroup (every 50); the median is the typical iteration.

The stream is synthetic (CIFAR-shaped random images, 20 classes, 4 per experience, 80 images
per class, 2 epochs, SARL's warm-up 0 so that its second epoch runs every loss term): sync
counts depend on the code path, not on the pixels. Adam's step counter (the similarity
network's optimiser) is a CPU tensor unless ``capturable``, so its ``.item()`` is not counted.
"""
import argparse
import statistics
import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_balanced import BalancedReplayPlugin, SARLGelu, gelu_resnet18
from avalanche_balanced.data import cifar_augment, cifar_normalize

SYNCING = {"item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique",
           "bincount", "equal", "masked_select", "unique_consecutive", "argwhere"}


def _in_optimizer() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "torch/optim/" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _has_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """Counts the syncing operations run while active, by name."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "item" and _in_optimizer():
            pass  # Adam's step counter is a CPU tensor unless capturable: no device sync on a GPU
        elif name in SYNCING:
            self.counts[name] += 1
        elif name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_bool_index(args[1]):
            self.counts[f"{name}[bool]"] += 1
        return func(*args, **(kwargs or {}))


class PerIteration(SupervisedPlugin):
    """Opens a counter at the start of each iteration and closes it at the end (two halves:
    put ``start`` first and ``stop`` last among the plugins)."""

    def __init__(self, from_experience: int = 2):
        super().__init__()
        self.from_experience, self.rows, self.mode = from_experience, [], None
        self.start, self.stop = _Start(self), _Stop(self)


class _Start(SupervisedPlugin):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def before_training_iteration(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter >= self.owner.from_experience:
            self.owner.mode = SyncCounter()
            self.owner.mode.__enter__()


class _Stop(SupervisedPlugin):
    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def after_training_iteration(self, strategy, **kwargs):
        mode = self.owner.mode
        if mode is not None:
            mode.__exit__(None, None, None)
            self.owner.rows.append(mode.counts)
            self.owner.mode = None


def synthetic_stream(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(20).repeat_interleave(80)
    x = torch.rand(len(y), 3, 32, 32, generator=g)
    ds = _make_taskaware_tensor_classification_dataset(x, y)
    return nc_benchmark(ds, ds, n_experiences=5, task_labels=False, seed=seed)


def build(method, balanced, plugins, device):
    torch.manual_seed(0)
    model = gelu_resnet18(20, nf=8).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    common = dict(train_mb_size=32, train_epochs=2, device=device, evaluator=EvaluationPlugin(loggers=[]))
    if method == "plugin":
        replay = BalancedReplayPlugin(mem_size=500, batch_size_mem=32, use_balanced_sampling=balanced,
                                      transform=cifar_augment, preprocess=cifar_normalize)
        return Naive(model=model, optimizer=opt, plugins=[plugins.start, replay, plugins.stop], **common)
    return SARLGelu(model=model, optimizer=opt, mem_size=500, batch_size_mem=32, use_balanced_sampling=balanced,
                    warmup_epochs=0, transform=cifar_augment, eval_transform=cifar_normalize,
                    plugins=[plugins.start, plugins.stop], **common)


def measure(method, balanced, device):
    counter = PerIteration()
    strategy = build(method, balanced, counter, device)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
    for exp in synthetic_stream().train_stream:
        strategy.train(exp)
    totals = [sum(row.values()) for row in counter.rows]
    by_op = Counter()
    for row in counter.rows:
        by_op.update(row)
    return dict(iterations=len(totals), mean=statistics.mean(totals), median=statistics.median(totals),
                by_op={k: v / len(totals) for k, v in by_op.most_common()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=["plugin", "sarl"], choices=["plugin", "sarl"])
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(args.device)
    print("| method | draws | iterations | syncs per iteration (mean) | median | by operation (mean per iteration) |")
    print("|---|---|---|---|---|---|")
    results = {}
    for method in args.methods:
        for balanced in (False, True):
            r = measure(method, balanced, device)
            results[method, balanced] = r
            ops = ", ".join(f"{k} {v:.2f}" for k, v in r["by_op"].items())
            name = "Naive + plugin" if method == "plugin" else "SARL-GELU"
            print(f"| {name} | {'balanced' if balanced else 'uniform'} | {r['iterations']} | {r['mean']:.2f} | "
                  f"{r['median']:.0f} | {ops} |", flush=True)
    return results


if __name__ == "__main__":
    main()
