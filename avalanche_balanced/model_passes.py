"""No-grad, eval-mode passes of a model over stored inputs or a dataset, in chunks, for the buffer:
features of every stored sample (the refresh), and logits and features of an experience's data
(insertion at its end). The model's mode is restored afterwards, also when a pass raises."""
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor

from .features import eval_mode, forward_with_features

__all__ = ["stored_features", "dataset_outputs", "batch_outputs"]


def _prepare(x: Tensor, preprocess: Optional[Callable]) -> Tensor:
    return preprocess(x) if preprocess is not None else x


@torch.no_grad()
def stored_features(model: torch.nn.Module, examples: Tensor, task_labels: Tensor,
                    preprocess: Optional[Callable] = None, batch_size: int = 256,
                    width: Optional[int] = None) -> Tensor:
    """Flattened features of ``examples`` (with their task labels, for multi-task models);
    ``width``: the width the caller stores (another raises ``ValueError``)."""
    chunks = []
    with eval_mode(model):
        for start in range(0, examples.shape[0], batch_size):  # a loop over chunks, not samples
            x, t = examples[start: start + batch_size], task_labels[start: start + batch_size]
            chunks.append(forward_with_features(model, _prepare(x, preprocess), t)[1].flatten(1))
    features = torch.cat(chunks)
    if width is not None and features.shape[1] != width:
        raise ValueError(f"the model gives {features.shape[1]}-dim features, the buffer stores {width}")
    return features


@torch.no_grad()
def batch_outputs(model: torch.nn.Module, batches: Iterable[tuple],
                  preprocess: Optional[Callable] = None) -> Iterator[tuple]:
    """``(inputs, labels, task labels or None, logits, features)`` of every ``(inputs, labels,
    task labels or None)`` minibatch, from eval-mode passes; ``preprocess`` goes to the model's
    input only."""
    with eval_mode(model):
        for x, y, t in batches:
            logits, feats = forward_with_features(model, _prepare(x, preprocess), t)
            yield x, y, t, logits, feats


def _tuple_batches(dataset, device, batch_size: int) -> Iterator[tuple]:
    loader = torch.utils.data.DataLoader(dataset.eval(), batch_size=batch_size, shuffle=False)
    for batch in loader:
        yield batch[0].to(device), batch[1], batch[2].to(device) if len(batch) > 2 else None


def dataset_outputs(model: torch.nn.Module, dataset, device, batch_size: int = 256,
                    preprocess: Optional[Callable] = None) -> Iterator[tuple]:
    """:func:`batch_outputs` of a dataset of ``(input, label[, task label])`` items, unaugmented
    (``dataset.eval()``)."""
    return batch_outputs(model, _tuple_batches(dataset, device, batch_size), preprocess)
