"""xAR (next-X prediction with flow matching): the entity partitions, the linear-path loss and Noisy Context
Learning, the block-causal mask entity by entity, decoding with clean context against the full pass,
overfitting one batch, and deterministic, batch-independent sampling."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from argen.core import Condition
from argen.generators.xar import XARGenerator
from argen.nn.conditioning import ClassEmbedder
from argen.nn.entities import grid_partition, pyramid
from argen.samplers.flow import FlowSampler

# Entity of each position of a 4x4 grid (raster order), written out by hand.
EXPECTED = {
    "token": list(range(16)),
    "cell": [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3],  # 2x2 cells of 2x2
    "subsample": [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3],  # stride 2: (r % 2, c % 2)
    "image": [0] * 16,
    "scale": [0] + [1] * 4 + [2] * 16,  # the pyramid 1x1, 2x2, 4x4 (FlowAR's doubling scales), coarse to fine
}


def tiny(entity: str = "cell", seed: int = 0, **kw) -> XARGenerator:  # noqa: ANN003
    torch.manual_seed(seed)
    args = dict(grid_size=4, channels=2, entity=entity, condition=partial(ClassEmbedder, num_classes=3), dim=32,
                n_head=2, encoder_depth=1, decoder_depth=1)
    return XARGenerator(**{**args, **kw})


@pytest.mark.parametrize("entity", sorted(EXPECTED))
def test_partitions_are_the_entities_written_out(entity: str) -> None:
    p = tiny(entity).partition
    n = len(EXPECTED[entity])
    got = torch.empty(n, dtype=torch.long)
    got[p.order] = p.entity
    assert got.tolist() == EXPECTED[entity]
    for group in p.groups():  # raster order inside every entity
        assert group.tolist() == sorted(group.tolist())
    assert torch.equal(p.order[p.inverse()], torch.arange(n))


def test_scale_entity_pyramid_and_decoding_layout() -> None:
    """FlowAR's scales: plain (area) downsamplings of the finest latent; the pyramid decodes from its finest
    scale, and a latent cache's grid trains the scale entity through its pyramid."""
    g = tiny("scale").eval()
    assert g.layout.kind == "scales" and g.layout.shapes == ((1, 1), (2, 2), (4, 4)) and g.layout.length == 21
    x = torch.randn(3, 16, 2)
    grid = x.transpose(1, 2).reshape(3, 2, 4, 4)
    pyr = pyramid(x, g.layout.shapes)
    torch.testing.assert_close(pyr[:, 0], grid.mean((2, 3)))  # the 1x1 scale: the mean
    torch.testing.assert_close(pyr[:, 1], grid[:, :, :2, :2].mean((2, 3)))  # the 2x2 scale, top-left
    assert torch.equal(pyr[:, 5:], x)
    assert g.layout.decodes_as(g.source_layout) and torch.equal(g.layout.for_decoder(pyr, g.source_layout), x)
    torch.manual_seed(1)
    a = g.loss(x, Condition(labels=torch.tensor([0, 1, 2]))).loss
    torch.manual_seed(1)
    assert torch.equal(a, g.loss(pyr, Condition(labels=torch.tensor([0, 1, 2]))).loss)


def test_official_cells_of_a_16x16_latent() -> None:
    """The official clusterify: 2x2 cells of 8x8, cell 1 the top-right block, row-major inside."""
    p = grid_partition("cell", 16, 16)
    assert p.count == 4 and p.groups()[1][:3].tolist() == [8, 9, 10] and p.groups()[1][8].item() == 24
    assert p.groups()[2][0].item() == 128


def test_bad_entity_settings_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="cell_size 3 must divide the latent grid 4x4"):
        grid_partition("cell", 4, 4, cell_size=3)
    with pytest.raises(ValueError, match="unknown entity 'pixel'"):
        grid_partition("pixel", 4, 4)
    with pytest.raises(ValueError, match="head width divisible by 4"):
        tiny(dim=24, n_head=4)


def test_linear_path_loss_equals_its_formula_on_fixed_tensors() -> None:
    g = tiny().eval()
    x, eps = torch.randn(3, 16, 2), torch.randn(3, 16, 2)  # cell entity
    t = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.7, 0.2, 0.4, 0.6], [0.05, 0.95, 0.5, 0.5]])
    cond = Condition(labels=torch.tensor([0, 1, 2]))
    ent = torch.tensor(EXPECTED["cell"])
    te = t[:, ent][..., None]  # (B, 16, 1): each position's own entity time
    x_t = (1 - te) * x + te * eps
    want = ((g.predict(x_t, t, cond) - (eps - x)) ** 2).mean()
    got = g.flow_loss(x, cond, t, eps).loss
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_noisy_context_learning_noises_every_entity_context_included(monkeypatch) -> None:  # noqa: ANN001
    """What loss() feeds the network: every entity at its own t in (0, 1), drawn per sample, and every position
    at (1 - t) x + t eps, the context entities too (never the clean data)."""
    g = tiny().train()
    seen = {}
    real = g.flow_loss

    def spy(tokens, cond, t, eps):  # noqa: ANN001, ANN202
        seen.update(tokens=tokens, t=t, eps=eps)
        return real(tokens, cond, t, eps)

    calls = {}
    real_predict = g.predict
    monkeypatch.setattr(g, "flow_loss", spy)
    monkeypatch.setattr(g, "predict", lambda x_t, t, cond: calls.update(x_t=x_t, t=t) or real_predict(x_t, t, cond))
    x = torch.randn(64, 16, 2)
    g.loss(x, Condition(labels=torch.arange(64) % 3))
    t = seen["t"]
    assert t.shape == (64, 4) and bool(((t > 0) & (t < 1)).all())
    assert len(torch.unique(t)) == t.numel()  # its own t per entity and per sample
    assert 0.4 < float(t.mean()) < 0.6 and 0.15 < float(t.std()) < 0.25  # logit-normal(0, 1): mean 1/2, sd ~0.21
    te = t[:, torch.tensor(EXPECTED["cell"])][..., None]
    torch.testing.assert_close(calls["x_t"], (1 - te) * x + te * seen["eps"])
    for m in range(4):  # no entity, the first (context of all others) included, reaches the network clean
        pos = torch.tensor(EXPECTED["cell"]) == m
        assert float((calls["x_t"][:, pos] - x[:, pos]).abs().min()) > 0


@pytest.mark.parametrize("entity", sorted(EXPECTED))
@torch.no_grad()
def test_block_causal_mask_position_by_position(entity: str) -> None:
    """Changing the input at one position changes the outputs of its own entity and later ones only: every
    position of earlier entities keeps its velocity exactly."""
    g = tiny(entity).eval()
    ent = torch.tensor(EXPECTED[entity])
    cond, m, n = Condition(labels=torch.tensor([1])), int(ent.max()) + 1, len(ent)
    x, t = torch.randn(1, n, 2), torch.rand(1, m)
    base = g.predict(x, t, cond)
    for p in range(n):
        y = x.clone()
        y[0, p] += 1.0
        diff = (g.predict(y, t, cond) - base).abs().amax(-1)[0]  # (L,)
        earlier, same = ent < ent[p], ent == ent[p]
        assert float(diff[earlier].sum()) == 0.0, (entity, p)
        assert bool((diff[same] > 0).all()), (entity, p)  # bidirectional inside the entity


@pytest.mark.parametrize("entity", sorted(EXPECTED))
@torch.no_grad()
def test_decoding_with_clean_context_equals_the_full_pass(entity: str) -> None:
    """Committing entities (t = 0) and querying the next one over the KV caches = one block-causal pass with
    the earlier entities clean at t = 0 (later entities masked, whatever they hold)."""
    g = tiny(entity).eval()
    n = g.layout.length
    cond, x = Condition(labels=torch.tensor([2, 0])), torch.randn(2, n, 2)
    plan, state = g.plan(), g.start(cond)
    prev = torch.zeros(0, dtype=torch.long)
    for k, group in enumerate(plan):
        g.step(state, x[:, prev], prev, group)
        x_t, tk = torch.randn(2, len(group), 2), torch.tensor([0.3, 0.8])
        full, t = torch.randn(2, n, 2), torch.rand(2, len(plan))
        full[:, torch.cat(plan[:k] + [group])] = torch.cat([x[:, torch.cat(plan[:k])], x_t], 1) if k else x_t
        t[:, :k], t[:, k] = 0.0, tk
        want = g.predict(full, t, cond)[:, group]
        got = g.velocity(state, x_t, tk[:, None].expand(2, len(group)), group)
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
        prev = group


def test_steps_must_be_whole_entities_in_plan_order() -> None:
    g = tiny().eval()
    state = g.start(Condition(labels=torch.tensor([0])))
    with pytest.raises(ValueError, match="whole entities in plan order"):
        g.step(state, torch.randn(1, 2, 2), g.plan()[0][:2], g.plan()[1])
    with pytest.raises(ValueError, match="whole entities in plan order"):
        g.velocity(state, torch.randn(1, 4, 2), torch.zeros(1, 4), g.plan()[1])  # entity 0 not committed yet
    with pytest.raises(TypeError, match="continuous tokens"):
        g.loss(torch.zeros(1, 16, dtype=torch.long), Condition(labels=torch.tensor([0])))


def test_overfitting_one_batch_drives_the_loss_down_tenfold() -> None:
    torch.manual_seed(0)
    g = tiny(dim=64, n_head=4, encoder_depth=2, decoder_depth=2).train()
    g.cond_embed.dropout = 0.0
    x, cond = torch.randn(4, 16, 2), Condition(labels=torch.tensor([0, 1, 2, 0]))
    opt = torch.optim.AdamW(g.parameters(), lr=3e-3)
    losses = []
    for _ in range(600):
        loss = g.loss(x, cond).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert last < first / 10, (first, last)


@torch.no_grad()
def test_sampling_is_deterministic_under_a_seed_and_independent_of_batch_size() -> None:
    g = tiny().eval()
    sampler = FlowSampler(steps=5, cfg_scale=2.0, cfg_schedule="linear")
    cond, seeds = Condition(labels=torch.tensor([0, 1, 2, 1])), torch.tensor([5, 6, 7, 8])
    a = sampler.sample(g, cond, seeds=seeds, batch_size=4).tokens
    assert torch.equal(a, sampler.sample(g, cond, seeds=seeds, batch_size=4).tokens)  # bit for bit
    b = sampler.sample(g, cond, seeds=seeds, batch_size=1).tokens
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # float32 matmuls round per batch size
    assert not torch.allclose(a[1], sampler.sample(g, cond.index(torch.tensor([1])), seeds=torch.tensor([9])).tokens[0])
