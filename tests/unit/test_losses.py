"""Tokenizer losses: pixel + codebook terms, LPIPS from local files, PatchGAN with adaptive weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import fake_lpips_files
from tokenizers_vq.losses import LPIPS, VQLoss, adaptive_weight, hinge_d_loss
from tokenizers_vq.vq import VQTokenizer


def tiny() -> VQTokenizer:
    return VQTokenizer(image_size=32, codebook_size=16, embed_dim=4, base_channels=8, channel_multipliers=[1, 2],
                       z_channels=8, norm_groups=4, attention=False)


def test_pixel_and_codebook_terms() -> None:
    torch.manual_seed(0)
    model, x = tiny(), torch.rand(2, 3, 32, 32) * 2 - 1
    rec = model.reconstruct(x)
    terms = VQLoss(reconstruction="l1", codebook_weight=2.0).generator_loss(x, rec, step=0, last_layer=model.last_layer())
    expected = (rec.images - x).abs().mean() + 2.0 * (rec.codebook_loss + rec.commitment_loss)
    torch.testing.assert_close(terms.loss, expected)
    assert set(terms.logs) >= {"rec", "codebook", "commit", "loss"}


def test_lpips_needs_local_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        LPIPS(backbone_path=str(tmp_path / "vgg16-397923af.pth"), head_path=str(tmp_path / "vgg.pth"))
    with pytest.raises(ValueError, match="perceptual_backbone_path"):
        VQLoss(perceptual_weight=1.0)


def test_lpips_from_local_files(tmp_path: Path) -> None:
    backbone, head = fake_lpips_files(tmp_path)
    lpips = LPIPS(backbone_path=str(backbone), head_path=str(head))
    assert all(not p.requires_grad for p in lpips.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-7)
    assert (lpips(x, y) > 0).all()
    lpips.train()
    assert not lpips.training  # stays frozen in eval mode


def test_gan_terms_start_at_disc_start() -> None:
    torch.manual_seed(0)
    model, x = tiny(), torch.rand(2, 3, 32, 32) * 2 - 1
    loss = VQLoss(disc_weight=0.5, disc_start=10, disc_base_channels=8, disc_num_layers=2)
    rec = model.reconstruct(x)
    before = loss.generator_loss(x, rec, step=9, last_layer=model.last_layer())
    assert "gan" not in before.logs
    after = loss.generator_loss(x, rec, step=10, last_layer=model.last_layer())
    lam = after.logs["disc_lambda"]
    torch.testing.assert_close(after.loss, before.loss + 0.5 * lam * after.logs["gan"])
    d = loss.discriminator_loss(x, rec.images)
    assert d.loss > 0 and "logits_real" in d.logs


def test_adaptive_weight_is_gradient_norm_ratio() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    rec, gan = (3.0 * w).sum(), (w * w).sum()  # grads (3, 3) and (2, 4)
    lam = adaptive_weight(rec, gan, w)
    assert lam.item() == pytest.approx((18**0.5) / (20**0.5 + 1e-4), rel=1e-6)


def test_hinge_loss_values() -> None:
    assert hinge_d_loss(torch.tensor([2.0]), torch.tensor([-2.0])).item() == 0.0
    assert hinge_d_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(1.0)
