"""What an EAGLE drafter promises, checked on every registered drafter fixture (``DRAFTERS``: one per
generator case that can serve as its target), where the generator contracts (DESIGN.md, Protocol 2) apply.

A drafter is a draft source of the speculative sampler, not a generator sampled on its own: it has no
plan, no condition and no head of its own (its target's head reads its outputs), and the sampler drives it
through ``start`` / ``step(state, tokens, features, counts)`` / ``DecodeState.truncate`` / ``select``
(:class:`~argen.samplers.drafts.DrafterDrafts`). So: its loss is finite and reaches every drafter parameter
and none of the frozen target's; stepping (token, feature) pairs, and drafting a chain from its own
outputs, equals its teacher-forced pass over the same pairs; rolling drafted positions back equals a fresh
state; a ragged advance (per-row counts, a row restarted, rows reordered) equals each row drafted alone;
export -> load -> bind is bit-exact; the speculative sampler with it draws samples that do not depend on
batch composition. Not for a drafter: walking a plan, and ancestral sampling of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from argen.core import Drafter, needs
from argen.core.protocols import bind
from argen.samplers.drafts import DrafterDrafts
from argen.samplers.speculative import SpeculativeSampler, load_drafter
from tests.contract.cases import DRAFTERS, DrafterCase, drafter_config
from tests.contract.test_generators import assert_batch_independent, random_tokens
from tokenizers_vq.io import load_pretrained, read_meta, save_pretrained

IDS = [c.name for c in DRAFTERS]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def target_pairs(g: object, case: DrafterCase, b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens (B, L-1) and the target's teacher-forced features of them (B, L-1, C): the pairs a
    drafter reads (output i of the last pair would predict a position past the layout)."""
    tokens = random_tokens(g, b, seed)
    features = g.features(tokens, case.cond(b))
    return tokens[:, :-1], features[:, :-1]


def test_every_feature_target_case_has_a_drafter() -> None:
    assert IDS == ["eagle-raster_grid", "eagle-raster_1d", "eagle-flextok"]  # VAR decides a scale a pass: nothing to draft
    for case in DRAFTERS:  # each speaks the protocol the speculative loop types its draft source against
        assert isinstance(case.build()[1], Drafter)
    with pytest.raises(TypeError, match="needs a drafter"):
        DrafterDrafts(drafter=object())


@pytest.mark.parametrize("case", DRAFTERS, ids=IDS)
def test_drafter_loss_is_finite_and_reaches_every_drafter_parameter_and_none_of_the_targets(
        case: DrafterCase) -> None:
    g, d = case.build()
    out = d.train().loss(random_tokens(g, 4), case.cond(4))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    unreached = [n for n, p in d.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not unreached, f"{case.name}: no gradient reaches {unreached}"
    trained = [n for n, p in g.named_parameters() if p.requires_grad or p.grad is not None]
    assert not trained, f"{case.name}: the frozen target's {trained} would train with the drafter"
    assert {id(p) for p in d.parameters()}.isdisjoint(id(p) for p in g.parameters())


@pytest.mark.parametrize("case", DRAFTERS, ids=IDS)
@torch.no_grad()
def test_stepped_drafting_equals_the_teacher_forced_pass(case: DrafterCase) -> None:
    """Pairs fed in chunks of 1, several and the rest; then a chain that reads, from position k on, the
    drafter's own last output in place of the target's feature (how it drafts): both are the teacher-forced
    pass over the pairs it read, which depends on the tokens and on the features."""
    g, d = case.build()
    tokens, feats = target_pairs(g, case, 3)
    n, k = tokens.shape[1], tokens.shape[1] // 2
    full = d.outputs(tokens, feats)
    state, cuts = d.start(3), [0, 1, k, n]
    parts = [d.step(state, tokens[:, a:b], feats[:, a:b]) for a, b in zip(cuts, cuts[1:])]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)
    state = d.start(3)
    read, chain = [feats[:, :k]], [d.step(state, tokens[:, :k], feats[:, :k])[:, -1:]]
    for i in range(k, n):
        read.append(chain[-1])
        chain.append(d.step(state, tokens[:, i:i + 1], chain[-1]))
    torch.testing.assert_close(torch.cat(chain, dim=1), d.outputs(tokens, torch.cat(read, dim=1))[:, k - 1:], **TOL)
    for other in (d.outputs((tokens + 1) % g.vocab_size, feats), d.outputs(tokens, feats.flip(0))):
        assert not torch.allclose(other, full, **TOL)


@pytest.mark.parametrize("case", DRAFTERS, ids=IDS)
@torch.no_grad()
def test_rolling_back_drafted_positions_equals_a_fresh_state(case: DrafterCase) -> None:
    """As the speculative sampler drives it: each round the drafter reads one decided pair, drafts a chain
    of two wrong tokens from its own outputs and is rolled back to the decided pairs; at the end it is
    rolled back to nothing and reads every pair at once. Both are a fresh state's teacher-forced outputs."""
    g, d = case.build()
    tokens, feats = target_pairs(g, case, 3)
    n, wrong = tokens.shape[1], (tokens + 1) % g.vocab_size
    full = d.outputs(tokens, feats)
    state, got = d.start(3), []
    for i in range(n):
        got.append(d.step(state, tokens[:, i:i + 1], feats[:, i:i + 1]))
        h = got[-1]
        for j in range(i + 1, min(i + 3, n)):
            h = d.step(state, wrong[:, j:j + 1], h)
        state.truncate(i + 1)
    torch.testing.assert_close(torch.cat(got, dim=1), full, **TOL)
    state.truncate(0)
    torch.testing.assert_close(d.step(state, tokens, feats), full, **TOL)


@pytest.mark.parametrize("case", DRAFTERS, ids=IDS)
@torch.no_grad()
def test_a_ragged_advance_equals_each_row_drafted_alone(case: DrafterCase) -> None:
    """Rows read 1, 2 and 3 pairs a step (per-row ``counts``, as the sampler's catch-up passes them); half
    way row 0 is rolled back to nothing and takes sample 3 (a finished row restarted) and the rows are
    reordered (the sampler compacting its batch): every row's outputs are its own sample's."""
    g, d = case.build()
    tokens, feats = target_pairs(g, case, 4, seed=3)
    n, full = tokens.shape[1], d.outputs(tokens, feats)
    state, owner, speeds = d.start(3), torch.arange(3), torch.tensor([1, 2, 3])
    got = torch.zeros(3, *full.shape[1:])
    while bool((state.fed < n).any()):
        fed = state.fed.clone()
        counts = torch.minimum(speeds, n - fed)
        at = (fed[:, None] + torch.arange(int(counts.max()))[None]).clamp_max(n - 1)  # padding past a count
        out = d.step(state, tokens[owner[:, None], at], feats[owner[:, None], at], counts=counts)
        for r in range(3):
            got[r, int(fed[r]): int(fed[r] + counts[r])] = out[r, : int(counts[r])]
        if int(owner[0]) == 0 and int(state.fed[0]) >= n // 2:
            torch.testing.assert_close(got[0, : int(state.fed[0])], full[0, : int(state.fed[0])], **TOL)
            state.truncate(torch.where(torch.arange(3) == 0, 0, state.fed))
            owner[0], got[0] = 3, 0
            order = torch.tensor([2, 0, 1])
            state.select(order)
            owner, speeds, got = owner[order], speeds[order], got[order]
    torch.testing.assert_close(got, full[owner], **TOL)


@pytest.mark.parametrize("case", DRAFTERS, ids=IDS)
@torch.no_grad()
def test_export_then_load_then_bind_is_bit_exact(case: DrafterCase, tmp_path: Path) -> None:
    """The drafter's export holds none of its target: loaded, it needs its target bound; bound to the
    reloaded target it gives the same outputs, and the speculative sampler that loads it from its folder
    (recording the target's sha256) draws the same samples."""
    g, d = case.build()
    target_dir = save_pretrained(g, tmp_path / "target", config=case.target.config(16))
    sha = read_meta(target_dir)["sha256"]
    save_pretrained(d, tmp_path / "drafter", config=drafter_config(g), meta={"kind": "drafter",
                                                                             "target": {"sha256": sha}})
    target, loaded = load_pretrained(target_dir), load_drafter(tmp_path / "drafter")
    case.target.bind(target, 16)
    tokens, feats = target_pairs(g, case, 2)
    assert needs(loaded) == ("target",) and loaded.target_sha256 == sha
    with pytest.raises(RuntimeError, match="no target attached"):
        loaded.outputs(tokens, feats)
    bind(loaded, target=target)
    assert torch.equal(loaded.outputs(tokens, feats), d.outputs(tokens, feats))
    kw = {"draft_len": 3, "cfg_scale": 2.0, "temperature": 0.9}
    cond, seeds = case.cond(3), torch.arange(3)
    from_folder = SpeculativeSampler(drafter=tmp_path / "drafter", **kw).sample(target, cond, seeds=seeds)
    assert torch.equal(from_folder.tokens, SpeculativeSampler(drafter=d, **kw).sample(g, cond, seeds=seeds).tokens)


@pytest.mark.parametrize("draft", ["sample", "greedy"])
@pytest.mark.parametrize("case", DRAFTERS, ids=IDS)
def test_speculative_samples_with_the_drafter_do_not_depend_on_batch_composition(case: DrafterCase,
                                                                                 draft: str) -> None:
    g, d = case.build()
    sampler = SpeculativeSampler(drafter=d, draft_len=3, draft=draft, cfg_scale=2.0, temperature=0.9)
    assert_batch_independent(sampler, g, case.cond(5))
