"""Speed of balanced vs uniform replay draws, and of a training iteration with the plugin.

    python -m benchmarks.sampler            # all figures
    python -m benchmarks.sampler --quick    # fewer repeats

Prints, in one run on this machine:
1. the time of one draw of 32 from buffers of 200 ... 500,000 samples: the pure
   sampler (``sample_indices(balanced_importance(...))`` from precomputed
   similarities), the whole buffer draw (``get_balanced_data``: similarities
   to prototypes of 160-dim features, importance and draw), and the uniform draw;
2. the per-iteration time of Naive + BalancedReplayPlugin on the reduced GELU
   ResNet-18 at batch 32 + 32 replayed with a 500-sample buffer, balanced vs
   uniform, measured interleaved so machine noise hits both alike;
3. the mean iteration time of balanced replay with the whole buffer's features
   recomputed at every regrouping vs without (the cost of fresh state);
4. the mean iteration time of uniform replay (the plugin's defaults), which skips the
   within-experience regroupings, vs the same with them forced back (what they cost).
Ratios are the figures to quote: this machine is shared and noisy.
"""
import argparse
import statistics
import time

import torch

from avalanche_balanced import BalancedBuffer, BalancedReplayPlugin, balanced_importance, sample_indices
from avalanche_balanced.data import cifar_augment
from avalanche_balanced.models import gelu_resnet18


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def filled_buffer(n, num_classes=100, num_feats=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    buf = BalancedBuffer(n, grouping="class_similarity", insertion="reservoir", seed=seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    feats = torch.randn(n, num_feats, generator=g)
    # Inputs are tiny here: draw cost does not depend on the input size.
    buf.add_data(torch.zeros(n, 1), labels, torch.zeros(n, num_classes), feats)
    buf.refresh_prototypes()
    buf.regroup()
    return buf


def draw_table(repeats):
    print("1. One draw of 32 (median ms)")
    print(f"{'buffer':>9} | {'sampler':>8} | {'get_balanced_data':>17} | {'uniform get_data':>16} | balanced/uniform")
    gen = torch.Generator().manual_seed(0)
    for n in (200, 5_000, 50_000, 500_000):
        sim = torch.rand(n, generator=gen)
        groups = torch.randint(20, (n,), generator=gen)
        sampler = median_ms(lambda: sample_indices(balanced_importance(sim, groups), 32, generator=gen), repeats)
        buf = filled_buffer(n)
        full = median_ms(lambda: buf.get_balanced_data(32), repeats)
        uniform = median_ms(lambda: buf.get_data(32), repeats)
        print(f"{n:>9} | {sampler:>8.3f} | {full:>17.3f} | {uniform:>16.3f} | {full / uniform:.2f}")


def _random_stream(per_class, g):
    """One experience of 10 classes of random 32x32 images, ``per_class`` each."""
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    y = torch.arange(10).repeat_interleave(per_class)
    ds = _make_taskaware_tensor_classification_dataset(torch.rand(len(y), 3, 32, 32, generator=g), y)
    return nc_benchmark(ds, ds, n_experiences=1, task_labels=False, seed=0)


def _prefilled_naive(plugin, g, extra_plugins=()):
    """Naive on the reduced GELU ResNet-18 (same initial weights every call) with ``plugin``,
    whose buffer is pre-filled with 500 samples so every measured iteration replays."""
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive
    torch.manual_seed(0)
    model = gelu_resnet18(100, nf=20).to(memory_format=torch.channels_last)
    with torch.no_grad():
        xs = torch.rand(500, 3, 32, 32, generator=g)
        logits, feats = model(xs, return_features=True)
    plugin.buffer.add_data(xs, torch.randint(100, (500,), generator=g), logits, feats)
    plugin.buffer.refresh_prototypes()
    plugin.buffer.regroup()
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.03), train_mb_size=32,
                 train_epochs=1, plugins=[plugin, *extra_plugins], evaluator=EvaluationPlugin(loggers=[]))


def plugin_iterations(iterations, rounds):
    print("\n2. Training iteration, Naive + plugin, reduced GELU ResNet-18, batch 32 + 32, buffer 500")
    from avalanche.core import SupervisedPlugin

    class IterationTimer(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.times, self._t0 = [], None

        def before_training_iteration(self, strategy, **kwargs):
            self._t0 = time.perf_counter()

        def after_training_iteration(self, strategy, **kwargs):
            self.times.append(time.perf_counter() - self._t0)

    g = torch.Generator().manual_seed(0)
    bm = _random_stream(32 * iterations // 10 + 1, g)
    runs = {}
    for balanced in (True, False):
        # Online insertion: every iteration also writes to the buffer (SARL's timing, the heavier one).
        plugin = BalancedReplayPlugin(mem_size=500, batch_size_mem=32, use_balanced_sampling=balanced,
                                      transform=cifar_augment, insertion_timing="online")
        timer = IterationTimer()
        runs[balanced] = (_prefilled_naive(plugin, g, [timer]), timer)
    for _ in range(rounds):  # interleave the two so drifts in machine load cancel
        for balanced in (True, False):
            runs[balanced][0].train(bm.train_stream[0])
    bal = statistics.median(runs[True][1].times[1:])
    uni = statistics.median(runs[False][1].times[1:])
    print(f"balanced {1000 * bal:.1f} ms | uniform {1000 * uni:.1f} ms | ratio balanced/uniform {bal / uni:.3f}")


def mean_iteration_ms(make_plugins, iterations, rounds):
    """Mean iteration time (ms) of Naive with each plugin of ``make_plugins`` (name -> factory),
    regroupings and experience ends included (a median would hide them), interleaved so that
    drifts in machine load hit every configuration alike."""
    g = torch.Generator().manual_seed(0)
    bm = _random_stream(32 * iterations // 10, g)
    runs = {name: [_prefilled_naive(make(), g), 0.0] for name, make in make_plugins.items()}
    for _ in range(rounds):  # each round is `iterations` iterations and one experience end
        for run in runs.values():
            t0 = time.perf_counter()
            run[0].train(bm.train_stream[0])
            run[1] += time.perf_counter() - t0
    return {name: 1000 * total / (rounds * iterations) for name, (_, total) in runs.items()}


def refresh_cost(iterations, rounds):
    """Balanced replay with the whole buffer's features recomputed at every regrouping (every 50
    iterations, one eval-mode pass over 500 stored samples) vs replayed samples' features only."""
    print("\n3. Feature refresh at every regrouping (every 50 iterations), balanced, same setting as 2")
    ms = mean_iteration_ms({refresh: (lambda refresh=refresh: BalancedReplayPlugin(
        mem_size=500, batch_size_mem=32, use_balanced_sampling=True, transform=cifar_augment,
        insertion_timing="online", regroup_every=50, refresh_features=refresh)) for refresh in (True, False)},
        iterations, rounds)
    print(f"with refresh {ms[True]:.1f} ms | without {ms[False]:.1f} ms | "
          f"ratio {ms[True] / ms[False]:.3f} (target <= 1.10)")


def skipped_regroup_cost(iterations, rounds):
    """The plugin's defaults (uniform draws) skip the within-experience regroupings, which no
    uniform draw reads; forcing them back measures what they cost."""
    print("\n4. Uniform draws (the defaults): within-experience regroupings skipped vs forced every 50")

    class AlwaysRegroup(BalancedReplayPlugin):
        reads_groups = True

    ms = mean_iteration_ms({cls.__name__: (lambda cls=cls: cls(
        mem_size=500, batch_size_mem=32, transform=cifar_augment, insertion_timing="online", regroup_every=50))
        for cls in (BalancedReplayPlugin, AlwaysRegroup)}, iterations, rounds)
    skipped, forced = ms["BalancedReplayPlugin"], ms["AlwaysRegroup"]
    print(f"skipped {skipped:.1f} ms | forced {forced:.1f} ms | ratio skipped/forced {skipped / forced:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    draw_table(repeats=20 if args.quick else 100)
    plugin_iterations(iterations=20 if args.quick else 40, rounds=2 if args.quick else 3)
    refresh_cost(iterations=50 if args.quick else 100, rounds=2 if args.quick else 3)
    skipped_regroup_cost(iterations=50 if args.quick else 100, rounds=2 if args.quick else 3)


if __name__ == "__main__":
    main()
