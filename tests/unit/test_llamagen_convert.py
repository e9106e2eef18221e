"""LlamaGen checkpoint conversion (argen.io.llamagen): documented key names, exact round trips,
export folders that argen.load rebuilds, and clear errors.

No official code or weights are used: official-style state dicts are built here from the key list
and shapes documented in research/algorithms.md 2.2/2.3, at tiny sizes.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor

import argen
from argen.core import Condition
from argen.generators.raster import RasterGenerator
from argen.io.llamagen import (argen_to_gpt, argen_to_vq, convert_gpt, convert_vq, gpt_to_argen, infer_gpt_config,
                               read_official_checkpoint, vq_to_argen)
from argen.nn.blocks import swiglu_hidden
from argen.nn.conditioning import ClassEmbedder, TextConditioner
from argen.nn.text import WordTextEncoder
from tokenizers_vq.vq import VQTokenizer

REPO = Path(__file__).resolve().parents[2]
# Tiny GPT: hidden = find_multiple(int(8 * 32 / 3), 16) = 96; head_dim 16 (divisible by 4 for 2D RoPE).
V, DIM, LAYERS, HEADS, CLASSES, GRID, MULT = 32, 32, 2, 2, 5, 4, 16
HIDDEN = 96


def llamagen_gpt_names(n_layer: int, *, text: bool = False) -> set[str]:
    """LlamaGen Transformer parameter names (algorithms.md 2.3), written out by hand."""
    cond = ({"cls_embedding.cap_proj.fc1.weight", "cls_embedding.cap_proj.fc2.weight",
             "cls_embedding.uncond_embedding"} if text else {"cls_embedding.embedding_table.weight"})
    names = cond | {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(n_layer):
        names |= {f"layers.{i}.attention.wqkv.weight", f"layers.{i}.attention.wo.weight",
                  f"layers.{i}.feed_forward.w1.weight", f"layers.{i}.feed_forward.w3.weight",
                  f"layers.{i}.feed_forward.w2.weight", f"layers.{i}.attention_norm.weight",
                  f"layers.{i}.ffn_norm.weight"}
    return names


def llamagen_gpt_shapes(*, n_layer: int, dim: int, vocab: int, hidden: int, classes: int | None = None,
                        caption: tuple[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Documented shapes: table (classes + 1, dim) | cap_proj (dim, C), (dim, dim) + null caption (T, C)."""
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,),
                                          "output.weight": (vocab, dim)}
    if caption is None:
        assert classes is not None
        shapes["cls_embedding.embedding_table.weight"] = (classes + 1, dim)
    else:
        slots, width = caption
        shapes.update({"cls_embedding.cap_proj.fc1.weight": (dim, width),
                       "cls_embedding.cap_proj.fc2.weight": (dim, dim),
                       "cls_embedding.uncond_embedding": (slots, width)})
    for i in range(n_layer):
        p = f"layers.{i}."
        shapes.update({p + "attention.wqkv.weight": (3 * dim, dim), p + "attention.wo.weight": (dim, dim),
                       p + "feed_forward.w1.weight": (hidden, dim), p + "feed_forward.w3.weight": (hidden, dim),
                       p + "feed_forward.w2.weight": (dim, hidden), p + "attention_norm.weight": (dim,),
                       p + "ffn_norm.weight": (dim,)})
    return shapes


def official_gpt_state(seed: int = 0, **kw: object) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    args = dict(n_layer=LAYERS, dim=DIM, vocab=V, hidden=HIDDEN, classes=CLASSES)
    args.update(kw)
    shapes = llamagen_gpt_shapes(**args)  # type: ignore[arg-type]
    return {k: (1 + 0.1 * torch.randn(s, generator=g)) if k.endswith("norm.weight")
            else 0.2 * torch.randn(s, generator=g) for k, s in shapes.items()}


def llamagen_freqs_cis(grid: int, head_dim: int, *, base: float = 10000.0, cls_token_num: int = 1) -> Tensor:
    """LlamaGen's ``precompute_freqs_cis_2d(grid, head_dim, base, cls_token_num)`` (gpt.py), re-derived
    in float64 from algorithms.md 2.3: (cls_token_num + grid^2, head_dim // 2, 2) holding (cos, sin),
    the first head_dim/4 pairs rotating with the row, the rest with the column, condition rows zero."""
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=torch.float64) * 2 / (head_dim // 2))  # (hd/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    angles = torch.cat([rows.reshape(-1, 1) * freqs, cols.reshape(-1, 1) * freqs], dim=1)  # (grid^2, hd/2)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, head_dim // 2, 2, dtype=torch.float64), table]).float()


def tiny_gpt(**kw: object) -> RasterGenerator:
    args = dict(vocab_size=V, dim=DIM, n_layer=LAYERS, n_head=HEADS, grid_size=GRID, multiple_of=MULT,
                condition=functools.partial(ClassEmbedder, num_classes=CLASSES, dropout=0.1))
    args.update(kw)
    return RasterGenerator(**args).eval()  # type: ignore[arg-type]


def batch() -> tuple[Tensor, Condition]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (3, GRID * GRID), generator=g)
    return tokens, Condition(labels=torch.tensor([0, 4, 2]), null=torch.tensor([False, False, True]))


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the output head starts at zero; make every weight matter
            p.copy_(p + 0.2 * torch.randn(p.shape, generator=g))


# ---- (a) names and the exact round trip ---------------------------------------------------------
def test_argen_to_gpt_gives_exactly_the_llamagen_names_and_back_is_exact() -> None:
    model = tiny_gpt()
    randomise(model)
    official = argen_to_gpt(model.state_dict())
    assert set(official) == llamagen_gpt_names(LAYERS)
    assert "freqs_cis" not in official
    expected = llamagen_gpt_shapes(n_layer=LAYERS, dim=DIM, vocab=V, hidden=HIDDEN, classes=CLASSES)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    # an older checkpoint's stored RoPE table is accepted and dropped
    back = gpt_to_argen({**official, "freqs_cis": torch.zeros(1 + GRID * GRID, 8, 2)})
    fresh = tiny_gpt()
    fresh.load_state_dict(back, strict=True)
    tokens, cond = batch()
    with torch.no_grad():
        ref, out = model.logits(tokens, cond), fresh.logits(tokens, cond)
    assert ref.abs().max() > 0.1
    assert torch.equal(ref, out)


def test_text_generator_names_drop_the_argen_only_encoder() -> None:
    enc = WordTextEncoder(vocab=["red", "cube"], max_length=3, dim=8, n_layer=1, n_head=2)
    model = tiny_gpt(condition=functools.partial(TextConditioner, encoder=enc, dropout=0.1))
    assert any(k.startswith("cls_embedding.encoder.") for k in model.state_dict())
    official = argen_to_gpt(model.state_dict())
    assert set(official) == llamagen_gpt_names(LAYERS, text=True)
    assert tuple(official["cls_embedding.uncond_embedding"].shape) == (3, 8)
    assert tuple(official["cls_embedding.cap_proj.fc1.weight"].shape) == (DIM, 8)
    with_readout = tiny_gpt(condition=functools.partial(TextConditioner, encoder=enc, dropout=0.1), condition_readout=1.0)
    assert "readout.weight" in with_readout.state_dict()
    assert set(argen_to_gpt(with_readout.state_dict())) == llamagen_gpt_names(LAYERS, text=True)


# ---- (b) an official-style file -> export -> argen.load -------------------------------------------
def test_convert_gpt_file_to_export_with_identical_logits(tmp_path: Path) -> None:
    state = official_gpt_state()
    ckpt = tmp_path / "c2i_tiny.pt"
    # an older checkpoint storing LlamaGen's RoPE table: checked against argen's, then dropped
    torch.save({"model": {**state, "freqs_cis": llamagen_freqs_cis(GRID, DIM // HEADS)}, "steps": 7}, ckpt)
    out = convert_gpt(ckpt, tmp_path / "gpt", grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    loaded = argen.load(out)
    reference = tiny_gpt()
    reference.load_state_dict(gpt_to_argen(state), strict=True)
    tokens, cond = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(tokens, cond), reference.logits(tokens, cond), atol=1e-6, rtol=0)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "generator" and meta["converted_from"] == "llamagen"
    assert meta["source"] == str(ckpt) and meta["dropped_keys"] == ["freqs_cis"]
    assert meta["layout"] == reference.layout.to_dict()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["condition"] == {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True,
                                   "num_classes": CLASSES, "dropout": 0.1}
    assert (config["n_layer"], config["dim"], config["n_head"], config["vocab_size"]) == (LAYERS, DIM, HEADS, V)


def test_cli_converts_gpt_and_vq(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("convert_llamagen", REPO / "scripts" / "convert_llamagen.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    torch.save({"model": official_gpt_state()}, tmp_path / "g.pt")
    out = cli.main(["gpt", "--ckpt", str(tmp_path / "g.pt"), "--out", str(tmp_path / "g"), "--image-size", "64",
                    "--n-head", str(HEADS), "--multiple-of", str(MULT)])
    assert argen.load(out).seq_len == GRID * GRID  # 64 px / 16
    torch.save({"model": argen_to_vq(tiny_vq().state_dict())}, tmp_path / "v.pt")
    out = cli.main(["vq", "--ckpt", str(tmp_path / "v.pt"), "--out", str(tmp_path / "v"), "--image-size", "16",
                    "--norm-groups", "4"])
    assert isinstance(argen.load(out), VQTokenizer)


def test_t2i_checkpoint_converts_to_an_hf_text_export(tmp_path: Path) -> None:
    state = official_gpt_state(caption=(3, 12))
    torch.save(state, tmp_path / "t2i.pt")  # an FSDP-style raw state dict
    with pytest.raises(ValueError, match="text-to-image"):
        convert_gpt(tmp_path / "t2i.pt", tmp_path / "x", grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    out = convert_gpt(tmp_path / "t2i.pt", tmp_path / "t2i", grid_size=GRID, n_head=HEADS, multiple_of=MULT,
                      text_encoder="/models/flan-t5-xl")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["condition"]["encoder"] == {"_target_": "argen.nn.text.HFTextEncoder", "path": "/models/flan-t5-xl",
                                              "kind": "t5", "max_length": 3, "out_dim": 12}
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    assert set(weights) == llamagen_gpt_names(LAYERS, text=True)
    assert all(torch.equal(weights[k], state[k]) for k in state)


# ---- (c) the VQ tokenizer -------------------------------------------------------------------------
def tiny_vq() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(image_size=16, codebook_size=32, embed_dim=4, base_channels=8, channel_multipliers=[1, 2],
                       num_res_blocks=1, z_channels=8, norm_groups=4, attention=True).eval()


def test_vq_round_trip_and_export_decode_identically(tmp_path: Path) -> None:
    model = tiny_vq()
    official = argen_to_vq(model.state_dict())
    assert "quantize.usage_ema" not in official
    assert tuple(official["quantize.codebook_used"].shape) == (65536,)
    documented = {"encoder.conv_in.weight", "encoder.conv_blocks.0.res.0.norm1.weight", "encoder.mid.1.q.weight",
                  "encoder.conv_blocks.0.downsample.conv.weight", "decoder.conv_blocks.0.upsample.conv.weight",
                  "decoder.conv_blocks.0.attn.0.proj_out.weight", "quant_conv.weight", "post_quant_conv.weight",
                  "quantize.embedding.weight", "quantize.codebook_used"}
    assert documented <= set(official)
    back = vq_to_argen(official)
    fresh = tiny_vq()
    fresh.load_state_dict(back, strict=True)
    assert torch.equal(fresh.quantize.usage_ema, torch.full((32,), 1 / 32))  # argen's own initial value
    codes = torch.randint(0, 32, (2, 64), generator=torch.Generator().manual_seed(0))
    ref = model.decode(codes)
    assert torch.equal(fresh.decode(codes), ref)
    torch.save({"model": official}, tmp_path / "vq.pt")
    out = convert_vq(tmp_path / "vq.pt", tmp_path / "vq", image_size=16, norm_groups=4)
    loaded = argen.load(out)
    assert torch.equal(loaded.decode(codes), ref)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "tokenizer" and meta["dropped_keys"] == ["quantize.codebook_used"]


# ---- (d) errors -------------------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_official_checkpoint(tmp_path / "nope.pt")


def test_not_a_state_dict_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"model": {"w": 3}}, tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="not a state dict"):
        read_official_checkpoint(tmp_path / "bad.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="not a state dict"):
        read_official_checkpoint(tmp_path / "list.pt")


def test_unwrapping_prefers_model_allows_args_and_strips_ddp_prefix(tmp_path: Path) -> None:
    state = {"module.w": torch.ones(2)}
    torch.save({"model": state, "ema": {"module.w": torch.zeros(2)}, "args": argparse.Namespace(lr=1e-4)},
               tmp_path / "c.pt")
    assert torch.equal(read_official_checkpoint(tmp_path / "c.pt")["w"], torch.ones(2))
    assert torch.equal(read_official_checkpoint(tmp_path / "c.pt", entry="ema")["w"], torch.zeros(2))


def test_missing_layer_key_is_named(tmp_path: Path) -> None:
    state = official_gpt_state()
    del state["layers.1.feed_forward.w2.weight"]
    with pytest.raises(KeyError, match=r"layers\.1\.feed_forward\.w2\.weight"):
        infer_gpt_config(state, grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    torch.save({"model": state}, tmp_path / "c.pt")
    with pytest.raises(KeyError, match=r"layers\.1\.feed_forward\.w2\.weight"):
        convert_gpt(tmp_path / "c.pt", tmp_path / "out", grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    assert not (tmp_path / "out").exists()


def test_bad_head_count_hidden_size_and_unknown_keys() -> None:
    state = official_gpt_state()
    with pytest.raises(ValueError, match="n_head 5 does not divide dim 32"):
        infer_gpt_config(state, grid_size=GRID, n_head=5, multiple_of=MULT)
    with pytest.raises(ValueError, match="not an official LlamaGen preset"):
        infer_gpt_config(state, grid_size=GRID, multiple_of=MULT)
    with pytest.raises(ValueError, match="SwiGLU hidden size 96"):
        infer_gpt_config(state, grid_size=GRID, n_head=HEADS, multiple_of=256)
    with pytest.raises(KeyError, match="layers.0.attention.q_proj.weight"):
        gpt_to_argen({**state, "layers.0.attention.q_proj.weight": torch.zeros(1)})


# ---- GPT-B at full size, shapes only ----------------------------------------------------------------
def test_gpt_b_config_and_parameter_count_from_shapes() -> None:
    shapes = llamagen_gpt_shapes(n_layer=12, dim=768, vocab=16384, hidden=2048, classes=1000)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    state["freqs_cis"] = torch.empty(257, 32, 2, device="meta")
    state = gpt_to_argen(state)
    config = infer_gpt_config(state, grid_size=16)
    assert (config["n_layer"], config["dim"], config["n_head"], config["vocab_size"]) == (12, 768, 12, 16384)
    assert config["condition"]["num_classes"] == 1000
    assert swiglu_hidden(config["dim"], config["multiple_of"]) == 2048
    total = sum(v.numel() for v in state.values())
    assert 110.5e6 < total < 111.5e6  # LlamaGen's table: GPT-B 111M
    from hydra.utils import instantiate

    with torch.device("meta"):
        model = instantiate(config, _convert_="all")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(p.numel() for p in model.parameters()) == total


# ---- (e) the token grid from a stored freqs_cis -------------------------------------------------------
def test_grid_is_read_from_a_stored_freqs_cis(tmp_path: Path) -> None:
    # a "384 px" checkpoint: grid 6 here (24 for LlamaGen's VQ-16), converted without a grid argument
    state = {**official_gpt_state(), "freqs_cis": llamagen_freqs_cis(6, DIM // HEADS)}
    config = infer_gpt_config(state, n_head=HEADS, multiple_of=MULT)
    assert config["grid_size"] == 6
    assert infer_gpt_config(state, grid_size=6, n_head=HEADS, multiple_of=MULT)["grid_size"] == 6  # agreeing: fine
    torch.save({"model": state}, tmp_path / "c2i_384.pt")
    out = convert_gpt(tmp_path / "c2i_384.pt", tmp_path / "gpt", n_head=HEADS, multiple_of=MULT)
    assert argen.load(out).seq_len == 36
    # the head count is read from the table's rotation pairs (head_dim // 2) when it is not a preset
    assert infer_gpt_config(state, multiple_of=MULT)["n_head"] == HEADS
    # t2i: the condition prefix is the caption's slots (LlamaGen's cls_token_num = 120; 3 here)
    text = {**official_gpt_state(caption=(3, 12)), "freqs_cis": llamagen_freqs_cis(5, DIM // HEADS, cls_token_num=3)}
    assert infer_gpt_config(text, n_head=HEADS, multiple_of=MULT, text_encoder="/t5")["grid_size"] == 5


def test_an_image_size_contradicting_the_stored_grid_is_refused(tmp_path: Path) -> None:
    state = {**official_gpt_state(), "freqs_cis": llamagen_freqs_cis(6, DIM // HEADS)}
    with pytest.raises(ValueError, match=r"grid_size 4 .*6x6.*(leave|drop) .*grid_size=6"):
        infer_gpt_config(state, grid_size=4, n_head=HEADS, multiple_of=MULT)
    spec = importlib.util.spec_from_file_location("convert_llamagen", REPO / "scripts" / "convert_llamagen.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    torch.save({"model": state}, tmp_path / "g.pt")
    args = ["gpt", "--ckpt", str(tmp_path / "g.pt"), "--n-head", str(HEADS), "--multiple-of", str(MULT)]
    with pytest.raises(ValueError, match="grid_size 4"):
        cli.main([*args, "--out", str(tmp_path / "bad"), "--image-size", "64"])  # 64 px / 16 = 4, stored 6
    assert not (tmp_path / "bad").exists()
    out = cli.main([*args, "--out", str(tmp_path / "g")])  # --image-size is optional: the table has the grid
    assert argen.load(out).seq_len == 36


def test_a_stored_table_argen_would_not_compute_is_refused() -> None:
    state = official_gpt_state()
    hd = DIM // HEADS
    identity_prefix = llamagen_freqs_cis(GRID, hd)
    identity_prefix[0, :, 0] = 1.0  # cos 1, sin 0 on the condition row: not LlamaGen's zeroed rows
    cases = [
        (llamagen_freqs_cis(GRID, hd, base=100.0), r"rope_base 10000"),
        (identity_prefix, r"condition row"),
        (llamagen_freqs_cis(GRID, hd)[:-1], r"16 rows .*1 condition.* not a whole square"),
        (llamagen_freqs_cis(GRID, 8), r"n_head 2 .*head_dim 16.*4 rotation pairs"),
        (torch.zeros(1 + GRID * GRID, hd // 2), r"freqs_cis has shape \(17, 8\)"),
    ]
    for table, match in cases:
        with pytest.raises(ValueError, match=match):
            infer_gpt_config({**state, "freqs_cis": table}, n_head=HEADS, multiple_of=MULT)


def test_no_stored_table_and_no_grid_says_to_pass_the_image_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no freqs_cis.*--image-size"):
        infer_gpt_config(official_gpt_state(), n_head=HEADS, multiple_of=MULT)
    torch.save({"model": official_gpt_state()}, tmp_path / "g.pt")
    with pytest.raises(ValueError, match=r"no freqs_cis.*--image-size"):
        convert_gpt(tmp_path / "g.pt", tmp_path / "out", n_head=HEADS, multiple_of=MULT)
    assert not (tmp_path / "out").exists()


# ---- (g) what the conversion did with every key, in both directions ----------------------------------
def test_meta_records_each_key_by_what_happened_in_both_directions(tmp_path: Path) -> None:
    state = official_gpt_state()
    caches = {"causal_mask": torch.ones(1, 24, 24, dtype=torch.bool),
              "layers.0.attention.kv_cache.k_cache": torch.zeros(1, HEADS, 24, DIM // HEADS)}
    torch.save({"model": {**state, **caches, "freqs_cis": llamagen_freqs_cis(GRID, DIM // HEADS)}}, tmp_path / "g.pt")
    meta = json.loads((convert_gpt(tmp_path / "g.pt", tmp_path / "g", n_head=HEADS, multiple_of=MULT)
                       / "meta.json").read_text())
    forward, backward = meta["conversion"]["llamagen->argen"], meta["conversion"]["argen->llamagen"]
    names = sorted(llamagen_gpt_names(LAYERS))
    assert forward["kept"] == names and forward["renamed"] == {} and forward["transformed"] == []
    assert sorted(forward["dropped"]) == ["causal_mask", "freqs_cis", "layers.0.attention.kv_cache.k_cache"]
    assert "grid" in forward["dropped"]["freqs_cis"] and forward["created"] == {}
    assert backward == {"kept": names, "renamed": {}, "transformed": [], "dropped": {}, "created": {}}
    official = argen_to_vq(tiny_vq().state_dict())
    torch.save({"model": official}, tmp_path / "v.pt")
    meta = json.loads((convert_vq(tmp_path / "v.pt", tmp_path / "v", image_size=16, norm_groups=4)
                       / "meta.json").read_text())
    forward, backward = meta["conversion"]["llamagen->argen"], meta["conversion"]["argen->llamagen"]
    weights = sorted(set(official) - {"quantize.codebook_used"})
    assert forward["kept"] == weights and backward["kept"] == weights
    assert list(forward["dropped"]) == ["quantize.codebook_used"] and list(forward["created"]) == ["quantize.usage_ema"]
    assert list(backward["dropped"]) == ["quantize.usage_ema"]
    assert list(backward["created"]) == ["quantize.codebook_used"]
    assert forward["renamed"] == backward["renamed"] == {} and forward["transformed"] == backward["transformed"] == []


# ---- (f) one-call in-memory conversion -----------------------------------------------------------------
def test_in_memory_gpt_and_vq_equal_the_file_exports_bit_for_bit(tmp_path: Path) -> None:
    from argen.io.llamagen import gpt_from_state_dict, vq_from_state_dict

    state = {**official_gpt_state(), "freqs_cis": llamagen_freqs_cis(GRID, DIM // HEADS)}
    torch.save({"model": state}, tmp_path / "g.pt")
    loaded = argen.load(convert_gpt(tmp_path / "g.pt", tmp_path / "g", n_head=HEADS, multiple_of=MULT))
    rng = torch.get_rng_state()
    model = gpt_from_state_dict(torch.load(tmp_path / "g.pt", weights_only=True), n_head=HEADS, multiple_of=MULT)
    assert torch.equal(torch.get_rng_state(), rng)  # the random init it overwrites leaves the caller's RNG alone
    assert isinstance(model, RasterGenerator) and not model.training
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    tokens, cond = batch()
    with torch.no_grad():
        out, ref = model.logits(tokens, cond), loaded.logits(tokens, cond)
    assert ref.abs().max() > 0.1 and torch.equal(out, ref)
    official = argen_to_vq(tiny_vq().state_dict())
    torch.save({"model": official}, tmp_path / "v.pt")
    loaded_vq = argen.load(convert_vq(tmp_path / "v.pt", tmp_path / "v", image_size=16, norm_groups=4))
    vq = vq_from_state_dict(official, image_size=16, norm_groups=4)
    assert isinstance(vq, VQTokenizer) and not vq.training
    codes = torch.randint(0, 32, (2, 64), generator=torch.Generator().manual_seed(0))  # 16 px / f 2 = 8x8
    assert torch.equal(vq.decode(codes), loaded_vq.decode(codes))


class FakeT5(torch.nn.Module):
    """Stands in for a loaded HFTextEncoder (a folder, slots, width; no weights in the state dict)."""

    def __init__(self, *, max_length: int, out_dim: int) -> None:
        super().__init__()
        self.path, self.kind, self.max_length, self.out_dim = "/models/flan-t5-xl", "t5", max_length, out_dim

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(len(texts))
        return torch.randn(len(texts), self.max_length, self.out_dim, generator=g), \
            torch.ones(len(texts), self.max_length, dtype=torch.bool)


def test_in_memory_t2i_takes_a_loaded_text_encoder() -> None:
    from argen.io.llamagen import gpt_from_state_dict

    state = official_gpt_state(caption=(3, 12))
    with pytest.raises(ValueError, match="the state dict is a text-to-image model"):
        gpt_from_state_dict(state, grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    with pytest.raises(ValueError, match=r"\(slots, width\) \(4, 12\) .*need \(3, 12\)"):
        gpt_from_state_dict(state, grid_size=GRID, n_head=HEADS, multiple_of=MULT,
                            text_encoder=FakeT5(max_length=4, out_dim=12))
    encoder = FakeT5(max_length=3, out_dim=12)
    model = gpt_from_state_dict(state, grid_size=GRID, n_head=HEADS, multiple_of=MULT, text_encoder=encoder)
    assert model.cls_embedding.encoder is encoder and not model.training
    assert set(model.state_dict()) == set(state) and all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    tokens = torch.randint(0, V, (2, GRID * GRID), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.logits(tokens, Condition(texts=["a red cube", "two balls"]))
    assert logits.shape == (2, GRID * GRID, V) and bool(torch.isfinite(logits).all())
