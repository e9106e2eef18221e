"""MultiScaleVQTokenizer: VAR's scale-residual VQ-VAE (algorithms.md sec. 1.2).

images (B, 3, H, W) in [-1, 1] -> encoder -> quant_conv (3x3) -> f (B, D, h, w)
-> :class:`MultiScaleQuantizer` (K scales, one codebook) -> f_hat -> post_quant_conv (3x3)
-> decoder. Tokens are every scale's indices flattened coarse to fine (a ``scales`` layout,
680 tokens for VAR's 1..16 scales, 130 for the tiny 1,2,3,4,6,8 preset).

The encoder and decoder are the VQ tokenizer's (LDM-style conv stacks, :mod:`tokenizers_vq.vq.blocks`).
VAR released only the trained VQ-VAE, not its training code; :meth:`reconstruct` is the training
path used by the tokenizer harness with VAR's VQ loss (see :class:`MultiScaleOutput`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tokenizers_vq.layout import TokenLayout, check_token_ids
from tokenizers_vq.msvq.quantizer import MultiScaleQuantizer
from tokenizers_vq.vq.blocks import conv_autoencoder
from tokenizers_vq.vq.model import Reconstruction


class MultiScaleVQTokenizer(nn.Module):
    """scales: token-map sides coarse to fine, the last equal to ``image_size / f`` with
    ``f = 2 ** (len(channel_multipliers) - 1)``; num_phi / phi_ratio: see :class:`MultiScaleQuantizer`.
    VAR's released VQ-VAE: image 256, ch 160, mult (1,1,2,2,4), 2 res blocks, z 32, 4096 codes of
    width 32, scales (1,2,3,4,5,6,8,10,13,16), num_phi 4, phi_ratio 0.5 (argen/configs/tokenizer/msvq_var.yaml)."""

    def __init__(
        self,
        *,
        image_size: int = 32,
        codebook_size: int = 1024,
        embed_dim: int = 32,
        scales: list[int] | tuple[int, ...] = (1, 2, 3, 4, 6, 8),
        num_phi: int = 4,
        phi_ratio: float = 0.5,
        base_channels: int = 32,
        channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 32,
        attention: bool = True,
        norm_groups: int = 8,
        dropout: float = 0.0,
        commitment_weight: float = 0.25,
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.downsample_factor = conv_autoencoder(
            image_size=image_size, base_channels=base_channels, channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks, z_channels=z_channels, attention=attention, norm_groups=norm_groups,
            dropout=dropout)
        side = image_size // self.downsample_factor
        scales = [int(s) for s in scales]
        if not scales or scales[-1] != side:
            raise ValueError(f"the last scale must equal the latent side {side} (= image_size {image_size} / "
                             f"{self.downsample_factor}), got scales {scales}")
        self.image_size = image_size
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 3, padding=1)
        self.quantize = MultiScaleQuantizer(codebook_size=codebook_size, embed_dim=embed_dim, scales=scales,
                                            num_phi=num_phi, phi_ratio=phi_ratio,
                                            commitment_weight=commitment_weight)
        self.layout = TokenLayout(kind="scales", shapes=tuple((s, s) for s in scales), vocab_size=codebook_size)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this scale-residual tokenizer was built for {self.image_size}x{self.image_size} "
                             f"images (its scales end at {self.quantize.side}), got {tuple(images.shape[-2:])}; "
                             f"resize or crop the images")

    def _check_tokens(self, tokens: Tensor) -> None:
        check_token_ids(tokens, self.layout.vocab_size, owner="tokenizer")

    # ---- training -----------------------------------------------------------------------------
    def reconstruct(self, images: Tensor) -> Reconstruction:
        """Training path: reconstruction, flattened indices (B, L) and VAR's VQ loss terms."""
        self._check_images(images)
        q = self.quantize(self.quant_conv(self.encoder(images)))
        recon = self.decoder(self.post_quant_conv(q.quantized))
        indices = torch.cat([i.flatten(1) for i in q.indices], dim=1)  # (B, L) coarse to fine
        return Reconstruction(images=recon, indices=indices, latents=q.residuals, codebook_loss=q.codebook_loss,
                              commitment_loss=q.commitment_loss, entropy_loss=q.codebook_loss.new_zeros(()))

    def last_layer(self) -> Tensor:
        return self.decoder.conv_out.weight

    # ---- Tokenizer protocol -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> tokens (B, L) int64, all scales coarse to fine."""
        self._check_images(images)
        q = self.quantize(self.quant_conv(self.encoder(images)))
        return torch.cat([i.flatten(1) for i in q.indices], dim=1)

    @torch.no_grad()
    def decode_fhat(self, f_hat: Tensor) -> Tensor:
        """f_hat (B, D, h, w) -> images (B, 3, H, W) (VAR ``fhat_to_img``, unclamped)."""
        return self.decoder(self.post_quant_conv(f_hat.to(self.post_quant_conv.weight.dtype)))

    @torch.no_grad()
    def decode(self, tokens: Tensor, seeds: Tensor | None = None) -> Tensor:
        """tokens (B, L) -> images (B, 3, H, W): rebuild f_hat from every scale, then decode.
        Deterministic: ``seeds`` (the protocol's, for stochastic decoders) are ignored."""
        self._check_tokens(tokens)
        return self.decode_fhat(self.quantize.fhat_from_tokens(tokens.long()))

    def codebook(self) -> Tensor:
        """(V, D) codes (no normalisation: VAR looks up in plain L2)."""
        return self.quantize.embedding.weight.float()

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, L) -> (B, L, D) code vectors (before upsampling and phi)."""
        return self.quantize.embedding(tokens.long())
