"""Test helpers that build stand-in local weight files (random values, the real keys and shapes)."""

from __future__ import annotations

from pathlib import Path

import torch

from tokenizers_vq.losses.perceptual import _CHANNELS, _vgg16_features


def fake_lpips_files(directory: Path) -> tuple[Path, Path]:
    """torchvision-style VGG16 ``features.*`` weights and lpips-style ``lin{k}.model.1.weight`` heads."""
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    features = _vgg16_features()
    vgg = {}
    for k, v in features.state_dict().items():
        vgg[f"features.{k}"] = torch.randn(v.shape, generator=g) * 0.05
    backbone = directory / "vgg16-397923af.pth"
    torch.save(vgg, backbone)
    head = directory / "lpips_vgg.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(_CHANNELS)}, head)
    return backbone, head
