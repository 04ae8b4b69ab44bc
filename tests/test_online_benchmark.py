"""benchmarks.online, the online reference harness, on two mini-experiences per experience."""
import json

from benchmarks import online  # the repository root is on pytest's pythonpath (pyproject.toml)


def test_online_harness_runs_pairs_and_reports(small_cifar_root, tmp_path, monkeypatch):
    monkeypatch.setenv("AVALANCHE_BALANCED_DATA", str(small_cifar_root))
    args = ["--methods", "replay_plugin", "ours", "--seeds", "0", "--experiences", "1", "--mini_experiences", "2",
            "--mem_size", "40", "--out", str(tmp_path)]
    online.main(args)
    runs = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(runs) == {"replay_plugin_seed0", "ours_seed0"}
    for r in runs.values():
        assert r["mini_experiences"] == [2] and len(r["train_seconds"]) == 1
        assert 0 <= r["accuracy"] <= 100 and len(r["accuracy_just_after"]) == 1
        assert r["command"].startswith("python -m benchmarks.online ")
    online.main(args)  # finished runs are skipped: the files stay as they were
    assert {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")} == runs
    table = online.report(tmp_path)
    assert "| ours − replay_plugin | 0 |" in table and "| replay_plugin | 0 |" in table
