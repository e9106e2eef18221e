"""Adaptive layer norm (DiT / VAR style) for generators conditioned through the norms."""

from __future__ import annotations

from torch import Tensor, nn


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine parameters, then ``x * (1 + scale) + shift`` with (shift, scale)
    predicted from a condition vector by ``ada_lin`` (SiLU -> Linear, zero-initialised so a new
    model starts as plain LayerNorm). ``order`` is how ``ada_lin``'s output splits: DiT's
    ``shift_scale`` or VAR's ``scale_shift`` (``AdaLNBeforeHead``), which converted weights need."""

    def __init__(self, *, dim: int, cond_dim: int, eps: float = 1e-6, order: str = "shift_scale") -> None:
        super().__init__()
        if order not in ("shift_scale", "scale_shift"):
            raise ValueError(f"order must be 'shift_scale' or 'scale_shift', got {order!r}")
        self.order = order
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        nn.init.zeros_(self.ada_lin[1].weight)
        nn.init.zeros_(self.ada_lin[1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x: (B, N, C); cond: (B, D)."""
        a, b = self.ada_lin(cond).unsqueeze(1).chunk(2, dim=-1)  # each (B, 1, C)
        shift, scale = (a, b) if self.order == "shift_scale" else (b, a)
        return self.norm(x) * (1 + scale) + shift
