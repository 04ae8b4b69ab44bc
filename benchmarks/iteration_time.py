"""Seconds per training iteration: ``Naive`` with this library's plugin against ``Naive`` with
Avalanche's ``ReplayPlugin``, offline, on the quick protocol (the peer on the same work).

Both store 500 samples class-balanced (``ClassBalancedBuffer(adaptive_size=True)`` / the
plugin's defaults) and join 32 replayed samples to every minibatch of 32; the model is the
quick protocol's reduced GELU ResNet-18 with the batched augmentation (``cifar_augment``)
applied to current and replayed inputs alike, as in ``compare.py``. Both strategies are built
once and trained experience by experience in turn, the order alternating, so that the machine's
load falls on both alike; the figure is the ratio of their training times per iteration over
the experiences that replay (experience 2 on), with the ratio of every experience.

    python -m benchmarks.iteration_time --experiences 4
"""
import argparse
import time

import torch
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised import Naive

from avalanche_balanced import (BalancedReplayPlugin, BatchTransformPlugin, cifar_augment, cifar_normalize,
                                gelu_resnet18, seed_everything, split_cifar100)
from avalanche_balanced.protocols import PROTOCOLS


def build(method: str, settings, seed: int):
    seed_everything(seed)
    model = gelu_resnet18(num_classes=100, nf=settings["nf"])
    if method == "replay_plugin":
        replay = ReplayPlugin(settings["mem_size"], batch_size_mem=settings["batch_size_mem"],
                              storage_policy=ClassBalancedBuffer(settings["mem_size"], adaptive_size=True))
        augment = BatchTransformPlugin(train_transform=cifar_augment, eval_transform=cifar_normalize)
    else:
        replay = BalancedReplayPlugin(settings["mem_size"], batch_size_mem=settings["batch_size_mem"],
                                      transform=cifar_augment, preprocess=cifar_normalize)
        augment = BatchTransformPlugin(eval_transform=cifar_normalize)
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=settings["lr"]),
                 train_mb_size=settings["batch_size"], train_epochs=settings["epochs"], eval_mb_size=256,
                 plugins=[replay, augment], evaluator=EvaluationPlugin(loggers=[]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiences", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = PROTOCOLS["quick"]
    benchmark = split_cifar100(settings["n_experiences"], per_class=settings["per_class"], seed=args.seed)
    methods = ("ours", "replay_plugin")
    strategies = {m: build(m, settings, args.seed) for m in methods}
    per_iteration = {m: [] for m in methods}
    for t, experience in enumerate(benchmark.train_stream[:args.experiences]):
        for method in (methods if t % 2 else methods[::-1]):
            strategy = strategies[method]
            start, before = time.perf_counter(), strategy.clock.train_iterations
            strategy.train(experience)
            seconds, iterations = time.perf_counter() - start, strategy.clock.train_iterations - before
            if t > 0:  # the first experience replays nothing
                per_iteration[method].append(seconds / iterations)
            print(f"experience {t} {method}: {seconds / iterations * 1000:.1f} ms per iteration "
                  f"({iterations} iterations)", flush=True)
    ratios = [a / b for a, b in zip(per_iteration["ours"], per_iteration["replay_plugin"])]
    ours, theirs = (sum(per_iteration[m]) / len(per_iteration[m]) for m in ("ours", "replay_plugin"))
    print(f"ms per iteration (experiences 1-{args.experiences - 1}): ours {ours * 1000:.1f}, ReplayPlugin "
          f"{theirs * 1000:.1f}; ratio ours / ReplayPlugin {ours / theirs:.2f} (per experience: "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
