"""Acceptance rules: exact speculative acceptance is lossless, LANTERN bounds the TVD by delta and
reduces to exact acceptance at delta = 0, the neighbour table is tied to its codebook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from argen.samplers.acceptance import (
    accept_exact,
    accept_lantern,
    accepted_length,
    lantern_relax,
    lantern_residual,
    lantern_target,
    load_neighbours,
    neighbour_table,
    neighbour_transport,
    one_hot_probs,
    residual,
)

P = torch.tensor([0.05, 0.40, 0.25, 0.20, 0.10])
Q = torch.tensor([0.30, 0.10, 0.10, 0.20, 0.30])


def speculative_draws(p: torch.Tensor, q: torch.Tensor, n: int, rule: str, seed: int = 0) -> torch.Tensor:
    """n one-token speculative steps: draft x ~ q, accept by ``rule``, else resample the residual."""
    g = torch.Generator().manual_seed(seed)
    x = torch.multinomial(q, n, replacement=True, generator=g)
    u = torch.rand(n, generator=g)
    if rule == "exact":
        ok = accept_exact(p[x], q[x], u)
    else:  # a plausible-looking wrong rule: accept with p(x), ignoring q
        ok = u < p[x]
    fallback = torch.multinomial(residual(p, q), n, replacement=True, generator=g)
    return torch.where(ok, x, fallback)


def test_exact_acceptance_is_lossless_by_enumeration() -> None:
    accept = torch.minimum(torch.ones_like(P), P / Q)  # P(accept | x)
    rejected = 1 - (Q * accept).sum()
    out = Q * accept + rejected * residual(P, Q)
    assert torch.allclose(out, P, atol=1e-6)


@pytest.mark.parametrize(("rule", "lossless"), [("exact", True), ("wrong", False)])
def test_chi_square_accepts_the_exact_rule_and_rejects_a_wrong_one(rule: str, lossless: bool) -> None:
    n = 40_000
    counts = torch.bincount(speculative_draws(P, Q, n, rule), minlength=5).double()
    pvalue = chisquare(counts.numpy(), (P.double() * n).numpy()).pvalue
    assert (pvalue > 1e-3) if lossless else (pvalue < 1e-6)


def test_accepted_length_stops_at_the_first_rejection() -> None:
    ok = torch.tensor([[True, True, False, True], [False, True, True, True], [True, True, True, True]])
    assert accepted_length(ok).tolist() == [2, 0, 4]


def test_one_hot_drafts_accept_with_p_and_resample_p_without_the_draft() -> None:
    draft = torch.tensor(2)
    q = one_hot_probs(draft, 5)
    assert bool(accept_exact(P[2:3], q[2:3], torch.tensor([0.24]))) and not bool(
        accept_exact(P[2:3], q[2:3], torch.tensor([0.26])))
    expected = P.clone()
    expected[2] = 0
    assert torch.allclose(residual(P, q), expected / expected.sum())


def random_case(b: int = 4, w: int = 3, v: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(b, w, v, generator=g) * 2, dim=-1)
    draft = torch.randint(0, v, (b, w), generator=g)
    codebook = torch.randn(v, 4, generator=g)
    return p, draft, neighbour_table(codebook, k=5)


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.3])
def test_lantern_moves_at_most_delta_of_mass(delta: float) -> None:
    p, draft, nb = random_case()
    relaxed = lantern_relax(p, draft, nb, delta)
    # the relaxed target p~: A's mass moved onto x; its TVD to p is p(A), measured explicitly
    p_tilde = lantern_target(p, draft, nb, relaxed)
    assert torch.allclose(p_tilde.sum(-1), torch.ones_like(relaxed.mass), atol=1e-6)
    tvd = 0.5 * (p_tilde - p).abs().sum(-1)
    assert torch.all(tvd <= delta + 1e-6) and torch.allclose(tvd, relaxed.mass, atol=1e-6)
    assert torch.allclose(relaxed.probability, p_tilde.gather(-1, draft[..., None])[..., 0], atol=1e-6)
    assert bool((relaxed.size > 0).any())  # the bound is exercised, not vacuous


def test_lantern_relative_bound() -> None:
    p, draft, nb = random_case(seed=1)
    relaxed = lantern_relax(p, draft, nb, delta=1.5)  # p(A) <= 0.5 p(x)
    p_x = p.gather(-1, draft[..., None])[..., 0]
    assert torch.all(relaxed.mass <= 0.5 * p_x + 1e-7)


def test_lantern_with_delta_zero_is_exact_acceptance() -> None:
    p, draft, nb = random_case(seed=2)
    relaxed = lantern_relax(p, draft, nb, delta=0.0)
    u = torch.rand(draft.shape, generator=torch.Generator().manual_seed(3))
    q = one_hot_probs(draft, p.shape[-1])
    exact = accept_exact(p.gather(-1, draft[..., None])[..., 0], torch.ones_like(u), u)
    assert torch.equal(accept_lantern(relaxed, u), exact)
    assert torch.allclose(lantern_residual(p, draft, nb, relaxed), residual(p, q), atol=1e-6)
    assert torch.allclose(lantern_target(p, draft, nb, relaxed), p, atol=1e-7)


def test_relaxed_target_residual_is_lanterns_for_one_hot_drafts() -> None:
    p, draft, nb = random_case(seed=4)
    relaxed = lantern_relax(p, draft, nb, delta=0.2)
    target = lantern_target(p, draft, nb, relaxed)
    q = one_hot_probs(draft, p.shape[-1])
    # accept with p~(x) / 1, and the residual of p~ against a one-hot draft removes x and its set A
    assert torch.allclose(target.gather(-1, draft[..., None])[..., 0], relaxed.probability, atol=1e-6)
    r = residual(target, q)
    near = nb[draft]
    in_set = torch.arange(5)[None, None, :] < relaxed.size[..., None]
    assert torch.all(r.gather(-1, near)[in_set] == 0) and torch.all(r.gather(-1, draft[..., None]) == 0)


def relaxed_step_output(p: torch.Tensor, q: torch.Tensor, nb: torch.Tensor, delta: float,
                        rule: str) -> torch.Tensor:
    """The exact distribution of one verified position, draft x ~ q. ``candidate``: LANTERN's p~_x with
    x as a candidate (accept with p~_x(x), else p~_x without x); ``sampled``: LANTERN's p~_x with the
    sampled q (accept with min(1, p~_x(x) / q(x)), else the residual of p~_x against q);
    ``transport``: the exact rule against the draft-independent p^ of :func:`neighbour_transport`."""
    v = p.shape[0]
    out = torch.zeros(v, dtype=torch.float64)
    p_hat = neighbour_transport(p[None, None], q[None, None], nb, delta)[0][0, 0].double()
    for x in range(v):
        draft = torch.tensor([[x]])
        relaxed = lantern_relax(p[None, None], draft, nb, delta)
        target = lantern_target(p[None, None], draft, nb, relaxed)[0, 0].double()
        if rule == "transport":
            target = p_hat
        proposal = one_hot_probs(torch.tensor(x), v).double() if rule == "candidate" else q.double()
        accept = min(1.0, float(target[x] / proposal[x]))
        out += q[x] * (accept * one_hot_probs(torch.tensor(x), v).double()
                       + (1 - accept) * residual(target, proposal))
    return out


def test_candidate_verification_keeps_the_step_within_delta_and_sampled_q_does_not() -> None:
    """Why LANTERN's rule treats drafts as candidates (q = 1): with the sampled q in min(1, p~/q), every
    token the drafter favours borrows its neighbours' mass at once, and the step drifts far past delta."""
    codebook = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0]])
    nb = neighbour_table(codebook, 3)
    p = torch.tensor([0.05, 0.05, 0.05, 0.05, 0.40, 0.40])
    q = torch.tensor([0.24, 0.24, 0.24, 0.24, 0.02, 0.02])  # the drafter favours the first cluster
    delta = 0.1
    out = {rule: relaxed_step_output(p, q, nb, delta, rule) for rule in ("candidate", "sampled", "transport")}
    tvd = lambda a: 0.5 * float((a - p.double()).abs().sum())  # noqa: E731
    assert all(abs(float(o.sum()) - 1) < 1e-6 for o in out.values())
    assert tvd(out["candidate"]) <= delta + 1e-6 and tvd(out["transport"]) <= delta + 1e-6
    assert tvd(out["sampled"]) > 2 * delta
    p_hat, moved = neighbour_transport(p[None, None], q[None, None], nb, delta)
    assert torch.allclose(out["transport"], p_hat[0, 0].double(), atol=1e-6)  # the output is p^ exactly
    assert float(moved) == 0.0  # the favoured codes' neighbours have no surplus: nothing may move
    for rule in ("candidate", "transport"):
        assert torch.allclose(relaxed_step_output(p, q, nb, 0.0, rule), p.double(), atol=1e-6)
    # where the neighbours have surplus, the transport accepts exactly delta more than exact acceptance
    p = torch.tensor([0.20, 0.05, 0.05, 0.20, 0.25, 0.25])
    q = torch.tensor([0.05, 0.30, 0.30, 0.05, 0.15, 0.15])
    p_hat, moved = neighbour_transport(p[None, None], q[None, None], nb, delta)
    assert float(moved) == pytest.approx(delta, abs=1e-6)
    exact = float(torch.minimum(p, q).sum())
    assert float(torch.minimum(p_hat[0, 0], q).sum()) == pytest.approx(exact + delta, abs=1e-6)
    assert tvd(relaxed_step_output(p, q, nb, delta, "transport")) <= delta + 1e-6


@pytest.mark.parametrize("delta", [0.0, 0.02, 0.1, 0.5, 3.0])
def test_neighbour_transport_moves_between_neighbours_within_the_bound(delta: float) -> None:
    g = torch.Generator().manual_seed(7)
    v, k = 12, 3
    nb = neighbour_table(torch.randn(v, 2, generator=g), k)
    p = torch.softmax(torch.randn(4, 5, v, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(4, 5, v, generator=g) * 2, -1)
    p_hat, moved = neighbour_transport(p, q, nb, delta)
    assert torch.allclose(p_hat.sum(-1), torch.ones(4, 5), atol=1e-5) and bool((p_hat >= 0).all())
    tvd = 0.5 * (p_hat - p).abs().sum(-1)
    assert torch.allclose(tvd, moved, atol=1e-5)
    if delta <= 1:
        assert bool((moved <= delta + 1e-6).all())
    else:  # relative bound: each code gains at most (delta - 1) p(x)
        assert bool((p_hat - p <= (delta - 1) * p + 1e-6).all())
    gained, lost = (p_hat - p) > 1e-6, (p - p_hat) > 1e-6
    assert bool((q[gained] > p[gained]).all()) and bool((p[lost] > q[lost]).all())  # deficit <- surplus only
    # a code only gains from its k nearest codes: with no surplus among them it gains nothing
    no_surplus = ((p - q).clamp_min(0)[..., nb].sum(-1) == 0)
    assert bool((p_hat[no_surplus] <= p[no_surplus] + 1e-7).all())
    overlap = torch.minimum(p_hat, q).sum(-1) - torch.minimum(p, q).sum(-1)
    assert torch.allclose(overlap, moved, atol=1e-5)


def test_neighbour_table_is_nearest_first_and_cached_per_codebook(tmp_path: Path) -> None:
    codebook = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert neighbour_table(codebook, 2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    table = load_neighbours(codebook, 2, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and torch.equal(load_neighbours(codebook, 1, tmp_path), table[:, :1])
    other = codebook + 0.5
    assert load_neighbours(other, 2, tmp_path).shape == (4, 2) and len(list(tmp_path.iterdir())) == 2
    wider = load_neighbours(codebook, 3, tmp_path)  # more neighbours than cached: rebuilt, and kept
    assert torch.equal(wider, neighbour_table(codebook, 3)) and len(list(tmp_path.iterdir())) == 2
    assert torch.equal(load_neighbours(codebook, 2, tmp_path), table)
    # a table file that belongs to another codebook is refused
    from safetensors.torch import save_file

    save_file({"neighbours": table.int()}, str(files[0]), metadata={"codebook_sha256": "0" * 64, "k": "2"})
    with pytest.raises(ValueError, match="built for another tokenizer"):
        load_neighbours(codebook, 2, tmp_path)
    with pytest.raises(ValueError, match="k must be in"):
        neighbour_table(codebook, 4)
