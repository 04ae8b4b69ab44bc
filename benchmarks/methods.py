"""The methods of the comparison, each a function building an Avalanche strategy.

Every method gets the same model, optimiser, epochs, batch (32 current + 32
replayed), buffer size and batched augmentation; only the replay and loss
differ. Avalanche's baselines see the augmentation through
:class:`AugmentedModel` (their replay paths bypass plugins); our plugin and
SARL-GELU store raw inputs and augment current and replayed samples together.
"""
from dataclasses import dataclass
from typing import Callable, Dict

import torch
from avalanche.training import DER, ER_ACE, JointTraining, Naive
from avalanche.training.plugins import ReplayPlugin
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


def _model(s: Setting, augmented: bool):
    net = gelu_resnet18(s.num_classes, nf=s.nf).to(s.device).to(memory_format=torch.channels_last)
    return AugmentedModel(net, cifar_augment, cifar_normalize) if augmented else net


def _sgd(model, s):
    return torch.optim.SGD(model.parameters(), lr=s.lr)


def _common(s, evaluator):
    return dict(criterion=torch.nn.CrossEntropyLoss(), train_mb_size=s.batch_size, train_epochs=s.epochs,
                eval_mb_size=512, device=s.device, evaluator=evaluator)


def naive(s, evaluator):
    model = _model(s, augmented=True)
    return Naive(model=model, optimizer=_sgd(model, s), **_common(s, evaluator))


def joint(s, evaluator):
    model = _model(s, augmented=True)
    return JointTraining(model=model, optimizer=_sgd(model, s), **_common(s, evaluator))


def er(s, evaluator):
    model = _model(s, augmented=True)
    replay = ReplayPlugin(mem_size=s.mem_size, batch_size=s.batch_size, batch_size_mem=s.batch_size_mem,
                          storage_policy=ReservoirSamplingBuffer(s.mem_size))
    return Naive(model=model, optimizer=_sgd(model, s), plugins=[replay], **_common(s, evaluator))


def der(s, evaluator):
    model = _model(s, augmented=True)
    return DER(model=model, optimizer=_sgd(model, s), mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
               alpha=0.1, beta=0.5, **_common(s, evaluator))


def er_ace(s, evaluator):
    model = _model(s, augmented=True)
    return ER_ACE(model=model, optimizer=_sgd(model, s), mem_size=s.mem_size,
                  batch_size_mem=s.batch_size_mem, **_common(s, evaluator))


def _plugin(balanced: bool):
    def build(s, evaluator):
        model = _model(s, augmented=True)
        replay = BalancedReplayPlugin(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                                      use_balanced_sampling=balanced, seed=s.seed)
        return Naive(model=model, optimizer=_sgd(model, s), plugins=[replay], **_common(s, evaluator))
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
        kwargs.update(_common(s, evaluator))
        return SARLGelu(model=model, optimizer=_sgd(model, s), **kwargs)
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
    "plugin_uniform": "Naive + BalancedReplayPlugin, uniform draws (reservoir filled during training)",
    "plugin_balanced": "Naive + BalancedReplayPlugin, balanced draws (reservoir filled during training)",
    "sarl_uniform": "SARL-GELU, uniform replay",
    "sarl_balanced": "SARL-GELU, balanced replay",
    "joint": "Avalanche JointTraining (upper bound)",
    "sarl_similarity_only": "SARL-GELU balanced, balance_weight=0 (similarity term only)",
    "sarl_balance_only": "SARL-GELU balanced, similarity=none (balance factor only)",
    "sarl_class_groups": "SARL-GELU balanced, grouping=class",
    "sarl_superclass_groups": "SARL-GELU balanced, grouping=fixed (true superclasses)",
}
