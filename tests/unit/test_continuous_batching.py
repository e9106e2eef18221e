"""Ragged speculative decoding with continuous batching: every row advances by its own accepted prefix,
finished rows take the next sample, and each sample is what it would be drawn alone."""

from __future__ import annotations

import pytest
import torch

from argen.core import Condition
from argen.samplers.jacobi import JacobiSampler
from argen.samplers.speculative import SpeculativeSampler
from tests.contract.cases import drafter_for
from tests.unit.test_jacobi import toy


def samplers(g: object) -> dict[str, object]:
    kw = dict(temperature=0.9, cfg_scale=2.0)
    return {"sjd": JacobiSampler(window=5, **kw), "sjd_row": JacobiSampler(window=6, init="row", **kw),
            "drafter": SpeculativeSampler(drafter=drafter_for(g), draft_len=3, **kw),
            "drafter_greedy": SpeculativeSampler(drafter=drafter_for(g), draft_len=3, draft="greedy", **kw)}


@pytest.mark.parametrize("name", ["sjd", "sjd_row", "drafter", "drafter_greedy"])
def test_samples_do_not_depend_on_batch_size_or_batch_mates(name: str) -> None:
    g = toy(16, grid=4, seed=1, head_std=1.5)  # peaked: rows accept different numbers of drafts
    sampler = samplers(g)[name]
    cond = Condition(labels=torch.arange(11) % 3)
    seeds = torch.arange(100, 111)
    alone = torch.cat([sampler.sample(g, cond.index(torch.tensor([i])), seeds=seeds[i:i + 1]).tokens
                       for i in range(11)])
    for batch in (3, 11):
        finished: list[int] = []
        result = sampler.sample(g, cond, seeds=seeds, batch_size=batch,
                                on_finish=lambda idx, toks: finished.extend(idx))
        assert torch.equal(result.tokens, alone), f"batch {batch}"
        assert sorted(finished) == list(range(11))
    permuted = torch.tensor([5, 2, 9, 0])
    assert torch.equal(sampler.sample(g, cond.index(permuted), seeds=seeds[permuted], batch_size=2).tokens,
                       alone[permuted])


def test_rows_advance_by_their_own_prefix_so_batching_costs_few_passes() -> None:
    """With a batch that waited for its slowest row, row-passes per image would grow with the batch."""
    g = toy(16, grid=4, seed=1, head_std=1.5)
    sampler = JacobiSampler(window=8)
    cond, seeds = Condition(labels=torch.arange(24) % 3), torch.arange(24)
    one = sampler.sample(g, cond, seeds=seeds, batch_size=1).stats
    eight = sampler.sample(g, cond, seeds=seeds, batch_size=8).stats
    per_image = {b: s.extra["row_passes"] / 24 for b, s in ((1, one), (8, eight))}
    assert per_image[8] == pytest.approx(per_image[1])  # the same samples, the same passes each
    assert eight.forward_passes < one.forward_passes / 4  # eight rows share each pass
