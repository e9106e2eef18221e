"""Finite Scalar Quantization (Mentzer et al., 2023) as FlexTok uses it (apple/ml-flextok
``regularizers/quantize_fsq.py``): no codebook parameters, an implicit codebook of prod(levels) codes.

For levels L_d (channel-last input z of width len(levels)):

* bound:    ``tanh(z + shift) * half_l - offset`` with ``half_l = (L - 1)(1 + eps) / 2``, ``offset = 0.5``
            for even L (0 for odd) and ``shift = atanh(offset / half_l)``, eps = 1e-3;
* quantize: round with a straight-through gradient, then divide by ``L // 2``: codes in [-1, 1];
* index:    ``sum_d (code_d * (L_d // 2) + L_d // 2) * basis_d`` with ``basis = cumprod([1] + L[:-1])``
            (the first channel varies fastest); ``codes(index)`` inverts it exactly.

``drop_quant_p``: in training, each sample skips the rounding with that probability (the official
training trick; 0 by default).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FSQ(nn.Module):
    def __init__(self, levels: list[int] | tuple[int, ...], *, drop_quant_p: float = 0.0, eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        if not 0.0 <= drop_quant_p <= 1.0:
            raise ValueError(f"drop_quant_p must be in [0, 1], got {drop_quant_p}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = 1
        for v in levels:
            self.codebook_size *= v
        self.drop_quant_p = float(drop_quant_p)
        self.eps = float(eps)
        basis = [1]
        for v in levels[:-1]:
            basis.append(basis[-1] * v)
        # Buffers are not persistent: the official state dict has no FSQ entries.
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.int64), persistent=False)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"

    def bound(self, z: Tensor) -> Tensor:
        levels = self._levels.to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize(self, z: Tensor) -> Tensor:
        """z (..., dim) -> codes (..., dim) in [-1, 1] (straight-through rounding)."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ with levels {self.levels} quantizes {self.dim}-dim vectors, got width {z.shape[-1]}")
        bounded = self.bound(z.float())
        rounded = bounded.round()
        if self.training and self.drop_quant_p > 0:
            keep = torch.bernoulli(torch.full((z.shape[0],) + (1,) * (z.ndim - 1), self.drop_quant_p,
                                              device=z.device))
            quantized = bounded + ((1 - keep) * (rounded - bounded)).detach()
        else:
            quantized = bounded + (rounded - bounded).detach()
        return quantized / (self._levels // 2).to(quantized.dtype)

    def indices(self, codes: Tensor) -> Tensor:
        """codes (..., dim) on the FSQ grid -> indices (...) int64 in [0, codebook_size)."""
        half = (self._levels // 2).to(codes.dtype)
        digits = torch.round(codes * half + half).long()
        return (digits * self._basis).sum(-1)

    def codes(self, indices: Tensor) -> Tensor:
        """indices (...) -> codes (..., dim) float32, the exact inverse of :meth:`indices`."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"FSQ indices must lie in [0, {self.codebook_size}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        digits = (indices.long()[..., None] // self._basis) % self._levels
        half = (self._levels // 2).float()
        return (digits.float() - half) / half

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (..., dim) -> (codes, indices)."""
        codes = self.quantize(z)
        return codes, self.indices(codes.detach())

    def implicit_codebook(self) -> Tensor:
        """(codebook_size, dim): the code of every index."""
        return self.codes(torch.arange(self.codebook_size, device=self._levels.device))
