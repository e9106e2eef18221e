"""Tokenizer protocols: the boundary between visual tokenizers and AR generators.

Shapes use a fixed alphabet: B batch, L tokens per image, D code width, V vocabulary,
C latent channels, H/W pixels.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from tokenizers_vq.layout import TokenLayout


@runtime_checkable
class Tokenizer(Protocol):
    """Maps images to tokens and back.

    ``encode``: images (B, 3, H, W) in [-1, 1] -> tokens (B, L) int64, or (B, L, C) float
    for a continuous tokenizer; ``decode`` is its inverse signature and returns images in
    [-1, 1] (not clamped; callers clamp for display). ``seeds`` (B,): per-sample seeds of a
    stochastic decoder (a rectified-flow decoder draws its noise from them, so image i does not
    depend on its batch-mates); deterministic decoders accept and ignore them.
    """

    layout: TokenLayout
    image_size: int

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, tokens: Tensor, seeds: Tensor | None = None) -> Tensor: ...


@runtime_checkable
class DiscreteTokenizer(Tokenizer, Protocol):
    """A tokenizer with a finite codebook.

    ``codebook()``: (V, D), the vectors tokens index (as used at lookup, i.e. after any
    l2 normalisation); ``embed(tokens)``: (B, L) -> (B, L, D), those vectors per token.
    LANTERN's neighbour sets and VAR's next-scale inputs are built from these.
    """

    def codebook(self) -> Tensor: ...

    def embed(self, tokens: Tensor) -> Tensor: ...
