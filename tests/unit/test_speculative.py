"""EAGLE-style drafter + speculative sampler: the drafter's cached steps equal its teacher-forced pass;
no drafts is ancestral sampling token for token; the sequence distribution under exact verification
is the generator's (sampled and greedy drafts), a wrong rule is caught; LANTERN with delta 0 is exact
verification token for token and stays within delta; bad pairs and mismatched drafters are refused."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import argen.samplers.verify as verify
from argen.core import Condition, IncompatibleError
from argen.generators.drafter import EagleDrafter
from argen.generators.raster import RasterGenerator
from argen.nn.conditioning import ClassEmbedder
from argen.samplers import AncestralSampler
from argen.samplers.speculative import SpeculativeSampler
from tests.contract.cases import drafter_for
from tests.unit.test_jacobi import (
    HEAD_STD,
    codebook_tokenizer,
    exact_distribution,
    pooled_chisquare,
    sequence_counts,
    toy,
)


def test_cached_drafter_steps_equal_the_teacher_forced_pass() -> None:
    g = toy(16, grid=4, seed=3, head_std=0.5)
    d = drafter_for(g)
    tokens = torch.randint(0, 16, (2, 16))
    cond = Condition(labels=torch.tensor([0, 2]))
    feats = g.features(tokens, cond)
    full = d.outputs(tokens[:, :-1], feats[:, :-1])
    state = d.start(2)
    parts = [d.step(state, tokens[:, a:b], feats[:, a:b]) for a, b in ((0, 1), (1, 6), (6, 15))]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-4, rtol=1e-4)
    state.truncate(6)  # rolled back, the same positions give the same outputs
    assert torch.allclose(d.step(state, tokens[:, 6:15], feats[:, 6:15]), full[:, 6:], atol=1e-4, rtol=1e-4)
    # the target's teacher-forced features are what its cached steps return as hidden
    gstate = g.start(cond)
    out = g.step(gstate, tokens[:, :7], torch.arange(7), torch.arange(8))
    assert torch.allclose(out.hidden, feats[:, :8], atol=1e-4, rtol=1e-4)


def test_drafter_loss_trains_towards_the_target() -> None:
    g = toy(16, grid=4, seed=3, head_std=0.5)
    d = drafter_for(g, std=0.02).train()
    tokens = torch.randint(0, 16, (16, 16))
    cond = Condition(labels=torch.randint(0, 3, (16,)))
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)
    first = d.loss(tokens, cond)
    assert set(first.logs) >= {"feature_loss", "logit_loss", "draft_acceptance"}
    for _ in range(60):
        opt.zero_grad()
        d.loss(tokens, cond).loss.backward()
        opt.step()
    last = d.eval().loss(tokens, cond)
    assert last.logs["feature_loss"] < 0.5 * first.logs["feature_loss"]
    assert last.logs["draft_acceptance"] > first.logs["draft_acceptance"]
    assert not any(p.requires_grad for p in g.parameters())  # the target stays frozen
    assert all(not k.startswith(("tok_embeddings", "output", "layers")) for k in d.state_dict())


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_no_drafts_is_ancestral_token_for_token(cfg: float) -> None:
    g = toy(16, grid=4)
    cond = Condition(labels=torch.tensor([0, 1, 2, 1]))
    seeds = torch.tensor([11, 12, 13, 14])
    kw = dict(temperature=0.9, top_k=8, cfg_scale=cfg)
    a = AncestralSampler(**kw).sample(g, cond, seeds=seeds)
    s = SpeculativeSampler(drafter=drafter_for(g), draft_len=0, **kw).sample(g, cond, seeds=seeds)
    assert torch.equal(a.tokens, s.tokens) and s.stats.forward_passes == 16


def speculative_pvalue(g: RasterGenerator, n: int, **kw: object) -> float:
    vocab, length = 3, 4
    expected = exact_distribution(g, 1, vocab, length) * n
    sampler = SpeculativeSampler(drafter=drafter_for(g), **kw)
    out = sampler.sample(g, Condition(labels=torch.ones(n, dtype=torch.long)), seeds=torch.arange(n))
    return pooled_chisquare(sequence_counts(out.tokens, vocab), expected)


@pytest.mark.parametrize("draft", ["sample", "greedy"])
def test_speculative_samples_exactly_the_generators_sequence_distribution(draft: str) -> None:
    g = toy(3, length=4, seed=1, head_std=HEAD_STD)
    assert speculative_pvalue(g, 30_000, draft_len=2, draft=draft) > 1e-3


def test_a_wrong_acceptance_rule_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepting with p(x) regardless of the drafter's q is wrong for drafts sampled from q."""
    g = toy(3, length=4, seed=1, head_std=HEAD_STD)
    monkeypatch.setattr(verify, "accept_exact", lambda p, q, u: u < p)
    assert speculative_pvalue(g, 30_000, draft_len=2, draft="sample") < 1e-6


@pytest.mark.parametrize("draft", ["sample", "greedy"])
def test_lantern_delta_zero_is_exact_and_the_tvd_stays_within_delta(draft: str) -> None:
    """Greedy drafts are candidates (LANTERN's own rule), sampled ones go through the neighbour
    transport; at delta 0 both are exact acceptance, token for token."""
    g = toy(16, grid=4, seed=2)
    cond = Condition(labels=torch.tensor([0, 1, 2]))
    seeds = torch.tensor([5, 6, 7])
    exact = SpeculativeSampler(drafter=drafter_for(g), draft_len=3, cfg_scale=2.0, draft=draft).sample(
        g, cond, seeds=seeds)
    runs = {}
    for delta in (0.0, 0.3):
        s = SpeculativeSampler(drafter=drafter_for(g), draft_len=3, cfg_scale=2.0, acceptance="lantern",
                               lantern_k=6, lantern_delta=delta, draft=draft)
        s.attach_tokenizer(codebook_tokenizer(16))
        runs[delta] = s.sample(g, cond, seeds=seeds)
    assert torch.equal(runs[0.0].tokens, exact.tokens)
    assert runs[0.0].stats.extra["max_tvd"] == 0.0
    assert 0.0 < runs[0.3].stats.extra["max_tvd"] <= 0.3 + 1e-6  # float32
    assert runs[0.3].stats.forward_passes <= exact.stats.forward_passes


def test_unsupported_generators_and_mismatched_drafters_are_refused() -> None:
    from tests.unit.test_var import make

    g = toy(16, grid=4)
    with pytest.raises(IncompatibleError, match="VARGenerator"):
        SpeculativeSampler(drafter=drafter_for(g)).sample(make(), Condition(labels=torch.tensor([0])),
                                                           seeds=torch.tensor([0]))
    other = RasterGenerator(vocab_size=16, dim=64, n_layer=1, n_head=2, condition=partial(ClassEmbedder, num_classes=3),
                            grid_size=4, multiple_of=16).eval()
    with pytest.raises(ValueError, match="drafter/target mismatch"):
        SpeculativeSampler(drafter=drafter_for(g)).sample(other, Condition(labels=torch.tensor([0])),
                                                           seeds=torch.tensor([0]))
    with pytest.raises(RuntimeError, match="no target attached"):
        EagleDrafter(vocab_size=16, dim=32, n_head=2, grid_size=4).loss(torch.zeros(1, 16, dtype=torch.long),
                                                                         Condition(labels=torch.tensor([0])))
    with pytest.raises(FileNotFoundError, match="not an exported drafter"):
        SpeculativeSampler(drafter="/nonexistent/drafter")
    with pytest.raises(ValueError, match="draft must be"):
        SpeculativeSampler(drafter=drafter_for(g), draft="beam")


@pytest.mark.parametrize("kind", ["jacobi", "speculative"])
def test_lantern_needs_the_matching_codebook(kind: str) -> None:
    from argen.samplers.jacobi import JacobiSampler

    g = toy(16, grid=4)
    s = (JacobiSampler(window=4, acceptance="lantern", lantern_k=3) if kind == "jacobi"
         else SpeculativeSampler(drafter=drafter_for(g), acceptance="lantern", lantern_k=3))
    with pytest.raises(RuntimeError, match="attach_tokenizer"):
        s.sample(g, Condition(labels=torch.tensor([0])), seeds=torch.tensor([0]))
    s.attach_tokenizer(codebook_tokenizer(32))
    with pytest.raises(ValueError, match="built for another tokenizer"):
        s.sample(g, Condition(labels=torch.tensor([0])), seeds=torch.tensor([0]))


def test_guided_sequence_distribution_is_exact_for_both_speculative_samplers() -> None:
    """Under classifier-free guidance the target is the guided product of conditionals; SJD and the
    drafter sampler (both batches of 30000 rows, so rows advance together and carry tokens) match it."""
    from argen.samplers.jacobi import JacobiSampler

    g = toy(3, length=4, seed=1, head_std=HEAD_STD)
    n = 30_000
    expected = exact_distribution(g, 1, 3, 4, cfg=2.0) * n
    for sampler in (JacobiSampler(window=3, cfg_scale=2.0),
                    SpeculativeSampler(drafter=drafter_for(g), draft_len=2, cfg_scale=2.0)):
        out = sampler.sample(g, Condition(labels=torch.ones(n, dtype=torch.long)), seeds=torch.arange(n))
        assert pooled_chisquare(sequence_counts(out.tokens, 3), expected) > 1e-3, type(sampler).__name__
