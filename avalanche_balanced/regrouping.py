"""``RegroupSchedule``: when a replay buffer's groups are recomputed, and the feature refreshes
that come with it.

Regrouping costs a pass over the buffer, so it runs only when something reads the groups: every
``every`` training iterations, at the end of an experience that brought classes never seen
before, when a strategy asks (:meth:`request`), or for a reader outside training
(:meth:`bring_up_to_date`). The stored features are recomputed in a no-grad eval-mode pass at
most once per buffer's worth of trained samples: the cost follows what is trained, not what is
stored (the cost of every hook: ``docs/design.md``).
"""
from typing import Callable, Optional

import torch

from .distributed import unwrap
from .features import model_version

__all__ = ["RegroupSchedule"]


class RegroupSchedule:
    """The regrouping schedule of one buffer (see the module docstring).

    ``every``: iterations between regroupings while something reads the groups (None: at new
    classes only). ``refresh_features``: recompute the stored features (with ``preprocess``)
    before regrouping, at most once per buffer's worth of trained samples; False keeps the
    features recorded when samples were inserted or replayed. ``refresh_prototypes``: recompute
    the class prototypes from the stored features first (False for a strategy that owns them).
    """

    def __init__(self, every: Optional[int] = 50, refresh_features: bool = True, refresh_prototypes: bool = True,
                 preprocess: Optional[Callable] = None):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
            raise ValueError(f"regroup_every must be a positive integer or None, got {every!r}")
        self.every, self.preprocess = every, preprocess
        self.refresh_features, self.refresh_prototypes = refresh_features, refresh_prototypes
        self.seen_classes: Optional[torch.Tensor] = None  # bool mask over the classes of past experiences
        self.new_classes = False  # this experience brings classes no earlier one had
        self.requested = False  # a strategy asked for a regrouping at the end of this experience
        self.trained_since_refresh = 0  # current samples trained since the latest feature refresh
        self.refreshed_version: Optional[tuple] = None  # model_version() at the latest feature refresh
        self.grouped_at: Optional[tuple] = None  # (buffer insertions, model version) at the latest regrouping
        self.ran_this_experience = False  # group metrics publish only then

    def start_experience(self, current: torch.Tensor) -> None:
        """Note the experience's classes (a boolean mask); one host read tells whether any is new."""
        seen = self.seen_classes
        if seen is None or seen.shape[0] < current.shape[0]:
            grown = torch.zeros(current.shape[0], dtype=torch.bool, device=current.device)
            if seen is not None:
                grown[: seen.shape[0]] = seen.to(current.device)
            seen = grown
        seen = seen.to(current.device)
        self.new_classes = bool((current & ~seen[: current.shape[0]]).any())
        seen[: current.shape[0]] |= current
        self.seen_classes = seen
        self.ran_this_experience = False

    def due_at_iteration(self, iterations: int) -> bool:
        return bool(self.every) and iterations % self.every == 0

    def due_at_end(self, reads_groups: bool) -> bool:
        """Whether the end of this experience regroups: when asked, or when something reads the groups
        and the experience brought new classes. Experiences that repeat known classes (an online
        stream's mini-experiences) leave it to the schedule in iterations."""
        return self.requested or (reads_groups and self.new_classes)

    def end_experience(self) -> None:
        self.new_classes = self.requested = False

    def request(self) -> None:
        """Regroup (refreshing the stored features) at the end of this experience, whatever the schedule."""
        self.requested = True

    def regroup(self, buffer, model, force_refresh: bool = False) -> None:
        """Prototypes from the stored features, then every stored sample's group; the stored features
        are recomputed first when asked, or once as many samples were trained since the latest
        refresh as the buffer holds."""
        model = unwrap(model)  # no-grad passes on the plain module: no collective in them
        if self.refresh_features and (force_refresh or self.trained_since_refresh >= len(buffer)):
            buffer.refresh_features(model, self.preprocess)
            self.refreshed_version = model_version(model)
            self.trained_since_refresh = 0
        if self.refresh_prototypes:
            buffer.refresh_prototypes()
        buffer.regroup()
        self.ran_this_experience = True
        self.grouped_at = (buffer.step, model_version(model))

    def regroup_at_end(self, buffer, model) -> None:
        """The end-of-experience regrouping: features from the model as it is now, unless nothing
        touched it since the latest refresh."""
        self.regroup(buffer, model, force_refresh=self.refreshed_version != model_version(unwrap(model)))

    def bring_up_to_date(self, buffer, model) -> None:
        """For a reader outside training (a metric at evaluation): regroup, refreshing the stored
        features, when anything was inserted or the model changed since the latest regrouping."""
        if len(buffer) and self.grouped_at != (buffer.step, model_version(unwrap(model))):
            self.regroup(buffer, model, force_refresh=True)
