"""Strategies built on the balanced buffer: SARL and SARL-GELU (the strategy) and its loss terms."""
from .sarl import SARLEnhancedGeluBalanced, SARLGelu
from .sarl_terms import prototype_regularizer, semantic_contrastive, threshold_positives

__all__ = ["SARLGelu", "SARLEnhancedGeluBalanced", "prototype_regularizer", "semantic_contrastive",
           "threshold_positives"]
