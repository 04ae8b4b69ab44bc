"""benchmarks/gpu_paper.sh on the CPU with a tiny setting: timing, planning, both runs, summary."""
import json
import os
import subprocess
import sys
from pathlib import Path


from benchmarks import gpu_paper  # the repository root is on pytest's pythonpath (pyproject.toml)

REPO = Path(__file__).resolve().parents[1]


def test_plan_epochs_takes_the_largest_number_that_fits():
    # 0.1 s per iteration, 10 iterations per epoch, 5 experiences: 5 s per epoch across experiences
    assert gpu_paper.plan_epochs(1000, 0.1, 10, 5, per_experience_overhead=2, startup=10) == 50  # capped
    assert gpu_paper.plan_epochs(100, 0.1, 10, 5, per_experience_overhead=2, startup=10) == 16  # (100-10-10)/5
    assert gpu_paper.plan_epochs(20, 0.1, 10, 5, per_experience_overhead=2, startup=10) == 0


def test_gpu_paper_runs_the_three_configurations_on_the_cpu(small_cifar_root, tmp_path):
    out = tmp_path / "paper"
    # one thread per run: the two runs of each phase go side by side on two cores
    env = dict(os.environ, AVALANCHE_BALANCED_DATA=str(small_cifar_root), PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_paper.sh"), str(out), "900", "--device", "cpu",
                           "--model", "tiny", "--per_class", "2", "--test_per_class", "1",
                           "--timing_iterations", "6", "--max_epochs", "1"],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
    assert "sarl_gelu_balanced" in (out / "summary.md").read_text() and f"{epochs} of 50 epochs" in proc.stdout
