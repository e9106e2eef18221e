"""Every legal (sampler, generator) pair, derived from the sampler's requirements and the generator's
capabilities, is run: its equivalences (window 1 / no drafts = ancestral token for token; LANTERN at
delta 0 = exact acceptance) and a chi-square test of its sequence distribution against exact enumeration
on a vocabulary-3 toy of the generator's family. Illegal pairs are refused when sampling starts."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from argen.core import Condition, IncompatibleError, check_compatible
from argen.samplers import AncestralSampler
from argen.samplers.jacobi import JacobiSampler
from argen.samplers.speculative import SpeculativeSampler
from tests.contract.cases import CASES, TOY_VOCAB, Case, drafter_for
from tests.unit.test_jacobi import codebook_tokenizer, pooled_chisquare, sequence_counts

CFG = 1.5  # guided, yet not so peaked that a wrong acceptance rule would hide (it fails at p < 1e-12)


def _lantern(sampler: Any, vocab: int) -> Any:
    sampler.attach_tokenizer(codebook_tokenizer(vocab))
    return sampler


# name -> (sampler factory for a generator, the same sampler reduced to what it must equal, or None)
SAMPLERS: dict[str, Callable[[Any], Any]] = {
    "ancestral": lambda g: AncestralSampler(cfg_scale=CFG),
    "sjd": lambda g: JacobiSampler(window=3, cfg_scale=CFG),
    "lantern_jacobi": lambda g: _lantern(JacobiSampler(window=3, cfg_scale=CFG, acceptance="lantern", lantern_k=2,
                                                       lantern_delta=0.0), g.vocab_size),
    "speculative": lambda g: SpeculativeSampler(drafter=drafter_for(g), draft_len=2, cfg_scale=CFG),
    "speculative_greedy": lambda g: SpeculativeSampler(drafter=drafter_for(g), draft_len=2, draft="greedy",
                                                       cfg_scale=CFG),
    "speculative_lantern": lambda g: _lantern(SpeculativeSampler(drafter=drafter_for(g), draft_len=2, cfg_scale=CFG,
                                                                 acceptance="lantern", lantern_k=2, lantern_delta=0.0),
                                              g.vocab_size),
}
# what each sampler must equal token for token under the same seeds
REDUCED: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "sjd": (lambda g: JacobiSampler(window=1, cfg_scale=CFG), SAMPLERS["ancestral"]),
    "speculative": (lambda g: SpeculativeSampler(drafter=drafter_for(g), draft_len=0, cfg_scale=CFG),
                    SAMPLERS["ancestral"]),
    "lantern_jacobi": (SAMPLERS["lantern_jacobi"], SAMPLERS["sjd"]),  # delta 0 = exact acceptance
    "speculative_lantern": (SAMPLERS["speculative_lantern"], SAMPLERS["speculative"]),
}
SAMPLER_CLASS = {"ancestral": AncestralSampler, "sjd": JacobiSampler, "lantern_jacobi": JacobiSampler,
                 "speculative": SpeculativeSampler, "speculative_greedy": SpeculativeSampler,
                 "speculative_lantern": SpeculativeSampler}


def legal(sampler: str, case: Case) -> bool:
    return not case.build(vocab=TOY_VOCAB).capabilities.missing(SAMPLER_CLASS[sampler].requires)


PAIRS = [(s, c) for s in SAMPLERS for c in CASES if legal(s, c)]
ILLEGAL = [(s, c) for s in SAMPLERS for c in CASES if not legal(s, c)]


def pair_id(pair: tuple[str, Case]) -> str:
    return f"{pair[0]}-{pair[1].name}"


def exact_distribution(g: Any, label: int, cfg: float) -> torch.Tensor:
    """Probability of every sequence (itertools order): the product of its guided conditionals, from the
    teacher-forced logits (within one plan step positions are independent given the steps before)."""
    seqs = torch.tensor(list(itertools.product(range(g.vocab_size), repeat=g.layout.length)))
    cond = Condition(labels=torch.full((len(seqs),), label))
    with torch.no_grad():
        logits, uncond = g.logits(seqs, cond), g.logits(seqs, cond.as_null())
        logp = (uncond + cfg * (logits - uncond)).double().log_softmax(-1)
    probs = logp.gather(-1, seqs[..., None])[..., 0].sum(-1).exp()
    return probs / probs.sum()


def test_the_pairs_cover_every_sampler_and_generator() -> None:
    assert {s for s, _ in PAIRS} == set(SAMPLERS) and {c.name for _, c in PAIRS} == {c.name for c in CASES}
    # VAR (one pass decides a scale) and NAR (one pass decides an anti-diagonal): no chain to verify;
    # Token-Shuffle has a chain (window after window) but no per-position features for a drafter
    assert len(PAIRS) == 23 and len(ILLEGAL) == 13


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_sequence_distribution_is_the_generators(pair: tuple[str, Case]) -> None:
    name, case = pair
    g = case.build(vocab=TOY_VOCAB, seed=1, head_std=0.3)
    n = 20_000
    out = SAMPLERS[name](g).sample(g, Condition(labels=torch.ones(n, dtype=torch.long)), seeds=torch.arange(n),
                                   batch_size=4096)
    expected = exact_distribution(g, 1, CFG) * n
    assert pooled_chisquare(sequence_counts(out.tokens, TOY_VOCAB), expected) > 1e-3


def singleton_plan(case: Case) -> bool:
    return all(len(group) == 1 for group in case.build().plan())


# a speculative sampler reduced to one token per pass equals ancestral sampling only when ancestral also
# decides one token per step (Token-Shuffle's ancestral step draws a window's s^2 tokens at once: the same
# distribution, checked above, from other random draws)
EQUIVALENT = [p for p in PAIRS if p[0] in REDUCED and (REDUCED[p[0]][1] is not SAMPLERS["ancestral"]
                                                      or singleton_plan(p[1]))]


@pytest.mark.parametrize("pair", EQUIVALENT, ids=pair_id)
def test_the_samplers_equivalences_hold_token_for_token(pair: tuple[str, Case]) -> None:
    name, case = pair
    g = case.build(seed=2)
    cond, seeds = case.cond(6), torch.arange(6)
    mine, reference = REDUCED[name]
    a = mine(g).sample(g, cond, seeds=seeds, batch_size=3).tokens
    b = reference(g).sample(g, cond, seeds=seeds, batch_size=3).tokens
    assert torch.equal(a, b)


@pytest.mark.parametrize("pair", ILLEGAL, ids=pair_id)
def test_illegal_pairs_are_refused_naming_both(pair: tuple[str, Case]) -> None:
    name, case = pair
    g = case.build(vocab=TOY_VOCAB)
    sampler = SAMPLERS[name](CASES[0].build(vocab=TOY_VOCAB))  # a drafter, if any, for a generator it can serve
    match = f"{SAMPLER_CLASS[name].__name__} needs .* {type(g).__name__}"
    with pytest.raises(IncompatibleError, match=match):
        sampler.sample(g, case.cond(2), seeds=torch.arange(2))
    with pytest.raises(IncompatibleError, match=match):  # argen-sample checks the class before building it
        check_compatible(SAMPLER_CLASS[name], g)
