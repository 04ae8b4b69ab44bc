"""Do two comparison folders hold the same numbers? (A refactor must not change results.)

    python -m benchmarks.same_runs results/refactor_check/before results/refactor_check/after
    python -m benchmarks.same_runs BEFORE/lr_selection.json AFTER/lr_selection.json   # validation runs

Compares every run (method, seed) present in both ``results.json`` files key by key, timing
and process fields aside, and prints each difference with its size; exit status 1 if a
difference exceeds ``--tolerance`` (default 0: bit-identical).
"""
import argparse
import json
import sys
from pathlib import Path

IGNORED = ("seconds", "jobs", "threads")


def flatten(value, prefix=""):
    """``{path: number-or-string}`` of nested lists and dicts."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def _runs(where) -> list:
    """The runs of a comparison folder (its ``results.json``), or of a JSON file with a ``runs`` list
    (a learning-rate selection file: validation runs, one per method and rate)."""
    path = Path(where)
    return json.loads((path if path.is_file() else path / "results.json").read_text())["runs"]


def differences(first, second):
    """``(run, key, a, b)`` for every differing value of the runs both folders (or files) hold; a run is
    its method, seed and rate."""
    runs = [{(r["method"], r["seed"], r.get("lr")): r for r in _runs(f)} for f in (first, second)]
    out = []
    for run in sorted(set(runs[0]) & set(runs[1])):
        a, b = (flatten({k: v for k, v in r[run].items() if k not in IGNORED}) for r in runs)
        out += [(run, key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    return sorted(set(runs[0]) & set(runs[1])), out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args(argv)
    runs, diffs = differences(args.first, args.second)
    worst = 0.0
    for run, key, a, b in diffs:
        gap = abs(a - b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else float("inf")
        worst = max(worst, gap)
        print(f"{run[0]} seed {run[1]} lr {run[2]}: {key}: {a!r} vs {b!r} (|diff| {gap:.1e})")
    print(f"{len(runs)} runs compared, {len(diffs)} values differ, largest difference {worst:.1e}")
    return 1 if worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
