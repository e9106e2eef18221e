"""VAR checkpoint conversion (argen.io.var): official names and shapes written out by hand from
VAR's models/basic_vae.py, vqvae.py, quant.py, var.py and basic_var.py, exact round trips, and
functional references of VAR's equations computed directly on official-named state dicts.

No official code or weights are used: the official-style state dicts are built here at tiny sizes.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

import argen
from argen.core import Condition
from argen.generators.var import VARGenerator
from argen.io.var import (VAR_SCALES, argen_to_vae, argen_to_var, convert_vae, convert_var, infer_vae_config,
                          infer_var_config, vae_to_argen, var_to_argen)
from argen.nn.conditioning import ClassEmbedder
from tokenizers_vq.io import load_pretrained
from tokenizers_vq.msvq import MultiScaleVQTokenizer

REPO = Path(__file__).resolve().parents[2]
CH, MULT, NRES, V, CV, GROUPS = 16, (1, 2, 2), 2, 64, 8, 8  # tiny VQVAE: f = 4, z_channels = Cvae = 8
SCALES = (1, 2, 4, 8)  # 32 px tokenizer
GSCALES = (1, 2, 3, 4)  # 16 px tokenizer for the generator tests, L = 30
DEPTH, WIDTH, HEADS, CLASSES = 2, 64, 2, 10


# ---- official names and shapes --------------------------------------------------------------------
def official_vae_shapes(*, ch: int = CH, mult: tuple[int, ...] = MULT, nres: int = NRES, vocab: int = V,
                        cvae: int = CV, num_scales: int = 4, share: int = 4) -> dict[str, tuple[int, ...]]:
    """VQVAE(ch, ch_mult, num_res_blocks, z_channels = Cvae, using_sa = using_mid_sa = True) keys."""
    s: dict[str, tuple[int, ...]] = {}

    def conv(p: str, cin: int, cout: int, k: int = 3) -> None:
        s[p + ".weight"], s[p + ".bias"] = (cout, cin, k, k), (cout,)

    def norm(p: str, c: int) -> None:
        s[p + ".weight"] = s[p + ".bias"] = (c,)

    def res(p: str, cin: int, cout: int) -> None:
        norm(p + ".norm1", cin), conv(p + ".conv1", cin, cout), norm(p + ".norm2", cout), conv(p + ".conv2", cout, cout)
        if cin != cout:
            conv(p + ".nin_shortcut", cin, cout, 1)

    def attn(p: str, c: int) -> None:
        norm(p + ".norm", c), conv(p + ".qkv", c, 3 * c, 1), conv(p + ".proj_out", c, c, 1)

    n, top = len(mult), ch * mult[-1]
    conv("encoder.conv_in", 3, ch)
    cin = ch
    for lvl in range(n):
        for b in range(nres):
            res(f"encoder.down.{lvl}.block.{b}", cin, ch * mult[lvl])
            cin = ch * mult[lvl]
            if lvl == n - 1:
                attn(f"encoder.down.{lvl}.attn.{b}", cin)
        if lvl != n - 1:
            conv(f"encoder.down.{lvl}.downsample.conv", cin, cin)
    for part in ("encoder", "decoder"):
        res(f"{part}.mid.block_1", top, top), attn(f"{part}.mid.attn_1", top), res(f"{part}.mid.block_2", top, top)
    norm("encoder.norm_out", top), conv("encoder.conv_out", top, cvae), conv("decoder.conv_in", cvae, top)
    cin = top
    for lvl in reversed(range(n)):
        for b in range(nres + 1):
            res(f"decoder.up.{lvl}.block.{b}", cin, ch * mult[lvl])
            cin = ch * mult[lvl]
            if lvl == n - 1:
                attn(f"decoder.up.{lvl}.attn.{b}", cin)
        if lvl != 0:
            conv(f"decoder.up.{lvl}.upsample.conv", cin, cin)
    norm("decoder.norm_out", ch), conv("decoder.conv_out", ch, 3), conv("quant_conv", cvae, cvae)
    conv("post_quant_conv", cvae, cvae)
    s["quantize.embedding.weight"] = (vocab, cvae)
    count = num_scales if share == 0 else share
    for i in range(count):
        conv({0: f"quantize.quant_resi.{i}", 1: "quantize.quant_resi.qresi"}.get(share, f"quantize.quant_resi.qresi_ls.{i}"),
             cvae, cvae)
    s["quantize.ema_vocab_hit_SV"] = (num_scales, vocab)
    return s


def official_var_shapes(*, depth: int = DEPTH, width: int = WIDTH, heads: int = HEADS, vocab: int = V, cvae: int = CV,
                        classes: int = CLASSES, scales: tuple[int, ...] = GSCALES) -> dict[str, tuple[int, ...]]:
    c, length = width, sum(s * s for s in scales)
    s: dict[str, tuple[int, ...]] = {
        "word_embed.weight": (c, cvae), "word_embed.bias": (c,), "class_emb.weight": (classes + 1, c),
        "pos_start": (1, scales[0] ** 2, c), "pos_1LC": (1, length, c), "lvl_embed.weight": (len(scales), c),
        "head_nm.ada_lin.1.weight": (2 * c, c), "head_nm.ada_lin.1.bias": (2 * c,), "head.weight": (vocab, c),
        "head.bias": (vocab,), "lvl_1L": (1, length), "attn_bias_for_masking": (1, 1, length, length)}
    for i in range(depth):
        p = f"blocks.{i}."
        s.update({p + "attn.mat_qkv.weight": (3 * c, c), p + "attn.q_bias": (c,), p + "attn.v_bias": (c,),
                  p + "attn.zero_k_bias": (c,), p + "attn.scale_mul_1H11": (1, heads, 1, 1),
                  p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,), p + "ffn.fc1.weight": (4 * c, c),
                  p + "ffn.fc1.bias": (4 * c,), p + "ffn.fc2.weight": (c, 4 * c), p + "ffn.fc2.bias": (c,),
                  p + "ada_lin.1.weight": (6 * c, c), p + "ada_lin.1.bias": (6 * c,)})
    return s


def var_levels(scales: tuple[int, ...]) -> Tensor:
    return torch.cat([torch.full((s * s,), k) for k, s in enumerate(scales)])


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0, std: float = 0.1) -> dict[str, Tensor]:
    """randn * std everywhere (norm weights around 1); VAR's buffers and usage counts as VAR has them."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        out[k] = std * torch.randn(shape, generator=g) + (1.0 if ".norm" in k and k.endswith("weight") else 0.0)
    if "quantize.ema_vocab_hit_SV" in out:
        out["quantize.ema_vocab_hit_SV"] = torch.randint(0, 50, shapes["quantize.ema_vocab_hit_SV"], generator=g).float()
        out["quantize.ema_vocab_hit_SV"][0] = 0.0  # an unrecorded scale -> 1/V
        out["quantize.embedding.weight"] *= 5
    if "lvl_1L" in out:
        length = shapes["lvl_1L"][1]
        d = var_levels(GSCALES if length == 30 else VAR_SCALES)
        out["lvl_1L"] = d[None]
        out["attn_bias_for_masking"] = torch.where(d[:, None] >= d[None], 0.0, -torch.inf)[None, None]
        for i in range(sum(k.endswith("zero_k_bias") for k in out)):
            out[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(shapes[f"blocks.{i}.attn.zero_k_bias"])
            out[f"blocks.{i}.attn.scale_mul_1H11"] = math.log(4) + torch.randn(1, HEADS, 1, 1, generator=g)
        out["blocks.0.attn.scale_mul_1H11"][0, 0] = 5.0  # above ln 100: the clamp matters
    return out


def tiny_vae(num_phi: int = 4, scales: tuple[int, ...] = SCALES) -> MultiScaleVQTokenizer:
    return MultiScaleVQTokenizer(image_size=scales[-1] * 4, codebook_size=V, embed_dim=CV, scales=scales,
                                 num_phi=num_phi, base_channels=CH, channel_multipliers=list(MULT),
                                 num_res_blocks=NRES, z_channels=CV, norm_groups=GROUPS).eval()


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


# ---- functional references (VAR's equations, official names) ----------------------------------------
def _conv(sd: dict[str, Tensor], p: str, x: Tensor, **kw: int) -> Tensor:
    w = sd[p + ".weight"]
    return F.conv2d(x, w, sd[p + ".bias"], padding=kw.pop("padding", w.shape[-1] // 2), **kw)


def _gn(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    return F.group_norm(x, GROUPS, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _res(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    h = _conv(sd, p + ".conv1", F.silu(_gn(sd, p + ".norm1", x)))
    h = _conv(sd, p + ".conv2", F.silu(_gn(sd, p + ".norm2", h)))
    return (_conv(sd, p + ".nin_shortcut", x) if p + ".nin_shortcut.weight" in sd else x) + h


def _attn(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    b, c, h, w = x.shape
    q, k, v = _conv(sd, p + ".qkv", _gn(sd, p + ".norm", x)).reshape(b, 3, c, h * w).unbind(1)
    weights = torch.softmax(q.transpose(1, 2) @ k * c ** -0.5, dim=2)  # (B, HW_q, HW_k)
    return x + _conv(sd, p + ".proj_out", (v @ weights.transpose(1, 2)).view(b, c, h, w))


def _levels(sd: dict[str, Tensor], part: str) -> int:
    return 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(part))


def _stack(sd: dict[str, Tensor], p: str, x: Tensor, blocks: int) -> Tensor:
    for b in range(blocks):
        x = _res(sd, f"{p}.block.{b}", x)
        x = _attn(sd, f"{p}.attn.{b}", x) if f"{p}.attn.{b}.qkv.weight" in sd else x
    return x


def _mid(sd: dict[str, Tensor], p: str, x: Tensor) -> Tensor:
    return _res(sd, p + ".block_2", _attn(sd, p + ".attn_1", _res(sd, p + ".block_1", x)))


def ref_encoder(sd: dict[str, Tensor], x: Tensor) -> Tensor:
    h, n = _conv(sd, "encoder.conv_in", x), _levels(sd, "encoder.down.")
    for lvl in range(n):
        h = _stack(sd, f"encoder.down.{lvl}", h, NRES)
        if lvl != n - 1:
            h = _conv(sd, f"encoder.down.{lvl}.downsample.conv", F.pad(h, (0, 1, 0, 1)), stride=2, padding=0)
    return _conv(sd, "encoder.conv_out", F.silu(_gn(sd, "encoder.norm_out", _mid(sd, "encoder.mid", h))))


def ref_decoder(sd: dict[str, Tensor], z: Tensor) -> Tensor:
    h = _mid(sd, "decoder.mid", _conv(sd, "decoder.conv_in", z))
    for lvl in reversed(range(_levels(sd, "decoder.up."))):  # up.0 is the highest resolution, run last
        h = _stack(sd, f"decoder.up.{lvl}", h, NRES + 1)
        if lvl != 0:
            h = _conv(sd, f"decoder.up.{lvl}.upsample.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", F.silu(_gn(sd, "decoder.norm_out", h)))


def ref_teacher_inputs(sd: dict[str, Tensor], tokens: Tensor, scales: tuple[int, ...], share: int) -> Tensor:
    """VectorQuantizer2.idxBl_to_var_input with PhiPartiallyShared(share) and quant_resi = 0.5."""
    ticks = np.linspace(1 / 3 / share, 1 - 1 / 3 / share, share) if share == 4 else \
        np.linspace(1 / 2 / share, 1 - 1 / 2 / share, share)
    b, side, out, begin = tokens.shape[0], scales[-1], [], 0
    f_hat = torch.zeros(b, CV, side, side, dtype=torch.float64)
    for si in range(len(scales) - 1):
        pn = scales[si]
        h = sd["quantize.embedding.weight"][tokens[:, begin:begin + pn * pn]].transpose(1, 2).reshape(b, CV, pn, pn)
        h = F.interpolate(h, size=(side, side), mode="bicubic")
        p = f"quantize.quant_resi.qresi_ls.{int(np.argmin(np.abs(ticks - si / (len(scales) - 1))))}"
        f_hat = f_hat + 0.5 * h + 0.5 * _conv(sd, p, h)
        begin += pn * pn
        nxt = scales[si + 1]
        out.append(F.interpolate(f_hat, size=(nxt, nxt), mode="area").view(b, CV, -1).transpose(1, 2))
    return torch.cat(out, dim=1)


def _ln(x: Tensor) -> Tensor:
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()


def ref_var_logits(sd: dict[str, Tensor], labels: Tensor, x_wo_first: Tensor, depth: int, heads: int) -> Tensor:
    """VAR.forward without label dropout (basic_var.AdaLNSelfAttn, SelfAttention, AdaLNBeforeHead)."""
    def lin(x: Tensor, p: str) -> Tensor:
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    cond = sd["class_emb.weight"][labels]  # (B, C)
    b, c = cond.shape
    x = torch.cat([cond[:, None] + sd["pos_start"], lin(x_wo_first, "word_embed")], dim=1)
    x = x + sd["lvl_embed.weight"][sd["lvl_1L"][0]] + sd["pos_1LC"]
    n, hd = x.shape[1], c // heads
    for i in range(depth):
        p = f"blocks.{i}."
        g1, g2, s1, s2, b1, b2 = lin(F.silu(cond), p + "ada_lin.1").view(b, 1, 6, c).unbind(2)
        bias = torch.cat([sd[p + "attn.q_bias"], sd[p + "attn.zero_k_bias"], sd[p + "attn.v_bias"]])
        qkv = (_ln(x) * (1 + s1) + b1) @ sd[p + "attn.mat_qkv.weight"].T + bias
        q, k, v = qkv.view(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)
        q = F.normalize(q, dim=-1) * sd[p + "attn.scale_mul_1H11"].clamp(max=math.log(100)).exp()
        scores = q @ F.normalize(k, dim=-1).transpose(-1, -2) + sd["attn_bias_for_masking"][0]
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        x = x + lin(att, p + "attn.proj") * g1
        hidden = F.gelu(lin(_ln(x) * (1 + s2) + b2, p + "ffn.fc1"), approximate="tanh")
        x = x + lin(hidden, p + "ffn.fc2") * g2
    scale, shift = lin(F.silu(cond), "head_nm.ada_lin.1").view(b, 1, 2, c).unbind(2)
    return lin(_ln(x) * (1 + scale) + shift, "head")


# ---- VAE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_phi,share", [(4, None), (2, 2), (1, 1), (0, 0)])
def test_vae_names_shapes_and_exact_round_trip(num_phi: int, share: int | None) -> None:
    model = tiny_vae(num_phi)
    randomise(model)
    official = argen_to_vae(model.state_dict(), share_quant_resi=share)
    expected = official_vae_shapes(share=4 if share is None else share)
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    fresh = tiny_vae(num_phi)
    fresh.load_state_dict(vae_to_argen(official), strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value) or key.startswith("quantize.usage_ema"), key
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens = model.encode(images)
    assert torch.equal(fresh.encode(images), tokens)
    assert torch.equal(fresh.decode(tokens), model.decode(tokens))


def test_vae_matches_the_ldm_equations_on_official_names() -> None:
    official = random_state(official_vae_shapes(), std=0.2)
    config = infer_vae_config(official, scales=SCALES, norm_groups=GROUPS)
    assert config["num_phi"] == 4 and config["channel_multipliers"] == list(MULT) and config["image_size"] == 32
    tok = MultiScaleVQTokenizer(**{k: v for k, v in config.items() if k != "_target_"}).eval()
    tok.load_state_dict(vae_to_argen(official), strict=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ref, out = ref_encoder(official, x), tok.encoder(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        z = torch.randn(2, CV, 8, 8, generator=torch.Generator().manual_seed(3))
        ref, out = ref_decoder(official, z), tok.decoder(z)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    hits = official["quantize.ema_vocab_hit_SV"]
    assert torch.equal(tok.quantize.usage_ema_scales[0], torch.full((V,), 1 / V))  # unrecorded scale
    torch.testing.assert_close(tok.quantize.usage_ema_scales[1:], hits[1:] / hits[1:].sum(1, keepdim=True))
    torch.testing.assert_close(tok.quantize.usage_ema, hits.sum(0) / hits.sum())


def test_vae_missing_unknown_and_unsupported_keys_are_named(tmp_path: Path) -> None:
    official = random_state(official_vae_shapes())
    for bad, err, match in [
        ({k: v for k, v in official.items() if k != "decoder.up.1.block.2.conv2.weight"}, KeyError,
         r"decoder\.up\.1\.block\.2\.conv2\.weight"),
        ({**official, "quantize.foo": torch.zeros(1)}, KeyError, r"no entry in the VAR->argen VAE.*quantize\.foo"),
        ({k: v for k, v in official.items() if "mid.attn_1" not in k}, ValueError, "using_mid_sa=False"),
        ({**official, "decoder.up.0.attn.0.qkv.weight": torch.zeros(3 * CH, CH, 1, 1)}, KeyError,
         r"unexpected \['decoder\.up\.0\.attn\.0\.qkv\.weight'\]"),
    ]:
        torch.save(bad, tmp_path / "vae.pth")
        with pytest.raises(err, match=match):
            convert_vae(tmp_path / "vae.pth", tmp_path / "out", scales=SCALES, norm_groups=GROUPS)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        convert_vae(tmp_path / "nope.pth", tmp_path / "out")


# ---- VAR ------------------------------------------------------------------------------------------
def tiny_var() -> VARGenerator:
    return VARGenerator(vocab_size=V, scales=GSCALES, input_dim=CV, depth=DEPTH, width=WIDTH, n_head=HEADS,
                        condition=functools.partial(ClassEmbedder, num_classes=CLASSES, dropout=0.1)).eval()


def generator_setup() -> tuple[dict[str, Tensor], dict[str, Tensor], MultiScaleVQTokenizer]:
    vae = random_state(official_vae_shapes(num_scales=4, share=2), seed=3, std=0.2)
    tok = tiny_vae(2, GSCALES)
    tok.load_state_dict(vae_to_argen(vae), strict=True)
    return vae, random_state(official_var_shapes(), seed=4), tok


def batch() -> tuple[Tensor, Condition, Tensor]:
    tokens = torch.randint(0, V, (3, 30), generator=torch.Generator().manual_seed(5))
    cond = Condition(labels=torch.tensor([0, 9, 4]), null=torch.tensor([False, False, True]))
    return tokens, cond, torch.tensor([0, 9, CLASSES])  # VAR's null class id for the nulled row


def test_var_logits_match_an_independent_reference_forward() -> None:
    vae, official, tok = generator_setup()
    model = tiny_var()
    model.load_state_dict(var_to_argen(official), strict=True)
    model.attach_tokenizer(tok)
    tokens, cond, labels = batch()
    with torch.no_grad():
        out = model.logits(tokens, cond)
    sd64, vae64 = ({k: v.double() if v.is_floating_point() else v for k, v in d.items()} for d in (official, vae))
    ref = ref_var_logits(sd64, labels, ref_teacher_inputs(vae64, tokens, GSCALES, share=2), DEPTH, HEADS)
    assert out.abs().max() > 0.5 and (out[0] - out[2]).abs().max() > 0.1
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)


def test_var_round_trip_is_identity_and_names_are_vars() -> None:
    model = tiny_var()
    randomise(model)
    official = argen_to_var(model.state_dict(), scales=GSCALES)
    assert {k: tuple(v.shape) for k, v in official.items()} == official_var_shapes()
    reference = random_state(official_var_shapes())
    assert torch.equal(official["lvl_1L"], reference["lvl_1L"])
    assert torch.equal(official["attn_bias_for_masking"], reference["attn_bias_for_masking"])
    back = var_to_argen(official)
    state = model.state_dict()
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=r"sum\(pn\^2\) = 680 tokens but pos_1LC holds 30"):
        argen_to_var(model.state_dict())


def test_var_config_is_inferred_from_the_weights_and_checked() -> None:
    official = random_state(official_var_shapes())
    config = infer_var_config(official, scales=GSCALES)
    assert (config["depth"], config["width"], config["n_head"], config["vocab_size"], config["input_dim"]) == \
        (DEPTH, WIDTH, HEADS, V, CV)
    assert config["condition"]["num_classes"] == CLASSES and config["l2_norm_attention"] and config["mlp_ratio"] == 4
    with pytest.raises(ValueError, match="pass the scales"):
        infer_var_config(official)  # VAR's default sums to 680
    with pytest.raises(ValueError, match="lvl_embed has 4 rows but 3 scales"):
        infer_var_config(official, scales=(1, 2, 5))  # also 30 tokens
    with pytest.raises(ValueError, match="n_head 4 disagrees"):
        infer_var_config(official, scales=GSCALES, n_head=4)
    with pytest.raises(ValueError, match=r"shared adaLN.*shared_ada_lin\.1\.weight"):
        var_to_argen({**official, "shared_ada_lin.1.weight": torch.zeros(1), "blocks.0.ada_gss": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"blocks\.1\.ffn\.fc2\.weight"):
        infer_var_config({k: v for k, v in official.items() if k != "blocks.1.ffn.fc2.weight"}, scales=GSCALES)


def test_convert_files_to_exports_that_load_strictly(tmp_path: Path) -> None:
    vae, official, tok = generator_setup()
    torch.save(vae, tmp_path / "vae.pth")  # VAR's releases are raw state dicts
    torch.save(official, tmp_path / "var.pth")
    vae_dir = convert_vae(tmp_path / "vae.pth", tmp_path / "vae", scales=GSCALES, norm_groups=GROUPS)
    var_dir = convert_var(tmp_path / "var.pth", tmp_path / "var", tokenizer=vae_dir, depth=DEPTH)  # scales from vae
    loaded_tok, loaded = load_pretrained(vae_dir), argen.load(var_dir)
    assert isinstance(loaded_tok, MultiScaleVQTokenizer) and isinstance(loaded, VARGenerator)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    assert torch.equal(loaded_tok.encode(images), tok.encode(images))
    loaded.attach_tokenizer(loaded_tok)
    model = tiny_var()
    model.load_state_dict(var_to_argen(official), strict=True)
    model.attach_tokenizer(tok)
    tokens, cond, _ = batch()
    with torch.no_grad():
        assert torch.equal(loaded.logits(tokens, cond), model.logits(tokens, cond))
    meta = json.loads((var_dir / "meta.json").read_text())
    assert meta["converted_from"] == "var" and meta["kind"] == "generator"
    assert meta["dropped_keys"] == ["attn_bias_for_masking", "lvl_1L"]
    assert meta["tokenizer"]["sha256"] == json.loads((vae_dir / "meta.json").read_text())["sha256"]
    config = yaml.safe_load((var_dir / "config.yaml").read_text())
    assert config["condition"] == {"_target_": "argen.nn.conditioning.ClassEmbedder", "_partial_": True,
                                   "num_classes": CLASSES, "dropout": 0.1}
    with pytest.raises(ValueError, match="not depth 16"):
        convert_var(tmp_path / "var.pth", tmp_path / "x", scales=GSCALES, depth=16)


def test_cli_converts_vae_and_var(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("convert_var", REPO / "scripts" / "convert_var.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    vae, official, _ = generator_setup()
    torch.save({"model": vae}, tmp_path / "vae.pth")
    torch.save(official, tmp_path / "var.pth")
    out = cli.main(["--kind", "vae", "--checkpoint", str(tmp_path / "vae.pth"), "--out", str(tmp_path / "v"),
                    "--scales", "1,2,3,4", "--norm-groups", str(GROUPS)])
    assert argen.load(out).layout.length == 30
    out = cli.main(["--kind", "var", "--checkpoint", str(tmp_path / "var.pth"), "--out", str(tmp_path / "g"),
                    "--tokenizer", str(out), "--depth", str(DEPTH)])
    assert argen.load(out).scales == GSCALES


# ---- the released sizes, shapes only ----------------------------------------------------------------
def test_released_vae_and_var_d16_configs_from_shapes() -> None:
    vae = {k: torch.empty(s, device="meta") for k, s in official_vae_shapes(
        ch=160, mult=(1, 1, 2, 2, 4), nres=2, vocab=4096, cvae=32, num_scales=10, share=4).items()}
    config = infer_vae_config(vae)
    preset = yaml.safe_load((REPO / "argen" / "configs" / "tokenizer" / "msvq_var.yaml").read_text())
    assert config == preset
    shapes = official_var_shapes(depth=16, width=1024, heads=16, vocab=4096, cvae=32, classes=1000, scales=VAR_SCALES)
    state = var_to_argen({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    config = infer_var_config(state)
    assert (config["depth"], config["width"], config["n_head"]) == (16, 1024, 16)
    from hydra.utils import instantiate

    with torch.device("meta"):
        model = instantiate(config, _convert_="all")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert 305e6 < sum(p.numel() for p in model.parameters()) < 315e6  # VAR's table: d16 310M


# ---- what the conversion did with every key, in both directions --------------------------------------
def vae_argen_name(key: str, levels: int = len(MULT)) -> str:
    """An official VAE key's argen name, by hand (the qkv split aside): LDM names -> argen's modules."""
    for pattern, repl in [(r"down\.(\d+)\.block\.", r"conv_blocks.\1.res."), (r"down\.(\d+)\.", r"conv_blocks.\1."),
                          (r"mid\.block_1\.", "mid.0."), (r"mid\.attn_1\.", "mid.1."), (r"mid\.block_2\.", "mid.2."),
                          (r"quant_resi\.qresi_ls\.", "phi.")]:
        key = re.sub(pattern, repl, key)
    m = re.match(r"decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)", key)
    if m:  # up.0 is the highest resolution, argen's conv_blocks.0 the lowest
        key = f"decoder.conv_blocks.{levels - 1 - int(m[1])}.{'res' if m[2] == 'block' else m[2]}.{m[3]}"
    return key


def expected_vae_record(official: dict[str, Tensor]) -> tuple[list[str], dict[str, str], list[dict[str, object]]]:
    """(kept, renamed, qkv splits) of the VAR -> argen direction, derived from the official names."""
    kept, renamed, splits = [], {}, []
    for key in official:
        if key == "quantize.ema_vocab_hit_SV":
            continue
        new = vae_argen_name(key)
        if ".qkv." in new:
            pre, kind = new.split(".qkv.")
            splits.append({"from": [key], "to": [f"{pre}.{n}.{kind}" for n in "kqv"]})
        elif new == key:
            kept.append(key)
        else:
            renamed[key] = new
    return sorted(kept), renamed, sorted(splits, key=lambda t: t["from"])  # type: ignore[arg-type, return-value]


def test_vae_meta_records_each_key_by_what_happened_in_both_directions(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    official = random_state(official_vae_shapes())
    torch.save(official, tmp_path / "vae.pth")
    with caplog.at_level("INFO", logger="argen.io"):
        out = convert_vae(tmp_path / "vae.pth", tmp_path / "vae", scales=SCALES, norm_groups=GROUPS)
    meta = json.loads((out / "meta.json").read_text())
    forward, backward = meta["conversion"]["var->argen"], meta["conversion"]["argen->var"]
    kept, renamed, splits = expected_vae_record(official)
    assert forward["kept"] == kept and forward["renamed"] == renamed
    assert [{"from": t["from"], "to": t["to"]} for t in forward["transformed"][:-1]] == splits
    assert all("split" in t["how"] for t in forward["transformed"][:-1])
    usage = forward["transformed"][-1]
    assert (usage["from"], usage["to"]) == (["quantize.ema_vocab_hit_SV"],
                                            ["quantize.usage_ema", "quantize.usage_ema_scales"])
    assert forward["dropped"] == {} and forward["created"] == {}
    # back to VAR: the inverse renames, q/k/v fused, per-scale usage stored as the hits, the total usage dropped
    assert backward["kept"] == kept and backward["renamed"] == {v: k for k, v in renamed.items()}
    assert [(t["from"], t["to"]) for t in backward["transformed"][:-1]] == \
        sorted((sorted(t["to"]), t["from"]) for t in splits)  # type: ignore[arg-type]
    assert (backward["transformed"][-1]["from"], backward["transformed"][-1]["to"]) == \
        (["quantize.usage_ema_scales"], ["quantize.ema_vocab_hit_SV"])
    assert list(backward["dropped"]) == ["quantize.usage_ema"] and backward["created"] == {}
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("converted"))
    n_qkv = len(splits)
    assert (f"var->argen: {len(kept)} kept, {len(renamed)} renamed, {n_qkv + 1} transformed, 0 dropped, "
            f"0 created") in line
    assert f"argen->var: {len(kept)} kept, {len(renamed)} renamed, {n_qkv + 1} transformed, 1 dropped" in line


def test_vae_round_trip_reports_what_it_drops() -> None:
    from argen.io.keymap import KeyReport

    model = tiny_vae()
    randomise(model)
    with torch.no_grad():
        model.quantize.usage_ema.copy_(torch.rand(V, generator=torch.Generator().manual_seed(0)))
    reports: list[KeyReport] = []
    back = vae_to_argen(argen_to_vae(model.state_dict(), reports=reports), reports=reports)
    there, home = reports
    assert (there.direction, home.direction) == ("argen->var", "var->argen")
    assert list(there.dropped) == ["quantize.usage_ema"]
    assert "usage_ema_scales" in there.dropped["quantize.usage_ema"]  # says what it comes back from
    assert there.created == {} and home.dropped == {} and home.created == {}
    assert home.transformed[-1]["to"] == ["quantize.usage_ema", "quantize.usage_ema_scales"]
    # what was dropped really is lost: the total usage comes back recomputed from the per-scale rows
    assert not torch.equal(back["quantize.usage_ema"], model.quantize.usage_ema)
    # a VAE without hit counts: the usage EMAs are created at argen's 1/V
    official = argen_to_vae(model.state_dict())
    del official["quantize.ema_vocab_hit_SV"]
    vae_to_argen(official, num_scales=len(SCALES), reports=reports)
    assert sorted(reports[-1].created) == ["quantize.usage_ema", "quantize.usage_ema_scales"]
    assert "1/V" in reports[-1].created["quantize.usage_ema"]


def test_var_meta_records_the_class_table_rename_and_the_recomputed_buffers(tmp_path: Path) -> None:
    official = random_state(official_var_shapes())
    torch.save(official, tmp_path / "var.pth")
    meta = json.loads((convert_var(tmp_path / "var.pth", tmp_path / "var", scales=GSCALES) / "meta.json").read_text())
    forward, backward = meta["conversion"]["var->argen"], meta["conversion"]["argen->var"]
    weights = sorted(set(official) - {"class_emb.weight", "lvl_1L", "attn_bias_for_masking"})
    assert forward["kept"] == weights and backward["kept"] == weights
    assert forward["renamed"] == {"class_emb.weight": "cond_embed.embedding_table.weight"}
    assert backward["renamed"] == {"cond_embed.embedding_table.weight": "class_emb.weight"}
    assert sorted(forward["dropped"]) == sorted(backward["created"]) == ["attn_bias_for_masking", "lvl_1L"]
    assert forward["created"] == backward["dropped"] == {} and forward["transformed"] == backward["transformed"] == []


# ---- one-call in-memory conversion ------------------------------------------------------------------
def test_in_memory_vae_and_var_equal_the_file_exports_bit_for_bit(tmp_path: Path) -> None:
    from argen.io.var import vae_from_state_dict, var_from_state_dict

    vae, official, _ = generator_setup()
    torch.save(vae, tmp_path / "vae.pth")
    torch.save(official, tmp_path / "var.pth")
    vae_dir = convert_vae(tmp_path / "vae.pth", tmp_path / "vae", scales=GSCALES, norm_groups=GROUPS)
    loaded_tok, loaded = load_pretrained(vae_dir), argen.load(convert_var(tmp_path / "var.pth", tmp_path / "var",
                                                                          scales=GSCALES))
    tok = vae_from_state_dict(torch.load(tmp_path / "vae.pth", weights_only=True), scales=GSCALES, norm_groups=GROUPS)
    model = var_from_state_dict(official, tokenizer=tok)  # scales from the tokenizer, which it is bound to
    assert isinstance(tok, MultiScaleVQTokenizer) and isinstance(model, VARGenerator)
    assert not tok.training and not model.training and model.scales == GSCALES
    assert not any(t.is_meta for m in (tok, model) for t in [*m.parameters(), *m.buffers()])
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    assert torch.equal(tok.encode(images), loaded_tok.encode(images))
    loaded.attach_tokenizer(loaded_tok)
    tokens, cond, _ = batch()
    with torch.no_grad():
        out, ref = model.logits(tokens, cond), loaded.logits(tokens, cond)
    assert ref.abs().max() > 0.5 and torch.equal(out, ref)
