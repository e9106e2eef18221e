"""Convert official xAR checkpoints (OliverRensu/xAR: ``xAR-B.pth`` etc., a raw state dict) to argen export
folders and back (algorithms.md 4.7).

The official ``xAR`` module is class-conditional on a 16 x 16 MAR KL-16 latent of 16 channels, split into 2 x 2
cells of 8 x 8 (4 AR steps); argen's :class:`~argen.generators.xar.XARGenerator` with ``entity=cell`` is the
same network. Names differ where argen's blocks are shared parts (``attn.qkv`` -> ``attention.wqkv``,
timm's SwiGLU ``mlp.fc1_g / fc1_x / fc2`` -> ``feed_forward.w1 / w3 / w2``), the class table is the
condition embedder's, and the learned positional embeddings are stored in layout (raster) order in argen
and in cell order in the official module (permuted here). The RoPE tables and the block-causal ``mask`` are
buffers of the official module; argen recomputes them, and the conversion checks that they are the ones
the recomputation gives (so a checkpoint of another grid, cell split or head width is caught), and writes
them back for the official strict load.

What the weights say: width, depths, classes, channels (``z_proj``), the grid (the positional embeddings),
the cell split (the ``mask``), the head width (the RoPE ``freqs``: head_dim / 4 of them) and the SwiGLU
width. What they do not: nothing else (dropout is training-only).

    from argen.io.xar import convert_xar, xar_from_state_dict
    convert_xar("xAR-B.pth", "weights/xar_b")      # -> argen.load("weights/xar_b"), with MAR's KL-16 tokenizer

or ``python scripts/convert_xar.py --ckpt xAR-B.pth --out weights/xar_b``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from argen.io.keymap import (
    Conversion,
    Drop,
    KeyLedger,
    KeyReport,
    build_and_load,
    build_on_meta,
    indexed_count,
    inverse_table,
    read_official_checkpoint,
    require_key,
    save_conversion,
    unwrap_state_dict,
)
from argen.nn.entities import grid_partition
from argen.nn.rope import rope_2d

if TYPE_CHECKING:
    from argen.generators.xar import XARGenerator

_RECOMPUTED = "recomputed by argen from the grid, cells and head width (checked equal before dropping)"
_BLOCK = {
    "attn.qkv.*": "attention.wqkv.*",  # (3D, D) + bias, rows [q | k | v], head-major, as LlamaGen's wqkv
    "attn.proj.*": "attention.wo.*",  # (D, D) + bias
    "mlp.fc1_g.*": "feed_forward.w1.*",  # timm SwiGLU: fc2(silu(fc1_g x) * fc1_x x), hidden int(D * 4 * 2 / 3)
    "mlp.fc1_x.*": "feed_forward.w3.*",
    "mlp.fc2.*": "feed_forward.w2.*",
    "ada_lin.1.*": "ada_lin.1.*",  # (6D, D), chunks (gamma1, gamma2, scale1, scale2, shift1, shift2)
}
XAR_KEY_MAP: dict[str, str | Drop] = {
    "class_emb.weight": "cond_embed.embedding_table.weight",  # (classes + 1, D); the last row is the null class
    "time_embed.mlp.*": "time_embed.mlp.*",  # Linear(256, D), SiLU, Linear(D, D) on sinusoids of long(1000 t)
    "z_proj.*": "z_proj.*",  # Linear(C, D)
    "z_proj_ln.weight": "z_proj_ln.weight",  # RMSNorm with weight, after the positional embedding
    "encoder_pos_embed_learned": "encoder_pos_embed",  # (1, L, D); permuted cell -> layout order below
    **{f"encoder_blocks.{{i}}.{k}": f"encoder_blocks.{{i}}.{v}" for k, v in _BLOCK.items()},
    "encoder_norm.weight": "encoder_norm.weight",
    "decoder_embed.*": "decoder_embed.*",
    "decoder_pos_embed_learned": "decoder_pos_embed",
    **{f"decoder_blocks.{{i}}.{k}": f"decoder_blocks.{{i}}.{v}" for k, v in _BLOCK.items()},
    "decoder_norm.weight": "decoder_norm.weight",
    "pred.*": "pred.*",  # Linear(D, 16): the velocity
    "encoder_blocks.{i}.attn.rope.*": Drop(_RECOMPUTED),
    "decoder_blocks.{i}.attn.rope.*": Drop(_RECOMPUTED),
    "mask": Drop(_RECOMPUTED),  # (1, 1, L, L) 0 / -inf block-causal over cells
}
_POS = ("encoder_pos_embed", "decoder_pos_embed")


def _official_layout(state: Mapping[str, Tensor]) -> tuple[int, int]:
    """(grid side, cell side) from the positional embeddings and the block-causal mask (official names)."""
    length = require_key(state, "encoder_pos_embed_learned", "xAR").shape[1]
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"xAR's positional embeddings hold {length} positions, not a square grid")
    mask = state.get("mask")
    if mask is None:  # the official module always has it; a stripped checkpoint: the official 2 x 2 cells
        return side, side // 2
    visible = int((mask.reshape(length, length)[0] == 0).sum())  # the first cell sees only itself
    cell = math.isqrt(visible)
    if cell * cell != visible or side % cell:
        raise ValueError(f"xAR's mask shows a first entity of {visible} positions, not a square cell of the "
                         f"{side}x{side} grid")
    return side, cell


def infer_xar_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The XARGenerator config node for an official xAR state dict (cell entity, class-conditional)."""
    side, cell = _official_layout(state)
    classes, dim = require_key(state, "class_emb.weight", "xAR").shape
    dec_dim = require_key(state, "decoder_embed.weight", "xAR").shape[0]
    hidden = require_key(state, "encoder_blocks.0.mlp.fc1_g.weight", "xAR").shape[0]
    ratio = 4.0 if hidden == int(dim * 4 * 2 / 3) else hidden * 3 / (2 * dim)

    def heads(stack: str, width: int) -> int:
        freqs = state.get(f"{stack}_blocks.0.attn.rope.freqs")
        head_dim = 4 * freqs.numel() if freqs is not None else 64  # xAR-B/L/H all have head width 64
        return width // head_dim

    return {"_target_": "argen.generators.xar.XARGenerator", "grid_size": [side, side],
            "channels": int(state["z_proj.weight"].shape[1]), "entity": "cell", "cell_size": cell,
            "condition": {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True,
                          "num_classes": int(classes) - 1, "dropout": 0.1},
            "dim": int(dim), "n_head": heads("encoder", dim),
            "encoder_depth": indexed_count(state, "encoder_blocks", ("ada_lin.1.weight",), "xAR"),
            "decoder_dim": int(dec_dim), "decoder_n_head": heads("decoder", dec_dim),
            "decoder_depth": indexed_count(state, "decoder_blocks", ("ada_lin.1.weight",), "xAR"), "mlp_ratio": ratio}


def xar_buffers(config: Mapping[str, Any]) -> dict[str, Tensor]:
    """The official module's buffers for ``config``: the block-causal ``mask`` (0 / -inf, cell order) and
    each block's EVA-02 RoPE tables (``freqs`` (hd/4,), ``freqs_cos`` / ``freqs_sin`` (L, hd) in cell order,
    every angle twice: rotation pairs are interleaved), from argen's own partition and 2D RoPE."""
    h, w = config["grid_size"]
    part = grid_partition("cell", h, w, cell_size=config.get("cell_size"))
    visible = part.entity[None, :] <= part.entity[:, None]
    out = {"mask": torch.zeros(1, 1, h * w, h * w).masked_fill(~visible, float("-inf"))}
    for stack, width, heads, depth in (("encoder", config["dim"], config["n_head"], config["encoder_depth"]),
                                       ("decoder", config.get("decoder_dim") or config["dim"],
                                        config.get("decoder_n_head") or config["n_head"],
                                        config.get("decoder_depth") or config["encoder_depth"])):
        hd = width // heads
        table = rope_2d(h, w, hd)[part.order]  # (L, hd/2, 2), sequence (cell) order
        freqs = 1.0 / (10000.0 ** (torch.arange(0, hd // 2, 2)[: hd // 4].float() / (hd // 2)))
        for i in range(depth):
            out[f"{stack}_blocks.{i}.attn.rope.freqs"] = freqs.clone()
            out[f"{stack}_blocks.{i}.attn.rope.freqs_cos"] = table[..., 0].repeat_interleave(2, dim=-1)
            out[f"{stack}_blocks.{i}.attn.rope.freqs_sin"] = table[..., 1].repeat_interleave(2, dim=-1)
    return out


def _check_buffers(state: Mapping[str, Tensor], config: Mapping[str, Any]) -> None:
    """The official buffers present in ``state`` must be what argen recomputes (same grid, cells, heads)."""
    for key, want in xar_buffers(config).items():
        got = state.get(key)
        if got is not None and (got.shape != want.shape or not torch.allclose(got.float(), want, atol=1e-5)):
            raise ValueError(f"the checkpoint's {key} {tuple(got.shape)} is not the one argen computes for a "
                             f"{config['grid_size']} grid in cells of {config['cell_size']} with "
                             f"{config['n_head']} heads: not an xAR of this layout, or an unsupported variant")


def _permute_pos(ledger: KeyLedger, index: Tensor, how: str) -> None:
    for key in _POS:
        ledger.transform([key], {key: ledger.state[key][:, index].clone()}, how)


def xar_to_argen(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """Official xAR state dict -> XARGenerator state dict (buffers checked, then dropped)."""
    config = infer_xar_config(state)
    _check_buffers(state, config)
    ledger = KeyLedger(state, "xar->argen")
    ledger.rename(XAR_KEY_MAP, what="xAR", hint="is this an xAR transformer checkpoint (models/xar.py)?")
    h, w = config["grid_size"]
    part = grid_partition("cell", h, w, cell_size=config["cell_size"])
    _permute_pos(ledger, part.inverse(), "cell order -> layout (raster) order")
    return ledger.result(reports)


def argen_to_xar(state: Mapping[str, Tensor], config: Mapping[str, Any], *,
                 reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """XARGenerator state dict (cell entity, class condition) -> the official module's, buffers included."""
    if config.get("entity", "cell") != "cell":
        raise ValueError(f"the official xAR implements the cell entity only; this model uses {config.get('entity')!r}")
    if "cond_embed.embedding_table.weight" not in state:
        raise ValueError("the official xAR is class-conditional; this model is text-conditional")
    ledger = KeyLedger(state, "argen->xar")
    h, w = config["grid_size"]
    _permute_pos(ledger, grid_partition("cell", h, w, cell_size=config.get("cell_size")).order,
                 "layout (raster) order -> cell order")
    ledger.rename(inverse_table(XAR_KEY_MAP), what="argen xAR")
    for key, value in xar_buffers(config).items():
        ledger.create(key, value, "recomputed from the grid, cells and head width")
    return ledger.result(reports)


def _conversion(raw: Mapping[str, Tensor]) -> Conversion:
    reports: list[KeyReport] = []
    state = xar_to_argen(raw, reports=reports)
    config = infer_xar_config(raw)
    expected = argen_to_xar(build_on_meta(config).state_dict(), config, reports=reports)  # the way back
    missing, extra = sorted(set(expected) - set(raw)), sorted(set(raw) - set(expected))
    if missing or extra:
        raise KeyError(f"the xAR state dict does not have the official keys: missing {missing[:6]}, "
                       f"unexpected {extra[:6]}")
    return Conversion(build_and_load(config, state), config, reports)


def xar_from_state_dict(state: Mapping[str, Any], *, entry: str | None = None) -> XARGenerator:
    """An official xAR state dict in memory -> a ready :class:`~argen.generators.xar.XARGenerator` (strict
    load, eval mode, CPU)."""
    raw = unwrap_state_dict(state, source="the state dict", entry=entry)
    return cast("XARGenerator", _conversion(raw).module)


def convert_xar(path: str | Path, out_dir: str | Path, *, entry: str | None = None, overwrite: bool = False,
                tokenizer: str | Path | None = None) -> Path:
    """Official xAR checkpoint (a raw state dict, read with ``weights_only=True``) -> argen export folder;
    ``tokenizer``: the argen export of its KL-16 tokenizer, recorded (path and sha256) in meta.json."""
    path = Path(path)
    raw = read_official_checkpoint(path, entry=entry)
    conversion = _conversion(raw)
    c = conversion.config
    extra: dict[str, Any] = {"checkpoint_entry": entry}
    if tokenizer is not None:
        from tokenizers_vq.io import read_meta

        extra["tokenizer"] = {"path": str(Path(tokenizer).resolve()), "sha256": read_meta(tokenizer)["sha256"]}
    describe = f"width {c['dim']}, depth {c['encoder_depth']}+{c['decoder_depth']}, cells of {c['cell_size']}"
    return save_conversion(conversion, path, out_dir, kind="generator", source="xar", describe=describe,
                           overwrite=overwrite, **extra)


def export_to_xar(export_dir: str | Path, out_path: str | Path, *, overwrite: bool = False) -> Path:
    """An argen xAR export (cell entity, class-conditional) -> an official-format checkpoint (a raw state dict
    with the official keys and buffers, written atomically with ``torch.save``): the way back."""
    from argen.generators.xar import XARGenerator
    from argen.io.folders import atomic_write
    from tokenizers_vq.io import load_pretrained

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace it")
    model = load_pretrained(export_dir)
    if not isinstance(model, XARGenerator):
        raise TypeError(f"{export_dir} holds a {type(model).__name__}, not an XARGenerator")
    config = {"grid_size": list(model.grid), "entity": model.entity_kind, "cell_size": model.cell_size,
              "dim": model.dim, "n_head": model.n_head, "encoder_depth": len(model.encoder_blocks),
              "decoder_dim": model.decoder_dim, "decoder_n_head": model.decoder_n_head,
              "decoder_depth": len(model.decoder_blocks)}
    state = argen_to_xar(model.state_dict(), config)
    return atomic_write(out_path, lambda f: torch.save(state, f))
