"""Checkpoint and resume: a real process killed after experience 2 resumes to identical metrics."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from avalanche_balanced.checkpoint import load_checkpoint, read_checkpoint_file, save_checkpoint, write_checkpoint_file
from example_runs import ForkedExample, load_example

TINY = ["--model", "tiny", "--per_class", "3", "--test_per_class", "2", "--epochs", "1", "--warmup_epochs", "0",
        "--buffer_size", "40", "--minibatch_size", "8", "--batch_size", "16", "--no_progress", "--seed", "5"]


def example_process(args, cwd: Path, data_root) -> ForkedExample:
    with open(cwd / "child.log", "w") as log:  # the child has its own copy once forked
        return ForkedExample(["--data_root", str(data_root), *TINY, *args], log)


def run_example(args, data_root, capsys) -> str:
    """The example's ``main`` in this process, on one thread; returns what it printed."""
    module = load_example()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        module.main(["--data_root", str(data_root), *TINY, *args])
        return capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)


def _tensorboard_tags(run_dir: Path) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
        acc.Reload()
        tags |= {t for values in acc.Tags().values() if isinstance(values, list) for t in values}
    return tags


def completed(checkpoint: Path) -> int:
    try:
        return read_checkpoint_file(checkpoint)["extra"]["completed"]
    except Exception:  # not written yet
        return 0


def kill_after(run: ForkedExample, checkpoint: Path, experiences: int) -> threading.Thread:
    """A watcher that SIGKILLs ``run`` once its checkpoint records ``experiences`` finished."""
    def watch():
        deadline = time.time() + 600
        while completed(checkpoint) < experiences and run.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.mark.long
def test_killed_run_resumes_to_identical_metrics(tmp_path, small_cifar_root, capsys, monkeypatch):
    # A real process is killed after its second experience (SIGKILL: no clean-up of any kind);
    # meanwhile the uninterrupted run goes on in this process. The resumed run, also here, must
    # end with the same metrics: a checkpoint carries all a run needs, across processes.
    monkeypatch.chdir(tmp_path)
    run = example_process(["--experiment_id", "killed"], tmp_path, small_cifar_root)
    checkpoint = tmp_path / "runs" / "killed" / "checkpoint.pt"
    watcher = kill_after(run, checkpoint, experiences=2)

    out = run_example(["--experiment_id", "full"], small_cifar_root, capsys)
    assert "Final average accuracy" in out and "Average forgetting" in out
    run_dir = tmp_path / "runs" / "full"
    assert (run_dir / "group_sizes_exp4.png").is_file() and (run_dir / "accuracy_matrix_exp4.png").is_file()
    tags = _tensorboard_tags(run_dir)
    for tag in ("Top1_Acc_Stream/eval_phase/test_stream/Task000", "StreamForgetting/eval_phase/test_stream",
                "SemanticConsistency_Stream/eval_phase/test_stream", "BalancedReplay/num_groups",
                "BalancedReplay/replay_weight", "SARL/similarity", "Figures/group_sizes"):
        assert tag in tags, tag

    watcher.join(timeout=600)
    assert run.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "child.log").read_text()
    done = completed(checkpoint)
    assert 2 <= done < 5, "the run must be killed part-way"
    assert not (tmp_path / "runs" / "killed" / "results.json").exists()

    out = run_example(["--experiment_id", "killed", "--resume"], small_cifar_root, capsys)
    assert f"Resumed from {checkpoint.relative_to(tmp_path)} after experience {done}" in out
    a = json.loads((tmp_path / "runs" / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "runs" / "killed" / "results.json").read_text())
    for key in ("accuracy", "forgetting", "bwt"):
        assert a[key] == b[key], key


class Tiny(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.body, self.linear = nn.Linear(3, width), nn.Linear(width, 2)

    def forward(self, x):
        return self.linear(self.body(x))


def _sarl(width=4, mem_size=10):
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche_balanced import SARLGelu
    model = Tiny(width)
    return SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), mem_size=mem_size,
                    batch_size_mem=2, evaluator=EvaluationPlugin(loggers=[]))


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _sarl(), config={"buffer_size": 10, "seed": 0})
    with pytest.raises(ValueError, match=r"another configuration: buffer_size: 10 \(checkpoint\) vs 20 \(now\)"):
        load_checkpoint(path, _sarl(), config={"buffer_size": 20, "seed": 0})
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(path, _sarl(width=5))
    with pytest.raises(ValueError, match="max_size"):
        load_checkpoint(path, _sarl(mem_size=11))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", _sarl())
    old_format = read_checkpoint_file(path)
    old_format["format"] = 1  # before the buffer kept its grouping rule's state
    write_checkpoint_file(tmp_path / "old.pt", old_format)
    with pytest.raises(ValueError, match="format 1"):
        load_checkpoint(tmp_path / "old.pt", _sarl())


def test_truncated_checkpoint_is_refused_and_writes_are_atomic(tmp_path):
    path = tmp_path / "ckpt.pt"
    strategy = _sarl()
    save_checkpoint(path, strategy, extra={"completed": 1})
    good = path.read_bytes()
    (tmp_path / "bad.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"bad\.pt is corrupted"):  # its checksum no longer matches
        load_checkpoint(tmp_path / "bad.pt", _sarl())
    (tmp_path / "foreign.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "foreign.pt", _sarl())
    save_checkpoint(path, strategy, extra={"completed": 2})
    assert not (tmp_path / "ckpt.pt.tmp").exists()
    assert load_checkpoint(path, _sarl())["completed"] == 2
