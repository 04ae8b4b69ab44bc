"""Mixed precision for any Avalanche strategy, as a plugin (Avalanche 0.6 templates have none)."""
from typing import Optional

import torch
from avalanche.core import SupervisedPlugin

__all__ = ["MixedPrecisionPlugin"]


class MixedPrecisionPlugin(SupervisedPlugin, supports_distributed=True):
    """Runs forward passes and the loss under ``torch.autocast``.

    Training: autocast opens in ``before_forward`` and closes in
    ``before_backward``, so the strategy's criterion (every loss term of
    :class:`~avalanche_balanced.strategies.SARLGelu` included) runs in mixed
    precision too, and the backward pass and optimiser step run outside it, as
    PyTorch recommends. Evaluation: around each eval forward pass.

    The default ``bfloat16`` has float32's range, so no gradient scaling is
    needed. Autocast changes only matrix-like operations (convolutions, linear
    layers, losses), so plugins that prepare the batch (replay joins,
    augmentation) behave the same before or after this one in the list.

    Args:
        device_type: ``"cuda"`` or ``"cpu"``; None: the strategy's device type.
        dtype: the autocast dtype.
    """

    def __init__(self, device_type: Optional[str] = None, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.device_type = device_type
        self.dtype = dtype
        self._context = None

    def _enter(self, strategy):
        self._exit()
        device_type = self.device_type or torch.device(strategy.device).type
        self._context = torch.autocast(device_type=device_type, dtype=self.dtype)
        self._context.__enter__()

    def _exit(self):
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    def before_forward(self, strategy, **kwargs):
        self._enter(strategy)

    def before_backward(self, strategy, **kwargs):
        self._exit()

    def after_training_iteration(self, strategy, **kwargs):
        self._exit()  # in case a strategy skipped the backward pass

    def before_eval_forward(self, strategy, **kwargs):
        self._enter(strategy)

    def after_eval_forward(self, strategy, **kwargs):
        self._exit()
