"""The continuous tokenizer (diffusers AutoencoderKL): latents in the layout, the scale factor, mean vs posterior
sample (seeded per sample), export / load, a pretrained VAE from a local folder, the KL objective's formula, a
few harness steps, and a float latent cache through argen-tokenize."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures import KL_TOK, export_kl_tokenizer
from tokenizers_vq.continuous import ContinuousTokenizer
from tokenizers_vq.io import load_pretrained
from tokenizers_vq.losses import KLLoss, gaussian_kl


def tiny(**kw) -> ContinuousTokenizer:  # noqa: ANN003
    torch.manual_seed(0)
    return ContinuousTokenizer(**{**{k: v for k, v in KL_TOK.items() if k != "_target_"}, **kw}).eval()


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_latents_follow_the_layout_and_decode_back() -> None:
    t = tiny()
    assert t.layout.kind == "grid" and t.layout.shapes == ((8, 8),) and t.layout.channels == 4
    assert t.layout.vocab_size is None
    z = t.encode(images())
    assert z.shape == (3, 64, 4) and z.dtype == torch.float32
    assert t.decode(z).shape == (3, 3, 32, 32)
    with pytest.raises(TypeError, match="continuous tokens"):
        t.decode(torch.zeros(3, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="built for 32x32"):
        t.encode(torch.zeros(1, 3, 16, 16))


def test_the_scale_factor_scales_encode_and_unscales_decode() -> None:
    """decode(encode(x)) is the unscaled VAE's mean round trip, whatever the factor."""
    t = tiny(scaling_factor=0.2325)
    x = images()
    mean = t.vae.encode(x).latent_dist.mean
    torch.testing.assert_close(t.encode(x), (mean * 0.2325).flatten(2).transpose(1, 2))
    torch.testing.assert_close(t.decode(t.encode(x)), t.vae.decode(mean).sample, atol=1e-5, rtol=1e-5)


def test_the_data_derived_factor_is_one_over_the_latent_std() -> None:
    t = tiny().train()
    assert t.scaling_factor == 1.0  # nothing seen yet
    x = images(8)
    t.reconstruct(x)
    mean = t.vae.encode(x).latent_dist.mean
    assert t.scaling_factor == pytest.approx(float(1 / mean.detach().std(unbiased=False)), rel=1e-4)
    t.eval()
    assert t.encode(x).std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)


def test_a_posterior_sample_is_seeded_per_sample() -> None:
    t = tiny(latent="sample")
    assert t.stochastic_encode and "sample" in t.encoding
    x = images(3)
    seeds = torch.tensor([7, 8, 9])
    a = t.encode(x, seeds=seeds)
    assert torch.equal(a, t.encode(x, seeds=seeds))
    torch.testing.assert_close(a[1:2], t.encode(x[1:2], seeds=seeds[1:2]), atol=1e-5, rtol=1e-5)  # not batch-mates'
    assert not torch.allclose(a, tiny().encode(x))  # a draw, not the mean
    with pytest.raises(ValueError, match="pass per-sample seeds"):
        t.encode(x)


def test_export_and_load_are_bit_exact(tmp_path: Path) -> None:
    path = export_kl_tokenizer(tmp_path / "tok", 0)
    a, b = load_pretrained(path), load_pretrained(path)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(a.encode(images()), b.encode(images()))


def test_a_pretrained_autoencoder_loads_from_a_local_folder(tmp_path: Path) -> None:
    t = tiny()
    t.vae.save_pretrained(tmp_path / "vae")
    loaded = ContinuousTokenizer.from_pretrained(tmp_path / "vae", image_size=32, scaling_factor=0.2325)
    x = images()
    torch.testing.assert_close(loaded.encode(x), t.encode(x) * 0.2325, atol=1e-6, rtol=1e-5)
    rebuilt = ContinuousTokenizer(**{k: v for k, v in loaded.config_node().items() if k != "_target_"})
    rebuilt.load_state_dict(loaded.state_dict())
    assert torch.equal(rebuilt.eval().encode(x), loaded.encode(x))
    with pytest.raises(FileNotFoundError, match="not a diffusers AutoencoderKL folder"):
        ContinuousTokenizer.from_pretrained(tmp_path / "missing", image_size=32)


def test_the_kl_objective_equals_its_formula() -> None:
    mean, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, -2.0]])
    want = 0.5 * ((0.25 + 1 - 1 - 0) + (1 + torch.exp(torch.tensor(-2.0)) - 1 + 2)) / 2
    torch.testing.assert_close(gaussian_kl(mean, logvar), want)
    t = tiny().train()
    x = images(2)
    rec = t.reconstruct(x)
    terms = KLLoss(kl_weight=0.01).generator_loss(x, rec, step=0, last_layer=t.last_layer())
    pixel = (rec.images - x).pow(2).mean()
    torch.testing.assert_close(terms.loss, pixel + 0.01 * gaussian_kl(rec.mean, rec.logvar))


def test_a_few_harness_steps_reduce_the_loss() -> None:
    t = tiny().train()
    loss_fn = KLLoss()
    opt = torch.optim.Adam(t.parameters(), lr=3e-3)
    coarse = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")  # smooth images a VAE can learn
    losses = []
    for _ in range(40):
        terms = loss_fn.generator_loss(x, t.reconstruct(x), step=0, last_layer=t.last_layer())
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        losses.append(float(terms.loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_argen_tokenize_writes_a_float_latent_cache(tmp_path: Path) -> None:
    from argen.cli.common import compose_config
    from argen.cli.tokenize import run as tokenize_run
    from argen.data.codes import CodeDataset

    tok = export_kl_tokenizer(tmp_path / "tok", 0)
    out = tokenize_run(compose_config("tokenize", [f"tokenizer_path={tok}", f"output_dir={tmp_path / 'codes'}",
                                                   "data=shapes", "data.train.size=6", "data.val.size=2"]))
    data = CodeDataset(root=str(out))
    assert data.tokens.shape == (6, 64, 4) and data.tokens.dtype == torch.float32
    assert "posterior mean" in data.manifest["preprocessing"]["tokens"]
    assert data.layout["channels"] == 4
