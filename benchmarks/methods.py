"""The methods of the comparison, each a function building an Avalanche strategy.

Every method gets the same model, optimiser (SGD at its own validated
learning rate), epochs, batch (current + replayed), buffer size and batched
augmentation; only the replay and loss differ. Avalanche's baselines see the
augmentation through :class:`AugmentedModel` (their replay paths bypass
plugins); our plugin and SARL-GELU store raw inputs and augment current and
replayed samples together. Joint training gets the replay methods' sample
budget: the joint batch size (current + replayed) and as many optimiser steps.
"""
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

import torch
from avalanche.training import DER, ER_ACE, JointTraining, Naive
from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer, ReservoirSamplingBuffer

from avalanche_balanced import AdaptiveThreshold, BalancedReplayPlugin, SARLGelu
from avalanche_balanced.compiled import compile_model
from avalanche_balanced.data import cifar_augment, cifar_normalize
from avalanche_balanced.distributed import DataParallelPlugin
from avalanche_balanced.models import gelu_resnet18, sparse_resnet18
from avalanche_balanced.transforms import AugmentedModel


@dataclass
class Setting:
    """What every method of one comparison shares."""

    num_classes: int
    nf: int
    epochs: int
    lr: float
    mem_size: int
    batch_size: int
    batch_size_mem: int
    warmup_epochs: int
    sarl_alpha: float
    fine_to_coarse: torch.Tensor
    seed: int
    device: torch.device
    lr_steps: Optional[Sequence[int]] = None  # MultiStepLR milestones (epochs), reset every experience
    lr_gamma: float = 0.1
    guards: bool = True  # SARL-GELU's training guards at their defaults; False: as SARL (none)
    compile: bool = False  # torch.compile the network (avalanche_balanced.compiled)
    ramp_iterations: Optional[int] = None  # SARL-GELU's warm-up ramp; None: its default
    world_size: int = 1  # torch DDP processes; batch sizes stay global (each rank trains on 1 / world_size)


def _model(s: Setting, augmented: bool, sparse: bool = False):
    build = sparse_resnet18 if sparse else gelu_resnet18  # SARL's k-WTA network, or GELU's
    net = build(s.num_classes, nf=s.nf).to(s.device).to(memory_format=torch.channels_last)
    if s.compile:
        compile_model(net)
    return AugmentedModel(net, cifar_augment, cifar_normalize) if augmented else net


def _sgd(model, s):
    return torch.optim.SGD(model.parameters(), lr=s.lr)


def _scheduler(optimizer, s: Setting, scale: int = 1) -> List[LRSchedulerPlugin]:
    """SARL's step schedule for any strategy: MultiStepLR, reset with the rate every experience."""
    if not s.lr_steps:
        return []
    milestones = [scale * m for m in s.lr_steps]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=s.lr_gamma)
    return [LRSchedulerPlugin(scheduler, reset_scheduler=True, reset_lr=True)]


def _common(s, evaluator, optimizer, plugins=(), epoch_scale: int = 1):
    """Strategy arguments every method shares; ``epoch_scale`` stretches the epochs and the
    schedule's milestones alike (joint training). Under DDP (``s.world_size > 1``) each rank
    takes ``1 / world_size`` of the current batch and the model is wrapped for training."""
    parallel = [DataParallelPlugin(seed=s.seed)] if s.world_size > 1 else []
    return dict(optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=s.batch_size // s.world_size,
                train_epochs=s.epochs * epoch_scale, eval_mb_size=512, device=s.device, evaluator=evaluator,
                plugins=[*parallel, *plugins, *_scheduler(optimizer, s, epoch_scale)])


def joint_budget(s: Setting):
    """``(minibatch size, epochs)`` of joint training with the replay methods' sample budget.

    A replay method takes ``epochs`` passes over the stream in minibatches of
    ``batch_size`` current + ``batch_size_mem`` replayed samples. Joint training
    in minibatches of that joint size, for ``epochs * joint / batch_size``
    epochs, takes as many optimiser steps of as many samples each.
    """
    joint = s.batch_size + s.batch_size_mem
    if (s.epochs * joint) % s.batch_size:
        raise ValueError(f"epochs * (batch_size + batch_size_mem) must be a multiple of batch_size "
                         f"for an equal joint budget, got {s.epochs} * {joint} / {s.batch_size}")
    return joint, s.epochs * joint // s.batch_size


def naive(s, evaluator):
    model = _model(s, augmented=True)
    return Naive(model=model, **_common(s, evaluator, _sgd(model, s)))


def joint(s, evaluator):
    model = _model(s, augmented=True)
    mb_size, epochs = joint_budget(s)
    kwargs = _common(s, evaluator, _sgd(model, s), epoch_scale=epochs // s.epochs)
    kwargs.update(train_mb_size=mb_size)
    return JointTraining(model=model, **kwargs)


def er(s, evaluator):
    model = _model(s, augmented=True)
    replay = ReplayPlugin(mem_size=s.mem_size, batch_size=s.batch_size, batch_size_mem=s.batch_size_mem,
                          storage_policy=ReservoirSamplingBuffer(s.mem_size))
    return Naive(model=model, **_common(s, evaluator, _sgd(model, s), [replay]))


def er_class_balanced(s, evaluator):
    """ER with Avalanche's ``ClassBalancedBuffer``: the balancing a user would try first."""
    model = _model(s, augmented=True)
    replay = ReplayPlugin(mem_size=s.mem_size, batch_size=s.batch_size, batch_size_mem=s.batch_size_mem,
                          storage_policy=ClassBalancedBuffer(s.mem_size, adaptive_size=True))
    return Naive(model=model, **_common(s, evaluator, _sgd(model, s), [replay]))


def der(s, evaluator):
    model = _model(s, augmented=True)
    return DER(model=model, mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
               alpha=0.1, beta=0.5, **_common(s, evaluator, _sgd(model, s)))


def er_ace(s, evaluator):
    model = _model(s, augmented=True)
    return ER_ACE(model=model, mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                  **_common(s, evaluator, _sgd(model, s)))


def er_ace_reservoir(s, evaluator):
    """ER-ACE's loss on ER's storage: Avalanche's ER_ACE with its ClassBalancedBuffer replaced by a
    ReservoirSamplingBuffer (still filled before training on each experience, as ER_ACE does)."""
    strategy = er_ace(s, evaluator)
    strategy.storage_policy = ReservoirSamplingBuffer(s.mem_size)
    return strategy


# The sampler before issue 11, as configuration: every fix off. SARL-GELU's learned
# similarity (binary targets) drove importance and grouping, features were overwritten
# by replayed samples' train-mode ones, the threshold moved halfway from 0.8.
LEGACY_BUFFER = dict(eps=1e-6, max_ratio=None, protect_current=False, centered=False, min_group_classes=1)
LEGACY_SARL = dict(similarity="learned", sim_target="binary", refresh_features=False)
# Each fix of issue 11 on its own, as the options it turns back on.
FIXES = {
    "share": dict(replay_options=dict(protect_current=True)),
    "groups": dict(similarity="cosine", sim_target="graded", threshold_first_update="target",
                   replay_options=dict(centered=True, min_group_classes=2)),
    "bounded": dict(replay_options=dict(eps=0.1, max_ratio=4.0)),
    "fresh": dict(refresh_features=True),
}


def _legacy_sarl(fix: Optional[str] = None):
    options = dict(LEGACY_SARL, threshold_first_update="average", replay_options=dict(LEGACY_BUFFER))
    for key, value in FIXES.get(fix, {}).items():
        if key == "replay_options":
            options["replay_options"] = {**options["replay_options"], **value}
        else:
            options[key] = value
    return _sarl(True, **options)


def _plugin(balanced: bool, timing: str = "after_experience", **options):
    def build(s, evaluator):
        model = _model(s, augmented=True)
        # A row names what it stores and how it replays: reservoir, independent batches unless said.
        kwargs = dict(dict(insertion="reservoir", replay_order="independent"), **options)
        if kwargs.get("grouping") == "fixed":  # the oracle: the true superclasses as groups
            kwargs["class_to_group"] = s.fine_to_coarse
        # group_metrics: the comparison records the groups of every row; regrouping changes nothing
        # that uniform draws from class or reservoir storage use (tests/test_plugin.py).
        replay = BalancedReplayPlugin(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                                      use_balanced_sampling=balanced, seed=s.seed, insertion_timing=timing,
                                      group_metrics=True, **kwargs)
        return Naive(model=model, **_common(s, evaluator, _sgd(model, s), [replay]))
    build.distributed = True  # BalancedReplayPlugin draws one global batch and keeps this rank's slice
    return build


# SARL as its authors wrote it (docs/design.md, "SARL and SARL-GELU"): fixed positives above the
# prototype threshold, current and replayed batches through the model apart, prototypes from
# augmented images, and none of this library's guards.
SARL_AUTHORS = dict(semantic_positives="threshold", separate_batches=True, prototype_views="augmented",
                    clip_grad_norm=None, teacher_ratio=None, ramp_iterations=0)


def _sarl(balanced: bool = True, sparse: bool = False, **overrides):
    def build(s, evaluator):
        model = _model(s, augmented=False, sparse=sparse)
        kwargs = dict(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem, alpha=s.sarl_alpha,
                      warmup_epochs=s.warmup_epochs, use_balanced_sampling=balanced,
                      transform=cifar_augment, eval_transform=cifar_normalize, seed=s.seed)
        options = dict(overrides)
        if options.get("grouping") == "fixed":
            options["class_to_group"] = s.fine_to_coarse
        first_update = options.pop("threshold_first_update", None)
        if first_update is not None:
            options["threshold"] = AdaptiveThreshold(0.8, first_update=first_update)
        if not s.guards:  # the finite-loss check stays: it only ever stops a run that is already lost
            kwargs.update(clip_grad_norm=None, ramp_iterations=0, teacher_ratio=None)
        if options.get("semantic_positives") == "threshold":  # the authors' method runs without guards
            kwargs.update(ramp_iterations=0)
        if s.ramp_iterations is not None:
            kwargs.update(ramp_iterations=s.ramp_iterations)
        kwargs.update(options)
        # SARLGelu builds its own schedule from lr_steps (re-created every experience).
        kwargs.update(_common(replace(s, lr_steps=None), evaluator, _sgd(model, s)),
                      lr_steps=s.lr_steps, lr_gamma=s.lr_gamma)
        return SARLGelu(model=model, **kwargs)
    build.distributed = True
    return build


@dataclass(frozen=True)
class Method:
    """One entry of the registry: how to build the strategy, and the traits the harness reads."""

    build: Callable  # (Setting, evaluator) -> an Avalanche strategy
    description: str
    lr_from: Optional[str] = None  # train at this method's validated rate (a pair differs in the sampler only)
    joint: bool = False  # trains on the whole stream at once (no per-experience evaluations)

    @property
    def distributed(self) -> bool:
        """Runs under torch DDP with one buffer on every rank (our plugin and SARL-GELU; Avalanche's
        replay loaders give each rank its own replay batch, so its rows are single-process only)."""
        return getattr(self.build, "distributed", False)


CORE_NAMES = ("naive", "er", "der", "er_ace", "plugin_uniform", "plugin_balanced", "sarl_uniform",
              "sarl_balanced", "joint")
_PLUGIN, _SARL = "plugin_uniform", "sarl_uniform"


def _storage_rows(unit: str) -> dict:
    """``plugin_<unit>_storage_uniform`` and ``..._balanced``: the plugin with ``<unit>``-balanced
    storage (``insertion="<unit>_balanced"``) under uniform or semantic-balanced draws."""
    return {f"plugin_{unit}_storage_{mode}": Method(
        _plugin(balanced, insertion=f"{unit}_balanced"),
        f"Naive + BalancedReplayPlugin, {unit}-balanced storage, {'semantic-balanced' if balanced else 'uniform'} "
        "draws", lr_from=_PLUGIN) for mode, balanced in (("uniform", False), ("balanced", True))}


METHODS: Dict[str, Method] = {
    "naive": Method(naive, "Avalanche Naive (fine-tuning, lower bound)"),
    "er": Method(er, "Avalanche Naive + ReplayPlugin; stores a reservoir buffer (ReservoirSamplingBuffer), "
                       "updated after each experience (ER)"),
    "der": Method(der, "Avalanche DER (alpha 0.1, beta 0.5); stores a class-balanced buffer with logits "
                         "(ClassBalancedBufferWithLogits), updated after each experience"),
    "er_ace": Method(er_ace, "Avalanche ER-ACE; stores a class-balanced buffer (ClassBalancedBuffer) filled "
                               "*before* training on each experience"),
    "plugin_uniform": Method(_plugin(False), "Naive + BalancedReplayPlugin, uniform draws, buffer filled after "
                                             "each experience (ReplayPlugin's timing)"),
    "plugin_balanced": Method(_plugin(True), "Naive + BalancedReplayPlugin, balanced draws, buffer filled after "
                                             "each experience", lr_from=_PLUGIN),
    "sarl_uniform": Method(_sarl(False), "SARL-GELU, uniform replay (reservoir filled every step, as SARL); "
                           "alias of sarl_gelu"),
    "sarl_balanced": Method(_sarl(True), "SARL-GELU, balanced replay (reservoir filled every step, as SARL); "
                            "alias of sarl_gelu_balanced", lr_from=_SARL),
    # SARL as its authors wrote it, the design note's variant with uniform and with balanced draws,
    # and the two ablations that tell the variant's parts apart.
    "sarl": Method(_sarl(False, sparse=True, **SARL_AUTHORS), "SARL (the authors' method): sparse ReLU ResNet-18 "
                   "with k-WTA 0.9, positives fixed per task above sim_thresh, separate current and replayed "
                   "batches, prototypes from augmented images, reservoir, uniform draws, no guards"),
    "sarl_gelu": Method(_sarl(False), "SARL-GELU (the design note's variant): GELU ResNet-18, learned similarity "
                        "weights, adaptive threshold, guards, reservoir, uniform draws"),
    "sarl_gelu_balanced": Method(_sarl(True), "SARL-GELU with balanced instance sampling (semantic draws)",
                                 lr_from="sarl_gelu"),
    "sarl_with_gelu": Method(_sarl(False, **SARL_AUTHORS), "ablation: SARL with GELU activations in place of "
                             "k-WTA, all else the authors' (trains at sarl's validated rate)", lr_from="sarl"),
    "sarl_with_learned_similarity": Method(_sarl(False, sparse=True, **dict(SARL_AUTHORS, semantic_positives=
                                           "learned")), "ablation: SARL with the variant's learned similarity "
                                           "weights (bounded ratio) in place of fixed positives, all else the "
                                           "authors' (trains at sarl's validated rate)", lr_from="sarl"),
    "joint": Method(joint, "Avalanche JointTraining with the replay methods' sample budget (minibatch of "
                           "current + replayed size, as many steps)", joint=True),
    # Ablations and the long-tailed scenario's class-balancing baselines.
    "sarl_legacy": Method(_legacy_sarl(), "SARL-GELU balanced as before issue 11 (every fix off)", lr_from=_SARL),
    "sarl_legacy_share": Method(_legacy_sarl("share"), "legacy + the current experience keeps its uniform share "
                                                       "of replay", lr_from=_SARL),
    "sarl_legacy_groups": Method(_legacy_sarl("groups"), "legacy + groups from centred prototype cosines (graded "
                                 "similarity targets, threshold lands at its quantile, no lone-class groups)",
                                 lr_from=_SARL),
    "sarl_legacy_bounded": Method(_legacy_sarl("bounded"), "legacy + bounded importance (eps 0.1, cap 4x uniform)",
                                  lr_from=_SARL),
    "sarl_legacy_fresh": Method(_legacy_sarl("fresh"), "legacy + all stored features recomputed in eval mode at "
                                                       "every regrouping", lr_from=_SARL),
    "sarl_auto_weight": Method(_sarl(True, balance_weight="auto"), "SARL-GELU balanced, balance weight chosen for "
                                                                   "effective sample size >= 0.7", lr_from=_SARL),
    "sarl_hierarchical": Method(_sarl(True, replay_options=dict(hierarchical=True)),
                                "SARL-GELU balanced, two-level balance (group, then class)", lr_from=_SARL),
    "sarl_difficulty": Method(_sarl(True, replay_options=dict(difficulty_weight=1.0)),
                              "SARL-GELU balanced, importance x (last replay loss / mean)", lr_from=_SARL),
    "plugin_legacy": Method(_plugin(True, refresh_features=False, **LEGACY_BUFFER),
                            "Naive + BalancedReplayPlugin balanced as before issue 11 (every fix off)",
                            lr_from=_PLUGIN),
    "er_class_balanced": Method(er_class_balanced, "Avalanche Naive + ReplayPlugin with ClassBalancedBuffer "
                                                   "(class-balanced ER)", lr_from="er"),
    "plugin_class_balanced": Method(_plugin(True, grouping="class"), "Naive + BalancedReplayPlugin, balanced "
                                    "draws with one group per class", lr_from=_PLUGIN),
    # Class-balanced storage (what ClassBalancedBuffer changes) under uniform or semantic draws.
    **_storage_rows("class"),
    # Issue 20: the oracle groups, exact per-group shares, group-balanced storage, ER-ACE on a reservoir.
    "plugin_superclass_groups": Method(_plugin(True, grouping="fixed"), "Naive + BalancedReplayPlugin, balanced "
                                       "draws over the true superclasses (oracle groups), reservoir storage",
                                       lr_from=_PLUGIN),
    "plugin_class_storage_superclass_groups": Method(
        _plugin(True, grouping="fixed", insertion="class_balanced"), "Naive + BalancedReplayPlugin, balanced draws "
        "over the true superclasses (oracle groups), class-balanced storage", lr_from=_PLUGIN),
    "plugin_superclass_storage_uniform": Method(
        _plugin(False, grouping="fixed", insertion="group_balanced"), "Naive + BalancedReplayPlugin, equal slots "
        "per true superclass (oracle group-balanced storage), uniform draws", lr_from=_PLUGIN),
    "plugin_class_share": Method(_plugin(True, grouping="class", share="group"), "Naive + BalancedReplayPlugin, "
                                 "exactly class-balanced draws (share='group', one group per class), reservoir "
                                 "storage", lr_from=_PLUGIN),
    "plugin_group_share": Method(_plugin(True, share="group"), "Naive + BalancedReplayPlugin, exactly "
                                 "group-balanced draws (share='group'), reservoir storage", lr_from=_PLUGIN),
    **_storage_rows("group"),
    "plugin_class_storage_passes": Method(_plugin(False, insertion="class_balanced", replay_order="passes"),
                                          "Naive + BalancedReplayPlugin, class-balanced storage, uniform draws in "
                                          "reshuffled passes over the buffer (as Avalanche's ReplayDataLoader)",
                                          lr_from=_PLUGIN),
    "er_ace_reservoir": Method(er_ace_reservoir, "Avalanche ER-ACE with a reservoir buffer "
                               "(ReservoirSamplingBuffer) filled before training on each experience: ER-ACE's "
                               "loss on ER's storage", lr_from="er_ace"),
    "sarl_similarity_only": Method(_sarl(True, balance_weight=0.0), "SARL-GELU balanced, balance_weight=0 "
                                   "(similarity term only)", lr_from=_SARL),
    "sarl_balance_only": Method(_sarl(True, similarity="none"), "SARL-GELU balanced, similarity=none (balance "
                                "factor only)", lr_from=_SARL),
    "sarl_class_groups": Method(_sarl(True, grouping="class"), "SARL-GELU balanced, grouping=class", lr_from=_SARL),
    "sarl_superclass_groups": Method(_sarl(True, grouping="fixed"), "SARL-GELU balanced, grouping=fixed (true "
                                     "superclasses)", lr_from=_SARL),
}
"""Every method of the comparison, in table order."""
CORE = {name: METHODS[name] for name in CORE_NAMES}
LR_FROM = {name: m.lr_from for name, m in METHODS.items() if m.lr_from is not None}
DESCRIPTIONS = {name: m.description for name, m in METHODS.items()}
