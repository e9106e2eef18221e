"""Convolutional building blocks of the VQGAN / LlamaGen encoder and decoder.

Module names follow LlamaGen's ``tokenizer/tokenizer_image/vq_model.py`` (``conv_blocks``,
``res``, ``attn``, ``downsample``, ``mid``, ``norm_out``...) so that an official VQ-16
state dict maps onto these modules key for key (research/algorithms.md sec. 2.2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups != 0:
        raise ValueError(f"{channels} channels are not divisible into {groups} GroupNorm groups; "
                         f"set norm_groups to a divisor of every level's width")
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv -> norm -> swish -> dropout -> conv, plus a (1x1) shortcut."""

    def __init__(self, *, in_channels: int, out_channels: int, norm_groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v (VQGAN)."""

    def __init__(self, *, channels: int, norm_groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).flatten(2).transpose(1, 2)  # (B, HW, C)
        k = self.k(y).flatten(2).transpose(1, 2)
        v = self.v(y).flatten(2).transpose(1, 2)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, HW, C)
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with VQGAN's asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ``res`` blocks, optional ``attn`` blocks, optional resampler."""

    def __init__(self, *, channels_in: int, channels_out: int, num_blocks: int, attention: bool,
                 norm_groups: int, dropout: float, resample: nn.Module | None, resample_name: str) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        for i in range(num_blocks):
            self.res.append(ResnetBlock(in_channels=channels_in if i == 0 else channels_out,
                                        out_channels=channels_out, norm_groups=norm_groups, dropout=dropout))
            if attention:
                self.attn.append(AttnBlock(channels=channels_out, norm_groups=norm_groups))
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name, None)
        return resample(x) if resample is not None else x


def mid_block(channels: int, *, attention: bool, norm_groups: int, dropout: float) -> nn.ModuleList:
    """res -> attn -> res at the lowest resolution (``mid.{0,1,2}`` in LlamaGen)."""
    middle: nn.Module = AttnBlock(channels=channels, norm_groups=norm_groups) if attention else nn.Identity()
    return nn.ModuleList([
        ResnetBlock(in_channels=channels, out_channels=channels, norm_groups=norm_groups, dropout=dropout),
        middle,
        ResnetBlock(in_channels=channels, out_channels=channels, norm_groups=norm_groups, dropout=dropout),
    ])


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, z_channels, H/f, W/f) with f = 2 ** (len(channel_multipliers) - 1)."""

    def __init__(self, *, base_channels: int, channel_multipliers: list[int], num_res_blocks: int,
                 z_channels: int, attention: bool, norm_groups: int, dropout: float) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_multipliers]
        self.conv_blocks = nn.ModuleList()
        c_in = base_channels
        for i, c_out in enumerate(widths):
            last = i == len(widths) - 1
            self.conv_blocks.append(Level(
                channels_in=c_in, channels_out=c_out, num_blocks=num_res_blocks,
                attention=attention and last, norm_groups=norm_groups, dropout=dropout,
                resample=None if last else Downsample(c_out), resample_name="downsample"))
            c_in = c_out
        self.mid = mid_block(c_in, attention=attention, norm_groups=norm_groups, dropout=dropout)
        self.norm_out = group_norm(c_in, norm_groups)
        self.conv_out = nn.Conv2d(c_in, z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PatchEncoder(nn.Module):
    """(B, 3, H, W) -> (B, z_channels, H/f, W/f), each latent a function of its own f x f patch only: the
    patch's pixels (space-to-depth) through a residual MLP written as 1x1 convs, without normalisation.

    The conv encoder's 3x3 convs, GroupNorm (statistics over the whole image) and attention make a token's
    latent depend on the rest of the image, so identical patches land on different codes ("synonyms"): on
    the shapes world the grey background, 78% of the tokens, spreads over hundreds of codes, and the
    generator must learn to predict which one from context it has not seen. A patch-local encoder gives
    identical patches one code, so a generator only pays for content. The decoder keeps its context.
    """

    def __init__(self, *, factor: int, hidden: int, z_channels: int, depth: int = 2) -> None:
        super().__init__()
        if factor < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"factor, hidden and depth must be >= 1, got {factor}, {hidden}, {depth}")
        self.factor = factor
        self.conv_in = nn.Conv2d(3 * factor * factor, hidden, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                                  nn.Conv2d(hidden, hidden, 1)) for _ in range(depth))
        self.conv_out = nn.Conv2d(hidden, z_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(F.pixel_unshuffle(x, self.factor))
        for block in self.blocks:
            h = h + block(h)
        return self.conv_out(F.silu(h))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, 3, h*f, w*f). ``conv_blocks[0]`` is the lowest resolution,
    as in LlamaGen (VAR's decoder lists levels the other way round)."""

    def __init__(self, *, base_channels: int, channel_multipliers: list[int], num_res_blocks: int,
                 z_channels: int, attention: bool, norm_groups: int, dropout: float) -> None:
        super().__init__()
        widths = [base_channels * m for m in reversed(channel_multipliers)]
        self.conv_in = nn.Conv2d(z_channels, widths[0], 3, padding=1)
        self.mid = mid_block(widths[0], attention=attention, norm_groups=norm_groups, dropout=dropout)
        self.conv_blocks = nn.ModuleList()
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            last = i == len(widths) - 1
            self.conv_blocks.append(Level(
                channels_in=c_in, channels_out=c_out, num_blocks=num_res_blocks + 1,
                attention=attention and i == 0, norm_groups=norm_groups, dropout=dropout,
                resample=None if last else Upsample(c_out), resample_name="upsample"))
            c_in = c_out
        self.norm_out = group_norm(c_in, norm_groups)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def conv_autoencoder(*, image_size: int, base_channels: int, channel_multipliers: list[int] | tuple[int, ...],
                     num_res_blocks: int, z_channels: int, attention: bool, norm_groups: int,
                     dropout: float, encoder: str = "conv") -> tuple[nn.Module, Decoder, int]:
    """The encoder/decoder pair every conv tokenizer here shares, and its downsampling factor
    ``2 ** (len(channel_multipliers) - 1)``; the image size must be a multiple of it. ``encoder``: ``conv``
    (LlamaGen's / VAR's) or ``patch`` (:class:`PatchEncoder`, hidden width 4 x ``base_channels``)."""
    if encoder not in ("conv", "patch"):
        raise ValueError(f"encoder must be 'conv' or 'patch', got {encoder!r}")
    multipliers = list(channel_multipliers)
    if not multipliers:
        raise ValueError("channel_multipliers must list at least one level")
    factor = 2 ** (len(multipliers) - 1)
    if image_size % factor != 0:
        raise ValueError(f"image_size {image_size} is not divisible by the downsampling factor {factor} "
                         f"(= 2 ** (len(channel_multipliers) - 1)); use an image size that is a multiple of "
                         f"{factor} or change channel_multipliers")
    conv = dict(base_channels=base_channels, channel_multipliers=multipliers, num_res_blocks=num_res_blocks,
                z_channels=z_channels, attention=attention, norm_groups=norm_groups, dropout=dropout)
    enc: nn.Module = Encoder(**conv) if encoder == "conv" else PatchEncoder(
        factor=factor, hidden=4 * base_channels, z_channels=z_channels, depth=max(num_res_blocks, 1) + 1)
    return enc, Decoder(**conv), factor
