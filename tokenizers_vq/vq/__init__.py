"""2-D grid VQ tokenizer of the LlamaGen VQ-16 class."""

from tokenizers_vq.vq.model import Reconstruction, VQTokenizer
from tokenizers_vq.vq.quantizer import QuantizerOutput, VectorQuantizer

__all__ = ["QuantizerOutput", "Reconstruction", "VQTokenizer", "VectorQuantizer"]
