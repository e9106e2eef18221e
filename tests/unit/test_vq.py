"""VQ tokenizer contract: round trips, quantiser maths, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenizers_vq import DiscreteTokenizer, TokenLayout
from tokenizers_vq.vq import VectorQuantizer, VQTokenizer
from tokenizers_vq.vq.quantizer import entropy_loss


def tiny(**kw: object) -> VQTokenizer:
    args = dict(image_size=16, codebook_size=32, embed_dim=4, base_channels=8, channel_multipliers=[1, 2],
                z_channels=8, norm_groups=4, attention=True)
    args.update(kw)
    return VQTokenizer(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("encoder", ["conv", "patch"])
def test_protocol_and_layout(encoder: str) -> None:
    model = tiny(encoder=encoder)
    assert isinstance(model, DiscreteTokenizer)
    assert model.layout == TokenLayout(kind="grid", shapes=((8, 8),), vocab_size=32)
    assert model.layout.length == 64 and model.downsample_factor == 2


@pytest.mark.parametrize("encoder", ["conv", "patch"])
def test_encode_decode_matches_training_path(encoder: str) -> None:
    torch.manual_seed(0)
    model = tiny(encoder=encoder).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    tokens = model.encode(x)
    assert tokens.shape == (3, 64) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 32
    rec = model.reconstruct(x)
    torch.testing.assert_close(model.decode(tokens), rec.images, atol=1e-5, rtol=1e-5)
    assert torch.equal(rec.indices.flatten(1), tokens)


def test_embed_equals_normalised_codebook_rows() -> None:
    model = tiny()
    tokens = torch.randint(0, 32, (2, 64))
    emb = model.embed(tokens)
    assert emb.shape == (2, 64, 4)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 64))
    torch.testing.assert_close(emb, F.normalize(model.quantize.embedding.weight, dim=-1)[tokens])


def test_quantizer_nearest_code_losses_and_straight_through() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(codebook_size=16, embed_dim=3, commitment_weight=0.25)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = q(z)
    flat = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, 3), dim=-1)
    codes = F.normalize(q.embedding.weight.detach(), dim=-1)
    naive = torch.stack([((codes - v) ** 2).sum(-1).argmin() for v in flat])  # position by position
    assert torch.equal(out.indices.flatten(), naive)
    chosen = codes[naive]
    torch.testing.assert_close(out.codebook_loss, ((chosen - flat) ** 2).mean())
    torch.testing.assert_close(out.commitment_loss, 0.25 * ((chosen - flat) ** 2).mean())
    # Straight-through: d quantized / d z is the Jacobian of the l2 normalisation, not zero.
    out.quantized.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_entropy_loss_extremes() -> None:
    confident_spread = torch.eye(8) * 100.0
    collapsed = torch.zeros(8, 8)
    collapsed[:, 0] = 100.0
    assert entropy_loss(confident_spread) < entropy_loss(collapsed) - 1.0


def test_dead_code_restart_reseeds_only_dead_codes() -> None:
    q = VectorQuantizer(codebook_size=8, embed_dim=2)
    counts = torch.tensor([10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0])
    q.update_usage(counts, decay=0.0)
    before = q.embedding.weight.detach().clone()
    candidates = torch.tensor([[5.0, 5.0], [-5.0, 5.0]])
    n = q.restart_dead_codes(candidates, threshold=0.5, rng=torch.Generator().manual_seed(0))
    assert n == 4
    assert torch.equal(q.embedding.weight[:4], before[:4])
    assert torch.all(q.embedding.weight[4:].abs() > 4.0)


def test_image_size_not_divisible_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
        VQTokenizer(image_size=30, channel_multipliers=[1, 2, 2])
    model = tiny()
    with pytest.raises(ValueError, match="not divisible by the tokenizer's downsampling factor"):
        model.encode(torch.zeros(1, 3, 15, 16))


def test_decode_rejects_out_of_vocabulary_tokens() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        model.decode(torch.full((1, 64), 32))
    with pytest.raises(ValueError, match="expected 64 tokens"):
        model.decode(torch.zeros(1, 10, dtype=torch.long))


def test_layout_validation_and_roundtrip() -> None:
    layout = TokenLayout(kind="scales", shapes=((1, 1), (2, 2)), vocab_size=4)
    assert layout.length == 5
    assert TokenLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError):
        TokenLayout(kind="grid", shapes=((2, 2),), vocab_size=None)
    with pytest.raises(ValueError):
        TokenLayout(kind="grid", shapes=((2, 2), (4, 4)), vocab_size=3)


def test_vq16_preset_has_llamagen_names_and_shapes() -> None:
    """VQ-16 (research/algorithms.md sec. 2.2): 72M parameters, LlamaGen's state-dict names and shapes."""
    with torch.device("meta"):
        model = VQTokenizer(image_size=256, codebook_size=16384, embed_dim=8, base_channels=128,
                            channel_multipliers=[1, 1, 2, 2, 4], num_res_blocks=2, z_channels=256, norm_groups=32)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert 71.5e6 < sum(p.numel() for p in model.parameters()) < 72.5e6
    assert shapes["quantize.embedding.weight"] == (16384, 8)
    assert shapes["quant_conv.weight"] == (8, 256, 1, 1) and shapes["post_quant_conv.weight"] == (256, 8, 1, 1)
    assert shapes["encoder.conv_blocks.4.attn.1.q.weight"] == (512, 512, 1, 1)  # attention in the last level
    assert shapes["encoder.conv_blocks.0.downsample.conv.weight"] == (128, 128, 3, 3)
    assert "encoder.conv_blocks.4.downsample.conv.weight" not in shapes
    # decoder level 0 is the lowest resolution: widest, with attention, 3 res blocks, an upsampler
    assert shapes["decoder.conv_blocks.0.res.2.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["decoder.conv_blocks.0.attn.2.proj_out.weight"] == (512, 512, 1, 1)
    assert shapes["decoder.conv_blocks.3.res.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in shapes
    for k in ("encoder.mid.1.k.weight", "decoder.mid.2.nin_shortcut.weight"):
        assert (k in shapes) == k.startswith("encoder")
    assert model.layout.shapes == ((16, 16),)


def test_patch_encoder_latents_depend_on_their_own_patch_only() -> None:
    torch.manual_seed(0)
    kw = dict(image_size=16, channel_multipliers=[1, 2, 2])  # f = 4: 4x4 tokens
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[..., 4:, :] = -x[..., 4:, :]  # every patch but the first row of 4x4 patches changes
    for model, local in ((tiny(encoder="patch", **kw), True), (tiny(**kw), False)):
        zx, zy = model.encoder(x), model.encoder(y)
        assert zx.shape == (1, 8, 4, 4)
        assert torch.equal(zx[..., 0, :], zy[..., 0, :]) == local  # the conv encoder sees its neighbours
    with pytest.raises(ValueError, match="encoder must be 'conv' or 'patch'"):
        tiny(encoder="mlp")
