"""Speculative Jacobi Decoding: window 1 is ancestral sampling token for token; the sequence
distribution is exactly the generator's (and a wrong residual is caught); fewer passes; bad pairs."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
from scipy.stats import chisquare

import argen.samplers.verify as verify
from argen.core import Condition, IncompatibleError
from argen.generators.raster import RasterGenerator
from argen.nn.conditioning import ClassEmbedder
from argen.samplers import AncestralSampler
from argen.samplers.jacobi import JacobiSampler


def toy(vocab: int, grid: int | None = None, length: int | None = None, seed: int = 0,
        head_std: float = 0.5) -> RasterGenerator:
    torch.manual_seed(seed)
    g = RasterGenerator(vocab_size=vocab, dim=32, n_layer=2, n_head=2, condition=partial(ClassEmbedder, num_classes=3),
                        grid_size=grid, sequence_length=length, multiple_of=16)
    with torch.no_grad():
        g.output.weight.normal_(0, head_std)  # LlamaGen zero-inits the head: make the distribution non-trivial
    return g.eval()


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_window_one_is_ancestral_token_for_token(cfg: float) -> None:
    g = toy(16, grid=4)
    cond = Condition(labels=torch.tensor([0, 1, 2, 1]))
    seeds = torch.tensor([11, 12, 13, 14])
    kw = dict(temperature=0.9, top_k=8, cfg_scale=cfg)
    a = AncestralSampler(**kw).sample(g, cond, seeds=seeds)
    j = JacobiSampler(window=1, **kw).sample(g, cond, seeds=seeds)
    assert torch.equal(a.tokens, j.tokens) and j.stats.forward_passes == 16


HEAD_STD = 0.3  # logits of a few nats: neither uniform nor deterministic


def exact_distribution(g: RasterGenerator, label: int, vocab: int, length: int, cfg: float = 1.0) -> torch.Tensor:
    """Probability of every sequence (itertools order): the product of the (guided) conditionals."""
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    cond = Condition(labels=torch.full((len(seqs),), label))
    with torch.no_grad():
        logits = g.logits(seqs, cond)
        if cfg != 1.0:
            uncond = g.logits(seqs, cond.as_null())
            logits = uncond + cfg * (logits - uncond)
        logp = logits.double().log_softmax(-1)
    probs = logp.gather(-1, seqs[..., None])[..., 0].sum(-1).exp()  # (V^L,) in itertools order
    return probs / probs.sum()


def sequence_counts(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    index = (tokens * vocab ** torch.arange(tokens.shape[1] - 1, -1, -1)).sum(-1)
    return torch.bincount(index, minlength=vocab ** tokens.shape[1]).double()


def sjd_pvalue(g: RasterGenerator, n: int, window: int) -> float:
    vocab, length = 3, 4
    expected = exact_distribution(g, 1, vocab, length)
    out = JacobiSampler(window=window).sample(g, Condition(labels=torch.ones(n, dtype=torch.long)),
                                              seeds=torch.arange(n))
    assert out.stats.tokens == length * n
    return pooled_chisquare(sequence_counts(out.tokens, vocab), expected * n)


def pooled_chisquare(counts: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of observed sequence counts against expected counts, the rare sequences (expected < 5)
    pooled into one cell so the chi-square approximation holds."""
    rare = expected < 5
    observed = torch.cat([counts[~rare], counts[rare].sum()[None]])
    expected = torch.cat([expected[~rare], expected[rare].sum()[None]])
    return float(chisquare(observed.numpy(), expected.numpy()).pvalue)


def test_sjd_samples_exactly_the_generators_sequence_distribution() -> None:
    g = toy(3, length=4, seed=1, head_std=HEAD_STD)  # far from uniform, so a wrong rule shows
    assert sjd_pvalue(g, 30_000, window=3) > 1e-3


def test_a_wrong_acceptance_rule_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accepting with p(x) regardless of q is exact for one-hot random drafts but not for the Jacobi
    re-drafts (q = the previous pass's p): the test must see the difference."""
    g = toy(3, length=4, seed=1, head_std=HEAD_STD)
    monkeypatch.setattr(verify, "accept_exact", lambda p, q, u: u < p)
    assert sjd_pvalue(g, 30_000, window=3) < 1e-6


def test_larger_windows_take_fewer_passes() -> None:
    g = toy(8, grid=4, seed=2)
    with torch.no_grad():
        g.output.weight.mul_(6)  # a peaked model: drafts re-drafted from p get accepted
    cond = Condition(labels=torch.tensor([0, 1]))
    passes = {w: JacobiSampler(window=w).sample(g, cond, seeds=torch.tensor([1, 2])).stats.forward_passes
              for w in (1, 4, 8)}
    assert passes[1] == 16 and passes[8] < passes[1] and passes[4] < passes[1]
    row = JacobiSampler(window=8, init="row").sample(g, cond, seeds=torch.tensor([1, 2]))
    assert row.tokens.shape == (2, 16) and row.stats.tokens == 2 * 16


def test_unsupported_generators_and_bad_settings_are_refused() -> None:
    from tests.unit.test_var import make

    with pytest.raises(IncompatibleError, match="VARGenerator"):
        JacobiSampler(window=4).sample(make(), Condition(labels=torch.tensor([0])), seeds=torch.tensor([0]))
    with pytest.raises(ValueError, match="window must be >= 1"):
        JacobiSampler(window=0)
    with pytest.raises(ValueError, match="init must be"):
        JacobiSampler(init="zeros")


@pytest.mark.slow
def test_sjd_distribution_with_small_batches_where_several_drafts_are_accepted() -> None:
    """Batches of 4 rows advance by several tokens per pass, so the multi-token acceptance path is
    what is tested here (the 30k-row batch above mostly advances one token per pass)."""
    g = toy(3, length=4, seed=1, head_std=HEAD_STD)
    vocab, length, rows, batches = 3, 4, 4, 4000
    sampler = JacobiSampler(window=4)
    counts = torch.zeros(vocab ** length, dtype=torch.float64)
    passes = 0
    for i in range(batches):
        out = sampler.sample(g, Condition(labels=torch.ones(rows, dtype=torch.long)),
                             seeds=torch.arange(i * rows, (i + 1) * rows))
        counts += sequence_counts(out.tokens, vocab)
        passes += out.stats.forward_passes
    assert passes < batches * length * 0.8  # several tokens per pass on average
    expected = exact_distribution(g, 1, vocab, length) * rows * batches
    assert pooled_chisquare(counts, expected) > 1e-3


def codebook_tokenizer(vocab: int, seed: int = 0) -> object:
    class Codebook:
        def __init__(self) -> None:
            self.weight = torch.randn(vocab, 4, generator=torch.Generator().manual_seed(seed))

        def codebook(self) -> torch.Tensor:
            return self.weight

    return Codebook()


def test_lantern_with_delta_zero_is_sjd_token_for_token_and_tvd_stays_below_delta() -> None:
    g = toy(16, grid=4, seed=3, head_std=0.8)
    cond, seeds = Condition(labels=torch.tensor([0, 1, 2])), torch.tensor([4, 5, 6])
    exact = JacobiSampler(window=6).sample(g, cond, seeds=seeds)
    zero = JacobiSampler(window=6, acceptance="lantern", lantern_k=5, lantern_delta=0.0)
    zero.attach_tokenizer(codebook_tokenizer(16))
    assert torch.equal(zero.sample(g, cond, seeds=seeds).tokens, exact.tokens)
    relaxed = JacobiSampler(window=6, acceptance="lantern", lantern_k=8, lantern_delta=0.2)
    relaxed.attach_tokenizer(codebook_tokenizer(16))
    out = relaxed.sample(g, cond, seeds=seeds)
    assert 0 < out.stats.extra["max_tvd"] <= 0.2 + 1e-6 and relaxed.settings()["sampler"] == "lantern_jacobi"
    assert out.stats.forward_passes <= exact.stats.forward_passes + 2  # relaxing never costs much more


def test_row_init_copies_the_row_above_including_fresh_drafts() -> None:
    from argen.samplers.batch import Flight
    from argen.samplers.drafts import JacobiDrafts
    from argen.samplers.policy import DecodingPolicy
    from argen.samplers.random import RowRandom

    g = toy(16, grid=4)
    source = JacobiDrafts(window=9, init="row")
    tokens = torch.zeros(1, 16, dtype=torch.long)
    tokens[0, :3] = torch.tensor([5, 6, 7])  # decided: positions 0..2 of a 4-wide grid
    flight = Flight(cond=Condition(labels=torch.tensor([0])), seeds=torch.tensor([0]), index=torch.tensor([0]),
                    n=torch.tensor([3]), tokens=tokens, out=tokens.clone(), state=None, rng=RowRandom(torch.tensor([0])),
                    doubled=False)  # type: ignore[arg-type]
    source.begin(flight, g, DecodingPolicy())
    drafts = source.propose(flight)
    assert tokens[0, 4:7].tolist() == [5, 6, 7] and tokens[0, 8] == tokens[0, 4] == 5  # a draft copies a draft
    assert torch.equal(drafts.tokens[0], tokens[0, 3:11]) and drafts.counts.tolist() == [8]
