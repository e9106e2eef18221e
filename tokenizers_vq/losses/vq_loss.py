"""The VQ tokenizer objective: reconstruction + codebook terms, optional LPIPS and PatchGAN.

L_G = w_rec * ||x - x_hat||_p + w_cb * (L_codebook + L_commit + L_entropy)
      + w_lpips * LPIPS(x, x_hat) + [step >= disc_start] * w_disc * lambda * (-D(x_hat))
with lambda the adaptive weight of VQGAN (eq. 7) and D trained with the hinge loss.
LlamaGen VQ-16 defaults: L2, LPIPS 1.0, disc weight 0.5 from 20k steps, codebook weight 1.0
(research/algorithms.md sec. 2.2). The tiny presets switch LPIPS and the GAN off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokenizers_vq.losses.gan import PatchDiscriminator, adaptive_weight, hinge_d_loss
from tokenizers_vq.losses.perceptual import LPIPS
from tokenizers_vq.vq.model import Reconstruction


@dataclass
class LossTerms:
    """loss: scalar to backpropagate; logs: detached scalars for the logger."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class VQLoss(nn.Module):
    """Objective of the grid VQ tokenizer; owns the (optional) discriminator and LPIPS net."""

    def __init__(
        self,
        *,
        reconstruction: Literal["l1", "l2"] = "l2",
        reconstruction_weight: float = 1.0,
        codebook_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        perceptual_backbone_path: str | None = None,
        perceptual_head_path: str | None = None,
        disc_weight: float = 0.0,
        disc_start: int = 20_000,
        disc_adaptive_weight: bool = True,
        disc_base_channels: int = 64,
        disc_num_layers: int = 3,
    ) -> None:
        super().__init__()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
        self.reconstruction = reconstruction
        self.reconstruction_weight = reconstruction_weight
        self.codebook_weight = codebook_weight
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.disc_adaptive_weight = disc_adaptive_weight
        self.perceptual: LPIPS | None = None
        if perceptual_weight > 0:
            if not perceptual_backbone_path or not perceptual_head_path:
                raise ValueError("perceptual_weight > 0 needs perceptual_backbone_path (torchvision VGG16 weights) "
                                 "and perceptual_head_path (LPIPS vgg.pth): set both, or perceptual_weight=0")
            self.perceptual = LPIPS(backbone_path=perceptual_backbone_path, head_path=perceptual_head_path)
        self.discriminator: PatchDiscriminator | None = None
        if disc_weight > 0:
            self.discriminator = PatchDiscriminator(base_channels=disc_base_channels, num_layers=disc_num_layers)

    @property
    def uses_discriminator(self) -> bool:
        return self.discriminator is not None

    def disc_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def _pixel_loss(self, images: Tensor, recon: Tensor) -> Tensor:
        fn = F.l1_loss if self.reconstruction == "l1" else F.mse_loss
        return fn(recon.float(), images.float())

    def latent_terms(self, rec: Reconstruction) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted latent-side terms and their logs: the codebook, commitment and entropy losses."""
        quant = rec.codebook_loss + rec.commitment_loss + rec.entropy_loss
        return self.codebook_weight * quant, {"codebook": rec.codebook_loss.detach(),
                                              "commit": rec.commitment_loss.detach(),
                                              "entropy": rec.entropy_loss.detach()}

    def generator_loss(self, images: Tensor, rec: Reconstruction, *, step: int, last_layer: Tensor) -> LossTerms:
        """images, rec.images: (B, 3, H, W) in [-1, 1]; ``step`` is the global optimisation step."""
        pixel = self._pixel_loss(images, rec.images)
        rec_total = self.reconstruction_weight * pixel
        latent, logs = self.latent_terms(rec)
        logs["rec"] = pixel.detach()
        if self.perceptual is not None:
            lp = self.perceptual(images.float(), rec.images.float()).mean()
            rec_total = rec_total + self.perceptual_weight * lp
            logs["lpips"] = lp.detach()
        loss = rec_total + latent
        if self.disc_active(step):
            assert self.discriminator is not None
            gan = -self.discriminator(rec.images.float()).mean()
            weight = torch.ones((), device=gan.device)
            if self.disc_adaptive_weight and torch.is_grad_enabled():
                weight = adaptive_weight(rec_total, gan, last_layer)
            loss = loss + self.disc_weight * weight * gan
            logs.update(gan=gan.detach(), disc_lambda=weight)
        logs["loss"] = loss.detach()
        return LossTerms(loss=loss, logs=logs)

    def discriminator_loss(self, images: Tensor, recon: Tensor) -> LossTerms:
        """Hinge loss of the discriminator on real ``images`` vs detached ``recon``."""
        if self.discriminator is None:
            raise RuntimeError("discriminator_loss called but the discriminator is disabled (disc_weight=0)")
        real = self.discriminator(images.float())
        fake = self.discriminator(recon.detach().float())
        loss = hinge_d_loss(real, fake)
        return LossTerms(loss=loss, logs={"disc": loss.detach(), "logits_real": real.mean().detach(),
                                          "logits_fake": fake.mean().detach()})
