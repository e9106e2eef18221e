"""Token-Shuffle's two halves (Ma et al. 2025, algorithms.md section 6.1): fuse the s x s window of tokens
into one transformer position, and split a position's output back into its s^2 tokens.

* :class:`TokenShuffle` (input side): each token's embedding (d) is compressed to d / s^2 by a linear
  map, the s^2 compressed tokens of a window are concatenated along channels (back to d) and fused by
  residual MLP blocks.
* :class:`TokenUnshuffle` (output side): residual MLP blocks on the transformer output, a split of the
  channels into s^2 chunks of d / s^2 (one per token of the window) and a linear expansion of each chunk
  back to d, where the generator's shared output head reads it.

Choices the paper's text leaves open (stated so that a reader can change them): the residual MLP block is
``x + fc2(GELU(fc1(x)))`` with no normalisation inside and a hidden width of ``mlp_ratio * d``; the
compression and expansion are single linear layers with biases; the number of blocks on each side is
``blocks`` (2 by default). Inside a window, tokens are concatenated in row-major order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualMLP(nn.Module):
    """``x + fc2(GELU(fc1(x)))``, with a hidden width of ``hidden``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


def _window_tokens(dim: int, window: int) -> int:
    tokens = window * window
    if window < 1 or dim % tokens:
        raise ValueError(f"Token-Shuffle splits the width {dim} into window^2 = {tokens} chunks: choose a window "
                         f">= 1 whose square divides the width (e.g. dim 128 takes window 1, 2, 4 or 8)")
    return tokens


class TokenShuffle(nn.Module):
    """(B, N, s^2, d) token embeddings of N windows (row-major inside each) -> (B, N, d) fused inputs."""

    def __init__(self, dim: int, window: int, *, blocks: int = 2, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.tokens = _window_tokens(dim, window)
        self.compress = nn.Linear(dim, dim // self.tokens)
        self.fusion = nn.ModuleList(ResidualMLP(dim, int(mlp_ratio * dim)) for _ in range(blocks))

    def forward(self, x: Tensor) -> Tensor:
        h = self.compress(x).flatten(-2)  # (B, N, s^2 * d / s^2 = d)
        for block in self.fusion:
            h = block(h)
        return h

    def flops(self) -> float:
        """Forward FLOPs per window (2 per multiply-add)."""
        d = self.compress.in_features
        mlp = sum(2 * (b.fc1.in_features * b.fc1.out_features + b.fc2.in_features * b.fc2.out_features)
                  for b in self.fusion)
        return float(self.tokens * 2 * d * self.compress.out_features + mlp)


class TokenUnshuffle(nn.Module):
    """(B, N, d) transformer outputs -> (B, N, s^2, d / s^2) chunks (:meth:`split`), each expanded back to
    d by :meth:`expand` for the shared head."""

    def __init__(self, dim: int, window: int, *, blocks: int = 2, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.tokens = _window_tokens(dim, window)
        self.blocks = nn.ModuleList(ResidualMLP(dim, int(mlp_ratio * dim)) for _ in range(blocks))
        self.expand = nn.Linear(dim // self.tokens, dim)

    def split(self, h: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h)
        return h.unflatten(-1, (self.tokens, h.shape[-1] // self.tokens))

    def forward(self, h: Tensor) -> Tensor:
        return self.expand(self.split(h))

    def flops(self) -> float:
        """Forward FLOPs per window (2 per multiply-add), the expansion of its s^2 chunks included."""
        mlp = sum(2 * (b.fc1.in_features * b.fc1.out_features + b.fc2.in_features * b.fc2.out_features)
                  for b in self.blocks)
        return float(mlp + self.tokens * 2 * self.expand.in_features * self.expand.out_features)


@torch.no_grad()
def make_identity(shuffle: TokenShuffle, unshuffle: TokenUnshuffle) -> None:
    """Set a window-1 shuffle and unshuffle to the identity (compression and expansion I, the residual
    branches zero), so that a generator with them is the plain raster model it was initialised from."""
    if shuffle.tokens != 1 or unshuffle.tokens != 1:
        raise ValueError("only a window of 1 has an identity shuffle (window^2 chunks of d / window^2 channels "
                         "cannot carry d channels each)")
    for linear in (shuffle.compress, unshuffle.expand):
        linear.weight.copy_(torch.eye(linear.out_features, dtype=linear.weight.dtype))
        linear.bias.zero_()
    for block in [*shuffle.fusion, *unshuffle.blocks]:
        block.fc2.weight.zero_()
        block.fc2.bias.zero_()
