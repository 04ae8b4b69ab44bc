"""Re-run one comparison run with a training probe: per iteration, the loss, each SARL
loss term, the gradient norm and the largest logit; printed as max / mean per epoch.

    python -m investigations.sarl_collapse.probe_training \\
        --method sarl_balanced --seed 2 --lr 0.1 \\
        --scenario lt --imbalance_order ordered --out results/probe_sarl_balanced_2.json

Run it from the repository root, as a module (it imports ``benchmarks.compare``). The run is
the one ``benchmarks.compare`` makes for that method, seed and rate (same benchmark, same
seeding, one torch thread as in a two-job comparison), so its final accuracy must equal the
comparison's: the probe only reads. Use it to tell a diverged run (a gradient
spike, then a loss term that keeps growing) from an unlucky one.
"""
import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from avalanche_balanced.protocols import PROTOCOLS
from benchmarks import compare  # run from the repository root, as a module (see above)


class TrainingProbe(SupervisedPlugin):
    """Appends one row per training iteration to ``rows`` (after the backward pass)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        grads = [p.grad.pow(2).sum() for p in strategy.model.parameters() if p.grad is not None]
        terms = getattr(strategy, "loss_terms", {})  # SARL-GELU's terms; other strategies have none
        self.rows.append(dict(experience=strategy.clock.train_exp_counter, epoch=strategy.clock.train_exp_epochs,
                              loss=float(strategy.loss.detach()), grad_norm=float(torch.stack(grads).sum().sqrt()),
                              max_logit=float(strategy.mb_output.detach().abs().max()),
                              **{k: float(v) for k, v in terms.items()}))


def per_epoch(rows):
    """``[(experience, epoch, iterations, {key: (max, mean)})]``."""
    out = []
    for (exp, epoch), group in itertools.groupby(rows, key=lambda r: (r["experience"], r["epoch"])):
        group = list(group)
        keys = [k for k in group[-1] if k not in ("experience", "epoch")]
        stats = {k: (max(r.get(k, 0.0) for r in group), sum(r.get(k, 0.0) for r in group) / len(group))
                 for k in keys}
        out.append((exp, epoch, len(group), stats))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(compare.METHODS), required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--lr", type=float, default=None, help="default: the protocol's rate")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="quick")
    parser.add_argument("--scenario", choices=("split", "lt"), default="split")
    parser.add_argument("--imbalance_ratio", type=float, default=0.01)
    parser.add_argument("--imbalance_order", choices=("shuffled", "ordered"), default="shuffled")
    parser.add_argument("--class_order_seed", type=int, default=None)
    parser.add_argument("--buffer_size", type=int, default=None)
    parser.add_argument("--guards", choices=("on", "off"), default="on")
    parser.add_argument("--data_root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="JSON file for the per-iteration rows")
    args = parser.parse_args(argv)

    probe = TrainingProbe()
    method = compare.METHODS[args.method]

    def build_with_probe(setting, evaluator):
        strategy = method.build(setting, evaluator)
        strategy.plugins.append(probe)
        return strategy

    compare.METHODS[args.method] = dataclasses.replace(method, build=build_with_probe)
    try:
        result = compare.run_one(args.method, args.seed, args.protocol, args, threads=args.threads, lr=args.lr)
    finally:  # the registry is shared with every importer of methods.py
        compare.METHODS[args.method] = method
    print(f"{args.method} seed {args.seed} lr {result['lr']}: acc {result['accuracy']:.2f}% "
          f"forgetting {result['forgetting']:.2f}%")
    print("accuracy matrix (%, a row per evaluation):")
    for row in result["accuracy_matrix"]:
        print("  " + " ".join(f"{v:6.2f}" for v in row))
    print("per epoch, max / mean over its iterations:")
    for exp, epoch, n, stats in per_epoch(probe.rows):
        print(f"  exp {exp} epoch {epoch} ({n} it): " + " ".join(f"{k} {mx:.3g}/{mean:.3g}"
                                                             for k, (mx, mean) in stats.items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(result=result, rows=probe.rows)))
    return result, probe.rows


if __name__ == "__main__":
    main()
