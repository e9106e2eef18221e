"""Rotary position embeddings, 1D and LlamaGen's 2D layout (algorithms.md 2.3).

Tables have shape (prefix + L, head_dim // 2, 2) holding (cos, sin) per rotation pair. Rotation
acts on interleaved pairs (x[2i], x[2i+1]). 2D: the first half of the pairs rotate with the
row index, the second half with the column index, each with frequencies
``base ** (-2i / (head_dim/2))``. The condition prefix rows are all zeros, so condition queries
and keys become zero vectors after rotation; LlamaGen does this and a converted checkpoint only
matches with it (``zero_prefix=False`` gives the prefix the identity rotation instead).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _prefix(table: Tensor, prefix: int, zero_prefix: bool) -> Tensor:
    pad = torch.zeros(prefix, *table.shape[1:], dtype=table.dtype)
    if not zero_prefix:
        pad[..., 0] = 1.0  # cos = 1, sin = 0: identity rotation
    return torch.cat([pad, table])


def rope_1d(length: int, head_dim: int, *, base: float = 10000.0, prefix: int = 0,
            zero_prefix: bool = True) -> Tensor:
    """(prefix + length, head_dim // 2, 2): position t rotates pair i by t * base^(-2i/head_dim)."""
    if head_dim % 2:
        raise ValueError(f"1D RoPE needs an even head_dim, got {head_dim}")
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length).float(), freqs)  # (L, hd/2)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return _prefix(table, prefix, zero_prefix)


def rope_2d(height: int, width: int, head_dim: int, *, base: float = 10000.0, prefix: int = 0,
            zero_prefix: bool = True) -> Tensor:
    """(prefix + height*width, head_dim // 2, 2) in raster order (row-major)."""
    rows = torch.arange(height).float()[:, None].expand(height, width).flatten()
    cols = torch.arange(width).float()[None, :].expand(height, width).flatten()
    return _prefix(rope_2d_at(rows, cols, head_dim, base=base), prefix, zero_prefix)


def rope_2d_at(rows: Tensor, cols: Tensor, head_dim: int, *, base: float = 10000.0) -> Tensor:
    """(N, head_dim // 2, 2) for N positions at (possibly fractional) coordinates ``rows``, ``cols`` (N,):
    the first half of the pairs rotate with the row, the second half with the column (a coarse scale's
    token can sit at its centre in the finest grid's coordinates)."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=rows.device)[: half // 2].float() / half))  # (hd/4,)
    angles = torch.cat([torch.outer(rows.float(), freqs), torch.outer(cols.float(), freqs)], dim=-1)  # (N, hd/2)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """x: (B, F, H, hd); table: (F, hd/2, 2), or (B, F, hd/2, 2) for rows at their own positions ->
    rotated x (computed in fp32, returned in x's dtype)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, F, H, hd/2, 2)
    rows = table.shape[0] if table.dim() == 4 else 1
    t = table.view(rows, xs.shape[1], 1, xs.shape[3], 2).to(xs.device)
    cos, sin = t[..., 0], t[..., 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], dim=-1)
    return out.flatten(3).type_as(x)
