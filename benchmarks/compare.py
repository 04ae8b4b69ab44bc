"""Balanced vs uniform replay, beside Avalanche's own replay strategies, on Split CIFAR-100.

    python benchmarks/compare.py --protocol quick --select_lr     # choose each method's lr (validation)
    python benchmarks/compare.py --protocol quick                 # core table, seeds 0 1 2
    python benchmarks/compare.py --protocol quick --class_order_seed 0 --seeds 0 1 2 \
        --methods er er_ace sarl_uniform sarl_balanced --out results/quick_fixed_order
    python benchmarks/compare.py --protocol paper --device cuda   # SARL's setting, for a GPU

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

Writes ``results/<protocol>/results.json`` after every finished run (an
interrupted comparison keeps what it finished, and a re-run skips finished
runs unless ``--overwrite``), ``table.md``, and PNG plots.
"""
import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods import CORE, DESCRIPTIONS, LR_FROM, METHODS, Setting  # noqa: E402

from avalanche_balanced.data import preserved_global_rng, split_cifar100, with_test_subset  # noqa: E402
from avalanche_balanced.experiment import build_evaluator, final_results, seed_everything  # noqa: E402
from avalanche_balanced.figures import accuracy_matrix_figure  # noqa: E402
from avalanche_balanced.long_tail import BUCKETS, FrequencyBucketAccuracy, long_tail_counts  # noqa: E402
from avalanche_balanced.metrics import semantic_metrics  # noqa: E402

PROTOCOLS = {
    # CPU: 5 experiences, reduced ResNet-18, 100 images per class, 3 epochs, buffer 500.
    # Evaluations before the last one use 20 test images per class (eval_per_class);
    # learning rates are chosen on 50 held-out training images per class (val_per_class).
    "quick": dict(n_experiences=5, nf=20, per_class=100, epochs=3, lr=0.03, lr_steps=None, mem_size=500,
                  batch_size=32, batch_size_mem=32, warmup_epochs=1, sarl_alpha=0.2, seeds=[0, 1, 2],
                  eval_per_class=20, val_per_class=50),
    # SARL's setting (a GPU): full ResNet-18, all images, 50 epochs, MultiStepLR at 35 and 45.
    "paper": dict(n_experiences=5, nf=64, per_class=None, epochs=50, lr=0.03, lr_steps=[35, 45], mem_size=500,
                  batch_size=32, batch_size_mem=32, warmup_epochs=5, sarl_alpha=0.2, seeds=[1, 3, 5],
                  eval_per_class=None, val_per_class=50),
    # Synthetic smoke setting for tests: 20 classes of 8x8 noise images, seconds per method.
    # nf 8: channels-last convolutions with fewer channels crash single-threaded backward passes
    # in the pinned torch 2.14.1 CPU build (heap corruption).
    "tiny": dict(n_experiences=5, nf=8, per_class=6, epochs=1, lr=0.05, lr_steps=None, mem_size=20,
                 batch_size=8, batch_size_mem=8, warmup_epochs=0, sarl_alpha=0.2, seeds=[0],
                 eval_per_class=1, val_per_class=3),
}
LR_GRID = (0.01, 0.03, 0.1)
SUMMARY_KEYS = ("accuracy", "forgetting", "bwt", "semantic_consistency", "superclass_error_share",
                "group_agreement", "seconds", "head_accuracy", "medium_accuracy", "tail_accuracy")
# Long-tailed streams (--scenario lt): accuracy on the test images of head, medium and tail classes.
BUCKET_NAMES = {f"{b}_accuracy": f"{b.capitalize()}Accuracy_Stream/eval_phase/test_stream" for b in BUCKETS}
# Compared seed by seed (same class order, data and initialisation): balanced vs uniform
# replay, and our plugin's uniform mode vs Avalanche's ER (the drop-in parity check).
PAIRS = (("plugin_balanced", "plugin_uniform"), ("sarl_balanced", "sarl_uniform"), ("plugin_uniform", "er"))
PAIRED_KEYS = (("accuracy", "final acc.", 2), ("forgetting", "forgetting", 2),
               ("semantic_consistency", "sem. consistency", 3))
# Logged by BalancedReplayPlugin at the end of every experience.
REPLAY_HISTORY = {
    "current_share": "BalancedReplay/current_share",
    "effective_sample_size": "BalancedReplay/effective_sample_size",
    "group_agreement_per_experience": "GroupAgreement_Stream/eval_phase/test_stream",
}
SEMANTIC_NAMES = {
    "semantic_consistency": "SemanticConsistency_Stream/eval_phase/test_stream",
    "superclass_error_share": "SuperclassErrorShare_Stream/eval_phase/test_stream",
    "group_agreement": "GroupAgreement_Stream/eval_phase/test_stream",
}


def tiny_benchmark(seed, validation=False, imbalance_ratio=None, imbalance_order="shuffled"):
    """20 classes in 5 superclasses of 4, 8x8 images with a class-dependent colour.

    ``validation``: the test stream is another draw from the training distribution
    (the stand-in for held-out training images). ``imbalance_ratio``: long-tailed training
    counts under a cap of 6 per class (see :func:`avalanche_balanced.long_tail.long_tail_counts`)."""
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
    if imbalance_ratio is not None:
        order = torch.randperm(20, generator=g).tolist()
        counts = long_tail_counts(order, 6, imbalance_ratio, imbalance_order, g)
        rank = torch.arange(120) % 6  # split(6) repeats each class 6 times in a row
        train = train.subset(torch.nonzero(rank < counts[torch.arange(20).repeat_interleave(6)]).squeeze(1).tolist())
    with preserved_global_rng():  # nc_benchmark re-seeds torch's global RNG
        bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=seed, fixed_class_order=order)
    bm.fine_to_coarse = torch.arange(20) // 4
    bm.class_counts, bm.n_max = counts, 6
    bm.imbalance_ratio, bm.imbalance_order = imbalance_ratio, imbalance_order
    return bm


def build_benchmark(protocol, order_seed, args, validation=False):
    """The benchmark of one run (class order, training subset and evaluation set from ``order_seed``)
    and the benchmark its intermediate evaluations use."""
    p = PROTOCOLS[protocol]
    lt = getattr(args, "scenario", "split") == "lt"
    if protocol == "tiny":
        bm = tiny_benchmark(order_seed, validation, imbalance_ratio=args.imbalance_ratio if lt else None,
                            imbalance_order=args.imbalance_order if lt else "shuffled")
    else:
        # Long-tailed (--scenario lt): CIFAR-100-LT counts under the standard cap of 500 per class.
        bm = split_cifar100(p["n_experiences"], root=args.data_root, seed=order_seed,
                            per_class=None if lt else p["per_class"],
                            validation_per_class=p["val_per_class"] if validation else None,
                            imbalance_ratio=args.imbalance_ratio if lt else None,
                            imbalance_order=args.imbalance_order if lt else "shuffled",
                            download=True)  # only when no local copy is found
    if validation or p["eval_per_class"] is None:
        return bm, bm
    return bm, with_test_subset(bm, p["eval_per_class"], order_seed)


def accuracy_row(metrics, n_experiences):
    return [100.0 * float(metrics.get(f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}", math.nan))
            for j in range(n_experiences)]


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


def run_one(method, seed, protocol, args, threads=None, lr=None, validation=False):
    """One method, one seed: returns its results (the row of ``results.json``).

    ``seed`` is the run's seed (initial weights, data order, augmentation, buffer
    draws); the class order, training subset and evaluation subset follow
    ``args.class_order_seed``, or ``seed`` when that is None. ``validation``
    evaluates on held-out training images, once, after the last experience
    (learning-rate selection); otherwise on the test set after every experience.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    quiet_avalanche_deprecations()
    p = PROTOCOLS[protocol]
    order_seed = seed if args.class_order_seed is None else args.class_order_seed
    bm, eval_bm = build_benchmark(protocol, order_seed, args, validation)
    seed_everything(seed)  # after the benchmark: nothing of the class-order seed reaches the run
    lr = p["lr"] if lr is None else lr
    setting = Setting(num_classes=len(bm.fine_to_coarse), nf=p["nf"], epochs=p["epochs"], lr=lr,
                      mem_size=args.buffer_size or p["mem_size"], batch_size=p["batch_size"],
                      batch_size_mem=p["batch_size_mem"], warmup_epochs=p["warmup_epochs"],
                      sarl_alpha=p["sarl_alpha"], fine_to_coarse=bm.fine_to_coarse, seed=seed,
                      device=torch.device(args.device), lr_steps=p["lr_steps"])
    strategy = None

    class Source:  # the semantic metrics read the strategy's buffer, resolved at eval time
        @property
        def storage_policy(self):
            own = getattr(strategy, "buffer", None)
            if own is not None:
                return own
            return next(p.buffer for p in strategy.plugins if hasattr(p, "draw"))

    has_balanced_buffer = method.startswith(("plugin", "sarl"))
    extra = semantic_metrics(bm.fine_to_coarse, buffer_source=Source() if has_balanced_buffer else None)
    if getattr(bm, "imbalance_ratio", None) is not None:
        extra.append(FrequencyBucketAccuracy(bm.class_counts, bm.n_max))
    evaluator, _ = build_evaluator(None, extra_metrics=extra, interactive=False)
    strategy = METHODS[method](setting, evaluator)

    start, matrix = time.time(), []
    n_exp = len(bm.train_stream)
    if method == "joint":
        strategy.train(bm.train_stream)
        metrics = strategy.eval(bm.test_stream)
        matrix.append(accuracy_row(metrics, n_exp))
    else:
        for exp in bm.train_stream:
            strategy.train(exp)
            if exp.current_experience == n_exp - 1:
                metrics = strategy.eval(bm.test_stream)
            elif not validation:
                metrics = strategy.eval(eval_bm.test_stream)
            else:
                continue
            matrix.append(accuracy_row(metrics, n_exp))
    result = final_results(metrics)
    for key, name in SEMANTIC_NAMES.items():
        result[key] = float(metrics[name]) if name in metrics else None
    for key, name in BUCKET_NAMES.items():  # in %, like the accuracy
        result[key] = 100.0 * float(metrics[name]) if name in metrics else None
    result.update(seconds=time.time() - start, accuracy_matrix=matrix, threads=torch.get_num_threads(),
                  lr=lr, class_order_seed=order_seed)
    history = evaluator.get_all_metrics()
    for key, name in REPLAY_HISTORY.items():  # per experience, for our replay buffers only
        if name in history:
            result[key] = [float(v) for v in history[name][1]]
    if method == "joint" or validation:  # forgetting and BWT: undefined, or not measured
        result.update(forgetting=None, bwt=None)
    return result


def summarise(runs):
    """Mean and standard deviation over seeds, per method."""
    table = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row = {"seeds": [r["seed"] for r in mine], "lr": sorted({r["lr"] for r in mine})}
        for key in SUMMARY_KEYS:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                row[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        table[method] = row
    return table


def paired_differences(runs, pairs=PAIRS):
    """Per pair (default ``PAIRS``) with common seeds: the seeds and, per key, first minus second by seed."""
    out = {}
    for first, second in pairs:
        by_seed = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in (first, second)}
        seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
        if seeds:
            out[f"{first} - {second}"] = dict(seeds=seeds, **{
                key: [by_seed[first][s][key] - by_seed[second][s][key] for s in seeds]
                for key, _, _ in PAIRED_KEYS})
    return out


def markdown_paired(paired):
    lines = ["Differences paired by seed (first minus second; mean ± std of the differences; "
             "per-seed values in brackets):", "",
             "| difference | seeds | " + " | ".join(f"Δ {label}" for _, label, _ in PAIRED_KEYS) + " |",
             "|" + "---|" * (2 + len(PAIRED_KEYS))]
    for name, row in paired.items():
        cells = []
        for key, _, digits in PAIRED_KEYS:
            values = row[key]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):+.{digits}f} ± {spread:.{digits}f} "
                         f"[{', '.join(f'{v:+.{digits}f}' for v in values)}]")
        lines.append(f"| {name} | {','.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(table, protocol):
    buckets = any("head_accuracy" in row for row in table.values())
    head = ("| method | lr | seeds | final acc. (%) | forgetting (%) | BWT (%) | sem. consistency | "
            "superclass err. share | group agreement (ARI) | seconds |")
    if buckets:
        head += " head acc. (%) | medium acc. (%) | tail acc. (%) |"
    lines = [f"Protocol `{protocol}`; mean ± std over the listed seeds; lr: each method's SGD rate "
             "(chosen on held-out training images where `lr_selection.json` exists).", "", head,
             "|" + "---|" * (13 if buckets else 10)]

    def cell(row, key, digits):
        if key not in row:
            return "n/a"
        mean, std = row[key]
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(row["seeds"]) > 1 else f"{mean:.{digits}f}"
    for method, row in table.items():
        lines.append(f"| {method} | {', '.join(map(str, row['lr']))} | {','.join(map(str, row['seeds']))} | "
                     f"{cell(row, 'accuracy', 2)} | "
                     f"{cell(row, 'forgetting', 2)} | {cell(row, 'bwt', 2)} | "
                     f"{cell(row, 'semantic_consistency', 3)} | {cell(row, 'superclass_error_share', 3)} | "
                     f"{cell(row, 'group_agreement', 3)} | {cell(row, 'seconds', 0)} |"
                     + (f" {cell(row, 'head_accuracy', 2)} | {cell(row, 'medium_accuracy', 2)} | "
                        f"{cell(row, 'tail_accuracy', 2)} |" if buckets else ""))
    lines += ["", "Methods:"] + [f"- `{m}`: {DESCRIPTIONS[m]}" for m in table]
    return "\n".join(lines) + "\n"


def write_outputs(out, runs, protocol):
    table, paired = summarise(runs), paired_differences(runs)
    (out / "results.json").write_text(json.dumps({"protocol": protocol, "settings": PROTOCOLS[protocol],
                                                  "runs": runs, "summary": table, "paired": paired}, indent=1))
    text = markdown_table(table, protocol)
    (out / "table.md").write_text(text + ("\n" + markdown_paired(paired) if paired else ""))
    for method in table:
        mats = torch.tensor([r["accuracy_matrix"] for r in runs if r["method"] == method])
        if mats.shape[1] > 1:
            fig = accuracy_matrix_figure(mats.mean(0).numpy() / 100.0,  # the figure's scale is [0, 1]
                                         title=f"{method}: accuracy, mean over seeds")
            fig.savefig(out / f"accuracy_matrix_{method}.png", dpi=80)
    _bar_plot(table, out / "final_accuracy.png")


def _bar_plot(table, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    names = list(table)
    means = [table[m]["accuracy"][0] for m in names]
    stds = [table[m]["accuracy"][1] for m in names]
    ax.bar(range(len(names)), means, yerr=stds, color="tab:blue", capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("final average accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def default_jobs(device: str) -> int:
    """Two single-thread runs at a time on a CPU with two or more cores; one run on a GPU."""
    return 1 if device != "cpu" else min(2, _cpu_count())


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_all(todo, args, jobs, threads):
    """Yield ``(key, result)`` as runs finish, ``jobs`` at a time in fresh processes.

    ``todo``: ``(key, method, seed, options)`` with ``options`` the keyword
    arguments of :func:`run_one` (``lr``, ``validation``)."""
    if jobs == 1:
        for key, method, seed, options in todo:
            yield key, run_one(method, seed, args.protocol, args, threads, **options)
        return
    # spawn, one run per process: no state (RNGs, threads, allocator) leaks from one run into the next.
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    try:
        pending = {pool.submit(run_one, method, seed, args.protocol, args, threads, **options): key
                   for key, method, seed, options in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield pending.pop(future), future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a failed run stops the queue, not the running ones


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


def markdown_lr_selection(saved) -> str:
    grid = saved["grid"]
    lines = [f"Learning rates chosen on held-out training images (final validation accuracy %, "
             f"seed {saved['seed']}, {saved['val_per_class']} images per class):", "",
             "| method | " + " | ".join(f"lr {lr}" for lr in grid) + " | chosen |",
             "|" + "---|" * (len(grid) + 2)]
    for method, lr in saved["chosen"].items():
        acc = {r["lr"]: r["accuracy"] for r in saved["runs"] if r["method"] == method}
        lines.append(f"| {method} | " + " | ".join(f"{acc[g]:.2f}" if g in acc else "-" for g in grid)
                     + f" | {lr} |")
    return "\n".join(lines) + "\n"


def select_lr(args, methods, jobs, threads, path: Path):
    """Run every method at every rate of ``args.lr_grid`` on one seed, scored on held-out
    training images; save the runs and the choice at ``path`` (re-runs skip finished pairs)."""
    p = PROTOCOLS[args.protocol]
    seed = args.seeds[0] if args.seeds else p["seeds"][0]
    saved = json.loads(path.read_text()) if path.is_file() else {}
    runs = [r for r in saved.get("runs", []) if r["seed"] == seed]
    done = {(r["method"], r["lr"]) for r in runs}
    todo = [((m, lr), m, seed, dict(lr=lr, validation=True))
            for m in methods for lr in args.lr_grid if (m, lr) not in done]

    def save():
        chosen = choose_lr(runs)
        out = dict(protocol=args.protocol, seed=seed, grid=sorted({*args.lr_grid, *saved.get("grid", [])}),
                   val_per_class=p["val_per_class"], class_order_seed=args.class_order_seed,
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
    parser.add_argument("--scenario", choices=("split", "lt"), default="split",
                        help="lt: long-tailed Split CIFAR-100 (CIFAR-100-LT counts, cap 500 per class)")
    parser.add_argument("--imbalance_ratio", type=float, default=0.01)
    parser.add_argument("--imbalance_order", choices=("shuffled", "ordered"), default="shuffled")
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at a time (default: 2 on a CPU with 2+ cores, 1 on a GPU)")
    parser.add_argument("--out", default=None, help="default results/<protocol>")
    parser.add_argument("--overwrite", action="store_true", help="re-run runs already in results.json")
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else default_jobs(args.device)
    if jobs < 1:
        parser.error(f"--jobs must be >= 1, got {jobs}")
    threads = max(1, _cpu_count() // jobs)
    default_out = (f"results/{args.protocol}" if args.scenario == "split"
                   else f"results/{args.protocol}_lt_{args.imbalance_order}")
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
    todo = []
    for seed in seeds:
        for method in args.methods:
            if any((r["method"], r["seed"]) == (method, seed) for r in runs) and not args.overwrite:
                print(f"{method} seed {seed}: already in {saved}, skipped")
            else:
                todo.append(((method, seed), method, seed, dict(lr=lr_for(method, chosen, args.lr_pairing)[0])))
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, seed), result in run_all(todo, args, jobs, threads):
        runs = [r for r in runs if (r["method"], r["seed"]) != (method, seed)]
        runs.append(dict(method=method, seed=seed, jobs=jobs, lr_source=lr_for(method, chosen, args.lr_pairing)[1],
                         **result))
        runs.sort(key=lambda r: (order[r["method"]], r["seed"]))
        write_outputs(out, runs, args.protocol)  # after every run: an interruption loses only running runs
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
