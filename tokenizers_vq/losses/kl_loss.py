"""The objective of a continuous (KL) tokenizer: reconstruction + ``kl_weight`` KL(q(z|x) || N(0, I)), with the
optional LPIPS and PatchGAN terms of :class:`~tokenizers_vq.losses.vq_loss.VQLoss` (the same code).

KL of a diagonal Gaussian: ``0.5 (mu^2 + sigma^2 - 1 - log sigma^2)``, averaged over latent elements and the
batch (the reconstruction is averaged over pixel values, so ``kl_weight`` compares means). LDM's KL-f16 (MAR's
KL-16) sums both and uses 1e-6, i.e. about 1e-7 per element at 256 px; our tiny default, 1e-4 per element,
keeps the latent smoother for the generator at no cost in PSNR on the embedded worlds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tokenizers_vq.losses.vq_loss import VQLoss


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()


class KLLoss(VQLoss):
    """kl_weight: weight of :func:`gaussian_kl`; the rest as :class:`VQLoss` (``codebook_weight`` unused)."""

    def __init__(self, *, kl_weight: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.kl_weight = kl_weight

    def latent_terms(self, rec: Any) -> tuple[Tensor, dict[str, Tensor]]:
        kl = gaussian_kl(rec.mean, rec.logvar)
        std = torch.exp(0.5 * rec.logvar.detach().float()).mean()
        return self.kl_weight * kl, {"kl": kl.detach(), "posterior_std": std}
