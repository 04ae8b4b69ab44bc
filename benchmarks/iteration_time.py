"""Seconds per training iteration: ``Naive`` with this library's plugin against ``Naive`` with
Avalanche's ``ReplayPlugin``, offline, on the quick protocol (the peer on the same work).

Both store 500 samples class-balanced (``ClassBalancedBuffer(adaptive_size=True)`` / the
plugin's defaults) and join 32 replayed samples to every minibatch of 32; the model is the
quick protocol's reduced GELU ResNet-18 with the batched augmentation (``cifar_augment``)
applied to current and replayed inputs alike, as in ``compare.py``. The same experiences are
trained by each method in turn, ``--rounds`` times, alternating, so that the machine's load
falls on both; the figure is the ratio of their total training times over the experiences
that replay (experience 2 on).

    python benchmarks/iteration_time.py --rounds 3
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


def train_seconds(method: str, benchmark, settings, experiences: int, seed: int):
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
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=settings["lr"]),
                     train_mb_size=settings["batch_size"], train_epochs=settings["epochs"], eval_mb_size=256,
                     plugins=[replay, augment], evaluator=EvaluationPlugin(loggers=[]))
    seconds, iterations = 0.0, 0
    for t, experience in enumerate(benchmark.train_stream[:experiences]):
        start, before = time.perf_counter(), strategy.clock.train_iterations
        strategy.train(experience)
        if t > 0:  # the first experience replays nothing
            seconds += time.perf_counter() - start
            iterations += strategy.clock.train_iterations - before
    return seconds, iterations


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--experiences", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = PROTOCOLS["quick"]
    benchmark = split_cifar100(settings["n_experiences"], per_class=settings["per_class"], seed=0)
    totals = {"replay_plugin": [0.0, 0], "ours": [0.0, 0]}
    for r in range(args.rounds):
        for method in (("ours", "replay_plugin") if r % 2 else ("replay_plugin", "ours")):
            seconds, iterations = train_seconds(method, benchmark, settings, args.experiences, seed=r)
            totals[method][0] += seconds
            totals[method][1] += iterations
            print(f"round {r} {method}: {seconds / iterations * 1000:.1f} ms per iteration ({iterations} iterations)",
                  flush=True)
    ours, theirs = (totals[m][0] / totals[m][1] for m in ("ours", "replay_plugin"))
    print(f"ms per iteration: ours {ours * 1000:.1f}, ReplayPlugin {theirs * 1000:.1f}; ratio ours / ReplayPlugin "
          f"{ours / theirs:.2f}")


if __name__ == "__main__":
    main()
