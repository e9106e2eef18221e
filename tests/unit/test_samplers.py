"""Logits processing, guidance, per-row randomness and the ancestral sampler."""

from __future__ import annotations

import functools

import pytest
import torch

from argen.core import Capabilities, Condition, IncompatibleError, Requirements, check_compatible
from argen.generators.raster import RasterGenerator
from argen.nn.conditioning import ClassEmbedder
from argen.samplers import AncestralSampler, Guidance, LogitsProcessor, RowRandom
from argen.samplers.random import sample_seeds

V = 16


def make_generator(seed: int = 0) -> RasterGenerator:
    torch.manual_seed(seed)
    g = RasterGenerator(vocab_size=V, dim=32, n_layer=2, n_head=2, grid_size=3, multiple_of=16,
                        condition=functools.partial(ClassEmbedder, num_classes=5))
    torch.nn.init.normal_(g.output.weight, std=1.0)
    return g.eval()


# ---- LogitsProcessor -----------------------------------------------------------------------------
def test_temperature_divides_logits() -> None:
    logits = torch.randn(2, 3, V)
    torch.testing.assert_close(LogitsProcessor(temperature=2.0)(logits), logits / 2)
    torch.testing.assert_close(LogitsProcessor()(logits), logits)
    p = LogitsProcessor(temperature=0.5).probs(logits)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(p, (logits * 2).softmax(-1))


@pytest.mark.parametrize("k", [1, 3, 15])
def test_top_k_keeps_exactly_the_k_largest(k: int) -> None:
    logits = torch.randn(4, 5, V, generator=torch.Generator().manual_seed(k))
    out = LogitsProcessor(top_k=k)(logits)
    kept = torch.isfinite(out)
    assert bool((kept.sum(-1) == k).all())
    top = torch.topk(logits, k, dim=-1).indices
    assert bool(kept.gather(-1, top).all())
    torch.testing.assert_close(out[kept], logits[kept])


def test_top_k_larger_than_vocab_and_ties() -> None:
    logits = torch.randn(2, V)
    torch.testing.assert_close(LogitsProcessor(top_k=V + 5)(logits), logits)
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert torch.isfinite(LogitsProcessor(top_k=2)(ties)).tolist() == [[False, True, True, False, True]]


def hf_top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Independent reference (transformers' TopPLogitsWarper): sort ascending, drop the tokens whose
    cumulative probability is <= 1 - p, always keep the most likely token. Returns the kept mask."""
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum <= (1 - p)
    remove[..., -1] = False
    return ~remove.scatter(-1, order, remove)


def test_top_p_small_examples() -> None:
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()[None]

    def kept(p: float) -> list[bool]:
        return torch.isfinite(LogitsProcessor(top_p=p)(logits))[0].tolist()

    assert kept(1e-6) == [False, True, False, False]  # the first token always stays
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.7
    assert kept(0.9) == [True, True, False, True]  # 0.95 is the smallest sum >= 0.9
    assert kept(0.99) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]


def test_top_p_matches_hf_convention_on_random_logits() -> None:
    logits = torch.randn(200, V, generator=torch.Generator().manual_seed(0)) * 2
    for p in (0.1, 0.5, 0.8, 0.95):
        kept = torch.isfinite(LogitsProcessor(top_p=p)(logits))
        assert torch.equal(kept, hf_top_p_mask(logits, p)), p
        # The kept set is the smallest whose probability reaches p.
        probs = logits.softmax(-1)
        mass = (probs * kept).sum(-1)
        assert bool((mass >= p - 1e-6).all())
        smallest_kept = probs.masked_fill(~kept, 2.0).min(-1).values
        assert bool((mass - smallest_kept < p + 1e-6).all())


def test_top_k_then_top_p() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    out = LogitsProcessor(top_k=3, top_p=0.7)(logits)
    # After top-k the renormalised probs are ~(0.665, 0.245, 0.090): 0.7 needs two tokens.
    assert torch.isfinite(out).tolist() == [[True, True, False, False, False]]


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1.0), dict(top_k=-1),
                                    dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1)])
def test_logits_processor_rejects_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LogitsProcessor(**kwargs)


# ---- Guidance ------------------------------------------------------------------------------------
class NullGen:
    def null_cond(self, cond: Condition) -> Condition:
        return cond.as_null()


def test_guidance_scale_one_is_inactive() -> None:
    g = Guidance(scale=1.0)
    assert not g.active
    cond = Condition(labels=torch.tensor([1, 2]))
    assert g.double(NullGen(), cond) is cond
    logits = torch.randn(2, 3, V)
    assert g.mix(logits, torch.zeros(3)) is logits


def test_guidance_doubles_and_mixes() -> None:
    g = Guidance(scale=3.0)
    assert g.active
    cond = Condition(labels=torch.tensor([1, 2]))
    doubled = g.double(NullGen(), cond)
    assert len(doubled) == 4 and doubled.labels.tolist() == [1, 2, 1, 2]
    assert doubled.null_mask().tolist() == [False, False, True, True]
    lc, lu = torch.randn(2, 3, V), torch.randn(2, 3, V)
    torch.testing.assert_close(g.mix(torch.cat([lc, lu]), torch.rand(3)), lu + 3.0 * (lc - lu))
    torch.testing.assert_close(Guidance(scale=0.0).mix(torch.cat([lc, lu]), torch.rand(3)), lu)


def test_linear_schedule_ramps_from_one_to_scale() -> None:
    g = Guidance(scale=5.0, schedule="linear")
    assert g.active
    torch.testing.assert_close(g.scale_at(torch.tensor([0.0, 0.25, 1.0])), torch.tensor([1.0, 2.0, 5.0]))
    torch.testing.assert_close(Guidance(scale=5.0).scale_at(torch.tensor([0.0, 1.0])), torch.tensor([5.0, 5.0]))
    lc, lu = torch.randn(1, 3, V), torch.randn(1, 3, V)
    mixed = g.mix(torch.cat([lc, lu]), torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(mixed[:, 0], lc[:, 0])  # scale 1 at the start: the conditional logits
    torch.testing.assert_close(mixed[:, 1], lu[:, 1] + 3.0 * (lc[:, 1] - lu[:, 1]))
    torch.testing.assert_close(mixed[:, 2], lu[:, 2] + 5.0 * (lc[:, 2] - lu[:, 2]))


def test_guidance_schedules_follow_their_formulas() -> None:
    """Each schedule against its formula, written out here (argen.samplers.guidance): every one starts at
    1 (constant excepted) and ends at s."""
    s, u = 4.0, torch.linspace(0, 1, 9)
    expected = {"constant": torch.full_like(u, s), "linear": 1 + (s - 1) * u,
                "cosine": 1 + (s - 1) * 0.5 * (1 - torch.cos(torch.pi * u)),
                "half_linear": torch.where(u < 0.5, 1 + (s - 1) * 2 * u, torch.full_like(u, s))}
    for name, want in expected.items():
        torch.testing.assert_close(Guidance(scale=s, schedule=name).scale_at(u), want, msg=name)
    assert float(Guidance(scale=s, schedule="cosine").scale_at(torch.tensor([0.25]))) < 1 + (s - 1) * 0.25


def test_guidance_rejects_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="schedule"):
        Guidance(scale=2.0, schedule="exponential")
    with pytest.raises(ValueError, match="scale"):
        Guidance(scale=-1.0)


# ---- RowRandom -----------------------------------------------------------------------------------
SEEDS = sample_seeds(1234, range(3))


def test_row_random_same_seeds_same_draws() -> None:
    a, b = RowRandom(SEEDS.clone()), RowRandom(SEEDS.clone())
    for _ in range(3):
        assert torch.equal(a.uniform(5), b.uniform(5))
    c = RowRandom(SEEDS.clone())
    first, second = c.uniform(5), c.uniform(5)
    assert not torch.equal(first, second)  # the stream advances


def test_row_random_rows_do_not_depend_on_batch_mates() -> None:
    sa, sb, sc = SEEDS.tolist()
    full = RowRandom(torch.tensor([sa, sb, sc]))
    alone = RowRandom(torch.tensor([sb]))
    permuted = RowRandom(torch.tensor([sc, sa]))
    for _ in range(3):
        u, ub, up = full.uniform(4, 2), alone.uniform(4, 2), permuted.uniform(4, 2)
        assert u.shape == (3, 4, 2)
        assert torch.equal(u[1:2], ub)
        assert torch.equal(u[[2, 0]], up)
    # rows() views continue the same streams.
    full2 = RowRandom(torch.tensor([sa, sb, sc]))
    full2.uniform(3)
    sub = full2.rows(torch.tensor([2]))
    assert torch.equal(sub.uniform(3), full2.uniform(3)[2:3])


def test_row_random_uniform_range_and_moments() -> None:
    u = RowRandom(sample_seeds(0, range(500))).uniform(200)
    assert u.dtype == torch.float32 and u.shape == (500, 200)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert abs(float(u.var()) - 1 / 12) < 0.002
    assert torch.unique(u).numel() > 0.99 * u.numel()
    r = RowRandom(sample_seeds(0, range(100))).randint(7, 50)
    assert int(r.min()) == 0 and int(r.max()) == 6


def test_row_random_categorical_frequencies_match_probs() -> None:
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    rows, queries = 2000, 10
    draws = RowRandom(sample_seeds(7, range(rows))).categorical(probs.expand(rows, queries, 4).clone())
    assert draws.shape == (rows, queries) and draws.dtype == torch.int64
    n = draws.numel()
    counts = torch.bincount(draws.flatten(), minlength=4).double()
    expected = probs.double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3, (counts.tolist(), chi2)  # 3 degrees of freedom, p ~ 0.001


def test_row_random_categorical_never_draws_zero_probability() -> None:
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0],
                          [0.0, 0.0, 1.0, 0.0, 0.0],
                          [0.3, 0.0, 0.0, 0.0, 0.7]])
    rng = RowRandom(sample_seeds(3, range(3)))
    for _ in range(300):
        draws = rng.categorical(probs[:, None, :].expand(3, 8, 5).clone())
        assert bool((probs.gather(1, draws) > 0).all())
    # Unnormalised probabilities (e.g. after filtering) work the same way.
    unnorm = torch.tensor([[0.0, 2.0, 0.0, 6.0]]).expand(1000, 1, 4).clone()
    d = RowRandom(sample_seeds(5, range(1000))).categorical(unnorm)
    assert set(d.flatten().tolist()) == {1, 3}
    assert 0.2 < float((d == 1).double().mean()) < 0.3


def test_sample_seeds_are_distinct_and_reproducible() -> None:
    s = sample_seeds(0, range(5000))
    assert s.dtype == torch.int64 and torch.unique(s).numel() == 5000
    assert torch.equal(s, sample_seeds(0, list(range(5000))))
    assert torch.equal(s[10:20], sample_seeds(0, range(10, 20)))  # a sample's seed depends on its index only
    other = sample_seeds(1, range(5000))
    assert not bool((other == s).any())


# ---- AncestralSampler ----------------------------------------------------------------------------
COND = Condition(labels=torch.tensor([0, 2, 4]))


def test_ancestral_sample_is_batch_size_independent() -> None:
    g = make_generator()
    seeds = sample_seeds(11, range(3))
    sampler = AncestralSampler(temperature=1.0)
    batch = sampler.sample(g, COND, seeds=seeds).tokens
    for i in range(3):
        alone = sampler.sample(g, COND.index(torch.tensor([i])), seeds=seeds[i:i + 1]).tokens
        assert torch.equal(alone, batch[i:i + 1]), i
    perm = torch.tensor([2, 0, 1])
    assert torch.equal(sampler.sample(g, COND.index(perm), seeds=seeds[perm]).tokens, batch[perm])
    assert torch.equal(sampler.sample(g, COND, seeds=seeds).tokens, batch)  # reproducible
    assert not torch.equal(sampler.sample(g, COND, seeds=sample_seeds(12, range(3))).tokens, batch)


def test_ancestral_tokens_and_stats() -> None:
    g = make_generator()
    res = AncestralSampler(top_k=5, top_p=0.9).sample(g, COND, seeds=sample_seeds(0, range(3)))
    assert res.tokens.shape == (3, 9) and res.tokens.dtype == torch.int64
    assert int(res.tokens.min()) >= 0 and int(res.tokens.max()) < V
    assert res.stats.forward_passes == 9 and res.stats.tokens == 3 * 9
    assert res.stats.accepted_per_pass == 1.0 and res.stats.wall_seconds > 0


def test_top_k_one_is_greedy_decoding() -> None:
    g = make_generator()
    tokens = AncestralSampler(top_k=1).sample(g, COND, seeds=sample_seeds(0, range(3))).tokens
    # Greedy decoding is the unique fixed point: every token is the argmax of the teacher-forced logits.
    with torch.no_grad():
        assert torch.equal(g.logits(tokens, COND).argmax(-1), tokens)
    other = AncestralSampler(top_k=1, temperature=0.3).sample(g, COND, seeds=sample_seeds(9, range(3))).tokens
    assert torch.equal(other, tokens)  # seeds do not matter


def test_cfg_scale_zero_samples_the_unconditional_model() -> None:
    g = make_generator()
    seeds = sample_seeds(0, range(3))
    guided = AncestralSampler(top_k=1, cfg_scale=0.0).sample(g, COND, seeds=seeds).tokens
    uncond = AncestralSampler(top_k=1).sample(g, COND.as_null(), seeds=seeds).tokens
    assert torch.equal(guided, uncond)
    cond = AncestralSampler(top_k=1).sample(g, COND, seeds=seeds).tokens
    assert not torch.equal(cond, uncond)  # the condition matters in this model


def test_cfg_greedy_is_the_argmax_of_the_mixed_full_pass() -> None:
    g = make_generator()
    tokens = AncestralSampler(top_k=1, cfg_scale=3.0).sample(g, COND, seeds=sample_seeds(0, range(3))).tokens
    with torch.no_grad():
        lc, lu = g.logits(tokens, COND), g.logits(tokens, COND.as_null())
    assert torch.equal((lu + 3.0 * (lc - lu)).argmax(-1), tokens)


def test_ancestral_rejects_wrong_number_of_seeds() -> None:
    with pytest.raises(ValueError, match="seeds"):
        AncestralSampler().sample(make_generator(), COND, seeds=sample_seeds(0, range(2)))


class FakeGenerator:
    capabilities = Capabilities(output="logits")


class FakeSpeculativeSampler:
    requires = Requirements(chain=True, rollback=True)


def test_check_compatible_names_both_classes() -> None:
    with pytest.raises(IncompatibleError) as info:
        check_compatible(FakeSpeculativeSampler(), FakeGenerator())
    msg = str(info.value)
    assert "FakeSpeculativeSampler" in msg and "FakeGenerator" in msg
    assert "chain" in msg and "rollback" in msg
    assert isinstance(info.value, TypeError)
    check_compatible(FakeSpeculativeSampler(), make_generator())  # the raster generator has both
    check_compatible(AncestralSampler(), FakeGenerator())


def test_ancestral_sampler_rejects_continuous_generators() -> None:
    class Continuous:
        capabilities = Capabilities(output="velocity")

    with pytest.raises(IncompatibleError, match="AncestralSampler.*Continuous"):
        AncestralSampler().sample(Continuous(), COND, seeds=sample_seeds(0, range(3)))
