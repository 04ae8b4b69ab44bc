"""Input checks shared by the buffer, the prototypes, the metrics and the strategy.

Each check raises ``ValueError`` naming the argument and what was expected; a
check over a tensor costs at most one host synchronisation.
"""
from typing import Optional

import torch
from torch import Tensor

__all__ = ["as_labels", "as_task_labels", "check_labels_in_range", "check_rows", "check_finite", "check_positive_int",
           "check_replay_sizes", "check_incoming_shapes", "check_known_keywords",
           "check_same_config", "PendingChecks"]


def as_labels(values, name: str, device=None, n: Optional[int] = None) -> Tensor:
    """``values`` as a 1-D integer tensor (lists and numpy arrays accepted), of length ``n`` if given."""
    t = torch.as_tensor(values, device=device)
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        raise ValueError(f"{name} must have shape ({'N' if n is None else n},) (1-D), got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    return t


def as_task_labels(values, device=None) -> Tensor:
    """Task labels (a scalar or a 1-D tensor) as a long tensor: integer dtypes only, never truncated."""
    t = torch.as_tensor(values, device=device)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"task_labels must hold integer labels, got dtype {t.dtype}")
    return t.long()


def check_labels_in_range(labels: Tensor, num_classes: int, name: str = "labels", what: str = "") -> None:
    """Every label in ``[0, num_classes)``; ``what`` names where that range comes from."""
    if labels.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(labels)).tolist()  # one host transfer
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}){f' ({what})' if what else ''}, "
                         f"got min={lo}, max={hi}")


def check_rows(x: Tensor, name: str, n: Optional[int] = None, width: Optional[int] = None,
               width_name: str = "D") -> None:
    """``x`` is 2-D with ``n`` rows and ``width`` columns (each where given; ``width_name``
    stands for an unchecked width in the message)."""
    if x.dim() != 2 or (n is not None and x.shape[0] != n) or (width is not None and x.shape[1] != width):
        raise ValueError(f"{name} must have shape ({'N' if n is None else n}, "
                         f"{width_name if width is None else width}), got {tuple(x.shape)}")


def check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or inf")


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_replay_sizes(mem_size: int, batch_size_mem: int) -> None:
    """The one check of a replay configuration: a positive buffer and a replay batch that fits it."""
    check_positive_int(mem_size, "mem_size")
    check_positive_int(batch_size_mem, "batch_size_mem")
    if batch_size_mem > mem_size:
        raise ValueError(f"batch_size_mem ({batch_size_mem}) is larger than mem_size ({mem_size})")


def check_incoming_shapes(buffer, examples: Tensor, labels: Tensor, logits: Tensor, features: Tensor,
                          task_labels: Tensor) -> None:
    """Shapes of a batch offered to a buffer: one row per example, and the stored widths once
    the buffer is allocated (no host sync: shapes are host metadata)."""
    n = examples.shape[0]
    as_labels(labels, "labels", n=n)
    as_labels(task_labels, "task_labels", n=n)
    check_rows(logits, "logits", n, None, "num_classes")  # any width: a head may grow or be narrower
    check_rows(features, "features", n, buffer.num_feats if buffer.allocated else None, "num_feats")
    if buffer.allocated and examples.shape[1:] != buffer.examples.shape[1:]:
        raise ValueError(f"examples have shape {tuple(examples.shape[1:])} per sample, "
                         f"the buffer stores {tuple(buffer.examples.shape[1:])}")


class PendingChecks:
    """Value checks kept as device flags (labels in the classifier's range, finite features)
    and read on the host once, by :meth:`raise_if_failed`: an insertion every iteration then
    costs no host sync."""

    def __init__(self):
        self.flags: Optional[Tensor] = None

    def add(self, labels: Tensor, num_classes: int, features: Tensor) -> Tensor:
        """Record the checks of a batch; returns which of its rows pass them (device tensor)."""
        label_ok = (labels >= 0) & (labels < num_classes)
        finite = torch.isfinite(features).reshape(features.shape[0], -1).all(1)
        ok = torch.stack([label_ok.all(), finite.all()])
        self.flags = ok if self.flags is None else self.flags & ok
        return label_ok & finite

    def raise_if_failed(self) -> None:
        """Raise ``ValueError`` for a value added since the last call that failed its check."""
        if self.flags is None:
            return
        labels_ok, finite = self.flags.tolist()
        self.flags = None
        if not labels_ok:
            raise ValueError("labels inserted since the last check lie outside the classifier's range")
        if not finite:
            raise ValueError("features inserted since the last check contain NaN or inf")


def check_known_keywords(given: dict, accepted, owner: str, own_keywords=()) -> None:
    """Every keyword in ``given`` is one of ``accepted`` (meant for ``owner``): an unknown one
    raises ``TypeError`` naming it and listing every accepted keyword (``own_keywords`` first)."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"unknown keyword argument(s) {', '.join(map(repr, unknown))}; accepted: "
                        f"{', '.join(own_keywords)} and the {owner}'s {', '.join(accepted)}")


def check_same_config(saved: dict, now: dict, what: str, holder: str) -> None:
    """A state saved under ``saved`` settings loads only into an object with the same ``now``:
    otherwise ``ValueError`` naming every setting that differs."""
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k, "unrecorded") != now.get(k, "unrecorded"))
    if differ:
        raise ValueError(f"{what} is from another configuration: " + ", ".join(
            f"{k}: {saved.get(k, 'unrecorded')!r} (state) vs {now.get(k, 'unrecorded')!r} ({holder})"
            for k in differ))
