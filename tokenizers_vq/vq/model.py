"""VQTokenizer: a 2-D grid VQ tokenizer of the LlamaGen VQ-16 class.

images (B, 3, H, W) in [-1, 1] -> encoder -> quant_conv (z_channels -> embed_dim)
-> l2-normalised nearest code -> post_quant_conv (embed_dim -> z_channels) -> decoder.
Tokens are the code indices in raster order over the (H/f, W/f) grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tokenizers_vq.layout import TokenLayout, check_token_ids
from tokenizers_vq.vq.blocks import conv_autoencoder
from tokenizers_vq.vq.quantizer import VectorQuantizer


@dataclass
class Reconstruction:
    """Training-time output of :meth:`VQTokenizer.reconstruct`.

    images: (B, 3, H, W) reconstruction (unclamped); indices: (B, h, w);
    latents: (B, D, h, w) encoder output before quantisation (dead-code candidates).
    """

    images: Tensor
    indices: Tensor
    latents: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    entropy_loss: Tensor


class VQTokenizer(nn.Module):
    """Conv encoder/decoder with a factorised, l2-normalised codebook.

    The downsampling factor is ``2 ** (len(channel_multipliers) - 1)``: VQ-16 uses
    ``[1, 1, 2, 2, 4]`` (f = 16), a 32-px tiny preset ``[1, 2, 2]`` (f = 4). ``encoder="patch"`` swaps the
    conv encoder for a patch-local one (:class:`~tokenizers_vq.vq.blocks.PatchEncoder`: identical patches
    get one code); official LlamaGen weights use the conv encoder.
    """

    def __init__(
        self,
        *,
        image_size: int = 32,
        codebook_size: int = 1024,
        embed_dim: int = 8,
        base_channels: int = 64,
        channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 64,
        attention: bool = True,
        norm_groups: int = 32,
        dropout: float = 0.0,
        l2_normalize: bool = True,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        encoder: str = "conv",
    ) -> None:
        super().__init__()
        self.encoder, self.decoder, self.downsample_factor = conv_autoencoder(
            image_size=image_size, base_channels=base_channels, channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks, z_channels=z_channels, attention=attention, norm_groups=norm_groups,
            dropout=dropout, encoder=encoder)
        self.image_size = image_size
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.quantize = VectorQuantizer(
            codebook_size=codebook_size, embed_dim=embed_dim, l2_normalize=l2_normalize,
            commitment_weight=commitment_weight, entropy_weight=entropy_weight,
            entropy_temperature=entropy_temperature)
        side = image_size // self.downsample_factor
        self.layout = TokenLayout(kind="grid", shapes=((side, side),), vocab_size=codebook_size)

    # ---- checks -------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.downsample_factor or w % self.downsample_factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the tokenizer's downsampling factor "
                             f"{self.downsample_factor}; resize or crop images to a multiple of it "
                             f"(this tokenizer was built for {self.image_size}x{self.image_size})")

    def _grid(self, length: int) -> tuple[int, int]:
        h, w = self.layout.shapes[0]
        if length != h * w:
            raise ValueError(f"expected {h * w} tokens ({h}x{w} grid), got {length}")
        return h, w

    # ---- training -----------------------------------------------------------------------
    def reconstruct(self, images: Tensor) -> Reconstruction:
        """images (B, 3, H, W) -> reconstruction with the quantiser losses (training path)."""
        self._check_images(images)
        latents = self.quant_conv(self.encoder(images))  # (B, D, h, w)
        q = self.quantize(latents)
        recon = self.decoder(self.post_quant_conv(q.quantized))  # (B, 3, H, W)
        return Reconstruction(images=recon, indices=q.indices, latents=latents, codebook_loss=q.codebook_loss,
                              commitment_loss=q.commitment_loss, entropy_loss=q.entropy_loss)

    def last_layer(self) -> Tensor:
        """Weight of the decoder's output conv, for the adaptive GAN weight (Esser et al. 2021, eq. 7)."""
        return self.decoder.conv_out.weight

    # ---- Tokenizer protocol ---------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> tokens (B, L) int64 in raster order."""
        self._check_images(images)
        q = self.quantize(self.quant_conv(self.encoder(images)))
        return q.indices.flatten(1)

    @torch.no_grad()
    def decode(self, tokens: Tensor, seeds: Tensor | None = None) -> Tensor:
        """tokens (B, L) int64 -> images (B, 3, H, W), roughly in [-1, 1].
        Deterministic: ``seeds`` (the protocol's, for stochastic decoders) are ignored."""
        check_token_ids(tokens, self.layout.vocab_size, owner="tokenizer")
        h, w = self._grid(tokens.shape[1])
        codes = self.embed(tokens.long())  # (B, L, D)
        z = codes.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # (B, D, h, w)
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))

    def codebook(self) -> Tensor:
        """(V, D) l2-normalised codes."""
        return self.quantize.codebook()

    def embed(self, tokens: Tensor) -> Tensor:
        """(B, L) -> (B, L, D) code vectors."""
        return self.quantize.lookup(tokens.long())
