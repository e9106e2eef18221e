"""Official xAR checkpoints (OliverRensu/xAR, models/xar.py): a tiny state dict with the official names, shapes and
buffers converts, loads strictly, and gives the velocity of an independent functional forward of the official
equations written out here; a short sampling trace with fixed noise matches the official sampler
(models/sampler.py: euler_maruyama_sampler, models/xar.py: sample_tokens) written out step by step; the way
back gives the official keys; a wrong checkpoint is refused clearly.

Nothing here imports argen's networks: the official equations are restated below from the official code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from argen.core import Condition
from argen.io.xar import argen_to_xar, infer_xar_config, xar_from_state_dict
from argen.samplers.flow import FlowSampler
from argen.samplers.random import RowRandom

D, DEPTH, HEADS, C, SIDE, CELLS = 32, 1, 2, 16, 16, 4  # the official code hard-codes 16x16x16, 4 cells of 64


# ---- the official module's buffers, from the official formulas (models/rope.py, models/xar.py) ------------------
def eva_rope(head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """VisionRotaryEmbeddingFast(dim=head_dim/2, pt_seq_len=16): freqs (hd/4,), cos / sin (256, hd) in cell order."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(SIDE).float()
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (16, dim): '... n -> ... (n r)', r = 2
    table = torch.cat([f[:, None, :].expand(SIDE, SIDE, dim), f[None, :, :].expand(SIDE, SIDE, dim)], dim=-1)
    cos, sin = table.cos().reshape(-1, head_dim), table.sin().reshape(-1, head_dim)
    reorder = lambda x: torch.einsum("hpwqc->hwpqc", x.reshape(2, 8, 2, 8, head_dim)).reshape(-1, head_dim)  # noqa: E731
    return freqs, reorder(cos), reorder(sin)


def official_mask() -> Tensor:
    rows = [torch.cat([torch.ones(64, 64 * (m + 1)), torch.zeros(64, 256 - 64 * (m + 1))], dim=-1) for m in range(CELLS)]
    mask = torch.cat(rows)
    return torch.where(mask == 0, float("-inf"), 0.0)[None, None]


def official_state_dict(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.1: torch.randn(*shape, generator=g) * s  # noqa: E731
    hidden = int(D * 4 * 2 / 3)
    sd = {"class_emb.weight": r(1001, D, s=0.5), "time_embed.mlp.0.weight": r(D, 256), "time_embed.mlp.0.bias": r(D),
          "time_embed.mlp.2.weight": r(D, D), "time_embed.mlp.2.bias": r(D), "z_proj.weight": r(D, C, s=0.3),
          "z_proj.bias": r(D), "z_proj_ln.weight": 1 + r(D), "encoder_pos_embed_learned": r(1, 256, D, s=0.3),
          "encoder_norm.weight": 1 + r(D), "decoder_embed.weight": r(D, D, s=0.3), "decoder_embed.bias": r(D),
          "decoder_pos_embed_learned": r(1, 256, D, s=0.3), "decoder_norm.weight": 1 + r(D),
          "pred.weight": r(16, D, s=0.3), "pred.bias": r(16), "mask": official_mask()}
    freqs, cos, sin = eva_rope(D // HEADS)
    for stack in ("encoder", "decoder"):
        for i in range(DEPTH):
            p = f"{stack}_blocks.{i}."
            sd.update({p + "attn.qkv.weight": r(3 * D, D, s=0.3), p + "attn.qkv.bias": r(3 * D),
                       p + "attn.proj.weight": r(D, D, s=0.3), p + "attn.proj.bias": r(D),
                       p + "mlp.fc1_g.weight": r(hidden, D, s=0.3), p + "mlp.fc1_g.bias": r(hidden),
                       p + "mlp.fc1_x.weight": r(hidden, D, s=0.3), p + "mlp.fc1_x.bias": r(hidden),
                       p + "mlp.fc2.weight": r(D, hidden, s=0.3), p + "mlp.fc2.bias": r(D),
                       p + "ada_lin.1.weight": r(6 * D, D, s=0.2), p + "ada_lin.1.bias": r(6 * D, s=0.2),
                       p + "attn.rope.freqs": freqs, p + "attn.rope.freqs_cos": cos, p + "attn.rope.freqs_sin": sin})
    return sd


# ---- the official forward, functionally (models/xar.py: forward without label dropout and noising) ------------
def rms(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """The official RMSNorm: computed in float32 (``self._norm(x.float()).type_as(x)``), eps 1e-6."""
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x)
    return y if weight is None else y * weight


def rotate_half(x: Tensor) -> Tensor:
    x = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack([-x[..., 1], x[..., 0]], dim=-1).flatten(-2)


def time_embed(sd: dict[str, Tensor], t: Tensor) -> Tensor:
    steps = (t.float() * 1000).long().float()  # the official (t * 1000).long(), t cast to the float32 latents
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half).float() / half)
    args = steps[..., None] * freqs
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    h = F.silu(feats.to(sd["time_embed.mlp.0.weight"].dtype) @ sd["time_embed.mlp.0.weight"].T + sd["time_embed.mlp.0.bias"])
    return h @ sd["time_embed.mlp.2.weight"].T + sd["time_embed.mlp.2.bias"]


def block(sd: dict[str, Tensor], p: str, x: Tensor, cond: Tensor) -> Tensor:
    """x (B, 256, D); cond (B, 4, D): one condition per cell, repeated over its 64 tokens after ada_lin."""
    b = x.shape[0]
    mod = F.silu(cond) @ sd[p + "ada_lin.1.weight"].T + sd[p + "ada_lin.1.bias"]  # (B, 4, 6D)
    mod = mod.view(b, CELLS, 1, 6, D).expand(b, CELLS, 64, 6, D).reshape(b, 256, 6, D)
    g1, g2, s1, s2, b1, b2 = mod.unbind(2)
    h = rms(x) * (1 + s1) + b1
    qkv = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, 256, 3, HEADS, D // HEADS)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    cos, sin = sd[p + "attn.rope.freqs_cos"], sd[p + "attn.rope.freqs_sin"]
    q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=sd["mask"]).transpose(1, 2).reshape(b, 256, D)
    x = x + (a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]) * g1
    h = rms(x) * (1 + s2) + b2
    gate = F.silu(h @ sd[p + "mlp.fc1_g.weight"].T + sd[p + "mlp.fc1_g.bias"])
    mlp = (gate * (h @ sd[p + "mlp.fc1_x.weight"].T + sd[p + "mlp.fc1_x.bias"])) @ sd[p + "mlp.fc2.weight"].T
    return x + (mlp + sd[p + "mlp.fc2.bias"]) * g2


def official_forward(sd: dict[str, Tensor], x: Tensor, t_cells: Tensor, labels: Tensor) -> Tensor:
    """x (B, 256, 16) in cell order at per-cell times t_cells (B, 4) -> the velocity (B, 256, 16), cell order."""
    cond = sd["class_emb.weight"][labels][:, None] + time_embed(sd, t_cells)  # (B, 4, D)
    h = x @ sd["z_proj.weight"].T + sd["z_proj.bias"] + sd["encoder_pos_embed_learned"]
    h = rms(h, sd["z_proj_ln.weight"])
    for i in range(DEPTH):
        h = block(sd, f"encoder_blocks.{i}.", h, cond)
    h = rms(h, sd["encoder_norm.weight"]) @ sd["decoder_embed.weight"].T + sd["decoder_embed.bias"]
    h = h + sd["decoder_pos_embed_learned"]
    for i in range(DEPTH):
        h = block(sd, f"decoder_blocks.{i}.", h, cond)
    return rms(h, sd["decoder_norm.weight"]) @ sd["pred.weight"].T + sd["pred.bias"]


def clusterify(grid: Tensor) -> Tensor:
    """(B, 256, C) raster order -> cell order (2x2 cells of 8x8, row-major inside; the official clusterify)."""
    b = grid.shape[0]
    return grid.reshape(b, 2, 8, 2, 8, C).permute(0, 1, 3, 2, 4, 5).reshape(b, 256, C)


def unclusterify(cells: Tensor) -> Tensor:
    b = cells.shape[0]
    return cells.reshape(b, 2, 2, 8, 8, C).permute(0, 1, 3, 2, 4, 5).reshape(b, 256, C)


# ---- tests ----------------------------------------------------------------------------------------------------
def test_the_config_is_inferred_from_the_weights() -> None:
    cfg = infer_xar_config(official_state_dict())
    assert (cfg["dim"], cfg["n_head"], cfg["encoder_depth"], cfg["decoder_depth"]) == (D, HEADS, DEPTH, DEPTH)
    assert cfg["grid_size"] == [16, 16] and cfg["cell_size"] == 8 and cfg["channels"] == 16
    assert cfg["condition"]["num_classes"] == 1000 and cfg["mlp_ratio"] == 4.0


@torch.no_grad()
def test_converted_weights_give_the_official_velocity() -> None:
    sd = official_state_dict()
    g = xar_from_state_dict(sd)  # strict load
    x = torch.randn(2, 256, C, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([[0.0, 0.0, 0.37, 0.9], [0.2, 0.55, 0.81, 0.999]])
    labels = torch.tensor([3, 1000])  # 1000: the null class
    want = official_forward(sd, clusterify(x), t, labels)
    cond = Condition(labels=torch.tensor([3, 0]), null=torch.tensor([False, True]))
    got = clusterify(g.predict(x, t, cond))
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert want.abs().mean() > 0.1  # a non-trivial function


@torch.no_grad()
def test_a_sampling_trace_with_fixed_noise_matches_the_official_sampler_step_by_step() -> None:
    """xAR's sample_tokens with euler_maruyama_sampler, CFG 2 with the ramp over the 4 cells, 3 steps per cell;
    the noise is each row's draws in the sampler's order (per cell: the start, then one per stochastic step).
    Both in float64, so that the comparison sees the algorithm, not float32 rounding (which 1/t amplifies); what
    is left (~1e-6) is the float32 inside both (RMSNorm, the time sinusoids; argen's RoPE)."""
    sd = {k: v.double() for k, v in official_state_dict(1).items()}
    g = xar_from_state_dict(official_state_dict(1)).double()
    labels, seeds, steps, cfg = torch.tensor([5, 42]), torch.tensor([11, 12]), 3, 2.0
    sampler = FlowSampler(method="sde", steps=steps, cfg_scale=cfg, cfg_schedule="linear")
    sampler.policy.begin(g)
    got: list[Tensor] = []
    real_integrate = sampler.integrate

    def traced(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        return real_integrate(*args, **kw, trace=lambda k, x: got.append(x.clone()))

    sampler.integrate = traced  # type: ignore[method-assign]
    out = sampler.sample(g, Condition(labels=labels), seeds=seeds).tokens

    def reference(synced: bool) -> list[Tensor]:
        """The official loop; ``synced``: every step starts from argen's state before that step (argen's
        committed cells as context), so each step is compared on its own, without earlier rounding compounding."""
        rng = RowRandom(seeds)
        times = torch.cat([torch.linspace(1.0, 0.04, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        cells = torch.zeros(2, 256, C, dtype=torch.float64)
        both = torch.cat([labels, torch.full_like(labels, 1000)])
        trace: list[Tensor] = []
        for m in range(CELLS):
            scale = (cfg - 1) * m / (CELLS - 1) + 1  # the official ramp
            x = rng.normal(64, C).double()
            noise = [rng.normal(64, C).double() for _ in range(steps - 1)]
            for i in range(steps):
                if synced and i > 0:
                    x = got[m * steps + i - 1]
                t_cur, dt = float(times[i]), float(times[i + 1] - times[i])
                inp = cells.clone()
                inp[:, 64 * m:64 * (m + 1)] = x
                t_cells = torch.zeros(2, CELLS)
                t_cells[:, m:] = t_cur  # earlier cells clean at t = 0; later cells masked
                v = official_forward(sd, torch.cat([inp, inp]), torch.cat([t_cells, t_cells]).double(), both)
                v = v[:, 64 * m:64 * (m + 1)].double()
                xx = torch.cat([x, x])
                ratio = -(1 - t_cur)  # alpha / d_alpha
                score = (ratio * v - xx) / (t_cur ** 2 - ratio * 1.0 * t_cur)
                d = v - 0.5 * (2 * t_cur) * score
                d_c, d_u = d.chunk(2)
                d = d_u + scale * (d_c - d_u)
                x = x + d * dt + math.sqrt(2 * t_cur) * math.sqrt(abs(dt)) * noise[i] if i < steps - 1 else x + dt * d
                trace.append(x.clone())
            cells[:, 64 * m:64 * (m + 1)] = got[(m + 1) * steps - 1] if synced else x
        return trace

    synced, free = reference(synced=True), reference(synced=False)
    assert len(got) == len(synced) == CELLS * steps
    for k, (a, b) in enumerate(zip(got, synced, strict=True)):  # step by step: float32 rounding of one step only
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5, msg=f"step {k}")
    # the free-running trace: the same rounding, compounded over 12 steps and 4 cells of context (measured:
    # 2.5e-4 at |x| ~ 10 by the last step). Checked to fail: a constant CFG scale instead of the ramp, or the
    # ODE's drift (v) instead of the SDE's (v + t * score), each at step 0 of the step-by-step comparison
    for k, (a, b) in enumerate(zip(got, free, strict=True)):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), f"step {k}: {(a - b).abs().max():.3g}"
    committed = torch.cat([got[(m + 1) * steps - 1] for m in range(CELLS)], dim=1)  # each cell's last state
    torch.testing.assert_close(clusterify(out.double()), committed, atol=1e-5, rtol=1e-6)  # stored as float32


def test_the_way_back_gives_the_official_keys_and_values() -> None:
    sd = official_state_dict()
    g = xar_from_state_dict(sd)
    back = argen_to_xar(g.state_dict(), infer_xar_config(sd))
    assert set(back) == set(sd)
    for key, value in sd.items():
        torch.testing.assert_close(back[key], value, atol=1e-6, rtol=0, msg=key)


def test_a_wrong_checkpoint_is_refused_naming_the_problem() -> None:
    sd = official_state_dict()
    bad = dict(sd)
    bad["encoder_blocks.0.attn.rope.freqs_cos"] = sd["encoder_blocks.0.attn.rope.freqs_cos"].flip(0)
    with pytest.raises(ValueError, match="freqs_cos.*not the one argen computes"):
        xar_from_state_dict(bad)
    missing = {k: v for k, v in sd.items() if k != "pred.bias"}
    with pytest.raises(KeyError, match="pred.bias"):
        xar_from_state_dict(missing)
    extra = {**sd, "diffloss.net.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="diffloss.net.weight"):
        xar_from_state_dict(extra)


def test_the_script_converts_a_file_to_an_export_and_back(tmp_path) -> None:  # noqa: ANN001
    """scripts/convert_xar.py both ways: official .pth -> argen export -> official .pth: the weights bit for bit,
    the recomputed buffers (RoPE tables: argen's float32 trigonometry vs the formula above) to 1e-6."""
    import importlib.util

    from argen import load
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("convert_xar", REPO / "scripts" / "convert_xar.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sd = official_state_dict(2)
    torch.save(sd, tmp_path / "xar.pth")
    export = script.main(["--ckpt", str(tmp_path / "xar.pth"), "--out", str(tmp_path / "export")])
    assert isinstance(load(export), type(xar_from_state_dict(sd)))
    back = script.main(["--to-official", str(export), "--out", str(tmp_path / "back.pth")])
    restored = torch.load(back, weights_only=True)
    assert set(restored) == set(sd)
    for key, value in sd.items():
        if "rope" in key or key == "mask":
            torch.testing.assert_close(restored[key], value, atol=1e-6, rtol=0, msg=key)
        else:
            assert torch.equal(restored[key], value), key
    with pytest.raises(FileExistsError, match="--overwrite"):
        script.main(["--to-official", str(export), "--out", str(back)])
