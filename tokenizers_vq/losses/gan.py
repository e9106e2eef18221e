"""Patch discriminator and hinge losses (Isola et al. 2017; Esser et al. 2021 "VQGAN")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """PatchGAN: stride-2 4x4 convs, then a 1-channel map of per-patch logits (B, 1, h, w).

    GroupNorm replaces VQGAN's BatchNorm so the discriminator behaves the same on one
    process or many and at any per-device batch size.
    """

    def __init__(self, *, base_channels: int = 64, num_layers: int = 3, norm_groups: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = base_channels
        for i in range(1, num_layers + 1):
            c_out = base_channels * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(norm_groups, c_out), c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, images: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, 1, h, w)
        return self.main(images)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """lambda = ||grad_last L_rec|| / (||grad_last L_gan|| + 1e-4) (VQGAN eq. 7), detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
