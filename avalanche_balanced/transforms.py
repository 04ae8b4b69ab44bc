"""Batched, on-device input transforms for any Avalanche strategy: as a plugin or inside the model."""
from typing import Callable, Optional

from torch import nn
from avalanche.core import SupervisedPlugin

__all__ = ["BatchTransformPlugin", "AugmentedModel"]


class BatchTransformPlugin(SupervisedPlugin):
    """Applies a batched transform to ``strategy.mbatch[0]`` just before the forward pass.

    Avalanche's datasets transform one sample at a time on the CPU; with
    datasets that carry no augmentation (such as
    :func:`~avalanche_balanced.data.split_cifar100`) this plugin augments the
    whole minibatch at once on the training device instead, e.g.
    ``BatchTransformPlugin(cifar_augment, cifar_normalize)``.

    Place it *after* any plugin that joins replayed samples to the minibatch
    (plugins run in list order), so that replayed samples are transformed too.

    Args:
        train_transform: applied in ``before_forward`` (training).
        eval_transform: applied in ``before_eval_forward`` (evaluation).
    """

    def __init__(self, train_transform: Optional[Callable] = None,
                 eval_transform: Optional[Callable] = None):
        super().__init__()
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    def before_forward(self, strategy, **kwargs):
        if self.train_transform is not None:
            strategy.mbatch[0] = self.train_transform(strategy.mbatch[0])

    def before_eval_forward(self, strategy, **kwargs):
        if self.eval_transform is not None:
            strategy.mbatch[0] = self.eval_transform(strategy.mbatch[0])


class AugmentedModel(nn.Module):
    """A model that transforms its input batch first: ``train_transform`` in train
    mode, ``eval_transform`` in eval mode.

    For strategies that run forward passes the plugins cannot reach (Avalanche's
    ``ER_ACE`` forwards its replay batch separately, ``DER`` joins its replay
    batch after the plugins ran), putting the batched augmentation inside the
    model is the one place every input passes through. Replay buffers then store
    the raw inputs, as they should.
    """

    def __init__(self, model: nn.Module, train_transform: Optional[Callable] = None,
                 eval_transform: Optional[Callable] = None):
        super().__init__()
        self.model = model
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    def forward(self, x, **kwargs):
        transform = self.train_transform if self.training else self.eval_transform
        return self.model(transform(x) if transform is not None else x, **kwargs)
