"""A strategy's minibatch, read and written the way the strategy itself reads it.

Avalanche strategies expose the current inputs, targets and task labels as ``mb_x``, ``mb_y``
and ``mb_task_id``, views of ``strategy.mbatch`` (a list or tuple by default, a dictionary
for strategies like the one of Avalanche's ``test_dictionary_mbatches.py``). The replay
plugin reads through those views and writes back to the minibatch field each view is
(found by identity), so any minibatch layout a strategy can read works here too.
"""
from typing import Iterator, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["ReplayStep", "experience_classes", "class_mask", "task_labels_of", "write_minibatch", "strategy_batches", "item_layout"]


class ReplayStep(NamedTuple):
    """One training iteration's joint minibatch, for a strategy's loss: ``num_current`` current samples
    followed by the replayed ones (``replay``, None when the buffer was empty), and the penultimate
    ``features`` of the joint batch from this iteration's forward pass, with their autograd graph."""

    num_current: int
    replay: Optional[tuple]  # a ReplayBatch
    features: torch.Tensor


def experience_classes(experience, device) -> Tensor:
    """The classes of an experience: ``classes_in_this_experience`` when it has them (Avalanche's
    class-incremental experiences), else the distinct targets of its dataset, else none."""
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is None:
        targets = getattr(getattr(experience, "dataset", None), "targets", None)
        classes = [] if targets is None else torch.unique(torch.as_tensor(list(targets))).tolist()
    return torch.as_tensor(list(classes), dtype=torch.long, device=device)


def class_mask(classes: Tensor, min_width: int = 0) -> Tensor:
    """A boolean mask over class ids (at least ``min_width`` wide) that holds ``classes``."""
    width = max(min_width, int(classes.max()) + 1 if classes.numel() else 0)
    mask = torch.zeros(width, dtype=torch.bool, device=classes.device)
    mask[classes] = True
    return mask


def _task_view(strategy) -> Optional[Tensor]:
    try:
        t = strategy.mb_task_id
    except (AssertionError, IndexError, KeyError):  # a minibatch without a task-label field
        return None
    if callable(t) and not isinstance(t, Tensor):  # declared as a plain method, not a property
        t = t()
    return t if isinstance(t, Tensor) else None


def task_labels_of(strategy) -> Tensor:
    """The minibatch's task labels; zeros (task 0) when it carries none."""
    t = _task_view(strategy)
    return t if t is not None else torch.zeros_like(strategy.mb_y)


def write_minibatch(strategy, x: Tensor, y: Tensor, t: Tensor) -> None:
    """Write joint inputs, targets and task labels where ``mb_x``, ``mb_y`` and ``mb_task_id``
    read them. A tuple minibatch is replaced by a list, as Avalanche's own plugins do; a task
    label field the minibatch does not have is not added. Other fields are left as they are."""
    views = (strategy.mb_x, strategy.mb_y, _task_view(strategy))
    batch = strategy.mbatch
    if isinstance(batch, tuple):
        batch = strategy.mbatch = list(batch)
    keys = list(batch.keys()) if isinstance(batch, dict) else range(len(batch))
    for name, new, view in zip(("mb_x", "mb_y", "mb_task_id"), (x, y, t), views):
        key = next((k for k in keys if batch[k] is view), None) if view is not None else None
        if key is None and name != "mb_task_id":
            raise TypeError(f"cannot find the minibatch field the strategy reads as {name} in its "
                            f"{type(batch).__name__} minibatch: the replay plugin needs {name} to be a field "
                            f"of strategy.mbatch")
        if key is not None:
            batch[key] = new


@torch.no_grad()
def strategy_batches(strategy, dataset, batch_size: int) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    """``(inputs, targets, task labels)`` of every minibatch of ``dataset`` (unaugmented,
    ``dataset.eval()``, in order, collated by the dataset's own ``collate_fn``), read through
    the strategy's own ``mb_x`` / ``mb_y`` / ``mb_task_id``. ``strategy.mbatch`` is restored
    afterwards, also when the caller stops early or raises."""
    data = dataset.eval() if hasattr(dataset, "eval") else dataset
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                         collate_fn=getattr(data, "collate_fn", None))
    saved = strategy.mbatch
    try:
        for batch in loader:
            strategy.mbatch = batch
            strategy._unpack_minibatch()  # the strategy's own move to its device
            yield strategy.mb_x, strategy.mb_y, task_labels_of(strategy)
    finally:
        strategy.mbatch = saved


def item_layout(strategy, dataset) -> Optional[dict]:
    """For a dataset of dictionary items: which keys the strategy reads as inputs, targets and task
    labels, and the Python type of each (``{"x": (key, is_tensor), "y": ..., "t": ... or None}``);
    None for datasets of tuples. Found by collating the first item and reading it through the
    strategy, so a buffer can hand back its samples in the same layout."""
    if len(dataset) == 0 or not isinstance(dataset[0], dict):
        return None
    item = dataset[0]
    collate = getattr(dataset, "collate_fn", None) or torch.utils.data.default_collate
    saved = strategy.mbatch
    try:
        strategy.mbatch = collate([item])
        strategy._unpack_minibatch()
        views = {"x": strategy.mb_x, "y": strategy.mb_y, "t": _task_view(strategy)}
        batch = strategy.mbatch
        layout = {}
        for name, view in views.items():
            key = next((k for k in batch if batch[k] is view), None) if view is not None else None
            layout[name] = None if key is None else (key, isinstance(item[key], Tensor))
    finally:
        strategy.mbatch = saved
    if layout["x"] is None or layout["y"] is None:
        raise TypeError("cannot find the dictionary keys the strategy reads as mb_x and mb_y")
    return layout
