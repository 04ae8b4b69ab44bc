"""Bytes per stored sample of BalancedBuffer on Split CIFAR-100, float32 vs float16 features.

    python -m benchmarks.memory
"""
import torch

from avalanche_balanced import BalancedBuffer


def report(num_feats: int, feature_dtype: torch.dtype) -> dict:
    buf = BalancedBuffer(10, feature_dtype=feature_dtype)
    buf.add_data(torch.rand(1, 3, 32, 32), torch.tensor([0]), torch.zeros(1, 100), torch.zeros(1, num_feats))
    return buf.bytes_per_sample()


def main():
    print("bytes per stored sample (CIFAR-100 inputs 3x32x32 float32, 100 logits)")
    for model, feats in (("reduced ResNet-18 (nf=20)", 160), ("ResNet-18 (nf=64)", 512)):
        for dtype in (torch.float32, torch.float16):
            sizes = report(feats, dtype)
            total = sum(sizes.values())
            detail = ", ".join(f"{k} {v}" for k, v in sizes.items())
            print(f"{model}, features {str(dtype).replace('torch.', '')}: {total} B "
                  f"({total * 500 / 2**20:.2f} MiB for 500 samples) = {detail}")


if __name__ == "__main__":
    main()
