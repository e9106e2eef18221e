"""Load a released FlexTok checkpoint (apple/ml-flextok, ``EPFL-VILAB/flextok_*``: one ``model.safetensors``
whose metadata holds the Hydra config) from a local path into :class:`FlexTokTokenizer`.

The config is read, never instantiated: each top-level section and each entry of the encoder's and
decoder's ``module_dict`` is recognised by its ``_target_`` class, its settings become our constructor's
arguments, and its weights are renamed to ours. A layout this converter does not know (an unexpected
module, a mask mode, a key order that would change the function) is refused with the module's name and
what was expected, rather than loaded into a model that computes something else.

Weights are under the Apple ML Research Model license; nothing of them ships with argen.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from tokenizers_vq.flextok.model import FlexTokTokenizer

# The official StableDiffusionVAE builds diffusers' AutoencoderKL from this base (only latent_channels and
# the scaling factor vary); block widths and depth are re-read from the checkpoint's shapes.
VAE_BASE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024}

_NO_WEIGHTS = ("PerSampleOp", "BlockWiseSequencePacker", "SequenceUnpacker", "DictKeyFilter", "MaskTokenModule")


class OfficialFormatError(ValueError):
    """The checkpoint is not a FlexTok layout this converter knows."""


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, config) of an official FlexTok safetensors file; the config as ``load_safetensors`` parses
    it (each metadata value ``ast.literal_eval``-ed, strings kept when that fails)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no FlexTok checkpoint at '{path}': download model.safetensors of "
                                f"EPFL-VILAB/flextok_d12_d12_in1k (or another FlexTok) and pass its path")
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    raw = header.get("__metadata__") or {}
    if not raw:
        raise OfficialFormatError(f"'{path}' has no safetensors metadata: official FlexTok checkpoints store their "
                                  f"Hydra config there (is this an argen export? load those with argen's loader)")
    config: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            config[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            config[k] = v
    for section in ("encoder", "decoder", "regularizer"):
        if section not in config:
            raise OfficialFormatError(f"'{path}' metadata has no '{section}' section (found {sorted(config)}): not a "
                                      f"FlexTok checkpoint")
    return load_file(str(path)), config


def _cls(node: dict[str, Any]) -> str:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


def _modules(config: dict[str, Any], section: str) -> list[tuple[str, dict[str, Any]]]:
    node = config[section]
    md = node.get("module_dict") if isinstance(node, dict) else None
    if not isinstance(md, dict):
        raise OfficialFormatError(f"config section '{section}' is not a SequentialModuleDictWrapper with a module_dict")
    return list(md.items())


def _find(mods: list[tuple[str, dict[str, Any]]], cls: str, section: str, *, optional: bool = False,
          where: Any = None) -> tuple[str, dict[str, Any]] | None:
    hits = [(n, m) for n, m in mods if _cls(m) == cls and (where is None or where(m))]
    if not hits and optional:
        return None
    if len(hits) != 1:
        raise OfficialFormatError(f"{section}: expected exactly one {cls} module, found "
                                  f"{[n for n, _ in hits] or 'none'} among {[f'{n}:{_cls(m)}' for n, m in mods]}")
    return hits[0]


def _check_trunk(name: str, node: dict[str, Any], *, adaln: bool) -> None:
    want = {"qkv_bias": False, "proj_bias": False, "mlp_bias": False, "gated_mlp": True, "qk_norm": True}
    for key, value in want.items():
        if node.get(key, value) != value:
            raise OfficialFormatError(f"{name}: {key}={node[key]} is not supported (argen's FlexTok blocks use "
                                      f"{key}={value}, the released default)")
    if adaln and node.get("adaLN_expansion", 1) != 2:
        raise OfficialFormatError(f"{name}: adaLN_expansion={node.get('adaLN_expansion', 1)}; the decoder needs 2 "
                                  f"(separate patch and register modulation)")
    if node.get("rope_forward_read_key") is not None:
        raise OfficialFormatError(f"{name}: RoPE in the trunk is not supported")


def _check_known(mods: list[tuple[str, dict[str, Any]]], section: str, known: set[str]) -> None:
    for name, node in mods:
        if _cls(node) not in known and _cls(node) not in _NO_WEIGHTS:
            raise OfficialFormatError(f"{section}.{name}: module {node.get('_target_')} is not part of the FlexTok "
                                      f"layout argen converts (known: {sorted(known)})")


def convert(state: dict[str, Tensor], config: dict[str, Any], *, vae_config: dict[str, Any] | None = None,
            decode_steps: int = 25, guidance_scale: float = 1.0, guidance: str = "cfg") -> FlexTokTokenizer:
    """Build our tokenizer from an official (state dict, config) pair and load it strictly."""
    enc, dec = _modules(config, "encoder"), _modules(config, "decoder")
    _check_known(enc, "encoder", {"PatchEmbedder", "PositionalEmbeddingAdder", "Registers1D", "FlexTransformer",
                                  "LinearHead"})
    _check_known(dec, "decoder", {"LinearLayer", "MaskedNestedDropout", "LearnedNullCond", "ZeroNullCond",
                                  "PatchEmbedder", "PositionalEmbeddingAdder", "TimestepEmbedder", "FlexTransformer",
                                  "ToPatchesLinearHead"})
    e_patch_n, e_patch = _find(enc, "PatchEmbedder", "encoder")
    e_pos_n, e_pos = _find(enc, "PositionalEmbeddingAdder", "encoder")
    e_reg_n, e_reg = _find(enc, "Registers1D", "encoder")
    e_tr_n, e_tr = _find(enc, "FlexTransformer", "encoder")
    e_head_n, e_head = _find(enc, "LinearHead", "encoder")
    packer = _find(enc, "BlockWiseSequencePacker", "encoder")[1]
    mask_mode = packer.get("mask_mode", "full")
    if mask_mode not in ("causal_last", "full"):
        raise OfficialFormatError(f"encoder sequence packer mask_mode={mask_mode!r}; argen converts 'causal_last' "
                                  f"(causal registers) and 'full'")
    if packer["input_list_read_keys"] != [e_patch["patches_list_write_key"], e_reg["registers_write_key"]]:
        raise OfficialFormatError(f"encoder packs {packer['input_list_read_keys']}; expected [patches, registers]")
    if e_reg.get("ordering_mode", "nested") != "nested":
        raise OfficialFormatError(f"{e_reg_n}: ordering_mode={e_reg['ordering_mode']!r}; FlexTok's nested ordering only")
    _check_trunk(e_tr_n, e_tr, adaln=False)

    d_lin_n, d_lin = _find(dec, "LinearLayer", "decoder")
    d_nd_n, d_nd = _find(dec, "MaskedNestedDropout", "decoder")
    null = _find(dec, "LearnedNullCond", "decoder", optional=True) or _find(dec, "ZeroNullCond", "decoder")
    d_null_n, d_null = null
    d_patch_n, d_patch = _find(dec, "PatchEmbedder", "decoder")
    d_pos_n, d_pos = _find(dec, "PositionalEmbeddingAdder", "decoder",
                           where=lambda m: len(m.get("max_sizes", [])) == 2)
    reg_pos = _find(dec, "PositionalEmbeddingAdder", "decoder", optional=True,
                    where=lambda m: len(m.get("max_sizes", [])) == 1)
    d_t_n, d_t = _find(dec, "TimestepEmbedder", "decoder")
    d_tr_n, d_tr = _find(dec, "FlexTransformer", "decoder")
    d_head_n, d_head = _find(dec, "ToPatchesLinearHead", "decoder")
    d_packer = _find(dec, "BlockWiseSequencePacker", "decoder")[1]
    _check_trunk(d_tr_n, d_tr, adaln=True)
    if d_packer.get("mask_mode", "full") != "full":
        raise OfficialFormatError(f"decoder sequence packer mask_mode={d_packer.get('mask_mode')!r}; expected 'full'")

    # Where the register-side modules act: on the 6-dim codes (before the projection) or on its output.
    quants_key, proj_key = d_lin["read_key"], d_lin["write_key"]
    order = [n for n, _ in dec]
    for name, node in ((d_nd_n, d_nd), (d_null_n, d_null)):
        if node["read_write_key"] not in (quants_key, proj_key):
            raise OfficialFormatError(f"decoder.{name} acts on '{node['read_write_key']}', neither the codes "
                                      f"'{quants_key}' nor their projection '{proj_key}'")
    if order.index(d_null_n) < order.index(d_nd_n):
        raise OfficialFormatError(f"decoder applies {d_null_n} before {d_nd_n}; argen's decoder masks first")
    if reg_pos is not None and order.index(reg_pos[0]) < max(order.index(d_nd_n), order.index(d_null_n)):
        raise OfficialFormatError(f"decoder adds register positions ({reg_pos[0]}) before the nested dropout / null "
                                  f"condition; argen's decoder adds them after")
    seq_keys = d_packer["input_list_read_keys"]
    patch_key = d_patch["patches_list_write_key"]
    if len(seq_keys) != 2 or patch_key not in seq_keys:
        raise OfficialFormatError(f"decoder packs {seq_keys}; expected the noised patches '{patch_key}' and the "
                                  f"registers")
    registers_first = seq_keys[0] != patch_key

    levels = list(config["regularizer"]["levels"])
    dim = int(e_tr.get("dim", 768))
    patch = list(e_patch["patch_sizes"])
    if len(set(patch)) != 1 or list(d_patch["patch_sizes"]) != patch:
        raise OfficialFormatError(f"patch sizes {patch} / {d_patch['patch_sizes']}: square and equal only")
    grid = list(e_pos["max_sizes"])
    vae_node = config.get("vae") or {}
    latent_channels = int(e_patch["channels_in"])
    if vae_config is None:
        vae_config = dict(VAE_BASE, latent_channels=latent_channels)
        widths = [v.shape[0] for k, v in sorted(state.items()) if k.startswith("vae.vae.encoder.down_blocks.")
                  and k.endswith(".resnets.0.conv2.weight")]
        if widths:
            vae_config["block_out_channels"] = widths
            vae_config["down_block_types"] = ["DownEncoderBlock2D"] * len(widths)
            vae_config["up_block_types"] = ["UpDecoderBlock2D"] * len(widths)
            vae_config["layers_per_block"] = len({k.split(".resnets.")[1].split(".")[0] for k in state
                                                  if k.startswith("vae.vae.encoder.down_blocks.0.resnets.")})
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    scaling = vae_node.get("scaling_factor")
    if scaling is None:
        raise OfficialFormatError("the vae section has no scaling_factor (FlexTok's VAEs record theirs in the config)")
    if int(d_head["channels_out"]) != latent_channels:
        raise OfficialFormatError(f"decoder predicts {d_head['channels_out']} channels for a {latent_channels}-channel latent")
    model = FlexTokTokenizer(
        image_size=grid[0] * patch[0] * factor, patch_size=patch[0], vae_config=vae_config,
        scaling_factor=float(scaling), dim=dim, head_dim=int(e_tr.get("head_dim", 64)),
        mlp_ratio=float(e_tr.get("mlp_ratio", 4.0)), encoder_depth=int(e_tr.get("depth", 12)),
        decoder_depth=int(d_tr.get("depth", 12)), num_registers=int(e_reg["n_max"]), levels=levels,
        register_mask="causal" if mask_mode == "causal_last" else "full",
        keep_k="pow2" if d_nd.get("size_sampling_mode", "uniform") == "pow2" else "uniform",
        cond_dropout=float(d_null.get("dropout_prob", 0.0)), drop_quant_p=float(config["regularizer"].get("drop_quant_p", 0.0)),
        decode_steps=decode_steps, guidance_scale=guidance_scale, guidance=guidance,
        max_timestep=float(d_t.get("max_timestep", 1000.0)))
    if int(d_tr.get("dim", dim)) != dim or int(d_t.get("frequency_embedding_size", 256)) != 256:
        raise OfficialFormatError("encoder and decoder widths differ, or a time-embedding size other than 256")

    def take(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def put(ours: str, theirs: str, value: Tensor | None = None) -> None:
        if value is None:
            if theirs not in state:
                raise OfficialFormatError(f"checkpoint lacks '{theirs}'")
            value = state[theirs]
        used.add(theirs)
        out[ours] = value

    e, d = "encoder.module_dict.", "decoder.module_dict."
    for p in ("weight", "bias"):
        put(f"enc_patch.{p}", f"{e}{e_patch_n}.patch_proj.{p}")
        put(f"enc_out.{p}", f"{e}{e_head_n}.proj.{p}")
        put(f"dec_patch.{p}", f"{d}{d_patch_n}.patch_proj.{p}")
        put(f"head.{p}", f"{d}{d_head_n}.proj.{p}")
        put(f"head_modulation.1.{p}", f"{d}{d_head_n}.adaLN_modulation.1.{p}")
        put(f"dec_registers_in.{p}", f"{d}{d_lin_n}.proj.{p}")
        for i in (0, 2):
            put(f"time_embed.mlp.{i}.{p}", f"{d}{d_t_n}.mlp.{i}.{p}")
    put("enc_posemb", f"{e}{e_pos_n}.posembs")
    put("dec_posemb", f"{d}{d_pos_n}.posembs")
    put("registers", f"{e}{e_reg_n}.registers")
    w, b = state[f"{d}{d_lin_n}.proj.weight"], state[f"{d}{d_lin_n}.proj.bias"]

    def in_dim_space(vec: Tensor, key: str) -> Tensor:  # a token that acts on the codes, seen after the projection
        return w @ vec + b if key == quants_key else vec

    mask_key = f"{d}{d_nd_n}.dropout_mask_token"
    put("mask_token", mask_key, in_dim_space(state[mask_key], d_nd["read_write_key"]))
    if _cls(d_null) == "LearnedNullCond":
        if d_null.get("replace_with_single_token", False):
            raise OfficialFormatError(f"{d_null_n}: replace_with_single_token=True is not supported")
        null_key = f"{d}{d_null_n}.nullcond"
        put("null_token", null_key, in_dim_space(state[null_key], d_null["read_write_key"]))
    else:
        out["null_token"] = in_dim_space(torch.zeros(w.shape[1]), d_null["read_write_key"])
    if reg_pos is not None:
        if reg_pos[1].get("posemb_type") != "learnable_sum":
            raise OfficialFormatError(f"{reg_pos[0]}: 1D register positions must be learnable_sum")
        table = state[f"{d}{reg_pos[0]}.posembs"]  # (1, 1, dim, n_max)
        put("dec_register_posemb", f"{d}{reg_pos[0]}.posembs", table.reshape(dim, -1)[:, :model.num_registers].T)
    else:
        out["dec_register_posemb"] = torch.zeros(model.num_registers, dim)
    for ours, theirs, prefix in (("enc_blocks", e_tr_n, e), ("dec_blocks", d_tr_n, d)):
        for k, v in take(f"{prefix}{theirs}.blocks.").items():
            full = f"{prefix}{theirs}.blocks.{k}"
            k = k.replace("._checkpoint_wrapped_module", "")
            if registers_first and "adaLN_modulation.1." in k:  # reorder the two segments' rows to [patches, regs]
                first, second = v.chunk(2, dim=0)
                v = torch.cat([second, first], dim=0)
            put(f"{ours}.{k}", full, v)
    for k, v in take("vae.vae.").items():
        put(f"vae.{k}", f"vae.vae.{k}", v)
    if "vae.logvar" in state:
        used.add("vae.logvar")
    left = sorted(set(state) - used)
    if left:
        raise OfficialFormatError(f"{len(left)} checkpoint tensors have no place in argen's FlexTok: {left[:8]}")
    missing = sorted(set(model.state_dict()) - set(out))
    if missing:
        raise OfficialFormatError(f"the checkpoint does not provide {missing[:8]}")
    model.load_state_dict(out, strict=True)
    return model.eval()


def load_official(path: str | Path, **kwargs: Any) -> FlexTokTokenizer:
    """A released FlexTok ``model.safetensors`` (or its folder) -> :class:`FlexTokTokenizer` (eval mode).
    kwargs: see :func:`convert` (``vae_config`` overrides the VAE architecture read from the shapes)."""
    state, config = read_checkpoint(path)
    return convert(state, config, **kwargs)
