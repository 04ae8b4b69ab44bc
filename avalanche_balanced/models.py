"""CIFAR ResNet-18 with GELU activations.

The layout is Avalanche's ``SlimResNet18`` / the usual CIFAR ResNet: a stride-1 3x3 stem
without max-pool (32x32 inputs are too small to downsample early), four stages of two
BasicBlocks with widths nf, 2nf, 4nf, 8nf, global average pooling and a final ``linear``.
Every activation is GELU instead of ReLU.
"""
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["GeluBasicBlock", "GeluResNet", "gelu_resnet18"]


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: the BatchNorm that follows every conv has its own shift.
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class GeluBasicBlock(nn.Module):
    """conv-BN-GELU-conv-BN plus a (projected if needed) shortcut, then GELU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.GELU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.GELU()
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
    """CIFAR ResNet with GELU activations and four stages of ``GeluBasicBlock``.

    ``forward(x)`` gives logits; ``forward(x, return_features=True)`` gives
    ``(logits, features)`` from the same pass, where ``features`` are the pooled
    ``num_features``-dimensional penultimate features and ``linear(features) == logits``.
    """

    def __init__(self, num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 100,
                 nf: int = 64):
        super().__init__()
        if len(num_blocks) != 4 or any(int(n) < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be 4 positive block counts, got {num_blocks!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if nf < 1:
            raise ValueError(f"nf (base width) must be >= 1, got {nf}")
        self.conv1 = _conv3x3(3, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        self.act1 = nn.GELU()
        in_planes = nf
        for stage, n_blocks in enumerate(num_blocks):
            planes = nf * 2 ** stage
            # The first block of every stage but the first halves the resolution.
            strides = [1 if stage == 0 else 2] + [1] * (int(n_blocks) - 1)
            blocks = []
            for stride in strides:
                blocks.append(GeluBasicBlock(in_planes, planes, stride))
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
