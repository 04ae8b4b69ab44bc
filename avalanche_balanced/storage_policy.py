"""Avalanche's ``ExemplarsBuffer`` contract for :class:`~avalanche_balanced.buffer.BalancedBuffer`,
so that it also serves as ``ReplayPlugin(storage_policy=...)``: a dataset view of the stored
samples, insertion of an experience after training (``post_adapt``), and ``resize``."""
import hashlib
from typing import Callable, Optional

import torch
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute, _make_taskaware_tensor_classification_dataset
from avalanche.training.storage_policy import ExemplarsBuffer

from .minibatch import item_layout, strategy_batches
from .model_passes import batch_outputs, dataset_outputs

__all__ = ["StoragePolicyContract", "dataset_fingerprint"]


class StoragePolicyContract(ExemplarsBuffer):
    """The ``ExemplarsBuffer`` methods, written over the buffer's own storage and ``add_data``."""

    _item_layout = None  # dictionary items: the keys and types of the data inserted (minibatch.item_layout)

    @property
    def buffer(self):
        """Avalanche dataset view of the stored samples, in the layout of the data inserted:
        ``(input, label, task label)`` tuples, or dictionaries with the same keys and types."""
        if self.size == 0:
            return super().buffer  # Avalanche's empty dataset
        n = self.size
        if self._item_layout is not None:
            return _DictView.dataset(self.examples[:n].cpu(), self.labels[:n].cpu(), self.task_labels[:n].cpu(),
                                     self._item_layout)
        return _make_taskaware_tensor_classification_dataset(
            self.examples[:n].cpu(), self.labels[:n].cpu(),
            task_labels=self.task_labels[:n].cpu().tolist(), targets=self.labels[:n].cpu().tolist())

    @buffer.setter
    def buffer(self, new_buffer) -> None:
        raise AttributeError(f"{type(self).__name__}.buffer is a read-only view; insert with add_data()")

    @torch.no_grad()
    def post_adapt(self, agent, exp) -> None:
        """Insert the experience's data after training, with logits and features from ``agent.model``
        (the path of Avalanche's ``ReplayPlugin(storage_policy=buffer)``), then refresh the
        prototypes and regroup."""
        self.add_dataset(agent.model, exp.dataset, agent.device, strategy=agent)
        self.refresh_prototypes()
        self.regroup()

    @torch.no_grad()
    def add_dataset(self, model: Optional[torch.nn.Module], dataset, device, batch_size: int = 256,
                    preprocess: Optional[Callable] = None, strategy=None, output_widths=None) -> None:
        """Insert every sample of an Avalanche dataset, with logits and features from one
        eval-mode pass of ``model`` (restored to its mode afterwards).

        The stored inputs are the dataset's (``dataset.eval()``: no augmentation);
        ``preprocess`` (e.g. ``cifar_normalize``) is applied to the model's input only. With
        ``strategy``, minibatches are collated by the dataset's ``collate_fn`` and read through
        the strategy's ``mb_x`` / ``mb_y`` / ``mb_task_id`` (dictionary minibatches included);
        without, items are ``(input, label[, task label])`` tuples. ``model=None`` (with
        ``output_widths``, the ``(logit, feature)`` widths) stores zero logits and features
        without a model pass, for callers whose readers refresh the features first.
        """
        if strategy is None:
            outputs = dataset_outputs(model, dataset, device, batch_size, preprocess)
        else:
            layout = item_layout(strategy, dataset)
            if layout is not None:
                self._item_layout = layout
            batches = strategy_batches(strategy, dataset, batch_size)
            outputs = (batch_outputs(model, batches, preprocess) if model is not None
                       else _without_outputs(batches, output_widths))
        # All or nothing, once: every model pass first, then the minibatches' insertions as one
        # transaction (interrupted anywhere, nothing of the dataset is stored); a dataset already
        # inserted whole (the same inputs and labels, in order) is not inserted again.
        batches = list(outputs)
        fingerprint = dataset_fingerprint([(b[0], b[1]) for b in batches])
        if not batches or fingerprint in self.storage.inserted:
            return
        try:
            with self.storage.transaction():
                for x, y, t, logits, feats in batches:
                    self.add_data(x, y, logits, feats, task_labels=t)
                self.storage.inserted.append(fingerprint)
        except BaseException:
            self.invalidate_caches()
            raise

    @torch.no_grad()
    def resize(self, strategy, new_size: int) -> None:
        """Change the capacity. Shrinking keeps a uniform random subset (class- or group-balanced
        under ``insertion="class_balanced"`` or ``"group_balanced"``), which preserves each
        policy's invariant."""
        if isinstance(new_size, bool) or not isinstance(new_size, int) or new_size <= 0:
            raise ValueError(f"new_size must be a positive integer, got {new_size!r}")
        self.storage.resize(new_size, self.group_width)
        self.invalidate_caches()


def dataset_fingerprint(batches) -> str:
    """SHA-256 of a dataset's ``(inputs, labels)`` minibatches, in order: what makes two insertions the same."""
    digest = hashlib.sha256()
    for pair in batches:
        for t in pair:
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _DictView(torch.utils.data.Dataset):
    """Stored samples as dictionary items with the keys and value types of the data they came
    from (inputs, targets, task labels), so that they collate with it (``ReplayDataLoader``)."""

    def __init__(self, examples, labels, task_labels, layout):
        self.examples, self.labels, self.task_labels, self.layout = examples, labels, task_labels, layout

    def __len__(self):
        return self.examples.shape[0]

    def __getitem__(self, i):
        item = {}
        for name, values in (("x", self.examples), ("y", self.labels), ("t", self.task_labels)):
            if self.layout[name] is not None:
                key, is_tensor = self.layout[name]
                item[key] = values[i] if is_tensor else values[i].item()
        return item

    @classmethod
    def dataset(cls, examples, labels, task_labels, layout):
        """The view as an ``AvalancheDataset`` with ``targets`` and ``targets_task_labels``."""
        attributes = [DataAttribute(labels.tolist(), "targets"),
                      DataAttribute(task_labels.tolist(), "targets_task_labels")]
        return AvalancheDataset([cls(examples, labels, task_labels, layout)], data_attributes=attributes,
                                collate_fn=_collate_dicts)


def _collate_dicts(items):
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
            else torch.tensor([it[k] for it in items]) for k in items[0]}


def _without_outputs(batches, widths):
    """``(inputs, labels, task labels, zero logits, zero features)`` of every minibatch."""
    num_logits, num_feats = widths
    for x, y, t in batches:
        yield x, y, t, x.new_zeros(x.shape[0], num_logits, dtype=torch.float32), \
            x.new_zeros(x.shape[0], num_feats, dtype=torch.float32)
