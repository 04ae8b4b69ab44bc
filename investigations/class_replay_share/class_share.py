"""How close ``grouping="class"`` comes to class-balanced replay, per-sample vs per-group shares.

    python investigations/class_replay_share/class_share.py    # ordered long-tailed stream, after experience 3

A simulated buffer, no training: CIFAR-100-LT counts (ratio 0.01, head classes first), 20
classes per experience, the first four experiences streamed through a reservoir buffer of
500 (labels in stream order, features drawn around a random mean per class), then the buffer
as it is while experience 4 trains (its classes current). For ``share="sample"`` (the design
note's rule) and ``share="group"``, with one group per class and the default cap
(``max_ratio=4``), it prints the replay share of the past classes by frequency bucket against
the class-balanced target (the past's share split equally over the past classes stored).
"""
import argparse

import torch

from avalanche_balanced import BalancedBuffer
from avalanche_balanced.long_tail import frequency_buckets, long_tail_counts


def simulated_buffer(share: str, seed: int = 0, mem_size: int = 500, dim: int = 64):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(100, generator=g)
    counts = long_tail_counts(order.tolist(), 500, 0.01, "ordered")
    buffer = BalancedBuffer(mem_size, grouping="class", share=share, seed=seed)
    means = torch.randn(100, dim, generator=g)
    for e in range(4):
        classes = order[20 * e: 20 * (e + 1)]
        labels = classes.repeat_interleave(counts[classes])
        labels = labels[torch.randperm(labels.numel(), generator=g)]
        for start in range(0, labels.numel(), 256):
            y = labels[start: start + 256]
            feats = means[y] + 0.8 * torch.randn(y.numel(), dim, generator=g)
            buffer.add_data(torch.rand(y.numel(), 1) + 0.01, y, torch.zeros(y.numel(), 100), feats)
    buffer.refresh_prototypes()
    buffer.regroup()
    current = order[80:]
    # experience 4's first samples, as SARL's online insertion has them by mid-experience
    y = current.repeat_interleave(counts[current])[:50]
    buffer.add_data(torch.rand(y.numel(), 1) + 0.01, y, torch.zeros(y.numel(), 100),
                    means[y] + 0.8 * torch.randn(y.numel(), dim, generator=g))
    buffer.set_current_classes(current.tolist())
    return buffer, counts, current


def report(share: str, seed: int = 0):
    buffer, counts, current = simulated_buffer(share, seed)
    n = buffer.size
    p = buffer.replay_probabilities()
    labels = buffer.stored_labels
    per_class = torch.zeros(100).index_add_(0, labels, p)
    stored = torch.bincount(labels, minlength=100)
    past = (stored > 0) & ~torch.isin(torch.arange(100), current)
    past_share = float(p[~buffer.current_mask()].sum())
    target = past_share / int(past.sum())
    buckets = frequency_buckets(counts, 500)
    rows = []
    for b, name in enumerate(("head", "medium", "tail")):
        mask = past & (buckets == b)
        if mask.any():
            rows.append((name, int(mask.sum()), float(per_class[mask].mean()), float(stored[mask].float().mean())))
    single = past & (stored == 1)
    return dict(n=n, target=target, rows=rows, past=int(past.sum()),
                single=(int(single.sum()), float(per_class[single].mean()) if single.any() else float("nan")),
                max_dev=float(((per_class[past] - target).abs() / target).max()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print("| share | past classes | class-balanced target | head: classes, mean share, mean stored | "
          "medium | tail | classes with 1 sample: count, mean share | largest deviation from target |")
    print("|---|---|---|---|---|---|---|---|")
    for share in ("sample", "group"):
        r = report(share, args.seed)
        cells = {name: f"{k}, {s:.4f} ({s / r['target']:.2f}x), {m:.1f}" for name, k, s, m in r["rows"]}
        print(f"| {share} | {r['past']} | {r['target']:.4f} | {cells.get('head', '-')} | {cells.get('medium', '-')} | "
              f"{cells.get('tail', '-')} | {r['single'][0]}, {r['single'][1]:.4f} | {100 * r['max_dev']:.1f}% |")


if __name__ == "__main__":
    main()
