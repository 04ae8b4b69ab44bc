"""avalanche-balanced: Balanced Instance Sampling replay and SARL-GELU for Avalanche.

The public API:

* importance maths (``importance``): :func:`balanced_importance`, :func:`replay_distribution`,
  :func:`group_share_weights`, :func:`cosine_to_unit`, :func:`effective_sample_size`;
  draws from weights (``draws``): :func:`sample_indices`;
* semantic components: :class:`ClassPrototypes`, :class:`SemanticSimilarity`, :class:`AdaptiveThreshold`;
* storage: :class:`BalancedBuffer` (an Avalanche ``ExemplarsBuffer``), composed of
  :class:`BufferStorage` (what is kept), :class:`SemanticGroups` (prototypes, similarity and
  grouping rules: :class:`SimilarityRule`, ``SIMILARITIES``, :class:`GroupingRule`, ``GROUPINGS``)
  and :class:`ReplaySampler` (how it is drawn);
* wiring: :class:`BalancedReplayPlugin` (an Avalanche ``SupervisedPlugin``; its
  :class:`RegroupSchedule` and :class:`ReplayDiagnostics`),
  :class:`BatchTransformPlugin` (batched augmentation on the device) and
  :class:`MixedPrecisionPlugin` (bfloat16 autocast for any strategy);
* training guards for any strategy: :class:`TrainingGuardPlugin` (fail fast with
  :class:`NonFiniteLossError`, gradient-norm clipping, divergence monitor);
* the method: :class:`SARLGelu` (alias :data:`SARLEnhancedGeluBalanced`);
* data and model: :func:`split_cifar100`, :func:`with_test_subset`, :func:`load_cifar100`,
  :func:`cifar_augment`, :func:`cifar_normalize`, :func:`gelu_resnet18`;
* evaluation: :func:`semantic_metrics` and the metrics of :mod:`avalanche_balanced.metrics`;
  long-tailed streams: :func:`long_tail_counts`, :class:`FrequencyBucketAccuracy`;
  superclass-skewed streams (``split_cifar100(superclass_skew=k)``): :class:`SuperclassSkewAccuracy`;
* runs: :func:`seed_everything` (seed a run after building its benchmark).
"""
from .importance import (
    balanced_importance, cosine_to_unit, effective_sample_size, group_share_weights, normalized_entropy,
    replay_distribution,
)
from .draws import sample_indices
from .semantic import AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from .similarity_rules import SIMILARITIES, SimilarityRule
from .grouping_rules import GROUPINGS, GroupingRule
from .storage import BufferStorage
from .semantic_groups import SemanticGroups
from .replay_sampler import ReplaySampler
from .buffer import BalancedBuffer, ReplayBatch
from .regrouping import RegroupSchedule
from .replay_diagnostics import ReplayDiagnostics
from .plugin import BalancedReplayPlugin, ReplayStep
from .transforms import BatchTransformPlugin, cifar_augment, cifar_normalize
from .precision import MixedPrecisionPlugin
from .guards import NonFiniteLossError, TrainingGuardPlugin
from .strategies import SARLEnhancedGeluBalanced, SARLGelu
from .data import load_cifar100, split_cifar100, with_test_subset
from .models import gelu_resnet18
from .metrics import semantic_metrics
from .long_tail import FrequencyBucketAccuracy, long_tail_counts
from .superclass_skew import SuperclassSkewAccuracy
from .experiment import seed_everything

__version__ = "0.1.0"

__all__ = [
    "balanced_importance",
    "sample_indices",
    "cosine_to_unit",
    "normalized_entropy",
    "replay_distribution",
    "group_share_weights",
    "effective_sample_size",
    "GROUPINGS",
    "GroupingRule",
    "SIMILARITIES",
    "SimilarityRule",
    "ClassPrototypes",
    "SemanticSimilarity",
    "AdaptiveThreshold",
    "BalancedBuffer",
    "BufferStorage",
    "SemanticGroups",
    "ReplaySampler",
    "ReplayBatch",
    "RegroupSchedule",
    "ReplayDiagnostics",
    "BalancedReplayPlugin",
    "ReplayStep",
    "BatchTransformPlugin",
    "MixedPrecisionPlugin",
    "TrainingGuardPlugin",
    "NonFiniteLossError",
    "SARLGelu",
    "SARLEnhancedGeluBalanced",
    "load_cifar100",
    "split_cifar100",
    "with_test_subset",
    "cifar_augment",
    "cifar_normalize",
    "gelu_resnet18",
    "semantic_metrics",
    "long_tail_counts",
    "FrequencyBucketAccuracy",
    "SuperclassSkewAccuracy",
    "seed_everything",
]
