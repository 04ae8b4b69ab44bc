"""Balanced vs uniform replay, beside Avalanche's own replay strategies, on Split CIFAR-100.

    python -m benchmarks.compare --protocol quick --select_lr     # choose each method's lr (validation)
    python -m benchmarks.compare --protocol quick                 # core table, seeds 0 1 2
    python -m benchmarks.compare --protocol quick --class_order_seed 0 --seeds 0 1 2 \
        --methods er er_ace sarl_uniform sarl_balanced --out results/quick_fixed_order
    python -m benchmarks.compare --protocol paper --device cuda   # SARL's setting, for a GPU

Every method shares the benchmark, model (GELU ResNet-18), optimiser (SGD, no
momentum), epochs, batch (current + replayed), buffer size and batched
augmentation. Final accuracy, forgetting and BWT are Avalanche's stream
metrics; semantic consistency, superclass error share and group agreement are
ours (see ``avalanche_balanced.metrics``).

Seeds: a run's seed sets its initial weights, data order, augmentation and
buffer draws; the class-order seed (``--class_order_seed``, else the run's
seed) sets the class order, the training subset and the evaluation subset,
and nothing else (the benchmark is built first, the run seeded after).

Learning rates: the methods' losses differ in scale (SARL-GELU and ER-ACE add
a current-batch and a replay-batch mean, Naive + replay takes one mean over
the joint batch), so one rate for all favours some. ``--select_lr`` runs every
method at every rate of ``--lr_grid`` on the first seed, trained on the
protocol's training subset and scored by final accuracy on ``val_per_class``
*training* images per class held out from it (never the test set); the
table's runs then use each method's chosen rate (the ``lr`` column).

Evaluation: after the last experience every method is evaluated on the full
test set. In the ``quick`` protocol the evaluations after earlier
experiences use a fixed class-balanced subset of 20 test images per class
(``with_test_subset``), so forgetting and BWT compare a subset estimate of
the accuracy just after learning an experience with its full-set final
accuracy; ``paper`` evaluates the full test set every time.

Runs are independent processes: ``--jobs`` of them at a time, each with
``cpu_count // jobs`` torch threads (on a 2-core CPU two single-thread runs
train about 1.25x faster in total than one run on two threads). A run's
numbers depend only on its method, seed, settings and thread count.

Several processes per run (``--world_size W``, torch DDP over ``gloo`` on a CPU, ``nccl``
on GPUs): each run starts ``W`` processes, every rank holds the same buffer and trains on
``1 / W`` of the same global batch (see ``avalanche_balanced.distributed``), every rank
evaluates the whole test set, and rank 0's numbers are recorded. Only our plugin's and
SARL-GELU's rows run this way; a ``W``-process run and a one-process run of the same seed
differ in BatchNorm statistics (computed per rank), in the order of the current data (a
``DistributedSampler`` seeded from the run's seed) and in floating-point order.

Writes ``results/<protocol>/results.json`` after every finished run (an
interrupted comparison keeps what it finished, and a re-run skips finished
runs unless ``--overwrite``), ``table.md``, and PNG plots.
"""
import argparse
import fcntl
import json
import multiprocessing
import os
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from avalanche_balanced.data import preserved_global_rng, split_cifar100, with_test_subset
from avalanche_balanced.distributed import free_port, init_distributed, rank_and_world
from avalanche_balanced.experiment import accuracy_matrix, build_evaluator, final_results, seed_everything
from avalanche_balanced.long_tail import BUCKETS, FrequencyBucketAccuracy, long_tail_counts
from avalanche_balanced.metrics import semantic_metrics
from avalanche_balanced.protocols import PROTOCOLS, sarl_alpha_for
from avalanche_balanced.superclass_skew import SKEW_BUCKETS, SuperclassSkewAccuracy, skewed_classes
from benchmarks.methods import CORE, LR_FROM, METHODS, Setting
from benchmarks.tables import markdown_lr_selection, write_outputs

# The runs' processes fork from a server that has imported this module (fresh_processes). Started as
# ``python -m benchmarks.compare``, each child then re-runs it as ``__mp_main__`` (multiprocessing's
# spawn.prepare), and runpy warns that it is already imported: the point of the preload, not a fault.
warnings.filterwarnings("ignore", message=r"'benchmarks\.compare' found in sys\.modules", category=RuntimeWarning)

LR_GRID = (0.01, 0.03, 0.1)
# Long-tailed streams (--scenario lt): accuracy on the test images of head, medium and tail classes.
# Superclass-skewed streams (--scenario skew): on the classes of crowded and of lone superclasses.
BUCKET_NAMES = {f"{b}_accuracy": f"{b.capitalize()}Accuracy_Stream/eval_phase/test_stream"
                for b in BUCKETS + SKEW_BUCKETS}
# Logged by BalancedReplayPlugin at the end of every experience.
REPLAY_HISTORY = {
    "current_share": "BalancedReplay/current_share",
    "effective_sample_size": "BalancedReplay/effective_sample_size",
    "group_agreement_per_experience": "GroupAgreement_Stream/eval_phase/test_stream",
}
# Published by TrainingGuardPlugin after every epoch (SARL-GELU has one; see avalanche_balanced.guards).
GUARD_HISTORY = {
    "max_grad_norm_per_epoch": "Guard/max_grad_norm",
    "max_logit_per_epoch": "Guard/max_logit",
    "clipped_steps_per_epoch": "Guard/clipped_steps",
}
SEMANTIC_NAMES = {
    "semantic_consistency": "SemanticConsistency_Stream/eval_phase/test_stream",
    "superclass_error_share": "SuperclassErrorShare_Stream/eval_phase/test_stream",
    "group_agreement": "GroupAgreement_Stream/eval_phase/test_stream",
}


def tiny_benchmark(seed, validation=False, imbalance_ratio=None, imbalance_order="shuffled", skew=False,
                   natural_order=False):
    """20 classes in 5 superclasses of 4, 8x8 images with a class-dependent colour.

    ``validation``: the test stream is another draw from the training distribution
    (the stand-in for held-out training images). ``natural_order``: classes 0..19 in order. ``imbalance_ratio``: long-tailed training
    counts under a cap of 6 per class (see :func:`avalanche_balanced.long_tail.long_tail_counts`).
    ``skew``: one crowded superclass kept whole and one class of each other (8 classes,
    4 experiences; see :mod:`avalanche_balanced.superclass_skew`)."""
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(20, 3, 1, 1, generator=g)

    def split(n):
        y = torch.arange(20).repeat_interleave(n)
        return _make_taskaware_tensor_classification_dataset(
            (0.7 * colours[y] + 0.3 * torch.rand(len(y), 3, 8, 8, generator=g)).clamp(0, 1), y)
    train, test = split(6), split(3)
    if validation:
        test = split(3)
    order, counts = None, torch.full((20,), 6)
    kept, crowded, n_experiences = None, None, 5
    if natural_order:
        order = list(range(20))
    if skew:
        kept, crowded = skewed_classes(torch.arange(20) // 4, 1, g)
        counts, n_experiences = torch.where(torch.isin(torch.arange(20), kept), 6, 0), 4
        train = train.subset(torch.nonzero(torch.isin(torch.arange(120) // 6, kept)).squeeze(1).tolist())
        test = test.subset(torch.nonzero(torch.isin(torch.arange(60) // 3, kept)).squeeze(1).tolist())
    if imbalance_ratio is not None:
        order = torch.randperm(20, generator=g).tolist()
        counts = long_tail_counts(order, 6, imbalance_ratio, imbalance_order, g)
        rank = torch.arange(120) % 6  # split(6) repeats each class 6 times in a row
        train = train.subset(torch.nonzero(rank < counts[torch.arange(20).repeat_interleave(6)]).squeeze(1).tolist())
    with preserved_global_rng():  # nc_benchmark re-seeds torch's global RNG
        bm = nc_benchmark(train, test, n_experiences=n_experiences, task_labels=False, seed=seed,
                          fixed_class_order=order)
    bm.fine_to_coarse = torch.arange(20) // 4
    bm.classes_kept, bm.crowded_classes = kept, crowded
    bm.class_counts, bm.n_max = counts, 6
    bm.imbalance_ratio, bm.imbalance_order = imbalance_ratio, imbalance_order
    return bm


def build_benchmark(protocol, order_seed, args, validation=False):
    """The benchmark of one run (class order, training subset and evaluation set from ``order_seed``)
    and the benchmark its intermediate evaluations use."""
    p = PROTOCOLS[protocol]
    lt = getattr(args, "scenario", "split") == "lt"
    skew = getattr(args, "scenario", "split") == "skew"
    natural = getattr(args, "class_order", "seeded") == "natural"
    if protocol == "tiny":
        bm = tiny_benchmark(order_seed, validation, imbalance_ratio=args.imbalance_ratio if lt else None,
                            imbalance_order=args.imbalance_order if lt else "shuffled", skew=skew,
                            natural_order=natural)
    else:
        # Long-tailed (--scenario lt): CIFAR-100-LT counts under the standard cap of 500 per class.
        bm = split_cifar100(p["n_experiences"], root=args.data_root, seed=order_seed,
                            class_order="natural" if natural else None,
                            per_class=None if lt else p["per_class"],
                            validation_per_class=p["val_per_class"] if validation else None,
                            imbalance_ratio=args.imbalance_ratio if lt else None,
                            imbalance_order=args.imbalance_order if lt else "shuffled",
                            superclass_skew=args.superclass_skew if skew else None,
                            download=True)  # only when no local copy is found
    if validation or p["eval_per_class"] is None:
        return bm, bm
    return bm, with_test_subset(bm, p["eval_per_class"], order_seed)


def quiet_avalanche_deprecations():
    """Drop Avalanche's deprecation notices (its ReplayPlugin and DER call ``update()`` every
    experience, and its decorator re-enables them on each call, so a filter cannot)."""
    show = warnings.showwarning
    if getattr(show, "quiet_avalanche", False):
        return

    def showwarning(message, category, *args, **kwargs):
        if not (issubclass(category, DeprecationWarning) and "removal in version" in str(message)):
            show(message, category, *args, **kwargs)
    showwarning.quiet_avalanche = True
    warnings.showwarning = showwarning
    warnings.filterwarnings("ignore", message="No loggers specified")


def run_setting(protocol, bm, seed, args, lr=None) -> Setting:
    """What every method of one run shares: the protocol's sizes and schedule, ``bm``'s classes,
    the command line's buffer size, device and guards; ``lr`` None: the protocol's rate."""
    p = PROTOCOLS[protocol]
    world = getattr(args, "world_size", 1)
    device = torch.device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    mem_size = args.buffer_size or p["mem_size"]
    return Setting(num_classes=len(bm.fine_to_coarse), nf=p["nf"], epochs=p["epochs"],
                   lr=p["lr"] if lr is None else lr, mem_size=mem_size,
                   batch_size=p["batch_size"], batch_size_mem=p["batch_size_mem"],
                   warmup_epochs=p["warmup_epochs"], sarl_alpha=sarl_alpha_for(mem_size, p["sarl_alpha"]),
                   fine_to_coarse=bm.fine_to_coarse,
                   seed=seed, device=device, lr_steps=p["lr_steps"],
                   guards=getattr(args, "guards", "on") == "on", compile=getattr(args, "compile", False),
                   ramp_iterations=getattr(args, "ramp_iterations", None), world_size=world)


def run_one(method, seed, protocol, args, threads=None, lr=None, validation=False):
    """One method, one seed: returns its results (the row of ``results.json``).

    ``seed`` is the run's seed (initial weights, data order, augmentation, buffer
    draws); the class order, training subset and evaluation subset follow
    ``args.class_order_seed``, or ``seed`` when that is None. ``validation``
    evaluates on held-out training images, once, after the last experience
    (learning-rate selection); otherwise on the test set after every experience.
    """
    world = getattr(args, "world_size", 1)
    if world > 1 and not rank_and_world()[1] > 1:
        return run_ranks(method, seed, protocol, args, threads, lr, validation)
    if threads is not None:
        torch.set_num_threads(threads)
    quiet_avalanche_deprecations()
    order_seed = seed if args.class_order_seed is None else args.class_order_seed
    bm, eval_bm = build_benchmark(protocol, order_seed, args, validation)
    seed_everything(seed)  # after the benchmark: nothing of the class-order seed reaches the run
    setting = run_setting(protocol, bm, seed, args, lr)
    lr = setting.lr
    extra = semantic_metrics(bm.fine_to_coarse)  # group agreement: only where the strategy has our buffer
    if getattr(bm, "imbalance_ratio", None) is not None:
        extra.append(FrequencyBucketAccuracy(bm.class_counts, bm.n_max))
    if getattr(bm, "crowded_classes", None) is not None:
        extra.append(SuperclassSkewAccuracy(bm.crowded_classes, bm.classes_kept))
    evaluator, _ = build_evaluator(None, extra_metrics=extra, interactive=False)
    strategy = METHODS[method].build(setting, evaluator)

    start = time.time()
    n_exp = len(bm.train_stream)
    if METHODS[method].joint:
        strategy.train(bm.train_stream)
        metrics = strategy.eval(bm.test_stream)
    else:
        for exp in bm.train_stream:
            strategy.train(exp)
            if exp.current_experience == n_exp - 1:
                metrics = strategy.eval(bm.test_stream)
            elif not validation:
                metrics = strategy.eval(eval_bm.test_stream)
    matrix = (100.0 * accuracy_matrix(evaluator)).tolist()  # in %, a row per evaluation
    result = final_results(metrics)
    for key, name in SEMANTIC_NAMES.items():
        result[key] = float(metrics[name]) if name in metrics else None
    for key, name in BUCKET_NAMES.items():  # in %, like the accuracy
        result[key] = 100.0 * float(metrics[name]) if name in metrics else None
    result.update(seconds=time.time() - start, accuracy_matrix=matrix, threads=torch.get_num_threads(),
                  lr=lr, class_order_seed=order_seed)
    history = evaluator.get_all_metrics()
    for key, name in {**REPLAY_HISTORY, **GUARD_HISTORY}.items():  # our replay buffers and guards only
        if name in history:
            result[key] = [float(v) for v in history[name][1]]
    guard = getattr(strategy, "guard", None)
    if guard is not None:
        result["clipped_steps_per_experience"] = list(guard.clipped_per_experience)
        result["rejected_teachers"] = list(getattr(strategy, "rejected_teachers", []))
    if METHODS[method].joint or validation:  # forgetting and BWT: undefined, or not measured
        result.update(forgetting=None, bwt=None)
    return result


def run_ranks(method, seed, protocol, args, threads=None, lr=None, validation=False) -> dict:
    """:func:`run_one` in ``args.world_size`` fresh processes joined by torch DDP; returns rank 0's
    results. A rank that fails stops the others at the collective timeout, and this raises
    naming the ranks that failed."""
    world = args.world_size
    threads = threads or max(1, _cpu_count() // world)
    context = fresh_processes()
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        ranks = [context.Process(target=_rank_main, args=(rank, world, port, folder, method, seed, protocol, args,
                                                           threads, lr, validation)) for rank in range(world)]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join()
        failed = [rank for rank, process in enumerate(ranks) if process.exitcode != 0]
        if failed:
            raise RuntimeError(f"{method} seed {seed} on {world} processes: rank(s) {failed} failed (exit codes "
                               f"{[ranks[r].exitcode for r in failed]}); see their tracebacks above")
        return json.loads((Path(folder) / "rank0.json").read_text())


def _rank_main(rank, world, port, folder, method, seed, protocol, args, threads, lr, validation):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    init_distributed(seed, backend="gloo" if args.device == "cpu" else None)
    result = run_one(method, seed, protocol, args, threads, lr, validation)
    if rank == 0:
        (Path(folder) / "rank0.json").write_text(json.dumps(dict(result, world_size=world)))
    torch.distributed.destroy_process_group()


def run_config(method, seed, lr, args) -> dict:
    """What a finished run's numbers depend on besides its method and seed: a stored run is
    reused only when all of it matches (see :func:`reusable`)."""
    p = PROTOCOLS[args.protocol]
    lt = args.scenario == "lt"
    return dict(protocol=args.protocol, lr=p["lr"] if lr is None else lr, scenario=args.scenario,
                imbalance_ratio=args.imbalance_ratio if lt else None,
                imbalance_order=args.imbalance_order if lt else None,
                **({"superclass_skew": args.superclass_skew} if args.scenario == "skew" else {}),
                class_order_seed=seed if args.class_order_seed is None else args.class_order_seed,
                **({"class_order": "natural"} if getattr(args, "class_order", "seeded") == "natural"
                   else {}),  # absent: drawn from the class-order seed
                buffer_size=args.buffer_size or p["mem_size"], guards=getattr(args, "guards", "on"),
                **({"compile": True} if getattr(args, "compile", False) else {}),  # absent: eager
                **({"ramp_iterations": ramp} if (ramp := getattr(args, "ramp_iterations", None)) is not None
                   else {}),  # absent: SARL-GELU's default
                **({"world_size": args.world_size} if getattr(args, "world_size", 1) > 1 else {}))  # absent: 1


def reusable(stored: dict, config: dict, where) -> bool:
    """True when ``stored`` (a row of results.json) was run with ``config``; a row for the same
    method and seed with other settings raises ``ValueError`` naming them (never a silent reuse).
    Rows written before the settings were recorded count as unknown settings."""
    saved = stored.get("config", {})
    differ = sorted(k for k in config if saved.get(k, "unrecorded") != config[k])
    # A setting recorded only when it is not its default (compile, ramp, world size) and absent from
    # what is asked: the stored run used another value than the default asked for now.
    extra = sorted(k for k in saved if k not in config)
    if not differ and not extra:
        return True
    detail = ", ".join([f"{k}: {saved.get(k, 'unrecorded')!r} stored vs {config[k]!r} asked" for k in differ]
                       + [f"{k}: {saved[k]!r} stored vs the default asked" for k in extra])
    raise ValueError(f"{stored['method']} seed {stored['seed']} in {where} was run with other settings "
                     f"({detail}); use another --out, or --overwrite to replace it")


def default_jobs(device: str, world_size: int = 1) -> int:
    """Two single-thread runs at a time on a CPU with two or more cores (a run of ``world_size``
    processes takes that many cores); one run on a GPU."""
    return 1 if device != "cpu" else max(1, min(2, _cpu_count() // world_size))


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fresh_processes():
    """The multiprocessing context of runs in other processes: each forked from a server that has
    imported this module and run nothing (multiprocessing's ``forkserver``). No state of one run
    (RNGs, threads, allocator) reaches another, as with ``spawn``, but the imports (Avalanche pulls
    in jax, wandb and matplotlib: about 10 s of CPU) are paid once, not once per run."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["benchmarks.compare"])
    return context


def run_all(todo, args, jobs, threads):
    """Yield ``(key, result)`` as runs finish, ``jobs`` at a time in fresh processes.

    ``todo``: ``(key, method, seed, options)`` with ``options`` the keyword
    arguments of :func:`run_one` (``lr``, ``validation``)."""
    if jobs == 1:
        for key, method, seed, options in todo:
            yield key, run_one(method, seed, args.protocol, args, threads, **options)
        return
    # one run per process: no state leaks from one run into the next
    pool = ProcessPoolExecutor(jobs, mp_context=fresh_processes(), max_tasks_per_child=1)
    try:
        pending = {pool.submit(run_one, method, seed, args.protocol, args, threads, **options): key
                   for key, method, seed, options in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a failed run stops the queue, not the running ones


def record_run(out: Path, row: dict, protocol: str) -> list:
    """Add ``row`` to ``out/results.json`` (replacing the same method and seed) and rewrite the
    table and that method's figures; returns every stored run.

    The file is re-read under an exclusive lock, so comparisons started separately with the same
    ``--out`` (say, one per core) add to it without dropping each other's runs."""
    order = {m: i for i, m in enumerate(METHODS)}
    with open(out / ".results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = out / "results.json"
        runs = json.loads(saved.read_text())["runs"] if saved.is_file() else []
        runs = [r for r in runs if (r["method"], r["seed"]) != (row["method"], row["seed"])] + [row]
        runs.sort(key=lambda r: (order[r["method"]], r["seed"]))
        write_outputs(out, runs, protocol, [row["method"]])
    return runs


def load_lr_choice(path: Path) -> dict:
    """``{method: lr}`` chosen by ``--select_lr`` and saved at ``path``, or {} if there is none."""
    return json.loads(path.read_text())["chosen"] if path.is_file() else {}


def lr_for(method: str, chosen: dict, pairing: str = "counterpart"):
    """``(lr, source)`` of a table run: with ``pairing="counterpart"`` a balanced variant takes
    its uniform counterpart's validated rate (``methods.LR_FROM``), so that a balanced-uniform
    pair differs in the sampler only; otherwise (and for other methods) its own; the
    protocol's rate (None) when nothing was chosen."""
    base = LR_FROM.get(method) if pairing == "counterpart" else None
    if base is not None and base in chosen:
        return chosen[base], f"validation ({base})"
    if method in chosen:
        return chosen[method], "validation"
    return None, "protocol default"


def choose_lr(selection_runs) -> dict:
    """Per method, the grid rate with the best final validation accuracy (ties: the smaller rate)."""
    best = {}
    for r in sorted(selection_runs, key=lambda r: r["lr"]):
        if r["method"] not in best or r["accuracy"] > best[r["method"]]["accuracy"]:
            best[r["method"]] = r
    return {m: r["lr"] for m, r in best.items()}


def select_lr(args, methods, jobs, threads, path: Path):
    """Run every method at every rate of ``args.lr_grid`` on one seed, scored on held-out
    training images; save the runs and the choice at ``path`` (re-runs skip finished pairs)."""
    p = PROTOCOLS[args.protocol]
    seed = args.seeds[0] if args.seeds else p["seeds"][0]
    saved = json.loads(path.read_text()) if path.is_file() else {}
    ramp = getattr(args, "ramp_iterations", None)
    if saved and saved.get("ramp_iterations") != ramp:
        raise ValueError(f"{path} holds runs with ramp_iterations {saved.get('ramp_iterations')!r}, asked "
                         f"{ramp!r}: use another --lr_selection")
    runs = [r for r in saved.get("runs", []) if r["seed"] == seed]
    done = {(r["method"], r["lr"]) for r in runs}
    todo = [((m, lr), m, seed, dict(lr=lr, validation=True))
            for m in methods for lr in args.lr_grid if (m, lr) not in done]

    def save():
        chosen = choose_lr(runs)
        out = dict(protocol=args.protocol, seed=seed, grid=sorted({*args.lr_grid, *saved.get("grid", [])}),
                   val_per_class=p["val_per_class"], class_order_seed=args.class_order_seed, ramp_iterations=ramp,
                   runs=runs, chosen={m: chosen[m] for m in METHODS if m in chosen})
        path.write_text(json.dumps(out, indent=1))
        return out
    for (method, lr), result in run_all(todo, args, jobs, threads):
        runs.append(dict(method=method, seed=seed, jobs=jobs, **result))
        save()
        print(f"select lr: {method} lr {lr}: validation acc {result['accuracy']:.2f}% "
              f"({result['seconds']:.0f} s)", flush=True)
    out = save()
    print(markdown_lr_selection(out))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="quick")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(CORE))
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--buffer_size", type=int, default=None)
    parser.add_argument("--class_order_seed", type=int, default=None,
                        help="seed of the class order, training and evaluation subsets (default: the run's seed)")
    parser.add_argument("--class_order", choices=("seeded", "natural"), default="seeded",
                        help="natural: classes 0..99 in order, as SARL's authors train (the class-order seed "
                             "then sets the training and evaluation subsets only)")
    parser.add_argument("--select_lr", action="store_true",
                        help="choose each method's learning rate over --lr_grid on held-out training "
                             "images (first seed only) and save it to --lr_selection; no test-set runs")
    parser.add_argument("--lr_grid", nargs="+", type=float, default=list(LR_GRID))
    parser.add_argument("--lr_selection", default=None,
                        help="chosen learning rates (default results/<protocol>/lr_selection.json); "
                             "methods without a choice there use the protocol's lr")
    parser.add_argument("--lr_pairing", choices=("counterpart", "own"), default="counterpart",
                        help="balanced variants train at their uniform counterpart's chosen rate (default) "
                             "or at their own")
    parser.add_argument("--scenario", choices=("split", "lt", "skew"), default="split",
                        help="lt: long-tailed Split CIFAR-100 (CIFAR-100-LT counts, cap 500 per class); "
                             "skew: superclass-skewed Split CIFAR-100 (--superclass_skew crowded superclasses)")
    parser.add_argument("--superclass_skew", type=int, default=10,
                        help="crowded superclasses of --scenario skew (10: 60 classes, 50 of them crowded)")
    parser.add_argument("--imbalance_ratio", type=float, default=0.01)
    parser.add_argument("--imbalance_order", choices=("shuffled", "ordered"), default="shuffled")
    parser.add_argument("--guards", choices=("on", "off"), default="on",
                        help="SARL-GELU's training guards (gradient clipping, warm-up ramp, teacher check) at "
                             "their defaults, or off as in SARL; the finite-loss check is always on")
    parser.add_argument("--ramp_iterations", type=int, default=None,
                        help="SARL-GELU's warm-up ramp in iterations (default: SARLGelu's RAMP_ITERATIONS)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every method's network")
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--world_size", type=int, default=1,
                        help="torch DDP processes per run (gloo on a CPU, nccl on GPUs); our plugin's and "
                             "SARL-GELU's rows only; batch sizes stay global")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at a time (default: 2 on a CPU with 2+ cores, 1 on a GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: the cores shared out over --jobs x --world_size); "
                             "1 when other comparisons share the machine")
    parser.add_argument("--out", default=None, help="default results/<protocol>")
    parser.add_argument("--overwrite", action="store_true", help="re-run runs already in results.json")
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else default_jobs(args.device, args.world_size)
    if jobs < 1:
        parser.error(f"--jobs must be >= 1, got {jobs}")
    if args.world_size < 1:
        parser.error(f"--world_size must be >= 1, got {args.world_size}")
    if args.world_size > 1:
        single = [m for m in args.methods if not METHODS[m].distributed]
        if single:
            parser.error(f"--world_size {args.world_size}: {single} run in one process only (Avalanche's replay "
                         "loaders give each rank its own replay batch); use our plugin's or SARL-GELU's rows")
        p = PROTOCOLS[args.protocol]
        for name in ("batch_size", "batch_size_mem"):
            if p[name] % args.world_size:
                parser.error(f"--world_size {args.world_size} does not divide the {args.protocol} protocol's "
                             f"{name} {p[name]}")
    threads = args.threads or max(1, _cpu_count() // (jobs * args.world_size))
    default_out = {"split": f"results/{args.protocol}", "lt": f"results/{args.protocol}_lt_{args.imbalance_order}",
                   "skew": f"results/{args.protocol}_skew{args.superclass_skew}"}[args.scenario]
    out = Path(args.out or default_out)
    out.mkdir(parents=True, exist_ok=True)
    lr_path = Path(args.lr_selection) if args.lr_selection else Path(f"results/{args.protocol}/lr_selection.json")
    start = time.time()
    if args.select_lr:
        lr_path.parent.mkdir(parents=True, exist_ok=True)
        select_lr(args, args.methods, jobs, threads, lr_path)
        print(f"learning-rate selection in {time.time() - start:.0f} s wall-clock, {jobs} at a time")
        return None
    chosen = load_lr_choice(lr_path)
    seeds = args.seeds if args.seeds is not None else PROTOCOLS[args.protocol]["seeds"]
    saved = out / "results.json"
    runs = json.loads(saved.read_text())["runs"] if saved.is_file() else []
    todo, configs = [], {}
    for seed in seeds:
        for method in args.methods:
            lr = lr_for(method, chosen, args.lr_pairing)[0]
            configs[method, seed] = run_config(method, seed, lr, args)
            stored = [r for r in runs if (r["method"], r["seed"]) == (method, seed)]
            if stored and not args.overwrite and reusable(stored[0], configs[method, seed], saved):
                print(f"{method} seed {seed}: already in {saved}, skipped")
            else:
                todo.append(((method, seed), method, seed, dict(lr=lr)))
    for (method, seed), result in run_all(todo, args, jobs, threads):
        row = dict(method=method, seed=seed, jobs=jobs, lr_source=lr_for(method, chosen, args.lr_pairing)[1],
                   config=configs[method, seed], **result)
        runs = record_run(out, row, args.protocol)  # after every run: an interruption loses only running runs
        forgetting = result["forgetting"]
        print(f"{method} seed {seed}: acc {result['accuracy']:.2f}% forgetting "
              f"{'n/a' if forgetting is None else f'{forgetting:.2f}%'} ({result['seconds']:.0f} s)", flush=True)
    if runs and not todo:
        write_outputs(out, runs, args.protocol)  # nothing ran: still refresh the table and plots
    print((out / "table.md").read_text() if runs else "no runs")
    print(f"{len(todo)} runs in {time.time() - start:.0f} s wall-clock, {jobs} at a time, "
          f"{threads} torch thread(s) each")
    return runs


if __name__ == "__main__":
    main()
