"""``BalancedReplayPlugin``: balanced (or uniform) replay for any Avalanche ``SupervisedTemplate``."""
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue

from .buffer import BalancedBuffer, ReplayBatch
from .features import FeatureHook, model_version
from .sampling import effective_sample_size, normalized_entropy
from .validation import check_replay_sizes

__all__ = ["BalancedReplayPlugin", "ReplayStep"]


class ReplayStep(NamedTuple):
    """What one training iteration joined and computed, for a strategy's loss.

    The training minibatch is ``num_current`` current samples followed by the
    replayed ones (``replay``, None when the buffer was empty); ``features``
    are the penultimate features of the joint batch from this iteration's
    forward pass, with their autograd graph.
    """

    num_current: int
    replay: Optional[ReplayBatch]
    features: torch.Tensor


class BalancedReplayPlugin(SupervisedPlugin):
    """Experience replay from a :class:`BalancedBuffer`, joined to every training minibatch.

    Per training iteration:

    * ``before_forward``: draw ``batch_size_mem`` stored samples (importance
      weighted if ``use_balanced_sampling``, else uniform), join them to the
      current minibatch so the strategy's own criterion covers both, and apply
      ``transform`` (a *batched* augmentation such as
      :func:`~avalanche_balanced.data.cifar_augment`) to the joint batch;
    * ``after_forward``: read the penultimate features of that same forward
      pass (a hook on the model's last linear layer), publish the iteration's
      :class:`ReplayStep` as :attr:`step` (what a strategy's loss reads; valid
      until the end of the iteration) and keep each replayed sample's loss
      (for ``difficulty_weight``); without ``refresh_features``, also overwrite
      the replayed samples' stored features with them;
    * ``after_training_iteration`` (``insertion_timing="online"`` only): insert
      the current, non-augmented samples with their logits and features.

    When the buffer is filled (``insertion_timing``):

    * ``"after_experience"`` (default), as Avalanche's ``ReplayPlugin``: the
      buffer takes the finished experience's data at the end of the experience
      (reservoir over everything seen so far, logits and features from one
      eval-mode pass), so an experience replays past experiences only and the
      first one replays nothing. With uniform draws this is a drop-in for
      ``ReplayPlugin(storage_policy=ReservoirSamplingBuffer(mem_size))``.
    * ``"online"``, as SARL: every training minibatch goes through the reservoir
      at the end of its iteration, so the current experience is replayed too.

    Every ``regroup_every`` iterations and at the end of each experience the
    whole buffer's features are recomputed in one no-grad eval-mode pass
    (``refresh_features``, with ``preprocess``), the class prototypes from
    them, and the samples regrouped. During an experience the buffer knows its
    classes, so their stored samples keep a uniform share of balanced replay.
    At the end of each experience the plugin publishes to the strategy's
    evaluator (hence to TensorBoard): the number of groups, the group sizes and
    the replay weights (each sample's draw probability times the buffer size,
    1 = uniform; histograms), the share of replayed samples that
    belong to the current experience's classes (``current_share``; 0 with
    ``"after_experience"`` timing), and the Kish effective sample size of the
    replay distribution as a fraction of the buffer, averaged over the
    experience's regroupings (``effective_sample_size``; 1 for uniform draws).
    The balance of the groups replayed during the experience
    (:meth:`replay_group_entropy`) is published by
    :class:`~avalanche_balanced.metrics.ReplayGroupEntropyMetric`.

    ``use_balanced_sampling=False`` is plain uniform reservoir replay, the
    baseline balanced replay is measured against.

    Replayed samples are joined to the minibatch before the strategy's forward
    pass, so a criterion that takes one mean over the batch (``Naive``) weighs
    every current and replayed sample alike, as Avalanche's ``ReplayPlugin`` does.

    Args:
        mem_size: buffer capacity.
        batch_size_mem: replayed samples per iteration (<= ``mem_size``).
        use_balanced_sampling: importance-weighted (True) or uniform draws.
        balance_weight: exponent of the balance factor (0 = similarity only).
        grouping: one of ``GROUPINGS`` (see :class:`BalancedBuffer`).
        transform: batched callable applied to the joint input batch, or None
            when the dataset already augments each sample.
        regroup_every: iterations between regroupings (None: per experience only).
        refresh_prototypes: recompute the buffer's class prototypes from its
            features before regrouping. A strategy that owns the prototypes
            (SARL sets them once per task) passes False.
        storage_policy: a ready :class:`BalancedBuffer`; otherwise one is built
            from ``mem_size``, ``grouping``, ``balance_weight`` and ``buffer_kwargs``.
        insertion_timing: ``"after_experience"`` or ``"online"`` (see above).
        preprocess: model-input preprocessing of the eval-mode passes over stored
            inputs (insertion at the end of an experience, feature refresh),
            e.g. ``cifar_normalize`` when the model does not normalise its
            inputs itself; the buffer stores raw inputs.
        refresh_features: recompute all stored features at every regrouping
            (True), or overwrite only the replayed samples' features with their
            train-mode, augmented ones (False, the earlier design).
    """

    TIMINGS = ("after_experience", "online")

    def __init__(
        self,
        mem_size: int = 200,
        batch_size_mem: int = 32,
        use_balanced_sampling: bool = True,
        balance_weight: float = 1.0,
        grouping: str = "class_similarity",
        transform: Optional[Callable] = None,
        regroup_every: Optional[int] = 50,
        refresh_prototypes: bool = True,
        storage_policy: Optional[BalancedBuffer] = None,
        seed: int = 0,
        insertion_timing: str = "after_experience",
        preprocess: Optional[Callable] = None,
        refresh_features: bool = True,
        **buffer_kwargs,
    ):
        super().__init__()
        if insertion_timing not in self.TIMINGS:
            raise ValueError(f"insertion_timing must be one of {self.TIMINGS}, got {insertion_timing!r}")
        check_replay_sizes(storage_policy.max_size if storage_policy is not None else mem_size, batch_size_mem)
        if storage_policy is None:
            storage_policy = BalancedBuffer(mem_size, grouping=grouping, balance_weight=balance_weight,
                                            seed=seed, **buffer_kwargs)
        if regroup_every is not None and regroup_every <= 0:
            raise ValueError(f"regroup_every must be positive or None, got {regroup_every}")
        self.buffer = storage_policy
        self.batch_size_mem = batch_size_mem
        self.use_balanced_sampling = use_balanced_sampling
        self.transform = transform
        self.regroup_every = regroup_every
        self.refresh_prototypes = refresh_prototypes
        self.insertion_timing = insertion_timing
        self.preprocess = preprocess
        self.refresh_features = refresh_features
        self._ess_sum: Optional[torch.Tensor] = None  # [sum of ESS, count] over this experience's regroups
        self._refreshed_version: Optional[tuple] = None  # model_version() at the latest feature refresh
        self.replay_group_counts: Optional[torch.Tensor] = None  # groups replayed this experience
        self._hook: Optional[FeatureHook] = None
        self._replay: Optional[ReplayBatch] = None
        self._current = None  # (inputs, labels, task labels) of the current minibatch, raw
        self.step: Optional[ReplayStep] = None  # this iteration's record, from after_forward on
        self._insert = None  # what after_training_iteration inserts
        self._iterations = 0
        self._current_classes: Optional[torch.Tensor] = None  # bool mask over classes, this experience
        self._replay_counts: Optional[torch.Tensor] = None  # [replayed, replayed of current classes]

    @property
    def storage_policy(self) -> BalancedBuffer:
        """Avalanche's name for the buffer."""
        return self.buffer

    def draw(self) -> ReplayBatch:
        """One replay minibatch (non-augmented), balanced or uniform as configured."""
        if self.use_balanced_sampling:
            return self.buffer.get_balanced_data(self.batch_size_mem)
        return self.buffer.get_data(self.batch_size_mem)

    # ------------------------------------------------------------------ hooks
    def before_training_exp(self, strategy, **kwargs):
        self.buffer.to(strategy.device)
        if self._hook is None:
            self._hook = FeatureHook(strategy.model)
        self.replay_group_counts = None
        classes = torch.as_tensor(list(strategy.experience.classes_in_this_experience), dtype=torch.long,
                                  device=strategy.device)
        width = max(self.buffer.num_classes if self.buffer.allocated else 0, int(classes.max()) + 1
                    if classes.numel() else 0)
        self._current_classes = torch.zeros(width, dtype=torch.bool, device=strategy.device)
        self._current_classes[classes] = True
        self._replay_counts = torch.zeros(2, dtype=torch.long, device=strategy.device)
        self._ess_sum = torch.zeros(2, dtype=torch.float64, device=strategy.device)
        self.buffer.set_current_classes(classes)

    def before_forward(self, strategy, **kwargs):
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[2]
        self._current = (x, y, t)
        self._replay = self.draw() if len(self.buffer) > 0 else None
        if self._replay is not None:
            self._count_replayed_groups(self._replay.indices)
            self._count_current_share(self._replay.labels)
            x = torch.cat([x, self._replay.inputs.to(x.dtype)])
            y = torch.cat([y, self._replay.labels])
            t = torch.cat([t, self._replay.task_labels])
        strategy.mbatch[0] = self.transform(x) if self.transform is not None else x
        strategy.mbatch[1], strategy.mbatch[2] = y, t

    def after_forward(self, strategy, **kwargs):
        n = self._current[0].shape[0]
        self.step = ReplayStep(n, self._replay, self._hook.features.flatten(1))
        feats = self.step.features.detach()
        if self._replay is not None:
            if not self.refresh_features:
                self.buffer.update_features(self._replay.indices, feats[n:])
            losses = F.cross_entropy(strategy.mb_output.detach()[n:].float(), self._replay.labels,
                                     reduction="none")
            self.buffer.record_losses(self._replay.indices, losses)
        if self.insertion_timing == "online":
            # Inserted at the end of the iteration (as SARL does): never replayed in their own step.
            self._insert = (*self._current, strategy.mb_output.detach()[:n], feats[:n])

    def after_training_iteration(self, strategy, **kwargs):
        if self._insert is not None:
            x, y, t, logits, feats = self._insert
            self.buffer.add_data(x, y, logits, feats, task_labels=t)
        self._current, self._replay, self._insert, self.step = None, None, None, None
        self._iterations += 1
        if self.regroup_every and self._iterations % self.regroup_every == 0:
            self._regroup(strategy.model)
            self._record_ess()

    def after_training_exp(self, strategy, **kwargs):
        if self.insertion_timing == "after_experience":
            self.buffer.add_dataset(strategy.model, strategy.experience.dataset, strategy.device,
                                    preprocess=self.preprocess)
        if self._ess_sum is not None and not bool(self._ess_sum[1] > 0):
            self._record_ess()  # no regrouping during the experience: its replay distribution now
        self.buffer.set_current_classes(None)  # the finished experience is past from now on
        # Refreshed already with the model as it is now (a regrouping on the last step, and no
        # change since)? Then the stored features are fresh. Anything that touched the model in
        # between (an update, a strategy's BatchNorm pass over the buffer) changes its version.
        self._regroup(strategy.model, refresh=self._refreshed_version != model_version(strategy.model))
        self._publish(strategy)
        self.remove_hook()

    def remove_hook(self) -> None:
        """Remove the feature hook from the model (it is added again at the next experience)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ----------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """The buffer's state and the plugin's iteration counter (for checkpoints)."""
        return {"buffer": self.buffer.state_dict(), "iterations": self._iterations}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self._iterations = state["iterations"]

    # --------------------------------------------------------------- helpers
    def _regroup(self, model, refresh: bool = True):
        if self.refresh_features and refresh:
            self.buffer.refresh_features(model, self.preprocess)
            self._refreshed_version = model_version(model)
        if self.refresh_prototypes:
            self.buffer.refresh_prototypes()
        self.buffer.regroup()

    def _count_replayed_groups(self, indices):
        groups = self.buffer.group_ids[indices]
        width = max(self.buffer.num_classes, 2)
        counts = torch.bincount(groups, minlength=width)
        if self.replay_group_counts is None or self.replay_group_counts.shape != counts.shape:
            self.replay_group_counts = torch.zeros_like(counts)
        self.replay_group_counts += counts

    def _count_current_share(self, labels):
        # Tensor arithmetic on the device: no host sync per step.
        known = labels < self._current_classes.shape[0]
        current = self._current_classes[labels.clamp_max(self._current_classes.shape[0] - 1)] & known
        self._replay_counts += torch.stack([labels.new_tensor(labels.shape[0]), current.sum()])

    def current_share(self) -> float:
        """Share of this experience's replayed samples whose class belongs to the experience."""
        if self._replay_counts is None or int(self._replay_counts[0]) == 0:
            return 0.0
        return float(self._replay_counts[1]) / float(self._replay_counts[0])

    def _record_ess(self) -> None:
        if self._ess_sum is not None and len(self.buffer) > 0:
            ess = effective_sample_size(self.buffer.replay_probabilities()) if self.use_balanced_sampling else 1.0
            self._ess_sum += torch.stack([torch.as_tensor(ess, dtype=torch.float64, device=self._ess_sum.device),
                                          self._ess_sum.new_ones(())])

    def effective_sample_size(self) -> float:
        """Kish effective sample size of the replay distribution as a fraction of the buffer:
        the mean over this experience's regroupings (the current distribution if none yet)."""
        if len(self.buffer) == 0:
            return 0.0
        if not self.use_balanced_sampling:
            return 1.0
        if self._ess_sum is not None and bool(self._ess_sum[1] > 0):
            return float(self._ess_sum[0] / self._ess_sum[1])
        return float(effective_sample_size(self.buffer.replay_probabilities()))

    def replay_group_entropy(self) -> float:
        """Normalised entropy of the groups replayed this experience (1 = balanced)."""
        counts = self.buffer.group_counts
        if self.replay_group_counts is None or counts.numel() == 0:
            return 0.0
        # Groups can change during an experience (regrouping): count every bin that was drawn.
        num_groups = max(int((counts > 0).sum()), int((self.replay_group_counts > 0).sum()))
        return float(normalized_entropy(self.replay_group_counts, num_bins=num_groups))

    def _publish(self, strategy):
        evaluator = getattr(strategy, "evaluator", None)
        if evaluator is None or len(self.buffer) == 0:
            return
        step = strategy.clock.train_iterations
        counts = self.buffer.group_counts
        sizes = counts[counts > 0]
        values = {
            "BalancedReplay/num_groups": int(sizes.numel()),
            "BalancedReplay/group_sizes": sizes.float().cpu(),
            "BalancedReplay/replay_weight": (self.buffer.replay_probabilities() * len(self.buffer)).cpu(),
            "BalancedReplay/current_share": self.current_share(),
            "BalancedReplay/effective_sample_size": self.effective_sample_size(),
        }
        for name, value in values.items():
            evaluator.publish_metric_value(MetricValue(self, name, value, step))
