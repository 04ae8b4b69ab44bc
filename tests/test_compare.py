"""Smoke run of benchmarks/compare.py on its tiny synthetic protocol: every method, finite numbers."""
import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_appears_with_finite_numbers(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    compare = load("compare")
    methods = list(compare.METHODS)
    compare.main(["--protocol", "tiny", "--methods", *methods, "--out", str(tmp_path)])
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
    assert (tmp_path / "final_accuracy.png").stat().st_size > 0

    # an interrupted comparison keeps what it finished: a re-run skips finished runs
    before = (tmp_path / "results.json").read_text()
    compare.main(["--protocol", "tiny", "--methods", "naive", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").read_text() == before
