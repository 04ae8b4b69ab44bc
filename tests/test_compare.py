"""benchmarks.compare on its tiny synthetic protocol: every registry row, finite numbers, the harness."""
import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from once import computed_once

INVESTIGATIONS = Path(__file__).resolve().parents[1] / "investigations"


def load(name, monkeypatch, folder=None):
    """``benchmarks.<name>`` (the repository root is on pytest's path, see pyproject.toml), or
    with ``folder`` the script ``<folder>/<name>.py`` loaded from its file (an investigation: it
    imports the benchmark modules as ``benchmarks.<module>``)."""
    if folder is None:
        module = importlib.import_module(f"benchmarks.{name}")
    else:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    if name == "compare":  # its default thread count is the cores over --jobs: one, as the suite runs
        monkeypatch.setattr(module, "_cpu_count", lambda: 1)
    return module


# One row per builder and per code path of the harness: each of Avalanche's strategies, joint
# training, the plugin's uniform, semantic, oracle-group and group-balanced-storage paths, and
# SARL-GELU's. The other rows are configurations of these builders (see the next test).
FULL_RUN = ("naive", "er", "der", "er_ace", "er_ace_reservoir", "er_class_balanced", "joint", "plugin_uniform",
            "plugin_balanced", "plugin_superclass_groups", "plugin_group_storage_balanced", "sarl_uniform",
            "sarl_balanced", "sarl_superclass_groups", "sarl")


def _compare_every_row(out):
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as monkeypatch:
        compare = load("compare", monkeypatch)
        assert set(FULL_RUN) <= set(compare.METHODS)
        try:
            compare.main(["--protocol", "tiny", "--methods", *FULL_RUN, "--out", str(out), "--jobs", "1"])
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def full_comparison(tmp_path_factory):
    """Every row of ``FULL_RUN``, seed 0, run in a test process on one thread, once per session:
    ``(out, saved)``."""
    out = computed_once(tmp_path_factory, "full_comparison", _compare_every_row)
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.long
def test_every_code_path_appears_with_finite_numbers(tmp_path, full_comparison, monkeypatch):
    compare = load("compare", monkeypatch)
    methods = list(FULL_RUN)
    shared, saved = full_comparison
    for path in shared.iterdir():  # the re-run at the end writes here, not in the shared folder
        if path.suffix in (".json", ".md", ".png"):
            shutil.copy(path, tmp_path / path.name)
    assert {r["method"] for r in saved["runs"]} == set(methods)
    for run in saved["runs"]:
        for key in ("accuracy", "semantic_consistency", "superclass_error_share", "seconds"):
            assert math.isfinite(run[key]), (run["method"], key)
        if run["method"] != "joint":
            assert math.isfinite(run["forgetting"]) and math.isfinite(run["bwt"])
            assert len(run["accuracy_matrix"]) == 5 and all(math.isfinite(v) for v in run["accuracy_matrix"][-1])
        if run["method"].startswith(("plugin", "sarl")):
            assert -1.0 <= run["group_agreement"] <= 1.0
            # per-experience replay diagnostics: the current experience's share, Kish ESS
            assert len(run["current_share"]) == len(run["effective_sample_size"]) == 5
            if run["method"].startswith("plugin"):  # ReplayPlugin's timing: past experiences only
                assert run["current_share"] == [0.0] * 5
            else:  # SARL's online reservoir replays the current experience too: only it, at first
                assert run["current_share"][0] == 1.0 and all(0.0 <= v <= 1.0 for v in run["current_share"])
                assert any(v > 0.0 for v in run["current_share"][1:])
        else:
            assert run["group_agreement"] is None
    # grouping by the true superclasses agrees perfectly with them
    for name in ("sarl_superclass_groups", "plugin_superclass_groups"):
        assert next(r for r in saved["runs"] if r["method"] == name)["group_agreement"] == 1.0, name
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {m} |" in table for m in methods)
    # first minus second, seed by seed, in the JSON and the table, for every pair with both rows
    by = {r["method"]: r for r in saved["runs"]}
    from benchmarks import tables
    both = [(a, b) for a, b in tables.PAIRS if a in by and b in by]
    assert len(both) >= 5 and set(saved["paired"]) == {f"{a} - {b}" for a, b in both}
    for first, second in both:
        diff = saved["paired"][f"{first} - {second}"]
        assert diff["seeds"] == [0]
        assert diff["accuracy"] == [by[first]["accuracy"] - by[second]["accuracy"]]
        assert f"| {first} - {second} | 0 |" in table
    assert (tmp_path / "final_accuracy.png").stat().st_size > 0
    # each run draws its own method's accuracy matrix (joint has a single evaluation: none)
    assert {p.name for p in tmp_path.glob("accuracy_matrix_*.png")} == {
        f"accuracy_matrix_{m}.png" for m in methods if m != "joint"}

    # an interrupted comparison keeps what it finished: a re-run skips finished runs
    before = (tmp_path / "results.json").read_text()
    compare.main(["--protocol", "tiny", "--methods", "naive", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").read_text() == before


@pytest.mark.long
def test_every_other_row_builds_trains_and_replays(monkeypatch):
    """Each remaining registry row trains on two experiences (the second replays what the first
    stored) to finite weights, its buffer holding classes of both experiences and no other. (All of
    them are configurations of our plugin or of SARL-GELU.)"""
    compare = load("compare", monkeypatch)
    from avalanche_balanced import BalancedReplayPlugin
    from avalanche_balanced.experiment import seed_everything
    bm, _ = compare.build_benchmark("tiny", 0, _args())
    others = [m for m in compare.METHODS if m not in FULL_RUN]
    assert others
    for name in others:
        seed_everything(0)
        strategy = compare.METHODS[name].build(compare.run_setting("tiny", bm, 0, _args()), None)
        for exp in bm.train_stream[:2]:
            strategy.train(exp)
        assert torch.isfinite(strategy.loss), name
        assert all(torch.isfinite(p).all() for p in strategy.model.parameters()), name
        replay = getattr(strategy, "replay", None) or next(
            (p for p in strategy.plugins if isinstance(p, BalancedReplayPlugin)), None)
        assert replay is not None, name
        stored = set(replay.buffer.stored_labels.tolist())
        first, second = (set(e.classes_in_this_experience) for e in bm.train_stream[:2])
        assert stored <= first | second and stored & first and stored & second, name


@pytest.mark.long
def test_parallel_runs_match_in_process_runs(tmp_path, monkeypatch, request):
    """Runs in worker processes give the numbers of the same runs in a test process, same thread count."""
    compare = load("compare", monkeypatch)
    methods = ["plugin_balanced", "sarl_balanced"]  # Avalanche's Naive + our plugin, and our strategy
    runs = compare.main(["--protocol", "tiny", "--methods", *methods, "--seeds", "0",
                         "--out", str(tmp_path), "--jobs", "2"])  # one fresh process per run
    assert [(r["method"], r["seed"]) for r in runs] == [(m, 0) for m in methods]
    # asked for only now: another worker may be computing it meanwhile
    in_process = {r["method"]: r for r in request.getfixturevalue("full_comparison")[1]["runs"]}
    for run in runs:
        again = in_process[run["method"]]
        assert again["seed"] == run["seed"] and again["threads"] == run["threads"] == 1
        assert again["accuracy_matrix"] == run["accuracy_matrix"], run["method"]
        assert again["forgetting"] == run["forgetting"]
    args = argparse.Namespace(protocol="tiny", class_order_seed=None, buffer_size=None, data_root=None,
                              device="cpu")
    threads = torch.get_num_threads()
    try:
        other_seed = compare.run_one(methods[0], 1, "tiny", args, threads=runs[0]["threads"])
    finally:
        torch.set_num_threads(threads)
    assert other_seed["accuracy_matrix"] != runs[0]["accuracy_matrix"]  # seeds matter


def _args(**overrides):
    return argparse.Namespace(**{**dict(protocol="tiny", class_order_seed=None, buffer_size=None, data_root=None,
                                        device="cpu"), **overrides})


def _instrument(compare, monkeypatch):
    """Wrap every method's builder: record the network's initial weights, count the samples of
    gradient-carrying training forward passes and the samples augmented for them."""
    from benchmarks import methods
    from avalanche_balanced.data import cifar_augment
    from avalanche_balanced.models import GeluResNet
    stats = {}
    current = []

    def counting_augment(x, generator=None):
        if torch.is_grad_enabled():
            stats[current[-1]]["augmented"] += x.shape[0]
        return cifar_augment(x, generator)

    def count_forward(module, inputs):
        if module.training and torch.is_grad_enabled():
            stats[current[-1]]["forwarded"] += inputs[0].shape[0]
            stats[current[-1]]["calls"] += 1

    monkeypatch.setattr(methods, "cifar_augment", counting_augment)
    for name, method in list(compare.METHODS.items()):
        def wrapped(setting, evaluator, build=method.build, name=name):
            current.append(name)
            strategy = build(setting, evaluator)
            net = getattr(strategy.model, "model", strategy.model)
            assert isinstance(net, GeluResNet)
            net.register_forward_pre_hook(count_forward)
            stats[name] = dict(forwarded=0, calls=0, augmented=0, initial={k: v.clone() for k, v in net.state_dict().items()},
                               params=sum(p.numel() for p in net.parameters()), setting=setting)
            return strategy
        monkeypatch.setitem(compare.METHODS, name, dataclasses.replace(method, build=wrapped))
    return stats


def test_run_seed_and_class_order_seed_control_different_things(monkeypatch):
    compare = load("compare", monkeypatch)
    stats = _instrument(compare, monkeypatch)
    fixed_order = _args(class_order_seed=4)
    runs = {}
    for seed in (0, 1, 0):
        result = compare.run_one("er", seed, "tiny", fixed_order, threads=1)
        runs.setdefault(seed, []).append((result, stats["er"]["initial"]))
    (a, wa), (again, wagain) = runs[0]
    (b, wb), = runs[1]
    assert a["class_order_seed"] == b["class_order_seed"] == 4
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # the run seed sets the initial weights...
    assert a["accuracy_matrix"] != b["accuracy_matrix"]  # ...and the results
    assert all(torch.equal(wa[k], wagain[k]) for k in wa)  # same seeds: same weights, same numbers
    assert a["accuracy_matrix"] == again["accuracy_matrix"] and a["forgetting"] == again["forgetting"]
    # the class-order seed alone does not touch the run's initial weights
    compare.run_one("er", 0, "tiny", _args(class_order_seed=5), threads=1)
    assert all(torch.equal(wa[k], stats["er"]["initial"][k]) for k in wa)


def test_natural_class_order_is_the_same_for_every_seed(monkeypatch):
    """``--class_order natural`` (SARL's authors' order): experience i holds classes 4i..4i+3 of the
    tiny benchmark for any seed; the run records it, so a seeded-order run is never reused for it."""
    compare = load("compare", monkeypatch)
    for seed in (0, 3):
        bm, _ = compare.build_benchmark("tiny", seed, _args(class_order="natural", scenario="split"))
        assert [sorted(e.classes_in_this_experience) for e in bm.train_stream] == \
            [list(range(4 * i, 4 * i + 4)) for i in range(5)]
    seeded, _ = compare.build_benchmark("tiny", 3, _args(scenario="split"))
    assert [sorted(e.classes_in_this_experience) for e in seeded.train_stream] != \
        [list(range(4 * i, 4 * i + 4)) for i in range(5)]
    config = compare.run_config("sarl", 0, None, _args(class_order="natural", scenario="split"))
    assert config["class_order"] == "natural"
    assert "class_order" not in compare.run_config("sarl", 0, None, _args(scenario="split"))


def _replay_batches(mem_size, m, steps):
    """Replay batch sizes of ``steps`` steps cycling through ``mem_size`` samples in batches of ``m``."""
    sizes, left = [], mem_size
    for _ in range(steps):
        sizes.append(min(m, left))
        left = left - sizes[-1] or mem_size
    return sizes


@pytest.mark.long
def test_every_method_gets_the_same_model_augmentation_and_sample_budget(monkeypatch):
    compare = load("compare", monkeypatch)
    stats = _instrument(compare, monkeypatch)
    methods = ["naive", "er", "der", "er_ace", "plugin_uniform", "plugin_balanced", "sarl_uniform",
               "sarl_balanced", "joint"]
    for method in methods:
        compare.run_one(method, 0, "tiny", _args(), threads=1)
    p = compare.PROTOCOLS["tiny"]
    per_exp = 24  # 20 classes of 6 images in 5 experiences
    steps = p["epochs"] * per_exp // p["batch_size"]  # per experience
    stream = 5 * p["epochs"] * per_exp  # every method passes over the stream `epochs` times...
    m = p["batch_size_mem"]  # ...with this many replayed samples per step once its buffer holds any
    # Avalanche's ReplayPlugin cycles through its memory in batches of m, the last of each pass
    # short (drop_last would drop current samples too): 20 stored samples give 8, 8, 4, 8, ...
    er_replay = sum(_replay_batches(p["mem_size"], m, steps))
    expected = {
        "naive": stream,
        "er": stream + 4 * er_replay,
        **{k: stream + m * 4 * steps for k in ("der", "er_ace", "plugin_uniform", "plugin_balanced")},
        **{k: stream + m * (5 * steps - 1) for k in ("sarl_uniform", "sarl_balanced")},  # online reservoir
        "joint": stream + m * 5 * steps,  # replay methods' minibatch size, as many steps
    }
    assert {k: stats[k]["forwarded"] for k in methods} == expected
    # joint training takes as many optimiser steps as the others (up to one partial batch per epoch)
    assert stats["naive"]["calls"] == 5 * steps
    assert 5 * steps <= stats["joint"]["calls"] <= 5 * steps + 2 * p["epochs"]
    assert all(stats[k]["augmented"] == stats[k]["forwarded"] for k in methods)  # every sample augmented
    assert len({stats[k]["params"] for k in methods}) == 1
    assert len({(s["setting"].mem_size, s["setting"].batch_size_mem, s["setting"].lr)
                for s in map(stats.get, methods)}) == 1


def test_every_kind_of_method_steps_its_rate_at_the_milestones(monkeypatch):
    """SARL's MultiStepLR, for every kind of method: would fail if a scheduler never stepped.
    The paper's milestones are 35 and 45 of 50 epochs; the steps are checked at 3 and 5 of 6."""
    from avalanche.core import SupervisedPlugin
    compare = load("compare", monkeypatch)
    from benchmarks import methods
    assert compare.PROTOCOLS["paper"]["lr_steps"] == [35, 45] and compare.PROTOCOLS["paper"]["epochs"] == 50

    class LrRecorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.lrs = []

        def before_training_epoch(self, strategy, **kwargs):
            self.lrs.append(strategy.optimizer.param_groups[0]["lr"])

    bm = compare.tiny_benchmark(0)
    for name in ("naive", "er", "sarl_uniform", "joint"):
        s = methods.Setting(num_classes=20, nf=8, epochs=6, lr=0.1, mem_size=20, batch_size=8, batch_size_mem=8,
                            warmup_epochs=0, sarl_alpha=0.2, fine_to_coarse=bm.fine_to_coarse, seed=0,
                            device=torch.device("cpu"), lr_steps=[3, 5])
        strategy = methods.METHODS[name].build(s, None)
        rec = LrRecorder()
        strategy.plugins.append(rec)
        scale = 2 if name == "joint" else 1  # joint: twice the epochs, milestones stretched alike
        strategy.train(bm.train_stream[0] if name != "joint" else bm.train_stream[:1])
        lrs = rec.lrs
        assert len(lrs) == 6 * scale
        assert lrs[3 * scale - 1] == pytest.approx(0.1), name
        assert lrs[3 * scale] == pytest.approx(0.01), name
        assert lrs[5 * scale - 1] == pytest.approx(0.01), name
        assert lrs[5 * scale] == pytest.approx(0.001), name


@pytest.mark.long
def test_learning_rates_are_chosen_on_validation_and_used(tmp_path, monkeypatch):
    compare = load("compare", monkeypatch)
    built = []
    real = compare.build_benchmark

    def spy(protocol, order_seed, args, validation=False):
        built.append(validation)
        return real(protocol, order_seed, args, validation)
    monkeypatch.setattr(compare, "build_benchmark", spy)
    lr_file = tmp_path / "lr.json"
    compare.main(["--protocol", "tiny", "--select_lr", "--methods", "naive", "er", "--lr_grid", "0.01", "0.3",
                  "--lr_selection", str(lr_file), "--jobs", "1"])
    assert built == [True] * 4  # selection never builds the test set
    saved = json.loads(lr_file.read_text())
    assert {(r["method"], r["lr"]) for r in saved["runs"]} == {(m, lr) for m in ("naive", "er") for lr in (0.01, 0.3)}
    for method, lr in saved["chosen"].items():
        accs = {r["lr"]: r["accuracy"] for r in saved["runs"] if r["method"] == method}
        assert accs[lr] == max(accs.values())
    built.clear()
    runs = compare.main(["--protocol", "tiny", "--methods", "naive", "er", "--out", str(tmp_path / "t"),
                         "--lr_selection", str(lr_file), "--jobs", "1"])
    assert built == [False, False]
    assert {r["method"]: r["lr"] for r in runs} == saved["chosen"]
    assert all(r["lr_source"] == "validation" for r in runs)
    table = (tmp_path / "t" / "table.md").read_text()
    assert f"| er | {saved['chosen']['er']} |" in table


def test_a_rerun_with_other_settings_never_reuses_a_finished_run(tmp_path, monkeypatch):
    """Review defect: finished runs were matched by (method, seed) only, so a re-run into the
    same folder at another rate silently kept the old rows."""
    compare = load("compare", monkeypatch)
    out = ["--protocol", "tiny", "--methods", "naive", "--seeds", "0", "--out", str(tmp_path), "--jobs", "1"]
    lr_file = tmp_path / "lr.json"
    lr_file.write_text(json.dumps({"chosen": {"naive": 0.2}}))
    first = compare.main(out + ["--lr_selection", str(lr_file)])
    assert first[0]["config"]["lr"] == 0.2
    before = (tmp_path / "results.json").read_text()
    compare.main(out + ["--lr_selection", str(lr_file)])  # same settings: skipped
    assert (tmp_path / "results.json").read_text() == before
    lr_file.write_text(json.dumps({"chosen": {"naive": 0.01}}))
    with pytest.raises(ValueError, match=r"naive seed 0 .* other settings \(lr: 0.2 stored vs 0.01 asked\)"):
        compare.main(out + ["--lr_selection", str(lr_file)])
    with pytest.raises(ValueError, match=r"imbalance_order: None stored vs 'ordered' asked.*scenario"):
        compare.main(out + ["--lr_selection", str(lr_file.with_name("none.json")), "--lr_grid", "0.05",
                            "--scenario", "lt", "--imbalance_order", "ordered"])
    with pytest.raises(ValueError, match=r"guards: 'on' stored vs 'off' asked"):
        compare.main(out + ["--guards", "off"])
    assert (tmp_path / "results.json").read_text() == before  # nothing silently replaced
    runs = compare.main(out + ["--lr_selection", str(lr_file), "--overwrite"])
    assert runs[0]["lr"] == 0.01 and runs[0]["config"]["lr"] == 0.01


def test_comparisons_sharing_an_out_folder_keep_each_others_runs(tmp_path, monkeypatch):
    """Two comparisons started separately into one ``--out`` (one per core): each finished run is
    merged into the file as it is *now*, not into the list a comparison read when it started."""
    compare = load("compare", monkeypatch)
    base = ["--protocol", "tiny", "--out", str(tmp_path), "--jobs", "1"]
    real_run_one = compare.run_one

    def run_one_while_another_finishes(method, seed, *args, **kwargs):
        result = real_run_one(method, seed, *args, **kwargs)
        if method == "naive":  # meanwhile, the other comparison finishes its run
            compare.main(base + ["--methods", "er", "--seeds", "1"])
        return result
    monkeypatch.setattr(compare, "run_one", run_one_while_another_finishes)
    runs = compare.main(base + ["--methods", "naive", "--seeds", "0"])
    assert {(r["method"], r["seed"]) for r in runs} == {("naive", 0), ("er", 1)}
    stored = json.loads((tmp_path / "results.json").read_text())
    assert {(r["method"], r["seed"]) for r in stored["runs"]} == {("naive", 0), ("er", 1)}
    assert set(stored["summary"]) == {"naive", "er"}
    # Re-recording a method and seed replaces its row instead of adding a second one.
    row = dict(next(r for r in runs if r["method"] == "er"), accuracy=99.0)
    rows = compare.record_run(tmp_path, row, "tiny")
    assert [r["accuracy"] for r in rows if r["method"] == "er"] == [99.0] and len(rows) == 2


@pytest.mark.long
def test_world_size_runs_our_rows_under_ddp_and_refuses_the_others(tmp_path, monkeypatch):
    """``--world_size 2``: two gloo processes per run, recorded as such (never mixed with a
    one-process row); Avalanche's replay rows and batch sizes that do not split are refused."""
    compare = load("compare", monkeypatch)
    base = ["--protocol", "tiny", "--seeds", "0", "--out", str(tmp_path), "--jobs", "1"]
    for bad, message in ((["--methods", "er", "plugin_uniform"], r"\['er'\] run in one process only"),
                         (["--methods", "plugin_uniform", "--world_size", "3"], "does not divide"),
                         (["--methods", "plugin_uniform", "--world_size", "0"], "must be >= 1")):
        argv = base + bad + ([] if "--world_size" in bad else ["--world_size", "2"])
        with pytest.raises(SystemExit):
            compare.main(argv)
    runs = compare.main(base + ["--methods", "plugin_balanced", "--world_size", "2"])
    for r in runs:
        assert r["world_size"] == 2 and r["config"]["world_size"] == 2
        assert math.isfinite(r["accuracy"]) and 0.0 <= r["accuracy"] <= 100.0
    with pytest.raises(ValueError, match=r"world_size: 2 stored vs the default asked"):
        compare.main(base + ["--methods", "plugin_balanced"])  # a one-process run never reuses the DDP row


def test_choose_lr_prefers_accuracy_then_the_smaller_rate(monkeypatch):
    compare = load("compare", monkeypatch)
    runs = [dict(method="a", lr=0.1, accuracy=5.0), dict(method="a", lr=0.01, accuracy=5.0),
            dict(method="a", lr=0.03, accuracy=4.0), dict(method="b", lr=0.1, accuracy=7.0),
            dict(method="b", lr=0.01, accuracy=6.0)]
    assert compare.choose_lr(runs) == {"a": 0.01, "b": 0.1}


def test_balanced_variants_train_at_their_uniform_counterparts_rate(monkeypatch):
    """In a balanced-uniform pair only the sampler differs: the balanced run takes the uniform
    run's validated rate even where a rate of its own was chosen."""
    compare = load("compare", monkeypatch)
    chosen = {"sarl_uniform": 0.1, "sarl_balanced": 0.03, "plugin_uniform": 0.03, "plugin_balanced": 0.1, "er": 0.03}
    assert compare.lr_for("sarl_balanced", chosen) == (0.1, "validation (sarl_uniform)")
    assert compare.lr_for("plugin_balanced", chosen) == (0.03, "validation (plugin_uniform)")
    assert compare.lr_for("sarl_legacy_share", chosen) == (0.1, "validation (sarl_uniform)")
    assert compare.lr_for("plugin_legacy", chosen) == (0.03, "validation (plugin_uniform)")
    assert compare.lr_for("er", chosen) == (0.03, "validation")
    assert compare.lr_for("der", chosen) == (None, "protocol default")
    assert compare.lr_for("sarl_balanced", {}) == (None, "protocol default")
    assert compare.lr_for("sarl_balanced", chosen, "own") == (0.03, "validation")


def test_replay_history_includes_group_agreement_per_experience(monkeypatch):
    compare = load("compare", monkeypatch)
    result = compare.run_one("sarl_balanced", 0, "tiny", _args(), threads=1)
    n_exp = compare.PROTOCOLS["tiny"]["n_experiences"]
    for key in ("current_share", "effective_sample_size", "group_agreement_per_experience"):
        assert len(result[key]) == n_exp, key
    assert result["group_agreement_per_experience"][-1] == pytest.approx(result["group_agreement"])
    assert all(0.0 < v <= 1.0 for v in result["effective_sample_size"])


def test_long_tailed_scenario_reports_buckets(monkeypatch):
    compare = load("compare", monkeypatch)
    args = _args(scenario="lt", imbalance_ratio=0.2, imbalance_order="ordered")
    bm, _ = compare.build_benchmark("tiny", 0, args)
    from avalanche_balanced.long_tail import long_tail_counts
    assert torch.equal(bm.class_counts, long_tail_counts(list(bm.classes_order), 6, 0.2, "ordered"))
    sizes = [len(exp.dataset) for exp in bm.train_stream]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == int(bm.class_counts.sum())  # head first
    result = compare.run_one("er_class_balanced", 0, "tiny", args, threads=1)
    assert 0.0 <= result["head_accuracy"] <= 100.0 and 0.0 <= result["medium_accuracy"] <= 100.0
    assert result["tail_accuracy"] is None  # a cap of 6: no class has fewer than 6 / 25 images
    balanced = compare.run_one("er", 0, "tiny", _args(), threads=1)
    assert balanced["head_accuracy"] is None  # balanced streams report no buckets


def test_superclass_skewed_scenario_reports_crowded_and_lone_accuracy(monkeypatch):
    compare = load("compare", monkeypatch)
    args = _args(scenario="skew", superclass_skew=1)
    bm, _ = compare.build_benchmark("tiny", 0, args)
    kept = bm.classes_kept
    assert kept.numel() == 8 and int(bm.crowded_classes[kept].sum()) == 4  # one superclass of 4 whole, 4 lone
    assert sorted(c for e in bm.train_stream for c in e.classes_in_this_experience) == kept.tolist()
    result = compare.run_one("plugin_balanced", 0, "tiny", args, threads=1)
    crowded, lone = result["crowded_accuracy"], result["lone_accuracy"]
    # as many test images per class in both buckets: the stream accuracy is their mean
    assert crowded is not None and lone is not None
    assert abs(result["accuracy"] - (crowded + lone) / 2) < 1e-6
    assert len(result["accuracy_matrix"]) == 4
    assert compare.run_config("er", 0, None, _args(scenario="skew", superclass_skew=1, imbalance_ratio=None,
                                                   imbalance_order=None))["superclass_skew"] == 1


def test_training_probe_only_reads_and_logs_every_iteration(tmp_path, monkeypatch):
    compare = load("compare", monkeypatch)
    probe = load("probe_training", monkeypatch, INVESTIGATIONS / "sarl_collapse")
    registry = dict(compare.METHODS)
    result, rows = probe.main(["--method", "sarl_balanced", "--seed", "0", "--protocol", "tiny",
                               "--out", str(tmp_path / "probe.json")])
    assert compare.METHODS == registry  # the method registry is restored
    plain = compare.run_one("sarl_balanced", 0, "tiny", _args(), threads=1)
    assert result["accuracy_matrix"] == plain["accuracy_matrix"]  # same run, probe or not
    p = compare.PROTOCOLS["tiny"]
    assert [r["experience"] for r in rows] == sorted(r["experience"] for r in rows)
    assert {r["experience"] for r in rows} == set(range(p["n_experiences"]))
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and "ce" in r for r in rows)
    summary = probe.per_epoch(rows)
    assert sum(n for _, _, n, _ in summary) == len(rows)
    assert all(mx >= mean for *_, stats in summary for mx, mean in stats.values())
    assert json.loads((tmp_path / "probe.json").read_text())["rows"] == rows


def test_report_pairs_a_method_with_itself_across_folders(tmp_path, monkeypatch, capsys):
    """``report.py --tag_folders``: the same method in two folders (2 processes vs 1) pairs by seed;
    without the flag, a method and seed in two folders is refused."""
    report = load("report", monkeypatch)
    for name, accuracies in (("ddp", [13.5, 9.0]), ("single", [12.0, 10.5])):
        (tmp_path / name).mkdir()
        runs = [dict(method="plugin_uniform", seed=s, accuracy=a, forgetting=1.0, semantic_consistency=0.3)
                for s, a in enumerate(accuracies)]
        (tmp_path / name / "results.json").write_text(json.dumps({"runs": runs}))
    folders = [str(tmp_path / "ddp"), str(tmp_path / "single")]
    with pytest.raises(ValueError, match="more than one folder"):
        report.main(folders)
    report.main(folders + ["--tag_folders", "--pairs", "plugin_uniform@0:plugin_uniform@1"])
    assert "| plugin_uniform@0 - plugin_uniform@1 | 0,1 | +0.00 ± 2.12 [+1.50, -1.50] |" in capsys.readouterr().out


def test_same_runs_finds_every_difference_in_folders_and_selection_files(tmp_path, capsys):
    from benchmarks import same_runs
    run = dict(method="sarl", seed=0, lr=0.01, accuracy=12.5, accuracy_matrix=[[1.0, 2.0]], seconds=3.0)
    for name, value in (("a", 2.0), ("b", 2.0), ("c", 2.5)):
        (tmp_path / name).mkdir()
        runs = [dict(run, accuracy_matrix=[[1.0, value]], seconds=len(name) + value)]
        (tmp_path / name / "results.json").write_text(json.dumps(dict(runs=runs)))
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(runs=runs, chosen={})))
    assert same_runs.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0  # timing fields aside
    assert "1 runs compared, 0 values differ" in capsys.readouterr().out
    assert same_runs.main([str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 1
    assert "accuracy_matrix.0.1: 2.0 vs 2.5" in capsys.readouterr().out


def test_results_record_the_buffer_size_and_alpha_the_runs_used(tmp_path):
    """results.json's settings and table.md once said buffer 500 and alpha 0.2 for runs at
    ``--buffer_size 200`` (which trained at alpha 0.5): they now follow the runs' own config."""
    from benchmarks.tables import run_settings, write_outputs
    run = dict(method="sarl", seed=0, lr=0.03, accuracy=12.0, forgetting=18.0, bwt=-18.0,
               accuracy_matrix=[[30.0]], config=dict(buffer_size=200))
    write_outputs(tmp_path, [run], "quick")
    settings = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert (settings["mem_size"], settings["sarl_alpha"]) == (200, 0.5)
    assert "buffer 200 (SARL's alpha 0.5)" in (tmp_path / "table.md").read_text()
    assert (run_settings("quick", [dict(run, config={})])["mem_size"],
            run_settings("quick", [dict(run, config={})])["sarl_alpha"]) == (500, 0.2)  # the protocol's own
    mixed = run_settings("quick", [run, dict(run, seed=1, config=dict(buffer_size=500))])
    assert (mixed["mem_size"], mixed["sarl_alpha"]) == ([200, 500], [0.2, 0.5])
