"""Online replay on Split CIFAR-100: this library's plugin against Avalanche's own, in one run.

Avalanche's reference setup for online replay (continual-learning-baselines,
``experiments/split_cifar100/online_replay.py``, hyperparameters of Caccia et al., ICLR 2022):
20 experiences of 5 classes in the natural order 0..99, 5% of each experience's training
images held out (``benchmark_with_validation_stream``), ``SlimResNet18``, SGD lr 0.1, no
augmentation, ``OnlineNaive`` with ``train_mb_size=10``, every experience cut by
``OnlineCLScenario`` into mini-experiences of 10 samples (``access_task_boundaries=False``),
a buffer of 10,000 and replay batches of 10. Methods (``METHODS``), each named by what it
stores and how it draws:

* ``replay_plugin``: ``ReplayPlugin(storage_policy=ClassBalancedBuffer(adaptive_size=True))``, the reference;
* ``ours``: ``BalancedReplayPlugin`` with its defaults (class-balanced storage, uniform draws);
* ``ours_balanced``: the same storage, semantic draws (``use_balanced_sampling=True``);
* ``er_ace``: Avalanche's ``ER_ACE`` strategy (class-balanced storage, its own loss).

    python -m benchmarks.online --methods replay_plugin ours --seeds 0 --out results/online_cpu
    python -m benchmarks.online --report --out results/online_cpu       # the tables

Each (method, seed) run writes ``<out>/<method>_seed<seed>.json`` when it finishes; a run whose
file exists is skipped. Recorded: final accuracy on the full test set, each experience's test
accuracy right after training it (for forgetting), and the training wall time of every
experience with its number of mini-experiences (seconds per mini-experience as the buffer
fills). Evaluation time is kept apart and not counted in the training time. Run two methods
side by side (two processes, one torch thread each) so that their times share the machine's load.
"""
import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from avalanche.benchmarks.scenarios.online import OnlineCLScenario
from avalanche.benchmarks.scenarios.validation_scenario import benchmark_with_validation_stream
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SlimResNet18
from avalanche.training import ER_ACE
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised import Naive, OnlineNaive

from avalanche_balanced import BalancedReplayPlugin, seed_everything, split_cifar100

METHODS = ("replay_plugin", "ours", "ours_balanced", "er_ace")
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2009, 0.1984, 0.2023)  # the reference's


class Normalize(nn.Module):
    """The reference's per-channel normalisation, as the model's first layer (our data are in [0, 1])."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


@functools.lru_cache(maxsize=2)  # one build per seed, for every method of a process
def build_benchmark(seed: int, n_experiences: int = 20):
    benchmark = split_cifar100(n_experiences, class_order=list(range(100)), seed=seed)
    return benchmark_with_validation_stream(benchmark, validation_size=0.05, shuffle=True, seed=seed)


def build_strategy(method: str, args, device):
    model = nn.Sequential(Normalize(CIFAR100_MEAN, CIFAR100_STD), SlimResNet18(100))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    common = dict(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=args.batch,
                  eval_mb_size=64, device=device, evaluator=evaluator)
    if method == "er_ace":
        return ER_ACE(mem_size=args.mem_size, batch_size_mem=args.batch, train_epochs=1, **common)
    if method == "replay_plugin":
        plugin = ReplayPlugin(args.mem_size, storage_policy=ClassBalancedBuffer(args.mem_size, adaptive_size=True))
    else:
        plugin = BalancedReplayPlugin(args.mem_size, batch_size_mem=args.batch,
                                      use_balanced_sampling=method == "ours_balanced")
    template = OnlineNaive if args.strategy == "online_naive" else Naive
    return template(plugins=[plugin], train_epochs=1, **common) if template is Naive else \
        template(plugins=[plugin], **common)


def accuracy_of(results: dict, experience: int) -> float:
    return results[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{experience:03d}"]


def run(method: str, seed: int, args, partial=None) -> dict:
    torch.set_num_threads(args.threads)
    benchmark = build_benchmark(seed)
    seed_everything(seed)  # after the benchmark, which must not fix the run's initial weights
    strategy = build_strategy(method, args, torch.device(args.device))
    just_after, train_seconds, mini_experiences, eval_seconds = [], [], [], 0.0
    n_train = args.experiences or len(benchmark.train_stream)
    for t, experience in enumerate(benchmark.train_stream[:n_train]):
        online = OnlineCLScenario(original_streams=list(benchmark.streams.values()), experiences=experience,
                                  experience_size=args.batch, access_task_boundaries=args.boundaries)
        stream = list(online.streams["train_online"])  # Avalanche 0.6 names it train_online
        if args.mini_experiences:
            stream = stream[: args.mini_experiences]
        start = time.perf_counter()
        strategy.train(stream, eval_streams=[], num_workers=0, drop_last=True)
        train_seconds.append(time.perf_counter() - start)
        mini_experiences.append(len(stream))
        start = time.perf_counter()
        just_after.append(accuracy_of(strategy.eval(benchmark.test_stream[t: t + 1]), t))
        eval_seconds += time.perf_counter() - start
        print(f"{method} seed {seed} experience {t}: {train_seconds[-1]:.1f} s for {len(stream)} "
              f"mini-experiences, accuracy {100 * just_after[-1]:.2f}", flush=True)
        if partial is not None:  # progress of an unfinished run: its times so far, for the record
            partial.write_text(json.dumps({"method": method, "seed": seed, "train_seconds": train_seconds,
                                           "mini_experiences": mini_experiences,
                                           "accuracy_just_after": just_after}, indent=1))
    start = time.perf_counter()
    final = strategy.eval(benchmark.test_stream[:n_train])
    eval_seconds += time.perf_counter() - start
    final_per_exp = [accuracy_of(final, t) for t in range(n_train)]
    forgetting = [a - f for a, f in zip(just_after[:-1], final_per_exp[:-1])]
    return {
        "method": method, "seed": seed, "threads": args.threads, "device": args.device,
        "torch": torch.__version__, "strategy": args.strategy, "boundaries": args.boundaries,
        "accuracy": 100 * final["Top1_Acc_Stream/eval_phase/test_stream/Task000"],
        "forgetting": 100 * sum(forgetting) / len(forgetting) if forgetting else 0.0,
        "accuracy_just_after": just_after, "final_accuracy_per_experience": final_per_exp,
        "train_seconds": train_seconds, "mini_experiences": mini_experiences,
        "seconds": sum(train_seconds), "eval_seconds": eval_seconds,
    }


def report(out: Path, baseline: str = "replay_plugin") -> str:
    """Markdown tables of the finished runs in ``out``: each method's mean ± std over seeds, then
    every method against ``baseline`` paired by seed (accuracy, forgetting, training-time ratio),
    and the time ratio per experience (mean over the paired seeds)."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*_seed*.json")) if not p.name.endswith(".partial.json")]
    by = {}
    for r in runs:
        by.setdefault(r["method"], {})[r["seed"]] = r

    def mean_std(values):
        m = statistics.mean(values)
        return f"{m:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"

    lines = ["| method | seeds | final acc. (%) | forgetting (%) | training s | s per mini-experience |",
             "|---|---|---|---|---|---|"]
    for method in METHODS:
        mine = by.get(method, {})
        if not mine:
            continue
        rs = [mine[s] for s in sorted(mine)]
        lines.append(f"| {method} | {','.join(map(str, sorted(mine)))} | {mean_std([r['accuracy'] for r in rs])} | "
                     f"{mean_std([r['forgetting'] for r in rs])} | {mean_std([r['seconds'] for r in rs])} | "
                     f"{mean_std([r['seconds'] / sum(r['mini_experiences']) for r in rs])} |")
    lines += ["", "| pair (by seed) | seeds | Δ final acc. | Δ forgetting | time ratio, total | time ratio per "
              "experience (min-max over experiences) |", "|---|---|---|---|---|---|"]
    base = by.get(baseline, {})
    for method in METHODS:
        if method == baseline or not by.get(method):
            continue
        seeds = sorted(set(by[method]) & set(base))
        if not seeds:
            continue
        a, b = [by[method][s] for s in seeds], [base[s] for s in seeds]
        acc = [x["accuracy"] - y["accuracy"] for x, y in zip(a, b)]
        fgt = [x["forgetting"] - y["forgetting"] for x, y in zip(a, b)]
        ratio = [x["seconds"] / y["seconds"] for x, y in zip(a, b)]
        per_exp = [statistics.mean(x["train_seconds"][t] / y["train_seconds"][t] for x, y in zip(a, b))
                   for t in range(min(len(a[0]["train_seconds"]), len(b[0]["train_seconds"])))]
        lines.append(f"| {method} − {baseline} | {','.join(map(str, seeds))} | {mean_std(acc)} "
                     f"[{', '.join(f'{d:+.2f}' for d in acc)}] | {mean_std(fgt)} | {mean_std(ratio)} "
                     f"[{', '.join(f'{r:.2f}' for r in ratio)}] | {min(per_exp):.2f}-{max(per_exp):.2f}; "
                     f"by experience: {' '.join(f'{r:.2f}' for r in per_exp)} |")
    shown = (0, 1, 2, 3, 4, 5, 10, 15, 19)
    header = [t for t in shown if any(len(r["train_seconds"]) > t for m in by.values() for r in m.values())]
    lines += ["", "Seconds per mini-experience by experience, as the buffer fills (mean over seeds; the buffer holds "
              "the training samples of every experience so far up to its capacity):", "",
              "| method | " + " | ".join(f"exp. {t}" for t in header) + " |", "|---|" + "---|" * len(header)]
    for method in METHODS:
        rs = list(by.get(method, {}).values())
        if rs:
            cells = [statistics.mean(r["train_seconds"][t] / r["mini_experiences"][t] for r in rs
                                     if len(r["train_seconds"]) > t) for t in header]
            lines.append(f"| {method} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("results/online_cpu"))
    parser.add_argument("--mem_size", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10, help="current and replayed samples per iteration")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--strategy", choices=("online_naive", "naive"), default="online_naive")
    parser.add_argument("--boundaries", action="store_true", help="access_task_boundaries=True")
    parser.add_argument("--experiences", type=int, default=None, help="train on the first N only (smoke runs)")
    parser.add_argument("--mini_experiences", type=int, default=None, help="per experience (smoke runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", action="store_true", help="print the tables of the finished runs in --out")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(report(args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for method in args.methods:
            path = args.out / f"{method}_seed{seed}.json"
            if path.exists():
                print(f"{path} exists: skipped")
                continue
            partial = args.out / f"{method}_seed{seed}.partial.json"
            result = run(method, seed, args, partial)
            partial.unlink(missing_ok=True)
            result["command"] = "python -m benchmarks.online " + " ".join(argv if argv is not None else sys.argv[1:])
            result["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                              text=True).stdout.strip()
            path.write_text(json.dumps(result, indent=1))
            print(f"{method} seed {seed}: final accuracy {result['accuracy']:.2f}, forgetting "
                  f"{result['forgetting']:.2f}, {result['seconds']:.0f} s training", flush=True)


if __name__ == "__main__":
    main()
