"""benchmarks/gpu_paper on the CPU with a tiny setting: timing, planning, the runs, summary."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_paper  # the repository root is on pytest's pythonpath (pyproject.toml)
from example_runs import ForkedExample, load_example

REPO = Path(__file__).resolve().parents[1]


def test_plan_epochs_takes_the_largest_number_that_fits():
    # 0.1 s per iteration, 10 iterations per epoch, 5 experiences: 5 s per epoch across experiences
    assert gpu_paper.plan_epochs(1000, 0.1, 10, 5, per_experience_overhead=2, startup=10) == 50  # capped
    assert gpu_paper.plan_epochs(100, 0.1, 10, 5, per_experience_overhead=2, startup=10) == 16  # (100-10-10)/5
    assert gpu_paper.plan_epochs(20, 0.1, 10, 5, per_experience_overhead=2, startup=10) == 0


def test_gpu_paper_sh_hands_its_arguments_to_the_tool(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_paper.sh"), str(tmp_path / "out"), "900", "--help"],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--timing_iterations" in proc.stdout, proc.stderr


@pytest.mark.long
def test_gpu_paper_runs_the_three_configurations_on_the_cpu(small_cifar_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "paper"
    monkeypatch.setenv("AVALANCHE_BALANCED_DATA", str(small_cifar_root))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_paper, "start_process", ForkedExample)  # the command line, forked
    gpu_paper.main([str(out), "--budget", "900", "--device", "cpu", "--model", "tiny", "--per_class", "2",
                    "--test_per_class", "1", "--n_experiences", "2", "--timing_iterations", "6", "--max_epochs", "1"])
    stdout = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    epochs = summary["epochs"]
    assert epochs == 1 and not summary["faithful"] and "reduced" in summary["plan"]
    assert summary["lr_steps"] == [max(1, round(35 * epochs / 50)), max(1, round(45 * epochs / 50))]
    assert summary["warmup_epochs"] == round(5 * epochs / 50)
    assert summary["seconds_per_iteration"] > 0 and summary["device"] == "cpu"
    for mode in ("sarl", "sarl_gelu", "sarl_gelu_balanced"):
        run = summary["runs"][mode]
        assert run is not None and 0.0 <= run["accuracy"] <= 100.0
    assert f"--epochs {epochs}" in summary["command"] and "--lr_steps" in summary["command"]
    assert "sarl_gelu_balanced" in (out / "summary.md").read_text() and f"{epochs} of 50 epochs" in stdout
    for mode in ("sarl", "sarl_gelu", "sarl_gelu_balanced"):  # one process timed itself, then ran the plan
        log = (out / f"run_{mode}.log").read_text()
        assert log.index("seconds per iteration:") < log.index("Final average accuracy"), log[-2000:]
    assert json.loads((out / "plan.json").read_text())["epochs"] == epochs


@pytest.mark.long
def test_a_run_that_timed_itself_first_matches_a_run_launched_with_the_plan(small_cifar_root, tmp_path, capsys,
                                                                            monkeypatch):
    """``--plan_file``: the timing trains a throw-away copy; the run then starts from its seed."""
    example = load_example()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(dict(epochs=1, warmup_epochs=0, lr_steps=[1])))
    common = ["--data_root", str(small_cifar_root), "--protocol", "paper", "--model", "tiny", "--per_class", "3",
              "--test_per_class", "1", "--stop_after", "2", "--no_progress", "--method", "sarl_gelu_balanced"]
    timed = example.main(common + ["--experiment_id", "timed", "--max_iterations", "6",
                                   "--plan_file", str(tmp_path / "plan.json")])
    direct = example.main(common + ["--experiment_id", "direct", "--epochs", "1", "--warmup_epochs", "0",
                                    "--lr_steps", "1"])
    assert "seconds per iteration:" in capsys.readouterr().out
    assert timed["epochs"] == 1 and timed["lr_steps"] == [1]
    for key in ("accuracy", "forgetting", "bwt"):
        assert timed[key] == direct[key], key
    (tmp_path / "plan.json").write_text(json.dumps(dict(abort="no time left")))
    with pytest.raises(SystemExit, match="the plan says stop: no time left"):
        example.main(common + ["--experiment_id", "aborted", "--max_iterations", "6",
                               "--plan_file", str(tmp_path / "plan.json")])
