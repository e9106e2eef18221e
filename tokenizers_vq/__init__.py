"""Visual tokenizers for argen. This package never imports argen."""

from tokenizers_vq.base import DiscreteTokenizer, Tokenizer
from tokenizers_vq.io import load_pretrained, save_pretrained
from tokenizers_vq.layout import TokenLayout

__all__ = ["DiscreteTokenizer", "TokenLayout", "Tokenizer", "load_pretrained", "save_pretrained"]
