"""Token-Shuffle (argen.generators.token_shuffle): window 1 is the raster generator exactly; the shuffle
and unshuffle are the paper's operations, written out here independently; windows are causal over windows
and independent inside one; SJD along its chain samples its distribution; bad input fails early."""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from argen.core import Condition, chain_order
from argen.generators.raster import RasterGenerator
from argen.generators.token_shuffle import TokenShuffleGenerator, window_order
from argen.nn.conditioning import ClassEmbedder
from argen.samplers import AncestralSampler
from argen.samplers.jacobi import JacobiSampler
from tests.unit.test_jacobi import pooled_chisquare, sequence_counts

SIZES = dict(dim=32, n_layer=2, n_head=2, multiple_of=16, condition=partial(ClassEmbedder, num_classes=3))


def build(window: int, grid: int | list[int] = 4, vocab: int = 16, seed: int = 0) -> TokenShuffleGenerator:
    torch.manual_seed(seed)
    g = TokenShuffleGenerator(vocab_size=vocab, grid_size=grid, window=window, **SIZES)
    with torch.no_grad():
        g.output.weight.normal_(0, 0.5)
    return g.eval()


@torch.no_grad()
def test_window_one_is_the_raster_generator_with_its_weights() -> None:
    torch.manual_seed(0)
    raster = RasterGenerator(vocab_size=16, grid_size=4, **SIZES).eval()
    raster.output.weight.normal_(0, 0.5)
    ts = TokenShuffleGenerator(vocab_size=16, grid_size=4, window=1, **SIZES).eval()
    assert ts.init_from_raster(raster.state_dict()) == []
    tokens, cond = torch.randint(0, 16, (3, 16)), Condition(labels=torch.tensor([0, 1, 2]))
    torch.testing.assert_close(ts.logits(tokens, cond), raster.logits(tokens, cond), atol=1e-6, rtol=1e-6)
    sampler = AncestralSampler(cfg_scale=2.0)
    seeds = torch.arange(4)
    a = sampler.sample(ts, Condition(labels=torch.arange(4) % 3), seeds=seeds).tokens
    b = sampler.sample(raster, Condition(labels=torch.arange(4) % 3), seeds=seeds).tokens
    assert torch.equal(a, b)


def test_a_larger_window_keeps_the_raster_trunk_and_names_what_it_adds() -> None:
    raster = RasterGenerator(vocab_size=16, grid_size=4, **SIZES)
    ts = TokenShuffleGenerator(vocab_size=16, grid_size=4, window=2, **SIZES)
    left = ts.init_from_raster(raster.state_dict())
    assert left and all(k.startswith(("shuffle.", "unshuffle.")) for k in left)
    assert torch.equal(ts.layers[1].attention.wqkv.weight, raster.layers[1].attention.wqkv.weight)


def test_windows_are_raster_ordered_and_row_major_inside() -> None:
    assert window_order(4, 4, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    assert window_order(2, 4, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    g = build(2)
    assert [p.tolist() for p in g.plan()][:2] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert torch.equal(chain_order(g.plan()), window_order(4, 4, 2))


@torch.no_grad()
def test_logits_follow_the_papers_shuffle_and_unshuffle() -> None:
    """An independent functional forward of the shuffle (embed, compress d -> d/s^2, concatenate the s x s
    window along channels, residual MLPs), the trunk over [condition, windows 0 .. W-2] and the unshuffle
    (residual MLPs, split into s^2 chunks, expand to d, the shared head), with loops over the grid."""
    s, n, vocab = 2, 4, 16
    g = build(s)
    tokens, cond = torch.randint(0, vocab, (2, n * n)), Condition(labels=torch.tensor([1, 2]))

    def mlp(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(x @ block.fc1.weight.T + block.fc1.bias)
        return x + h @ block.fc2.weight.T + block.fc2.bias

    grid = tokens.view(2, n, n)
    windows = []
    for wy, wx in itertools.product(range(n // s), range(n // s)):
        parts = []
        for dy, dx in itertools.product(range(s), range(s)):
            e = g.tok_embeddings.weight[grid[:, wy * s + dy, wx * s + dx]]  # (B, d)
            parts.append(e @ g.shuffle.compress.weight.T + g.shuffle.compress.bias)  # (B, d / s^2)
        x = torch.cat(parts, dim=-1)
        for block in g.shuffle.fusion:
            x = mlp(block, x)
        windows.append(x)
    fused = torch.stack(windows, dim=1)  # (B, W, d)
    prefix, _ = g.embed_condition(cond)
    h = torch.cat([prefix, fused[:, :-1]], dim=1)
    rope = g.rope[: h.shape[1]]
    for layer in g.layers:
        h = layer(h, rope)
    out = g.norm(h)[:, g.prefix_len - 1:]  # (B, W, d): entry w predicts window w
    for block in g.unshuffle.blocks:
        out = mlp(block, out)
    expected = torch.zeros(2, n * n, vocab)
    for w, (wy, wx) in enumerate(itertools.product(range(n // s), range(n // s))):
        chunks = out[:, w].view(2, s * s, -1)
        for k, (dy, dx) in enumerate(itertools.product(range(s), range(s))):
            feat = chunks[:, k] @ g.unshuffle.expand.weight.T + g.unshuffle.expand.bias
            expected[:, (wy * s + dy) * n + wx * s + dx] = feat @ g.output.weight.T
    torch.testing.assert_close(g.logits(tokens, cond), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_window_sees_the_windows_before_it_and_nothing_of_its_own() -> None:
    g = build(2)
    tokens, cond = torch.randint(0, 16, (1, 16)), Condition(labels=torch.tensor([0]))
    base = g.logits(tokens, cond)
    order = window_order(4, 4, 2)
    for w in range(4):
        changed = tokens.clone()
        changed[0, order[4 * w + 3]] = (changed[0, order[4 * w + 3]] + 1) % 16  # the window's last token
        diff = (g.logits(changed, cond) - base).abs().amax(-1)[0][order].view(4, 4).amax(-1)
        assert torch.all(diff[: w + 1] == 0), f"window {w}'s token changed the logits of windows <= {w}: {diff}"
        assert torch.all(diff[w + 1:] > 0)


def test_sjd_with_row_drafts_samples_the_generators_distribution() -> None:
    """Jacobi drafts copy the token one grid row above: along the window-by-window chain that is a layout
    lookup (Flight.layout / inverse_of). 2 windows of a 2x4 grid, 3^8 sequences enumerated."""
    g = build(2, grid=[2, 4], vocab=3, seed=1)
    seqs = torch.tensor(list(itertools.product(range(3), repeat=8)))
    with torch.no_grad():
        logp = g.logits(seqs, Condition(labels=torch.ones(len(seqs), dtype=torch.long))).double().log_softmax(-1)
    expected = logp.gather(-1, seqs[..., None])[..., 0].sum(-1).exp()
    n = 20_000
    out = JacobiSampler(window=4, init="row").sample(g, Condition(labels=torch.ones(n, dtype=torch.long)),
                                                     seeds=torch.arange(n), batch_size=4096)
    assert pooled_chisquare(sequence_counts(out.tokens, 3), expected / expected.sum() * n) > 1e-3
    assert out.stats.accepted_per_pass > 1.0


def test_bad_input_fails_early_with_the_fix() -> None:
    with pytest.raises(ValueError, match="does not split into 3x3 windows"):
        TokenShuffleGenerator(vocab_size=16, grid_size=4, window=3, **SIZES)
    with pytest.raises(ValueError, match="square divides the width"):
        TokenShuffleGenerator(vocab_size=16, grid_size=12, window=3, **SIZES)  # 32 channels into 9 chunks
    g = build(2)
    state = g.start(Condition(labels=torch.tensor([0])))
    g.step(state, torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.tensor([0, 1, 4, 5]))
    with pytest.raises(ValueError, match="need the windows before theirs"):
        g.step(state, torch.tensor([[3, 4]]), torch.tensor([0, 1]), torch.tensor([2]))  # window 1 before window 0
    assert int(state.fed[0]) == 0  # the refused step changed nothing
    with pytest.raises(ValueError, match="consecutive positions"):
        g.step(state, torch.tensor([[3, 4]]), torch.tensor([0, 4]), torch.tensor([1]))  # 4 is not next in the chain
