"""What every generator promises (DESIGN.md, Protocol 2), checked on each registered fixture: the loss is
finite and reaches every parameter; stepping the plan is the teacher-forced pass; rollback is a fresh
state; a ragged advance is each row decoded alone; export -> load is bit-exact; samples do not depend
on batch composition."""

from __future__ import annotations

import pytest
import torch

from argen.core import chain_order
from argen.samplers import AncestralSampler
from tests.contract.cases import CASES, Case
from tokenizers_vq.io import load_pretrained, save_pretrained

IDS = [c.name for c in CASES]


def random_tokens(g: object, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, g.vocab_size, (b, g.layout.length), generator=torch.Generator().manual_seed(seed))


def plan_logits(g: object, tokens: torch.Tensor, cond: object) -> torch.Tensor:
    """Walk the plan: feed the previous group, query the next; logits (B, L, V) in layout order."""
    state, prev = g.start(cond), torch.zeros(0, dtype=torch.long)
    out = torch.zeros(*tokens.shape, g.vocab_size)
    for group in g.plan():
        out[:, group] = g.step(state, tokens[:, prev], prev, group).logits
        prev = group
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_loss_is_finite_and_reaches_every_parameter(case: Case) -> None:
    g = case.build().train()
    out = g.loss(random_tokens(g, 4), case.cond(4))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    unreached = [n for n, p in g.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not unreached, f"{case.name}: no gradient reaches {unreached}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
@torch.no_grad()
def test_stepping_the_plan_equals_the_teacher_forced_pass(case: Case) -> None:
    g = case.build()
    tokens, cond = random_tokens(g, 3), case.cond(3)
    torch.testing.assert_close(plan_logits(g, tokens, cond), g.logits(tokens, cond), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c.build().capabilities.rollback], ids=lambda c: c.name)
@torch.no_grad()
def test_rollback_equals_a_fresh_state(case: Case) -> None:
    """Feed wrong drafts after every decided prefix, roll back, feed the truth: the logits are a fresh
    state's (a rejected draft leaves nothing behind)."""
    g = case.build()
    order = chain_order(g.plan())  # positions advance along the chain (layout order for raster)
    tokens, cond = random_tokens(g, 3), case.cond(3)
    wrong = (tokens + 1) % g.vocab_size
    state = g.start(cond)
    length = g.layout.length
    logits = [g.step(state, tokens[:, :0], torch.zeros(0, dtype=torch.long), order[:1]).logits]
    for i in range(length - 1):
        window = order[i:i + 3]
        g.step(state, wrong[:, window], window, order[i + 1:i + 4])
        state.truncate(i)
        logits.append(g.step(state, tokens[:, order[i:i + 1]], order[i:i + 1], order[i + 1:i + 2]).logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), g.logits(tokens, cond)[:, order], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [c for c in CASES if c.build().capabilities.ragged], ids=lambda c: c.name)
@torch.no_grad()
def test_a_ragged_advance_equals_each_row_decoded_alone(case: Case) -> None:
    """Rows feed 1, 2 and 3 positions a step (-1 pads) and one row restarts with a new condition half
    way: every row's logits are its own teacher-forced ones."""
    g = case.build()
    order = chain_order(g.plan())  # positions advance along the chain: work in chain order, map when stepping
    tokens, cond = random_tokens(g, 4, seed=3), case.cond(4)
    full = g.logits(tokens, cond)[:, order]
    tokens = tokens[:, order]
    length, speeds = g.layout.length, torch.tensor([1, 2, 3])
    state = g.start(cond.index(torch.arange(3)))
    got = torch.zeros(3, length, g.vocab_size)
    n = torch.zeros(3, dtype=torch.long)  # positions with logits so far, per row
    rows = torch.arange(3)
    owner = torch.arange(3)  # the sample each row decodes
    while bool((n < length).any()):
        fed, target = state.fed.clone(), torch.minimum(n + speeds, torch.tensor(length))  # decode n .. target - 1
        counts = torch.where(n < length, (target - 1 - fed).clamp_min(0), 0)  # feed up to position target - 2
        pos = torch.where(torch.arange(int(counts.max()))[None] < counts[:, None],
                          fed[:, None] + torch.arange(int(counts.max()))[None], -1)
        want = n[:, None] + torch.arange(int(speeds.max()))[None]
        query = torch.where(want < target[:, None], want, -1)
        feed = tokens[owner][rows[:, None], pos.clamp_min(0)]
        layout = lambda x: torch.where(x >= 0, order[x.clamp_min(0)], -1)  # noqa: E731
        out = g.step(state, feed, layout(pos), layout(query)).logits
        for r in range(3):
            for j, t in enumerate(query[r].tolist()):
                if t >= 0:
                    got[r, t] = out[r, j]
        n = torch.where(n < length, target, n)
        if int(n[0]) >= length // 2 and int(owner[0]) == 0:  # row 0 takes sample 3 into its slot
            torch.testing.assert_close(got[0, : int(n[0])], full[0, : int(n[0])], atol=1e-5, rtol=1e-5)
            g.restart(state, torch.tensor([0]), cond.index(torch.tensor([3])))
            owner[0], n[0] = 3, 0
            got[0] = 0
    torch.testing.assert_close(got, full[owner], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@torch.no_grad()
def test_export_then_load_is_bit_exact(case: Case, tmp_path: object) -> None:
    g = case.build()
    save_pretrained(g, tmp_path / "export", config=case.config(16))
    loaded = load_pretrained(tmp_path / "export")
    case.bind(loaded, 16)
    tokens, cond = random_tokens(g, 2), case.cond(2)
    assert torch.equal(loaded.logits(tokens, cond), g.logits(tokens, cond))


def assert_batch_independent(sampler: object, g: object, cond: object) -> None:
    """Five samples drawn together, one at a time, and three of them two at a time (a finished row takes
    the next sample) are the same tokens."""
    seeds = torch.arange(40, 45)
    together = sampler.sample(g, cond, seeds=seeds, batch_size=5).tokens
    alone = torch.cat([sampler.sample(g, cond.index(torch.tensor([i])), seeds=seeds[i:i + 1]).tokens
                       for i in range(5)])
    assert torch.equal(together, alone)
    order = torch.tensor([4, 1, 3])
    assert torch.equal(sampler.sample(g, cond.index(order), seeds=seeds[order], batch_size=2).tokens, alone[order])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_samples_do_not_depend_on_batch_composition(case: Case) -> None:
    assert_batch_independent(AncestralSampler(cfg_scale=2.0, temperature=0.9), case.build(), case.cond(5))
