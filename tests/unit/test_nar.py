"""NAR (argen.generators.nar, argen.io.nar): the proximity mask position by position, diagonal-by-diagonal
decoding equal to the masked teacher-forced pass (class and text, padded captions), official-named
checkpoints that convert, load strictly and give the logits of an independent functional forward of the
official equations written here, the exact round trip, the official presets' sizes, and clear errors.

No official code or weights are used: the official state dicts are built here from the names and shapes of
research/algorithms.md 3.6 (LlamaGen's plus layers.{n_layer}, medusa_norm, medusa_output), at tiny sizes.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

import argen
from argen.core import Condition, IncompatibleError
from argen.generators.nar import NARGenerator, anti_diagonals
from argen.io.llamagen import gpt_to_argen
from argen.io.nar import NAR, argen_to_nar, convert_nar, infer_nar_config, nar_from_state_dict, nar_to_argen
from argen.nn.conditioning import ClassEmbedder, TextConditioner
from argen.nn.text import WordTextEncoder, build_vocab
from argen.samplers import AncestralSampler
from argen.samplers.jacobi import JacobiSampler
from tests.unit.test_llamagen_convert import llamagen_freqs_cis, llamagen_gpt_shapes

V, DIM, LAYERS, HEADS, CLASSES, GRID, MULT, HIDDEN = 32, 32, 2, 2, 5, 4, 16, 96
CAPTIONS = ["a red circle", "two blue squares left of a green triangle and more", "circle"]


def nar(*, text: bool = False, grid: int = GRID, seed: int = 0) -> NARGenerator:
    torch.manual_seed(seed)
    if text:
        encoder = WordTextEncoder(vocab=build_vocab(CAPTIONS), max_length=6, dim=32, n_layer=1, n_head=2)
        condition = functools.partial(TextConditioner, encoder=encoder)
    else:
        condition = functools.partial(ClassEmbedder, num_classes=CLASSES)
    g = NARGenerator(vocab_size=V, dim=DIM, n_layer=LAYERS, n_head=HEADS, multiple_of=MULT, grid_size=grid,
                     condition=condition)
    with torch.no_grad():  # output starts at zero: make both heads matter
        g.output.weight.normal_(0, 1.0)
        g.medusa_output.weight.normal_(0, 1.0)
    return g.eval()


def tokens_for(g: NARGenerator, b: int, seed: int = 1) -> Tensor:
    return torch.randint(0, V, (b, g.seq_len), generator=torch.Generator().manual_seed(seed))


def diagonal_logits(g: NARGenerator, tokens: Tensor, cond: Condition) -> Tensor:
    """Walk the plan with the KV cache: feed diagonal d - 1, query diagonal d."""
    state, prev = g.start(cond), torch.zeros(0, dtype=torch.long)
    out = torch.zeros(*tokens.shape, V)
    for group in g.plan():
        out[:, group] = g.step(state, tokens[:, prev], prev, group).logits
        prev = group
    return out


# ---- the official equations, written out ------------------------------------------------------------
def official_proximity_mask(prefix: int, n: int) -> Tensor:
    """NAR's setup_caches + setup_proximity_mask: a tril over prefix + n^2 slots whose image block is
    rebuilt diagonal by diagonal, each token seeing every token of the diagonals so far."""
    total = prefix + n * n
    mask = torch.tril(torch.ones(total, total, dtype=torch.bool))
    block = mask[prefix:, prefix:]
    block[:, :] = False
    seen: list[int] = []
    for d in range(2 * n - 1):
        current = [h * n + (d - h) for h in range(n) if 0 <= d - h < n]
        seen += current
        for i in current:
            block[i, seen] = True
    return mask


def rms(x: Tensor, w: Tensor, eps: float = 1e-5) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate(x: Tensor, freqs: Tensor) -> Tensor:
    """gpt.py apply_rotary_emb: interleaved pairs (x0, x1) rotated by (cos, sin); x (B, S, H, hd)."""
    xs = x.reshape(*x.shape[:-1], -1, 2)
    f = freqs[None, :, None]
    return torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                        xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1).flatten(3)


def official_forward(sd: dict[str, Tensor], labels: Tensor, idx: Tensor, *, n_layer: int, n_head: int,
                     grid: int) -> Tensor:
    """NAR-images gpt.py Transformer.forward in training mode (c2i, cls_token_num 1), dropout off:
    [cond; all n^2 tokens] through n_layer + 1 blocks under the proximity mask, logitsR from the n_layer-th
    block's output, logitsB from the last, re-assembled by rolls along width (R) and height (B)."""
    b = idx.shape[0]
    h = torch.cat([sd["cls_embedding.embedding_table.weight"][labels][:, None], sd["tok_embeddings.weight"][idx]], 1)
    dim = h.shape[-1]
    hd = dim // n_head
    freqs = llamagen_freqs_cis(grid, hd)
    mask = official_proximity_mask(1, grid)[None, None]
    trunk = None
    for i in range(n_layer + 1):
        p = f"layers.{i}."
        x = rms(h, sd[p + "attention_norm.weight"])
        q, k, v = (x @ sd[p + "attention.wqkv.weight"].T).split(dim, dim=-1)
        q, k, v = (t.reshape(b, -1, n_head, hd) for t in (q, k, v))
        q, k = rotate(q, freqs), rotate(k, freqs)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        h = h + ((att @ v).transpose(1, 2).reshape(b, -1, dim)) @ sd[p + "attention.wo.weight"].T
        x = rms(h, sd[p + "ffn_norm.weight"])
        h = h + (F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)) \
            @ sd[p + "feed_forward.w2.weight"].T
        if i == n_layer - 1:
            trunk = h
    assert trunk is not None
    lr = (rms(trunk, sd["norm.weight"]) @ sd["output.weight"].T)[:, 0:]  # cls_token_num - 1 = 0
    lb = (rms(h, sd["medusa_norm.weight"]) @ sd["medusa_output.weight"].T)[:, 0:]
    cond_logits = (lr[:, 0] + lb[:, 0]) / 2
    vocab = lr.shape[-1]
    r = lr[:, 1:].reshape(b, grid, grid, vocab).roll(shifts=1, dims=2)
    bl = lb[:, 1:].reshape(b, grid, grid, vocab).roll(shifts=1, dims=1)
    out = torch.zeros_like(bl)
    out[:, 0, 0] = cond_logits
    out[:, 0, 1:] = r[:, 0, 1:]
    out[:, 1:, 0] = bl[:, 1:, 0]
    out[:, 1:, 1:] = (r[:, 1:, 1:] + bl[:, 1:, 1:]) / 2
    return out.reshape(b, -1, vocab)


def official_nar_state(seed: int = 0, *, n_layer: int = LAYERS) -> dict[str, Tensor]:
    """An official-named NAR c2i state dict: LlamaGen's keys for n_layer + 1 blocks plus the head-B norm
    and output."""
    g = torch.Generator().manual_seed(seed)
    shapes = llamagen_gpt_shapes(n_layer=n_layer + 1, dim=DIM, vocab=V, hidden=HIDDEN, classes=CLASSES)
    shapes.update({"medusa_norm.weight": (DIM,), "medusa_output.weight": (V, DIM)})
    return {k: (1 + 0.1 * torch.randn(s, generator=g)) if k.endswith("norm.weight")
            else 0.3 * torch.randn(s, generator=g) for k, s in shapes.items()}


# ---- the mask -----------------------------------------------------------------------------------------
def test_the_proximity_mask_follows_the_rule_position_by_position_on_a_4x4_grid() -> None:
    g = nar()
    n, prefix = GRID, g.prefix_len
    mask = g.attention_mask()[0, 0]  # (prefix + 16, prefix + 16)
    total = prefix + n * n
    assert mask.shape == (total, total)
    for i in range(total):
        for j in range(total):
            if i < prefix:
                want = j <= i  # condition slots: causal among themselves, no image token
            elif j < prefix:
                want = True  # every image token sees every condition slot
            else:
                (ri, ci), (rj, cj) = divmod(i - prefix, n), divmod(j - prefix, n)
                want = rj + cj <= ri + ci
            assert bool(mask[i, j]) == want, (i, j)
    assert torch.equal(mask, official_proximity_mask(prefix, n))
    assert not torch.equal(mask, torch.tril(torch.ones(total, total, dtype=torch.bool)))  # it is not causal


def test_padded_caption_slots_are_hidden_but_see_themselves() -> None:
    g = nar(text=True)
    cond = Condition(texts=CAPTIONS)
    _, valid = g.embed_condition(cond)
    assert valid is not None and not bool(valid.all())
    full_valid = torch.cat([valid, valid.new_ones(3, g.seq_len)], dim=1)
    mask = g.attention_mask(full_valid)[:, 0]
    rule = official_proximity_mask(g.prefix_len, GRID)
    eye = torch.eye(rule.shape[0], dtype=torch.bool)
    assert torch.equal(mask, rule[None] & (full_valid[:, None, :] | eye[None]))


def test_the_plan_is_the_anti_diagonals_in_ascending_rows() -> None:
    plan = nar().plan()
    assert len(plan) == 2 * GRID - 1
    assert [p.tolist() for p in plan[:3]] == [[0], [1, 4], [2, 5, 8]]
    assert plan[-1].tolist() == [15]
    assert sorted(torch.cat(plan).tolist()) == list(range(GRID * GRID))
    assert len(anti_diagonals(8)) == 15


# ---- decoding = the teacher-forced pass -----------------------------------------------------------------
@pytest.mark.parametrize("text", [False, True], ids=["class", "text"])
@torch.no_grad()
def test_diagonal_by_diagonal_decoding_equals_the_masked_full_pass(text: bool) -> None:
    g = nar(text=text)
    cond = Condition(texts=CAPTIONS) if text else Condition(labels=torch.tensor([0, 3, 4]))
    cond = Condition(texts=cond.texts, null=torch.tensor([False, False, True])) if text else cond
    tokens = tokens_for(g, 3)
    full = g.logits(tokens, cond)
    assert full.std() > 0.5  # not degenerate
    torch.testing.assert_close(diagonal_logits(g, tokens, cond), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_query_reads_its_left_and_upper_neighbours_only() -> None:
    """Changing the token at (1, 1) changes the logits of (1, 2), (2, 1) (its right and lower neighbours)
    and of later diagonals, never those of its own diagonal or earlier ones."""
    g = nar()
    tokens, cond = tokens_for(g, 1), Condition(labels=torch.tensor([2]))
    other = tokens.clone()
    other[0, 5] = (other[0, 5] + 1) % V
    diff = (g.logits(tokens, cond) - g.logits(other, cond)).abs().amax(-1)[0].reshape(GRID, GRID)
    levels = torch.arange(GRID)[:, None] + torch.arange(GRID)[None]
    assert bool((diff[levels <= 2] == 0).all())
    assert bool((diff[levels == 3] > 0).all())


# ---- the official equations: conversion, strict load, same logits ----------------------------------------
@torch.no_grad()
def test_an_official_state_dict_converts_loads_strictly_and_matches_the_functional_forward() -> None:
    sd = official_nar_state()
    g = nar_from_state_dict(sd, grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    assert isinstance(g, NARGenerator) and g.n_layer == LAYERS and len(g.layers) == LAYERS + 1
    labels = torch.tensor([0, 4, 2])
    tokens = tokens_for(g, 3)
    want = official_forward(sd, labels, tokens, n_layer=LAYERS, n_head=HEADS, grid=GRID)
    torch.testing.assert_close(g.logits(tokens, Condition(labels=labels)), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(diagonal_logits(g, tokens, Condition(labels=labels)), want, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_a_causal_mask_or_swapped_heads_break_the_match() -> None:
    """The comparison above is sharp: the raster causal mask, or heads R and B swapped, miss it by far."""
    sd = official_nar_state()
    labels, g = torch.tensor([0, 4, 2]), nar_from_state_dict(sd, grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    tokens = tokens_for(g, 3)
    want = official_forward(sd, labels, tokens, n_layer=LAYERS, n_head=HEADS, grid=GRID)
    causal = nar_from_state_dict(sd, grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    causal.levels = torch.arange(len(causal.levels))  # slot order = raster order: a plain causal mask
    assert (causal.logits(tokens, Condition(labels=labels)) - want).abs().max() > 0.1
    swapped = dict(sd)
    swapped["output.weight"], swapped["medusa_output.weight"] = sd["medusa_output.weight"], sd["output.weight"]
    swapped["norm.weight"], swapped["medusa_norm.weight"] = sd["medusa_norm.weight"], sd["norm.weight"]
    g2 = nar_from_state_dict(swapped, grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    assert (g2.logits(tokens, Condition(labels=labels)) - want).abs().max() > 0.1


def test_the_round_trip_to_official_names_is_exact() -> None:
    sd = official_nar_state(3)
    sd["freqs_cis"] = llamagen_freqs_cis(GRID, DIM // HEADS)
    back = argen_to_nar(nar_to_argen(sd))
    assert set(back) == set(sd) - {"freqs_cis"}
    assert all(torch.equal(back[k], sd[k]) for k in back)
    g = nar_from_state_dict(sd, n_head=HEADS, multiple_of=MULT)  # the grid read from freqs_cis
    assert g.grid_size == GRID
    exported = argen_to_nar(g.state_dict())
    assert set(exported) == set(back) and all(torch.equal(exported[k], back[k]) for k in back)


def test_convert_nar_writes_an_export_that_argen_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sd = official_nar_state(5)
    torch.save({"model": sd}, tmp_path / "nar.pt")
    out = convert_nar(tmp_path / "nar.pt", tmp_path / "export", grid_size=GRID, n_head=HEADS, multiple_of=MULT)
    g = argen.load(out)
    assert isinstance(g, NARGenerator)
    labels = torch.tensor([1, 2])
    tokens = tokens_for(g, 2)
    with torch.no_grad():
        want = official_forward(sd, labels, tokens, n_layer=LAYERS, n_head=HEADS, grid=GRID)
        torch.testing.assert_close(g.logits(tokens, Condition(labels=labels)), want, atol=1e-4, rtol=1e-4)


def test_a_llamagen_checkpoint_is_refused_naming_its_converter() -> None:
    shapes = llamagen_gpt_shapes(n_layer=LAYERS, dim=DIM, vocab=V, hidden=HIDDEN, classes=CLASSES)
    sd = {k: torch.zeros(s) for k, s in shapes.items()}
    with pytest.raises(KeyError, match="not a NAR checkpoint.*convert_llamagen"):
        nar_from_state_dict(sd, grid_size=GRID, n_head=HEADS, multiple_of=MULT)


def test_a_nar_checkpoint_given_to_the_llamagen_converter_names_the_nar_one() -> None:
    from argen.io.llamagen import gpt_from_state_dict

    with pytest.raises(KeyError, match="NAR checkpoint.*convert_nar"):
        gpt_from_state_dict(official_nar_state(), grid_size=GRID, n_head=HEADS, multiple_of=MULT)


# ---- the official presets ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_layer,dim,heads,low,high", [
    (12, 768, 12, 130e6, 131e6),      # NAR-B: 130M (130.55M)
    (18, 1024, 16, 295e6, 296e6),     # NAR-M: 295.45M, computed (GPT-M + one block + head B); not checked
    (24, 1024, 16, 372e6, 373e6),     # NAR-L: 372M (372.54M)
    (36, 1280, 20, 815.5e6, 816.5e6), # NAR-XL: 816M (NAR-images/README.md's table; 815.99M)
], ids=["B", "M", "L", "XL"])
def test_official_presets_build_on_meta_with_the_papers_sizes(n_layer: int, dim: int, heads: int, low: float,
                                                              high: float) -> None:
    hidden = {768: 2048, 1024: 2816, 1280: 3584}[dim]
    shapes = llamagen_gpt_shapes(n_layer=n_layer + 1, dim=dim, vocab=16384, hidden=hidden, classes=1000)
    shapes.update({"medusa_norm.weight": (dim,), "medusa_output.weight": (16384, dim)})
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    config = infer_nar_config(gpt_to_argen(state, family=NAR), grid_size=16)
    assert (config["n_layer"], config["dim"], config["n_head"]) == (n_layer, dim, heads)
    with torch.device("meta"):
        model = instantiate(config, _convert_="all")
    total = sum(p.numel() for p in model.parameters())
    assert low < total < high, total
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


# ---- clear errors and refusals ---------------------------------------------------------------------
def test_steps_out_of_order_are_refused_before_anything_runs() -> None:
    g = nar()
    cond, tokens = Condition(labels=torch.tensor([0, 1])), tokens_for(g, 2)
    state = g.start(cond)
    with pytest.raises(ValueError, match="first step runs the condition alone"):
        g.step(state, tokens[:, :1], torch.tensor([0]), torch.tensor([1, 4]))
    g.step(state, tokens[:, :0], torch.zeros(0, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"diagonal 0 = positions \[0\]"):
        g.step(state, tokens[:, [1, 4]], torch.tensor([1, 4]), torch.tensor([2, 5, 8]))
    with pytest.raises(ValueError, match="not on anti-diagonal 1"):
        g.step(state, tokens[:, :1], torch.tensor([0]), torch.tensor([1, 2]))
    with pytest.raises(IncompatibleError, match="rows advance together"):
        g.restart(state, torch.tensor([0]), Condition(labels=torch.tensor([2])))


def test_nar_needs_a_square_grid() -> None:
    with pytest.raises(ValueError, match="square token grid"):
        NARGenerator(vocab_size=V, dim=DIM, n_layer=1, n_head=HEADS, multiple_of=MULT, sequence_length=16,
                     condition=functools.partial(ClassEmbedder, num_classes=CLASSES))


def test_samplers_that_verify_chains_are_refused_and_ancestral_runs() -> None:
    g = nar()
    with pytest.raises(IncompatibleError, match="chain.*NARGenerator"):
        JacobiSampler(window=3).sample(g, Condition(labels=torch.tensor([0])), seeds=torch.tensor([0]))
    out = AncestralSampler(cfg_scale=2.0).sample(g, Condition(labels=torch.tensor([0, 1])), seeds=torch.tensor([3, 4]))
    assert out.tokens.shape == (2, GRID * GRID) and out.stats.forward_passes == 2 * GRID - 1


def test_the_convert_nar_script_writes_a_loadable_export(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "convert_nar.py"
    spec = importlib.util.spec_from_file_location("convert_nar", script)
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    torch.save({"model": official_nar_state(2)}, tmp_path / "n.pt")
    out = cli.main(["--ckpt", str(tmp_path / "n.pt"), "--out", str(tmp_path / "n"), "--image-size", "64",
                    "--n-head", str(HEADS), "--multiple-of", str(MULT)])
    g = argen.load(out)
    assert isinstance(g, NARGenerator) and g.grid_size == GRID  # 64 px / 16
