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
from avalanche.training.storage_policy import ReservoirSamplingBuffer

from avalanche_balanced import BalancedReplayPlugin, SARLGelu
from avalanche_balanced.data import cifar_augment, cifar_normalize
from avalanche_balanced.models import gelu_resnet18
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


def _model(s: Setting, augmented: bool):
    net = gelu_resnet18(s.num_classes, nf=s.nf).to(s.device).to(memory_format=torch.channels_last)
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
    schedule's milestones alike (joint training)."""
    return dict(optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=s.batch_size,
                train_epochs=s.epochs * epoch_scale, eval_mb_size=512, device=s.device, evaluator=evaluator,
                plugins=[*plugins, *_scheduler(optimizer, s, epoch_scale)])


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


def der(s, evaluator):
    model = _model(s, augmented=True)
    return DER(model=model, mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
               alpha=0.1, beta=0.5, **_common(s, evaluator, _sgd(model, s)))


def er_ace(s, evaluator):
    model = _model(s, augmented=True)
    return ER_ACE(model=model, mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                  **_common(s, evaluator, _sgd(model, s)))


def _plugin(balanced: bool, timing: str = "after_experience"):
    def build(s, evaluator):
        model = _model(s, augmented=True)
        replay = BalancedReplayPlugin(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                                      use_balanced_sampling=balanced, seed=s.seed, insertion_timing=timing)
        return Naive(model=model, **_common(s, evaluator, _sgd(model, s), [replay]))
    return build


def _sarl(balanced: bool = True, **overrides):
    def build(s, evaluator):
        model = _model(s, augmented=False)
        kwargs = dict(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem, alpha=s.sarl_alpha,
                      warmup_epochs=s.warmup_epochs, use_balanced_sampling=balanced,
                      transform=cifar_augment, eval_transform=cifar_normalize, seed=s.seed)
        if overrides.get("grouping") == "fixed":
            overrides["class_to_group"] = s.fine_to_coarse
        kwargs.update(overrides)
        # SARLGelu builds its own schedule from lr_steps (re-created every experience).
        kwargs.update(_common(replace(s, lr_steps=None), evaluator, _sgd(model, s)),
                      lr_steps=s.lr_steps, lr_gamma=s.lr_gamma)
        return SARLGelu(model=model, **kwargs)
    return build


CORE: Dict[str, Callable] = {
    "naive": naive,
    "er": er,
    "der": der,
    "er_ace": er_ace,
    "plugin_uniform": _plugin(False),
    "plugin_balanced": _plugin(True),
    "sarl_uniform": _sarl(False),
    "sarl_balanced": _sarl(True),
    "joint": joint,
}
ABLATIONS: Dict[str, Callable] = {
    "sarl_similarity_only": _sarl(True, balance_weight=0.0),
    "sarl_balance_only": _sarl(True, similarity="none"),
    "sarl_class_groups": _sarl(True, grouping="class"),
    "sarl_superclass_groups": _sarl(True, grouping="fixed"),
}
METHODS = {**CORE, **ABLATIONS}
DESCRIPTIONS = {
    "naive": "Avalanche Naive (fine-tuning, lower bound)",
    "er": "Avalanche Naive + ReplayPlugin, reservoir buffer updated after each experience (ER)",
    "der": "Avalanche DER (alpha 0.1, beta 0.5)",
    "er_ace": "Avalanche ER-ACE",
    "plugin_uniform": "Naive + BalancedReplayPlugin, uniform draws, buffer filled after each experience "
                      "(ReplayPlugin's timing)",
    "plugin_balanced": "Naive + BalancedReplayPlugin, balanced draws, buffer filled after each experience",
    "sarl_uniform": "SARL-GELU, uniform replay (reservoir filled every step, as SARL)",
    "sarl_balanced": "SARL-GELU, balanced replay (reservoir filled every step, as SARL)",
    "joint": "Avalanche JointTraining with the replay methods' sample budget (minibatch of current + "
             "replayed size, as many steps)",
    "sarl_similarity_only": "SARL-GELU balanced, balance_weight=0 (similarity term only)",
    "sarl_balance_only": "SARL-GELU balanced, similarity=none (balance factor only)",
    "sarl_class_groups": "SARL-GELU balanced, grouping=class",
    "sarl_superclass_groups": "SARL-GELU balanced, grouping=fixed (true superclasses)",
}
