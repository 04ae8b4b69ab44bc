"""SARL-GELU with Balanced Instance Sampling on class-incremental Split CIFAR-100.

Quick default (about 10 minutes on 2 CPU cores): 5 experiences, the reduced
GELU ResNet-18 (nf=20), 100 training images per class, 3 epochs, buffer 500.
``--protocol paper`` is the SARL authors' setting (full ResNet-18, 50 epochs,
lr 0.03, batch 32, MultiStepLR at 35 and 45), meant for a GPU. Both come from
``avalanche_balanced.protocols``, which the comparison uses too; SARL's
replay-logit weight follows the buffer size (alpha 0.2 at 500, 0.5 at 200).

    python examples/split_cifar100_sarl_balanced.py                      # sarl_gelu_balanced
    python examples/split_cifar100_sarl_balanced.py --method sarl_gelu   # uniform draws
    python examples/split_cifar100_sarl_balanced.py --method sarl --class_order natural \
        --protocol paper --device cuda                                    # SARL as its authors wrote it

``--method`` names what runs: ``sarl`` (the authors' method: sparse ReLU ResNet-18 with k-WTA,
fixed positives, separate current and replayed batches, prototypes from augmented images, fp32,
no guards), ``sarl_gelu`` (the design note's variant with uniform draws) or
``sarl_gelu_balanced`` (the variant with balanced instance sampling, the default).

``--seed`` is the run's seed (initial weights, data order, augmentation,
buffer draws); ``--class_order_seed`` (default: ``--seed``) fixes the class
order and training subset alone. ``--amp`` runs the model and loss in
bfloat16 mixed precision (on a GPU), ``--max_iterations N`` stops after N
training iterations and reports the seconds per iteration (for budgeting);
with ``--plan_file F`` those iterations train a throw-away copy, and the run
then waits for F (epochs, warm-up, LR milestones) and starts from its seed.

Data: ``--data_root`` (default: ``AVALANCHE_BALANCED_DATA`` or the shared copy),
either ``cifar100_{train,test}.npz`` or torchvision's ``cifar-100-python/``;
when neither is there, torchvision downloads the latter (``--no_download``
forbids it). TensorBoard logs go to ``runs/<experiment_id>/``; ``--resume``
continues from the checkpoint written there after every experience.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from avalanche_balanced.checkpoint import load_checkpoint, save_checkpoint
from avalanche_balanced.compiled import compile_model, train_kwargs
from avalanche_balanced.data import split_cifar100
from avalanche_balanced.experiment import build_evaluator, close_loggers, final_results, seed_everything
from avalanche_balanced.figures import FigureLoggerPlugin
from avalanche_balanced.guards import NonFiniteLossError
from avalanche_balanced.metrics import semantic_metrics
from avalanche_balanced.models import gelu_resnet18, sparse_resnet18
from avalanche_balanced.precision import MixedPrecisionPlugin
from avalanche_balanced.protocols import PROTOCOLS, sarl_alpha_for
from avalanche_balanced.strategies import SARLGelu
from avalanche_balanced.strategies.sarl import CLIP_GRAD_NORM, RAMP_ITERATIONS
from avalanche_balanced.distributed import DataParallelPlugin, init_distributed, rank_and_world
from avalanche_balanced.transforms import cifar_augment, cifar_normalize


MODEL_WIDTHS = {"full": 64, "reduced": 20, "tiny": 8}


def protocol_defaults(name: str) -> dict:
    """The example's flags as the shared protocol sets them."""
    p = PROTOCOLS[name]
    return dict(model="full" if p["nf"] == 64 else "reduced", epochs=p["epochs"], per_class=p["per_class"],
                lr=p["lr"], batch_size=p["batch_size"], minibatch_size=p["batch_size_mem"],
                warmup_epochs=p["warmup_epochs"], lr_steps=p["lr_steps"], buffer_size=p["mem_size"],
                alpha=p["sarl_alpha"], n_experiences=p["n_experiences"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=("quick", "paper"), default="quick")
    p.add_argument("--experiment_id", default=None, help="run name; logs in runs/<experiment_id>/")
    p.add_argument("--buffer_size", type=int, default=None)
    p.add_argument("--minibatch_size", type=int, default=None, help="replayed samples per step")
    p.add_argument("--batch_size", type=int, default=None, help="current samples per step")
    p.add_argument("--method", choices=METHOD_NAMES, default=None,
                   help="sarl, sarl_gelu or sarl_gelu_balanced (default; see the module docstring)")
    p.add_argument("--use_balanced_sampling", type=int, choices=(0, 1), default=None,
                   help="earlier spelling: 1 = --method sarl_gelu_balanced, 0 = --method sarl_gelu")
    p.add_argument("--class_order", choices=("seed", "natural"), default="seed",
                   help="natural: classes 0..99 in order, as SARL's authors train (default: drawn from the seed)")
    p.add_argument("--balance_weight", type=float, default=1.0)
    p.add_argument("--grouping", default="class_similarity")
    p.add_argument("--sim_lr", type=float, default=0.001)
    p.add_argument("--sm_weight", type=float, default=0.01)
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the replay-logit MSE (default: SARL's 0.2 at buffer 500, 0.5 at 200)")
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--op_weight", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--clip_grad_norm", type=float, default=CLIP_GRAD_NORM,
                   help=f"clip the global gradient norm (0: off; default {CLIP_GRAD_NORM}); may differ on --resume")
    p.add_argument("--ramp_iterations", type=int, default=RAMP_ITERATIONS,
                   help="iterations over which distillation and the semantic term ramp in after the warm-up")
    p.add_argument("--n_experiences", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--warmup_epochs", type=int, default=None)
    p.add_argument("--per_class", type=int, default=None, help="training images per class")
    p.add_argument("--test_per_class", type=int, default=None,
                   help="test images per class (default: the full test set)")
    p.add_argument("--model", choices=tuple(MODEL_WIDTHS), default=None,
                   help="GELU ResNet-18 width: full (nf 64, the paper), reduced (nf 20, quick), tiny (nf 8, smoke tests)")
    p.add_argument("--lr_steps", type=int, nargs="*", default=None,
                   help="MultiStepLR milestones in epochs, re-created every experience (paper: 35 45)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class_order_seed", type=int, default=None, help="default: --seed")
    p.add_argument("--amp", action="store_true", help="bfloat16 mixed precision (forward passes and loss)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the compiled training step)")
    p.add_argument("--compile_mode", default=None,
                   help="torch.compile mode; reduce-overhead adds CUDA graphs (the ragged last batch is dropped)")
    p.add_argument("--max_iterations", type=int, default=None,
                   help="stop after this many training iterations and report seconds per iteration")
    p.add_argument("--plan_file", default=None,
                   help="with --max_iterations: after timing, wait for this JSON file ({epochs, warmup_epochs, "
                        "lr_steps}, or {abort}) and then run with it, from the start (benchmarks/gpu_paper.py)")
    p.add_argument("--data_root", default=None)
    p.add_argument("--no_download", action="store_true",
                   help="fail instead of downloading CIFAR-100 through torchvision when no local copy is found")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true",
                   help="continue from runs/<experiment_id>/checkpoint.pt (written after every experience)")
    p.add_argument("--stop_after", type=int, default=None, help="stop after this many experiences")
    p.add_argument("--no_progress", action="store_true", help="no InteractiveLogger progress bars")
    p.add_argument("--distributed", action="store_true",
                   help="torch DDP under torchrun: --batch_size and --minibatch_size are global, only rank 0 "
                        "logs and writes (see docs/distributed.md)")
    args = p.parse_args(argv)
    defaults = protocol_defaults(args.protocol)
    if args.buffer_size is not None:  # SARL's replay-logit weight follows the buffer size
        defaults["alpha"] = sarl_alpha_for(args.buffer_size, defaults["alpha"])
    for key, value in defaults.items():  # protocol values fill unset flags
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.method is None:
        args.method = "sarl_gelu" if args.use_balanced_sampling == 0 else "sarl_gelu_balanced"
    elif args.use_balanced_sampling is not None and args.use_balanced_sampling != (args.method == "sarl_gelu_balanced"):
        p.error(f"--use_balanced_sampling {args.use_balanced_sampling} contradicts --method {args.method}")
    args.use_balanced_sampling = int(args.method == "sarl_gelu_balanced")
    if args.method == "sarl" and args.amp:
        p.error("--method sarl runs in fp32, as its authors: drop --amp")
    if args.experiment_id is None:
        args.experiment_id = f"{args.method}_s{args.seed}"
    return args


METHOD_NAMES = ("sarl", "sarl_gelu", "sarl_gelu_balanced")
# The authors' method, as options of the same strategy (docs/design.md, "SARL and SARL-GELU").
SARL_AUTHORS = dict(semantic_positives="threshold", separate_batches=True, prototype_views="augmented",
                    teacher_ratio=None)


# Flags that change how a run is watched, not what it computes: a resumed run may differ in them.
RUN_CONTROL = ("resume", "stop_after", "no_progress", "device", "max_iterations", "plan_file",
               "clip_grad_norm")  # clipping may be switched on to resume a run stopped by a non-finite loss


class IterationTimer(SupervisedPlugin):
    """Times training iterations after ``warmup`` of them and stops training after ``limit``."""

    def __init__(self, limit, device, warmup=5):
        super().__init__()
        self.limit, self.device, self.warmup = limit, torch.device(device), warmup
        self.count, self.start, self.seconds_per_iteration = 0, None, None

    def _now(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def after_training_iteration(self, strategy, **kwargs):
        self.count += 1
        if self.count == self.warmup:
            self.start = self._now()
        elif self.count >= self.limit:
            self.seconds_per_iteration = (self._now() - self.start) / (self.count - self.warmup)
            strategy.stop_training()


def build_strategy(args, benchmark, device, world, run_dir=None, extra_plugins=()):
    """The run's model and strategy, seeded from ``args.seed``; with ``run_dir``, TensorBoard
    logs, figures and progress bars (under DDP only rank 0 passes one)."""
    seed_everything(args.seed)  # after the benchmark, so the run's seed alone sets weights and data order
    network = sparse_resnet18 if args.method == "sarl" else gelu_resnet18
    model = network(100, nf=MODEL_WIDTHS[args.model]).to(device)
    model = model.to(memory_format=torch.channels_last)  # about 1.5x faster convolutions on CPU
    if args.compile:
        compile_model(model, mode=args.compile_mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    # The semantic metrics and the figures find the buffer through the strategy they are given.
    evaluator, loggers = build_evaluator(None if run_dir is None else str(run_dir),
                                         interactive=not args.no_progress and run_dir is not None,
                                         extra_metrics=semantic_metrics(benchmark.fine_to_coarse))
    figures = None if run_dir is None else FigureLoggerPlugin(run_dir, fine_to_coarse=benchmark.fine_to_coarse)
    plugins = [p for p in (DataParallelPlugin(seed=args.seed) if args.distributed else None, figures,
                           MixedPrecisionPlugin() if args.amp else None, *extra_plugins) if p is not None]
    strategy = SARLGelu(
        model=model, optimizer=optimizer, mem_size=args.buffer_size, batch_size_mem=args.minibatch_size,
        alpha=args.alpha, beta=args.beta, op_weight=args.op_weight, sm_weight=args.sm_weight,
        sim_lr=args.sim_lr, warmup_epochs=args.warmup_epochs,
        clip_grad_norm=None if args.method == "sarl" else args.clip_grad_norm or None,
        ramp_iterations=0 if args.method == "sarl" else args.ramp_iterations,
        use_balanced_sampling=bool(args.use_balanced_sampling), balance_weight=args.balance_weight,
        grouping=args.grouping, class_to_group=benchmark.fine_to_coarse if args.grouping == "fixed" else None,
        lr_steps=args.lr_steps, transform=cifar_augment, eval_transform=cifar_normalize, seed=args.seed,
        train_mb_size=args.batch_size // world, train_epochs=args.epochs, eval_mb_size=256, device=device,
        plugins=plugins, evaluator=evaluator, **(SARL_AUTHORS if args.method == "sarl" else {}))
    return strategy, loggers


def time_iterations(args, benchmark, device, world) -> IterationTimer:
    """Train a throw-away copy of the run on the first experience for ``--max_iterations``
    iterations, without logs; returns the timer."""
    timer = IterationTimer(args.max_iterations, device)
    strategy, _ = build_strategy(args, benchmark, device, world, extra_plugins=[timer])
    strategy.train(benchmark.train_stream[0])
    return timer


def follow_plan(args, plan_file: Path, poll_seconds: float = 0.2) -> None:
    """Wait for ``plan_file`` and set the run's epochs, warm-up and LR milestones from it.

    The run then starts from its seed, as if it had been launched with them: timing first in
    the same process saves a second start-up (imports, data, CUDA) inside a device's budget.
    """
    while not plan_file.is_file():
        time.sleep(poll_seconds)
    plan = json.loads(plan_file.read_text())
    if "abort" in plan:
        raise SystemExit(f"the plan says stop: {plan['abort']}")
    args.epochs, args.warmup_epochs, args.lr_steps = plan["epochs"], plan["warmup_epochs"], plan["lr_steps"]


def main(argv=None):
    args = parse_args(argv)
    if args.distributed and not init_distributed(args.seed):
        raise SystemExit("--distributed needs torchrun's environment: torchrun --nproc_per_node=N ...")
    rank, world = rank_and_world()
    say = print if rank == 0 else (lambda *args, **kwargs: None)  # under DDP, rank 0 speaks
    if args.batch_size % world:
        raise SystemExit(f"--batch_size {args.batch_size} must be divisible by the {world} processes")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if args.distributed and args.device == "cuda"
                          else args.device)
    run_dir = Path("runs") / args.experiment_id
    run_dir.mkdir(parents=True, exist_ok=True)

    order_seed = args.seed if args.class_order_seed is None else args.class_order_seed
    benchmark = split_cifar100(args.n_experiences, root=args.data_root, seed=order_seed,
                               class_order="natural" if args.class_order == "natural" else None,
                               per_class=args.per_class, test_per_class=args.test_per_class,
                               download=not args.no_download)
    if args.max_iterations:
        timing = time_iterations(args, benchmark, device, world)
        say(f"seconds per iteration: {timing.seconds_per_iteration:.5f} "
            f"(iterations {timing.warmup}-{timing.count}, batch {args.batch_size} + {args.minibatch_size})", flush=True)
        if args.plan_file is None:
            return {"seconds_per_iteration": timing.seconds_per_iteration}
        follow_plan(args, Path(args.plan_file))
    strategy, loggers = build_strategy(args, benchmark, device, world, run_dir=run_dir if rank == 0 else None)

    say(f"Split CIFAR-100: {args.n_experiences} experiences, {args.method}, {args.model} "
          f"{'sparse ReLU' if args.method == 'sarl' else 'GELU'} ResNet-18, "
          f"{'balanced' if args.use_balanced_sampling else 'uniform'} replay, buffer {args.buffer_size}")
    config = {k: v for k, v in vars(args).items() if k not in RUN_CONTROL}
    checkpoint = run_dir / "checkpoint.pt"
    done, results, elapsed = 0, None, 0.0
    if args.resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint, strategy, config=config)
        done, results, elapsed = state["completed"], state["results"], state["seconds"]
        say(f"Resumed from {checkpoint} after experience {done}")
    start = time.time() - elapsed
    for i, experience in enumerate(benchmark.train_stream):
        if i < done:
            continue
        if args.stop_after is not None and i >= args.stop_after:
            break
        try:
            strategy.train(experience, **(train_kwargs(args.compile_mode) if args.compile else {}))
        except NonFiniteLossError as err:
            close_loggers(loggers)
            raise SystemExit(f"{err}\nThe last finite checkpoint is {checkpoint} (after experience {i}); "
                             f"continue with --resume --experiment_id {args.experiment_id} "
                             f"--clip_grad_norm 1.0 (or another bound)") from err
        results = strategy.eval(benchmark.test_stream)
        summary = final_results(results)
        say(f"experience {i}: accuracy {summary['accuracy']:.2f}%, forgetting {summary.get('forgetting', 0.0):.2f}%, "
              f"{int(strategy.buffer.group_counts.gt(0).sum())} groups in the buffer, effective sample size "
              f"{strategy.replay.diagnostics.effective_sample_size(strategy.buffer):.2f}", flush=True)
        save_checkpoint(checkpoint, strategy, config=config, extra=dict(
            completed=i + 1, results=final_results(results), seconds=time.time() - start))
    close_loggers(loggers)
    if not isinstance(results, dict) or "accuracy" not in results:
        results = final_results(results)

    summary = dict(results, seconds=time.time() - start, **vars(args))
    if rank == 0:
        (run_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    say(f"\nFinal average accuracy: {summary['accuracy']:.2f}%")
    say(f"Average forgetting:     {summary.get('forgetting', float('nan')):.2f}%")
    say(f"Wall-clock: {summary['seconds']:.0f} s; TensorBoard: tensorboard --logdir {run_dir}")
    return summary


if __name__ == "__main__":
    main()
