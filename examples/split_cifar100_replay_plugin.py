"""Balanced replay for any Avalanche strategy: ``Naive`` + ``BalancedReplayPlugin`` on Split CIFAR-100.

    python examples/split_cifar100_replay_plugin.py                       # one process, the defaults
    python examples/split_cifar100_replay_plugin.py --use_balanced_sampling 1 --insertion reservoir   # semantic draws
    torchrun --nproc_per_node=2 examples/split_cifar100_replay_plugin.py --distributed   # torch DDP

The quick setting (5 experiences, reduced GELU ResNet-18, 100 training images per class,
3 epochs, buffer 500, batch 32 current + 32 replayed). With ``--distributed`` every process
holds the same buffer (``avalanche_balanced.distributed``): ``--batch_size`` and
``--batch_size_mem`` stay the *global* batch sizes, each rank trains on ``1 / world_size``
of both, the model is wrapped in DDP (``gloo`` on the CPU, ``nccl`` on GPUs) and only rank 0
logs, prints and writes. Logs: ``runs/<experiment_id>/`` (TensorBoard); a checkpoint after
every experience (``checkpoint.pt``, written by rank 0) continues with ``--resume``.
"""
import argparse
import os
import time

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import InteractiveLogger, TensorboardLogger
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_balanced import (BalancedReplayPlugin, BatchTransformPlugin, cifar_augment, cifar_normalize,
                                gelu_resnet18, seed_everything, split_cifar100)
from avalanche_balanced.checkpoint import load_checkpoint, save_checkpoint
from avalanche_balanced.distributed import DataParallelPlugin, check_same_buffer, init_distributed, rank_and_world


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--use_balanced_sampling", type=int, choices=(0, 1), default=0,
                   help="semantic-balanced (1) or uniform (0, the plugin's default) draws")
    p.add_argument("--insertion", choices=("class_balanced", "reservoir", "group_balanced"), default="class_balanced",
                   help="what the buffer stores (the plugin's default: class_balanced)")
    p.add_argument("--replay_order", choices=("independent", "passes"), default="independent",
                   help="uniform draws in independent batches (the default) or in passes over the buffer")
    p.add_argument("--mem_size", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=32, help="current samples per step (global)")
    p.add_argument("--batch_size_mem", type=int, default=32, help="replayed samples per step (global)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--per_class", type=int, default=100, help="training images per class")
    p.add_argument("--test_per_class", type=int, default=None, help="default: the full test set")
    p.add_argument("--nf", type=int, default=20, help="GELU ResNet-18 width (64: the full network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--distributed", action="store_true", help="torch DDP; start with torchrun")
    p.add_argument("--experiment_id", default=None)
    p.add_argument("--resume", action="store_true", help="continue from runs/<experiment_id>/checkpoint.pt")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.distributed and not init_distributed(args.seed):
        raise SystemExit("--distributed needs torchrun's environment: torchrun --nproc_per_node=N ...")
    rank, world = rank_and_world()
    if args.batch_size % world:
        raise SystemExit(f"--batch_size {args.batch_size} must be divisible by the {world} processes")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if args.device == "cuda" else args.device)
    benchmark = split_cifar100(5, root=args.data_root, seed=args.seed, per_class=args.per_class,
                               test_per_class=args.test_per_class, download=True)
    seed_everything(args.seed)  # after the benchmark: the run's seed alone sets weights and data order
    model = gelu_resnet18(100, nf=args.nf).to(device)

    draws = "semantic" if args.use_balanced_sampling else "uniform"
    if args.replay_order == "passes":
        draws += "_passes"
    name = args.experiment_id or f"plugin_{args.insertion}_{draws}_s{args.seed}"
    loggers = [InteractiveLogger(), TensorboardLogger(f"runs/{name}")] if rank == 0 else []
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True, stream=True), loggers=loggers)
    replay = BalancedReplayPlugin(mem_size=args.mem_size, batch_size_mem=args.batch_size_mem,
                                  use_balanced_sampling=bool(args.use_balanced_sampling), insertion=args.insertion,
                                  replay_order=args.replay_order, seed=args.seed, transform=cifar_augment,
                                  preprocess=cifar_normalize)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=args.lr),
                     train_mb_size=args.batch_size // world, train_epochs=args.epochs, eval_mb_size=256,
                     device=device, evaluator=evaluator,
                     plugins=[DataParallelPlugin(seed=args.seed), replay, BatchTransformPlugin(eval_transform=cifar_normalize)])

    checkpoint = f"runs/{name}/checkpoint.pt"
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "device")}
    done = load_checkpoint(checkpoint, strategy, config=config)["completed"] if args.resume else 0
    start, metrics = time.time(), None
    for experience in benchmark.train_stream[done:]:
        strategy.train(experience)
        check_same_buffer(replay.buffer)  # under DDP: every rank's buffer is the same, or this raises
        metrics = strategy.eval(benchmark.test_stream)
        save_checkpoint(checkpoint, strategy, config=config, extra=dict(completed=experience.current_experience + 1))
    if metrics is None:  # resumed after the last experience: evaluate the final model
        metrics = strategy.eval(benchmark.test_stream)
    if rank == 0:
        accuracy = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
        print(f"Final average accuracy: {100 * accuracy:.2f}% ({world} process(es), {time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
