"""Penultimate features from the same forward pass as the logits.

Avalanche strategies call ``model(x)`` themselves, so the plugin cannot ask
for features as a return value; instead a forward hook on the final linear
layer records its *input*, which is exactly the feature vector the logits are
computed from (``linear(features) == logits``).
"""
import inspect
from typing import Optional

import torch
from torch import Tensor, nn
from avalanche.training.utils import get_last_fc_layer

__all__ = ["FeatureHook", "forward_with_features"]


class FeatureHook:
    """Records the input of a model's last ``nn.Linear`` on every forward pass.

    ``hook.features`` holds the features of the latest forward pass (with the
    autograd graph, so losses may use them) or ``None`` before the first one.
    Use as a context manager or call :meth:`remove` when done.
    """

    def __init__(self, model: nn.Module, layer: Optional[nn.Module] = None):
        self.layer = layer if layer is not None else get_last_fc_layer(model)[1]
        self.features: Optional[Tensor] = None
        self._handle = self.layer.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        self.features = inputs[0]

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "FeatureHook":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def forward_with_features(model: nn.Module, x: Tensor):
    """``(logits, features)`` of one forward pass, for any model with a final linear layer.

    Uses ``model(x, return_features=True)`` when the model's ``forward`` takes
    that keyword (as :func:`avalanche_balanced.models.gelu_resnet18` does), a
    :class:`FeatureHook` otherwise.
    """
    if "return_features" in inspect.signature(model.forward).parameters:
        return model(x, return_features=True)
    with FeatureHook(model) as hook:
        logits = model(x)
    return logits, hook.features
