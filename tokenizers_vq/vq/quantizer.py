"""Vector quantizer with an l2-normalised low-dimensional codebook (LlamaGen VQ-16, sec. 2.2
of research/algorithms.md; Yu et al. 2022 "ViT-VQGAN" for the factorised, normalised codes).

Distances, the softmax of the entropy loss and the usage statistics are computed in fp32
whatever the autocast dtype: bf16 distances flip nearest-neighbour decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """quantized: (B, D, h, w) straight-through codes; indices: (B, h, w) int64."""

    quantized: Tensor
    indices: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    entropy_loss: Tensor


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean per-sample entropy minus the entropy of the mean assignment, over (N, V) logits.

    Low per-sample entropy makes assignments confident; high entropy of the mean spreads
    them over the codebook (LlamaGen ``compute_entropy_loss``, MaskGIT lineage).
    """
    probs = logits.softmax(dim=-1)
    log_probs = logits.log_softmax(dim=-1)
    sample_entropy = -(probs * log_probs).sum(-1).mean()
    mean_probs = probs.mean(0)
    mean_entropy = -(mean_probs * torch.log(mean_probs + 1e-8)).sum()
    return sample_entropy - mean_entropy


class VectorQuantizer(nn.Module):
    """Nearest-neighbour lookup into ``codebook_size`` codes of width ``embed_dim``.

    With ``l2_normalize`` both the encoder output and the codebook rows are projected to
    the unit sphere before the search, so the squared distance is 2 - 2 cos (LlamaGen
    ``codebook_l2_norm=True``) and the returned codes are the normalised rows.
    Losses (van den Oord et al. 2017, eq. 3): codebook ``||sg(z) - e||^2``, commitment
    ``beta * ||z - sg(e)||^2``; gradients reach the encoder by the straight-through
    estimator ``z + sg(e - z)``.
    """

    def __init__(
        self,
        *,
        codebook_size: int,
        embed_dim: int,
        l2_normalize: bool = True,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
    ) -> None:
        super().__init__()
        if codebook_size < 2 or embed_dim < 1:
            raise ValueError(f"need codebook_size >= 2 and embed_dim >= 1, got {codebook_size}, {embed_dim}")
        self.codebook_size = codebook_size
        self.embed_dim = embed_dim
        self.l2_normalize = l2_normalize
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.embedding = nn.Embedding(codebook_size, embed_dim)
        # LlamaGen initialises uniformly in +-1/V; with l2 normalisation only directions matter.
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # Exponential moving average of how often each code is picked (fraction of tokens per
        # step). Updated explicitly by the trainer with counts reduced over all processes, so
        # data-parallel replicas never disagree about which codes are dead.
        self.register_buffer("usage_ema", torch.full((codebook_size,), 1.0 / codebook_size))

    def codebook(self) -> Tensor:
        """(V, D) codes as used at lookup."""
        weight = self.embedding.weight.float()
        return F.normalize(weight, dim=-1) if self.l2_normalize else weight

    def lookup(self, indices: Tensor) -> Tensor:
        """indices (...) -> codes (..., D)."""
        return F.embedding(indices, self.codebook())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """z: (B, D, h, w) encoder output after ``quant_conv``."""
        b, d, h, w = z.shape
        if d != self.embed_dim:
            raise ValueError(f"quantizer expects {self.embed_dim} channels, got {d}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
            if self.l2_normalize:
                flat = F.normalize(flat, dim=-1)
            codes = self.codebook()  # (V, D)
            dist = (
                flat.pow(2).sum(1, keepdim=True)
                + codes.pow(2).sum(1)[None, :]
                - 2.0 * flat @ codes.t()
            )  # (N, V)
            indices = dist.argmin(dim=1)  # (N,)
            quant = codes[indices]  # (N, D)
            codebook_loss = F.mse_loss(quant, flat.detach())
            commitment_loss = self.commitment_weight * F.mse_loss(flat, quant.detach())
            if self.entropy_weight > 0:
                ent = self.entropy_weight * entropy_loss(-dist / self.entropy_temperature)
            else:
                ent = flat.new_zeros(())
            quant = flat + (quant - flat).detach()  # straight-through
        quantized = quant.view(b, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
        return QuantizerOutput(
            quantized=quantized,
            indices=indices.view(b, h, w),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            entropy_loss=ent,
        )

    @torch.no_grad()
    def update_usage(self, counts: Tensor, decay: float) -> None:
        """Fold one step's code histogram (V,) into ``usage_ema`` (as fractions of tokens)."""
        frac = counts.float() / counts.sum().clamp_min(1)
        self.usage_ema.mul_(decay).add_(frac.to(self.usage_ema), alpha=1.0 - decay)

    @torch.no_grad()
    def restart_dead_codes(self, candidates: Tensor, threshold: float, rng: torch.Generator) -> int:
        """Re-seed codes whose usage fell below ``threshold / V`` with random encoder outputs.

        candidates: (N, D) encoder outputs (pre-normalisation) to draw from, identical on every
        process. Returns how many codes were restarted. Dead-code restart follows
        Dhariwal et al. 2020 (Jukebox) and Zeghidour et al. 2021 (SoundStream).
        """
        dead = (self.usage_ema < threshold / self.codebook_size).nonzero().squeeze(1)
        if dead.numel() == 0 or candidates.numel() == 0:
            return 0
        pick = torch.randint(0, candidates.shape[0], (dead.numel(),), generator=rng, device=rng.device)
        new = candidates[pick.to(candidates.device)].to(self.embedding.weight)
        # A little noise keeps restarted codes apart when candidates repeat.
        noise = torch.randn(new.shape, generator=rng, device=rng.device).to(new) * 1e-3 * new.norm(dim=-1, keepdim=True)
        self.embedding.weight[dead.to(self.embedding.weight.device)] = new + noise
        self.usage_ema[dead.to(self.usage_ema.device)] = 1.0 / self.codebook_size
        return int(dead.numel())
