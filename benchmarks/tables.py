"""Tables, plots and paired differences of comparison results (``results.json`` runs).

Used by ``compare.py`` (after every finished run) and ``report.py`` (across folders).
"""
import json
import statistics
from pathlib import Path

import torch

from avalanche_balanced.figures import accuracy_matrix_figure
from avalanche_balanced.protocols import PROTOCOLS, sarl_alpha_for
from benchmarks.methods import DESCRIPTIONS, METHODS

SUMMARY_KEYS = ("accuracy", "forgetting", "bwt", "semantic_consistency", "superclass_error_share",
                "group_agreement", "seconds", "head_accuracy", "medium_accuracy", "tail_accuracy",
                "crowded_accuracy", "lone_accuracy")
# Compared seed by seed (same class order, data and initialisation): balanced vs uniform
# replay, and our plugin's uniform mode vs Avalanche's ER (the drop-in parity check).
PAIRS = (("plugin_balanced", "plugin_uniform"), ("sarl_balanced", "sarl_uniform"), ("plugin_uniform", "er"),
         # long-tailed streams: class balancing alone, and semantic vs class balancing
         ("plugin_class_balanced", "plugin_uniform"), ("er_class_balanced", "er"),
         ("plugin_balanced", "plugin_class_balanced"), ("plugin_balanced", "er_class_balanced"),
         # class-balanced storage: semantic vs uniform draws, and against Avalanche's ClassBalancedBuffer
         ("plugin_class_storage_balanced", "plugin_class_storage_uniform"),
         ("plugin_class_storage_balanced", "er_class_balanced"),
         # issue 20: oracle groups, exact shares, group-balanced storage, ER-ACE's loss on ER's storage
         ("plugin_superclass_groups", "plugin_uniform"), ("plugin_class_share", "plugin_uniform"),
         ("plugin_group_share", "plugin_uniform"), ("plugin_group_storage_uniform", "plugin_uniform"),
         ("plugin_group_storage_balanced", "plugin_uniform"), ("plugin_balanced", "plugin_class_storage_uniform"),
         ("er_ace_reservoir", "er"),
         # the plugin's defaults (class-balanced storage, uniform draws) against reservoir storage;
         # uniform draws in passes against independent ones and against ClassBalancedBuffer ER
         ("plugin_class_storage_uniform", "plugin_uniform"), ("plugin_class_storage_uniform", "er_class_balanced"),
         ("plugin_class_storage_passes", "plugin_class_storage_uniform"),
         ("plugin_class_storage_passes", "er_class_balanced"))
PAIRED_KEYS = (("accuracy", "final acc.", 2), ("forgetting", "forgetting", 2),
               ("semantic_consistency", "sem. consistency", 3))
BUCKET_KEYS = (("head_accuracy", "head acc.", 2), ("medium_accuracy", "medium acc.", 2),
               ("tail_accuracy", "tail acc.", 2),  # long-tailed streams
               ("crowded_accuracy", "crowded acc.", 2), ("lone_accuracy", "lone acc.", 2))  # superclass-skewed


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
    """Per pair (default ``PAIRS``) with common seeds: the seeds and, per key of ``PAIRED_KEYS``
    (and of ``BUCKET_KEYS`` where both methods have them: long-tailed runs), first minus second by seed."""
    out = {}
    for first, second in pairs:
        by_seed = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in (first, second)}
        seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
        if not seeds:
            continue
        row = dict(seeds=seeds)
        for key, _, _ in PAIRED_KEYS + BUCKET_KEYS:
            pairs_of_values = [(by_seed[first][s].get(key), by_seed[second][s].get(key)) for s in seeds]
            if all(a is not None and b is not None for a, b in pairs_of_values):
                row[key] = [a - b for a, b in pairs_of_values]
        out[f"{first} - {second}"] = row
    return out


def markdown_paired(paired):
    keys = [k for k in PAIRED_KEYS + BUCKET_KEYS if all(k[0] in row for row in paired.values())]
    lines = ["Differences paired by seed (first minus second; mean ± std of the differences; "
             "per-seed values in brackets):", "",
             "| difference | seeds | " + " | ".join(f"Δ {label}" for _, label, _ in keys) + " |",
             "|" + "---|" * (2 + len(keys))]
    for name, row in paired.items():
        cells = []
        for key, _, digits in keys:
            values = row[key]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):+.{digits}f} ± {spread:.{digits}f} "
                         f"[{', '.join(f'{v:+.{digits}f}' for v in values)}]")
        lines.append(f"| {name} | {','.join(map(str, row['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(table, protocol, settings=None):
    buckets = [k for k in BUCKET_KEYS if any(k[0] in row for row in table.values())]
    head = ("| method | lr | seeds | final acc. (%) | forgetting (%) | BWT (%) | sem. consistency | "
            "superclass err. share | group agreement (ARI) | seconds |"
            + "".join(f" {label} (%) |" for _, label, _ in buckets))
    settings = settings or PROTOCOLS[protocol]
    lines = [f"Protocol `{protocol}`, buffer {settings['mem_size']} (SARL's alpha {settings['sarl_alpha']}); "
             "mean ± std over the listed seeds; lr: each method's SGD rate "
             "(chosen on held-out training images where `lr_selection.json` exists).", "", head,
             "|" + "---|" * (10 + len(buckets))]

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
                     + "".join(f" {cell(row, key, digits)} |" for key, _, digits in buckets))
    lines += ["", "Methods:"] + [f"- `{m}`: {DESCRIPTIONS[m]}" for m in table]
    return "\n".join(lines) + "\n"


def run_settings(protocol, runs) -> dict:
    """The protocol's settings as ``runs`` used them: the buffer size each run recorded
    (``--buffer_size``) and SARL's replay-logit weight that follows from it (:func:`sarl_alpha_for`),
    instead of the protocol's defaults; a list where the runs differ."""
    settings = dict(PROTOCOLS[protocol])
    sizes = sorted({r.get("config", {}).get("buffer_size", settings["mem_size"]) for r in runs})
    alphas = sorted({sarl_alpha_for(size, settings["sarl_alpha"]) for size in sizes})
    if sizes:
        settings["mem_size"] = sizes[0] if len(sizes) == 1 else sizes
        settings["sarl_alpha"] = alphas[0] if len(alphas) == 1 else alphas
    return settings


def write_outputs(out: Path, runs, protocol, plot_methods=None):
    """results.json, table.md, the bar plot of final accuracy, and the accuracy-matrix figure of
    every method in ``plot_methods`` (all when None: after one run, only its method changed)."""
    table, paired = summarise(runs), paired_differences(runs)
    settings = run_settings(protocol, runs)
    (out / "results.json").write_text(json.dumps({"protocol": protocol, "settings": settings,
                                                  "runs": runs, "summary": table, "paired": paired}, indent=1))
    text = markdown_table(table, protocol, settings)
    (out / "table.md").write_text(text + ("\n" + markdown_paired(paired) if paired else ""))
    for method in table if plot_methods is None else [m for m in table if m in plot_methods]:
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
