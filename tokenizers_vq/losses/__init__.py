"""Tokenizer training losses: pixel, KL (continuous tokenizers), LPIPS (local weights), PatchGAN."""

from tokenizers_vq.losses.flow_loss import FlowTokenizerLoss
from tokenizers_vq.losses.gan import PatchDiscriminator, adaptive_weight, hinge_d_loss
from tokenizers_vq.losses.kl_loss import KLLoss, gaussian_kl
from tokenizers_vq.losses.perceptual import LPIPS
from tokenizers_vq.losses.vq_loss import LossTerms, VQLoss

__all__ = ["FlowTokenizerLoss", "LPIPS", "KLLoss", "LossTerms", "PatchDiscriminator", "VQLoss", "adaptive_weight", "gaussian_kl", "hinge_d_loss"]
