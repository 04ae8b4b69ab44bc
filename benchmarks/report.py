"""Paired differences and per-experience replay diagnostics across comparison folders.

    python -m benchmarks.report results/quick_gpu_v2 results/quick_gpu_v2_fixes \\
        --pairs sarl_balanced:sarl_uniform sarl_legacy_share:sarl_legacy

    python -m benchmarks.report results/quick_cpu_default_split_ddp2 results/quick_cpu_default_split --tag_folders \
        --pairs plugin_class_storage_uniform@0:plugin_class_storage_uniform@1   # 2 processes vs 1

Merges the runs of every folder's ``results.json`` (a method and seed present twice is an
error: the folders must hold disjoint runs; with ``--tag_folders`` every method is named
``method@i`` after its folder's position instead, to pair a method with itself), prints the paired differences of ``--pairs``
(first minus second, by seed, over their common seeds) and, per method, the mean over seeds
of the current experience's share of replay, the effective sample size and the group
agreement after each experience.
"""
import argparse
import json
import statistics
from pathlib import Path

from benchmarks.tables import markdown_paired, paired_differences

HISTORY = (("current_share", "current share of replay"), ("effective_sample_size", "effective sample size"),
           ("group_agreement_per_experience", "group agreement (ARI)"))


def load_runs(folders, tag_folders: bool = False):
    runs, seen = [], set()
    for i, folder in enumerate(folders):
        for run in json.loads((Path(folder) / "results.json").read_text())["runs"]:
            if tag_folders:
                run = dict(run, method=f"{run['method']}@{i}")
            key = (run["method"], run["seed"])
            if key in seen:
                raise ValueError(f"{key} appears in more than one folder")
            seen.add(key)
            runs.append(run)
    return runs


def markdown_history(runs, methods):
    lines = ["Per experience, mean over seeds:", "",
             "| method | seeds | " + " | ".join(label for _, label in HISTORY) + " |", "|---|---|---|---|---|"]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        cells = []
        for key, _ in HISTORY:
            rows = [r[key] for r in mine if r.get(key)]
            cells.append(" ".join(f"{statistics.mean(v):.2f}" for v in zip(*rows)) if rows else "n/a")
        lines.append(f"| {method} | {','.join(str(r['seed']) for r in mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--pairs", nargs="+", default=[], help="first:second method names")
    parser.add_argument("--history", nargs="*", default=None, help="methods (default: all)")
    parser.add_argument("--tag_folders", action="store_true", help="name each run's method method@<folder index>")
    args = parser.parse_args(argv)
    runs = load_runs(args.folders, args.tag_folders)
    pairs = [tuple(p.split(":")) for p in args.pairs]
    if pairs:
        print(markdown_paired(paired_differences(runs, pairs)))
    methods = args.history if args.history is not None else list(dict.fromkeys(r["method"] for r in runs))
    print(markdown_history(runs, methods))


if __name__ == "__main__":
    main()
