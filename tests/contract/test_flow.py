"""Continuous outputs through the protocol (Protocol 2): a velocity generator (the Gaussian flow toy, whose
guided distribution is exact) with the flow sampler. Token buffers and results are float latents from the
layout; ``velocity`` reads the state and never writes it; rollback of committed entities equals a fresh
state; samples do not depend on batch composition; the sampled distribution, entity by entity given the
entities before it, is the exact guided one; logits samplers and the flow sampler refuse each other's
generators, naming both."""

from __future__ import annotations

import pytest
import torch

from argen.core import Condition, FlowGenerator, Generator, IncompatibleError
from argen.samplers import AncestralSampler
from argen.samplers.flow import FlowSampler
from argen.samplers.jacobi import JacobiSampler
from tests.contract.cases import make
from tests.contract.flow_toy import GaussianFlowToy

CFG = 1.5


def toy() -> GaussianFlowToy:
    return GaussianFlowToy().eval()


def test_the_toy_speaks_the_flow_protocol_and_buffers_follow_the_layout() -> None:
    g = toy()
    assert isinstance(g, Generator) and isinstance(g, FlowGenerator)
    assert not isinstance(make("raster_grid"), FlowGenerator)
    buf = g.layout.empty(4)
    assert buf.shape == (4, 3, 2) and buf.dtype == torch.float32
    raster = make("raster_grid")
    assert raster.layout.empty(2).dtype == torch.int64 and raster.layout.empty(2).shape == (2, raster.layout.length)
    out = FlowSampler(steps=4).sample(g, Condition(labels=torch.arange(3)), seeds=torch.arange(3))
    assert out.tokens.shape == (3, 3, 2) and out.tokens.dtype == torch.float32
    assert out.stats.forward_passes == 3 * (1 + 4)


def test_loss_is_finite_and_reaches_every_parameter() -> None:
    g = GaussianFlowToy().train()
    out = g.loss(torch.randn(8, 3, 2), Condition(labels=torch.arange(8) % 3))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


@torch.no_grad()
def test_velocity_reads_the_state_and_never_writes_it() -> None:
    g, cond = toy(), Condition(labels=torch.tensor([0, 2]))
    state = g.start(cond)
    g.step(state, torch.randn(2, 2, 2), torch.tensor([0, 1]), torch.tensor([2]))
    before = (state.fed.clone(), state.lengths.clone(), state.extras["entities"].clone())
    x, t = torch.randn(2, 1, 2), torch.full((2, 1), 0.3)
    first = g.velocity(state, x, t, torch.tensor([2]))
    for _ in range(3):
        assert torch.equal(g.velocity(state, x, t, torch.tensor([2])), first)
    assert torch.equal(state.fed, before[0]) and torch.equal(state.lengths, before[1])
    assert torch.equal(state.extras["entities"], before[2])


@torch.no_grad()
def test_rollback_of_committed_entities_equals_a_fresh_state() -> None:
    g, cond = toy(), Condition(labels=torch.tensor([1, 0]))
    truth, wrong = torch.randn(2, 3, 2), torch.randn(2, 3, 2)
    x, t, q = torch.randn(2, 1, 2), torch.full((2, 1), 0.6), torch.tensor([2])
    fresh = g.start(cond)
    g.step(fresh, truth[:, :2], torch.tensor([0, 1]), q)
    rolled = g.start(cond)
    g.step(rolled, truth[:, :1], torch.tensor([0]), torch.tensor([1]))
    g.step(rolled, wrong[:, 1:], torch.tensor([1, 2]), q)
    rolled.truncate(1)
    g.step(rolled, truth[:, 1:2], torch.tensor([1]), q)
    assert torch.equal(g.velocity(rolled, x, t, q), g.velocity(fresh, x, t, q))


def test_samples_do_not_depend_on_batch_composition() -> None:
    g, sampler = toy(), FlowSampler(steps=6, cfg_scale=2.0)
    cond, seeds = Condition(labels=torch.tensor([0, 1, 2, 1, 0])), torch.arange(70, 75)
    together = sampler.sample(g, cond, seeds=seeds, batch_size=5).tokens
    alone = torch.cat([sampler.sample(g, cond.index(torch.tensor([i])), seeds=seeds[i:i + 1]).tokens
                       for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    order = torch.tensor([4, 1, 3])
    torch.testing.assert_close(sampler.sample(g, cond.index(order), seeds=seeds[order], batch_size=2).tokens,
                               alone[order], atol=1e-6, rtol=0)


@torch.no_grad()
def test_each_entity_follows_the_exact_guided_distribution_given_the_ones_before() -> None:
    """4000 samples of label 1 at CFG 1.5: the residual of every entity against its exact guided mean
    (computed from the entities actually sampled before it) has mean 0 and the toy's sigma per channel."""
    g, n = toy(), 4000
    x = FlowSampler(steps=64, cfg_scale=CFG).sample(g, Condition(labels=torch.ones(n, dtype=torch.long)),
                                                   seeds=torch.arange(n)).tokens
    cond, null = torch.ones(n, dtype=torch.long), torch.full((n,), g.num_classes)
    sigma = g.log_sigma.exp()
    for i in range(g.layout.length):
        mu_u, mu_c = g.mu(null, x, i), g.mu(cond, x, i)
        residual = (x[:, i] - (mu_u + CFG * (mu_c - mu_u))) / sigma
        se = 1 / n ** 0.5
        assert residual.mean(0).abs().max() < 4.5 * se, (i, residual.mean(0))
        assert (residual.std(0) - 1).abs().max() < 0.05, (i, residual.std(0))


def test_flow_and_logits_samplers_refuse_each_others_generators_naming_both() -> None:
    cond, seeds = Condition(labels=torch.arange(2)), torch.arange(2)
    with pytest.raises(IncompatibleError, match=r"FlowSampler needs output=velocity.*RasterGenerator"):
        FlowSampler().sample(make("raster_grid"), cond, seeds=seeds)
    with pytest.raises(IncompatibleError, match=r"AncestralSampler needs output=logits.*GaussianFlowToy"):
        AncestralSampler().sample(toy(), cond, seeds=seeds)
    with pytest.raises(IncompatibleError, match=r"JacobiSampler needs output=logits, chain, ragged.*GaussianFlowToy"):
        JacobiSampler(window=3).sample(toy(), cond, seeds=seeds)


def test_flow_sampler_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        FlowSampler(steps=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        FlowSampler(temperature=0)


def test_code_caches_store_the_layouts_tokens(tmp_path) -> None:  # noqa: ANN001
    """A continuous layout's cache keeps float32 latents (N, L, C) and reads them back as floats; a discrete
    one keeps int32 codes read as int64; tokens that contradict the manifest's layout are refused."""
    from argen.data.codes import CodeCacheMismatchError, CodeDataset, publish_cache, write_shard

    def cache(name: str, tokens: torch.Tensor, layout: dict) -> str:
        tmp = tmp_path / f"{name}.tmp"
        (tmp / "train").mkdir(parents=True)
        n = len(tokens)
        write_shard(tmp / "train", "shard_00000", {"tokens": [tokens], "label": [torch.zeros(n, dtype=torch.long)],
                                                   "index": [torch.arange(n)], "caption": [""] * n,
                                                   "metadata": [""] * n})
        publish_cache(tmp, tmp_path / name, tokenizer={"sha256": "x"}, layout=layout, preprocessing={},
                      splits={"train": {"shards": ["shard_00000"], "count": n}})
        return str(tmp_path / name)

    latents = torch.randn(4, 3, 2, dtype=torch.float64)
    got = CodeDataset(root=cache("flow", latents, toy().layout.to_dict())).tokens
    assert got.dtype == torch.float32 and torch.equal(got, latents.float())
    grid = make("raster_grid").layout
    codes = torch.randint(0, 16, (4, grid.length))
    got = CodeDataset(root=cache("codes", codes, grid.to_dict())).tokens
    assert got.dtype == torch.int64 and torch.equal(got, codes)
    with pytest.raises(CodeCacheMismatchError, match="holds torch.int32 tokens"):
        CodeDataset(root=cache("wrong", codes, toy().layout.to_dict()))
