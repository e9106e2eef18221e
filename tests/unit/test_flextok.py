"""FlexTok: FSQ against hand-computed values, the official checkpoint layout against an independent
functional forward of the official equations, nested dropout, per-sample seeds, export round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tokenizers_vq.flextok import FSQ, FlexTokTokenizer, apg
from tokenizers_vq.flextok.blocks import sincos_2d
from tokenizers_vq.flextok.official import OfficialFormatError, load_official


# ---- FSQ ------------------------------------------------------------------------------------------------
def test_fsq_round_trip_every_code():
    fsq = FSQ([3, 4, 2, 5])
    idx = torch.arange(fsq.codebook_size)
    codes = fsq.codes(idx)
    assert torch.equal(fsq.indices(codes), idx)
    assert codes.min() >= -1 and codes.max() <= 1
    assert len({tuple(c.tolist()) for c in codes}) == 120


def test_fsq_basis_and_rounding_by_hand():
    fsq = FSQ([8, 5])  # basis [1, 8]; half widths 4, 2; codes of L=8: -1..0.75 in steps of 1/4
    assert fsq._basis.tolist() == [1, 8]
    assert fsq.codebook_size == 40
    # index = (c0 * 4 + 4) * 1 + (c1 * 2 + 2) * 8
    assert fsq.indices(torch.tensor([[-1.0, -1.0], [0.75, 1.0], [0.0, 0.0], [0.25, -0.5]])).tolist() == \
        [0, 39, 4 + 16, 5 + 8]
    assert fsq.codes(torch.tensor([39])).tolist() == [[0.75, 1.0]]
    # bound: tanh(z + atanh(0.5 / 3.5035)) * 3.5035 - 0.5 for L=8; tanh(z) * 2.002 for L=5
    z = torch.tensor([[10.0, -10.0], [0.0, 0.3], [-10.0, 0.2], [0.5, -0.3]])
    half8 = 7 * 1.001 / 2
    b0 = [math.tanh(v + math.atanh(0.5 / half8)) * half8 - 0.5 for v in (10.0, 0.0, -10.0, 0.5)]
    b1 = [math.tanh(v) * 2.002 for v in (-10.0, 0.3, 0.2, -0.3)]
    expect = torch.tensor([[round(a) / 4, round(b) / 2] for a, b in zip(b0, b1)])
    codes, idx = fsq(z)
    assert torch.equal(codes, expect)
    assert expect.tolist() == [[0.75, -1.0], [0.0, 0.5], [-1.0, 0.0], [0.25, -0.5]]  # written out
    assert idx.tolist() == [7 + 0, 4 + 24, 0 + 16, 5 + 8]


def test_fsq_straight_through_gradient_and_errors():
    fsq = FSQ([8, 8, 8, 5, 5, 5])
    assert fsq.codebook_size == 64000
    z = torch.randn(4, 6, requires_grad=True)
    fsq.quantize(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="6-dim"):
        fsq.quantize(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[0, 64000\)"):
        fsq.codes(torch.tensor([64000]))
    with pytest.raises(ValueError, match=">= 2"):
        FSQ([1, 4])


def test_sincos_matches_the_official_formula_by_hand():
    # h = w = 2, dim 4: one frequency (omega = 1); channels [sin w, cos w, sin h, cos h] where the official
    # layout puts grid (w=i, h=j) at row i, column j.
    emb = sincos_2d(2, 2, 4)
    for i in range(2):
        for j in range(2):
            assert torch.allclose(emb[0, :, i, j], torch.tensor([math.sin(i), math.cos(i), math.sin(j), math.cos(j)]))


# ---- the official layout ----------------------------------------------------------------------------------
DIM, HEAD, K, LEVELS, GRID, PATCH, CH = 32, 16, 8, [8, 5, 3], 4, 2, 4
VAE = dict(block_out_channels=[32, 32], layers_per_block=1, latent_channels=CH, norm_num_groups=32,
           down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
F_ = "flextok.model."


def _official_config(*, reg_on_quants: bool = True) -> dict:
    quants = "quants"
    enc = {
        "enc_channels_to_last": {"_target_": F_ + "utils.dict_ops.PerSampleOp", "read_key": "vae_latents",
                                 "write_key": "lat_bhwc", "per_sample_op": {"_target_": "x", "_partial_": True}},
        "enc_patch_emb": {"_target_": F_ + "preprocessors.patching.PatchEmbedder", "input_tensor_list_read_key":
                          "lat_bhwc", "patches_list_write_key": "enc_patches", "n_patches_write_key": "n",
                          "channels_in": CH, "dim": DIM, "patch_sizes": [PATCH, PATCH], "flatten_patches": False},
        "enc_posemb_module": {"_target_": F_ + "utils.posembs.PositionalEmbeddingAdder", "read_key": "enc_patches",
                              "write_key": "enc_patches", "dim": DIM, "max_sizes": [GRID, GRID],
                              "posemb_type": "sincos", "posemb_scaling": "absolute"},
        "enc_register_module": {"_target_": F_ + "preprocessors.registers.Registers1D",
                                "input_tensor_list_read_key": "enc_patches", "register_sizes_read_write_key": "rs",
                                "registers_write_key": "enc_registers", "dim": DIM, "n_min": K, "n_max": K,
                                "size_sampling_mode": "uniform", "ordering_mode": "nested"},
        "enc_seq_packer": {"_target_": F_ + "preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                           "input_list_read_keys": ["enc_patches", "enc_registers"], "packed_seq_write_key": "seq",
                           "block_mask_write_key": "m", "inner_packed_shapes_write_key": "a",
                           "outer_packed_shapes_write_key": "b", "mask_mode": "causal_last", "pad_to_multiple": 128},
        "enc_transformer": {"_target_": F_ + "trunks.transformers.FlexTransformer", "input_seq_read_key": "seq",
                            "output_seq_write_key": "seq", "dim": DIM, "depth": 2, "head_dim": HEAD,
                            "block_mask_read_key": "m"},
        "enc_unpacker": {"_target_": F_ + "postprocessors.seq_unpacking.SequenceUnpacker"},
        "enc_to_latents": {"_target_": F_ + "postprocessors.heads.LinearHead", "read_key": "enc_registers",
                           "write_key": "enc_registers", "dim": DIM, "dim_out": len(LEVELS), "use_mup_readout": False},
    }
    dec = {
        "dec_from_latents": {"_target_": F_ + "preprocessors.linear.LinearLayer", "read_key": quants,
                             "write_key": "dec_registers", "dim_in": len(LEVELS), "dim": DIM},
        "dec_nested_dropout": {"_target_": F_ + "preprocessors.token_dropout.MaskedNestedDropout",
                               "read_write_key": quants if reg_on_quants else "dec_registers",
                               "dim": len(LEVELS) if reg_on_quants else DIM, "size_sampling_mode": "pow2"},
        "dec_nullcond": {"_target_": F_ + "preprocessors.nullcond.LearnedNullCond", "read_write_key": "dec_registers",
                         "dim": DIM, "dropout_prob": 0.2},
        "dec_register_posemb": {"_target_": F_ + "utils.posembs.PositionalEmbeddingAdder", "read_key": "dec_registers",
                                "write_key": "dec_registers", "dim": DIM, "max_sizes": [K],
                                "posemb_type": "learnable_sum"},
        "dec_noise_to_last": {"_target_": F_ + "utils.dict_ops.PerSampleOp", "read_key": "noised", "write_key": "nl"},
        "dec_patch_emb": {"_target_": F_ + "preprocessors.patching.PatchEmbedder", "input_tensor_list_read_key": "nl",
                          "patches_list_write_key": "dec_patches", "n_patches_write_key": "n", "channels_in": CH,
                          "dim": DIM, "patch_sizes": [PATCH, PATCH], "flatten_patches": False},
        "dec_posemb_module": {"_target_": F_ + "utils.posembs.PositionalEmbeddingAdder", "read_key": "dec_patches",
                              "write_key": "dec_patches", "dim": DIM, "max_sizes": [GRID, GRID]},
        "dec_time_embedder": {"_target_": F_ + "preprocessors.time_embedding.TimestepEmbedder",
                              "timesteps_read_key": "t", "time_embedding_write_key": "temb", "dim": DIM,
                              "max_timestep": 1000.0},
        "dec_seq_packer": {"_target_": F_ + "preprocessors.flex_seq_packing.BlockWiseSequencePacker",
                           "input_list_read_keys": ["dec_patches", "dec_registers"], "mask_mode": "full",
                           "per_subseq_embs": True},
        "dec_transformer": {"_target_": F_ + "trunks.transformers.FlexTransformer", "dim": DIM, "depth": 2,
                            "head_dim": HEAD, "adaLN_emb_read_key": "temb", "adaLN_expansion": 2},
        "dec_unpacker": {"_target_": F_ + "postprocessors.seq_unpacking.SequenceUnpacker"},
        "dec_to_patches": {"_target_": F_ + "postprocessors.heads.ToPatchesLinearHead", "read_key": "dec_patches",
                           "write_key": "v", "dim": DIM, "channels_out": CH, "patch_sizes": [PATCH, PATCH],
                           "use_mup_readout": False, "adaLN_emb_read_key": "temb"},
    }
    return {"_target_": "flextok.flextok_wrapper.FlexTok",
            "vae": {"_target_": "flextok.vae_wrapper.StableDiffusionVAE", "latent_channels": CH,
                    "scaling_factor": 0.88},
            "encoder": {"_target_": F_ + "utils.wrappers.SequentialModuleDictWrapper", "module_dict": enc},
            "decoder": {"_target_": F_ + "utils.wrappers.SequentialModuleDictWrapper", "module_dict": dec},
            "regularizer": {"_target_": "flextok.regularizers.quantize_fsq.FSQ", "levels": LEVELS,
                            "latents_read_key": "enc_registers", "quants_write_key": quants, "tokens_write_key": "ids"},
            "flow_matching_noise_module": {"_target_": "flextok.flow_matching.noise_modules.MinRFNoiseModule"},
            "pipeline": {"_target_": "flextok.flow_matching.pipelines.MinRFPipeline", "_partial_": True}}


def _official_state(*, reg_on_quants: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL

    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    hidden = int(2 * int(DIM * 4.0) / 3)
    e, d = "encoder.module_dict.", "decoder.module_dict."
    sd = {f"{e}enc_patch_emb.patch_proj.weight": r(DIM, CH * PATCH * PATCH), f"{e}enc_patch_emb.patch_proj.bias": r(DIM),
          f"{e}enc_posemb_module.posembs": r(1, DIM, GRID, GRID), f"{e}enc_register_module.registers": r(K, DIM, s=1.0),
          f"{e}enc_to_latents.proj.weight": r(len(LEVELS), DIM, s=0.5), f"{e}enc_to_latents.proj.bias": r(len(LEVELS)),
          f"{d}dec_from_latents.proj.weight": r(DIM, len(LEVELS)), f"{d}dec_from_latents.proj.bias": r(DIM),
          f"{d}dec_nested_dropout.dropout_mask_token": r(len(LEVELS) if reg_on_quants else DIM),
          f"{d}dec_nullcond.nullcond": r(DIM), f"{d}dec_register_posemb.posembs": r(1, 1, DIM, K),
          f"{d}dec_patch_emb.patch_proj.weight": r(DIM, CH * PATCH * PATCH), f"{d}dec_patch_emb.patch_proj.bias": r(DIM),
          f"{d}dec_posemb_module.posembs": r(1, DIM, GRID, GRID),
          f"{d}dec_time_embedder.mlp.0.weight": r(DIM, 256), f"{d}dec_time_embedder.mlp.0.bias": r(DIM),
          f"{d}dec_time_embedder.mlp.2.weight": r(DIM, DIM), f"{d}dec_time_embedder.mlp.2.bias": r(DIM),
          f"{d}dec_to_patches.adaLN_modulation.1.weight": r(2 * DIM, DIM), f"{d}dec_to_patches.adaLN_modulation.1.bias": r(2 * DIM),
          f"{d}dec_to_patches.proj.weight": r(CH * PATCH * PATCH, DIM), f"{d}dec_to_patches.proj.bias": r(CH * PATCH * PATCH)}
    for pre, ada in ((f"{e}enc_transformer.blocks.", 0), (f"{d}dec_transformer.blocks.", 2)):
        for i in range(2):
            for w in ("wq", "wk", "wv", "proj"):
                sd[f"{pre}{i}.attn.{w}.weight"] = r(DIM, DIM, s=0.3)
            sd[f"{pre}{i}.mlp.fc1.weight"] = r(hidden, DIM)
            sd[f"{pre}{i}.mlp.fc3.weight"] = r(hidden, DIM)
            sd[f"{pre}{i}.mlp.fc2.weight"] = r(DIM, hidden)
            if ada:
                sd[f"{pre}{i}.adaLN_modulation.1.weight"] = r(ada * 6 * DIM, DIM)
                sd[f"{pre}{i}.adaLN_modulation.1.bias"] = r(ada * 6 * DIM)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    sd.update({f"vae.vae.{k}": v for k, v in vae.state_dict().items()})
    return sd


def _write(tmp_path, sd, config):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={k: str(v) for k, v in config.items()})
    return path


# The independent functional forward: the official equations, over the official state dict.
def _ln(x):
    return F.layer_norm(x, x.shape[-1:])


def _block(sd, pre, x, mask=None, mod=None):
    b, n, _ = x.shape

    def attn(h):
        def heads(w):
            return (h @ sd[pre + f"attn.{w}.weight"].T).view(b, n, DIM // HEAD, HEAD).transpose(1, 2)
        q, k, v = _ln(heads("wq")), _ln(heads("wk")), heads("wv")
        s = q @ k.transpose(-1, -2) * (8.0 / HEAD)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, DIM)
        return o @ sd[pre + "attn.proj.weight"].T

    def mlp(h):
        return (F.silu(h @ sd[pre + "mlp.fc1.weight"].T) * (h @ sd[pre + "mlp.fc3.weight"].T)) @ sd[pre + "mlp.fc2.weight"].T

    if mod is None:
        x = x + attn(_ln(x))
        return x + mlp(_ln(x))
    g1, g2, s1, c1, s2, c2 = mod
    x = x + g1 * attn(_ln(x) * (1 + c1) + s1)
    return x + g2 * mlp(_ln(x) * (1 + c2) + s2)


def _patches(lat):  # "b (n0 p0) (n1 p1) d -> b (n0 n1) (p0 p1 d)" on channels-last
    b = lat.shape[0]
    x = lat.permute(0, 2, 3, 1).reshape(b, GRID, PATCH, GRID, PATCH, CH).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, GRID * GRID, PATCH * PATCH * CH)


def _functional_ids(sd, lat):
    e = "encoder.module_dict."
    b, n = lat.shape[0], GRID * GRID
    x = _patches(lat) @ sd[f"{e}enc_patch_emb.patch_proj.weight"].T + sd[f"{e}enc_patch_emb.patch_proj.bias"]
    x = x + sd[f"{e}enc_posemb_module.posembs"][0].permute(1, 2, 0).reshape(1, n, DIM)
    x = torch.cat([x, sd[f"{e}enc_register_module.registers"][None].expand(b, -1, -1)], 1)
    q = torch.arange(n + K)[:, None]
    kv = torch.arange(n + K)[None, :]
    mask = (kv <= q) | (kv < n)  # causal_last: prefix (patches) fully visible, registers causal
    for i in range(2):
        x = _block(sd, f"{e}enc_transformer.blocks.{i}.", x, mask)
    z = _ln(x[:, n:]) @ sd[f"{e}enc_to_latents.proj.weight"].T + sd[f"{e}enc_to_latents.proj.bias"]
    lv = torch.tensor(LEVELS, dtype=torch.float32)
    half_l = (lv - 1) * 1.001 / 2
    off = torch.tensor([0.5 if v % 2 == 0 else 0.0 for v in LEVELS])
    zq = torch.round(torch.tanh(z + torch.atanh(off / half_l)) * half_l - off) / torch.floor(lv / 2)
    basis = torch.tensor([1, LEVELS[0], LEVELS[0] * LEVELS[1]], dtype=torch.float32)
    return ((zq * torch.floor(lv / 2) + torch.floor(lv / 2)) * basis).sum(-1).long(), zq


def _functional_velocity(sd, x_t, t, codes, keep_k, *, reg_on_quants=True):
    d = "decoder.module_dict."
    b, n = x_t.shape[0], GRID * GRID
    w, bias = sd[f"{d}dec_from_latents.proj.weight"], sd[f"{d}dec_from_latents.proj.bias"]
    codes = codes.clone()
    if reg_on_quants:
        codes[:, keep_k:] = sd[f"{d}dec_nested_dropout.dropout_mask_token"]
    reg = codes @ w.T + bias
    if not reg_on_quants:
        reg[:, keep_k:] = sd[f"{d}dec_nested_dropout.dropout_mask_token"]
    reg = reg + sd[f"{d}dec_register_posemb.posembs"][0, 0].T[None]
    x = _patches(x_t) @ sd[f"{d}dec_patch_emb.patch_proj.weight"].T + sd[f"{d}dec_patch_emb.patch_proj.bias"]
    x = x + sd[f"{d}dec_posemb_module.posembs"][0].permute(1, 2, 0).reshape(1, n, DIM)
    x = torch.cat([x, reg], 1)
    freqs = (1000.0 / 1000.0) * torch.exp(-math.log(256) * torch.arange(128) / 128)
    a = t[:, None] * freqs[None]
    h = torch.cat([a.cos(), a.sin()], -1)
    temb = F.silu(h @ sd[f"{d}dec_time_embedder.mlp.0.weight"].T + sd[f"{d}dec_time_embedder.mlp.0.bias"])
    temb = temb @ sd[f"{d}dec_time_embedder.mlp.2.weight"].T + sd[f"{d}dec_time_embedder.mlp.2.bias"]
    for i in range(2):
        pre = f"{d}dec_transformer.blocks.{i}."
        m = F.silu(temb) @ sd[pre + "adaLN_modulation.1.weight"].T + sd[pre + "adaLN_modulation.1.bias"]
        m = m.view(b, 2, 6 * DIM)
        per_tok = torch.cat([m[:, :1].expand(-1, n, -1), m[:, 1:].expand(-1, K, -1)], 1)
        x = _block(sd, pre, x, None, per_tok.chunk(6, -1))
    sh, sc = (F.silu(temb) @ sd[f"{d}dec_to_patches.adaLN_modulation.1.weight"].T
              + sd[f"{d}dec_to_patches.adaLN_modulation.1.bias"])[:, None].chunk(2, -1)
    out = (_ln(x[:, :n]) * (1 + sc) + sh) @ sd[f"{d}dec_to_patches.proj.weight"].T + sd[f"{d}dec_to_patches.proj.bias"]
    out = out.view(b, GRID, GRID, PATCH, PATCH, CH).permute(0, 1, 3, 2, 4, 5).reshape(b, GRID * PATCH, GRID * PATCH, CH)
    return out.permute(0, 3, 1, 2)


@pytest.mark.parametrize("reg_on_quants", [True, False])
def test_official_checkpoint_loads_and_matches_functional_forward(tmp_path, reg_on_quants):
    from diffusers import AutoencoderKL

    sd = _official_state(reg_on_quants=reg_on_quants)
    model = load_official(_write(tmp_path, sd, _official_config(reg_on_quants=reg_on_quants)))
    assert model.image_size == 16 and model.num_registers == K and model.fsq.levels == LEVELS
    assert model.register_mask == "causal" and model.keep_k_mode == "pow2" and model.cond_dropout == 0.2
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vae = AutoencoderKL(**VAE)
    vae.load_state_dict({k[len("vae.vae."):]: v for k, v in sd.items() if k.startswith("vae.vae.")})
    with torch.no_grad():
        lat = vae.encode(images).latent_dist.mode() * 0.88
        ids, zq = _functional_ids(sd, lat)
        ours = model.encode(images)
        assert torch.equal(ours, ids)
        assert len(ids.unique()) > 3  # the comparison sees varied codes, not one constant
        x_t = torch.randn(3, CH, 8, 8, generator=torch.Generator().manual_seed(2))
        t = torch.tensor([0.9, 0.5, 0.1])
        for keep in (1, 3, K):
            want = _functional_velocity(sd, x_t, t, zq, keep, reg_on_quants=reg_on_quants)
            got = model.velocity(x_t, t, model.decoder_registers(zq, torch.full((3,), keep)))
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_official_loader_refuses_unknown_layouts(tmp_path):
    sd, config = _official_state(), _official_config()
    bad = dict(config, encoder={"module_dict": dict(config["encoder"]["module_dict"],
                                                   extra={"_target_": "flextok.model.Foo"})})
    with pytest.raises(OfficialFormatError, match="extra.*flextok.model.Foo"):
        load_official(_write(tmp_path, sd, bad))
    packer = dict(config["encoder"]["module_dict"]["enc_seq_packer"], mask_mode="causal")
    bad = dict(config, encoder={"module_dict": dict(config["encoder"]["module_dict"], enc_seq_packer=packer)})
    with pytest.raises(OfficialFormatError, match="mask_mode='causal'"):
        load_official(_write(tmp_path, sd, bad))
    sd.pop("decoder.module_dict.dec_nullcond.nullcond")
    with pytest.raises((OfficialFormatError, KeyError)):
        load_official(_write(tmp_path, sd, config))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_official(tmp_path / "nowhere")
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(1)}, str(plain))
    with pytest.raises(OfficialFormatError, match="no safetensors metadata"):
        load_official(plain)


# ---- our model ------------------------------------------------------------------------------------------
def _tiny(**kw) -> FlexTokTokenizer:
    torch.manual_seed(0)
    args = dict(image_size=16, patch_size=4, dim=32, head_dim=16, encoder_depth=1, decoder_depth=1, num_registers=8,
                levels=[5, 3], decode_steps=3)
    args.update(kw)
    model = FlexTokTokenizer(**args)
    with torch.no_grad():  # non-zero heads, so that every path carries signal
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_causal_register_mask():
    model = _tiny()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    lat = model.to_latent(images)
    z0 = model.register_features(lat)
    with torch.no_grad():
        model.registers[5].add_(1.0)
    z1 = model.register_features(lat)
    assert torch.equal(z0[:, :5], z1[:, :5])  # registers before 5 do not see register 5
    full = _tiny(register_mask="full")
    a = full.register_features(lat)
    with torch.no_grad():
        full.registers[5].add_(1.0)
    assert not torch.equal(a[:, :5], full.register_features(lat)[:, :5])


def test_nested_dropout_and_null_condition():
    model = _tiny()
    codes = model.fsq.codes(torch.randint(0, 15, (2, 8)))
    other = codes.clone()
    other[:, 3:] = model.fsq.codes(torch.randint(0, 15, (2, 5)))
    keep = torch.tensor([3, 3])
    a, b = model.decoder_registers(codes, keep), model.decoder_registers(other, keep)
    assert torch.equal(a, b)
    assert torch.allclose(a[:, 3:], (model.mask_token + model.dec_register_posemb[3:])[None].expand(2, -1, -1))
    null = model.decoder_registers(codes, keep, torch.tensor([True, False]))
    assert torch.allclose(null[0], model.null_token + model.dec_register_posemb)
    assert torch.equal(null[1], a[1])
    pow2 = _tiny(keep_k="pow2").sample_keep_k(4000, torch.device("cpu"))
    assert set(pow2.tolist()) == {1, 2, 4, 8}
    uni = model.sample_keep_k(4000, torch.device("cpu"))
    assert set(uni.tolist()) == set(range(1, 9))


@pytest.mark.parametrize("guidance", ["cfg", "apg"])
def test_decode_any_prefix_with_per_sample_seeds(guidance):
    model = _tiny()
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    ids = model.encode(images)
    assert ids.shape == (3, 8) and ids.dtype == torch.int64
    seeds = torch.tensor([5, 6, 7])
    for k in (1, 2, 4, 8):
        out = model.decode(ids[:, :k], seeds, guidance_scale=2.0, guidance=guidance)
        assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()
        alone = model.decode(ids[1:2, :k], seeds[1:2], guidance_scale=2.0, guidance=guidance)
        assert torch.allclose(out[1:2], alone, atol=1e-5)
    # more tokens change the image: the prefix is what the decoder reads
    assert not torch.allclose(model.decode(ids[:, :1], seeds), model.decode(ids, seeds))
    assert not torch.allclose(model.decode(ids, seeds), model.decode(ids, seeds + 1))
    with pytest.raises(ValueError, match="seeds"):
        model.decode(ids)
    with pytest.raises(ValueError, match="1 <= k <= 8"):
        model.decode(ids[:, :0], seeds)
    with pytest.raises(ValueError, match="vocabulary"):
        model.decode(ids + 100, seeds)


def test_apg_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    out, run = apg(c, u, 3.0, torch.zeros_like(c), norm_threshold=0.0)
    diff = c - u
    unit = c / c.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    orth = diff - (diff * unit).flatten(1).sum(1).view(-1, 1, 1, 1) * unit
    assert torch.allclose(out, c + 2.0 * orth, atol=1e-6)
    assert torch.allclose(run, diff)
    out2, run2 = apg(c, u, 3.0, run)  # momentum -0.5 and the 2.5 norm clip
    assert torch.allclose(run2, diff - 0.5 * diff)
    assert (out2 - c).flatten(1).norm(dim=1).max() <= 2.0 * 2.5 + 1e-5


def test_training_reduces_the_flow_loss():
    from tokenizers_vq.losses import FlowTokenizerLoss

    model = _tiny()
    model.train()
    loss_fn = FlowTokenizerLoss()
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    def held_out() -> float:  # the same t, eps, keep_k and dropout draws before and after
        torch.manual_seed(123)
        with torch.no_grad():
            return float(loss_fn.generator_loss(images, model.reconstruct(images), step=0, last_layer=None).loss)

    before = held_out()
    torch.manual_seed(1)
    for _ in range(40):
        rec = model.reconstruct(images)
        terms = loss_fn.generator_loss(images, rec, step=0, last_layer=model.last_layer())
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
    assert held_out() < 0.8 * before
    assert model.enc_out.weight.grad is not None and model.enc_out.weight.grad.abs().sum() > 0  # through the STE


def test_export_round_trip(tmp_path):
    from tokenizers_vq.io import load_pretrained, save_pretrained

    model = _tiny()
    config = {"_target_": "tokenizers_vq.flextok.FlexTokTokenizer", "image_size": 16, "patch_size": 4, "dim": 32,
              "head_dim": 16, "encoder_depth": 1, "decoder_depth": 1, "num_registers": 8, "levels": [5, 3],
              "decode_steps": 3}
    save_pretrained(model, tmp_path / "export", config=config)
    loaded = load_pretrained(tmp_path / "export")
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    seeds = torch.tensor([1, 2])
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(model.encode(images)[:, :4], seeds), model.decode(model.encode(images)[:, :4], seeds))
    assert loaded.layout.kind == "sequence" and loaded.layout.vocab_size == 15


def test_flextok_on_an_exported_continuous_tokenizer(tmp_path):
    """vae_path: the frozen AutoencoderKL of an argen continuous tokenizer; the export config drops the path."""
    from tokenizers_vq.continuous import ContinuousTokenizer
    from tokenizers_vq.io import load_pretrained, save_pretrained

    torch.manual_seed(0)
    kl_config = {"_target_": "tokenizers_vq.continuous.ContinuousTokenizer", "image_size": 16, "latent_channels": 4,
                 "block_out_channels": [8, 8], "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 0.5}
    kl = ContinuousTokenizer(**{k: v for k, v in kl_config.items() if k != "_target_"})
    save_pretrained(kl, tmp_path / "kl", config=kl_config)
    model = _tiny(vae_path=str(tmp_path / "kl"), patch_size=1)
    assert model.channels == 4 and model.num_patches == 64 and model.scaling_factor == 0.5
    assert not any(p.requires_grad for p in model.vae.parameters())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = kl.vae.encode(images).latent_dist.mode() * 0.5
    assert torch.allclose(model.to_latent(images), want, atol=1e-6)
    node = model.export_config({"_target_": "tokenizers_vq.flextok.FlexTokTokenizer", "image_size": 16, "patch_size": 1,
                                "dim": 32, "head_dim": 16, "encoder_depth": 1, "decoder_depth": 1, "num_registers": 8,
                                "levels": [5, 3], "decode_steps": 3, "vae_path": str(tmp_path / "kl")})
    assert "vae_path" not in node and node["vae_config"]["latent_channels"] == 4
    save_pretrained(model, tmp_path / "ft", config=node)
    (tmp_path / "kl" / "model.safetensors").unlink()  # the export stands alone
    loaded = load_pretrained(tmp_path / "ft")
    seeds = torch.tensor([3, 4])
    assert torch.equal(loaded.decode(model.encode(images), seeds), model.decode(model.encode(images), seeds))
    with pytest.raises(ValueError, match="not both"):
        FlexTokTokenizer(image_size=16, vae_path=str(tmp_path / "kl"), vae_config={})


def test_convert_script_writes_a_loadable_export(tmp_path):
    import importlib.util
    from pathlib import Path

    from tokenizers_vq.io import load_pretrained

    sd = _official_state()
    ckpt = _write(tmp_path, sd, _official_config())
    spec = importlib.util.spec_from_file_location("convert_flextok", Path(__file__).parents[2] / "scripts" / "convert_flextok.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "export"), "--steps", "3"])
    loaded = load_pretrained(out)
    direct = load_official(ckpt)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(images), direct.encode(images))
    assert loaded.decode_steps == 3 and loaded.vae is not None
