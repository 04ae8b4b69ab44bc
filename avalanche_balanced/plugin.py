"""``BalancedReplayPlugin``: balanced (or uniform) replay for any Avalanche ``SupervisedTemplate``."""
import contextlib
import inspect
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.logging import TensorboardLogger

from .buffer import BalancedBuffer, ReplayBatch
from .distributed import (broadcast_buffer, check_divisible, check_same_settings, gather_rows, rank_and_world,
                          shard_rows, unwrap)
from .features import FeatureHook, classifier_of, model_version
from .minibatch import experience_classes, task_labels_of, write_minibatch
from .sampling import effective_sample_size, normalized_entropy
from .validation import check_positive_int

__all__ = ["BalancedReplayPlugin", "ReplayStep", "experience_classes"]


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


def check_buffer_keywords(buffer_kwargs: dict, plugin_keywords=()) -> None:
    """Keywords meant for :class:`~avalanche_balanced.buffer.BalancedBuffer` must be its own:
    an unknown one raises ``TypeError`` naming it and listing every accepted keyword."""
    accepted = [k for k in inspect.signature(BalancedBuffer.__init__).parameters if k not in ("self", "max_size")]
    unknown = sorted(set(buffer_kwargs) - set(accepted))
    if unknown:
        own = [k for k in plugin_keywords if k not in ("self", "buffer_kwargs")]
        raise TypeError(f"unknown keyword argument(s) {', '.join(map(repr, unknown))}; accepted: "
                        f"{', '.join(own)} and the buffer's {', '.join(accepted)}")


@contextlib.contextmanager
def explain_non_finite(strategy, step: str):
    """Re-raise the buffer's refusal of non-finite values with where they came from: the model's
    weights turned non-finite (another plugin's penalty or the optimiser step), or its outputs."""
    try:
        yield
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        bad = [name for name, p in strategy.model.named_parameters() if not bool(torch.isfinite(p).all())]
        exp = getattr(strategy.experience, "current_experience", "?")
        cause = (f"the model's weights are non-finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): an "
                 f"update produced them, from the loss of the strategy or of a plugin "
                 f"({', '.join(type(p).__name__ for p in strategy.plugins)}); TrainingGuardPlugin stops at the "
                 f"first non-finite loss" if bad else "the model's outputs are non-finite for finite weights")
        raise ValueError(f"BalancedReplayPlugin, experience {exp}, {step}: {err}; {cause}") from err


class BalancedReplayPlugin(SupervisedPlugin, supports_distributed=True):
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
      (by the ``insertion`` rule, logits and features from one eval-mode pass), so an
      experience replays past experiences only and the first one replays nothing. With the
      defaults this is a drop-in for ``ReplayPlugin(storage_policy=ClassBalancedBuffer(mem_size))``,
      with ``insertion="reservoir"`` for ``ReservoirSamplingBuffer``.
    * ``"online"``, as SARL: every training minibatch goes through the buffer
      at the end of its iteration, so the current experience is replayed too.

    Under torch DDP (several processes, :mod:`~avalanche_balanced.distributed`) every rank
    keeps an identical buffer: ``batch_size_mem`` is the *global* replay batch (each rank
    draws its ``1 / world_size`` slice of one global draw), what a step writes to the buffer
    is gathered from every rank and applied everywhere, and rank 0's buffer is broadcast at
    the end of each experience.

    Only when something reads the groups (:attr:`reads_groups`: semantic draws, group-balanced
    storage, ``group_metrics``) is the buffer regrouped: every ``regroup_every`` training
    iterations, and at the end of an experience that brought new classes (or when a strategy
    asks, :meth:`request_regroup`); the stored features are recomputed in a no-grad eval-mode
    pass (``refresh_features``, with ``preprocess``) at most once per buffer's worth of trained
    samples, and at new classes; metrics that read the groups at evaluation call
    :meth:`fresh_groups`. Nothing is scheduled per experience, so an online stream's
    mini-experiences cost what they train (costs per hook: ``docs/design.md``). During an
    experience the buffer knows its classes, so their stored samples keep a uniform share of
    balanced replay. At the end of each experience the plugin publishes to the strategy's
    evaluator (hence to TensorBoard) the share of replayed samples that belong to the current
    experience's classes (``current_share``; 0 with ``"after_experience"`` timing) and the Kish
    effective sample size of the replay distribution as a fraction of the buffer
    (``effective_sample_size``; 1 for uniform draws); when a regrouping ran in the experience,
    also the number of groups and the histograms of group sizes and replay weights.
    The balance of the groups replayed during the experience
    (:meth:`replay_group_entropy`) is published by
    :class:`~avalanche_balanced.metrics.ReplayGroupEntropyMetric`.

    Defaults: class-balanced storage and uniform draws, the configuration that measured best
    across the four streams of ``docs/results.md`` (balanced, long-tailed shuffled and ordered,
    superclass-skewed); semantic draws (``use_balanced_sampling=True``) are the library's
    option for streams whose semantic groups are known or learned well (``grouping="fixed"``
    with ``class_to_group``). ``insertion="reservoir"`` with uniform draws is plain reservoir
    replay, Avalanche's ``ReplayPlugin(storage_policy=ReservoirSamplingBuffer(mem_size))``.

    Replayed samples are joined to the minibatch before the strategy's forward
    pass, so a criterion that takes one mean over the batch (``Naive``) weighs
    every current and replayed sample alike, as Avalanche's ``ReplayPlugin`` does.

    Differences from Avalanche's ``ReplayPlugin`` a user should know: replayed
    samples are the stored (non-augmented) view, augmented by ``transform``
    with the current batch, not re-augmented by the dataset's own transform;
    every replay batch is full (``min(batch_size_mem, len(buffer))``), the last
    one of an epoch included; ``task_balanced_dataloader`` balances the replay
    *distribution* over task labels (equal expected share per task), not
    fixed per-task counts.

    Args:
        mem_size: buffer capacity (``ReplayPlugin``'s name and default).
        batch_size: current samples per iteration; None (default) keeps the
            strategy's ``train_mb_size`` (as ``ReplayPlugin``).
        batch_size_mem: replayed samples per iteration; None (default): the
            strategy's ``train_mb_size`` (as ``ReplayPlugin``). Larger than the
            buffer draws every stored sample once.
        task_balanced_dataloader: equal replay share per stored task label.
        storage_policy: a ready :class:`BalancedBuffer`; otherwise one is built
            from ``mem_size``, ``grouping``, ``balance_weight`` and ``buffer_kwargs``
            (keywords of :class:`BalancedBuffer`; an unknown one raises ``TypeError``
            naming it).
        use_balanced_sampling: importance-weighted (True) or uniform draws (False, the default).
        insertion: what is stored: ``"class_balanced"`` (the default: equal slots per class,
            as Avalanche's ``ClassBalancedBuffer``, except that slots a small class cannot fill
            go to the larger classes), ``"reservoir"`` (a uniform sample of
            everything seen, as ``ReservoirSamplingBuffer``) or ``"group_balanced"`` (equal
            slots per semantic group). Ignored with ``storage_policy``.
        replay_order: how uniform draws go through the buffer: ``"independent"`` batches (the
            default) or ``"passes"`` (every stored sample once per reshuffled pass, full batches,
            as Avalanche's ``ReplayDataLoader`` cycles its buffer; ahead on two of the four
            streams of ``docs/results.md``, behind on the superclass-skewed one). Semantic draws
            are independent by nature; ignored with ``storage_policy``.
        balance_weight: exponent of the balance factor (0 = similarity only).
        grouping: one of ``GROUPINGS`` (see :class:`BalancedBuffer`).
        transform: batched callable applied to the joint input batch, or None
            when the dataset already augments each sample.
        regroup_every: iterations between regroupings when something reads the groups
            (None: at new classes only); with nothing reading them only the deferred checks
            of online insertion run at this interval.
        refresh_prototypes: recompute the buffer's class prototypes from its
            features before regrouping. A strategy that owns the prototypes
            (SARL sets them once per task) passes False.
        insertion_timing: ``"after_experience"`` or ``"online"`` (see above).
        preprocess: model-input preprocessing of the eval-mode passes over stored
            inputs (insertion at the end of an experience, feature refresh),
            e.g. ``cifar_normalize`` when the model does not normalise its
            inputs itself; the buffer stores raw inputs.
        refresh_features: recompute all stored features at every regrouping
            (True), or overwrite only the replayed samples' features with their
            train-mode, augmented ones (False, the earlier design).
        group_metrics: publish the groups (number, sizes, replay weights) every experience in
            which they were regrouped; makes the plugin a reader of the groups (regrouped
            every ``regroup_every`` iterations). False (default): no regrouping for them.
        store_logits: keep each sample's logits at insertion, for losses that read
            ``step.replay.logits`` (DER-style). False (default): with ``ReplayPlugin``'s timing,
            nothing reads them, so insertion runs no model pass unless the groups are read
            (:attr:`computes_outputs`), and drawn batches carry ``logits=None``. Online insertion
            keeps them always (they come from the training pass).
        verbose: print a one-line replay summary per experience (groups, Kish
            effective sample size, current share); histograms go to the evaluator.
    """

    TIMINGS = ("after_experience", "online")

    def __init__(
        self,
        mem_size: int = 200,
        batch_size: Optional[int] = None,
        batch_size_mem: Optional[int] = None,
        task_balanced_dataloader: bool = False,
        storage_policy: Optional[BalancedBuffer] = None,
        *,
        use_balanced_sampling: bool = False,
        insertion: str = "class_balanced",
        replay_order: str = "independent",
        balance_weight: float = 1.0,
        grouping: str = "class_similarity",
        transform: Optional[Callable] = None,
        regroup_every: Optional[int] = 50,
        refresh_prototypes: bool = True,
        seed: int = 0,
        insertion_timing: str = "after_experience",
        preprocess: Optional[Callable] = None,
        refresh_features: bool = True,
        group_metrics: bool = False,
        store_logits: bool = False,
        verbose: bool = False,
        **buffer_kwargs,
    ):
        super().__init__()
        check_buffer_keywords(buffer_kwargs, plugin_keywords=inspect.signature(type(self).__init__).parameters)
        if insertion_timing not in self.TIMINGS:
            raise ValueError(f"insertion_timing must be one of {self.TIMINGS}, got {insertion_timing!r}")
        check_positive_int(storage_policy.max_size if storage_policy is not None else mem_size, "mem_size")
        for name, value in (("batch_size", batch_size), ("batch_size_mem", batch_size_mem)):
            if value is not None:
                check_positive_int(value, name)
        if storage_policy is None:
            storage_policy = BalancedBuffer(mem_size, grouping=grouping, balance_weight=balance_weight,
                                            insertion=insertion, replay_order=replay_order, seed=seed,
                                            **buffer_kwargs)
        if regroup_every is not None and regroup_every <= 0:
            raise ValueError(f"regroup_every must be positive or None, got {regroup_every}")
        self.buffer = storage_policy
        self.batch_size, self.batch_size_mem = batch_size, batch_size_mem
        self.task_balanced_dataloader = task_balanced_dataloader
        self.use_balanced_sampling = use_balanced_sampling
        self.transform = transform
        self.regroup_every = regroup_every
        self.refresh_prototypes = refresh_prototypes
        self.insertion_timing = insertion_timing
        self.preprocess = preprocess
        self.refresh_features = refresh_features
        for name, flag in (("group_metrics", group_metrics), ("store_logits", store_logits)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        self.group_metrics, self.store_logits = group_metrics, store_logits
        self._widths: Optional[tuple] = None  # (logit width, feature width) of the latest training pass
        self.verbose = verbose
        self._replay_size = batch_size_mem  # resolved against the strategy at each experience
        self._ess_sum: Optional[torch.Tensor] = None  # [sum of ESS, count] over this experience's regroups
        self._refreshed_version: Optional[tuple] = None  # model_version() at the latest feature refresh
        self._trained_since_refresh = 0  # current samples trained since the latest feature refresh
        self._groups_fresh = False  # a regrouping ran since this experience began (group metrics may publish)
        self._new_classes = False  # this experience brings classes no earlier one had: regroup at its end
        self._regroup_requested = False  # a strategy asked for a regrouping at the end of this experience
        self._seen_classes: Optional[torch.Tensor] = None  # bool mask over the classes of past experiences
        self._grouped_at: Optional[tuple] = None  # (buffer insertions, model version) at the latest regrouping
        self.replay_group_counts: Optional[torch.Tensor] = None  # groups replayed this experience
        self._hook: Optional[FeatureHook] = None  # on the model from before_forward to after_forward only
        self._classifier = self._classifier_of = None  # the hooked module, and the model it belongs to
        self._replay: Optional[ReplayBatch] = None
        self._current = None  # (inputs, labels, task labels) of the current minibatch, raw
        self.step: Optional[ReplayStep] = None  # this iteration's record, from after_forward on
        self._insert = None  # what after_training_iteration inserts
        self._iterations = 0
        self._current_classes: Optional[torch.Tensor] = None  # bool mask over classes, this experience
        self._replay_counts: Optional[torch.Tensor] = None  # [replayed, replayed of current classes]
        self._rank, self._world = 0, 1  # torch DDP: this process and the number of processes
        self._global_indices: Optional[torch.Tensor] = None  # the whole draw's indices (all ranks')

    @property
    def reads_groups(self) -> bool:
        """Whether anything reads the stored samples' groups and similarities: semantic draws
        weigh by them, group-balanced storage allocates slots by them, ``group_metrics``
        publishes them. Only then is the buffer ever regrouped (:meth:`regroup_due`); the
        defaults (uniform draws from class-balanced storage) make no pass over it at all."""
        return self.use_balanced_sampling or self.buffer.insertion == "group_balanced" or self.group_metrics

    @property
    def computes_outputs(self) -> bool:
        """Whether insertion at the end of an experience runs the model over its data for logits
        and features: only when something reads them (``store_logits``, the groups, or features
        kept from training passes, ``refresh_features=False``). Otherwise the inputs, labels and
        task labels are stored with zero logits and features, the drawn batches carry no logits
        (``ReplayBatch.logits`` is None), and a reader of the groups refreshes the features first."""
        return (self.store_logits or self.reads_groups or not self.refresh_features
                or self.insertion_timing == "online")

    def fresh_groups(self, model) -> None:
        """Bring the stored samples' features, prototypes and groups up to date for a reader
        outside training (a metric, at evaluation): regroup, refreshing stored features, when
        anything was inserted or the model changed since the latest regrouping; else nothing."""
        if len(self.buffer) and self._grouped_at != (self.buffer.step, model_version(unwrap(model))):
            self._regroup(model, force_refresh=True)

    def request_regroup(self) -> None:
        """Regroup (and refresh the stored features) at the end of this experience, whatever the
        schedule says: a strategy that changed the prototypes or the model asks for it (SARL)."""
        self._regroup_requested = True

    @property
    def num_current(self) -> Optional[int]:
        """Current samples at the head of this iteration's joint minibatch (None outside one)."""
        return None if self._current is None else self._current[0].shape[0]

    def reorder_features(self, order) -> None:
        """Reorder the feature hook's recorded passes (a strategy that ran the joint minibatch
        in several passes, in another order than its layout: SARL's replayed-first passes)."""
        self._hook.calls = [self._hook.calls[i] for i in order]

    @property
    def storage_policy(self) -> BalancedBuffer:
        """Avalanche's name for the buffer."""
        return self.buffer

    def draw(self) -> ReplayBatch:
        """One replay minibatch (non-augmented), balanced or uniform as configured; under DDP,
        this rank's slice of the global draw (whose indices are kept in ``_global_indices``)."""
        k = self._replay_size if self._replay_size is not None else 32
        if self.task_balanced_dataloader:
            batch = self.buffer.get_task_balanced_data(k, balanced=self.use_balanced_sampling)
        elif self.use_balanced_sampling:
            batch = self.buffer.get_balanced_data(k)
        else:
            batch = self.buffer.get_data(k)
        self._global_indices = batch.indices
        if self._world > 1:
            if batch.indices.shape[0] % self._world:  # fewer stored than asked: an equal share each
                keep = batch.indices.shape[0] - batch.indices.shape[0] % self._world
                batch = ReplayBatch(*(t[:keep] for t in batch))
                self._global_indices = batch.indices
            batch = ReplayBatch(*shard_rows(list(batch), self._rank, self._world))
        return batch if self.computes_outputs else batch._replace(logits=None)

    # ------------------------------------------------------------------ hooks
    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                            **kwargs):
        self.buffer.to(strategy.device)
        self._classifier = None  # model adaptation may have replaced modules: find it again
        self._replay_size = self.batch_size_mem if self.batch_size_mem is not None else strategy.train_mb_size
        self._rank, self._world = rank_and_world()
        if self._world > 1:
            check_divisible(self._replay_size, self._world)
            check_same_settings(self.buffer)
        if self.batch_size is not None and self.batch_size != strategy.train_mb_size:
            # As ReplayPlugin: batch_size sets the current samples per iteration for this plugin's run.
            strategy.train_mb_size = self.batch_size
            strategy.make_train_dataloader(num_workers=num_workers, shuffle=shuffle, drop_last=drop_last, **kwargs)
        self.replay_group_counts = None
        classes = experience_classes(strategy.experience, strategy.device)
        width = max(self.buffer.num_classes if self.buffer.allocated else 0, int(classes.max()) + 1
                    if classes.numel() else 0)
        self._current_classes = torch.zeros(width, dtype=torch.bool, device=strategy.device)
        self._current_classes[classes] = True
        self._new_classes = self._note_classes(self._current_classes)
        self._groups_fresh = False
        self._replay_counts = torch.zeros(2, dtype=torch.long, device=strategy.device)
        self._ess_sum = torch.zeros(2, dtype=torch.float64, device=strategy.device)
        self.buffer.set_current_classes(classes)

    def before_forward(self, strategy, **kwargs):
        # The hook lives for this forward pass only: between iterations the model holds no
        # reference to a graph, so other plugins may deep-copy it at any time (LwF does).
        if self._classifier is None or self._classifier_of is not strategy.model:
            # found once per model: walking its modules every iteration would be wasted work
            self._classifier, self._classifier_of = classifier_of(strategy.model), strategy.model
        self._hook = FeatureHook(strategy.model, layer=self._classifier)
        x, y, t = strategy.mb_x, strategy.mb_y, task_labels_of(strategy)
        self._current = (x, y, t)
        self._replay = self.draw() if len(self.buffer) > 0 else None
        if self._replay is not None:
            self._count_replayed_groups(self._replay.indices)
            self._count_current_share(self._replay.labels)
            x = torch.cat([x, self._replay.inputs.to(x.dtype)])
            y = torch.cat([y, self._replay.labels])
            t = torch.cat([t, self._replay.task_labels])
        write_minibatch(strategy, self.transform(x) if self.transform is not None else x, y, t)

    def after_forward(self, strategy, **kwargs):
        n = self._current[0].shape[0]
        self._trained_since_refresh += n
        features = self._hook.features
        self.remove_hook()
        if strategy.mb_output.shape[1] > self.buffer.num_classes:
            self.buffer.grow_classes(strategy.mb_output.shape[1])  # a growing head (IncrementalClassifier)
        self.step = ReplayStep(n, self._replay, features.flatten(1))
        self._widths = (strategy.mb_output.shape[1], self.step.features.shape[1])
        feats = self.step.features.detach()
        if self._replay is not None:
            losses = F.cross_entropy(strategy.mb_output.detach()[n:].float(), self._replay.labels,
                                     reduction="none")
            # Under DDP every rank applies every rank's values: gathered in rank order, they
            # line up with the global draw's indices.
            if not self.refresh_features:
                self.buffer.update_features(self._global_indices, *gather_rows(feats[n:]))
            self.buffer.record_losses(self._global_indices, *gather_rows(losses))
        if self.insertion_timing == "online":
            # Inserted at the end of the iteration (as SARL does): never replayed in their own step;
            # under DDP, every rank's minibatch, in rank order.
            self._insert = gather_rows(*self._current, strategy.mb_output.detach()[:n], feats[:n])

    def after_training_iteration(self, strategy, **kwargs):
        if self._insert is not None:
            x, y, t, logits, feats = self._insert
            self.buffer.add_data(x, y, logits, feats, task_labels=t, defer_checks=True)  # checked at regroup
        self._current, self._replay, self._insert, self.step = None, None, None, None
        self._iterations += 1
        if self.regroup_every and self._iterations % self.regroup_every == 0:
            with explain_non_finite(strategy, f"values inserted online up to iteration {self._iterations}"):
                if self.reads_groups:
                    self._regroup(strategy.model)
                else:  # nothing reads the groups: only the deferred checks are due
                    self.buffer.check_pending()
            self._record_ess()

    def after_training_exp(self, strategy, **kwargs):
        if self.insertion_timing == "after_experience":
            with explain_non_finite(strategy, "insertion at the end of the experience"):
                if self.computes_outputs or self._widths is None:
                    self.buffer.add_dataset(unwrap(strategy.model), strategy.experience.dataset, strategy.device,
                                            preprocess=self.preprocess, strategy=strategy)
                else:  # nothing reads logits or features: no model pass over the experience
                    self.buffer.add_dataset(None, strategy.experience.dataset, strategy.device,
                                            strategy=strategy, output_widths=self._widths)
        self.buffer.set_current_classes(None)  # the finished experience is past from now on
        with explain_non_finite(strategy, "values inserted online during the experience"):
            self.buffer.check_pending()
        if self.regroup_due():
            # New classes (or a strategy's request): their prototypes and groups are due now, from
            # features of the model as it is now, unless nothing touched it since the latest refresh.
            self._regroup(strategy.model, force_refresh=self._refreshed_version != model_version(
                unwrap(strategy.model)))
        if self._ess_sum is not None and not bool(self._ess_sum[1] > 0):
            self._record_ess()  # no regrouping during the experience: its replay distribution now
        self._new_classes = self._regroup_requested = False
        broadcast_buffer(self.buffer)  # DDP: every rank continues from rank 0's buffer
        self._publish(strategy)

    def regroup_due(self) -> bool:
        """Whether the end of this experience regroups the buffer: only when something reads the
        groups (:attr:`reads_groups`) or a strategy asked (:meth:`request_regroup`), and then only
        when the experience brought classes never seen before, or was asked to. Experiences that
        repeat known classes (an online stream's mini-experiences) leave it to the schedule in
        iterations, ``regroup_every``: their cost follows what is trained, not what is stored."""
        return self._regroup_requested or (self.reads_groups and self._new_classes)

    def remove_hook(self) -> None:
        """Remove the feature hook from the model (it is added again at the next forward pass)."""
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
    def _regroup(self, model, force_refresh: bool = False):
        """Prototypes from the stored features, then every stored sample's group. The stored
        features are recomputed first (a model pass over the buffer) when asked, or once as many
        current samples were trained since the latest refresh as the buffer holds: at most one
        eval-mode forward pass per trained sample, amortised, whatever the buffer size."""
        model = unwrap(model)  # no-grad passes on the plain module: no collective in them
        if self.refresh_features and (force_refresh or self._trained_since_refresh >= len(self.buffer)):
            self.buffer.refresh_features(model, self.preprocess)
            self._refreshed_version = model_version(model)
            self._trained_since_refresh = 0
        if self.refresh_prototypes:
            self.buffer.refresh_prototypes()
        self.buffer.regroup()
        self._groups_fresh = True
        self._grouped_at = (self.buffer.step, model_version(model))

    def _note_classes(self, current: torch.Tensor) -> bool:
        """Add the experience's classes to those seen; True when any of them is new (one host read)."""
        seen = self._seen_classes
        if seen is None or seen.shape[0] < current.shape[0]:
            grown = torch.zeros(current.shape[0], dtype=torch.bool, device=current.device)
            if seen is not None:
                grown[: seen.shape[0]] = seen.to(current.device)
            seen = grown
        seen = seen.to(current.device)
        new = bool((current & ~seen[: current.shape[0]]).any())
        seen[: current.shape[0]] |= current
        self._seen_classes = seen
        return new

    def _count_replayed_groups(self, indices):
        # Fixed-width counts (index_add_, not bincount): no host sync per step.
        groups = self.buffer.group_ids[indices]
        width = self.buffer.group_width
        if self.replay_group_counts is None or self.replay_group_counts.shape[0] < width:
            grown = torch.zeros(width, dtype=torch.long, device=groups.device)
            if self.replay_group_counts is not None:
                grown[: self.replay_group_counts.shape[0]] = self.replay_group_counts
            self.replay_group_counts = grown
        self.replay_group_counts.index_add_(0, groups, torch.ones_like(groups))

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
        scalars = {
            "BalancedReplay/current_share": self.current_share(),
            "BalancedReplay/effective_sample_size": self.effective_sample_size(),
        }
        # Groups and replay weights only when they are current (a regrouping ran in this
        # experience): reading them otherwise would cost a pass over the buffer per experience.
        histograms = {}
        if self._groups_fresh:
            counts = self.buffer.group_counts
            sizes = counts[counts > 0]
            scalars["BalancedReplay/num_groups"] = int(sizes.numel())
            histograms = {
                "BalancedReplay/group_sizes": sizes.float().cpu(),
                "BalancedReplay/replay_weight": (self.buffer.replay_probabilities() * len(self.buffer)).cpu(),
            }
        for name, value in scalars.items():
            evaluator.publish_metric_value(MetricValue(self, name, value, step))
        # Histograms go to TensorBoard only: a text logger would print hundreds of numbers.
        for logger in getattr(evaluator, "loggers", []):
            if isinstance(logger, TensorboardLogger):
                for name, values in histograms.items():
                    logger.writer.add_histogram(name, values, step)
        if self.verbose:
            exp = getattr(strategy.experience, "current_experience", "?")
            groups = scalars.get("BalancedReplay/num_groups")
            print(f"[BalancedReplay] experience {exp}: {len(self.buffer)} stored, "
                  f"{'?' if groups is None else groups} groups, effective sample size "
                  f"{scalars['BalancedReplay/effective_sample_size']:.2f}, current share "
                  f"{scalars['BalancedReplay/current_share']:.2f}")
