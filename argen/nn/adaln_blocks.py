"""adaLN transformer blocks: VAR's (algorithms.md sec. 1.3: l2-normalised attention, the adaLN before the
head) and xAR's (sec. 4.3: :class:`AdaLNRopeBlock`, a Llama block with RoPE modulated per token group).

Parameter names follow VAR's ``models/basic_var.py`` (``attn.mat_qkv``, ``attn.q_bias``,
``attn.v_bias``, ``attn.zero_k_bias``, ``attn.scale_mul_1H11``, ``attn.proj``, ``ffn.fc1/fc2``,
``ada_lin.1``) so an official state dict maps key for key. Deliberate difference: the KV cache
is a :class:`~argen.core.state.KVCache` the caller holds, not a caching mode of the module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core.state import KVCache
from argen.nn.attention import Attention
from argen.nn.blocks import FeedForward, RMSNorm


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): drop the whole residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - p)
    return x * keep / (1 - p)


def level_mask(levels_q: Tensor, levels_k: Tensor, key_valid: Tensor | None) -> Tensor:
    """Block-causal mask across levels (VAR ``attn_bias_for_masking``): a query sees every key of its
    own level and of coarser ones. levels_q (Q,), levels_k (K,) long; key_valid (B, K) bool or None
    (padded condition slots). Returns a bool mask (B|1, 1, Q, K); a slot always sees itself."""
    allowed = levels_k[None, :] <= levels_q[:, None]  # (Q, K)
    if key_valid is None:
        return allowed[None, None]
    k = key_valid.shape[1]
    diagonal = torch.arange(k, device=levels_q.device)[None, :] == \
        torch.arange(k - levels_q.shape[0], k, device=levels_q.device)[:, None]
    return (allowed[None] & (key_valid[:, None, :] | diagonal[None]))[:, None]


class L2NormAttention(nn.Module):
    """Multi-head attention with q, k l2-normalised per head and q scaled by ``exp(min(s_h, ln 100))``,
    a learned per-head log scale initialised at ln 4 (``attn_l2_norm=True``); without l2 norm the
    softmax scale is 0.25 / sqrt(head_dim). Biases on q and v only (k's is a zero buffer)."""

    def __init__(self, *, dim: int, n_head: int, l2_norm: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"width {dim} is not divisible by {n_head} heads")
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.l2_norm = l2_norm
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, n_head, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(self, x: Tensor, *, mask: Tensor | None, cache: KVCache | None = None, start: int = 0) -> Tensor:
        """x: (B, N, C) at slots [start, start+N); mask: bool (B|1, 1, N, start+N) or None (all visible)."""
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, hd)
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp().to(q.dtype)
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.write(start, k, v)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale)
        return self.proj_dropout(self.proj(out.transpose(1, 2).reshape(b, n, self.dim)))


class GeluFeedForward(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (VAR ``FFN``)."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x), approximate="tanh")))


class AdaLNSelfAttnBlock(nn.Module):
    """Pre-norm block modulated by a condition vector (VAR ``AdaLNSelfAttn``)::

        g1, g2, s1, s2, b1, b2 = ada_lin(cond)          # VAR's chunk order
        x = x + drop_path(attn(LN(x) (1 + s1) + b1) * g1)
        x = x + drop_path(ffn(LN(x) (1 + s2) + b2) * g2)
    """

    def __init__(self, *, dim: int, cond_dim: int, n_head: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 l2_norm: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.attn = L2NormAttention(dim=dim, n_head=n_head, l2_norm=l2_norm, attn_dropout=attn_dropout,
                                    proj_dropout=dropout)
        self.ffn = GeluFeedForward(dim=dim, hidden=round(dim * mlp_ratio), dropout=dropout)
        self.norm = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, cond: Tensor, *, mask: Tensor | None, cache: KVCache | None = None,
                start: int = 0) -> Tensor:
        """x: (B, N, C); cond: (B, D)."""
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.dim).unbind(2)  # each (B, 1, C)
        h = self.attn(self.norm(x) * (1 + s1) + b1, mask=mask, cache=cache, start=start)
        x = x + drop_path(h * g1, self.drop_path_rate, self.training)
        h = self.ffn(self.norm(x) * (1 + s2) + b2)
        return x + drop_path(h * g2, self.drop_path_rate, self.training)


class AdaLNRopeBlock(nn.Module):
    """A Llama-style block (RMSNorm without weight, fused-qkv attention with biases and RoPE, SwiGLU with
    biases) modulated per token by adaLN, as xAR's (MAR-style) encoder and decoder blocks
    (algorithms.md 4.3, ``models/xar.py: Block``)::

        g1, g2, s1, s2, b1, b2 = ada_lin(cond)[index]    # VAR's chunk order, one row per token
        x = x + drop_path(attn(RMS(x) (1 + s1) + b1) * g1)
        x = x + drop_path(ffn(RMS(x) (1 + s2) + b2) * g2)

    ``cond`` holds one condition vector per group of tokens (B, G, D) (xAR: one per entity, class + that
    entity's time) and ``index`` (N,) says which row modulates each token, so ``ada_lin`` runs once per
    group, not once per token (the official code repeats per cell after the linear, the same)."""

    def __init__(self, *, dim: int, cond_dim: int, n_head: int, ffn_hidden: int, norm_eps: float = 1e-6,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.attention = Attention(dim=dim, n_head=n_head, attn_dropout=attn_dropout, resid_dropout=dropout,
                                   bias=True)
        self.feed_forward = FeedForward(dim=dim, hidden=ffn_hidden, dropout=dropout, bias=True)
        self.norm = RMSNorm(dim, norm_eps, affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, cond: Tensor, index: Tensor, rope: Tensor, *, mask: Tensor | None = None,
                cache: KVCache | None = None, slots: Tensor | None = None) -> Tensor:
        """x: (B, N, C); cond: (B, G, D); index: (N,) rows of cond; rope: (N, hd/2, 2); mask: bool
        (B|1, 1, N, K) over the sequence (no cache) or over the cache's slots (with ``cache`` and ``slots``)."""
        mod = self.ada_lin(cond).view(cond.shape[0], cond.shape[1], 6, self.dim)[:, index]  # (B, N, 6, C)
        g1, g2, s1, s2, b1, b2 = mod.unbind(2)
        h = self.attention(self.norm(x) * (1 + s1) + b1, rope, mask=mask, cache=cache, slots=slots)
        x = x + drop_path(h * g1, self.drop_path_rate, self.training)
        h = self.feed_forward(self.norm(x) * (1 + s2) + b2)
        return x + drop_path(h * g2, self.drop_path_rate, self.training)
