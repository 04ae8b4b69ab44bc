"""Penultimate features from the same forward pass as the logits.

Avalanche strategies call ``model(x)`` themselves, so the plugin cannot ask
for features as a return value; instead a forward hook on the classifier
records its *input*, which is exactly the feature vector the logits are
computed from (``linear(features) == logits``). The classifier is the model's
first ``MultiHeadClassifier`` (every head reads the same features), else its
last ``IncrementalClassifier``, else its last ``nn.Linear``.
"""
import contextlib
import copy
import inspect
from collections import OrderedDict
from typing import Optional

import torch

from torch import Tensor, nn
from avalanche.models import IncrementalClassifier, MultiHeadClassifier
from avalanche.models.utils import avalanche_forward, is_multi_task_module
from avalanche.training.utils import get_last_fc_layer

__all__ = ["FeatureHook", "classifier_of", "eval_mode", "forward_with_features", "frozen_copy", "model_version"]


def classifier_of(model: nn.Module) -> nn.Module:
    """The module whose input is the model's feature vector (see the module docstring)."""
    modules = list(model.modules())
    for kinds in ((MultiHeadClassifier,), (IncrementalClassifier,)):
        found = [m for m in modules if isinstance(m, kinds)]
        if found:
            return found[0] if kinds[0] is MultiHeadClassifier else found[-1]
    return get_last_fc_layer(model)[1]


class FeatureHook:
    """Records the input of a model's last ``nn.Linear`` on every forward pass.

    ``hook.features`` holds the features of the forward passes since the hook was added,
    concatenated in call order (with the autograd graph, so losses may use them), or ``None``
    before the first one; a strategy that splits its minibatch into several passes (SARL's
    separate current and replayed batches) gets the features of all of them.
    Use as a context manager or call :meth:`remove` when done.
    """

    def __init__(self, model: nn.Module, layer: Optional[nn.Module] = None):
        self.layer = layer if layer is not None else classifier_of(model)
        self.calls: list = []  # the classifier's input at each pass, in order
        self._handle = self.layer.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        self.calls.append(inputs[0])

    @property
    def features(self) -> Optional[Tensor]:
        """The features of the passes since the hook was added, concatenated in call order
        (one pass: its features), or None before the first."""
        if not self.calls:
            return None
        return self.calls[0] if len(self.calls) == 1 else torch.cat(self.calls)

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> "FeatureHook":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __deepcopy__(self, memo) -> "_InertHook":
        # A model deep-copied while the hook is on it (an EMA or snapshot plugin after a forward
        # pass was interrupted) copies an inert stand-in, not the recorded graph tensors.
        return _InertHook()


class _InertHook:
    """What a deep copy of a model holds in place of a :class:`FeatureHook` (the copied hook
    method runs with this as its ``self``): it records nothing."""

    class _Discard(list):
        def append(self, item):
            pass

    def __init__(self):
        self.calls = self._Discard()


def forward_with_features(model: nn.Module, x: Tensor, task_labels: Optional[Tensor] = None):
    """``(logits, features)`` of one forward pass, for any model with a classifier.

    Uses ``model(x, return_features=True)`` when the model's ``forward`` takes
    that keyword (as :func:`avalanche_balanced.models.gelu_resnet18` does), a
    :class:`FeatureHook` otherwise. A multi-task model (Avalanche's
    ``MultiTaskModule``) gets ``task_labels`` (all 0 when None), as Avalanche's
    ``avalanche_forward`` passes them.
    """
    if is_multi_task_module(model):
        if task_labels is None:
            task_labels = x.new_zeros(x.shape[0], dtype=torch.long)
        with FeatureHook(model) as hook:
            logits = avalanche_forward(model, x, task_labels)
        return logits, hook.features
    if "return_features" in inspect.signature(model.forward).parameters:
        return model(x, return_features=True)
    with FeatureHook(model) as hook:
        logits = model(x)
    return logits, hook.features


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the ``with`` block and restore its mode after it,
    also when the block raises (a failed buffer pass must not leave training in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with gradients off and **no hooks**.

    The copy is made as if every module had no hooks (the hook tables are
    swapped for empty ones in the copy's memo), so whatever hooks plugins hold
    on ``model`` at that moment (a :class:`FeatureHook` keeps the graph of the
    latest forward pass, which cannot be deep-copied) neither break the copy nor
    follow it: a frozen teacher is independent of the order in which hooks
    are removed.
    """
    memo = {id(getattr(m, name)): OrderedDict()
            for m in model.modules() for name in _HOOK_DICTS if getattr(m, name, None) is not None}
    frozen = copy.deepcopy(model, memo).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def model_version(model: nn.Module) -> tuple:
    """A fingerprint that changes whenever the model's state changes in place.

    Every in-place write to a tensor bumps its version counter: an optimiser
    step, a BatchNorm running-statistics update in a train-mode forward pass,
    ``load_state_dict``. Comparing fingerprints tells whether anything derived
    from the model (stored features) may be stale, with no host sync and no
    pass over the data.
    """
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))
