"""Smoke run of benchmarks/compare.py on its tiny synthetic protocol: every method, finite numbers."""
import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name, monkeypatch):
    """Import benchmarks/<name>.py as ``name`` (registered, so worker processes can import it too)."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_every_method_appears_with_finite_numbers(tmp_path, monkeypatch):
    compare = load("compare", monkeypatch)
    methods = list(compare.METHODS)
    compare.main(["--protocol", "tiny", "--methods", *methods, "--out", str(tmp_path), "--jobs", "1"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in saved["runs"]} == set(methods)
    for run in saved["runs"]:
        for key in ("accuracy", "semantic_consistency", "superclass_error_share", "seconds"):
            assert math.isfinite(run[key]), (run["method"], key)
        if run["method"] != "joint":
            assert math.isfinite(run["forgetting"]) and math.isfinite(run["bwt"])
            assert len(run["accuracy_matrix"]) == 5 and all(math.isfinite(v) for v in run["accuracy_matrix"][-1])
        if run["method"].startswith(("plugin", "sarl")):
            assert -1.0 <= run["group_agreement"] <= 1.0
        else:
            assert run["group_agreement"] is None
    # grouping by the true superclasses agrees perfectly with them
    fixed = next(r for r in saved["runs"] if r["method"] == "sarl_superclass_groups")
    assert fixed["group_agreement"] == 1.0
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {m} |" in table for m in methods)
    # balanced minus uniform, seed by seed, in the JSON and the table
    by = {r["method"]: r for r in saved["runs"]}
    for first, second in compare.PAIRS:
        diff = saved["paired"][f"{first} - {second}"]
        assert diff["seeds"] == [0]
        assert diff["accuracy"] == [by[first]["accuracy"] - by[second]["accuracy"]]
        assert f"| {first} - {second} | 0 |" in table
    assert (tmp_path / "final_accuracy.png").stat().st_size > 0

    # an interrupted comparison keeps what it finished: a re-run skips finished runs
    before = (tmp_path / "results.json").read_text()
    compare.main(["--protocol", "tiny", "--methods", "naive", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").read_text() == before


def test_parallel_runs_match_in_process_runs(tmp_path, monkeypatch):
    """Runs in worker processes give the numbers of the same runs in this process, same thread count."""
    compare = load("compare", monkeypatch)
    methods = ["er", "plugin_balanced", "sarl_balanced"]
    runs = compare.main(["--protocol", "tiny", "--methods", *methods, "--seeds", "0", "1",
                         "--out", str(tmp_path), "--jobs", "2"])
    assert [(r["method"], r["seed"]) for r in runs] == [(m, s) for m in methods for s in (0, 1)]
    args = argparse.Namespace(protocol="tiny", class_order_seed=None, buffer_size=None, data_root=None,
                              device="cpu")
    threads = torch.get_num_threads()
    try:
        for run in runs[:2] + runs[-1:]:
            again = compare.run_one(run["method"], run["seed"], "tiny", args, threads=run["threads"])
            assert again["accuracy_matrix"] == run["accuracy_matrix"], run["method"]
            assert again["forgetting"] == run["forgetting"]
    finally:
        torch.set_num_threads(threads)
    assert runs[0]["accuracy_matrix"] != runs[1]["accuracy_matrix"]  # seeds matter
