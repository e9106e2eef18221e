"""The VAR next-scale generator: loss, block-causal mask, cached inference, CFG ramp, bad calls."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from argen.core import Condition, IncompatibleError, Requirements, check_compatible
from argen.generators.var import VARGenerator
from argen.nn.conditioning import ClassEmbedder, TextConditioner
from argen.nn.text import WordTextEncoder
from argen.samplers import AncestralSampler
from argen.samplers.guidance import Guidance
from tokenizers_vq.msvq import MultiScaleQuantizer

SCALES = [1, 2, 3, 4]
V, D = 24, 6


def quantizer() -> MultiScaleQuantizer:
    torch.manual_seed(1)
    q = MultiScaleQuantizer(codebook_size=V, embed_dim=D, scales=SCALES, num_phi=2)
    with torch.no_grad():
        q.embedding.weight.normal_()
    return q


def make(text: bool = False, **kw: object) -> VARGenerator:
    torch.manual_seed(0)
    if text:
        enc = WordTextEncoder(vocab=["a", "red", "blue", "circle", "square"], max_length=5, dim=16, n_layer=1,
                              n_head=2)
        condition = partial(TextConditioner, encoder=enc)
    else:
        condition = partial(ClassEmbedder, num_classes=5)
    g = VARGenerator(vocab_size=V, scales=SCALES, input_dim=D, condition=condition, depth=2, width=32, n_head=2,
                     init_adaln_gamma=0.5, **kw)  # large gammas: every block matters in the checks
    with torch.no_grad():
        g.head.weight.normal_(0, 0.3)
    g.attach_tokenizer(quantizer())
    return g.eval()


CONDS = {False: Condition(labels=torch.tensor([0, 3, 4])),
         True: Condition(texts=["a red circle", "blue", "a blue square red circle"])}


def tokens(b: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (b, sum(s * s for s in SCALES)), generator=torch.Generator().manual_seed(seed))


def cached_logits(g: VARGenerator, tok: torch.Tensor, cond: Condition) -> torch.Tensor:
    state = g.start(cond)
    prev, out = torch.zeros(0, dtype=torch.long), []
    for group in g.plan():
        out.append(g.step(state, tok[:, prev], prev, group).logits)
        prev = group
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("text", [False, True])
@torch.no_grad()
def test_cached_scale_by_scale_inference_equals_the_full_masked_pass(text: bool) -> None:
    g, tok = make(text), tokens()
    full = g.logits(tok, CONDS[text])  # (B, L, V)
    assert full.shape == (3, 30, V)
    assert torch.allclose(cached_logits(g, tok, CONDS[text]), full, atol=1e-5)


@pytest.mark.parametrize("text", [False, True])
def test_loss_equals_the_naive_per_position_cross_entropy(text: bool) -> None:
    g, tok = make(text), tokens()
    out = g.loss(tok, CONDS[text])  # eval mode: no condition dropout
    with torch.no_grad():
        logits = cached_logits(g, tok, CONDS[text])
    total, per_scale = 0.0, {k: [] for k in range(len(SCALES))}
    for b in range(tok.shape[0]):
        for i in range(tok.shape[1]):
            nll = -torch.log_softmax(logits[b, i], dim=-1)[tok[b, i]]
            total += float(nll)
            per_scale[int(g.levels[i])].append(float(nll))
    assert out.loss.item() == pytest.approx(total / tok.numel(), rel=1e-5)
    for k, values in per_scale.items():
        assert out.logs[f"loss_scale{k}"].item() == pytest.approx(sum(values) / len(values), rel=1e-5)
    out.loss.backward()
    assert g.word_embed.weight.grad.abs().sum() > 0 and g.pos_start.grad.abs().sum() > 0


@torch.no_grad()
def test_block_causal_mask_a_scale_sees_only_itself_and_coarser_scales() -> None:
    g, tok = make(), tokens()
    cond = CONDS[False]
    base = g.logits(tok, cond)
    changed = tok.clone()
    changed[:, 5:14] = (changed[:, 5:14] + 1) % V  # scale 2 (positions 5..13)
    out = g.logits(changed, cond)
    # scale 2's tokens feed the inputs of scale 3 only: scales 0..2 keep their logits
    assert torch.allclose(out[:, :14], base[:, :14], atol=1e-6)
    assert not torch.allclose(out[:, 14:], base[:, 14:], atol=1e-4)


def test_sampling_walks_one_scale_per_pass_and_reproduces() -> None:
    g = make()
    sampler = AncestralSampler(cfg_scale=2.5, cfg_schedule="linear", top_k=10)
    cond = Condition(labels=torch.tensor([1, 2, 3]))
    a = sampler.sample(g, cond, seeds=torch.tensor([5, 6, 7]))
    b = sampler.sample(g, cond.index(torch.tensor([2])), seeds=torch.tensor([7]))
    assert a.stats.forward_passes == len(SCALES) and a.stats.tokens == 3 * 30
    assert torch.equal(a.tokens[2:], b.tokens)  # per-row seeds: independent of batch-mates


def test_guidance_linear_ramp_is_vars_cfg_schedule() -> None:
    """VAR: (1 + t) l_c - t l_u with t = cfg k / (K - 1); ours with cfg_scale = 1 + cfg."""
    cfg, k_total = 1.5, 10
    guidance = Guidance(scale=1 + cfg, schedule="linear")
    l_c, l_u = torch.randn(1, 1, 7), torch.randn(1, 1, 7)
    for k in range(k_total):
        t = cfg * k / (k_total - 1)
        mixed = guidance.mix(torch.cat([l_c, l_u]), torch.tensor([k / (k_total - 1)]))
        assert torch.allclose(mixed, (1 + t) * l_c - t * l_u, atol=1e-6)


def test_bad_calls_fail_early_and_leave_the_state_usable() -> None:
    g = make()
    cond = CONDS[False]
    tok = tokens()
    state = g.start(cond)
    with pytest.raises(ValueError, match="first VAR step feeds nothing"):
        g.step(state, tok[:, :1], torch.tensor([0]), torch.arange(1, 5))
    with pytest.raises(ValueError, match="must lie in scale 0"):
        g.step(state, tok[:, :0], torch.zeros(0, dtype=torch.long), torch.arange(1, 5))
    g.step(state, tok[:, :0], torch.zeros(0, dtype=torch.long), torch.tensor([0]))
    with pytest.raises(ValueError, match="one whole scale"):
        g.step(state, tok[:, 1:5], torch.arange(1, 5), torch.arange(5, 14))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        g.step(state, torch.full((3, 1), V), torch.tensor([0]), torch.arange(1, 5))
    out = g.step(state, tok[:, :1], torch.tensor([0]), torch.arange(1, 5))  # still usable
    assert out.logits.shape == (3, 4, V)
    unattached = VARGenerator(vocab_size=V, scales=SCALES, input_dim=D, condition=partial(ClassEmbedder, num_classes=5),
                              depth=1, width=16, n_head=2)
    with pytest.raises(RuntimeError, match="attach_tokenizer"):
        unattached.loss(tok, cond)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        unattached.attach_tokenizer(MultiScaleQuantizer(codebook_size=V, embed_dim=D, scales=[1, 2, 4], num_phi=1))
    with pytest.raises(ValueError, match=r"expected 30 tokens"):
        g.loss(tok[:, :20], cond)


def test_var_cannot_roll_back_so_speculative_samplers_are_refused() -> None:
    class Speculative:
        requires = Requirements(chain=True, rollback=True)
        name = "speculative"

    with pytest.raises(IncompatibleError, match="VARGenerator"):
        check_compatible(Speculative(), make())


def test_state_dict_holds_the_transformer_only() -> None:
    keys = set(make().state_dict())
    assert not any(k.startswith("_residual") or "embedding.weight" == k for k in keys)
    assert {"word_embed.weight", "pos_start", "pos_1LC", "lvl_embed.weight", "head_nm.ada_lin.1.weight",
            "blocks.0.attn.mat_qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.zero_k_bias",
            "blocks.0.attn.scale_mul_1H11", "blocks.0.ada_lin.1.weight", "cond_embed.embedding_table.weight"} <= keys
