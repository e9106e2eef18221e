"""Convert official LlamaGen checkpoints (FoundationVision/LlamaGen) to argen export folders and back.

argen's :class:`~argen.generators.raster.RasterGenerator` and
:class:`~tokenizers_vq.vq.VQTokenizer` use LlamaGen's module names on purpose, so the conversion
is a documented, nearly-identity key table (:data:`GPT_KEY_MAP`, :data:`VQ_KEY_MAP`) plus the
handful of entries that are not weights. What the weights may not carry, and is therefore an
argument: the image grid of a GPT (read from ``freqs_cis`` when an older checkpoint stores its 2D
RoPE table, and checked; otherwise ``grid_size``), the head count of a GPT whose (n_layer, dim) is
not an official preset (also read from a stored table), and the VQ's GroupNorm group count.

    from argen.io.llamagen import convert_gpt, convert_vq, gpt_from_state_dict
    convert_gpt("c2i_B_256.pt", "weights/gpt_b", grid_size=16)   # -> argen.load("weights/gpt_b")
    convert_vq("vq_ds16_c2i.pt", "weights/vq16")
    gpt = gpt_from_state_dict(torch.load("c2i_B_256.pt", weights_only=True), grid_size=16)  # in memory

or ``python scripts/convert_llamagen.py gpt --ckpt c2i_B_256.pt --out weights/gpt_b --image-size 256``.
Both ways run the same conversion; an export's meta.json records, per direction, which keys were kept,
renamed, transformed, dropped (and why) or created.

Only weights are checked here (names and shapes, strict loading). Numerical parity with LlamaGen
additionally relies on the forward pass reproducing LlamaGen's quirks (research/algorithms.md
2.3: zeroed RoPE rows for the condition slots, interleaved rotation pairs, logits from slot
``cls_token_num - 1``), which :mod:`argen.nn.rope` and :mod:`argen.generators.raster` implement.
For t2i checkpoints parity also needs the caption features LlamaGen was trained on (FLAN-T5-XL,
120 slots, padding moved to the front), which argen's ``HFTextEncoder`` computes outside the
state dict.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    indexed_count,
    inverse_table,
    read_official_checkpoint,
    require_key,
    save_conversion,
    unwrap_state_dict,
)
from argen.nn.blocks import swiglu_hidden
from argen.nn.rope import rope_2d

if TYPE_CHECKING:
    from argen.generators.raster import RasterGenerator
    from tokenizers_vq.vq import VQTokenizer

log = logging.getLogger(__name__)

# ---- the conversion tables ----------------------------------------------------------------------
# Patterns: "{i}" stands for a layer index, "*" for any remaining suffix. A Drop value means the
# LlamaGen entry is not a weight and is dropped on the way into argen; its reason goes into meta.json.
_CACHE = "an inference cache of LlamaGen's setup_caches(); argen keeps it in the sampler's DecodeState"

GPT_KEY_MAP: dict[str, str | Drop] = {
    # Class condition (algorithms.md 2.3, LlamaGen LabelEmbedder): (num_classes + 1, dim); the
    # last row is the null class used by CFG, which is argen ClassEmbedder's row num_classes too.
    "cls_embedding.embedding_table.weight": "cls_embedding.embedding_table.weight",
    # Caption condition (t2i, CaptionEmbedder): MLP caption_dim -> dim -> dim, GELU-tanh, no
    # biases, and the fixed random null caption (cls_token_num, caption_dim), a buffer in both.
    # Difference: argen's TextConditioner also owns the text encoder (cls_embedding.encoder.*);
    # LlamaGen feeds precomputed T5 features. HFTextEncoder keeps its weights out of the state
    # dict, so a converted t2i model has exactly LlamaGen's keys.
    "cls_embedding.cap_proj.fc1.weight": "cls_embedding.cap_proj.fc1.weight",
    "cls_embedding.cap_proj.fc2.weight": "cls_embedding.cap_proj.fc2.weight",
    "cls_embedding.uncond_embedding": "cls_embedding.uncond_embedding",
    "tok_embeddings.weight": "tok_embeddings.weight",  # (V, dim)
    # Fused qkv (3*dim, dim): rows are [q | k | v], each head-major. LlamaGen splits the output in
    # three and views each as (n_head, head_dim); argen views it as (3, n_head, head_dim), the same
    # layout, so no permutation is needed (n_kv_head = n_head in every official model).
    "layers.{i}.attention.wqkv.weight": "layers.{i}.attention.wqkv.weight",
    "layers.{i}.attention.wo.weight": "layers.{i}.attention.wo.weight",
    # SwiGLU w2(silu(w1 x) * w3 x); hidden = find_multiple(int(2 * 4 * dim / 3), 256) (2.3).
    "layers.{i}.feed_forward.w1.weight": "layers.{i}.feed_forward.w1.weight",
    "layers.{i}.feed_forward.w3.weight": "layers.{i}.feed_forward.w3.weight",
    "layers.{i}.feed_forward.w2.weight": "layers.{i}.feed_forward.w2.weight",
    "layers.{i}.attention_norm.weight": "layers.{i}.attention_norm.weight",  # pre-RMSNorm, eps 1e-5
    "layers.{i}.ffn_norm.weight": "layers.{i}.ffn_norm.weight",
    "norm.weight": "norm.weight",
    "output.weight": "output.weight",  # (V, dim), no bias, not tied to tok_embeddings
    # Not weights. Older checkpoints store the 2D RoPE table (cls_token_num + grid^2, head_dim // 2, 2);
    # argen recomputes it (a non-persistent buffer, rope.py), so it is dropped, after infer_gpt_config
    # has read the grid from it and checked it against argen's own table.
    "freqs_cis": Drop("LlamaGen's 2D RoPE table: argen recomputes it from the grid (which conversion reads "
                      "from this table, after checking it equals argen's own)"),
    # Inference caches, present only if a model was saved after setup_caches(): the causal mask
    # and per-layer KV caches. argen keeps both in the DecodeState a sampler holds.
    "causal_mask": Drop(_CACHE),
    "layers.{i}.attention.kv_cache.k_cache": Drop(_CACHE),
    "layers.{i}.attention.kv_cache.v_cache": Drop(_CACHE),
}

# argen-only GPT keys, dropped by argen_to_gpt: a jointly trained text encoder (WordTextEncoder)
# has no place in LlamaGen, which always reads T5 features.
GPT_ARGEN_ONLY: dict[str, str] = {
    "cls_embedding.encoder.*": "argen's jointly trained text encoder: LlamaGen reads precomputed T5 features",
    "readout.*": "argen's condition readout head (a training-only auxiliary loss): LlamaGen has none"}

VQ_KEY_MAP: dict[str, str | Drop] = {
    # Encoder/decoder, quant_conv (z 256 -> 8) and post_quant_conv keep LlamaGen's names and
    # level order (algorithms.md 2.2: decoder conv_blocks[0] is the lowest resolution).
    "encoder.*": "encoder.*",
    "decoder.*": "decoder.*",
    "quant_conv.*": "quant_conv.*",
    "post_quant_conv.*": "post_quant_conv.*",
    "quantize.embedding.weight": "quantize.embedding.weight",  # (16384, 8), l2-normalised at use
    # Difference: LlamaGen's usage buffer is a FIFO of the last 65536 chosen code ids (zeros
    # until that many tokens were seen); argen keeps a per-code usage EMA (quantize.usage_ema)
    # that drives dead-code restart. The FIFO is dropped and the EMA starts at argen's own
    # initial value 1/V ("no code known dead"); a histogram of the FIFO is not used because an
    # untouched all-zero FIFO would mark every code but 0 as dead and a fine-tune would re-seed them.
    "quantize.codebook_used": Drop("LlamaGen's FIFO of the last 65536 chosen code ids; argen's usage EMA "
                                   "starts at 1/V instead (an all-zero FIFO would mark every code but 0 dead)"),
}
VQ_ARGEN_ONLY: dict[str, str] = {
    "quantize.usage_ema": "argen's per-code usage EMA (dead-code restart); LlamaGen's usage FIFO is a different "
                          "statistic, so it is not derived from it"}
LLAMAGEN_USAGE_SLOTS = 65536  # length of LlamaGen's quantize.codebook_used

# Official GPT presets (algorithms.md 2.3): (n_layer, dim) -> (name, n_head).
GPT_PRESETS: dict[tuple[int, int], tuple[str, int]] = {
    (12, 768): ("GPT-B", 12), (24, 1024): ("GPT-L", 16), (36, 1280): ("GPT-XL", 20),
    (48, 1536): ("GPT-XXL", 24), (48, 2560): ("GPT-XXXL", 40), (24, 3200): ("GPT-3B", 32),
    (22, 2048): ("GPT-1B", 32), (32, 4096): ("GPT-7B", 32),
}
# LlamaGen's training defaults (2.3); dropout only matters if the converted model is fine-tuned.
GPT_DEFAULTS: dict[str, Any] = {
    "multiple_of": 256, "norm_eps": 1.0e-5, "rope_base": 10000.0, "zero_condition_rope": True,
    "token_dropout": 0.1, "attn_dropout": 0.0, "resid_dropout": 0.1, "ffn_dropout": 0.1,
    "initializer_range": 0.02,
}
_LAYER_KEYS = ("attention.wqkv.weight", "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
               "feed_forward.w2.weight", "attention_norm.weight", "ffn_norm.weight")


@dataclass(frozen=True)
class GPTFamily:
    """A family of official checkpoints built on LlamaGen's ``Transformer``: LlamaGen itself, and forks that
    add to it (NAR: one more block and a second head, :mod:`argen.io.nar`). ``key_map``: the official ->
    argen table; ``target``: the argen generator class; ``extra_blocks``: blocks of ``layers`` beyond the
    trunk (not stored apart in the weights, so an argument); ``presets``: (trunk layers, dim) -> (name,
    heads); ``defaults``: config entries beside LlamaGen's."""

    name: str
    key_map: Mapping[str, str | Drop]
    target: str
    presets: Mapping[tuple[int, int], tuple[str, int]]
    extra_blocks: int = 0
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()  # keys only this family has; a state dict without them is refused
    other: str = ""  # what converts a state dict without them
    foreign: Mapping[str, str] = field(default_factory=dict)  # key of another family -> what converts it


LLAMAGEN = GPTFamily("LlamaGen", GPT_KEY_MAP, "argen.generators.raster.RasterGenerator", GPT_PRESETS,
                     foreign={"medusa_output.weight": "a NAR checkpoint (it has head B's medusa_output): convert it with "
                                                      "argen.io.nar.convert_nar or scripts/convert_nar.py"})


def gpt_to_argen(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None,
                 family: GPTFamily = LLAMAGEN) -> dict[str, Tensor]:
    """LlamaGen GPT state dict -> RasterGenerator state dict (drops ``freqs_cis`` and caches).
    ``reports``: a list to append the record of what became of every key to (meta.json stores it)."""
    for key, hint in family.foreign.items():
        if key in state:
            raise KeyError(f"not a {family.name} checkpoint: this is {hint}")
    ledger = KeyLedger(state, f"{family.name.lower()}->argen")
    ledger.rename(family.key_map, what=f"{family.name}->argen GPT")
    return ledger.result(reports)


def argen_to_gpt(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None,
                 family: GPTFamily = LLAMAGEN) -> dict[str, Tensor]:
    """RasterGenerator state dict -> LlamaGen ``Transformer`` state dict (loads with LlamaGen's
    ``load_state_dict``, which does not expect ``freqs_cis``). A jointly trained argen text
    encoder and the condition readout head have no LlamaGen counterpart and are dropped with a warning."""
    ledger = KeyLedger(state, f"argen->{family.name.lower()}")
    ledger.rename(inverse_table(family.key_map), what=f"argen->{family.name} GPT", drop=GPT_ARGEN_ONLY)
    report = ledger.report()
    if report.dropped:
        log.warning("dropped %d argen-only key(s) (%s has no word encoder or readout head): %s",
                    len(report.dropped), family.name, ", ".join(sorted(report.dropped)[:4]))
    return ledger.result(reports)


def vq_to_argen(state: Mapping[str, Tensor], *, reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """LlamaGen VQ state dict -> VQTokenizer state dict (``codebook_used`` dropped, ``usage_ema`` = 1/V)."""
    ledger = KeyLedger(state, "llamagen->argen")
    ledger.rename(VQ_KEY_MAP, what="LlamaGen->argen VQ")
    codebook = require_key(ledger.state, "quantize.embedding.weight", "the VQ codebook")
    size = codebook.shape[0]
    ledger.create("quantize.usage_ema", torch.full((size,), 1.0 / size, dtype=torch.float32, device=codebook.device),
                  "argen's initial value 1/V per code (no code known dead)")
    return ledger.result(reports)


def argen_to_vq(state: Mapping[str, Tensor], *, codebook_used: bool = True,
                reports: list[KeyReport] | None = None) -> dict[str, Tensor]:
    """VQTokenizer state dict -> LlamaGen ``VQModel`` state dict. ``codebook_used``: add LlamaGen's
    zero-filled usage FIFO (its models register it when ``codebook_show_usage``, the default)."""
    ledger = KeyLedger(state, "argen->llamagen")
    ledger.rename(inverse_table(VQ_KEY_MAP), what="argen->LlamaGen VQ", drop=VQ_ARGEN_ONLY)
    if codebook_used:
        ledger.create("quantize.codebook_used", torch.zeros(LLAMAGEN_USAGE_SLOTS),
                      f"zeros: LlamaGen's FIFO of the last {LLAMAGEN_USAGE_SLOTS} code ids, empty")
    return ledger.result(reports)


# ---- config inference ---------------------------------------------------------------------------
def _layer_count(state: Mapping[str, Tensor]) -> int:
    """Number of transformer layers, after checking every layer has all its weights."""
    return indexed_count(state, "layers", _LAYER_KEYS, "LlamaGen GPT")


def _resolve_heads(n_layer: int, dim: int, n_head: int | None, rope: Tensor | None,
                   presets: Mapping[tuple[int, int], tuple[str, int]] = GPT_PRESETS) -> tuple[int, str | None]:
    """The head count: given, else the official preset's, else read from a stored freqs_cis (its
    second axis is head_dim // 2); the table itself is checked later (:func:`_resolve_grid`)."""
    preset = presets.get((n_layer, dim))
    if n_head is None:
        stored_head_dim = 2 * int(rope.shape[1]) if rope is not None and rope.ndim == 3 else 0
        if preset is not None:
            n_head = preset[1]
        elif stored_head_dim and dim % stored_head_dim == 0:
            n_head = dim // stored_head_dim
        else:
            raise ValueError(f"({n_layer} layers, dim {dim}) is not an official LlamaGen preset "
                             f"({sorted(presets)}); the head count is not stored in the weights: pass n_head")
    if n_head < 1 or dim % n_head:
        raise ValueError(f"n_head {n_head} does not divide dim {dim}")
    if (dim // n_head) % 4:
        raise ValueError(f"head_dim {dim // n_head} (dim {dim} / n_head {n_head}) must be divisible by 4 for 2D RoPE")
    return n_head, None if preset is None else preset[0]


def _resolve_grid(rope: Tensor | None, grid_size: int | None, *, prefix: int, dim: int, n_head: int) -> int:
    """Tokens per image side: read from a stored ``freqs_cis`` (LlamaGen's ``precompute_freqs_cis_2d(grid,
    head_dim, rope_base, cls_token_num)``: (cls_token_num + grid^2, head_dim // 2, 2)) and checked against
    ``grid_size`` when both are given; else ``grid_size``, which must then be given."""
    if rope is None:
        if grid_size is None:
            raise ValueError("the checkpoint stores no freqs_cis, so its token grid is not in the weights: pass "
                             "grid_size (tokens per side: image size / 16 for LlamaGen's VQ-16, 16 for the 256 px "
                             "models, 24 for the 384 px ones; --image-size or --grid-size on the command line)")
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1, got {grid_size}")
        return int(grid_size)
    head_dim = dim // n_head
    if rope.ndim != 3 or rope.shape[2] != 2 or not rope.is_floating_point():
        raise ValueError(f"freqs_cis has shape {tuple(rope.shape)} ({rope.dtype}); LlamaGen stores a float "
                         f"(cls_token_num + grid^2, head_dim // 2, 2) table of (cos, sin)")
    if rope.shape[1] != head_dim // 2:
        raise ValueError(f"n_head {n_head} gives head_dim {head_dim}, but the stored freqs_cis has "
                         f"{rope.shape[1]} rotation pairs (head_dim {2 * rope.shape[1]}): pass "
                         f"n_head={dim // (2 * rope.shape[1])}")
    rows = int(rope.shape[0])
    side = math.isqrt(max(rows - prefix, 0))
    if rows - prefix < 1 or side * side != rows - prefix:
        raise ValueError(f"freqs_cis has {rows} rows = {prefix} condition row(s) + {rows - prefix} grid cells, "
                         f"not a whole square: not a LlamaGen 2D RoPE table for this condition")
    if grid_size is not None and grid_size != side:
        raise ValueError(f"grid_size {grid_size} ({grid_size * 16} px with LlamaGen's VQ-16) contradicts the "
                         f"checkpoint's stored freqs_cis, a 2D RoPE table for a {side}x{side} grid ({rows} rows = "
                         f"{prefix} condition + {side}^2): leave grid_size out (omit --image-size) to use the stored "
                         f"grid, or pass grid_size={side} (--image-size {side * 16})")
    if not rope.is_meta:  # shapes-only state dicts (meta tensors) carry no values to compare
        _check_rope_values(rope, side, prefix, head_dim)
    log.info("token grid %dx%d read from the stored freqs_cis", side, side)
    return side


def _check_rope_values(rope: Tensor, side: int, prefix: int, head_dim: int) -> None:
    """The stored table must be the one argen computes (rope.py), or the converted model would rotate
    queries and keys differently from the trained one."""
    base = float(GPT_DEFAULTS["rope_base"])
    expected = rope_2d(side, side, head_dim, base=base, prefix=prefix, zero_prefix=GPT_DEFAULTS["zero_condition_rope"])
    stored = rope.detach().float().cpu()
    atol = max(1e-4, 2 * torch.finfo(rope.dtype).eps)  # computed on another device, or stored in half precision
    cond_diff = float(stored[:prefix].abs().max()) if prefix else 0.0
    if cond_diff > atol:
        raise ValueError(f"the first {prefix} condition row(s) of the stored freqs_cis are not zero (max "
                         f"{cond_diff:.3g}): LlamaGen zeroes them (the condition's queries and keys vanish), and "
                         f"argen's zero_condition_rope reproduces only that")
    diff = float((stored[prefix:] - expected[prefix:]).abs().max())
    if diff > atol:
        raise ValueError(f"the stored freqs_cis does not match argen's 2D RoPE table for a {side}x{side} grid, "
                         f"head_dim {head_dim}, rope_base {base:g} (max difference {diff:.3g}): the checkpoint was "
                         f"built with another rope_base or RoPE layout, which argen's RasterGenerator does not "
                         f"reproduce")


def _condition_node(state: Mapping[str, Tensor], dim: int, text_encoder: str | None) -> dict[str, Any]:
    if "cls_embedding.embedding_table.weight" in state:
        rows = state["cls_embedding.embedding_table.weight"].shape[0]
        # LlamaGen adds the null row only when trained with class dropout (all released models are).
        return {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True, "num_classes": rows - 1,
                "dropout": 0.1}
    if "cls_embedding.cap_proj.fc1.weight" in state:
        fc1 = state["cls_embedding.cap_proj.fc1.weight"]  # (dim, caption_dim)
        slots = require_key(state, "cls_embedding.uncond_embedding", "the t2i null caption").shape[0]
        if fc1.shape[0] != dim:
            raise ValueError(f"cap_proj.fc1 projects to {fc1.shape[0]} features but the model width is {dim}")
        encoder = {"_target_": "argen.nn.text.HFTextEncoder", "path": text_encoder or "???", "kind": "t5",
                   "max_length": int(slots), "out_dim": int(fc1.shape[1])}
        return {"_target_": "argen.nn.conditioning.TextConditioner", "_partial_": True, "dropout": 0.1,
                "encoder": encoder}
    raise KeyError("the GPT state dict has neither cls_embedding.embedding_table.weight (class-conditional) nor "
                   "cls_embedding.cap_proj.fc1.weight (text-conditional)")


def infer_gpt_config(state: Mapping[str, Tensor], *, grid_size: int | None = None, n_head: int | None = None,
                     multiple_of: int = 256, text_encoder: str | None = None,
                     family: GPTFamily = LLAMAGEN) -> dict[str, Any]:
    """The RasterGenerator config node (Hydra, with ``_target_``) that holds ``state`` (LlamaGen or
    argen names: they agree). ``grid_size``: tokens per image side (image size / 16 for VQ-16); None:
    read from the stored ``freqs_cis`` (older checkpoints), which is checked against argen's table and
    against ``grid_size`` when both are given. ``n_head``: needed only off the official presets without
    a stored table; ``text_encoder``: local FLAN-T5 folder for t2i checkpoints."""
    missing = [k for k in family.required if k not in state]
    if missing:
        raise KeyError(f"the state dict has no {', '.join(missing)}: not a {family.name} checkpoint ({family.other})")
    tok = require_key(state, "tok_embeddings.weight", "token embeddings")
    out = require_key(state, "output.weight", "output head")
    vocab, dim = int(out.shape[0]), int(tok.shape[1])
    if tuple(tok.shape) != (vocab, dim):
        raise ValueError(f"tok_embeddings {tuple(tok.shape)} and output {tuple(out.shape)} disagree")
    n_layer = _layer_count(state) - family.extra_blocks
    if n_layer < 1:
        raise ValueError(f"the state dict has {n_layer + family.extra_blocks} blocks in layers, but a {family.name} "
                         f"model has a trunk and {family.extra_blocks} more")
    rope = state.get("freqs_cis")
    heads, preset = _resolve_heads(n_layer, dim, n_head, rope, family.presets)
    hidden = int(state["layers.0.feed_forward.w1.weight"].shape[0])
    expected = swiglu_hidden(dim, multiple_of)
    if hidden != expected:
        raise ValueError(f"SwiGLU hidden size {hidden} != find_multiple(int(8 * {dim} / 3), {multiple_of}) = "
                         f"{expected}: pass the multiple_of the model was built with")
    condition = _condition_node(state, dim, text_encoder)
    prefix = int(condition["encoder"]["max_length"]) if "encoder" in condition else 1  # LlamaGen's cls_token_num
    grid = _resolve_grid(rope, grid_size, prefix=prefix, dim=dim, n_head=heads)
    if preset:
        log.info("recognised %s (%d layers, dim %d, %d heads)", preset, n_layer, dim, heads)
    return {"condition": condition, "_target_": family.target, "vocab_size": vocab,
            "grid_size": grid, "dim": dim, "n_layer": n_layer, "n_head": heads, **GPT_DEFAULTS,
            "multiple_of": multiple_of, **family.defaults}


def infer_vq_config(state: Mapping[str, Tensor], *, image_size: int = 256, norm_groups: int = 32) -> dict[str, Any]:
    """The VQTokenizer config node for a LlamaGen VQ state dict (either naming). Not stored in the
    weights, so taken as given: ``image_size`` (sets the token grid; the convolutions work at any
    multiple of the downsampling factor), ``norm_groups`` (LlamaGen: 32) and the l2-normalised
    codebook (``codebook_l2_norm=True`` in every released VQ model)."""
    codebook = require_key(state, "quantize.embedding.weight", "the codebook")
    base = int(require_key(state, "encoder.conv_in.weight", "the encoder stem").shape[0])
    levels = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))}
    widths = [int(require_key(state, f"encoder.conv_blocks.{i}.res.0.conv1.weight", f"encoder level {i}").shape[0])
              for i in range(len(levels))]
    if not widths or any(w % base for w in widths):
        raise ValueError(f"encoder level widths {widths} are not multiples of the stem width {base}")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))}
    return {"_target_": "tokenizers_vq.vq.VQTokenizer", "image_size": int(image_size),
            "codebook_size": int(codebook.shape[0]), "embed_dim": int(codebook.shape[1]), "base_channels": base,
            "channel_multipliers": [w // base for w in widths], "num_res_blocks": len(blocks),
            "z_channels": int(require_key(state, "quant_conv.weight", "quant_conv").shape[1]),
            "attention": "encoder.mid.1.q.weight" in state,  # the mid attention exists iff attention is on
            "norm_groups": int(norm_groups), "dropout": 0.0, "l2_normalize": True, "commitment_weight": 0.25,
            "entropy_weight": 0.0, "entropy_temperature": 0.01}


# ---- conversion: in memory, and to export folders (one path) ---------------------------------------
class _CaptionSlots(nn.Module):
    """Stand-in for HFTextEncoder while converting to a folder: it has no weights in the generator's
    state dict, so the weights are checked and saved without loading T5; the export names the real one."""

    def __init__(self, *, max_length: int, out_dim: int) -> None:
        super().__init__()
        self.max_length, self.out_dim = max_length, out_dim

    def forward(self, texts: Any) -> Any:
        raise RuntimeError("conversion stand-in: load the export with argen.load to encode captions")


def _build_generator(config: dict[str, Any], encoder: nn.Module | None) -> nn.Module:
    """The generator ``config`` describes; a t2i one around ``encoder`` when given (a loaded
    HFTextEncoder or the stand-in), else with the encoder the config names."""
    import functools

    from hydra.utils import get_class

    from argen.nn.conditioning import TextConditioner

    cond = config["condition"]
    if "encoder" not in cond or encoder is None:
        from hydra.utils import instantiate

        return instantiate(config, _convert_="all")
    want = (cond["encoder"]["max_length"], cond["encoder"]["out_dim"])
    if (getattr(encoder, "max_length", None), getattr(encoder, "out_dim", None)) != want:
        raise ValueError(f"the text encoder gives (slots, width) ({getattr(encoder, 'max_length', None)}, "
                         f"{getattr(encoder, 'out_dim', None)}) but the checkpoint's caption projection and null "
                         f"caption need {want}")
    kwargs = {k: v for k, v in config.items() if k not in ("_target_", "condition")}
    return get_class(config["_target_"])(**kwargs, condition=functools.partial(TextConditioner, encoder=encoder,
                                                                               dropout=cond["dropout"]))


def _gpt_conversion(raw: Mapping[str, Tensor], *, grid_size: int | None, n_head: int | None, multiple_of: int,
                    text_encoder: str | nn.Module | None, stand_in: bool, source: str,
                    family: GPTFamily = LLAMAGEN) -> Conversion:
    """The one conversion path of a GPT state dict. ``text_encoder`` (t2i): a folder (loaded here unless
    ``stand_in``: converting to a folder needs no T5) or a loaded HFTextEncoder (its ``path`` is recorded)."""
    folder = getattr(text_encoder, "path", None) if isinstance(text_encoder, nn.Module) else text_encoder
    if not (folder is None or isinstance(folder, str)):
        raise TypeError(f"text_encoder must be the local FLAN-T5 folder or a loaded HFTextEncoder, not a "
                        f"{type(text_encoder).__name__} without a path: the export records the encoder's folder")
    reports: list[KeyReport] = []
    state = gpt_to_argen(raw, reports=reports, family=family)
    config = infer_gpt_config(raw, grid_size=grid_size, n_head=n_head, multiple_of=multiple_of, text_encoder=folder,
                              family=family)
    node = config["condition"].get("encoder")
    if node is not None and text_encoder is None:
        raise ValueError(f"{source} is a text-to-image model: pass text_encoder (--text-encoder), the local folder of "
                         f"the FLAN-T5-XL encoder it was trained with")
    encoder = text_encoder if isinstance(text_encoder, nn.Module) else None
    if node is not None and stand_in:
        encoder = _CaptionSlots(max_length=node["max_length"], out_dim=node["out_dim"])
    module = build_and_load(lambda: _build_generator(config, encoder), state)
    argen_to_gpt(module.state_dict(), reports=reports, family=family)  # the way back, for the record
    return Conversion(module, config, reports)


def gpt_from_state_dict(state: Mapping[str, Any], *, grid_size: int | None = None, n_head: int | None = None,
                        multiple_of: int = 256, text_encoder: str | nn.Module | None = None,
                        entry: str | None = None, family: GPTFamily = LLAMAGEN) -> RasterGenerator:
    """An official LlamaGen GPT state dict already in memory (e.g. ``torch.load(p, weights_only=True)``;
    a ``{"model": ...}`` wrapper and DDP prefixes are unwrapped, ``entry`` picks another) -> a ready
    :class:`~argen.generators.raster.RasterGenerator` (strict load, eval mode, on the CPU). Arguments
    as :func:`convert_gpt`; ``text_encoder`` (t2i): the FLAN-T5-XL folder, loaded here, or a loaded
    HFTextEncoder."""
    raw = unwrap_state_dict(state, source="the state dict", entry=entry)
    conversion = _gpt_conversion(raw, grid_size=grid_size, n_head=n_head, multiple_of=multiple_of,
                                 text_encoder=text_encoder, stand_in=False, source="the state dict", family=family)
    return cast("RasterGenerator", conversion.module)


def _vq_conversion(raw: Mapping[str, Tensor], *, image_size: int, norm_groups: int) -> Conversion:
    reports: list[KeyReport] = []
    state = vq_to_argen(raw, reports=reports)
    config = infer_vq_config(state, image_size=image_size, norm_groups=norm_groups)
    module = build_and_load(config, state)
    argen_to_vq(module.state_dict(), reports=reports)  # the way back, for the record
    return Conversion(module, config, reports)


def vq_from_state_dict(state: Mapping[str, Any], *, image_size: int = 256, norm_groups: int = 32,
                       entry: str | None = None) -> VQTokenizer:
    """An official LlamaGen VQ state dict already in memory -> a ready
    :class:`~tokenizers_vq.vq.VQTokenizer` (strict load, eval mode, on the CPU); see :func:`convert_vq`."""
    raw = unwrap_state_dict(state, source="the state dict", entry=entry)
    return cast("VQTokenizer", _vq_conversion(raw, image_size=image_size, norm_groups=norm_groups).module)


def convert_gpt(path: str | Path, out_dir: str | Path, *, grid_size: int | None = None, n_head: int | None = None,
                multiple_of: int = 256, text_encoder: str | None = None, entry: str | None = None,
                overwrite: bool = False, family: GPTFamily = LLAMAGEN) -> Path:
    """Official LlamaGen GPT checkpoint -> argen export folder (``argen.load(out_dir)``).

    grid_size: 16 for the 256 px models, 24 for the 384 px ones (image size / 16); optional when the
    checkpoint stores ``freqs_cis`` (then read from it, and a different value is refused); t2i models
    need ``text_encoder``, the local FLAN-T5-XL folder the export will load captions with (not loaded
    here). The same conversion as :func:`gpt_from_state_dict`, then saved."""
    path = Path(path).expanduser()
    conversion = _gpt_conversion(read_official_checkpoint(path, entry=entry), grid_size=grid_size, n_head=n_head,
                                 multiple_of=multiple_of, text_encoder=text_encoder, stand_in=True, source=str(path),
                                 family=family)
    config = conversion.config
    preset = family.presets.get((config["n_layer"], config["dim"]), (None,))[0]
    describe = f"{preset or 'custom'}, {config['n_layer']} layers, dim {config['dim']}, grid {config['grid_size']}"
    return save_conversion(conversion, path, out_dir, kind="generator", source=family.name.lower(), describe=describe,
                           overwrite=overwrite, preset=preset, checkpoint_entry=entry)


def convert_vq(path: str | Path, out_dir: str | Path, *, image_size: int = 256, norm_groups: int = 32,
               entry: str | None = None, overwrite: bool = False) -> Path:
    """Official LlamaGen VQ checkpoint (e.g. ``vq_ds16_c2i.pt``) -> argen export folder; the same
    conversion as :func:`vq_from_state_dict`, then saved."""
    path = Path(path).expanduser()
    conversion = _vq_conversion(read_official_checkpoint(path, entry=entry), image_size=image_size,
                                norm_groups=norm_groups)
    describe = f"{conversion.config['codebook_size']} codes, f={conversion.module.downsample_factor}"
    return save_conversion(conversion, path, out_dir, kind="tokenizer", source="llamagen", describe=describe,
                           overwrite=overwrite, image_size=image_size, checkpoint_entry=entry)
