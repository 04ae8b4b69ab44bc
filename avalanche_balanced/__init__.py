"""avalanche-balanced: Balanced Instance Sampling replay and SARL-GELU for Avalanche.

The public API:

* sampling maths: :func:`balanced_importance`, :func:`sample_indices`, :func:`cosine_to_unit`;
* semantic components: :class:`ClassPrototypes`, :class:`SemanticSimilarity`, :class:`AdaptiveThreshold`;
* storage: :class:`BalancedBuffer` (an Avalanche ``ExemplarsBuffer``);
* wiring: :class:`BalancedReplayPlugin` (an Avalanche ``SupervisedPlugin``).
"""
from .sampling import balanced_importance, cosine_to_unit, normalized_entropy, sample_indices
from .semantic import GROUPINGS, AdaptiveThreshold, ClassPrototypes, SemanticSimilarity
from .buffer import BalancedBuffer, ReplayBatch
from .plugin import BalancedReplayPlugin

__version__ = "0.1.0"

__all__ = [
    "balanced_importance",
    "sample_indices",
    "cosine_to_unit",
    "normalized_entropy",
    "GROUPINGS",
    "ClassPrototypes",
    "SemanticSimilarity",
    "AdaptiveThreshold",
    "BalancedBuffer",
    "ReplayBatch",
    "BalancedReplayPlugin",
]
