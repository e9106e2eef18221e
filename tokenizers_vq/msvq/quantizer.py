"""VAR's scale-residual quantizer (Tian et al. 2024, algorithms.md sec. 1.2).

One codebook serves K scales of an (H, W) latent f. Encoding walks the scales coarse to fine::

    f_rest = f, f_hat = 0
    for k, pn in enumerate(scales):
        idx_k = nearest(area_down(f_rest, pn))             # no resize at the last scale
        h_k   = phi_k(bicubic_up(E[idx_k], (H, W)))        # phi after the upsampling
        f_hat += h_k ; f_rest -= h_k

``phi(h) = (1 - r) h + r conv3x3(h)`` (``quant_resi``); K scales share ``num_phi`` convs through
VAR's tick mapping (``num_phi = 4`` for K = 10 gives [0,0,1,1,1,2,2,3,3,3]). The same
``accumulate`` step builds the generator's next-scale inputs in teacher forcing
(:meth:`next_scale_inputs`) and at inference (:meth:`accumulate` + :meth:`downsample`), so the
two cannot drift apart. Lookups use plain L2 distance (VAR ``using_znorm=False``).

Everything here runs in fp32 with autocast off, as VAR does: bf16 flips nearest-code decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def phi_indices(num_scales: int, num_phi: int) -> list[int]:
    """Which phi conv each scale uses. ``num_phi`` 1 = one shared, ``num_scales`` = one per scale,
    otherwise VAR's ``PhiPartiallyShared``: scale k sits at k / (K - 1) and takes the nearest tick of
    ``linspace(1/(3n), 1 - 1/(3n), n)`` for n = 4 (``linspace(1/(2n), 1 - 1/(2n), n)`` otherwise)."""
    if num_scales < 2:
        raise ValueError(f"a scale-residual quantizer needs at least 2 scales, got {num_scales}")
    if num_phi < 1:
        raise ValueError(f"num_phi must be >= 1, got {num_phi}")
    if num_phi == 1:
        return [0] * num_scales
    n = num_phi
    ticks = np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)
    return [int(np.argmin(np.abs(ticks - k / (num_scales - 1)))) for k in range(num_scales)]


class Phi(nn.Conv2d):
    """``(1 - ratio) h + ratio conv3x3(h)``: the refinement after upsampling (VAR ``Phi``)."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: Tensor) -> Tensor:  # (B, D, H, W)
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


@dataclass
class MultiScaleOutput:
    """Training-time output. quantized: (B, D, H, W) straight-through f_hat; indices: list of
    (B, pn_k, pn_k) int64, coarse to fine; codebook_loss = mean_k ||f_hat_k - sg(f)||^2 and
    commitment_loss = beta mean_k ||sg(f_hat_k) - f||^2 (VAR's VQ loss, split in its two terms)."""

    quantized: Tensor
    indices: list[Tensor]
    codebook_loss: Tensor
    commitment_loss: Tensor
    residuals: Tensor  # (N, D) the vectors that were quantised, all scales (dead-code restart candidates)


class MultiScaleQuantizer(nn.Module):
    """scales: side of each square token map, coarse to fine; the last equals the latent side.
    num_phi: 0 = one phi per scale, 1 = one shared, n = n partially shared (VAR default 4).
    phi_ratio: r of phi (0 makes phi the identity). commitment_weight: beta."""

    def __init__(self, *, codebook_size: int, embed_dim: int, scales: list[int] | tuple[int, ...],
                 num_phi: int = 4, phi_ratio: float = 0.5, commitment_weight: float = 0.25) -> None:
        super().__init__()
        scales = tuple(int(s) for s in scales)
        if list(scales) != sorted(set(scales)) or scales[0] < 1:
            raise ValueError(f"scales must be strictly increasing positive sides, got {list(scales)}")
        if codebook_size < 2 or embed_dim < 1:
            raise ValueError(f"need codebook_size >= 2 and embed_dim >= 1, got {codebook_size}, {embed_dim}")
        self.codebook_size, self.embed_dim, self.scales = codebook_size, embed_dim, scales
        self.commitment_weight = commitment_weight
        self.phi_ratio = phi_ratio
        count = len(scales) if num_phi == 0 else num_phi
        if count > len(scales):
            raise ValueError(f"num_phi={num_phi} is more than the {len(scales)} scales")
        self.phi_index = phi_indices(len(scales), count)
        self.phi = nn.ModuleList(Phi(embed_dim, phi_ratio) if abs(phi_ratio) > 1e-6 else nn.Identity()
                                 for _ in range(count))
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        # Uniform in +-1/V: VAR's ``eini(-1)`` option (its VAE training code, which would pick one, is
        # unreleased). Dead-code restarts (trainer option) re-seed codes the encoder never reaches.
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # Per-code and per-scale usage fractions (EMA), filled by the trainer from counts reduced over
        # processes; ``usage_ema`` drives dead-code restarts, ``usage_ema_scales`` the per-scale logs
        # (collapse at the coarse scales is VAR's known failure; cf. its ``ema_vocab_hit_SV``).
        self.register_buffer("usage_ema", torch.full((codebook_size,), 1.0 / codebook_size))
        self.register_buffer("usage_ema_scales", torch.full((len(scales), codebook_size), 1.0 / codebook_size))

    # ---- geometry -----------------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def side(self) -> int:
        return self.scales[-1]

    def bounds(self) -> list[tuple[int, int]]:
        """[begin, end) of each scale in the flattened coarse-to-fine token order."""
        out, cur = [], 0
        for pn in self.scales:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return out

    def split(self, tokens: Tensor) -> list[Tensor]:
        """(B, L) flattened tokens -> list of (B, pn_k, pn_k)."""
        length = sum(pn * pn for pn in self.scales)
        if tokens.ndim != 2 or tokens.shape[1] != length:
            raise ValueError(f"expected tokens (B, {length}) for scales {list(self.scales)}, got {tuple(tokens.shape)}")
        return [tokens[:, a:b].reshape(-1, pn, pn) for (a, b), pn in zip(self.bounds(), self.scales)]

    # ---- the shared steps ---------------------------------------------------------------------
    def nearest(self, z: Tensor) -> Tensor:
        """z (N, D) -> (N,) indices of the nearest codes in L2."""
        weight = self.embedding.weight.float()
        dist = z.pow(2).sum(1, keepdim=True) + weight.pow(2).sum(1)[None] - 2.0 * z @ weight.t()  # (N, V)
        return dist.argmin(dim=1)

    def upsample(self, codes: Tensor, k: int) -> Tensor:
        """codes (B, D, pn_k, pn_k) -> phi_k(bicubic_up(codes)) at (side, side); no resize at the last scale."""
        if k != self.num_scales - 1:
            codes = F.interpolate(codes, size=(self.side, self.side), mode="bicubic")
        return self.phi[self.phi_index[k]](codes)

    def downsample(self, f: Tensor, k: int) -> Tensor:
        """(B, D, side, side) -> (B, D, pn_k, pn_k) by area averaging (identity at the last scale)."""
        pn = self.scales[k]
        return f if pn == f.shape[-1] else F.interpolate(f, size=(pn, pn), mode="area")

    def accumulate(self, f_hat: Tensor, k: int, idx: Tensor) -> Tensor:
        """f_hat (B, D, side, side) + phi_k(up(E[idx])) for the scale-k indices idx (B, pn_k^2) or
        (B, pn_k, pn_k). Returns a new tensor (f_hat is not modified)."""
        pn = self.scales[k]
        with torch.autocast(device_type=f_hat.device.type, enabled=False):
            codes = self.embedding(idx.reshape(idx.shape[0], pn, pn).long()).float().permute(0, 3, 1, 2)
            return f_hat.float() + self.upsample(codes, k)

    def next_input(self, f_hat: Tensor, k: int) -> Tensor:
        """The generator's input for scale k + 1 after scales 0..k: area_down(f_hat, pn_{k+1})
        flattened to (B, pn_{k+1}^2, D)."""
        with torch.autocast(device_type=f_hat.device.type, enabled=False):
            return self.downsample(f_hat.float(), k + 1).flatten(2).transpose(1, 2)

    def empty_fhat(self, batch: int, device: torch.device | str) -> Tensor:
        return torch.zeros(batch, self.embed_dim, self.side, self.side, device=device)

    @torch.no_grad()
    def next_scale_inputs(self, tokens: Tensor) -> Tensor:
        """Teacher forcing (VAR ``idxBl_to_var_input``): tokens (B, L) -> (B, L - pn_0^2, D), the inputs
        of scales 1..K-1, built by the same :meth:`accumulate` / :meth:`next_input` as inference."""
        idx = self.split(tokens)
        f_hat = self.empty_fhat(tokens.shape[0], tokens.device)
        parts = []
        for k in range(self.num_scales - 1):
            f_hat = self.accumulate(f_hat, k, idx[k])
            parts.append(self.next_input(f_hat, k))
        return torch.cat(parts, dim=1)

    def fhat_from_tokens(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> f_hat (B, D, side, side) summed over all scales."""
        idx = self.split(tokens)
        f_hat = self.empty_fhat(tokens.shape[0], tokens.device)
        for k in range(self.num_scales):
            f_hat = self.accumulate(f_hat, k, idx[k])
        return f_hat

    # ---- encoding / training ----------------------------------------------------------------
    def forward(self, f: Tensor) -> MultiScaleOutput:
        """f: (B, D, side, side) encoder latent after ``quant_conv``."""
        b, d, h, w = f.shape
        if d != self.embed_dim or h != self.side or w != self.side:
            raise ValueError(f"quantizer expects latents (B, {self.embed_dim}, {self.side}, {self.side}) for scales "
                             f"{list(self.scales)}, got {tuple(f.shape)}")
        with torch.autocast(device_type=f.device.type, enabled=False):
            f32 = f.float()
            target = f32.detach()
            f_rest = target.clone()
            f_hat = torch.zeros_like(target)
            indices: list[Tensor] = []
            residuals: list[Tensor] = []
            codebook_loss = commitment_loss = f32.new_zeros(())
            for k, pn in enumerate(self.scales):
                z = self.downsample(f_rest, k).permute(0, 2, 3, 1).reshape(-1, d)  # (B pn^2, D)
                idx = self.nearest(z).view(b, pn, pn)
                residuals.append(z)
                h_k = self.upsample(self.embedding(idx).permute(0, 3, 1, 2), k)  # grads reach E and phi
                f_hat = f_hat + h_k
                f_rest = f_rest - h_k.detach()
                indices.append(idx)
                codebook_loss = codebook_loss + F.mse_loss(f_hat, target)
                commitment_loss = commitment_loss + F.mse_loss(f_hat.detach(), f32)
            codebook_loss = codebook_loss / self.num_scales
            commitment_loss = self.commitment_weight * commitment_loss / self.num_scales
            quantized = f32 + (f_hat - f32).detach()  # straight-through to the encoder
        return MultiScaleOutput(quantized=quantized.to(f.dtype), indices=indices, codebook_loss=codebook_loss,
                                commitment_loss=commitment_loss, residuals=torch.cat(residuals))

    # ---- usage statistics ---------------------------------------------------------------------
    @torch.no_grad()
    def update_usage(self, counts: Tensor, decay: float) -> None:
        """Fold one step's per-scale code histogram (K, V) (or a plain (V,) one) into the EMAs."""
        if counts.ndim == 2:
            frac = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)
            self.usage_ema_scales.mul_(decay).add_(frac.to(self.usage_ema_scales), alpha=1.0 - decay)
            counts = counts.sum(0)
        total = counts.float() / counts.sum().clamp_min(1)
        self.usage_ema.mul_(decay).add_(total.to(self.usage_ema), alpha=1.0 - decay)

    @torch.no_grad()
    def restart_dead_codes(self, candidates: Tensor, threshold: float, rng: torch.Generator) -> int:
        """Re-seed codes used less than ``threshold / V`` with random candidate vectors (N, D) plus a
        little noise (Jukebox / SoundStream); returns how many were restarted."""
        dead = (self.usage_ema < threshold / self.codebook_size).nonzero().squeeze(1)
        if dead.numel() == 0 or candidates.numel() == 0:
            return 0
        pick = torch.randint(0, candidates.shape[0], (dead.numel(),), generator=rng, device=rng.device)
        new = candidates[pick.to(candidates.device)].to(self.embedding.weight)
        noise = torch.randn(new.shape, generator=rng, device=rng.device).to(new) * 1e-2 * new.std()
        self.embedding.weight[dead.to(self.embedding.weight.device)] = new + noise
        self.usage_ema[dead.to(self.usage_ema.device)] = 1.0 / self.codebook_size
        return int(dead.numel())

    def extra_repr(self) -> str:
        return f"scales={list(self.scales)}, phi_index={self.phi_index}, ratio={self.phi_ratio}"
