"""A compiled training step: ``torch.compile`` on the model, in place, for any strategy.

The model is compiled with ``nn.Module.compile`` (the module stays itself: its state-dict keys,
hooks, deep copies and checkpoints are unchanged), so the plugin's feature hook, SARL-GELU's
frozen teacher and the checkpoints work as in eager mode. ``mode="reduce-overhead"`` adds CUDA
graphs on a GPU; they need static shapes, so train with ``drop_last=True`` (every current batch
full; the replay batch is always full) -- :func:`train_kwargs` says what to pass.
"""
from typing import Optional

from torch import nn

__all__ = ["compile_model", "train_kwargs"]


def compile_model(model: nn.Module, *, mode: Optional[str] = None, backend: str = "inductor") -> nn.Module:
    """Compile ``model``'s forward in place and return it (``torch>=2.2``)."""
    if not hasattr(model, "compile"):
        raise RuntimeError("nn.Module.compile needs torch >= 2.2")
    model.compile(mode=mode, backend=backend, dynamic=False)
    return model


def train_kwargs(mode: Optional[str]) -> dict:
    """Keyword arguments for ``strategy.train(experience, **kwargs)`` under ``mode``: CUDA graphs
    (``reduce-overhead``) need every batch of the same size, so the ragged last one is dropped."""
    return {"drop_last": True} if mode == "reduce-overhead" else {}
