"""VAR's scale-residual multi-scale VQ tokenizer."""

from tokenizers_vq.msvq.model import MultiScaleVQTokenizer
from tokenizers_vq.msvq.quantizer import MultiScaleQuantizer, Phi, phi_indices

__all__ = ["MultiScaleQuantizer", "MultiScaleVQTokenizer", "Phi", "phi_indices"]
