"""SARL-GELU: semantic-aware representation learning (Sarfraz, Arani, Zonooz, ICLR 2025)
with GELU activations and Balanced Instance Sampling, as an Avalanche strategy.

The strategy owns the loss; the replay wiring (draw, join, features, insertion)
is a :class:`BalancedReplayPlugin` over a :class:`BalancedBuffer` whose
prototypes and similarity network are the strategy's own.
"""
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import LRSchedulerPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.models.utils import avalanche_forward
from avalanche.training.utils import get_last_fc_layer

from ..buffer import BalancedBuffer
from ..distributed import gather_rows, unwrap
from ..features import eval_mode, forward_with_features, frozen_copy
from ..guards import TrainingGuardPlugin, ramp_factor, teacher_collapsed
from ..minibatch import experience_classes
from ..plugin import BalancedReplayPlugin
from ..semantic import AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from ..transforms import BatchTransformPlugin
from ..validation import check_replay_sizes
from .sarl_terms import prototype_regularizer, semantic_contrastive, threshold_positives

__all__ = ["SARLGelu", "SARLEnhancedGeluBalanced", "prototype_regularizer", "semantic_contrastive",
           "threshold_positives", "SEMANTIC_POSITIVES", "PROTOTYPE_VIEWS",
           "ramp_factor", "teacher_collapsed"]


# Defaults of the guards (docs: "Training guards"). The clip bound sits above every per-epoch
# maximum gradient norm of the healthy quick-protocol runs at lr 0.1 (at most 17.1), so it
# engages on spikes only. The warm-up ramp is off (SARL's switch): on validation images a ramp
# of 25 or 100 iterations did no better in any of four runs (docs/results.md, "Training guards").
CLIP_GRAD_NORM: Optional[float] = 25.0
SEMANTIC_POSITIVES = ("learned", "threshold")  # the variant's learned similarity, or SARL's fixed positives
PROTOTYPE_VIEWS = ("clean", "augmented")  # the images prototypes are computed from
RAMP_ITERATIONS = 0


class _SarlEpochEvents(SupervisedPlugin, supports_distributed=True):
    """Publishes the mean of each SARL loss term over the epoch (TensorBoard scalars)."""

    def __init__(self, strategy: "SARLGelu"):
        super().__init__()
        self.strategy = strategy

    def after_training_epoch(self, strategy, **kwargs):
        sums, n = self.strategy._epoch_terms, self.strategy._epoch_iterations
        if strategy.evaluator is None or n == 0:
            return
        step = strategy.clock.train_iterations
        for name, total in sums.items():
            strategy.evaluator.publish_metric_value(
                MetricValue(self, f"SARL/{name}", float(total) / n, step))


class SARLGelu(SupervisedTemplate):
    """SARL with GELU activations and Balanced Instance Sampling.

    One training step, each term switched off by a zero weight
    (``strategy.loss_terms`` holds the last step's values):

    * ``ce``: cross-entropy on the current batch;
    * ``replay_mse`` (``alpha``) and ``replay_ce``: on the replay minibatch, MSE
      to the stored logits and cross-entropy to the stored labels;
    * ``prototype`` (``op_weight``, task > 0): :func:`prototype_regularizer`;
    * after the warm-up (task > 0 and epoch > ``warmup_epochs``, epochs counted
      from 0 as in SARL's code): ``distill`` (``beta``), MSE between the current
      batch's logits and the frozen previous model's, and ``semantic``
      (``sm_weight``), :func:`semantic_contrastive`, weighted by the learned
      :class:`SemanticSimilarity` (``semantic_positives="learned"``, the variant) or by
      SARL's positives, fixed once per task after the warm-up
      (``semantic_positives="threshold"``, :func:`threshold_positives`).

    SARL as its authors wrote it is a configuration of this class (``docs/design.md``, "SARL
    and SARL-GELU"): ``sparse_resnet18`` as the model, ``semantic_positives="threshold"``,
    ``separate_batches=True`` (replayed and current samples through the model in two passes),
    ``prototype_views="augmented"`` (prototypes from augmented images), uniform draws and no
    guards (``clip_grad_norm=None, teacher_ratio=None``).

    Every iteration (when something reads it) the similarity network takes one Adam step (``sim_lr``) on
    the pairs of the current and replayed features (``similarity`` term,
    logged), toward ``sim_target`` (``"graded"``: the centred cosine of the
    pair's class prototypes, which is what the semantic term asks of it;
    ``"binary"``: SARL's same-class rule), and the non-augmented current inputs
    go into the buffer by reservoir insertion with their logits and features.

    At the end of each experience, as SARL: the frozen copy of the model, one
    train-mode pass over the buffer without updates (BatchNorm statistics),
    then the class prototypes of the finished experience from an eval-mode
    pass over its training data, and regrouping of the buffer. The optimiser
    state is reset at the start of every experience, and with ``lr_steps`` a
    ``MultiStepLR`` (``lr_gamma``) is re-created per experience.

    Guards against a diverging run (a :class:`TrainingGuardPlugin`): a
    non-finite loss term raises ``NonFiniteLossError`` naming it before the
    backward pass; ``clip_grad_norm`` clips the global gradient norm (None:
    off); the epoch's largest gradient norm and logit are published as
    ``Guard/*`` metrics. After the warm-up, ``distill`` and ``semantic`` ramp in
    linearly over ``ramp_iterations`` iterations (0: SARL's switch to full
    weight). At the end of an experience the new frozen teacher must pass
    :func:`teacher_collapsed` on the buffer (accuracy at least
    ``teacher_ratio`` times the teacher in place's, and above the share of the
    buffer's most frequent class);
    otherwise a ``RuntimeWarning`` is issued, ``SARL/teacher_rejected`` is
    published, and the previous teacher stays the distillation target
    (``teacher_ratio=None`` turns the check off, as SARL).

    The buffer's importance uses the centred cosine similarity of each stored
    sample to its class prototype (``similarity="cosine"``; ``"learned"`` asks
    the similarity network, ``"none"`` drops the term) and groups classes with
    ``grouping`` (see :class:`BalancedBuffer`); ``replay_options`` go to the
    buffer (e.g. ``max_ratio``, ``protect_current``, ``hierarchical``) and
    ``refresh_features`` to the replay plugin. All stored features are
    recomputed in eval mode with ``eval_transform`` at every regrouping, the
    way the prototypes are computed.

    ``transform`` is the *batched* training augmentation applied to current
    and replayed inputs together (e.g. ``cifar_augment``), ``eval_transform`` the
    evaluation preprocessing (e.g. ``cifar_normalize``); leave both None when the
    datasets transform each sample themselves (Avalanche's ``SplitCIFAR100``):
    the buffer then stores the inputs as the dataset delivered them, i.e.
    augmented and normalised once, and replays that fixed view.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion=None,
        mem_size: int = 200,
        batch_size_mem: int = 32,
        alpha: float = 0.5,
        beta: float = 1.0,
        op_weight: float = 0.5,
        sm_weight: float = 0.01,
        sim_thresh: float = 0.8,
        sim_lr: float = 0.001,
        warmup_epochs: int = 5,
        online_warmup_iterations: int = 0,
        clip_grad_norm: Optional[float] = CLIP_GRAD_NORM,
        ramp_iterations: int = RAMP_ITERATIONS,
        teacher_ratio: Optional[float] = 0.5,
        use_balanced_sampling: bool = True,
        balance_weight: float = 1.0,
        grouping: str = "class_similarity",
        similarity: str = "cosine",
        sim_target: str = "graded",
        semantic_positives: str = "learned",
        separate_batches: bool = False,
        prototype_views: str = "clean",
        refresh_features: bool = True,
        replay_options: Optional[dict] = None,
        threshold: Optional[AdaptiveThreshold] = None,
        class_to_group: Optional[Tensor] = None,
        lr_steps: Optional[Sequence[int]] = None,
        lr_gamma: float = 0.1,
        transform: Optional[Callable] = None,
        eval_transform: Optional[Callable] = None,
        regroup_every: Optional[int] = 50,
        seed: int = 0,
        train_mb_size: int = 32,
        train_epochs: int = 50,
        eval_mb_size: Optional[int] = 256,
        device="cpu",
        plugins: Optional[List[SupervisedPlugin]] = None,
        evaluator=default_evaluator,
        eval_every: int = -1,
        **base_kwargs,
    ):
        for name, value in dict(alpha=alpha, beta=beta, op_weight=op_weight, sm_weight=sm_weight,
                                warmup_epochs=warmup_epochs, ramp_iterations=ramp_iterations,
                                teacher_ratio=teacher_ratio or 0.0).items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        check_replay_sizes(mem_size, batch_size_mem)
        device = torch.device(device)
        head = get_last_fc_layer(model)[1]
        self.num_classes, self.num_feats = head.out_features, head.in_features
        self.alpha, self.beta, self.op_weight, self.sm_weight = alpha, beta, op_weight, sm_weight
        self.warmup_epochs, self.ramp_iterations, self.teacher_ratio = warmup_epochs, ramp_iterations, teacher_ratio
        if not isinstance(online_warmup_iterations, int) or online_warmup_iterations < 0:
            raise ValueError(f"online_warmup_iterations must be an int >= 0, got {online_warmup_iterations!r}")
        self.online_warmup_iterations = online_warmup_iterations
        self.lr_steps = list(lr_steps) if lr_steps else None
        # Online streams (see _begin_online_experience): the task being trained, its classes,
        # its training iterations so far, and every class trained before.
        self._online_task, self._task_iterations = -1, 0
        self._task_classes: Optional[Tensor] = None
        self._seen_classes: Optional[Tensor] = None
        self._new_online_task = self._is_online = False
        self.guard = TrainingGuardPlugin(clip_grad_norm=clip_grad_norm)
        self.teacher_accuracy: Optional[float] = None  # the teacher in place, on the buffer when it was set
        self.rejected_teachers: List[int] = []  # experiences whose end-of-experience model was rejected
        self._past_warmup_iterations = 0
        self.transform, self.eval_transform = transform, eval_transform
        for name, value, allowed in (("semantic_positives", semantic_positives, SEMANTIC_POSITIVES),
                                     ("prototype_views", prototype_views, PROTOTYPE_VIEWS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not isinstance(separate_batches, bool):
            raise TypeError(f"separate_batches must be True or False, got {separate_batches!r}")
        self.semantic_positives, self.separate_batches = semantic_positives, separate_batches
        self.prototype_views, self.sim_thresh = prototype_views, float(sim_thresh)
        self.positive_pairs: Optional[Tensor] = None  # SARL's positives of the current task (C x C), once fixed

        self.prototypes = ClassPrototypes(self.num_classes, self.num_feats).to(device)
        self.similarity_net = SemanticSimilarity(self.num_feats, sim_lr=sim_lr, target=sim_target).to(device)
        self.threshold = threshold if threshold is not None else AdaptiveThreshold(init=sim_thresh)
        self.buffer = BalancedBuffer(
            mem_size, grouping=grouping, similarity=similarity, similarity_net=self.similarity_net,
            threshold=self.threshold, prototypes=self.prototypes, class_to_group=class_to_group,
            balance_weight=balance_weight, device=device, seed=seed,
            **{"insertion": "reservoir", **(replay_options or {})})  # SARL's reservoir, unless asked otherwise
        self.replay = BalancedReplayPlugin(
            batch_size_mem=batch_size_mem, use_balanced_sampling=use_balanced_sampling,
            transform=transform, regroup_every=regroup_every, refresh_prototypes=False,
            storage_policy=self.buffer, insertion_timing="online",  # SARL's reservoir fills per step
            preprocess=eval_transform, refresh_features=refresh_features)
        self.old_model: Optional[nn.Module] = None
        self.loss_terms: Dict[str, Tensor] = {}
        self._epoch_terms: Dict[str, float] = {}
        self._epoch_iterations = 0

        own = [self.replay, BatchTransformPlugin(eval_transform=eval_transform), _SarlEpochEvents(self)]
        # The guard goes last: it sees the loss and the gradients every other plugin produced.
        late = [self.guard]
        if lr_steps:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(lr_steps), gamma=lr_gamma)
            own.append(LRSchedulerPlugin(scheduler, reset_scheduler=True, reset_lr=True))
        super().__init__(
            model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
            device=device, plugins=own + list(plugins or []) + late, evaluator=evaluator,
            eval_every=eval_every, **base_kwargs)

    # ------------------------------------------------------------------ state
    @property
    def online(self) -> bool:
        """Whether the latest training experience is a mini-experience of an online stream."""
        return self._is_online

    @property
    def task_id(self) -> int:
        """Index of the current task (SARL's ``current_task``): the training experience, or on an
        online stream the run of mini-experiences since the latest new classes."""
        return self._online_task if self.online else self.clock.train_exp_counter

    @property
    def past_warmup(self) -> bool:
        if self.online:  # epochs do not exist in a single pass: the warm-up counts iterations
            return self.task_id > 0 and self._task_iterations >= self.online_warmup_iterations
        return self.task_id > 0 and self.clock.train_exp_epochs > self.warmup_epochs

    def make_optimizer(self, **kwargs):
        # SARL resets the optimiser at every task (online: at the first mini-experience of a task).
        kwargs["reset_optimizer_state"] = not self.online or self._new_online_task
        super().make_optimizer(**kwargs)

    # ------------------------------------------------------------------- loss
    def criterion(self) -> Tensor:
        """The SARL-GELU loss of the current joint minibatch (current + replayed)."""
        if not self.is_training:
            return self._criterion(self.mb_output, self.mb_y)
        step, out, y = self.replay.step, self.mb_output, self.mb_y
        n, replay, feats = step.num_current, step.replay, step.features
        terms = {"ce": self._criterion(out[:n], y[:n])}
        if replay is not None:
            if self.alpha:
                terms["replay_mse"] = self.alpha * F.mse_loss(out[n:], replay.logits)
            terms["replay_ce"] = self._criterion(out[n:], y[n:])
            if self.task_id > 0 and self.op_weight:
                terms["prototype"] = self.op_weight * prototype_regularizer(feats[n:], y[n:], self.prototypes)
        if self.past_warmup:
            ramp = ramp_factor(self._past_warmup_iterations, self.ramp_iterations)
            if self.beta and self.old_model is not None:
                with torch.no_grad():
                    old_logits = self.old_model(self.mb_x[:n])
                terms["distill"] = ramp * self.beta * F.mse_loss(out[:n], old_logits)
            if self.sm_weight:
                terms["semantic"] = ramp * self.sm_weight * self._semantic_term(feats[:n], y[:n])
        self.loss_terms = {k: v.detach() for k, v in terms.items()}
        return sum(terms.values())

    def _semantic_term(self, features: Tensor, labels: Tensor) -> Tensor:
        if self.semantic_positives == "learned":
            return semantic_contrastive(features, labels, self.prototypes, self.similarity_net)
        if self.positive_pairs is None:  # not fixed yet (no new class of this task seen): no term
            return features.new_zeros(())
        return semantic_contrastive(features, labels, self.prototypes, pair_weights=self.positive_pairs,
                                    ratio="sarl")

    def forward(self):
        """The model's outputs for the joint minibatch. With ``separate_batches`` (SARL), the
        replayed and the current samples go through the model in two passes, replayed first as
        the authors' ``observe``, so that BatchNorm normalises each batch by its own statistics;
        the outputs and the recorded features keep the joint layout (current, then replayed)."""
        n = self.replay.num_current
        if not (self.is_training and self.separate_batches) or n is None or n == self.mb_x.shape[0]:
            return super().forward()
        x, t = self.mb_x, self.mb_task_id
        replayed = avalanche_forward(self.model, x[n:], t[n:])
        current = avalanche_forward(self.model, x[:n], t[:n])
        self.replay.reorder_features([1, 0])  # the hook saw replayed, then current
        return torch.cat([current, replayed])

    # ------------------------------------------------------------------ hooks
    def _before_training_exp(self, **kwargs):
        self._is_online = isinstance(self.experience, OnlineCLExperience)
        if self.online:
            self._begin_online_experience()
        else:
            self._past_warmup_iterations = 0
            self.positive_pairs = None  # a new task: its positives are fixed after its warm-up
        super()._before_training_exp(**kwargs)

    def _before_training_iteration(self, **kwargs):
        if self.semantic_positives == "threshold" and self.positive_pairs is None and self.past_warmup:
            self._fix_positives()
        super()._before_training_iteration(**kwargs)

    @torch.no_grad()
    def _fix_positives(self):
        """SARL's positives of this task, once, at the end of its warm-up: the new classes'
        prototypes from eval-mode features of the task's training images (online: of its stored
        samples), compared with every available prototype (:func:`threshold_positives`)."""
        feats, labels = self._task_features()
        if labels.numel() == 0:
            return
        means, counts = ClassPrototypes.class_means(feats, labels, self.num_classes)
        new = (counts > 0) & ~self.prototypes.valid
        self.positive_pairs = threshold_positives(means, self.prototypes, new, self.sim_thresh)

    def _task_features(self):
        """Eval-mode features and labels of the current task's images, in ``prototype_views``."""
        model = unwrap(self.model)
        if self.online:
            mine = self._task_classes[self.buffer.stored_labels]
            x, y = self.buffer.examples[: len(self.buffer)][mine], self.buffer.stored_labels[mine]
            batches = [(x[i: i + 256], y[i: i + 256]) for i in range(0, x.shape[0], 256)]
        else:
            loader = torch.utils.data.DataLoader(self.experience.dataset.eval(),
                                                 batch_size=self.eval_mb_size or 256, shuffle=False)
            batches = ((b[0].to(self.device), b[1].to(self.device)) for b in loader)
        feats, labels = [], []
        with eval_mode(model):
            for x, y in batches:
                feats.append(forward_with_features(model, self._prototype_input(x))[1].flatten(1))
                labels.append(y)
        if not feats:
            return torch.zeros(0, self.num_feats, device=self.device), torch.zeros(0, dtype=torch.long,
                                                                                  device=self.device)
        return torch.cat(feats), torch.cat(labels)

    def _prototype_input(self, x: Tensor) -> Tensor:
        """Model input of a prototype pass: augmented views (SARL's, from its training loader) or
        the clean evaluation view."""
        if self.prototype_views == "augmented" and self.transform is not None:
            return self.transform(x)
        return self.eval_transform(x) if self.eval_transform is not None else x

    def _begin_online_experience(self):
        """The online rule for SARL's task boundaries: a task begins with the first mini-experience
        that brings a class never trained before, and lasts until the next such one. SARL's
        end-of-task steps for the finished task (teacher copy, BatchNorm pass over the buffer,
        prototypes) run then, before the new task's first step; the finished task's prototypes
        come from its classes' stored samples, the only part of its data still at hand."""
        if self.lr_steps:
            raise ValueError("SARLGelu: lr_steps (a MultiStepLR re-created per task, in epochs) cannot follow an "
                             "online stream's mini-experiences; pass lr_steps=None for online training")
        classes = experience_classes(self.experience, self.device)
        width = max(int(classes.max()) + 1 if classes.numel() else 0, self.num_classes)
        current = torch.zeros(width, dtype=torch.bool, device=self.device)
        current[classes] = True
        seen = self._seen_classes if self._seen_classes is not None else torch.zeros_like(current)
        self._new_online_task = bool((current & ~seen).any())
        if self._new_online_task:
            if self._online_task >= 0:
                self._end_online_task()
            self._online_task += 1
            self._task_iterations = self._past_warmup_iterations = 0
            self.positive_pairs = None
            self._task_classes = torch.zeros_like(current)
        self._task_classes |= current
        self._seen_classes = seen | current

    def _end_online_task(self):
        self._update_teacher(frozen_copy(unwrap(self.model)))
        self._refresh_batchnorm_on_buffer()
        self._set_prototypes_of_experience()  # online: from the finished task's stored samples
        self.replay.request_regroup()

    def _before_training_epoch(self, **kwargs):
        self._epoch_terms, self._epoch_iterations = {}, 0
        super()._before_training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs):
        # The similarity network learns from this step's current and replayed features.
        # Under DDP the similarity network trains on every rank's samples (gathered in rank order),
        # so its identical replicas take identical steps: no gradient of its own to all-reduce.
        if self.semantic_positives == "learned" or self.buffer.similarity == "learned":
            sim_loss = self.similarity_net.train_step(*gather_rows(self.replay.step.features.detach(), self.mb_y),
                                                      self.prototypes)
            self.loss_terms["similarity"] = sim_loss
        for name, value in self.loss_terms.items():
            self._epoch_terms[name] = self._epoch_terms.get(name, 0.0) + value
        self._epoch_iterations += 1
        self._task_iterations += 1
        if self.past_warmup:
            self._past_warmup_iterations += 1
        super()._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs):
        if not self.online:  # online, the end-of-task steps run when the next task begins
            self._update_teacher(frozen_copy(unwrap(self.model)))  # the plain module, without the plugins' hooks
            self._refresh_batchnorm_on_buffer()
            self._set_prototypes_of_experience()
            self.replay.request_regroup()
        super()._after_training_exp(**kwargs)  # the replay plugin regroups with the new prototypes

    def _update_teacher(self, candidate: nn.Module) -> None:
        """Make ``candidate`` the distillation target unless it has collapsed (:func:`teacher_collapsed`)."""
        accuracy = self.buffer_accuracy(candidate) if self.teacher_ratio is not None else None
        if accuracy is None:  # check off, or an empty buffer: nothing to judge by
            self.old_model = candidate
            return
        previous = self.buffer_accuracy(self.old_model) if self.old_model is not None else None
        labels = self.buffer.stored_labels
        majority = float(torch.bincount(labels).max()) / labels.shape[0]
        if teacher_collapsed(accuracy, previous, majority, self.teacher_ratio):
            self.rejected_teachers.append(self.task_id)
            warnings.warn(
                f"SARL-GELU: the model after experience {self.task_id} has collapsed (accuracy "
                f"{100 * accuracy:.1f}% on the buffer vs {'n/a' if previous is None else f'{100 * previous:.1f}%'} "
                f"for the teacher in place, {100 * majority:.1f}% for the most frequent class); the previous "
                f"teacher stays the "
                f"distillation target", RuntimeWarning)
            if self.evaluator is not None:
                self.evaluator.publish_metric_value(
                    MetricValue(self, "SARL/teacher_rejected", 1.0, self.clock.train_iterations))
            return  # the teacher in place (none after a first experience) stays
        self.old_model = candidate
        self.teacher_accuracy = accuracy

    @torch.no_grad()
    def buffer_accuracy(self, model: nn.Module) -> Optional[float]:
        """Eval-mode accuracy of ``model`` on the stored samples (None for an empty buffer)."""
        n = len(self.buffer)
        if n == 0:
            return None
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        with eval_mode(model):
            for start in range(0, n, self.eval_mb_size or 256):
                x = self.buffer.examples[start: start + (self.eval_mb_size or 256)]
                logits = model(self.eval_transform(x) if self.eval_transform is not None else x)
                correct += (logits.argmax(1) == self.buffer.labels[start: start + x.shape[0]]).sum()
        return float(correct) / n

    @torch.no_grad()
    def _refresh_batchnorm_on_buffer(self):
        """One train-mode pass over the whole buffer without updates (BatchNorm statistics)."""
        if len(self.buffer) == 0:
            return
        model = unwrap(self.model)  # every rank passes over the same buffer: no collective needed
        model.train()
        transform = self.transform
        for start in range(0, len(self.buffer), self.train_mb_size):
            x = self.buffer.examples[start: start + self.train_mb_size]
            model(transform(x) if transform is not None else x)

    @torch.no_grad()
    def _set_prototypes_of_experience(self):
        """Prototypes of the finished experience's classes: eval-mode features of its training
        data, in ``prototype_views`` (SARL: augmented, as its training loader gives them)."""
        feats, labels = self._task_features()
        if labels.numel():
            self.prototypes.set_from_features(feats, labels)


SARLEnhancedGeluBalanced = SARLGelu
"""The design note's name for :class:`SARLGelu`."""
