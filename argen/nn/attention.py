"""Multi-head self-attention with a fused qkv projection (LlamaGen names ``wqkv``/``wo``) that
runs either over a whole sequence (training) or over new slots against a :class:`KVCache`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from argen.core.state import KVCache
from argen.nn.rope import apply_rope


def attention_mask(start: int, new: int, key_valid: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean mask (B|1, 1, new, start+new) for a whole sequence from slot ``start`` (training and
    rows that advance together): causal over slots, False on invalid (padded) keys; a slot always sees
    itself (LlamaGen forces the diagonal) so padded rows never attend to nothing. None when plain
    causal attention suffices."""
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


def slot_mask(slots: Tensor, total: int, key_valid: Tensor | None = None, levels: Tensor | None = None) -> Tensor:
    """Boolean mask (B, 1, N, total) for queries at per-row ``slots`` (B, N) (-1: padding) over every
    cache slot: a query sees the slots whose level is at or below its own, minus invalid (padded)
    condition keys, always its own slot. ``levels`` (total,) int64: the order of the slots (None: the
    slot index itself, i.e. causal: a row's slots are contiguous from its condition, so that also hides
    whatever a rolled-back draft left beyond the row's length). Other orders are other levels: NAR's
    proximity order gives a position its anti-diagonal r + c and condition slot s the level s - prefix
    (causal among themselves, below every image token). A padded query sees slot 0 only, so it stays
    finite and its output is ignored."""
    k = torch.arange(total, device=slots.device)[None, None, :]  # (1, 1, S)
    q = slots[:, :, None]  # (B, N, 1)
    if levels is None:
        visible = k <= q
    else:
        lv = levels.to(slots.device)
        visible = lv[None, None, :total] <= lv[q.clamp_min(0)]
    if key_valid is not None:
        visible = visible & (key_valid[:, None, :total].to(slots.device) | (k == q))
    visible = (visible & (q >= 0)) | ((q < 0) & (k == 0))
    return visible[:, None]


class Attention(nn.Module):
    """bias: biases on the qkv and output projections (LlamaGen has none; xAR/MAR blocks have both)."""

    def __init__(self, *, dim: int, n_head: int, attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 bias: bool = False) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"dim {dim} is not divisible by n_head {n_head}")
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.wo = nn.Linear(dim, dim, bias=bias)
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor, rope: Tensor, *, cache: KVCache | None = None, slots: Tensor | None = None,
                mask: Tensor | None = None, key_valid: Tensor | None = None) -> Tensor:
        """x: (B, F, C); rope: (F, hd/2, 2), or (B, F, hd/2, 2) per row. Without a cache the F inputs
        are a whole sequence, causal (``key_valid`` marks padded keys). With a cache, input f of row b
        is written at ``slots[b, f]`` and attends as ``mask`` (B, 1, F, max_len) says (:func:`slot_mask`).
        A whole sequence attends as an explicit ``mask`` (B|1, 1, F, F) when one is given (NAR's proximity
        order), which then also carries the padded keys."""
        b, f, _ = x.shape
        q, k, v = self.wqkv(x).view(b, f, 3, self.n_head, self.head_dim).unbind(2)  # each (B, F, H, hd)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, F, hd)
        dropout = self.attn_dropout if self.training else 0.0
        if cache is not None:
            if slots is None or mask is None:
                raise ValueError("attention over a KV cache needs the inputs' slots and their mask")
            k, v = cache.write_rows(slots, k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        elif key_valid is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask(0, f, key_valid, x.device),
                                                 dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, f, self.dim)  # (B, F, C)
        return self.resid_dropout(self.wo(out))
