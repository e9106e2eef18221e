"""FlexTok: a 1D tokenizer of flexible length with a rectified-flow decoder (apple/ml-flextok)."""

from tokenizers_vq.flextok.fsq import FSQ
from tokenizers_vq.flextok.model import FlexTokTokenizer, FlowReconstruction, TokenPrefix, apg

__all__ = ["FSQ", "FlexTokTokenizer", "FlowReconstruction", "TokenPrefix", "apg"]
