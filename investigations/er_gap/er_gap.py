"""Where the plugin with class-balanced storage differs from Avalanche's ``ClassBalancedBuffer`` ER,
measured without training, one difference at a time (issue 20).

    python investigations/er_gap/er_gap.py

1. **What is stored.** The ordered long-tailed stream's labels (CIFAR-100-LT counts, ratio 0.01,
   cap 500, 5 experiences of 20 classes, head classes first) go through Avalanche's
   ``ClassBalancedBuffer(500)`` (``update_from_dataset`` after each experience) and through
   ``BalancedBuffer(500, insertion="class_balanced")`` (minibatches of 256 in the experience's
   order, as the plugin's end-of-experience pass inserts them). Printed per experience: samples
   stored, the largest per-class count difference, and the share of each class's kept samples
   that come from the second half of its images in insertion order (0.50: no recency bias).
2. **How the stored samples are replayed.** For experiences of ``T`` iterations with 32 replayed
   per iteration from a full buffer of 500: Avalanche's ``ReplayDataLoader`` (what ``ReplayPlugin``
   uses; it cycles through the buffer in reshuffled passes) against the plugin's uniform draws
   (``BalancedBuffer.get_data``: distinct within a batch, independent across batches). Printed:
   the share of the buffer never replayed in the experience and the coefficient of variation of
   per-sample replay counts. T = 5, 16 and 250 are the iterations of one epoch of a tail, a
   medium and the head experience of that stream.

Augmentation and loss averaging need no measurement: in the comparison both methods augment
inside the model (``AugmentedModel``) and ``Naive`` takes one mean over the joint batch.
"""
import torch
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.training.storage_policy import ClassBalancedBuffer

from avalanche_balanced import BalancedBuffer
from avalanche_balanced.long_tail import long_tail_counts

MEM, CLASSES, EXPERIENCES, BATCH = 500, 100, 5, 32


def dataset(ids: torch.Tensor, labels: torch.Tensor):
    """A dataset whose input is each image's id, so what was kept can be read back."""
    return _make_taskaware_tensor_classification_dataset(ids.float().unsqueeze(1), labels)


def stream(seed: int = 0):
    """``(label of every image id, experiences)``: ordered long-tailed, each experience's
    ``(image ids, labels)`` in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    counts = long_tail_counts(range(CLASSES), MEM, 0.01, "ordered")
    labels = torch.arange(CLASSES).repeat_interleave(counts)
    per_exp = CLASSES // EXPERIENCES
    experiences = []
    for e in range(EXPERIENCES):
        ids = torch.nonzero((labels >= e * per_exp) & (labels < (e + 1) * per_exp)).squeeze(1)
        ids = ids[torch.randperm(ids.numel(), generator=g)]
        experiences.append((ids, labels[ids]))
    return labels, experiences


def in_second_half(ids: torch.Tensor, labels: torch.Tensor, size: int) -> torch.Tensor:
    """Per image id (``size`` of them): whether it comes in the second half of its class's
    images in the experience's insertion order."""
    late = torch.zeros(size, dtype=torch.bool)
    for c in labels.unique():
        members = ids[labels == c]
        late[members[members.numel() // 2:]] = True  # odd counts: the middle image counts as late
    return late


def compare_storage():
    label_of, experiences = stream()
    late = torch.zeros(label_of.numel(), dtype=torch.bool)
    avalanche, ours = ClassBalancedBuffer(MEM), BalancedBuffer(MEM, insertion="class_balanced", seed=0)
    print("| after experience | stored (Avalanche / ours) | largest per-class count difference | "
          "kept from the 2nd half of a class's images (Avalanche / ours) |")
    print("|---|---|---|---|")
    torch.manual_seed(0)  # Avalanche's reservoir draws from torch's global generator
    for e, (ids, labels) in enumerate(experiences):
        late |= in_second_half(ids, labels, label_of.numel())
        avalanche.update_from_dataset(dataset(ids, labels))
        for start in range(0, ids.numel(), 256):  # the plugin's end-of-experience pass, batch by batch
            y = labels[start:start + 256]
            ours.add_data(ids[start:start + 256].float().unsqueeze(1), y, torch.zeros(y.numel(), CLASSES),
                          torch.zeros(y.numel(), 4))
        kept_avalanche = torch.cat([torch.stack([x[0] for x, *_ in group.buffer]).long()
                                    for group in avalanche.buffer_groups.values() if len(group.buffer)])
        kept_ours = ours.examples[: ours.size, 0].long()
        per_class = [torch.bincount(label_of[k], minlength=CLASSES) for k in (kept_avalanche, kept_ours)]
        print(f"| {e} | {kept_avalanche.numel()} / {kept_ours.numel()} | "
              f"{(per_class[0] - per_class[1]).abs().max().item()} | "
              f"{late[kept_avalanche].float().mean():.2f} / {late[kept_ours].float().mean():.2f} |")


def compare_draws(iterations=(5, 16, 250), repeats: int = 20):
    print("\n| iterations T | never replayed (ReplayDataLoader / plugin) | CV of replay counts "
          "(ReplayDataLoader / plugin) |")
    print("|---|---|---|")
    memory = dataset(torch.arange(MEM), torch.zeros(MEM, dtype=torch.long))
    ours = BalancedBuffer(MEM, insertion="reservoir", seed=0)
    ours.add_data(torch.arange(MEM).float().unsqueeze(1), torch.zeros(MEM, dtype=torch.long),
                  torch.zeros(MEM, 2), torch.zeros(MEM, 4))
    for t in iterations:
        current = dataset(torch.arange(t * BATCH) + MEM, torch.ones(t * BATCH, dtype=torch.long))
        stats = {"loader": [], "plugin": []}
        for r in range(repeats):
            torch.manual_seed(r)
            counts = torch.zeros(MEM)
            for x, y, _ in ReplayDataLoader(current, memory, oversample_small_tasks=True, batch_size=BATCH,
                                            batch_size_mem=BATCH, shuffle=True):
                replayed = x[y == 0, 0].long()
                counts += torch.bincount(replayed, minlength=MEM)
            stats["loader"].append(counts)
            counts = torch.zeros(MEM)
            for _ in range(t):
                counts += torch.bincount(ours.get_data(BATCH).indices, minlength=MEM)
            stats["plugin"].append(counts)
        never = {k: torch.stack([(c == 0).float().mean() for c in v]).mean().item() for k, v in stats.items()}
        cv = {k: torch.stack([c.std() / c.mean() for c in v]).mean().item() for k, v in stats.items()}
        print(f"| {t} | {never['loader']:.3f} / {never['plugin']:.3f} | {cv['loader']:.3f} / {cv['plugin']:.3f} |")


if __name__ == "__main__":
    compare_storage()
    compare_draws()
