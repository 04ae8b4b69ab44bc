"""Speed of SARL's k-winners-take-all threshold: ``topk`` of the few smallest values (what
``KWinnersTakeAll`` does) against ``kthvalue``, on the activation shapes of the sparse ResNet-18.

    python -m benchmarks.k_winners            # batch 64, one thread; ratios measured side by side
"""
import argparse
import time

import torch


def by_kthvalue(x, j):
    return x.kthvalue(j, dim=1, keepdim=True).values


def by_topk(x, j):
    return x.detach().topk(j, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)


def seconds(fn, x, j, repeats):
    fn(x, j)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x, j)
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| channels x size | kthvalue (ms) | topk (ms) | kthvalue / topk | same threshold |")
    print("|---|---|---|---|---|")
    # nf 8 (tiny), 20 (quick), 64 (paper) stem widths; the last stage of the quick model
    for channels, size in ((8, 32), (20, 32), (40, 16), (64, 32), (160, 4)):
        x = torch.randn(args.batch, channels, size, size).to(memory_format=torch.channels_last)
        j = channels - max(1, round(0.9 * channels)) + 1
        same = torch.equal(by_kthvalue(x, j), by_topk(x, j))
        a, b = seconds(by_kthvalue, x, j, args.repeats), seconds(by_topk, x, j, args.repeats)
        print(f"| {channels} x {size}x{size} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f} | {same} |")


if __name__ == "__main__":
    main()
