"""FlexTok (Bachmann et al., ICML 2025; apple/ml-flextok): images -> a 1D sequence of K discrete register
tokens of flexible length, decoded by a rectified-flow transformer from any prefix of k = 1..K tokens.

Encoder: patchify the latent (a VAE latent, or the pixels themselves for the tiny presets: ``vae_config``
None) p x p, project, add a fixed 2D sin-cos embedding, append K learned registers and run one transformer
(``register_mask='causal'``: patches see patches, register i sees every patch and registers <= i, the
official ``causal_last`` mask; ``'full'``: no mask); the output registers are normalised (affine-free
LayerNorm) and projected to len(levels) dims, then FSQ-quantized (implicit codebook prod(levels)).

Decoder (a velocity model): the quantized registers are projected to the width, registers >= keep_k are
replaced by a learned mask token (nested dropout: keep_k drawn per image in training, ``'uniform'`` over
1..K or ``'pow2'`` over {1, 2, 4, .., K}), a learned null token replaces the whole sequence for the
unconditional branch (probability ``cond_dropout`` in training), a learned register position embedding is
added; the noised latent is patchified and embedded like the encoder's; one transformer with adaLN-zero
time conditioning, separate for the patch and the register segment, runs over [patches, registers]; an
adaLN head maps the patch tokens back to latent patches: v ~ eps - x.

Training (:meth:`reconstruct`): rectified flow, ``x_t = (1 - t) x + t eps``, t logit-normal
(``MinRFNoiseModule(ln=True)``), loss ``|v - (eps - x)|^2``. Decoding (:meth:`decode`): Euler from t = 1 to
0 over ``decode_steps`` steps, with CFG or APG (adaptive projected guidance: momentum -0.5, norm threshold
2.5, eta 0) at ``guidance_scale``; every image's noise comes from its own seed.

Deviations from the official code, each deliberate: dense batches instead of packed FlexAttention
sequences (the same function); no REPA loss (it needs DINOv2-L features, not available offline); the
decoder's module order (projection, nested dropout, null condition, register positions) is reconstructed
from the released code, whose decoder config lives only in the checkpoints' metadata - the converter
(:mod:`tokenizers_vq.flextok.official`) reads that config and refuses a layout it does not recognise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tokenizers_vq.flextok.blocks import Block, TimestepEmbedder, layer_norm, modulate, sincos_2d
from tokenizers_vq.flextok.fsq import FSQ
from tokenizers_vq.layout import TokenLayout, check_token_ids

REGISTER_MASKS = ("causal", "full")
KEEP_MODES = ("uniform", "pow2")
GUIDANCE = ("cfg", "apg")


@dataclass
class FlowReconstruction:
    """Training-time output of :meth:`FlexTokTokenizer.reconstruct`.

    images: the one-step estimate of the clean image ``x_t - t v`` (for PSNR in the progress bar; in eval
    mode the full Euler decode); velocity / target: (B, C, h, w) predicted and true ``eps - x``;
    indices (B, K) and latents (B, K, D) the FSQ tokens and codes; keep_k (B,) the kept prefix lengths."""

    images: Tensor
    indices: Tensor
    latents: Tensor
    velocity: Tensor | None = None
    target: Tensor | None = None
    keep_k: Tensor | None = None
    t: Tensor | None = None


def _continuous_vae(path: str, image_size: int) -> tuple[nn.Module, float]:
    """The AutoencoderKL and latent scale factor of an exported argen continuous tokenizer (experiment=shapes_kl)."""
    from tokenizers_vq.io import load_pretrained

    tok = load_pretrained(path)
    vae = getattr(tok, "vae", None)
    if vae is None or not hasattr(tok, "scaling_factor"):
        raise ValueError(f"vae_path '{path}' is not an exported continuous (AutoencoderKL) tokenizer; train one with "
                         f"argen-train experiment=shapes_kl")
    if int(getattr(tok, "image_size", image_size)) != image_size:
        raise ValueError(f"vae_path '{path}' was trained on {tok.image_size} px images, FlexTok is set to {image_size}")
    return vae, float(tok.scaling_factor)


def _powers_of_two(n: int) -> list[int]:
    return [1 << i for i in range(n.bit_length()) if (1 << i) <= n]


class FlexTokTokenizer(nn.Module):
    """See the module docstring. image_size: pixels; patch_size: patch of the (VAE or pixel) latent;
    vae_config: diffusers ``AutoencoderKL`` kwargs (None: pixel space), scaling_factor its latent scale;
    dim / head_dim / mlp_ratio / encoder_depth / decoder_depth: the two transformers; num_registers: K;
    levels: FSQ levels; register_mask: 'causal' | 'full'; keep_k: 'uniform' | 'pow2'; cond_dropout:
    training probability of the null condition; decode_steps / guidance_scale / guidance ('cfg' | 'apg'):
    decoding defaults (:meth:`decode` takes overrides); max_timestep: the time embedder's t range;
    time_mean: location of the logit-normal training t (official 0; > 0 trains more at high noise, where only
    the registers tell the decoder what to draw); zero_init_encoder_head: the official zero init of the
    register projection (False: Xavier, codes that differ from step 0)."""

    def __init__(self, *, image_size: int = 32, patch_size: int = 4, vae_config: dict[str, Any] | None = None,
                 vae_path: str | None = None, scaling_factor: float = 1.0, dim: int = 128, head_dim: int = 32, mlp_ratio: float = 4.0,
                 encoder_depth: int = 3, decoder_depth: int = 4, num_registers: int = 32,
                 levels: list[int] | tuple[int, ...] = (8, 8, 8, 5, 5, 5), register_mask: str = "causal",
                 keep_k: str = "uniform", cond_dropout: float = 0.1, drop_quant_p: float = 0.0,
                 decode_steps: int = 25, guidance_scale: float = 1.0, guidance: str = "cfg",
                 max_timestep: float = 1.0, time_mean: float = 0.0, zero_init_encoder_head: bool = True) -> None:
        super().__init__()
        settings = dict(locals())
        if register_mask not in REGISTER_MASKS:
            raise ValueError(f"register_mask must be one of {REGISTER_MASKS}, got {register_mask!r}")
        if keep_k not in KEEP_MODES:
            raise ValueError(f"keep_k must be one of {KEEP_MODES}, got {keep_k!r}")
        if guidance not in GUIDANCE:
            raise ValueError(f"guidance must be one of {GUIDANCE}, got {guidance!r}")
        if keep_k == "pow2" and num_registers & (num_registers - 1):
            raise ValueError(f"keep_k='pow2' needs a power-of-two num_registers, got {num_registers}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        if decode_steps < 1:
            raise ValueError(f"decode_steps must be >= 1, got {decode_steps}")
        self.image_size, self.patch_size = int(image_size), int(patch_size)
        pretrained_vae = None
        if vae_path is not None:
            if vae_config is not None:
                raise ValueError("give vae_path (an exported argen continuous tokenizer) or vae_config, not both")
            pretrained_vae, scaling_factor = _continuous_vae(vae_path, self.image_size)
            vae_config = {k: v for k, v in dict(pretrained_vae.config).items() if not k.startswith("_")}
        self.vae_config = dict(vae_config) if vae_config is not None else None
        self.scaling_factor = float(scaling_factor)
        if self.vae_config is None:
            self.vae = None
            self.channels, factor = 3, 1
        else:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL(**self.vae_config)
            if pretrained_vae is not None:
                self.vae.load_state_dict(pretrained_vae.state_dict())
            self.vae.requires_grad_(False)  # frozen, as the official StableDiffusionVAE in FlexTok training
            self.channels = int(self.vae.config.latent_channels)
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if self.image_size % (factor * self.patch_size):
            raise ValueError(f"image_size {image_size} is not divisible by the latent factor {factor} x patch_size "
                             f"{patch_size}")
        self.latent_size = self.image_size // factor
        self.grid = self.latent_size // self.patch_size
        self.num_patches = self.grid * self.grid
        self.num_registers = int(num_registers)
        self.dim = int(dim)
        self.register_mask, self.keep_k_mode = register_mask, keep_k
        self.cond_dropout = float(cond_dropout)
        self.time_mean, self.zero_init_encoder_head = float(time_mean), bool(zero_init_encoder_head)
        self.decode_steps, self.guidance_scale, self.guidance = int(decode_steps), float(guidance_scale), guidance
        patch_dim = self.channels * self.patch_size ** 2

        self.fsq = FSQ(levels, drop_quant_p=drop_quant_p)
        # encoder
        self.enc_patch = nn.Linear(patch_dim, dim)
        self.enc_posemb = nn.Parameter(sincos_2d(self.grid, self.grid, dim), requires_grad=False)
        self.registers = nn.Parameter(torch.empty(self.num_registers, dim))
        self.enc_blocks = nn.ModuleList(Block(dim, head_dim, mlp_ratio) for _ in range(encoder_depth))
        self.enc_out = nn.Linear(dim, self.fsq.dim)
        # decoder
        self.dec_registers_in = nn.Linear(self.fsq.dim, dim)
        self.mask_token = nn.Parameter(torch.empty(dim))
        self.null_token = nn.Parameter(torch.empty(dim))
        self.dec_register_posemb = nn.Parameter(torch.empty(self.num_registers, dim))
        self.dec_patch = nn.Linear(patch_dim, dim)
        self.dec_posemb = nn.Parameter(sincos_2d(self.grid, self.grid, dim), requires_grad=False)
        self.time_embed = TimestepEmbedder(dim, max_timestep=max_timestep)
        self.dec_blocks = nn.ModuleList(Block(dim, head_dim, mlp_ratio, segments=2) for _ in range(decoder_depth))
        self.head_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.head = nn.Linear(dim, patch_dim)
        self._init_weights()
        self.register_buffer("_encoder_mask", self._build_encoder_mask(), persistent=False)
        settings = {k: v for k, v in settings.items() if k not in ("self", "__class__", "vae_path")}
        settings.update(vae_config=self.vae_config, scaling_factor=self.scaling_factor, levels=list(self.fsq.levels))
        self.settings = settings  # what rebuilds this model (a pretrained VAE by its architecture, not its folder)

    def config_node(self) -> dict[str, Any]:
        """The export config that rebuilds this tokenizer (``scripts/convert_flextok.py`` writes it)."""
        return {"_target_": "tokenizers_vq.flextok.FlexTokTokenizer", **self.settings}

    def export_config(self, node: dict[str, Any]) -> dict[str, Any]:
        """The export's config: ``vae_path`` replaced by the VAE's architecture (its weights are in the state dict),
        so an exported FlexTok loads without the folder it was trained from."""
        node = dict(node)
        if node.pop("vae_path", None) is not None:
            node["vae_config"] = self.vae_config
            node["scaling_factor"] = self.scaling_factor
        return node

    def train(self, mode: bool = True) -> FlexTokTokenizer:
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # frozen
        return self

    # ---- construction ---------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("vae"):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for blk in self.dec_blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        heads = [self.head_modulation[-1], self.head] + ([self.enc_out] if self.zero_init_encoder_head else [])
        for m in heads:  # the official zero-initialised heads
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        for p in (self.registers, self.mask_token, self.null_token, self.dec_register_posemb):
            nn.init.trunc_normal_(p, std=0.02)

    def _build_encoder_mask(self) -> Tensor | None:
        if self.register_mask == "full":
            return None
        n, k = self.num_patches, self.num_registers
        mask = torch.zeros(n + k, n + k, dtype=torch.bool)
        mask[:, :n] = True  # everything sees every patch; patches see nothing else
        mask[n:, n:] = torch.ones(k, k, dtype=torch.bool).tril()
        return mask

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(kind="sequence", shapes=((1, self.num_registers),), vocab_size=self.fsq.codebook_size)

    @property
    def stochastic_decode(self) -> bool:
        return True

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, latent={self.channels}x{self.latent_size}^2, patches={self.num_patches}, "
                f"registers={self.num_registers}, codebook={self.fsq.codebook_size}")

    # ---- latents <-> patches --------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"FlexTok expects images (B, 3, {self.image_size}, {self.image_size}) in [-1, 1], got "
                             f"{tuple(images.shape)}")

    def to_latent(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> the latent the flow lives in, (B, C, s, s): the scaled VAE posterior mean, or
        the pixels."""
        if self.vae is None:
            return images.float()
        with torch.no_grad():
            return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode().float() * self.scaling_factor

    def from_latent(self, latent: Tensor) -> Tensor:
        if self.vae is None:
            return latent
        with torch.no_grad():
            return self.vae.decode((latent / self.scaling_factor).to(self.vae.dtype)).sample.float()

    def patchify(self, x: Tensor) -> Tensor:
        """(B, C, s, s) -> (B, N, p*p*C), rows of patches in raster order, each patch (p0, p1, c)-ordered."""
        b, c, s, _ = x.shape
        p, g = self.patch_size, self.grid
        return x.view(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)

    def unpatchify(self, patches: Tensor) -> Tensor:
        b = patches.shape[0]
        p, g, c = self.patch_size, self.grid, self.channels
        return patches.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def _posemb(self, table: Tensor) -> Tensor:
        return table.flatten(2).transpose(1, 2)  # (1, N, dim), raster order

    # ---- encoder --------------------------------------------------------------------------------------
    def encode_latent(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """latent (B, C, s, s) -> (codes (B, K, D) in [-1, 1] with a straight-through gradient, indices (B, K))."""
        return self.fsq(self.register_features(latent))

    def register_features(self, latent: Tensor) -> Tensor:
        """latent (B, C, s, s) -> the encoder's projected registers (B, K, D) before FSQ."""
        b = latent.shape[0]
        x = self.enc_patch(self.patchify(latent)) + self._posemb(self.enc_posemb)
        x = torch.cat([x, self.registers[None].expand(b, -1, -1)], dim=1)
        for blk in self.enc_blocks:
            x = blk(x, self._encoder_mask)
        return self.enc_out(layer_norm(x[:, self.num_patches:]))

    # ---- decoder (the velocity model) -----------------------------------------------------------------
    def decoder_registers(self, codes: Tensor, keep_k: Tensor, uncond: Tensor | None = None) -> Tensor:
        """codes (B, K, D), keep_k (B,) -> decoder register tokens (B, K, dim): registers >= keep_k become the
        mask token; rows with ``uncond`` True become the null condition."""
        reg = self.dec_registers_in(codes.to(self.dec_registers_in.weight.dtype))
        pos = torch.arange(self.num_registers, device=codes.device)
        dropped = pos[None, :] >= keep_k.to(codes.device)[:, None]
        reg = torch.where(dropped[..., None], self.mask_token.to(reg.dtype), reg)
        if uncond is not None:
            reg = torch.where(uncond.to(codes.device)[:, None, None], self.null_token.to(reg.dtype), reg)
        return reg + self.dec_register_posemb[None].to(reg.dtype)

    def velocity(self, x_t: Tensor, t: Tensor, registers: Tensor) -> Tensor:
        """x_t (B, C, s, s), t (B,) in [0, 1] (1 = noise), registers (B, K, dim) from :meth:`decoder_registers`
        -> v (B, C, s, s), the model's ``eps - x``."""
        dtype = self.dec_patch.weight.dtype
        x = self.dec_patch(self.patchify(x_t.to(dtype))) + self._posemb(self.dec_posemb).to(dtype)
        x = torch.cat([x, registers.to(dtype)], dim=1)
        emb = self.time_embed(t).to(dtype)
        lengths = [self.num_patches, self.num_registers]
        for blk in self.dec_blocks:
            x = blk(x, None, emb, lengths)
        shift, scale = self.head_modulation(emb)[:, None].chunk(2, dim=-1)
        out = self.head(modulate(layer_norm(x[:, :self.num_patches]), shift, scale))
        return self.unpatchify(out.float())

    # ---- training -------------------------------------------------------------------------------------
    def sample_keep_k(self, batch: int, device: torch.device) -> Tensor:
        if self.keep_k_mode == "uniform":
            return torch.randint(1, self.num_registers + 1, (batch,), device=device)
        sizes = torch.tensor(_powers_of_two(self.num_registers), device=device)
        return sizes[torch.randint(len(sizes), (batch,), device=device)]

    def reconstruct(self, images: Tensor) -> FlowReconstruction:
        """Training: one rectified-flow example per image (keep_k, condition dropout, t and eps drawn from the
        global RNG). Eval mode: encode and decode fully (:meth:`decode`, seeds 0..B-1)."""
        self._check_images(images)
        if not self.training:
            idx = self.encode(images)
            seeds = torch.arange(images.shape[0])
            return FlowReconstruction(images=self.decode(idx, seeds), indices=idx, latents=self.fsq.codes(idx))
        x = self.to_latent(images)
        codes, idx = self.encode_latent(x)
        b, device = x.shape[0], x.device
        keep = self.sample_keep_k(b, device)
        uncond = torch.rand(b, device=device) < self.cond_dropout
        t = torch.sigmoid(torch.randn(b, device=device) + self.time_mean)
        eps = torch.randn_like(x)
        x_t = t[:, None, None, None] * eps + (1 - t[:, None, None, None]) * x
        v = self.velocity(x_t, t, self.decoder_registers(codes, keep, uncond))
        estimate = self.from_latent((x_t - t[:, None, None, None] * v).detach())
        return FlowReconstruction(images=estimate, indices=idx, latents=codes, velocity=v, target=eps - x,
                                  keep_k=keep, t=t)

    def last_layer(self) -> Tensor:
        return self.head.weight

    # ---- Tokenizer protocol ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor, seeds: Tensor | None = None) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> register ids (B, K) int64, coarse to fine (deterministic)."""
        self._check_images(images)
        return self.encode_latent(self.to_latent(images))[1]

    def codebook(self) -> Tensor:
        """(V, D): the FSQ code of every id."""
        return self.fsq.implicit_codebook()

    def embed(self, tokens: Tensor) -> Tensor:
        return self.fsq.codes(tokens)

    def _noise(self, seeds: Tensor | None, batch: int, device: torch.device) -> Tensor:
        shape = (self.channels, self.latent_size, self.latent_size)
        if seeds is None:
            raise ValueError("FlexTok's decoder is stochastic: pass per-sample seeds (B,) to decode (argen-sample "
                             "derives them from its seed and the sample index)")
        if len(seeds) != batch:
            raise ValueError(f"decode got {batch} token rows but {len(seeds)} seeds")
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds.tolist()]).to(device)

    @torch.no_grad()
    def decode(self, tokens: Tensor, seeds: Tensor | None = None, *, steps: int | None = None,
               guidance_scale: float | None = None, guidance: str | None = None) -> Tensor:
        """ids (B, k) with 1 <= k <= K (any prefix of a sequence) -> images (B, 3, H, W), roughly in [-1, 1].

        seeds (B,): image b's noise comes from ``seeds[b]`` alone. steps / guidance_scale / guidance override
        the defaults (``decode_steps``, ``guidance_scale``, ``guidance``); guidance 1.0 runs one branch."""
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.num_registers:
            raise ValueError(f"FlexTok decodes (B, k) token ids with 1 <= k <= {self.num_registers}, got "
                             f"{tuple(tokens.shape)}")
        check_token_ids(tokens, self.fsq.codebook_size, owner="FlexTok tokenizer")
        steps = self.decode_steps if steps is None else int(steps)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        mode = self.guidance if guidance is None else guidance
        if mode not in GUIDANCE:
            raise ValueError(f"guidance must be one of {GUIDANCE}, got {mode!r}")
        b, k = tokens.shape
        device = self.head.weight.device
        padded = torch.zeros(b, self.num_registers, dtype=torch.long, device=device)
        padded[:, :k] = tokens.to(device)
        keep = torch.full((b,), k, device=device)
        cond = self.decoder_registers(self.fsq.codes(padded), keep)
        guided = scale != 1.0
        null = self.decoder_registers(self.fsq.codes(padded), keep, torch.ones(b, dtype=torch.bool, device=device)) \
            if guided else None
        x = self._noise(seeds, b, device)
        momentum = torch.zeros_like(x)
        for i in range(steps, 0, -1):
            t = torch.full((b,), i / steps, device=device)
            if guided:
                v2 = self.velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
                v_cond, v_uncond = v2.chunk(2)
                if mode == "cfg":
                    v = v_uncond + scale * (v_cond - v_uncond)
                else:
                    v, momentum = apg(v_cond, v_uncond, scale, momentum)
            else:
                v = self.velocity(x, t, cond)
            x = x - v / steps
        return self.from_latent(x)


class TokenPrefix(nn.Module):
    """A FlexTok tokenizer that keeps the first k tokens: ``encode`` returns (B, k), ``decode`` renders them; for
    evaluating reconstructions at each k with the tools that take any tokenizer."""

    def __init__(self, tokenizer: FlexTokTokenizer, k: int) -> None:
        super().__init__()
        if not 1 <= int(k) <= tokenizer.num_registers:
            raise ValueError(f"k must be in 1..{tokenizer.num_registers}, got {k}")
        self.tokenizer, self.k = tokenizer, int(k)
        self.image_size = tokenizer.image_size
        self.layout = TokenLayout(kind="sequence", shapes=((1, self.k),), vocab_size=tokenizer.fsq.codebook_size)

    def encode(self, images: Tensor, seeds: Tensor | None = None) -> Tensor:
        return self.tokenizer.encode(images)[:, :self.k]

    def decode(self, tokens: Tensor, seeds: Tensor | None = None, **kwargs: Any) -> Tensor:
        return self.tokenizer.decode(tokens, seeds, **kwargs)


def apg(v_cond: Tensor, v_uncond: Tensor, scale: float, running: Tensor, *, momentum: float = -0.5,
        norm_threshold: float = 2.5, eta: float = 0.0) -> tuple[Tensor, Tensor]:
    """Adaptive projected guidance (Sadat et al., 2024; FlexTok's ``normalized_guidance``), per image over
    (C, H, W): momentum on the difference, its norm clipped to ``norm_threshold``, the component parallel to
    the conditional prediction weighted by ``eta``. Returns (guided velocity, the new running average)."""
    diff = v_cond - v_uncond
    running = diff + momentum * running
    diff = running
    if norm_threshold > 0:
        norm = diff.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    d64, c64 = diff.double(), v_cond.double()
    unit = c64 / c64.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    parallel = (d64 * unit).flatten(1).sum(1).view(-1, 1, 1, 1) * unit
    orthogonal = d64 - parallel
    update = (orthogonal + eta * parallel).to(v_cond.dtype)
    return v_cond + (scale - 1) * update, running
