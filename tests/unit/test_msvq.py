"""The scale-residual (VAR) tokenizer: encoding, phi sharing, accumulate step, VQ loss, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenizers_vq.msvq import MultiScaleQuantizer, MultiScaleVQTokenizer, phi_indices

SMALL = dict(image_size=32, codebook_size=32, embed_dim=8, scales=[1, 2, 3, 4, 6, 8], base_channels=16,
             channel_multipliers=[1, 2, 2], z_channels=16, norm_groups=8)


@pytest.fixture(scope="module")
def tokenizer() -> MultiScaleVQTokenizer:
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(**SMALL).eval()
    with torch.no_grad():  # codes drawn from real latents (all scales), so every scale picks varied codes
        f = tok.quant_conv(tok.encoder(images(4, seed=1)))
        pool = torch.cat([F.adaptive_avg_pool2d(f, s).permute(0, 2, 3, 1).reshape(-1, 8) for s in (1, 2, 8)])
        tok.quantize.embedding.weight.copy_(pool[torch.randperm(len(pool))[:32]])
        for phi in tok.quantize.phi:
            phi.weight.normal_(0, 0.1)
    return tok


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1


def test_phi_sharing_follows_var_ticks() -> None:
    assert phi_indices(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # VAR's share_quant_resi=4
    assert phi_indices(6, 1) == [0] * 6
    assert phi_indices(6, 6) == list(range(6))
    q0 = MultiScaleQuantizer(codebook_size=8, embed_dim=4, scales=[1, 2, 4], num_phi=0)
    q1 = MultiScaleQuantizer(codebook_size=8, embed_dim=4, scales=[1, 2, 4], num_phi=1)
    assert len(q0.phi) == 3 and q0.phi_index == [0, 1, 2] and len(q1.phi) == 1
    identity = MultiScaleQuantizer(codebook_size=8, embed_dim=4, scales=[1, 2, 4], num_phi=1, phi_ratio=0.0)
    assert not any(k.startswith("phi") for k in identity.state_dict())


def naive_encode(q: MultiScaleQuantizer, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """VAR's residual loop written out (algorithms.md 1.2), one scale at a time."""
    b, d, side, _ = f.shape
    rest, f_hat, out = f.clone(), torch.zeros_like(f), []
    for k, pn in enumerate(q.scales):
        z = F.adaptive_avg_pool2d(rest, pn) if pn != side else rest
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx = torch.cdist(flat, q.embedding.weight).argmin(1)
        h = q.embedding.weight[idx].view(b, pn, pn, d).permute(0, 3, 1, 2)
        if pn != side:
            h = F.interpolate(h, size=(side, side), mode="bicubic", align_corners=False)
        phi = q.phi[q.phi_index[k]]
        h = (1 - phi.ratio) * h + phi.ratio * F.conv2d(h, phi.weight, phi.bias, padding=1)
        f_hat, rest = f_hat + h, rest - h
        out.append(idx.view(b, pn * pn))
    return out, f_hat


@torch.no_grad()
def test_encode_matches_the_residual_loop_and_decode_equals_decoding_fhat(tokenizer: MultiScaleVQTokenizer) -> None:
    x = images()
    tokens = tokenizer.encode(x)
    assert tokens.shape == (3, tokenizer.layout.length) == (3, 1 + 4 + 9 + 16 + 36 + 64)
    f = tokenizer.quant_conv(tokenizer.encoder(x))
    idx, f_hat = naive_encode(tokenizer.quantize, f)
    assert torch.equal(tokens, torch.cat(idx, dim=1))
    assert len({int(t) for t in tokens[:, 0]}) > 1 or len(set(tokens[:, 1:5].flatten().tolist())) > 1
    # encode then decode == decoding the accumulated f_hat
    assert torch.allclose(tokenizer.quantize.fhat_from_tokens(tokens), f_hat, atol=1e-5)
    assert torch.allclose(tokenizer.decode(tokens), tokenizer.decode_fhat(f_hat), atol=1e-5)
    # and the training path reconstructs the same images
    assert torch.allclose(tokenizer.reconstruct(x).images, tokenizer.decode(tokens), atol=1e-5)


@torch.no_grad()
def test_teacher_forcing_inputs_equal_the_step_by_step_inputs(tokenizer: MultiScaleVQTokenizer) -> None:
    q = tokenizer.quantize
    tokens = tokenizer.encode(images())
    teacher = q.next_scale_inputs(tokens)  # (B, L - 1, D)
    assert teacher.shape == (3, tokenizer.layout.length - 1, q.embed_dim)
    f_hat = q.empty_fhat(3, "cpu")
    stepwise = []
    for k, (a, b) in enumerate(q.bounds()[:-1]):  # inference: one scale decided at a time
        f_hat = q.accumulate(f_hat, k, tokens[:, a:b])
        stepwise.append(q.next_input(f_hat, k))
    assert torch.equal(teacher, torch.cat(stepwise, dim=1))
    # the inputs of scale k + 1 are the area-downsampled partial sum of scales 0..k (VAR idxBl_to_var_input)
    idx = q.split(tokens)
    partial = sum(q.upsample(q.embedding(idx[k]).permute(0, 3, 1, 2), k) for k in range(2))
    expected = F.adaptive_avg_pool2d(partial, 3).flatten(2).transpose(1, 2)
    a, b = q.bounds()[2]
    assert torch.allclose(teacher[:, a - 1:b - 1], expected, atol=1e-6)


def test_vq_loss_terms_and_gradients() -> None:
    torch.manual_seed(0)
    tok = MultiScaleVQTokenizer(**SMALL)
    rec = tok.reconstruct(images(2))
    # codebook term trains the codes and phi; commitment (beta) and reconstruction train the encoder
    rec.codebook_loss.backward(retain_graph=True)
    assert tok.quantize.embedding.weight.grad.abs().sum() > 0 and tok.quantize.phi[0].weight.grad.abs().sum() > 0
    assert tok.encoder.conv_in.weight.grad is None
    rec.commitment_loss.backward(retain_graph=True)
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0
    tok.zero_grad()
    rec.images.pow(2).mean().backward()  # straight-through: the decoder's gradient reaches the encoder
    assert tok.encoder.conv_in.weight.grad.abs().sum() > 0 and tok.quantize.embedding.weight.grad is None
    assert rec.indices.shape == (2, 130) and rec.latents.shape == (2 * 130, 8)


def test_usage_statistics_per_scale() -> None:
    q = MultiScaleQuantizer(codebook_size=4, embed_dim=2, scales=[1, 2], num_phi=1)
    counts = torch.tensor([[4.0, 0, 0, 0], [1.0, 1, 1, 1]])
    q.update_usage(counts, decay=0.0)
    assert torch.allclose(q.usage_ema_scales, torch.tensor([[1.0, 0, 0, 0], [0.25] * 4]))
    assert torch.allclose(q.usage_ema, torch.tensor([5.0, 1, 1, 1]) / 8)
    restarted = q.restart_dead_codes(torch.randn(10, 2), threshold=1.0, rng=torch.Generator().manual_seed(0))
    assert restarted == 3  # codes 1..3 fell below 1/V


def test_bad_input_is_refused(tokenizer: MultiScaleVQTokenizer) -> None:
    with pytest.raises(ValueError, match="built for 32x32"):
        tokenizer.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        tokenizer.decode(torch.full((1, 130), 32))
    with pytest.raises(ValueError, match=r"expected tokens \(B, 130\)"):
        tokenizer.decode(torch.zeros(1, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="last scale must equal the latent side 8"):
        MultiScaleVQTokenizer(**{**SMALL, "scales": [1, 2, 4]})
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiScaleQuantizer(codebook_size=8, embed_dim=4, scales=[2, 1, 4])


def test_reconstruction_report_gives_usage_per_scale(tokenizer: MultiScaleVQTokenizer) -> None:
    from argen.eval.reconstruction import evaluate_reconstruction

    data = [{"image": img} for img in images(6)]
    report = evaluate_reconstruction(tokenizer, data, batch_size=4, progress=False)
    assert [s["scale"] for s in report.per_scale] == ["1x1", "2x2", "3x3", "4x4", "6x6", "8x8"]
    assert report.per_scale[0]["codebook_usage"] <= 6 / 32  # 6 images x 1 token at the coarsest scale
    assert 1.0 <= report.per_scale[-1]["perplexity"] <= 32 and report.tokens_per_image == 130
