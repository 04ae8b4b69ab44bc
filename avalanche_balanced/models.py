"""CIFAR ResNet-18 with GELU activations (SARL-GELU), or with SARL's sparse k-WTA activations.

The layout is Avalanche's ``SlimResNet18`` / the usual CIFAR ResNet: a stride-1 3x3 stem
without max-pool (32x32 inputs are too small to downsample early), four stages of two
BasicBlocks with widths nf, 2nf, 4nf, 8nf, global average pooling and a final ``linear``.
:func:`gelu_resnet18`: every activation is GELU. :func:`sparse_resnet18`: the activations of
SARL's backbone (the authors' ``backbone/SparseResNet18.py``): ReLU after the stem, and
k-winners-take-all (:class:`KWinnersTakeAll`) in place of both activations of every block.
"""
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["KWinnersTakeAll", "GeluBasicBlock", "GeluResNet", "gelu_resnet18", "sparse_resnet18"]


class KWinnersTakeAll(nn.Module):
    """ReLU, then k-winners-take-all across the channels at every location (SARL's activation).

    At each spatial position of each sample the ``k = round(percent_on * channels)`` largest
    channel values are kept and the others set to 0; values below 0 are set to 0 as well
    (the ReLU; the authors' ``KWinners2d(local=True, relu=True)`` with no boosting). The same
    ``k`` in training and evaluation. Ties at the threshold are all kept.
    """

    def __init__(self, percent_on: float = 0.9):
        super().__init__()
        if not isinstance(percent_on, (int, float)) or not 0 < percent_on <= 1:
            raise ValueError(f"percent_on must be in (0, 1], got {percent_on!r}")
        self.percent_on = float(percent_on)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        k = max(1, int(round(channels * self.percent_on)))
        # The k-th largest value per location is the largest of the (channels - k + 1) smallest:
        # topk of those few is 1.5-2.5x faster than kthvalue on the CPU, and picks the same value.
        # The threshold only feeds a comparison, so autograd need not record it.
        smallest = x.detach().topk(channels - k + 1, dim=1, largest=False, sorted=False).values
        threshold = smallest.amax(dim=1, keepdim=True).clamp_min(0)
        return x.masked_fill(x < threshold, 0)

    def extra_repr(self) -> str:
        return f"percent_on={self.percent_on}"


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows every conv has its own shift.
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class GeluBasicBlock(nn.Module):
    """conv-BN-act-conv-BN plus a (projected if needed) shortcut, then act; act is GELU unless
    ``activation`` (a factory of modules) says otherwise."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 activation: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = activation()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = activation()
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            # 1x1 projection so the identity path matches the new width and resolution.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class GeluResNet(nn.Module):
    """CIFAR ResNet with four stages of ``GeluBasicBlock``: GELU activations unless
    ``activation`` (the blocks') and ``stem_activation`` (after the stem; default: the blocks')
    say otherwise.

    ``forward(x)`` gives logits; ``forward(x, return_features=True)`` gives
    ``(logits, features)`` from the same pass, where ``features`` are the pooled
    ``num_features``-dimensional penultimate features and ``linear(features) == logits``.
    """

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 100,
                 nf: int = 64, activation: Callable[[], nn.Module] = nn.GELU,
                 stem_activation: Optional[Callable[[], nn.Module]] = None):
        super().__init__()
        if len(num_blocks) != 4 or any(int(n) < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be 4 positive block counts, got {num_blocks!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if nf < 1:
            raise ValueError(f"nf (base width) must be >= 1, got {nf}")
        self.conv1 = _conv3x3(3, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        self.act1 = (stem_activation or activation)()
        in_planes = nf
        for stage, n_blocks in enumerate(num_blocks):
            planes = nf * 2 ** stage
            # The first block of every stage but the first halves the resolution.
            strides = [1 if stage == 0 else 2] + [1] * (int(n_blocks) - 1)
            blocks = []
            for stride in strides:
                blocks.append(GeluBasicBlock(in_planes, planes, stride, activation))
                in_planes = planes
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = in_planes
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features, B x ``num_features``."""
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: Tensor, return_features: bool = False
                ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        feats = self.features(x)
        logits = self.linear(feats)
        return (logits, feats) if return_features else logits


def gelu_resnet18(num_classes: int = 100, nf: int = 64) -> GeluResNet:
    """CIFAR ResNet-18 (2-2-2-2 BasicBlocks) with GELU; ``nf=20`` is the reduced CPU width."""
    return GeluResNet((2, 2, 2, 2), num_classes=num_classes, nf=nf)


def sparse_resnet18(num_classes: int = 100, nf: int = 64, percent_on: float = 0.9) -> GeluResNet:
    """SARL's sparse CIFAR ResNet-18: ReLU after the stem, :class:`KWinnersTakeAll` keeping
    ``percent_on`` of the channels (0.9, the authors' seq-cifar100 setting) in place of both
    activations of every block."""
    KWinnersTakeAll(percent_on)  # checks percent_on before building anything
    return GeluResNet((2, 2, 2, 2), num_classes=num_classes, nf=nf,
                      activation=lambda: KWinnersTakeAll(percent_on), stem_activation=nn.ReLU)
