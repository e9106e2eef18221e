"""Convert official VAR checkpoints (FoundationVision/VAR) to argen export folders and back.

``vae_ch160v4096z32.pth`` -> :class:`~tokenizers_vq.msvq.MultiScaleVQTokenizer`, ``var_d16.pth`` ..
``var_d30.pth`` -> :class:`~argen.generators.var.VARGenerator` (raw state dicts, read with
``weights_only=True``). The tables say where each official key goes; three changes are structural:

* VAE attention: VAR's ``AttnBlock`` has one fused 1x1 conv ``qkv`` (3C -> rows [q | k | v]); argen's
  has separate ``q``, ``k``, ``v`` convs (:func:`_split_qkv` / :func:`_fuse_qkv`).
* VAE decoder level order: LDM's ``decoder.up`` is built with ``insert(0)``, so ``up.0`` is the HIGHEST
  resolution and is run last; argen's ``decoder.conv_blocks.0`` is the LOWEST resolution (run first, it
  holds the attention). ``up.{i}`` is ``conv_blocks.{n - 1 - i}`` (:func:`_flip_decoder`).
* The VAE's per-scale hit counts become argen's usage EMAs (:func:`_usage_from_hits`).

What the weights do not store is an argument: the scales (VAR's ``patch_nums``; ``pos_1LC`` only holds
their sum of squares), the phi ratio (0.5) and GroupNorm groups (32, hard-coded in VAR's basic_vae).

    from argen.io.var import convert_vae, convert_var, vae_from_state_dict, var_from_state_dict
    convert_vae("vae_ch160v4096z32.pth", "weights/var_vae")
    convert_var("var_d16.pth", "weights/var_d16", tokenizer="weights/var_vae")
    vae = vae_from_state_dict(torch.load("vae_ch160v4096z32.pth", weights_only=True))  # in memory
    var = var_from_state_dict(torch.load("var_d16.pth", weights_only=True), tokenizer=vae)

or ``python scripts/convert_var.py --kind var --checkpoint var_d16.pth --out weights/var_d16``.
Both ways run the same conversion; an export's meta.json records, per direction, which keys were kept,
renamed, transformed (the qkv split, the hit counts), dropped (and why) or created.

Forward parity is tested against functional re-derivations of VAR's equations on official-named
weights (tests/unit/test_var_convert.py). Outside the weights: VAR's ``fhat_to_img`` clamps to [-1, 1]
(argen's ``decode`` does not) and VAR's ``forward`` drops labels with p = 0.1 even in eval mode.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from argen.io.keymap import (
    Conversion,
    Drop,
    KeyLedger,
    KeyReport,
    build_and_load,
    build_on_meta,
    compile_pattern,
    indexed_count,
    inverse_table,
    read_official_checkpoint,
    require_key,
    save_conversion,
    unwrap_state_dict,
)

if TYPE_CHECKING:
    from argen.generators.var import VARGenerator
    from tokenizers_vq.msvq import MultiScaleVQTokenizer

log = logging.getLogger(__name__)

VAR_SCALES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # patch_nums of every released 256px model

# ---- the conversion tables ----------------------------------------------------------------------
# Official pattern -> argen pattern ("{i}": an index, "*": any suffix); Drop: not a weight, dropped (why).
_RECOMPUTED = "recomputed from the scales (argen's non-persistent levels and block-causal mask)"
VAR_KEY_MAP: dict[str, str | Drop] = {
    "word_embed.*": "word_embed.*",  # Linear(Cvae=32 -> C) on f_hat features
    # (num_classes + 1, C); row num_classes is VAR's null class, as in argen's ClassEmbedder.
    "class_emb.weight": "cond_embed.embedding_table.weight",
    "pos_start": "pos_start",  # (1, first_l, C)
    "pos_1LC": "pos_1LC",  # (1, L, C), L = sum(pn^2) = 680
    "lvl_embed.weight": "lvl_embed.weight",  # (K, C)
    # Fused qkv (3C, C), rows [q | k | v] each head-major, in both; biases on q and v only.
    "blocks.{i}.attn.mat_qkv.weight": "blocks.{i}.attn.mat_qkv.weight",
    "blocks.{i}.attn.q_bias": "blocks.{i}.attn.q_bias",
    "blocks.{i}.attn.v_bias": "blocks.{i}.attn.v_bias",
    "blocks.{i}.attn.zero_k_bias": "blocks.{i}.attn.zero_k_bias",  # persistent zero buffer in both
    "blocks.{i}.attn.scale_mul_1H11": "blocks.{i}.attn.scale_mul_1H11",  # (1, H, 1, 1); only attn_l2_norm
    "blocks.{i}.attn.proj.weight": "blocks.{i}.attn.proj.weight",
    "blocks.{i}.attn.proj.bias": "blocks.{i}.attn.proj.bias",
    "blocks.{i}.ffn.*": "blocks.{i}.ffn.*",  # fc1 (4C, C) -> GELU-tanh -> fc2 (C, 4C), with biases
    # (6C, C), chunks (gamma1, gamma2, scale1, scale2, shift1, shift2): AdaLNSelfAttnBlock's order.
    "blocks.{i}.ada_lin.1.*": "blocks.{i}.ada_lin.1.*",
    "head_nm.ada_lin.1.*": "head_nm.ada_lin.1.*",  # (2C, C), chunks (scale, shift): AdaLayerNorm "scale_shift"
    "head.*": "head.*",  # Linear(C -> V)
    # Buffers recomputed from the scales (argen's `levels` and the block-causal mask are non-persistent);
    # argen_to_var writes them back because VAR's strict load_state_dict expects them.
    "lvl_1L": Drop(_RECOMPUTED),  # (1, L) scale id per position
    "attn_bias_for_masking": Drop(_RECOMPUTED),  # (1, 1, L, L), 0 / -inf
}
# Shared adaLN (VAR-d36-s, --saln=1): one SharedAdaLin for all blocks plus a per-block ada_gss offset.
# argen's blocks own their ada_lin; such checkpoints are refused, not approximated.
VAR_SHARED_ALN: tuple[str, ...] = ("shared_ada_lin.*", "blocks.{i}.ada_gss")

VAE_KEY_MAP: dict[str, str | Drop] = {
    "encoder.conv_in.*": "encoder.conv_in.*",
    "encoder.down.{i}.block.*": "encoder.conv_blocks.{i}.res.*",  # ResnetBlock: norm1 conv1 norm2 conv2 nin_shortcut
    "encoder.down.{i}.attn.*": "encoder.conv_blocks.{i}.attn.*",  # norm, qkv (split), proj_out; last level only
    "encoder.down.{i}.downsample.*": "encoder.conv_blocks.{i}.downsample.*",  # pad (0,1,0,1), 3x3 stride 2
    "encoder.mid.block_1.*": "encoder.mid.0.*",
    "encoder.mid.attn_1.*": "encoder.mid.1.*",  # qkv split
    "encoder.mid.block_2.*": "encoder.mid.2.*",
    "encoder.norm_out.*": "encoder.norm_out.*",
    "encoder.conv_out.*": "encoder.conv_out.*",
    "decoder.conv_in.*": "decoder.conv_in.*",
    "decoder.mid.block_1.*": "decoder.mid.0.*",
    "decoder.mid.attn_1.*": "decoder.mid.1.*",
    "decoder.mid.block_2.*": "decoder.mid.2.*",
    # {i} is reversed after renaming (_flip_decoder): up.{i} -> conv_blocks.{n - 1 - i}; num_res_blocks + 1
    # blocks per level; attention only in up.{n - 1} (lowest resolution) = argen conv_blocks.0.
    "decoder.up.{i}.block.*": "decoder.conv_blocks.{i}.res.*",
    "decoder.up.{i}.attn.*": "decoder.conv_blocks.{i}.attn.*",
    "decoder.up.{i}.upsample.*": "decoder.conv_blocks.{i}.upsample.*",  # nearest 2x + 3x3
    "decoder.norm_out.*": "decoder.norm_out.*",
    "decoder.conv_out.*": "decoder.conv_out.*",
    "quant_conv.*": "quant_conv.*",  # 3x3 (quant_conv_ks=3), z 32 -> Cvae 32
    "post_quant_conv.*": "post_quant_conv.*",
    "quantize.embedding.weight": "quantize.embedding.weight",  # (4096, 32), plain-L2 lookup
    # (K, V) EMA of per-scale code hit COUNTS (VAR's usage log; never used in the forward). argen keeps
    # fractions: usage_ema_scales = each row / its sum and usage_ema = column sums / total (the token-
    # weighted histogram argen's update_usage folds in); all-zero rows or totals -> argen's initial 1/V.
    # A row count other than len(scales) resets usage_ema_scales to 1/V (VAR tolerates it too). Kept
    # by name here, then transformed by _usage_from_hits (and back by argen_to_vae).
    "quantize.ema_vocab_hit_SV": "quantize.ema_vocab_hit_SV",
}
# phi (quant_resi) naming by VAR's share_quant_resi; the scale -> phi tick mapping is the same in all
# three and in argen (phi_indices), so only the names differ. argen num_phi: n, 1, 0 (or n if n != K).
PHI_KEY_MAP: dict[str, str] = {
    "quantize.quant_resi.qresi_ls.{i}.*": "quantize.phi.{i}.*",  # n >= 2: PhiPartiallyShared (released: 4)
    "quantize.quant_resi.qresi.*": "quantize.phi.0.*",  # 1: PhiShared
    "quantize.quant_resi.{i}.*": "quantize.phi.{i}.*",  # 0: PhiNonShared, one per scale
}
# argen_to_vae stores usage_ema_scales as VAR's hits; the total usage has no VAR counterpart.
VAE_ARGEN_ONLY: dict[str, str] = {
    "quantize.usage_ema": "argen's usage over all scales has no VAR counterpart (VAR keeps per-scale hits, "
                          "written from usage_ema_scales); converting back recomputes it from those rows"}
_VAR_KIND_HINT = ("is this the right kind of checkpoint (--kind var for var_d*.pth, --kind vae for "
                  "vae_ch160v4096z32.pth)?")

VAR_PRESETS: dict[int, str] = {16: "VAR-d16", 20: "VAR-d20", 24: "VAR-d24", 30: "VAR-d30"}  # width 64d, d heads
VAR_DEFAULTS: dict[str, Any] = {  # build_vae_var; init_* only matter if the model is re-initialised
    "norm_eps": 1.0e-6, "dropout": 0.0, "attn_dropout": 0.0, "drop_path_rate": None, "init_adaln": 0.5,
    "init_adaln_gamma": 1.0e-5, "init_head": 0.02, "init_std": None,
}
_BLOCK_KEYS = ("attn.mat_qkv.weight", "attn.q_bias", "attn.v_bias", "attn.proj.weight", "ffn.fc1.weight",
               "ffn.fc2.weight", "ada_lin.1.weight")
_QKV = re.compile(r"(?P<pre>(?:en|de)coder\..+)\.qkv\.(?P<kind>weight|bias)\Z")
_DECODER_LEVEL = re.compile(r"decoder\.conv_blocks\.(\d+)\.")


# ---- structural steps (each declares what it does to the ledger's record) ------------------------
def _split_qkv(ledger: KeyLedger) -> None:
    for key in list(ledger.state):
        m = _QKV.match(key)
        if m is None:
            continue
        value = ledger.state[key]
        if value.shape[0] % 3:
            raise ValueError(f"{key} has {value.shape[0]} output channels, not 3 x C (fused q, k, v)")
        parts = {f"{m['pre']}.{name}.{m['kind']}": part.clone() for name, part in zip("qkv", value.chunk(3, dim=0))}
        ledger.transform([key], parts, "split along the output channels into thirds [q | k | v] (VAR's fused "
                                       "qkv conv -> argen's separate q, k, v convs)")


def _fuse_qkv(ledger: KeyLedger) -> None:
    for key in [k for k in ledger.state if re.match(r"(?:en|de)coder\..+\.q\.(?:weight|bias)\Z", k)]:
        pre, kind = key.rsplit(".q.", 1)
        parts = [f"{pre}.{n}.{kind}" for n in "qkv"]
        missing = [p for p in parts if p not in ledger.state]
        if missing:
            raise KeyError(f"attention {pre} lacks {missing}: cannot fuse q, k, v into VAR's qkv conv")
        fused = torch.cat([ledger.state[p] for p in parts], dim=0)
        ledger.transform(parts, {f"{pre}.qkv.{kind}": fused}, "concatenated along the output channels as "
                                                             "[q | k | v] (VAR's fused qkv conv)")


def _flip_decoder(ledger: KeyLedger) -> None:
    """decoder.conv_blocks.{i} -> decoder.conv_blocks.{n - 1 - i} (an involution; a pure rename)."""
    n = 1 + max((int(m.group(1)) for k in ledger.state if (m := _DECODER_LEVEL.match(k))), default=-1)
    ledger.move({k: f"decoder.conv_blocks.{n - 1 - int(m.group(1))}.{k[m.end():]}"
                 for k in ledger.state if (m := _DECODER_LEVEL.match(k))})


def _usage_from_hits(ledger: KeyLedger, num_scales: int, vocab: int) -> None:
    hits_key, uniform = "quantize.ema_vocab_hit_SV", torch.full((vocab,), 1.0 / vocab)
    hits = ledger.state.get(hits_key)
    if hits is None:
        initial = {"quantize.usage_ema": uniform, "quantize.usage_ema_scales": uniform.repeat(num_scales, 1)}
        for key, value in initial.items():
            ledger.create(key, value, "argen's initial 1/V per code (the checkpoint has no ema_vocab_hit_SV)")
        return
    hits = hits.detach().float().clamp_min(0)
    total = hits.sum(0)
    usage = total / total.sum() if float(total.sum()) > 0 else uniform
    how = "per-code hit counts summed over scales / their total (all zero -> 1/V)"
    if hits.shape != (num_scales, vocab):
        log.warning("quantize.ema_vocab_hit_SV is %s, not (%d scales, %d codes): per-scale usage reset to 1/V",
                    tuple(hits.shape), num_scales, vocab)
        ledger.transform([hits_key], {"quantize.usage_ema": usage}, how)
        ledger.create("quantize.usage_ema_scales", uniform.repeat(num_scales, 1),
                      f"argen's initial 1/V: ema_vocab_hit_SV has {tuple(hits.shape)}, not {num_scales} scales")
        return
    rows = hits.sum(1, keepdim=True)
    scales = torch.where(rows > 0, hits / rows.clamp_min(1e-30), uniform.expand_as(hits))
    ledger.transform([hits_key], {"quantize.usage_ema": usage, "quantize.usage_ema_scales": scales},
                     f"hit counts -> usage fractions: usage_ema = {how}; usage_ema_scales = each scale's "
                     f"row / its sum (all zero -> 1/V)")


# ---- VAR transformer ----------------------------------------------------------------------------
def _refuse_shared_aln(state: Mapping[str, Tensor]) -> None:
    keys = sorted(k for k in state if any(compile_pattern(p).match(k) for p in VAR_SHARED_ALN))
    if keys:
        raise ValueError(f"this VAR uses shared adaLN (saln=1, e.g. VAR-d36-s): keys {keys[:4]} (one "
                         f"shared_ada_lin plus a per-block ada_gss offset) have no argen counterpart; argen's "
                         f"VARGenerator has a separate ada_lin per block, so the checkpoint is not converted")


def var_to_argen(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """VAR state dict -> VARGenerator state dict (drops ``lvl_1L`` and ``attn_bias_for_masking``).
    ``reports``: a list to append the record of what became of every key to (meta.json stores it)."""
    _refuse_shared_aln(state)
    ledger = KeyLedger(state, "var->argen")
    ledger.rename(VAR_KEY_MAP, what="VAR->argen", hint=_VAR_KIND_HINT)
    return ledger.result(reports)


def var_buffers(scales: Sequence[int]) -> dict[str, Tensor]:
    """VAR's persistent buffers for ``scales``: ``lvl_1L`` (1, L) int64 and the block-causal
    ``attn_bias_for_masking`` (1, 1, L, L), 0 where a query's scale >= the key's, else -inf."""
    levels = torch.cat([torch.full((s * s,), k) for k, s in enumerate(scales)])
    bias = torch.where(levels[:, None] >= levels[None, :], 0.0, -torch.inf)
    return {"lvl_1L": levels[None], "attn_bias_for_masking": bias[None, None].contiguous()}


def argen_to_var(state: Mapping[str, Tensor], *, scales: Sequence[int] = VAR_SCALES, buffers: bool = True,
                 reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """VARGenerator state dict -> VAR state dict, with ``lvl_1L`` and ``attn_bias_for_masking`` rebuilt
    from ``scales`` (VAR's strict ``load_state_dict`` expects them) unless ``buffers=False``."""
    extra = sorted(k for k in state if k.startswith("cond_embed.") and k != "cond_embed.embedding_table.weight")
    if extra:
        raise ValueError(f"VAR is class-conditional only; this generator has text-condition keys {extra[:4]}")
    ledger = KeyLedger(state, "argen->var")
    ledger.rename(inverse_table(VAR_KEY_MAP), what="argen->VAR", hint=_VAR_KIND_HINT)
    if buffers:
        _check_scales(scales, require_key(ledger.state, "pos_1LC", "the position table"),
                      ledger.state.get("lvl_embed.weight"), ledger.state.get("pos_start"))
        for key, value in var_buffers(scales).items():
            ledger.create(key, value, f"rebuilt from the scales {list(scales)}: VAR's strict load_state_dict "
                                      f"expects it")
    return ledger.result(reports)


def _check_scales(scales: Sequence[int], pos_1LC: Tensor, lvl: Tensor | None, pos_start: Tensor | None) -> None:
    length = sum(int(s) ** 2 for s in scales)
    if length != pos_1LC.shape[1]:
        raise ValueError(f"scales {list(scales)} give sum(pn^2) = {length} tokens but pos_1LC holds "
                         f"{pos_1LC.shape[1]}: pass the scales (VAR's patch_nums) the model was trained with "
                         f"(--scales; VAR's 256px default {','.join(map(str, VAR_SCALES))} gives 680)")
    if lvl is not None and lvl.shape[0] != len(scales):
        raise ValueError(f"lvl_embed has {lvl.shape[0]} rows but {len(scales)} scales were given: {list(scales)}")
    if pos_start is not None and pos_start.shape[1] != int(scales[0]) ** 2:
        raise ValueError(f"pos_start holds {pos_start.shape[1]} slots but the first scale {scales[0]} has "
                         f"{int(scales[0]) ** 2} tokens")


def _block_count(state: Mapping[str, Tensor]) -> int:
    return indexed_count(state, "blocks", _BLOCK_KEYS, "VAR transformer")


def infer_var_config(state: Mapping[str, Tensor], *, scales: Sequence[int] = VAR_SCALES,
                     n_head: int | None = None) -> dict[str, Any]:
    """The VARGenerator config node for a VAR state dict (official or argen names). Depth, width,
    heads (``scale_mul_1H11`` is per head; without l2-norm attention VAR's rule heads = depth or
    ``n_head``), classes, vocabulary and code width come from the weights; ``scales`` is checked."""
    _refuse_shared_aln(state)
    table = state.get("class_emb.weight", state.get("cond_embed.embedding_table.weight"))
    if table is None:
        raise KeyError("the state dict has no class_emb.weight (cond_embed.embedding_table.weight): not a VAR")
    word = require_key(state, "word_embed.weight", "the input projection")
    head = require_key(state, "head.weight", "the output head")
    width, input_dim, vocab = int(word.shape[0]), int(word.shape[1]), int(head.shape[0])
    depth = _block_count(state)
    _check_scales(scales, require_key(state, "pos_1LC", "the position table"),
                  require_key(state, "lvl_embed.weight", "the level embedding"), require_key(state, "pos_start", "SOS"))
    scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
    heads = n_head if n_head is not None else depth
    if scale_mul is not None:
        if n_head is not None and n_head != scale_mul.shape[1]:
            raise ValueError(f"n_head {n_head} disagrees with scale_mul_1H11, which has {scale_mul.shape[1]} heads")
        heads = int(scale_mul.shape[1])
    if heads < 1 or width % heads:
        raise ValueError(f"{heads} heads do not divide the width {width}")
    hidden = int(state["blocks.0.ffn.fc1.weight"].shape[0])
    mlp_ratio = hidden / width
    if round(width * mlp_ratio) != hidden:
        raise ValueError(f"FFN hidden size {hidden} is not round(width {width} x mlp_ratio)")
    if width == 64 * depth and heads == depth and depth in VAR_PRESETS:
        log.info("recognised %s (width %d, %d heads)", VAR_PRESETS[depth], width, heads)
    condition = {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True,
                 "num_classes": int(table.shape[0]) - 1, "dropout": 0.1}  # VAR's cond_drop_rate
    return {"condition": condition, "_target_": "argen.generators.var.VARGenerator", "vocab_size": vocab,
            "scales": [int(s) for s in scales], "input_dim": input_dim, "depth": depth, "width": width,
            "n_head": heads, "mlp_ratio": mlp_ratio, "l2_norm_attention": scale_mul is not None, **VAR_DEFAULTS}


# ---- VQVAE ---------------------------------------------------------------------------------------
def vae_to_argen(state: Mapping[str, Tensor], *, num_scales: int | None = None,
                 reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """VAR VQVAE state dict -> MultiScaleVQTokenizer state dict. ``num_scales``: the tokenizer's
    scale count (default: the rows of ``ema_vocab_hit_SV``)."""
    ledger = KeyLedger(state, "var->argen")
    ledger.rename({**VAE_KEY_MAP, **PHI_KEY_MAP}, what="VAR->argen VAE", hint=_VAR_KIND_HINT)
    _flip_decoder(ledger)
    _split_qkv(ledger)
    if num_scales is None:
        num_scales = int(require_key(state, "quantize.ema_vocab_hit_SV", "the scale count: pass num_scales").shape[0])
    vocab = int(require_key(ledger.state, "quantize.embedding.weight", "the codebook").shape[0])
    _usage_from_hits(ledger, num_scales, vocab)
    return ledger.result(reports)


def argen_to_vae(state: Mapping[str, Tensor], *, share_quant_resi: int | None = None,
                 reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """MultiScaleVQTokenizer state dict -> VAR ``VQVAE`` state dict. ``share_quant_resi`` picks VAR's phi
    naming (0: ``quant_resi.{i}``, 1: ``quant_resi.qresi``, n: ``quant_resi.qresi_ls.{i}``); default 1 for
    one phi, else the phi count. ``ema_vocab_hit_SV`` gets ``usage_ema_scales`` (fractions, not counts);
    ``usage_ema`` is dropped (recomputed from those on the way back)."""
    count = len({k.split(".")[2] for k in state if k.startswith("quantize.phi.")})
    share = (1 if count == 1 else count) if share_quant_resi is None else share_quant_resi
    if count and (share == 1 and count != 1 or share >= 2 and share != count):
        raise ValueError(f"share_quant_resi={share} does not fit {count} phi convs")
    phi = {0: "quantize.quant_resi.{i}.*", 1: "quantize.quant_resi.qresi.*"}.get(
        share, "quantize.quant_resi.qresi_ls.{i}.*")
    ledger = KeyLedger(state, "argen->var")
    _flip_decoder(ledger)
    _fuse_qkv(ledger)
    scales = require_key(state, "quantize.usage_ema_scales", "per-scale usage")
    ledger.transform(["quantize.usage_ema_scales"], {"quantize.ema_vocab_hit_SV": scales.clone()},
                     "stored as it is: per-scale usage fractions where VAR keeps hit counts (VAR only logs them)")
    table = {**inverse_table(VAE_KEY_MAP), "quantize.phi.{i}.*": phi}
    ledger.rename(table, what="argen->VAR VAE", drop=VAE_ARGEN_ONLY, hint=_VAR_KIND_HINT)
    return ledger.result(reports)


def _phi_layout(state: Mapping[str, Tensor], num_scales: int) -> tuple[int, int | None]:
    """(argen num_phi, VAR share_quant_resi) from the phi key names; (1, None) without phi weights."""
    partial = {m.group(1) for k in state if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k))}
    single = any(k.startswith("quantize.quant_resi.qresi.") for k in state)
    own = {m.group(1) for k in state if (m := re.match(r"quantize\.quant_resi\.(\d+)\.", k))}
    if sum(map(bool, (partial, single, own))) > 1:
        raise ValueError("the VAE mixes quant_resi naming schemes (qresi_ls / qresi / per-scale)")
    if partial:
        return len(partial), len(partial)
    if single:
        return 1, 1
    if own:
        return (0 if len(own) == num_scales else len(own)), 0
    return 1, None


def infer_vae_config(state: Mapping[str, Tensor], *, scales: Sequence[int] = VAR_SCALES,
                     image_size: int | None = None, phi_ratio: float = 0.5, norm_groups: int = 32) -> dict[str, Any]:
    """The MultiScaleVQTokenizer config node for an official (VAR-named) VQVAE state dict. Not in the
    weights, so given: ``scales``, ``phi_ratio`` (VAR's quant_resi, 0.5), ``norm_groups`` (32 in VAR);
    ``image_size`` defaults to ``scales[-1] * f``."""
    codebook = require_key(state, "quantize.embedding.weight", "the codebook")
    base = int(require_key(state, "encoder.conv_in.weight", "the encoder stem").shape[0])
    levels = len({m.group(1) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    widths = [int(require_key(state, f"encoder.down.{i}.block.0.conv1.weight", f"encoder level {i}").shape[0])
              for i in range(levels)]
    if not widths or any(w % base for w in widths):
        raise ValueError(f"encoder level widths {widths} are not multiples of the stem width {base}")
    blocks = len({m.group(1) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    quant_conv = require_key(state, "quant_conv.weight", "quant_conv")
    if tuple(quant_conv.shape[-2:]) != (3, 3):
        raise ValueError(f"quant_conv is {tuple(quant_conv.shape[-2:])}: argen's quant convs are 3x3 (quant_conv_ks=3)")
    level_attn = any(k.startswith(f"encoder.down.{levels - 1}.attn.") for k in state)
    mid_attn = "encoder.mid.attn_1.qkv.weight" in state
    if level_attn != mid_attn:
        raise ValueError(f"using_sa={level_attn} but using_mid_sa={mid_attn}: argen's `attention` switches the "
                         f"level and mid attention together")
    num_phi, share = _phi_layout(state, len(scales))
    if share is None and abs(phi_ratio) > 1e-6:
        raise ValueError("the VAE has no quantize.quant_resi.* weights (built with quant_resi=0): pass phi_ratio=0")
    f = 2 ** (levels - 1)
    size = int(scales[-1]) * f if image_size is None else int(image_size)
    if size != int(scales[-1]) * f:
        raise ValueError(f"image_size {size} / f {f} != last scale {scales[-1]}")
    return {"_target_": "tokenizers_vq.msvq.MultiScaleVQTokenizer", "image_size": size,
            "codebook_size": int(codebook.shape[0]), "embed_dim": int(codebook.shape[1]),
            "scales": [int(s) for s in scales], "num_phi": num_phi, "phi_ratio": float(phi_ratio),
            "base_channels": base, "channel_multipliers": [w // base for w in widths], "num_res_blocks": blocks,
            "z_channels": int(require_key(state, "encoder.conv_out.weight", "encoder.conv_out").shape[0]),
            "attention": mid_attn, "norm_groups": int(norm_groups), "dropout": 0.0, "commitment_weight": 0.25}


# ---- conversion to export folders ---------------------------------------------------------------
def _read(path: str | Path, entry: str | None, what: str) -> tuple[Path, dict[str, Tensor]]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"VAR checkpoint '{path}' not found; download {what} from "
                                f"huggingface.co/FoundationVision/var first and pass its path")
    return path, read_official_checkpoint(path, entry=entry)


def _check_names(raw: Mapping[str, Tensor], expected: Mapping[str, Tensor], optional: set[str], what: str) -> None:
    """The official keys a module of the inferred config has (``expected``) must be exactly ``raw``'s."""
    missing = sorted(set(expected) - set(raw) - optional)
    extra = sorted(set(raw) - set(expected))
    if missing or extra:
        raise KeyError(f"the {what} checkpoint does not match the config inferred from it: missing official "
                       f"key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected {extra[:8]}")


def _var_conversion(raw: Mapping[str, Tensor], *, scales: Sequence[int], n_head: int | None, depth: int | None,
                    source: str) -> Conversion:
    """The one conversion path of a VAR transformer state dict (in memory; :func:`convert_var` saves it)."""
    reports: list[KeyReport] = []
    state = var_to_argen(raw, reports=reports)
    config = infer_var_config(state, scales=scales, n_head=n_head)
    if depth is not None and depth != config["depth"]:
        raise ValueError(f"{source} holds a depth-{config['depth']} VAR, not depth {depth}")
    expected = argen_to_var(build_on_meta(config).state_dict(), scales=scales, reports=reports)  # the way back
    _check_names(raw, expected, set(var_buffers(scales)), "VAR")
    return Conversion(build_and_load(config, state), config, reports)


def _vae_conversion(raw: Mapping[str, Tensor], *, scales: Sequence[int], image_size: int | None, phi_ratio: float,
                    norm_groups: int) -> Conversion:
    """The one conversion path of a VQVAE state dict (in memory; :func:`convert_vae` saves it)."""
    reports: list[KeyReport] = []
    state = vae_to_argen(raw, num_scales=len(scales), reports=reports)
    config = infer_vae_config(raw, scales=scales, image_size=image_size, phi_ratio=phi_ratio, norm_groups=norm_groups)
    share = _phi_layout(raw, len(scales))[1]
    expected = argen_to_vae(build_on_meta(config).state_dict(), share_quant_resi=share, reports=reports)  # the way back
    _check_names(raw, expected, {"quantize.ema_vocab_hit_SV"}, "VAE")
    return Conversion(build_and_load(config, state), config, reports)


def var_from_state_dict(state: Mapping[str, Any], *, scales: Sequence[int] | None = None, n_head: int | None = None,
                        depth: int | None = None, tokenizer: nn.Module | None = None,
                        entry: str | None = None) -> VARGenerator:
    """An official VAR state dict already in memory (e.g. ``torch.load(p, weights_only=True)``) -> a
    ready :class:`~argen.generators.var.VARGenerator` (strict load, eval mode, on the CPU). ``scales``:
    default the ``tokenizer``'s, else VAR's 256 px ones; ``tokenizer``: the scale-residual tokenizer to
    bind (``attach_tokenizer`` checks its codes, code width and scales); the rest as :func:`convert_var`."""
    raw = unwrap_state_dict(state, source="the state dict", entry=entry)
    scales = list(scales or getattr(getattr(tokenizer, "quantize", tokenizer), "scales", None) or VAR_SCALES)
    module = cast("VARGenerator", _var_conversion(raw, scales=scales, n_head=n_head, depth=depth,
                                                  source="the state dict").module)
    if tokenizer is not None:
        module.attach_tokenizer(tokenizer)
    return module


def vae_from_state_dict(state: Mapping[str, Any], *, scales: Sequence[int] = VAR_SCALES, image_size: int | None = None,
                        phi_ratio: float = 0.5, norm_groups: int = 32,
                        entry: str | None = None) -> MultiScaleVQTokenizer:
    """An official VQVAE state dict already in memory -> a ready
    :class:`~tokenizers_vq.msvq.MultiScaleVQTokenizer` (strict load, eval mode, on the CPU); see :func:`convert_vae`."""
    raw = unwrap_state_dict(state, source="the state dict", entry=entry)
    conversion = _vae_conversion(raw, scales=scales, image_size=image_size, phi_ratio=phi_ratio,
                                 norm_groups=norm_groups)
    return cast("MultiScaleVQTokenizer", conversion.module)


def convert_var(path: str | Path, out_dir: str | Path, *, scales: Sequence[int] | None = None,
                n_head: int | None = None, depth: int | None = None, tokenizer: str | Path | None = None,
                entry: str | None = None, overwrite: bool = False) -> Path:
    """Official ``var_d*.pth`` -> argen export folder. ``scales``: default the tokenizer export's, else
    VAR's; ``depth``: checked against the weights; ``tokenizer``: the converted VAE export, recorded in
    meta.json so argen-sample attaches it (checked for codes, code width and scales). The same conversion
    as :func:`var_from_state_dict`, then saved."""
    from tokenizers_vq.io import read_meta

    tok_config: dict[str, Any] | None = None
    if tokenizer is not None:
        import yaml

        tok_config = yaml.safe_load((Path(tokenizer) / "config.yaml").read_text())
    scales = list(scales or (tok_config or {}).get("scales") or VAR_SCALES)
    path, raw = _read(path, entry, "var_d16.pth (or d20, d24, d30)")
    conversion = _var_conversion(raw, scales=scales, n_head=n_head, depth=depth, source=str(path))
    config = conversion.config
    preset = VAR_PRESETS.get(config["depth"]) if config["width"] == 64 * config["depth"] else None
    extra: dict[str, Any] = {"preset": preset, "checkpoint_entry": entry}
    if tokenizer is not None and tok_config is not None:
        got = (tok_config.get("codebook_size"), tok_config.get("embed_dim"), list(tok_config.get("scales") or []))
        want = (config["vocab_size"], config["input_dim"], config["scales"])
        if got != want:
            raise ValueError(f"tokenizer {tokenizer} has (codes, code width, scales) {got}; this VAR needs {want}")
        extra["tokenizer"] = {"path": str(Path(tokenizer).resolve()), "sha256": read_meta(tokenizer)["sha256"]}
    describe = f"{preset or 'custom'}, depth {config['depth']}, width {config['width']}"
    return save_conversion(conversion, path, out_dir, kind="generator", source="var", describe=describe,
                           overwrite=overwrite, **extra)


def convert_vae(path: str | Path, out_dir: str | Path, *, scales: Sequence[int] = VAR_SCALES,
                image_size: int | None = None, phi_ratio: float = 0.5, norm_groups: int = 32,
                entry: str | None = None, overwrite: bool = False) -> Path:
    """Official ``vae_ch160v4096z32.pth`` -> argen export folder (a MultiScaleVQTokenizer); the same
    conversion as :func:`vae_from_state_dict`, then saved."""
    path, raw = _read(path, entry, "vae_ch160v4096z32.pth")
    conversion = _vae_conversion(raw, scales=scales, image_size=image_size, phi_ratio=phi_ratio,
                                 norm_groups=norm_groups)
    config = conversion.config
    describe = f"{config['codebook_size']} codes, {len(scales)} scales, f={conversion.module.downsample_factor}"
    return save_conversion(conversion, path, out_dir, kind="tokenizer", source="var", describe=describe,
                           overwrite=overwrite, image_size=config["image_size"],
                           share_quant_resi=_phi_layout(raw, len(scales))[1], checkpoint_entry=entry)
