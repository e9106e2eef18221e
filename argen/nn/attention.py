"""Multi-head self-attention with a fused qkv projection (LlamaGen names ``wqkv``/``wo``) that
runs either over a whole sequence (training) or over new slots against a :class:`KVCache`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core.state import KVCache
from argen.nn.rope import apply_rope


def attention_mask(start: int, new: int, key_valid: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean mask (B|1, 1, new, start+new) for queries at slots [start, start+new): causal over
    slots, False on invalid (padded) keys; a slot always sees itself (LlamaGen forces the diagonal)
    so padded rows never attend to nothing. None when plain causal attention suffices."""
    total = start + new
    if key_valid is None:
        if new == 1:
            return None  # one query at the newest slot sees everything
        q = torch.arange(start, total, device=device)[:, None]
        return (torch.arange(total, device=device)[None, :] <= q)[None, None]
    q = torch.arange(start, total, device=device)[:, None]
    k = torch.arange(total, device=device)[None, :]
    causal = k <= q  # (new, total)
    valid = key_valid[:, None, :total].to(device) | (k == q)[None]  # (B, new, total)
    return (causal[None] & valid)[:, None]


class Attention(nn.Module):
    def __init__(self, *, dim: int, n_head: int, attn_dropout: float = 0.0, resid_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor, rope: Tensor, *, cache: KVCache | None = None, start: int = 0,
                key_valid: Tensor | None = None) -> Tensor:
        """x: (B, F, C) at slots [start, start+F); rope: (F, hd/2, 2). Without a cache the F slots
        are the whole sequence (start must be 0)."""
        b, f, _ = x.shape
        q, k, v = self.wqkv(x).view(b, f, 3, self.n_head, self.head_dim).unbind(2)  # each (B, F, H, hd)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, F, hd)
        if cache is not None:
            k, v = cache.write(start, k, v)
        elif start:
            raise ValueError("attention without a cache runs whole sequences (start=0)")
        dropout = self.attn_dropout if self.training else 0.0
        if cache is None and key_valid is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            mask = attention_mask(start, f, key_valid, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, f, self.dim)  # (B, F, C)
        return self.resid_dropout(self.wo(out))
