"""Tokenizer training losses: pixel, LPIPS (local weights), PatchGAN."""

from tokenizers_vq.losses.gan import PatchDiscriminator, adaptive_weight, hinge_d_loss
from tokenizers_vq.losses.perceptual import LPIPS
from tokenizers_vq.losses.vq_loss import LossTerms, VQLoss

__all__ = ["LPIPS", "LossTerms", "PatchDiscriminator", "VQLoss", "adaptive_weight", "hinge_d_loss"]
