"""ContinuousTokenizer: continuous latents from a diffusers ``AutoencoderKL`` (the tokenizer of xAR, FlowAR and
MAR: "KL-16", 16 channels at stride 16, scale factor 0.2325; algorithms.md 4.2).

images (B, 3, H, W) in [-1, 1] -> the VAE's encoder -> a diagonal Gaussian posterior over a (C, h, w) latent ->
its mean (``latent="mean"``) or one draw (``latent="sample"``, from per-sample seeds) -> times
``scaling_factor`` -> tokens (B, h*w, C) in raster order. ``decode`` divides by the factor and runs the
VAE's decoder. A generator sees latents of roughly unit variance, as the official code arranges with
``posterior.sample() * 0.2325``.

The scale factor: a number from the config (0.2325 for MAR's KL-16, i.e. its latents' std is about 4.3),
or ``null`` = computed from data, ``1 / std`` of the unscaled latents of training images (of the posterior
means; with ``latent="sample"``, of the draws: the posterior variance is added to the second moment),
kept in the buffer ``latent_moments`` (mean, mean of squares) so the export carries it and its hash
depends on it. Two estimates write it: during training a running average over the training batches
(decay ``moment_decay``; what a mid-run checkpoint carries), and at the end of fit the tokenizer harness
replaces it with the exact moments of the final (EMA, exported) weights over a few hundred training
images (:class:`DataScaled`: :meth:`~ContinuousTokenizer.scale_statistics` and
:meth:`~ContinuousTokenizer.set_scale_statistics`). The tokenizer harness trains it (:meth:`reconstruct`) with
:class:`~tokenizers_vq.losses.kl_loss.KLLoss`; any pretrained ``AutoencoderKL`` loads from a local folder
with :meth:`ContinuousTokenizer.from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from tokenizers_vq.layout import TokenLayout

LATENTS = ("mean", "sample")


@dataclass
class KLReconstruction:
    """Training-time output of :meth:`ContinuousTokenizer.reconstruct`: images (B, 3, H, W) (unclamped),
    mean / logvar (B, C, h, w) of the posterior (unscaled); ``indices`` is None (no codebook)."""

    images: Tensor
    mean: Tensor
    logvar: Tensor
    indices: Tensor | None = None

    @property
    def latents(self) -> Tensor:
        return self.mean


@runtime_checkable
class DataScaled(Protocol):
    """A tokenizer whose latent scale factor is measured on training data: the tokenizer harness sums
    :meth:`scale_statistics` over a few hundred training images at the end of fit and hands the sum back."""

    def scale_statistics(self, images: Tensor) -> Tensor | None:
        """(sum, sum of squares, count) of the unscaled latents of ``images``, float64; None if the factor is fixed."""
        ...

    def set_scale_statistics(self, stats: Tensor) -> None:
        """Set the factor to 1 / std of the latents that ``stats`` (a sum of :meth:`scale_statistics`) describe."""
        ...


def _vae(**kwargs: Any) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**kwargs)


class ContinuousTokenizer(nn.Module):
    """image_size: the images' side; latent_channels: C; block_out_channels: the VAE's levels (f =
    2 ** (levels - 1)); layers_per_block / norm_num_groups: as diffusers'; scaling_factor: fixed, or None =
    computed from data (module docstring); latent: what :meth:`encode` returns, the posterior ``mean`` or a
    ``sample``; moment_decay: of the running latent moments; vae_config: a whole diffusers AutoencoderKL
    config instead of the sizes above (what :meth:`from_pretrained` records, so the export rebuilds it)."""

    quantize = None  # no codebook: the harness skips codebook statistics

    def __init__(self, *, image_size: int = 32, latent_channels: int = 4,
                 block_out_channels: list[int] | tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                 norm_num_groups: int = 8, scaling_factor: float | None = None, latent: str = "mean",
                 moment_decay: float = 0.99, vae_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"latent must be 'mean' or 'sample' (what encode returns), got {latent!r}")
        levels = len(block_out_channels)
        self.vae = _vae(**vae_config) if vae_config is not None else _vae(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, latent_channels=latent_channels, norm_num_groups=norm_num_groups,
            sample_size=image_size)
        self.image_size = int(image_size)
        self.latent, self.moment_decay = latent, float(moment_decay)
        self.downsample_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = self.image_size // self.downsample_factor
        self.channels = int(self.vae.config.latent_channels)
        self.layout = TokenLayout(kind="grid", shapes=((side, side),), vocab_size=None, channels=self.channels)
        self.fixed_scale = scaling_factor
        # (mean, mean of squares, batches seen) of the unscaled posterior means, for the data-derived factor
        self.register_buffer("latent_moments", torch.tensor([0.0, 1.0, 0.0]))

    @property
    def stochastic_encode(self) -> bool:
        """Whether :meth:`encode` draws (``latent="sample"``): it then takes per-sample seeds."""
        return self.latent == "sample"

    @property
    def encoding(self) -> str:
        """What the tokens are, as a code cache's manifest records it."""
        what = "posterior mean" if self.latent == "mean" else "posterior sample (per-sample seeds)"
        return f"{what} x scaling_factor {self.scaling_factor:.6g}"

    @property
    def scaling_factor(self) -> float:
        """The fixed factor, or 1 / std of the training latents (module docstring; 1 before any)."""
        if self.fixed_scale is not None:
            return float(self.fixed_scale)
        mean, square, seen = self.latent_moments.tolist()
        return 1.0 if seen == 0 else float(1.0 / max(square - mean * mean, 1e-12) ** 0.5)

    # ---- checks -----------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"this tokenizer was built for {self.image_size}x{self.image_size} images, got "
                             f"{tuple(images.shape[-2:])}: resize or crop them (data image_size)")

    def _posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.mean, dist.logvar.clamp(-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp

    # ---- training -----------------------------------------------------------------------------------
    def reconstruct(self, images: Tensor) -> KLReconstruction:
        """images -> reconstruction. In training: from a posterior sample (the reparameterisation trick; the
        VAE's own training path), and, with a data-derived factor, the running latent moments are updated. In
        eval mode (validation, reconstruction grids): from the posterior mean, deterministic."""
        self._check_images(images)
        mean, logvar = self._posterior(images)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        if self.training and self.fixed_scale is None:
            with torch.no_grad():
                m = mean.detach().float()
                step = torch.stack([m.mean(), self._second_moment(m, logvar.detach().float()).mean(),
                                    torch.ones((), device=m.device)])
                d = self.moment_decay if float(self.latent_moments[2]) > 0 else 0.0
                self.latent_moments.copy_(torch.cat([d * self.latent_moments[:2] + (1 - d) * step[:2],
                                                     self.latent_moments[2:] + 1]))
        return KLReconstruction(images=self.vae.decode(z).sample, mean=mean, logvar=logvar)

    @torch.no_grad()
    def scale_statistics(self, images: Tensor) -> Tensor | None:
        """(sum, sum of squares, count) of the unscaled latents ``encode`` returns for ``images`` (posterior means;
        for ``latent="sample"`` the second moment adds the posterior variance), float64, summable over batches and
        processes; None when the factor is fixed."""
        if self.fixed_scale is not None:
            return None
        self._check_images(images)
        mean, logvar = self._posterior(images)
        m = mean.double()
        return torch.stack([m.sum(), self._second_moment(m, logvar.double()).sum(),
                            torch.tensor(float(m.numel()), dtype=torch.float64, device=m.device)])

    def _second_moment(self, mean: Tensor, logvar: Tensor) -> Tensor:
        """E[z^2] per element of what encode returns: mean^2, plus the posterior variance for a draw."""
        return mean.pow(2) + logvar.exp() if self.latent == "sample" else mean.pow(2)

    def set_scale_statistics(self, stats: Tensor) -> None:
        """The data-derived factor becomes 1 / std of the latents that ``stats`` sums describe."""
        total, square, count = stats.double().tolist()
        if count <= 0:
            raise ValueError("no latents to measure the scale factor on")
        seen = max(float(self.latent_moments[2]), 1.0)
        self.latent_moments.copy_(torch.tensor([total / count, square / count, seen]))

    def last_layer(self) -> Tensor:
        """The decoder's output conv (the adaptive GAN weight's reference layer)."""
        return self.vae.decoder.conv_out.weight

    # ---- Tokenizer protocol ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor, seeds: Tensor | None = None) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> latents (B, h*w, C) float32 (raster order), scaled. A posterior
        sample draws row b's noise from ``seeds[b]`` alone (independent of its batch-mates)."""
        self._check_images(images)
        mean, logvar = self._posterior(images)
        z = mean
        if self.latent == "sample":
            if seeds is None:
                raise ValueError("latent='sample' draws from the posterior: pass per-sample seeds (argen-tokenize "
                                 "uses the dataset indices), or build the tokenizer with latent='mean'")
            noise = torch.stack([torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                                 for s in seeds.tolist()]).to(mean)
            z = mean + torch.exp(0.5 * logvar) * noise
        return (z.float() * self.scaling_factor).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def decode(self, tokens: Tensor, seeds: Tensor | None = None) -> Tensor:
        """latents (B, h*w, C) -> images (B, 3, H, W), roughly in [-1, 1]; deterministic (``seeds`` ignored)."""
        self.layout.check_tokens(tokens, owner="tokenizer")
        (h, w), b = self.layout.shapes[0], tokens.shape[0]
        if tokens.shape[1] != h * w:
            raise ValueError(f"expected {h * w} latents ({h}x{w} grid), got {tokens.shape[1]}")
        z = tokens.transpose(1, 2).reshape(b, self.channels, h, w) / self.scaling_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample

    # ---- pretrained VAEs ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, image_size: int, scaling_factor: float | None = None,
                        latent: str = "mean") -> ContinuousTokenizer:
        """Any diffusers ``AutoencoderKL`` saved in a local folder (``save_pretrained``: config.json and its
        weights), without the network; ``scaling_factor`` default: the folder's config (MAR's KL-16: 0.2325)."""
        from diffusers import AutoencoderKL

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"'{folder}' is not a diffusers AutoencoderKL folder: it needs config.json and "
                                    f"diffusion_pytorch_model.safetensors (write one with vae.save_pretrained(dir))")
        try:
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"could not load an AutoencoderKL from '{folder}': {e}") from e
        factor = scaling_factor if scaling_factor is not None else vae.config.get("scaling_factor")
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        tokenizer = cls(image_size=image_size, scaling_factor=factor, latent=latent, vae_config=config)
        tokenizer.vae.load_state_dict(vae.state_dict())
        return tokenizer

    def config_node(self) -> dict[str, Any]:
        """The export config that rebuilds this tokenizer (a pretrained VAE's whole config included)."""
        config = {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}
        return {"_target_": f"{type(self).__module__}.{type(self).__name__}", "image_size": self.image_size,
                "scaling_factor": self.fixed_scale, "latent": self.latent, "moment_decay": self.moment_decay,
                "vae_config": config}
