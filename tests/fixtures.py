"""Test helpers that build stand-in local weight files (random values, the real keys and shapes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


MSVQ_TOK = {"_target_": "tokenizers_vq.msvq.MultiScaleVQTokenizer", "image_size": 32, "codebook_size": 16,
            "embed_dim": 4, "scales": [1, 2, 4, 8], "num_phi": 2, "base_channels": 8,
            "channel_multipliers": [1, 2, 2], "z_channels": 8, "norm_groups": 4, "attention": False}


def export_msvq_tokenizer(path: Path, seed: int) -> Path:
    """A tiny random scale-residual tokenizer export (scales 1, 2, 4, 8: 85 tokens, 16 codes of width 4)."""
    from tokenizers_vq.io import save_pretrained
    from tokenizers_vq.msvq import MultiScaleVQTokenizer

    torch.manual_seed(seed)
    model = MultiScaleVQTokenizer(**{k: v for k, v in MSVQ_TOK.items() if k != "_target_"})  # type: ignore[arg-type]
    return save_pretrained(model, path, config=MSVQ_TOK, meta={"kind": "tokenizer", "image_size": 32})


CLASSES_3 = {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True, "num_classes": 3}
# an untrained tiny class-conditional VAR for the scale-residual tokenizer of export_msvq_tokenizer
VAR_TINY = {"_target_": "argen.generators.var.VARGenerator", "vocab_size": 16, "scales": [1, 2, 4, 8],
            "input_dim": 4, "depth": 1, "width": 16, "n_head": 2, "condition": CLASSES_3}
# an untrained tiny class-conditional raster GPT for an 8x8 grid of 16 codes (a VQ tokenizer of 32 px images)
RASTER_TINY = {"_target_": "argen.generators.raster.RasterGenerator", "vocab_size": 16, "dim": 16, "n_layer": 1,
               "n_head": 2, "multiple_of": 16, "grid_size": 8, "condition": CLASSES_3}


def export_generator(path: Path, config: dict[str, Any], tokenizer: Path, seed: int = 0) -> Path:
    """An untrained generator export built from ``config``, its meta.json recording ``tokenizer`` (an
    export) as argen-train does; bound to it first where it needs it (VAR)."""
    from argen.core.config import build
    from argen.pipeline import bind_tokenizer
    from tokenizers_vq.io import load_pretrained, read_meta, save_pretrained

    torch.manual_seed(seed)
    generator = build(config, "generator")
    bind_tokenizer(generator, load_pretrained(tokenizer))
    meta = {"kind": "generator", "tokenizer": {"path": str(tokenizer), "sha256": read_meta(tokenizer)["sha256"]}}
    return save_pretrained(generator, path, config=config, meta=meta)


KL_TOK = {"_target_": "tokenizers_vq.continuous.ContinuousTokenizer", "image_size": 32, "latent_channels": 4,
          "block_out_channels": [8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": None}


def export_kl_tokenizer(path: Path, seed: int) -> Path:
    """A tiny random continuous tokenizer export (AutoencoderKL, 8x8 latents of 4 channels at 32 px)."""
    from tokenizers_vq.continuous import ContinuousTokenizer
    from tokenizers_vq.io import save_pretrained

    torch.manual_seed(seed)
    model = ContinuousTokenizer(**{k: v for k, v in KL_TOK.items() if k != "_target_"})  # type: ignore[arg-type]
    return save_pretrained(model, path, config=KL_TOK, meta={"kind": "tokenizer", "image_size": 32})


FLEXTOK_TOK = {"_target_": "tokenizers_vq.flextok.FlexTokTokenizer", "image_size": 32, "patch_size": 8, "dim": 32,
               "head_dim": 16, "encoder_depth": 1, "decoder_depth": 1, "num_registers": 8, "levels": [5, 3],
               "decode_steps": 2}


def export_flextok_tokenizer(path: Path, seed: int) -> Path:
    """A tiny random FlexTok export (pixel space, 8 register tokens of a 15-code FSQ, 2 Euler steps)."""
    from tokenizers_vq.flextok import FlexTokTokenizer
    from tokenizers_vq.io import save_pretrained

    torch.manual_seed(seed)
    model = FlexTokTokenizer(**{k: v for k, v in FLEXTOK_TOK.items() if k != "_target_"})  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero encoder head: varied codes
        model.enc_out.weight.normal_(0, 1.0)
    return save_pretrained(model, path, config=FLEXTOK_TOK, meta={"kind": "tokenizer", "image_size": 32})
