"""Reconstruction quality of a tokenizer on [-1, 1] images: PSNR and SSIM (Wang et al. 2004).

Here, below argen, because both tokenizer training (argen.training, the val/psnr it logs) and evaluation
(argen.eval.reconstruction) measure reconstructions with them, and neither of those peers imports the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [-1, 1], computed on the [0, 1] scale after clamping."""
    a = (x.float().clamp(-1, 1) + 1) / 2
    b = (y.float().clamp(-1, 1) + 1) / 2
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(x: Tensor, y: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of (B, 3, H, W) images in [-1, 1] on the [0, 1] scale, averaged over channels.

    11x11 Gaussian window (sigma 1.5) as in Wang et al. (and skimage with gaussian_weights),
    statistics over the valid region; K1 = 0.01, K2 = 0.03, data range 1.
    """
    a = (x.float().clamp(-1, 1) + 1) / 2
    b = (y.float().clamp(-1, 1) + 1) / 2
    c = a.shape[1]
    w = _gaussian_window(window, sigma, a.device).expand(c, 1, window, window)
    mu_a = F.conv2d(a, w, groups=c)
    mu_b = F.conv2d(b, w, groups=c)
    var_a = F.conv2d(a * a, w, groups=c) - mu_a**2
    var_b = F.conv2d(b * b, w, groups=c) - mu_b**2
    cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
