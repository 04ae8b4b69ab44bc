"""Batched, on-device input transforms: CIFAR augmentation and normalisation as pure functions,
and two ways to apply them in any Avalanche strategy (a plugin, or inside the model)."""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from avalanche.core import SupervisedPlugin

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "cifar_augment", "cifar_normalize", "BatchTransformPlugin",
           "AugmentedModel"]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_CROP_PAD = 4


def _check_batch(x: Tensor, fn: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{fn} expects a B x 3 x H x W image batch, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{fn} expects floats in [0, 1], got {x.dtype} "
                         "(convert uint8 images with x.float() / 255)")


def _channel_stats(x: Tensor):
    def as_column(values):
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return as_column(CIFAR100_MEAN), as_column(CIFAR100_STD)


def cifar_normalize(x: Tensor) -> Tensor:
    """Per-channel CIFAR-100 normalisation of a float B x 3 x H x W batch in [0, 1]."""
    _check_batch(x, "cifar_normalize")
    mean, std = _channel_stats(x)
    return (x - mean) / std


def cifar_augment(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Standard CIFAR training augmentation for a whole batch, on ``x``'s device.

    Per sample: a random crop of the 4-pixel zero-padded image back to H x W and a random
    horizontal flip (p = 0.5), then :func:`cifar_normalize` -- the same as torchvision's
    RandomCrop(32, padding=4), RandomHorizontalFlip(), Normalize(mean, std) per image.
    Randomness comes from ``generator`` (on ``x``'s device) or torch's global RNG. The
    output has the input's shape, dtype and device, and keeps channels_last layout.
    """
    _check_batch(x, "cifar_augment")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device} but x is on {x.device}")
    b, _, h, w = x.shape
    dev = x.device
    span = 2 * _CROP_PAD + 1
    dy = torch.randint(0, span, (b, 1), generator=generator, device=dev)
    dx = torch.randint(0, span, (b, 1), generator=generator, device=dev)
    flip = torch.rand((b, 1), generator=generator, device=dev) < 0.5
    rows = dy + torch.arange(h, device=dev)  # b x h rows of the padded image
    cols = dx + torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(1), cols)  # a flipped crop reads right to left
    padded = F.pad(x, (_CROP_PAD,) * 4)
    batch = torch.arange(b, device=dev)
    # One gather for every sample. The index tensors are split by the channel slice, so
    # the result comes out as B x H x W x C; permuted, it is channels_last storage.
    out = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if not channels_last:
        out = out.contiguous()
    mean, std = _channel_stats(x)
    return out.sub_(mean).div_(std)  # in place: out is a fresh tensor



class BatchTransformPlugin(SupervisedPlugin, supports_distributed=True):
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
