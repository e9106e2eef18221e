"""FlexTok's transformer parts (apple/ml-flextok ``model/layers``, ``model/trunks``), written for dense
batches: every image of a batch has the same number of patches and registers, so the official sequence
packing (FlexAttention over a packed, 128-padded sequence) becomes one (B, N, D) tensor with a dense mask;
the padding tokens never reach a real token in the official mask, so the two are the same function.

* pre-norm LayerNorm without affine parameters (``Fp32LayerNorm(bias=False, elementwise_affine=False)``);
* attention: bias-free wq / wk / wv / proj, QK-norm (the same affine-free LayerNorm over each head), and the
  muP scale ``8 / head_dim`` (= 1 / sqrt(head_dim) at head_dim 64);
* MLP: SwiGLU ``fc2(silu(fc1 x) * fc3 x)`` with hidden ``int(2 * int(dim * mlp_ratio) / 3)``, bias-free;
* adaLN-zero: ``Linear(dim, segments * 6 * dim)`` of SiLU(t-embedding); each segment of the sequence (the
  decoder's patches, then its registers) gets its own six chunks, in the official order
  gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def layer_norm(x: Tensor) -> Tensor:
    """Affine-free LayerNorm in fp32, returned in the input dtype."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=1e-5).type_as(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1.0 + scale) + shift


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}")
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.scale = 8.0 / head_dim
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x))
        q, k = layer_norm(q), layer_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class GatedMlp(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(2 * int(dim * mlp_ratio) / 3)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.fc3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)) * self.fc3(x))


class Block(nn.Module):
    """One transformer block; ``segments > 0`` adds adaLN-zero modulation with that many segments."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: float, segments: int = 0) -> None:
        super().__init__()
        self.dim, self.segments = dim, segments
        self.attn = Attention(dim, head_dim)
        self.mlp = GatedMlp(dim, mlp_ratio)
        if segments:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, segments * 6 * dim, bias=True))
            nn.init.zeros_(self.adaLN_modulation[-1].weight)
            nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def modulation(self, emb: Tensor, lengths: list[int]) -> list[Tensor]:
        """emb (B, dim) -> the six (B, N, dim) modulations, each segment's rows repeated over its tokens."""
        mod = self.adaLN_modulation(emb).view(emb.shape[0], self.segments, 6 * self.dim)
        per_token = torch.cat([mod[:, s:s + 1].expand(-1, n, -1) for s, n in enumerate(lengths)], dim=1)
        return list(per_token.chunk(6, dim=-1))

    def forward(self, x: Tensor, mask: Tensor | None = None, emb: Tensor | None = None,
                lengths: list[int] | None = None) -> Tensor:
        if not self.segments:
            x = x + self.attn(layer_norm(x), mask)
            return x + self.mlp(layer_norm(x))
        assert emb is not None and lengths is not None and len(lengths) == self.segments
        gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp = self.modulation(emb, lengths)
        x = x + gate_msa * self.attn(modulate(layer_norm(x), shift_msa, scale_msa), mask)
        return x + gate_mlp * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """FlexTok's fixed 2D sin-cos position embedding, (1, dim, h, w): channels [sin w, cos w, sin h, cos h]
    of ``dim / 4`` frequencies each (``posembs.build_2d_sincos_posemb``)."""
    if dim % 4:
        raise ValueError(f"a 2D sin-cos embedding needs dim divisible by 4, got {dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_w = grid_w.reshape(-1)[:, None] * omega[None]
    out_h = grid_h.reshape(-1)[:, None] * omega[None]
    emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)  # (W*H, dim), w-major
    # The official code lays the (w, h)-ordered rows out as (h, w) with a plain reshape; keep that exactly.
    return emb.reshape(1, h, w, dim).permute(0, 3, 1, 2).contiguous()


class TimestepEmbedder(nn.Module):
    """DiT's sinusoidal embedding + MLP, with FlexTok's conventions: frequencies ``exp(-ln(max_period) i/half)``
    with max_period 256, scaled by ``1000 / max_timestep``; [cos, sin] order."""

    def __init__(self, dim: int, frequency_size: int = 256, max_timestep: float = 1.0) -> None:
        super().__init__()
        self.frequency_size, self.max_timestep = frequency_size, float(max_timestep)
        self.mlp = nn.Sequential(nn.Linear(frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.frequency_size // 2
        freqs = (1000.0 / self.max_timestep) * torch.exp(
            -math.log(256) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([args.cos(), args.sin()], dim=-1)
        if self.frequency_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))
