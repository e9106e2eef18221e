"""Llama blocks as in LlamaGen (algorithms.md 2.3): pre-RMSNorm, fused-qkv attention, SwiGLU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from argen.core.state import KVCache
from argen.nn.attention import Attention


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n (LlamaGen's SwiGLU hidden-size rounding)."""
    return n if n % k == 0 else n + k - n % k


def swiglu_hidden(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LlamaGen: int(2 * 4 * dim / 3), optionally scaled, rounded up to ``multiple_of``
    (B 768 -> 2048, L 1024 -> 2816, XL 1280 -> 3584)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return find_multiple(hidden, multiple_of)


class RMSNorm(nn.Module):
    """``affine=False``: no weight (the normalisation before an adaLN modulation, as in xAR's blocks)."""

    def __init__(self, dim: int, eps: float = 1e-5, *, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out if self.weight is None else out * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); ``bias``: biases on all three (timm's ``SwiGLU``, as xAR uses it:
    ``fc1_g`` = w1, ``fc1_x`` = w3, ``fc2`` = w2)."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(nn.functional.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, *, dim: int, n_head: int, ffn_hidden: int, norm_eps: float = 1e-5, attn_dropout: float = 0.0,
                 resid_dropout: float = 0.0, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = Attention(dim=dim, n_head=n_head, attn_dropout=attn_dropout, resid_dropout=resid_dropout)
        self.feed_forward = FeedForward(dim=dim, hidden=ffn_hidden, dropout=ffn_dropout)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward(self, x: Tensor, rope: Tensor, *, cache: KVCache | None = None, slots: Tensor | None = None,
                mask: Tensor | None = None, key_valid: Tensor | None = None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache=cache, slots=slots, mask=mask,
                               key_valid=key_valid)
        return h + self.feed_forward(self.ffn_norm(h))
