"""num_tokens: a 1D sequence generator stops after k tokens and FlexTok decodes the prefix, end to end
through the library pipeline; grid generators and out-of-range k are refused."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from argen.generators.prefix import PrefixGenerator
from argen.pipeline import Pipeline
from tests.contract.cases import raster
from tokenizers_vq.flextok import FlexTokTokenizer


def _models(length: int = 8):
    torch.manual_seed(0)
    tok = FlexTokTokenizer(image_size=16, patch_size=4, dim=32, head_dim=16, encoder_depth=1, decoder_depth=1,
                           num_registers=length, levels=[5, 3], decode_steps=2).eval()
    gen = instantiate(raster(tok.layout.vocab_size, grid=None, length=length), _convert_="all").eval()
    with torch.no_grad():
        gen.output.weight.normal_(0, 0.5)
    return gen, tok


@pytest.mark.parametrize("k", [1, 3, 8])
def test_pipeline_stops_after_k_tokens_and_decodes_the_prefix(k):
    gen, tok = _models()
    pipe = Pipeline(gen, tok, num_tokens=k)
    tokens = pipe.sample_tokens([0, 1], n=2, seed=3)
    assert tokens.tokens.shape == (4, k)
    assert tokens.stats.forward_passes == k  # one pass per token, not per sequence position
    full = Pipeline(gen, tok).sample_tokens([0, 1], n=2, seed=3).tokens
    assert torch.equal(tokens.tokens, full[:, :k])  # the same draws, stopped early
    samples = pipe([0, 1], n=2, seed=3)
    assert samples.images.shape == (4, 16, 16, 3)


def test_prefix_view_refuses_what_it_cannot_serve():
    gen, tok = _models()
    with pytest.raises(ValueError, match=r"num_tokens must be in 1\.\.8"):
        PrefixGenerator(gen, 9)
    with pytest.raises(ValueError, match=r"num_tokens must be in 1\.\.8"):
        Pipeline(gen, tok, num_tokens=0)
    grid = instantiate(raster(16, grid=2, length=None), _convert_="all")
    with pytest.raises(ValueError, match="1D sequence"):
        PrefixGenerator(grid, 2)
    view = PrefixGenerator(gen, 4)
    with pytest.raises(ValueError, match="outside 1..4"):
        view.plan(5)
    with pytest.raises(ValueError, match=r"\(B, 4\) tokens"):
        view.logits(torch.zeros(1, 5, dtype=torch.long), None)
