"""FlexTok: a 1D tokenizer of flexible length with a rectified-flow decoder (apple/ml-flextok)."""

from tokenizers_vq.flextok.fsq import FSQ
from tokenizers_vq.flextok.model import FlexTokTokenizer, FlowReconstruction, apg

__all__ = ["FSQ", "FlexTokTokenizer", "FlowReconstruction", "apg"]
