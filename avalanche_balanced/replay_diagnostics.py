"""What a replay plugin publishes about its draws, experience by experience.

Counted on the device while the experience trains and read once at its end: the share of
replayed samples from the current experience's classes, the effective sample size of the replay
distribution, and (after a regrouping) the group sizes and replay weights for TensorBoard.
"""
from typing import Optional

import torch
from torch import Tensor
from avalanche.evaluation.metric_results import MetricValue
from avalanche.logging import TensorboardLogger

from .importance import effective_sample_size, normalized_entropy

__all__ = ["ReplayDiagnostics"]


class ReplayDiagnostics:
    """What a replay plugin publishes about its draws at the end of each experience.

    Counted on the device during the experience (no host sync per step): the groups of the
    replayed samples and how many of them belong to the experience's classes; the Kish effective
    sample size of the replay distribution, averaged over the experience's regroupings. Published
    to the strategy's evaluator (hence TensorBoard): ``BalancedReplay/current_share``,
    ``BalancedReplay/effective_sample_size`` and, after a regrouping, ``BalancedReplay/num_groups``
    with the histograms ``group_sizes`` and ``replay_weight`` (TensorBoard only).
    """

    def __init__(self, balanced: bool):
        self.balanced = balanced  # semantic draws (else uniform: effective sample size 1)
        self.replay_group_counts: Optional[Tensor] = None  # groups replayed this experience
        self._current: Optional[Tensor] = None  # bool mask over the experience's classes
        self._replay_counts: Optional[Tensor] = None  # [replayed, replayed of current classes]
        self._ess_sum: Optional[Tensor] = None  # [sum of ESS, count] over this experience's regroupings

    def start_experience(self, current: Tensor) -> None:
        self._current, self.replay_group_counts = current, None
        self._replay_counts = torch.zeros(2, dtype=torch.long, device=current.device)
        self._ess_sum = torch.zeros(2, dtype=torch.float64, device=current.device)

    def count(self, replay, buffer) -> None:
        """One replay batch: its groups (fixed-width counts) and its share of current classes."""
        groups, width = buffer.group_ids[replay.indices], buffer.group_width
        if self.replay_group_counts is None or self.replay_group_counts.shape[0] < width:
            grown = torch.zeros(width, dtype=torch.long, device=groups.device)
            if self.replay_group_counts is not None:
                grown[: self.replay_group_counts.shape[0]] = self.replay_group_counts
            self.replay_group_counts = grown
        self.replay_group_counts.index_add_(0, groups, torch.ones_like(groups))
        labels, current = replay.labels, self._current
        is_current = current[labels.clamp_max(current.shape[0] - 1)] & (labels < current.shape[0])
        self._replay_counts += torch.stack([labels.new_tensor(labels.shape[0]), is_current.sum()])

    def record_ess(self, buffer) -> None:
        """Add the replay distribution's effective sample size now (after a regrouping)."""
        if self._ess_sum is not None and len(buffer) > 0:
            ess = effective_sample_size(buffer.replay_probabilities()) if self.balanced else 1.0
            self._ess_sum += torch.stack([torch.as_tensor(ess, dtype=torch.float64, device=self._ess_sum.device),
                                          self._ess_sum.new_ones(())])

    def recorded_ess(self) -> bool:
        return self._ess_sum is not None and bool(self._ess_sum[1] > 0)

    def current_share(self) -> float:
        """Share of this experience's replayed samples whose class belongs to the experience."""
        if self._replay_counts is None or int(self._replay_counts[0]) == 0:
            return 0.0
        return float(self._replay_counts[1]) / float(self._replay_counts[0])

    def effective_sample_size(self, buffer) -> float:
        """Kish effective sample size of the replay distribution as a fraction of the buffer: the
        mean over this experience's regroupings (the current distribution if none yet)."""
        if len(buffer) == 0:
            return 0.0
        if not self.balanced:
            return 1.0
        if self.recorded_ess():
            return float(self._ess_sum[0] / self._ess_sum[1])
        return float(effective_sample_size(buffer.replay_probabilities()))

    def replay_group_entropy(self, buffer) -> float:
        """Normalised entropy of the groups replayed this experience (1 = balanced)."""
        counts = buffer.group_counts
        if self.replay_group_counts is None or counts.numel() == 0:
            return 0.0
        # Groups can change during an experience (regrouping): count every bin that was drawn.
        num_groups = max(int((counts > 0).sum()), int((self.replay_group_counts > 0).sum()))
        return float(normalized_entropy(self.replay_group_counts, num_bins=num_groups))

    def publish(self, source, strategy, buffer, groups_fresh: bool, verbose: bool = False) -> None:
        """Publish this experience's figures to ``strategy``'s evaluator as ``source``'s; the groups
        only when a regrouping ran in it (reading them otherwise would cost a pass over the buffer)."""
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is None or len(buffer) == 0:
            return
        step = strategy.clock.train_iterations
        scalars = {"BalancedReplay/current_share": self.current_share(),
                   "BalancedReplay/effective_sample_size": self.effective_sample_size(buffer)}
        histograms = {}
        if groups_fresh:
            counts = buffer.group_counts
            sizes = counts[counts > 0]
            scalars["BalancedReplay/num_groups"] = int(sizes.numel())
            histograms = {"BalancedReplay/group_sizes": sizes.float().cpu(),
                          "BalancedReplay/replay_weight": (buffer.replay_probabilities() * len(buffer)).cpu()}
        for name, value in scalars.items():
            evaluator.publish_metric_value(MetricValue(source, name, value, step))
        for logger in getattr(evaluator, "loggers", []):  # a text logger would print hundreds of numbers
            if isinstance(logger, TensorboardLogger):
                for name, values in histograms.items():
                    logger.writer.add_histogram(name, values, step)
        if verbose:
            groups = scalars.get("BalancedReplay/num_groups")
            print(f"[BalancedReplay] experience {getattr(strategy.experience, 'current_experience', '?')}: "
                  f"{len(buffer)} stored, {'?' if groups is None else groups} groups, effective sample size "
                  f"{scalars['BalancedReplay/effective_sample_size']:.2f}, current share "
                  f"{scalars['BalancedReplay/current_share']:.2f}")
