"""``BalancedReplayPlugin``: balanced (or uniform) replay for any Avalanche ``SupervisedTemplate``."""
import inspect
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from .buffer import BalancedBuffer, ReplayBatch
from .distributed import broadcast_buffer, check_divisible, check_same_settings, gather_rows, rank_and_world, \
    shard_draw, unwrap
from .features import FeatureHook, classifier_of
from .guards import explain_non_finite
from .replay_diagnostics import ReplayDiagnostics
from .minibatch import ReplayStep, class_mask, experience_classes, task_labels_of, write_minibatch
from .regrouping import RegroupSchedule
from .replay_sampler import ReplaySampler
from .validation import check_known_keywords, check_positive_int

__all__ = ["BalancedReplayPlugin", "ReplayStep", "experience_classes"]

# What BalancedBuffer accepts beside its capacity: its own keywords, its groups' and its sampler's.
BUFFER_KEYWORDS = tuple(k for k in inspect.signature(BalancedBuffer.__init__).parameters
                        if k not in ("self", "max_size", "options")) + BalancedBuffer.GROUP_KEYWORDS + tuple(
    k for k in inspect.signature(ReplaySampler.__init__).parameters if k not in ("self", "storage"))


class BalancedReplayPlugin(SupervisedPlugin, supports_distributed=True):
    """Experience replay from a :class:`BalancedBuffer`, joined to every training minibatch.

    ``before_forward`` draws ``batch_size_mem`` stored samples (semantic-balanced with
    ``use_balanced_sampling``, else uniform), joins them to the current minibatch, so that the
    strategy's own criterion covers both, and applies the batched ``transform`` to the joint batch;
    ``after_forward`` publishes the iteration's :class:`ReplayStep` as :attr:`step` (features from a
    hook on the model's last linear layer, removed at once) and records the replayed samples' losses.
    The buffer is filled at the end of each experience (``insertion_timing="after_experience"``, as
    Avalanche's ``ReplayPlugin``) or with every minibatch after its step (``"online"``, as SARL).

    Defaults: class-balanced storage and uniform draws (what measured best on every stream of
    ``docs/results.md``), a drop-in for ``ReplayPlugin(storage_policy=ClassBalancedBuffer(mem_size))``.
    Then nothing reads the groups: no regrouping and no model pass over the buffer. A reader of the
    groups (semantic draws, group-balanced storage, ``group_metrics``) regroups on the
    :class:`~avalanche_balanced.regrouping.RegroupSchedule`; without a reader of logits or features
    (``store_logits``) insertion runs no model pass and draws carry ``logits=None``.

    Under torch DDP every rank keeps the same buffer and trains on its slice of one global draw
    (``batch_size_mem`` is global). Published each experience: :attr:`diagnostics`.

    ``mem_size``, ``batch_size``, ``batch_size_mem``, ``task_balanced_dataloader`` and
    ``storage_policy`` are ``ReplayPlugin``'s; other keywords go to :class:`BalancedBuffer` (an
    unknown one raises ``TypeError``). Every argument in full: ``docs/design.md``, "The plugin".
    """

    TIMINGS = ("after_experience", "online")

    def __init__(self, mem_size: int = 200, batch_size: Optional[int] = None, batch_size_mem: Optional[int] = None,
                 task_balanced_dataloader: bool = False, storage_policy: Optional[BalancedBuffer] = None, *,
                 use_balanced_sampling: bool = False, transform: Optional[Callable] = None,
                 regroup_every: Optional[int] = 50, refresh_prototypes: bool = True, refresh_features: bool = True,
                 insertion_timing: str = "after_experience", preprocess: Optional[Callable] = None,
                 group_metrics: bool = False, store_logits: bool = False, verbose: bool = False, **buffer_kwargs):
        super().__init__()
        own = [k for k in inspect.signature(type(self).__init__).parameters if k not in ("self", "buffer_kwargs")]
        check_known_keywords(buffer_kwargs, BUFFER_KEYWORDS, "buffer", own)
        _check_arguments(self.TIMINGS, insertion_timing, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         group_metrics=group_metrics, store_logits=store_logits)
        _check_storage_policy(storage_policy, mem_size, buffer_kwargs)
        self.buffer = storage_policy if storage_policy is not None else BalancedBuffer(mem_size, **buffer_kwargs)
        self.schedule = RegroupSchedule(regroup_every, refresh_features, refresh_prototypes, preprocess)
        self.diagnostics = ReplayDiagnostics(use_balanced_sampling)
        self.batch_size, self.batch_size_mem, self._replay_size = batch_size, batch_size_mem, batch_size_mem
        self.task_balanced_dataloader, self.use_balanced_sampling = task_balanced_dataloader, use_balanced_sampling
        self.transform, self.insertion_timing, self.preprocess = transform, insertion_timing, preprocess
        self.group_metrics, self.store_logits, self.verbose = group_metrics, store_logits, verbose
        self.step: Optional[ReplayStep] = None  # this iteration's record, from after_forward on
        self._iterations, self._rank, self._world, self._widths = 0, 0, 1, None  # widths: (logits, features)
        self._hook: Optional[FeatureHook] = None  # on the model from before_forward to after_forward only
        self._classifier = self._classifier_of = None  # the hooked module, and the model it belongs to
        self._current = self._replay = self._insert = self._global_indices = None

    @property
    def reads_groups(self) -> bool:
        """Whether anything reads the groups: only then is the buffer ever regrouped."""
        return self.use_balanced_sampling or self.buffer.insertion == "group_balanced" or self.group_metrics

    @property
    def computes_outputs(self) -> bool:
        """Whether end-of-experience insertion runs the model for logits and features (something reads them)."""
        return (self.store_logits or self.reads_groups or not self.schedule.refresh_features
                or self.insertion_timing == "online")

    storage_policy = property(lambda self: self.buffer, doc="Avalanche's name for the buffer.")

    @property
    def num_current(self) -> Optional[int]:
        """Current samples at the head of this iteration's joint minibatch (None outside one)."""
        return None if self._current is None else self._current[0].shape[0]

    def request_regroup(self) -> None:
        """Regroup at the end of this experience (a strategy that changed prototypes or model: SARL)."""
        self.schedule.request()

    def fresh_groups(self, model) -> None:
        """Bring the groups up to date for a reader outside training (a metric, at evaluation)."""
        self.schedule.bring_up_to_date(self.buffer, model)

    def reorder_features(self, order) -> None:
        """Reorder the feature hook's recorded passes (a strategy that ran the joint minibatch in
        several passes in another order than its layout: SARL's replayed-first passes)."""
        self._hook.calls = [self._hook.calls[i] for i in order]

    def draw(self) -> ReplayBatch:
        """One replay minibatch (non-augmented); under DDP, this rank's slice of the global draw."""
        k = self._replay_size if self._replay_size is not None else 32
        if self.task_balanced_dataloader:
            batch = self.buffer.get_task_balanced_data(k, balanced=self.use_balanced_sampling)
        else:
            batch = self.buffer.get_balanced_data(k) if self.use_balanced_sampling else self.buffer.get_data(k)
        batch, self._global_indices = shard_draw(batch, self._rank, self._world)
        return batch if self.computes_outputs else batch._replace(logits=None)

    # ------------------------------------------------------------------ hooks
    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                            **kwargs):
        _check_only_replay(self, strategy)
        self.buffer.to(strategy.device)
        self._classifier = None  # model adaptation may have replaced modules: find it again
        self._replay_size = self.batch_size_mem if self.batch_size_mem is not None else strategy.train_mb_size
        self._rank, self._world = rank_and_world()
        if self._world > 1:
            check_divisible(self._replay_size, self._world)
            check_same_settings(self.buffer)
        if self.batch_size is not None and self.batch_size != strategy.train_mb_size:
            strategy.train_mb_size = self.batch_size  # as ReplayPlugin: current samples per iteration
            strategy.make_train_dataloader(num_workers=num_workers, shuffle=shuffle, drop_last=drop_last, **kwargs)
        classes = experience_classes(strategy.experience, strategy.device)
        current = class_mask(classes, self.buffer.num_classes)
        self.schedule.start_experience(current)
        self.diagnostics.start_experience(current)
        self.buffer.set_current_classes(classes)

    def before_forward(self, strategy, **kwargs):
        # The hook lives for this forward pass only: between iterations the model holds no reference
        # to a graph, so other plugins may deep-copy it at any time (LwF does).
        if self._hook is not None:  # left by a forward pass that was interrupted
            self._hook.remove()
        if self._classifier is None or self._classifier_of is not strategy.model:
            self._classifier, self._classifier_of = classifier_of(strategy.model), strategy.model
        self._hook = FeatureHook(strategy.model, layer=self._classifier)
        x, y, t = self._current = (strategy.mb_x, strategy.mb_y, task_labels_of(strategy))
        self._replay = self.draw() if len(self.buffer) > 0 else None
        if self._replay is not None:
            _check_same_inputs(x, self._replay.inputs)
            self.diagnostics.count(self._replay, self.buffer)
            x, y = torch.cat([x, self._replay.inputs.to(x.dtype)]), torch.cat([y, self._replay.labels])
            t = torch.cat([t, self._replay.task_labels])
        write_minibatch(strategy, self.transform(x) if self.transform is not None else x, y, t)

    def after_forward(self, strategy, **kwargs):
        n = self._current[0].shape[0]
        self.schedule.trained_since_refresh += n
        features = self._hook.features
        self._hook.remove()
        self._hook = None
        output = strategy.mb_output
        self.buffer.grow_classes(output.shape[1])  # a growing head (IncrementalClassifier); else a no-op
        self.step = ReplayStep(n, self._replay, features.flatten(1))
        self._widths = (output.shape[1], self.step.features.shape[1])
        feats = self.step.features.detach()
        if self._replay is not None:  # under DDP every rank applies every rank's values, in rank order
            losses = F.cross_entropy(output.detach()[n:].float(), self._replay.labels, reduction="none")
            if not self.schedule.refresh_features:
                self.buffer.update_features(self._global_indices, *gather_rows(feats[n:]))
            self.buffer.record_losses(self._global_indices, *gather_rows(losses))
        if self.insertion_timing == "online":  # inserted after the step, as SARL: never replayed in it
            self._insert = gather_rows(*self._current, output.detach()[:n], feats[:n])

    def after_training_iteration(self, strategy, **kwargs):
        if self._insert is not None:
            x, y, t, logits, feats = self._insert
            self.buffer.add_data(x, y, logits, feats, task_labels=t, defer_checks=True)  # checked at regroup
        self._current = self._replay = self._insert = self.step = None
        self._iterations += 1
        if self.schedule.due_at_iteration(self._iterations):
            with explain_non_finite(strategy, f"values inserted online up to iteration {self._iterations}"):
                if self.reads_groups:
                    self.schedule.regroup(self.buffer, strategy.model)
                else:  # nothing reads the groups: only the deferred checks are due
                    self.buffer.check_pending()
            self.diagnostics.record_ess(self.buffer)

    def after_training_exp(self, strategy, **kwargs):
        if self.insertion_timing == "after_experience":
            with explain_non_finite(strategy, "insertion at the end of the experience"):
                # Without a reader of logits or features: no model pass, zeros of the training widths.
                with_outputs = self.computes_outputs or self._widths is None
                self.buffer.add_dataset(unwrap(strategy.model) if with_outputs else None, strategy.experience.dataset,
                                        strategy.device, preprocess=self.preprocess, strategy=strategy,
                                        output_widths=self._widths)
        self.buffer.set_current_classes(None)  # the finished experience is past from now on
        with explain_non_finite(strategy, "values inserted online during the experience"):
            self.buffer.check_pending()
        if self.schedule.due_at_end(self.reads_groups):
            self.schedule.regroup_at_end(self.buffer, strategy.model)
        if not self.diagnostics.recorded_ess():
            self.diagnostics.record_ess(self.buffer)  # no regrouping during the experience: its distribution now
        self.schedule.end_experience()
        broadcast_buffer(self.buffer)  # DDP: every rank continues from rank 0's buffer
        self.diagnostics.publish(self, strategy, self.buffer, self.schedule.ran_this_experience, self.verbose)

    # ----------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """The buffer's state and the plugin's iteration counter (for checkpoints)."""
        return {"buffer": self.buffer.state_dict(), "iterations": self._iterations}

    def check_state_dict(self, state: dict) -> None:
        """Raise ``ValueError`` unless ``state`` loads here (nothing is assigned)."""
        if "buffer" not in state or "iterations" not in state:
            raise ValueError("replay plugin state lacks 'buffer' or 'iterations'")
        self.buffer.check_state_dict(state["buffer"])

    def load_state_dict(self, state: dict) -> None:
        self.check_state_dict(state)
        self.buffer.load_state_dict(state["buffer"])
        self._iterations = state["iterations"]


def _check_arguments(timings, insertion_timing, **values) -> None:
    if insertion_timing not in timings:
        raise ValueError(f"insertion_timing must be one of {timings}, got {insertion_timing!r}")
    for name in ("batch_size", "batch_size_mem"):
        if values[name] is not None:
            check_positive_int(values[name], name)
    for name in ("group_metrics", "store_logits"):
        if not isinstance(values[name], bool):
            raise TypeError(f"{name} must be True or False, got {values[name]!r}")


def _check_storage_policy(storage_policy, mem_size, buffer_kwargs) -> None:
    """Arguments that a ready buffer (``storage_policy=``) would make meaningless raise."""
    if storage_policy is None:
        check_positive_int(mem_size, "mem_size")
        return
    if buffer_kwargs:
        raise ValueError(f"storage_policy= is a ready buffer: {sorted(buffer_kwargs)} would be ignored; set them "
                         "on the BalancedBuffer itself")
    if mem_size not in (200, storage_policy.max_size):  # 200: ReplayPlugin's default, i.e. not given
        raise ValueError(f"mem_size={mem_size} beside storage_policy= with max_size {storage_policy.max_size}: the "
                         "buffer's capacity is its own; drop mem_size or resize the buffer")


def _check_only_replay(plugin, strategy) -> None:
    """Two replay plugins would each join a replay batch to the same minibatch: refused by name."""
    others = [p for p in strategy.plugins if isinstance(p, BalancedReplayPlugin) and p is not plugin]
    if others:
        raise ValueError(f"{len(others) + 1} BalancedReplayPlugin instances on one strategy "
                         f"({type(strategy).__name__}; SARLGelu brings its own): each would join its replay batch to "
                         "the same minibatch; keep one (one buffer can mix any storage and draws)")


def _check_same_inputs(current, replayed) -> None:
    if current.shape[1:] != replayed.shape[1:]:
        raise ValueError(f"this experience's inputs have shape {tuple(current.shape[1:])} per sample, the buffer "
                         f"stores {tuple(replayed.shape[1:])}: replayed and current samples cannot share a minibatch")
