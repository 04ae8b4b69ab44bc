"""The narrow seams between modules: plugin -> strategy record, hook-free frozen copies, the one
subset rule, the one validation helper, settings shared by the example and the comparison."""
from pathlib import Path

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_balanced import ReplayStep, SARLGelu
from avalanche_balanced.checkpoint import load_checkpoint, save_checkpoint
from avalanche_balanced.experiment import seed_everything
from avalanche_balanced.features import FeatureHook, frozen_copy
from avalanche_balanced.insertion import balanced_keep_mask, keep_per_class
from avalanche_balanced.models import gelu_resnet18
from avalanche_balanced.protocols import PROTOCOLS
from avalanche_balanced.validation import check_replay_sizes
from example_runs import load_example
from synthetic import blobs_benchmark

REPO = Path(__file__).resolve().parents[1]


def test_frozen_copy_works_while_a_hook_holds_a_graph_and_carries_no_hooks():
    model = gelu_resnet18(10, nf=8)
    hook = FeatureHook(model)
    model(torch.rand(2, 3, 32, 32)).sum()  # the hook now holds features with an autograd graph
    plain = __import__("copy").deepcopy(model)  # works too: the hook copies as an inert stand-in
    plain(torch.rand(1, 3, 32, 32))
    assert len(hook.calls) == 1  # the copy's passes are not recorded by the original's hook
    frozen = frozen_copy(model)
    assert all(not m._forward_hooks for m in frozen.modules()) and len(model.linear._forward_hooks) == 1
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(frozen(x), model.eval()(x))
    hook.remove()


def test_sarl_reads_one_record_per_iteration_and_its_teacher_has_no_hooks():
    seed_everything(0)
    bm = blobs_benchmark(6, 10, n_per_class=20, separation=2.5, seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.GELU(), torch.nn.Linear(16, 6))
    s = SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=20,
                 batch_size_mem=4, train_mb_size=8, train_epochs=1, warmup_epochs=0,
                 evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    seen = []
    original = s.criterion

    def criterion():
        step = s.replay.step
        assert isinstance(step, ReplayStep) and step.features.requires_grad
        assert step.features.shape[0] == step.num_current + (0 if step.replay is None else len(step.replay.indices))
        seen.append(step.replay is not None)
        return original()
    s.criterion = criterion
    for exp in list(bm.train_stream)[:2]:
        s.train(exp)
    assert s.replay.step is None  # cleared at the end of every iteration
    assert any(seen) and not all(seen)  # the very first step has nothing to replay
    assert all(not m._forward_hooks for m in s.old_model.modules())


def test_keep_per_class_keeps_exact_uniform_quotas():
    labels = torch.arange(5).repeat_interleave(torch.tensor([10, 3, 7, 1, 9]))
    mask = keep_per_class(labels, 4, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[mask], minlength=5).tolist() == [4, 3, 4, 1, 4]  # fewer than 4: all kept
    quota = torch.tensor([0, 2, 7, 1, 5])
    mask = keep_per_class(labels, quota, torch.Generator().manual_seed(1))
    assert torch.bincount(labels[mask], minlength=5).tolist() == [0, 2, 7, 1, 5]
    # Within a class every item is equally likely to be kept.
    hits = sum(keep_per_class(labels, 4, torch.Generator().manual_seed(s)).float() for s in range(400))
    assert torch.allclose(hits[labels == 0] / 400, torch.full((10,), 0.4), atol=0.08)
    # Class-balanced insertion's keep mask is the same rule under water-level quotas.
    kept = torch.bincount(labels[balanced_keep_mask(labels, 12, 5, generator=torch.Generator().manual_seed(2))],
                          minlength=5).tolist()
    # Small classes whole (3 and 1), the other three share the remaining 8 as equally as possible.
    assert sum(kept) == 12 and kept[1] == 3 and kept[3] == 1 and sorted(kept[i] for i in (0, 2, 4)) == [2, 3, 3]


def test_replay_sizes_are_checked_in_one_place_with_named_errors():
    check_replay_sizes(10, 10)
    for mem, batch, name in ((0, 1, "mem_size"), (10, 0, "batch_size_mem"), (10, 11, "larger than mem_size")):
        with pytest.raises(ValueError, match=name):
            check_replay_sizes(mem, batch)
    with pytest.raises(ValueError, match="larger than mem_size"):
        SARLGelu(model=torch.nn.Linear(4, 2), optimizer=torch.optim.SGD(torch.nn.Linear(4, 2).parameters(), lr=0.1),
                 mem_size=5, batch_size_mem=6)


def test_example_and_comparison_share_their_protocols():
    example = load_example()
    args = example.parse_args([])
    quick = PROTOCOLS["quick"]
    assert (args.buffer_size, args.minibatch_size, args.batch_size, args.epochs, args.per_class, args.lr,
            args.warmup_epochs, args.alpha) == (quick["mem_size"], quick["batch_size_mem"], quick["batch_size"],
                                                quick["epochs"], quick["per_class"], quick["lr"],
                                                quick["warmup_epochs"], quick["sarl_alpha"])
    assert example.parse_args(["--buffer_size", "200"]).alpha == 0.5  # SARL's weight for the small buffer
    paper = example.parse_args(["--protocol", "paper"])
    assert paper.model == "full" and paper.lr_steps == PROTOCOLS["paper"]["lr_steps"]


def test_checkpoint_keeps_the_evaluators_scalar_history(tmp_path):
    def strategy():
        seed_everything(0)
        model = torch.nn.Sequential(torch.nn.Linear(10, 6))
        return SARLGelu(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), mem_size=20,
                        batch_size_mem=4, train_mb_size=8, train_epochs=1, warmup_epochs=0,
                        evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]))
    bm = blobs_benchmark(6, 10, n_per_class=10, separation=2.5, seed=0)
    first = strategy()
    first.train(bm.train_stream[0])
    first.eval(bm.test_stream)
    save_checkpoint(tmp_path / "c.pt", first)
    second = strategy()
    load_checkpoint(tmp_path / "c.pt", second)
    name = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"
    assert second.evaluator.get_all_metrics()[name] == first.evaluator.get_all_metrics()[name]


def test_no_module_imports_a_package_module_inside_a_function():
    """Function-local imports hid an import circle (validation -> buffer -> ... -> validation):
    every package import sits at the top of its module."""
    import re
    package = REPO / "avalanche_balanced"
    local = [f"{path.relative_to(REPO)}:{i}" for path in package.rglob("*.py")
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if re.match(r"\s+(from \.|import avalanche_balanced|from avalanche_balanced)", line)]
    assert local == []


def test_the_lab_tools_import_each_other_as_a_package():
    """benchmarks/ is a package run from the repository root (``python -m benchmarks.<tool>``):
    no file of the lab tools, examples or investigations edits ``sys.path`` or imports a
    benchmark module as a bare sibling (``from methods import ...``), which works only when the
    script's own folder happens to be on the path."""
    import re
    assert (REPO / "benchmarks" / "__init__.py").is_file()
    tools = sorted(path.stem for path in (REPO / "benchmarks").glob("*.py") if path.stem != "__init__")
    assert {"compare", "methods", "tables", "report", "online", "syncs", "sampler", "memory"} <= set(tools)
    sibling = re.compile(rf"^\s*(from ({'|'.join(tools)}|\.\w*) import|import ({'|'.join(tools)})\b)")
    found = []
    for folder in ("benchmarks", "examples", "investigations"):
        for path in sorted((REPO / folder).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:  # not a text file
                continue
            for i, line in enumerate(text.splitlines(), 1):
                if "sys.path" in line or "PYTHONPATH=benchmarks" in line or sibling.match(line):
                    found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert found == []


def test_no_module_assigns_another_objects_private_fields():
    """Each object's private state is written by its own methods only (``self._x = ...``)."""
    import re
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\b(?!self\b|cls\b)[A-Za-z_][A-Za-z0-9_]*\.(_[a-z][A-Za-z0-9_]*)\s*(=|\+=|-=|\|=)(?!=)")
    offenders = [f"{path.relative_to(root)}:{n}: {line.strip()}"
                 for folder in ("avalanche_balanced", "benchmarks", "examples")
                 for path in sorted((root / folder).rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "\n".join(offenders)
