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


def xar(entity: str):  # noqa: ANN201
    """A tiny xAR (4x4 latent grid, 2 channels, 3 classes) with the given entity."""
    from functools import partial

    from argen.generators.xar import XARGenerator
    from argen.nn.conditioning import ClassEmbedder

    torch.manual_seed(0)
    return XARGenerator(grid_size=4, channels=2, entity=entity, condition=partial(ClassEmbedder, num_classes=3),
                        dim=32, n_head=2, encoder_depth=1, decoder_depth=1).eval()


# Every flow generator of the suite: the exact toy and xAR with each grid entity.
FLOW = {"toy": toy, **{f"xar_{e}": (lambda e=e: xar(e)) for e in ("cell", "token", "subsample", "image", "scale")}}


@pytest.fixture(params=sorted(FLOW))
def flow_gen(request):  # noqa: ANN001, ANN201
    return FLOW[request.param]()


def _commit_first(g, cond, tokens):  # noqa: ANN001, ANN202
    """A state with the first plan group committed (or none when the plan has one group), and the next query."""
    plan, state = g.plan(), g.start(cond)
    if len(plan) == 1:
        g.step(state, tokens[:, :0], torch.zeros(0, dtype=torch.long), plan[0])
        return state, plan[0]
    g.step(state, tokens[:, plan[0]], plan[0], plan[1])
    return state, plan[1]


def test_flow_generators_speak_the_protocol_and_buffers_follow_the_layout(flow_gen) -> None:  # noqa: ANN001
    g = flow_gen
    assert isinstance(g, Generator) and isinstance(g, FlowGenerator)
    assert not isinstance(make("raster_grid"), FlowGenerator)
    length, channels = g.layout.length, g.layout.channels
    buf = g.layout.empty(4)
    assert buf.shape == (4, length, channels) and buf.dtype == torch.float32
    raster = make("raster_grid")
    assert raster.layout.empty(2).dtype == torch.int64 and raster.layout.empty(2).shape == (2, raster.layout.length)
    out = FlowSampler(steps=4).sample(g, Condition(labels=torch.arange(3)), seeds=torch.arange(3))
    assert out.tokens.shape == (3, length, channels) and out.tokens.dtype == torch.float32
    assert out.stats.forward_passes == len(g.plan()) * (1 + 4)
    assert torch.equal(torch.sort(torch.cat(g.plan())).values, torch.arange(length))  # the plan covers the layout


def test_loss_is_finite_and_reaches_every_parameter(flow_gen) -> None:  # noqa: ANN001
    g = flow_gen.train()
    out = g.loss(torch.randn(8, g.layout.length, g.layout.channels), Condition(labels=torch.arange(8) % 3))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


@torch.no_grad()
def test_velocity_reads_the_state_and_never_writes_it(flow_gen) -> None:  # noqa: ANN001
    g, cond = flow_gen, Condition(labels=torch.tensor([0, 2]))
    tokens = torch.randn(2, g.layout.length, g.layout.channels)
    state, query = _commit_first(g, cond, tokens)
    before = (state.fed.clone(), state.lengths.clone(), {k: v.clone() for k, v in state.extras.items()})
    x, t = torch.randn(2, len(query), g.layout.channels), torch.full((2, len(query)), 0.3)
    first = g.velocity(state, x, t, query)
    other = g.velocity(state, torch.randn_like(x), torch.full_like(t, 0.8), query)  # another point between
    assert not torch.equal(other, first)
    for _ in range(2):
        assert torch.equal(g.velocity(state, x, t, query), first)
    assert torch.equal(state.fed, before[0]) and torch.equal(state.lengths, before[1])
    assert all(torch.equal(state.extras[k], v) for k, v in before[2].items())


@torch.no_grad()
def test_rollback_of_committed_entities_equals_a_fresh_state(flow_gen) -> None:  # noqa: ANN001
    g, cond = flow_gen, Condition(labels=torch.tensor([1, 0]))
    plan = g.plan()
    if len(plan) < 3:
        pytest.skip("rollback needs three entities")
    shape = (2, g.layout.length, g.layout.channels)
    truth, wrong = torch.randn(shape), torch.randn(shape)
    q = plan[2]
    x, t = torch.randn(2, len(q), g.layout.channels), torch.full((2, len(q)), 0.6)
    fresh = g.start(cond)
    g.step(fresh, truth[:, torch.cat(plan[:2])], torch.cat(plan[:2]), q)
    rolled = g.start(cond)
    g.step(rolled, truth[:, plan[0]], plan[0], plan[1])
    g.step(rolled, wrong[:, torch.cat(plan[1:3])], torch.cat(plan[1:3]), plan[3] if len(plan) > 3 else q)
    rolled.truncate(len(plan[0]))
    g.step(rolled, truth[:, plan[1]], plan[1], q)
    torch.testing.assert_close(g.velocity(rolled, x, t, q), g.velocity(fresh, x, t, q), atol=1e-6, rtol=0)


def test_samples_do_not_depend_on_batch_composition(flow_gen) -> None:  # noqa: ANN001
    """In float64, so that what is left is the sampler's randomness (float32 matmuls round differently at
    another batch size, ~1e-6)."""
    g = flow_gen if isinstance(flow_gen, GaussianFlowToy) else flow_gen.double()
    sampler = FlowSampler(steps=6, cfg_scale=2.0)
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
