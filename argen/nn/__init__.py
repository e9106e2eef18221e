"""Transformer building blocks shared by the generators (models never import Lightning)."""

from argen.nn.attention import Attention
from argen.nn.blocks import FeedForward, RMSNorm, TransformerBlock, find_multiple
from argen.nn.rope import apply_rope, rope_1d, rope_2d

__all__ = ["Attention", "FeedForward", "RMSNorm", "TransformerBlock", "apply_rope", "find_multiple", "rope_1d",
           "rope_2d"]
