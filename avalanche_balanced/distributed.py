"""Data-parallel training (torch DDP, ``torchrun``) with one replay buffer, identical on every rank.

Every rank holds a full replica of the buffer; nothing is partitioned. What keeps the
replicas identical, through Avalanche's ``DistributedHelper`` (no communication code here):

* **Draws**: every rank draws the *global* replay batch from its replica, with the same
  generator state, so every rank computes the same indices; rank ``r`` of ``W`` keeps the
  ``r``-th contiguous ``1 / W`` of them (:func:`shard_rows`). In one step no sample is drawn
  by two ranks, and the union of the ranks' draws *is* the single-process draw of the
  global batch: the same distribution, by construction, not only in expectation.
* **Writes**: whatever a rank learns about the samples it replayed (their losses, their
  features when they are not refreshed) and, with online insertion, its current minibatch
  (inputs, labels, logits, features) is all-gathered in rank order (:func:`gather_rows`)
  and applied on every rank, so every replica receives the same writes in the same order.
* **End of an experience**: the insertion pass runs on every rank over the whole
  experience (the same data, the same DDP-synchronised weights); then rank 0's buffer state
  (storage, counters, generator, prototypes, groups) is broadcast (:func:`broadcast_buffer`),
  so replicas stay identical even where a device's arithmetic is not bitwise reproducible.
  :func:`buffer_fingerprint` and :func:`check_same_buffer` verify it.

The model is wrapped in ``DistributedDataParallel`` for the training iterations only
(:class:`DataParallelPlugin`); the buffer's no-grad passes (features, logits, prototypes)
use the plain module, so they run no collective.
"""
import os
import socket
from datetime import timedelta
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


__all__ = ["init_distributed", "free_port", "rank_and_world", "shard_rows", "shard_draw", "gather_rows", "check_divisible",
           "check_same_settings", "broadcast_buffer", "buffer_fingerprint", "check_same_buffer",
           "seeded_shard_loader", "unwrap", "DataParallelPlugin"]


def init_distributed(seed: int, backend: Optional[str] = None, timeout_s: float = 300.0) -> bool:
    """Join the process group ``torchrun`` describes (its ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` environment), with ``timeout_s`` on every collective so that a rank that
    dies stops the others with an error instead of a hang; seed every rank with ``seed``.
    Returns False (nothing done) without that environment: a single-process run."""
    if "RANK" not in os.environ or dist.is_initialized():
        return dist.is_initialized()
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    backend = backend or ("nccl" if use_cuda else "gloo")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    DistributedHelper.use_cuda = use_cuda
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    DistributedHelper.set_random_seeds(seed)
    return True


def free_port() -> int:
    """A free TCP port on this machine, for ``MASTER_PORT`` when spawning ranks without torchrun."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_and_world() -> tuple:
    """``(rank, world size)``; ``(0, 1)`` in a single process."""
    if not DistributedHelper.is_distributed:
        return 0, 1
    return DistributedHelper.rank, DistributedHelper.world_size


def check_divisible(batch_size_mem: int, world_size: int) -> int:
    """Each rank's share of a global replay batch; a world size that does not divide it raises."""
    if batch_size_mem % world_size:
        raise ValueError(f"the replay batch (batch_size_mem={batch_size_mem}) must be divisible by the number "
                         f"of processes ({world_size}): every rank draws an equal share of it")
    return batch_size_mem // world_size


def shard_rows(tensors: Sequence[Tensor], rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous ``1 / world_size`` of every tensor's rows (equal lengths)."""
    n = tensors[0].shape[0]
    if n % world_size:
        raise ValueError(f"{n} rows cannot be split evenly over {world_size} ranks")
    k = n // world_size
    return [t[rank * k: (rank + 1) * k] for t in tensors]


def shard_draw(batch, rank: int, world_size: int):
    """Rank ``rank``'s slice of a global replay draw (a ``ReplayBatch``): an equal contiguous share
    of its rows, the draw cut to a multiple of ``world_size`` when fewer were stored than asked.
    Returns ``(this rank's batch, the indices of the whole draw)``: every rank applies every
    rank's values to those slots, in rank order."""
    if world_size == 1:
        return batch, batch.indices
    n = batch.indices.shape[0]
    if n % world_size:
        batch = type(batch)(*(t[: n - n % world_size] for t in batch))
    return type(batch)(*shard_rows(list(batch), rank, world_size)), batch.indices


def gather_rows(*tensors: Tensor) -> list:
    """Every tensor concatenated over the ranks in rank order (``DistributedHelper.cat_all``);
    the tensors themselves in a single process."""
    if not DistributedHelper.is_distributed:
        return list(tensors)
    return [DistributedHelper.cat_all(t.contiguous()) for t in tensors]


def check_same_settings(buffer) -> None:
    """Raise ``ValueError`` when another rank's buffer has other settings (checked at start)."""
    if not DistributedHelper.is_distributed:
        return
    mine = buffer.config()
    everyone = [None] * DistributedHelper.world_size
    dist.all_gather_object(everyone, mine)
    for rank, theirs in enumerate(everyone):
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} (rank {rank}) vs {mine[k]!r} "
                               f"(rank {DistributedHelper.rank})" for k in differ)
            raise ValueError(f"ranks have different buffer settings: {detail}")


def broadcast_buffer(buffer, src: int = 0) -> None:
    """Make every rank's buffer rank ``src``'s (its whole state, one broadcast)."""
    if not DistributedHelper.is_distributed:
        return
    state = DistributedHelper.broadcast_object(buffer.state_dict() if DistributedHelper.rank == src else None,
                                               src=src)
    if DistributedHelper.rank != src:
        buffer.load_state_dict(state)


def buffer_fingerprint(buffer) -> Tensor:
    """A float64 vector that differs when two buffers differ in size, counters, stored values,
    groups, prototypes, generator state or replay distribution (weighted sums, so that a
    permutation of slots changes it too)."""
    n = buffer.size
    values = [float(n), float(buffer.num_seen), float(buffer.step)]
    if buffer.allocated and n:
        w = torch.arange(1, n + 1, dtype=torch.float64, device=buffer.device)
        for name in ("examples", "labels", "task_labels", "logits", "features", "group_ids"):
            rows = getattr(buffer, name)[:n].reshape(n, -1).double().sum(1)
            values.append(float((rows * w).sum()))
        values.append(float(buffer.prototypes.prototypes.double().sum()))
        values.append(float((buffer.replay_probabilities().double() * w).sum()))
    values.append(float(buffer.generator.get_state().double().sum()))
    return torch.tensor(values, dtype=torch.float64)


def check_same_buffer(buffer) -> None:
    """Raise ``ValueError`` unless every rank's buffer has the same :func:`buffer_fingerprint`."""
    if not DistributedHelper.is_distributed:
        return
    everyone = gather_rows(buffer_fingerprint(buffer).unsqueeze(0))[0]
    if not bool((everyone == everyone[0]).all()):
        raise ValueError(f"the ranks' replay buffers differ (fingerprints by rank: {everyone.tolist()})")


def seeded_shard_loader(dataset, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                        drop_last: bool = False, **loader_kwargs) -> torch.utils.data.DataLoader:
    """This rank's shard of ``dataset`` for one epoch, in the order a ``DistributedSampler``
    seeded with ``seed`` gives at ``epoch`` (every rank the same permutation, disjoint shards)."""
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                       **loader_kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class DataParallelPlugin(SupervisedPlugin, supports_distributed=True):
    """Wraps the strategy's model in ``DistributedDataParallel`` for the training iterations of
    each experience, for any Avalanche ``SupervisedTemplate`` strategy.

    Avalanche 0.6 adds a ``DistributedSampler`` to its data loaders but never wraps the
    model, so gradients are not averaged (ContinualAI/avalanche#1477). This plugin wraps it
    after model adaptation (``before_training_exp``: a head that grew is included) and
    unwraps it after the experience, so evaluation, model adaptation, copies and checkpoints
    see the plain module. Put it first in ``plugins``. A no-op in a single process.

    Evaluation: Avalanche's evaluation loader also takes a ``DistributedSampler``, and its
    metrics are not gathered across ranks, so every rank would report the accuracy of its own
    ``1 / W`` of the test set. Here every rank evaluates the whole stream instead
    (``before_eval_exp`` rebuilds the loader without the sampler): the metrics are those of a
    single-process run, identical on every rank.

    Data order: Avalanche builds a new ``DistributedSampler`` (torch's default seed 0, epoch 0)
    every time its loader is iterated, so every epoch of every run would see the current
    data in the same order. For a single-dataset training loader (one task: ``Naive`` and the
    strategies built on it, SARL-GELU) each epoch here gets a ``DistributedSampler`` seeded
    with ``seed`` and set to the epoch's number within the run, so the order changes every
    epoch and follows the run's seed, the same on resume. Loaders over several datasets
    (Avalanche's replay loaders, several tasks) keep Avalanche's sampling.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        self._train_loader = None  # Avalanche's training loader of the experience

    def before_training_exp(self, strategy, **kwargs):
        if DistributedHelper.is_distributed and not isinstance(strategy.model, DistributedDataParallel):
            strategy.model = DistributedHelper.wrap_model(strategy.model)
        self._train_loader = strategy.dataloader

    def before_training_epoch(self, strategy, **kwargs):
        loader = self._train_loader
        if not (DistributedHelper.is_distributed and getattr(loader, "distributed_sampling", False)
                and len(loader.datasets) == 1):
            return
        # The epoch's number within the run: experiences and epochs are restored on resume.
        epoch = strategy.experience.current_experience * strategy.train_epochs + strategy.clock.train_exp_epochs
        strategy.dataloader = seeded_shard_loader(loader.datasets[0], loader.batch_sizes[0], self.seed, epoch,
                                                  **loader.loader_kwargs)

    def after_training_exp(self, strategy, **kwargs):
        strategy.model = unwrap(strategy.model)

    def before_eval_exp(self, strategy, **kwargs):
        loader = strategy.dataloader
        if DistributedHelper.is_distributed and getattr(loader, "distributed_sampling", False):
            strategy.dataloader = SingleDatasetDataLoader(loader.datasets[0], loader.batch_sizes[0],
                                                          distributed_sampling=False, **loader.loader_kwargs)
