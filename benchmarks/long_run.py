"""Long run of the buffer: 100,000 insertions and 100,000 balanced draws, invariants and memory.

    python -m benchmarks.long_run              # 100,000 steps on a 5,000-sample buffer
    python -m benchmarks.long_run --steps 5000 # shorter

Each step inserts one sample (a class-incremental stream: 100 classes in 5
blocks), draws a balanced minibatch of 32 and refreshes the drawn samples'
features; every 1,000 steps the prototypes are recomputed and all samples
regrouped. Every 100 steps the invariants are checked: group counts match the
groups of the stored labels, the size never exceeds the capacity, nothing is
NaN. Prints the resident memory at the start and end and the peak: the buffer
is preallocated, so memory must not grow with the number of steps.
"""
import argparse
import resource
import time

import psutil
import torch

from avalanche_balanced import BalancedBuffer


def check(buf: BalancedBuffer) -> None:
    n = buf.size
    assert n <= buf.max_size, "capacity exceeded"
    counts = buf.group_counts
    assert int(counts.sum()) == n, "group counts do not add up to the size"
    expected = buf.class_group[buf.labels[:n]]
    assert torch.equal(buf.group_ids[:n], expected), "group ids disagree with the stored labels' groups"
    assert torch.equal(counts, torch.bincount(expected, minlength=counts.numel())), "group counts are stale"
    assert torch.isfinite(buf.features[:n]).all() and torch.isfinite(buf.importance()).all(), "NaN or inf"


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--capacity", type=int, default=5_000)
    parser.add_argument("--regroup_every", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the tensors here are small)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    buf = BalancedBuffer(args.capacity, insertion="reservoir", seed=0)  # reservoir: as first measured
    num_classes, feats = 100, 160
    centres = torch.randn(num_classes, feats, generator=g)
    block = max(1, args.steps // 5)

    def sample(step):
        lo = 20 * min(step // block, 4)
        y = torch.randint(lo, lo + 20, (1,), generator=g)
        return (torch.rand(1, 3, 32, 32, generator=g), y, torch.randn(1, num_classes, generator=g),
                centres[y] + 0.5 * torch.randn(1, feats, generator=g))

    buf.add_data(*sample(0))
    start_rss, start = rss_mib(), time.time()
    draws, trace = 0, []
    for step in range(1, args.steps):
        buf.add_data(*sample(step))
        batch = buf.get_balanced_data(32)
        buf.update_features(batch.indices, centres[batch.labels] + 0.5 * torch.randn(len(batch.indices), feats,
                                                                                      generator=g))
        draws += 1
        if step % args.regroup_every == 0:
            buf.refresh_prototypes()
            buf.regroup()
        if step % 100 == 0:
            check(buf)
        if step % max(1, args.steps // 10) == 0:
            trace.append(f"{rss_mib():.0f}")
    check(buf)
    end_rss = rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stored = sum(getattr(buf, name).element_size() * getattr(buf, name).numel()
                 for name in ("examples", "labels", "task_labels", "logits", "features", "group_ids",
                              "losses"))
    print(f"{args.steps} insertions, {draws} balanced draws of 32, capacity {args.capacity}, "
          f"regroup every {args.regroup_every}: invariants held at every check")
    print(f"groups: {int((buf.group_counts > 0).sum())}, threshold {buf.threshold.value.item():.3f}")
    print(f"preallocated storage {stored / 2**20:.1f} MiB; resident memory {start_rss:.1f} MiB at start, "
          f"{end_rss:.1f} MiB at end (growth {end_rss - start_rss:+.1f} MiB), peak {peak:.1f} MiB")
    print(f"resident memory (MiB) at each tenth of the run: {' '.join(trace)}")
    print(f"{(time.time() - start) / args.steps * 1e3:.3f} ms per step (insert + draw + feature refresh)")


if __name__ == "__main__":
    main()
