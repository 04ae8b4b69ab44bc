"""Strategies built on the balanced buffer."""
from .sarl import SARLEnhancedGeluBalanced, SARLGelu, prototype_regularizer, semantic_contrastive

__all__ = ["SARLGelu", "SARLEnhancedGeluBalanced", "prototype_regularizer", "semantic_contrastive"]
