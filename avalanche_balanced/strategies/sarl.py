"""SARL-GELU: semantic-aware representation learning (Sarfraz, Arani, Zonooz, ICLR 2025)
with GELU activations and Balanced Instance Sampling, as an Avalanche strategy.

The strategy owns the loss; the replay wiring (draw, join, features, insertion)
is a :class:`BalancedReplayPlugin` over a :class:`BalancedBuffer` whose
prototypes and similarity network are the strategy's own.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.training.plugins import LRSchedulerPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.utils import get_last_fc_layer

from ..buffer import BalancedBuffer
from ..features import eval_mode, forward_with_features, frozen_copy
from ..plugin import BalancedReplayPlugin
from ..semantic import AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from ..transforms import BatchTransformPlugin
from ..validation import check_replay_sizes

__all__ = ["SARLGelu", "SARLEnhancedGeluBalanced", "prototype_regularizer", "semantic_contrastive"]


def prototype_regularizer(features: Tensor, labels: Tensor, prototypes: ClassPrototypes) -> Tensor:
    """SARL's stability term: for each class with a (frozen) prototype present in the
    batch, the MSE between the mean normalised feature of its samples and the prototype, summed."""
    has_proto = prototypes.valid[labels]
    means, counts = ClassPrototypes.class_means(features[has_proto], labels[has_proto],
                                                prototypes.num_classes)
    present = counts > 0
    return F.mse_loss(means[present], prototypes.prototypes[present], reduction="none").mean(1).sum()


def semantic_contrastive(features: Tensor, labels: Tensor, prototypes: ClassPrototypes,
                         similarity: SemanticSimilarity, eps: float = 1e-8) -> Tensor:
    """The GELU variant's semantic contrastive term, summed over the new classes in the batch.

    New classes (no frozen prototype yet) take the batch mean of their
    normalised features; old classes their frozen prototype. For each new class
    ``c`` and every other class ``k``: ``d = MSE(p_c, p_k)`` and
    ``w = similarity(p_c, p_k)`` (detached), and the term is
    ``sum_k(w * d) / sum_k((1 - w) * d)``: pull toward similar classes, push away
    from the rest. Gradients reach the new classes' batch prototypes only.
    """
    means, counts = ClassPrototypes.class_means(features, labels, prototypes.num_classes)
    new = (counts > 0) & ~prototypes.valid
    available = new | prototypes.valid
    if int(new.sum()) == 0 or int(available.sum()) < 2:
        return features.new_zeros(())
    protos = torch.where(prototypes.valid.unsqueeze(1), prototypes.prototypes.to(means.dtype), means)
    p_new, p_all = protos[new], protos[available]
    d = (p_new.unsqueeze(1) - p_all.unsqueeze(0)).pow(2).mean(-1)  # (new, available)
    with torch.no_grad():
        m, a = p_new.shape[0], p_all.shape[0]
        w = similarity(p_new.unsqueeze(1).expand(m, a, -1), p_all.unsqueeze(0).expand(m, a, -1))
    not_self = torch.nonzero(new).squeeze(1).unsqueeze(1) != torch.nonzero(available).squeeze(1).unsqueeze(0)
    pos = (w * d * not_self).sum(1)
    neg = ((1 - w) * d * not_self).sum(1)
    return (pos / neg.clamp_min(eps)).sum()


class _SarlEpochEvents(SupervisedPlugin):
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
      (``sm_weight``), :func:`semantic_contrastive` weighted by the learned
      :class:`SemanticSimilarity`.

    Every iteration the similarity network takes one Adam step (``sim_lr``) on
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
        use_balanced_sampling: bool = True,
        balance_weight: float = 1.0,
        grouping: str = "class_similarity",
        similarity: str = "cosine",
        sim_target: str = "graded",
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
                                warmup_epochs=warmup_epochs).items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        check_replay_sizes(mem_size, batch_size_mem)
        device = torch.device(device)
        head = get_last_fc_layer(model)[1]
        self.num_classes, self.num_feats = head.out_features, head.in_features
        self.alpha, self.beta, self.op_weight, self.sm_weight = alpha, beta, op_weight, sm_weight
        self.warmup_epochs = warmup_epochs
        self.transform, self.eval_transform = transform, eval_transform

        self.prototypes = ClassPrototypes(self.num_classes, self.num_feats).to(device)
        self.similarity_net = SemanticSimilarity(self.num_feats, sim_lr=sim_lr, target=sim_target).to(device)
        self.threshold = threshold if threshold is not None else AdaptiveThreshold(init=sim_thresh)
        self.buffer = BalancedBuffer(
            mem_size, grouping=grouping, similarity=similarity, similarity_net=self.similarity_net,
            threshold=self.threshold, prototypes=self.prototypes, class_to_group=class_to_group,
            balance_weight=balance_weight, device=device, seed=seed, **(replay_options or {}))
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
        if lr_steps:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(lr_steps), gamma=lr_gamma)
            own.append(LRSchedulerPlugin(scheduler, reset_scheduler=True, reset_lr=True))
        super().__init__(
            model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
            device=device, plugins=own + list(plugins or []), evaluator=evaluator,
            eval_every=eval_every, **base_kwargs)

    # ------------------------------------------------------------------ state
    @property
    def task_id(self) -> int:
        """Index of the current training experience (SARL's ``current_task``)."""
        return self.clock.train_exp_counter

    @property
    def past_warmup(self) -> bool:
        return self.task_id > 0 and self.clock.train_exp_epochs > self.warmup_epochs

    def make_optimizer(self, **kwargs):
        # SARL resets the optimiser at every task.
        kwargs["reset_optimizer_state"] = True
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
            if self.beta and self.old_model is not None:
                with torch.no_grad():
                    old_logits = self.old_model(self.mb_x[:n])
                terms["distill"] = self.beta * F.mse_loss(out[:n], old_logits)
            if self.sm_weight:
                terms["semantic"] = self.sm_weight * semantic_contrastive(
                    feats[:n], y[:n], self.prototypes, self.similarity_net)
        self.loss_terms = {k: v.detach() for k, v in terms.items()}
        return sum(terms.values())

    # ------------------------------------------------------------------ hooks
    def _before_training_epoch(self, **kwargs):
        self._epoch_terms, self._epoch_iterations = {}, 0
        super()._before_training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs):
        # The similarity network learns from this step's current and replayed features.
        sim_loss = self.similarity_net.train_step(self.replay.step.features.detach(), self.mb_y, self.prototypes)
        self.loss_terms["similarity"] = sim_loss
        for name, value in self.loss_terms.items():
            self._epoch_terms[name] = self._epoch_terms.get(name, 0.0) + value
        self._epoch_iterations += 1
        super()._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs):
        self.old_model = frozen_copy(self.model)  # carries none of the plugins' hooks
        self._refresh_batchnorm_on_buffer()
        self._set_prototypes_of_experience()
        super()._after_training_exp(**kwargs)  # the replay plugin regroups with the new prototypes

    @torch.no_grad()
    def _refresh_batchnorm_on_buffer(self):
        """One train-mode pass over the whole buffer without updates (BatchNorm statistics)."""
        if len(self.buffer) == 0:
            return
        self.model.train()
        transform = self.transform
        for start in range(0, len(self.buffer), self.train_mb_size):
            x = self.buffer.examples[start: start + self.train_mb_size]
            self.model(transform(x) if transform is not None else x)

    @torch.no_grad()
    def _set_prototypes_of_experience(self):
        """Prototypes of the finished experience's classes: eval-mode features of its training data."""
        loader = torch.utils.data.DataLoader(self.experience.dataset.eval(), batch_size=self.eval_mb_size or 256,
                                             shuffle=False)
        feats, labels = [], []
        with eval_mode(self.model):
            for batch in loader:
                x = batch[0].to(self.device)
                if self.eval_transform is not None:
                    x = self.eval_transform(x)
                feats.append(forward_with_features(self.model, x)[1].flatten(1))
                labels.append(batch[1].to(self.device))
        self.prototypes.set_from_features(torch.cat(feats), torch.cat(labels))


SARLEnhancedGeluBalanced = SARLGelu
"""The design note's name for :class:`SARLGelu`."""
