"""SARL, SARL-GELU and SARL-GELU with balanced draws at the authors' protocol, inside a time budget (a GPU).

The three configurations (``MODES``: ``sarl``, the authors' method in fp32; ``sarl_gelu`` and
``sarl_gelu_balanced``, the design note's variant with uniform and balanced draws, in bfloat16
on a GPU) run in the natural class order 0..99, as the authors. Several seeds pack onto one
device as concurrent processes (``--seeds 1 3 5``: nine runs at once), timed together as they
will run; ``--compile`` compiles the model (``avalanche_balanced.compiled``).

    bash benchmarks/gpu_paper.sh OUT [BUDGET_SECONDS]      # the entry point; see its header

Every run starts once: it times a few iterations on a throw-away copy of itself, concurrently
with the others (as they will run), prints the seconds per iteration and waits for
``OUT/plan.json``. If 50 epochs per experience do not fit the budget, the plan is the
largest faithful reduction that does: fewer epochs per experience, with the LR milestones
and the warm-up scaled in proportion (35/50, 45/50, 5/50 of the epochs). Each run then
starts from its seed with the plan (the example's ``--plan_file``), so the start-up
(imports, data, CUDA) is paid once. The output says which plan ran. Results:
``OUT/summary.json`` and ``OUT/summary.md``, and each run's log.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "split_cifar100_sarl_balanced.py"
PAPER_EPOCHS, PAPER_STEPS, PAPER_WARMUP = 50, (35, 45), 5
MODES = ("sarl", "sarl_gelu", "sarl_gelu_balanced")  # the example's --method


def run_name(tag: str, mode: str, seed: int, first_seed: int) -> str:
    # The first seed keeps the single-seed names of earlier versions.
    return f"{tag}_{mode}" if seed == first_seed else f"{tag}_{mode}_s{seed}"


def example_argv(mode, seed, run_args, name) -> list:
    """The example's arguments for one run."""
    amp = ["--amp"] if "--device" in run_args and run_args[run_args.index("--device") + 1].startswith("cuda") \
        and mode != "sarl" else []  # SARL runs in fp32, as its authors
    return ["--method", mode, "--class_order", "natural", "--seed", str(seed), "--experiment_id",
            f"gpu_paper_{name}", "--no_progress", *amp, *run_args]


def start_process(argv, log):
    """The example in a fresh process writing to ``log``; returns something with ``poll``, ``wait``
    and ``kill`` (a ``Popen``)."""
    return subprocess.Popen([sys.executable, str(EXAMPLE), *argv], stdout=log, stderr=subprocess.STDOUT)


def launch(mode, seed, run_args, out: Path, tag: str, first_seed: int):
    name = run_name(tag, mode, seed, first_seed)
    log = open(out / f"{name}.log", "w")
    return start_process(example_argv(mode, seed, run_args, name), log), log


def launch_all(run_args, out, tag, seeds):
    """Every (seed, mode) at once on the device: {(seed, mode): (process, log)}."""
    return {(seed, m): launch(m, seed, run_args, out, tag, seeds[0]) for seed in seeds for m in MODES}


def wait_for_timings(procs, out, tag, seeds, timeout):
    """Seconds per iteration of every run, read from its log once printed; the slowest decides."""
    logs = {key: out / f"{run_name(tag, key[1], key[0], seeds[0])}.log" for key in procs}
    deadline, timings = time.time() + timeout, {}
    while len(timings) < len(procs):
        for key, path in logs.items():
            if key not in timings and "seconds per iteration:" in path.read_text():
                timings[key] = read_log_value(path, "seconds per iteration:")
        failed = {k: p.poll() for k, (p, _) in procs.items() if k not in timings and p.poll() is not None}
        if failed or time.time() > deadline:
            return None, failed or "timeout"
        time.sleep(0.2)
    return max(timings.values()), None


def wait_all(procs, timeout):
    """Return codes of every run, ``"timeout"`` for those killed at the deadline."""
    deadline, codes = time.time() + timeout, {}
    for key, (proc, log) in procs.items():
        try:
            codes[key] = proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[key] = "timeout"
        log.close()
    return codes


def write_plan(path: Path, plan: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan))
    tmp.replace(path)  # atomic: a run never reads half a plan


def read_log_value(path: Path, prefix: str) -> float:
    for line in path.read_text().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):].split()[0].rstrip("%"))
    raise RuntimeError(f"{path} has no line starting with {prefix!r}:\n{path.read_text()[-2000:]}")


def plan_epochs(seconds_left, seconds_per_iteration, iterations_per_epoch, n_experiences,
                per_experience_overhead, startup):
    """Largest number of epochs per experience (<= 50) whose training fits ``seconds_left``."""
    per_epoch = seconds_per_iteration * iterations_per_epoch
    usable = seconds_left - startup - n_experiences * per_experience_overhead
    return max(0, min(PAPER_EPOCHS, math.floor(usable / (n_experiences * per_epoch))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for everything, timing included")
    p.add_argument("--seeds", type=int, nargs="+", default=[1],
                   help="SARL's seeds are 1, 3, 5; every seed's pair runs at once on the device")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in every run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--timing_iterations", type=int, default=40)
    p.add_argument("--max_epochs", type=int, default=PAPER_EPOCHS,
                   help="cap on the epochs per experience (a CPU smoke test uses 1 or 2)")
    p.add_argument("--per_class", type=int, default=None, help="fewer training images (CPU smoke test only)")
    p.add_argument("--test_per_class", type=int, default=None, help="(CPU smoke test only)")
    p.add_argument("--model", choices=("tiny", "reduced", "full"), default="full",
                   help="(tiny, reduced: CPU smoke test only)")
    p.add_argument("--n_experiences", type=int, default=5, help="(other than 5: CPU smoke test only)")
    args = p.parse_args(argv)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--protocol", "paper", "--device", args.device, "--model", args.model,
              "--n_experiences", str(args.n_experiences), *(["--compile"] if args.compile else [])]
    seeds = args.seeds
    if args.per_class:
        common += ["--per_class", str(args.per_class)]
    if args.test_per_class:
        common += ["--test_per_class", str(args.test_per_class)]

    # 1. Start every run; each times itself, concurrently with the others, and waits for the plan.
    plan_file = out / "plan.json"
    plan_file.unlink(missing_ok=True)
    timing_start = time.time()
    procs = launch_all(common + ["--max_iterations", str(args.timing_iterations), "--plan_file", str(plan_file)],
                       out, "run", seeds)
    spi, failed = wait_for_timings(procs, out, "run", seeds, timeout=args.budget / 3)
    if spi is None:
        write_plan(plan_file, {"abort": f"timing failed: {failed}"})
        wait_all(procs, timeout=30)
        raise SystemExit(f"timing failed: {failed}; see {out}/run_*.log")
    timing_seconds = time.time() - timing_start

    # 2. The largest faithful reduction that fits what is left.
    per_class = args.per_class or 500
    n_experiences, batch = args.n_experiences, 32
    classes_per_exp = 100 // n_experiences
    iterations_per_epoch = math.ceil(classes_per_exp * per_class / batch)
    # What is left after the plan: building each run again (a compiled model compiles again), and per
    # experience evaluation, prototypes and BatchNorm passes and a checkpoint, about 4% of an epoch
    # at full size each -- taken as 10 s on a GPU, with a 15% margin on the training time below.
    startup = 40.0 if args.compile else 10.0
    left = args.budget - (time.time() - start)
    epochs = min(args.max_epochs,
                 plan_epochs(left / 1.15, spi, iterations_per_epoch, n_experiences, 10.0, startup))
    if epochs < 1:
        write_plan(plan_file, {"abort": "not even one epoch per experience fits"})
        wait_all(procs, timeout=30)
        raise SystemExit(f"not even one epoch per experience fits: {spi:.4f} s per iteration, "
                         f"{left:.0f} s left")
    milestones = [max(1, round(m * epochs / PAPER_EPOCHS)) for m in PAPER_STEPS]
    warmup = round(PAPER_WARMUP * epochs / PAPER_EPOCHS)
    faithful = epochs == PAPER_EPOCHS
    plan = (f"{epochs} of {PAPER_EPOCHS} epochs per experience"
            + ("" if faithful else f" (reduced to fit {args.budget:.0f} s"
                                   f"{'' if args.max_epochs == PAPER_EPOCHS else ' and --max_epochs'}: "
                                   f"LR milestones {milestones}, warm-up {warmup} epochs, scaled from "
                                   f"35/45 and 5 of 50)"))
    print(f"timing: {spi:.4f} s per iteration with {len(MODES) * len(seeds)} runs on the device; "
          f"start-up and timing {timing_seconds:.0f} s", flush=True)
    print(f"plan: {plan}", flush=True)

    # 3. Every run goes on with the plan, side by side.
    run_args = common + ["--epochs", str(epochs), "--warmup_epochs", str(warmup), "--lr_steps",
                         *map(str, milestones)]
    run_start = time.time()
    write_plan(plan_file, dict(epochs=epochs, warmup_epochs=warmup, lr_steps=milestones))
    codes = wait_all(procs, timeout=args.budget - (time.time() - start))
    by_seed = {}
    for seed in seeds:
        by_seed[seed] = {}
        for mode in MODES:
            path = Path("runs") / f"gpu_paper_{run_name('run', mode, seed, seeds[0])}" / "results.json"
            ok = codes[seed, mode] == 0 and path.is_file()
            r = json.loads(path.read_text()) if ok else None
            by_seed[seed][mode] = None if r is None else {k: r.get(k) for k in ("accuracy", "forgetting", "bwt",
                                                                                 "seconds")}
    results = by_seed[seeds[0]]
    codes = {f"{s}/{m}": c for (s, m), c in codes.items()}
    summary = dict(
        device=_device_name(args.device), seed=seeds[0], seeds=seeds, plan=plan, faithful=faithful, epochs=epochs,
        lr_steps=milestones, warmup_epochs=warmup, seconds_per_iteration=spi, budget=args.budget,
        run_seconds=time.time() - run_start, total_seconds=time.time() - start, return_codes=codes,
        command=" ".join(["python", str(EXAMPLE.relative_to(EXAMPLE.parents[1])), *run_args]),
        runs=results, by_seed={str(k): v for k, v in by_seed.items()})
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(_markdown(summary))
    print(_markdown(summary))
    if any(r is None for runs in by_seed.values() for r in runs.values()):
        raise SystemExit(f"a run did not finish: {codes}; see {out}/run_*.log")


def _device_name(device):
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def _markdown(s):
    lines = [f"SARL and SARL-GELU, paper protocol, natural class order, on {s['device']}, seeds "
             f"{', '.join(map(str, s['seeds']))}: {s['plan']}.",
             "", "| seed | method | final acc. (%) | forgetting (%) | BWT (%) | seconds |", "|---|---|---|---|---|---|"]
    for seed, runs in s["by_seed"].items():
        for mode, r in runs.items():
            if r is None:
                lines.append(f"| {seed} | {mode} | did not finish | | | |")
            else:
                lines.append(f"| {seed} | {mode} | {r['accuracy']:.2f} | {r['forgetting']:.2f} | {r['bwt']:.2f} | "
                             f"{r['seconds']:.0f} |")
    for a, b in (("sarl_gelu", "sarl"), ("sarl_gelu_balanced", "sarl_gelu")):
        diffs = [runs[a]["accuracy"] - runs[b]["accuracy"] for runs in s["by_seed"].values()
                 if runs.get(a) and runs.get(b)]
        if diffs:
            lines += ["", f"{a} - {b}, paired by seed: {', '.join(f'{d:+.2f}' for d in diffs)} points of final "
                          f"accuracy (mean {sum(diffs) / len(diffs):+.2f})"]
    lines += ["", f"command (each method): `{s['command']} --method sarl|sarl_gelu|sarl_gelu_balanced "
                  f"--class_order natural` (--amp on a GPU, except sarl)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
