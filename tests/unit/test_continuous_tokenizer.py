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


def tiny(**kw) -> ContinuousTokenizer:
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
    # validation and the reconstruction grids (eval mode) show the same deterministic round trip
    torch.testing.assert_close(t.reconstruct(x).images, t.decode(t.encode(x)), atol=1e-5, rtol=1e-5)


def test_the_data_derived_factor_is_one_over_the_latent_std() -> None:
    t = tiny().train()
    assert t.scaling_factor == 1.0  # nothing seen yet
    x = images(8)
    t.reconstruct(x)
    mean = t.vae.encode(x).latent_dist.mean
    assert t.scaling_factor == pytest.approx(float(1 / mean.detach().std(unbiased=False)), rel=1e-4)
    t.eval()
    assert t.encode(x).std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)
    # the harness's end-of-fit measurement: summed statistics of other images replace the running estimate
    y = images(5) * 0.5
    t.set_scale_statistics(t.scale_statistics(y[:2]) + t.scale_statistics(y[2:]))
    assert t.encode(y).std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    assert tiny(scaling_factor=0.2325).scale_statistics(y) is None  # a fixed factor is not measured
    draws = tiny(latent="sample")  # a posterior draw's second moment includes the posterior variance
    draws.set_scale_statistics(draws.scale_statistics(y))
    z = torch.cat([draws.encode(y, seeds=torch.arange(5) + 5 * k) for k in range(40)])
    assert z.std(unbiased=False).item() == pytest.approx(1.0, rel=0.02)


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
    from tokenizers_vq.io import read_meta, save_pretrained

    t = tiny()
    t.set_scale_statistics(t.scale_statistics(images(4)))  # a data-derived factor: the export must carry it
    meta = {"kind": "tokenizer", "image_size": 32}
    a, b = (save_pretrained(t, tmp_path / name, config=KL_TOK, meta=meta) for name in ("a", "b"))
    assert read_meta(a)["sha256"] == read_meta(b)["sha256"]  # the hash depends on the content only
    loaded = load_pretrained(a)
    assert loaded.scaling_factor == t.scaling_factor != 1.0
    assert all(torch.equal(p, q) for p, q in zip(t.state_dict().values(), loaded.state_dict().values(), strict=True))
    assert torch.equal(loaded.encode(images()), t.encode(images()))
    assert torch.equal(loaded.decode(t.encode(images())), t.decode(t.encode(images())))


def test_a_pretrained_autoencoder_loads_from_a_local_folder(tmp_path: Path) -> None:
    t = tiny()
    t.vae.save_pretrained(tmp_path / "vae")
    loaded = ContinuousTokenizer.from_pretrained(tmp_path / "vae", image_size=32, scaling_factor=0.2325)
    x = images()
    torch.testing.assert_close(loaded.encode(x), t.encode(x) * 0.2325, atol=1e-6, rtol=1e-5)
    rebuilt = ContinuousTokenizer(**{k: v for k, v in loaded.config_node().items() if k != "_target_"})
    rebuilt.load_state_dict(loaded.state_dict())
    assert torch.equal(rebuilt.eval().encode(x), loaded.encode(x))
    with pytest.raises(FileNotFoundError, match="missing' is not a diffusers AutoencoderKL folder.*config.json"):
        ContinuousTokenizer.from_pretrained(tmp_path / "missing", image_size=32)
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()  # a config without its weights
    with pytest.raises(FileNotFoundError, match="could not load an AutoencoderKL from '.*vae'.*diffusion_pytorch"):
        ContinuousTokenizer.from_pretrained(tmp_path / "vae", image_size=32)


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


KL_TINY = ["experiment=shapes_kl", "tokenizer.block_out_channels=[8,8,8]", "tokenizer.norm_num_groups=4",
           "data.train.size=32", "data.val.size=8", "data.global_batch_size=8", "data.eval_batch_size=8",
           "data.num_workers=0", "logger=default", "trainer.log_every_n_steps=1", "callbacks.progress=null",
           "callbacks.reconstruction_grid.every_n_steps=10", "trainer.enable_model_summary=false",
           "trainer.max_steps=30", "trainer.val_check_interval=4", "module.lr_schedule.warmup_steps=2"]


def test_argen_train_fits_exports_and_computes_the_factor(tmp_path: Path) -> None:
    """The Lightning tokenizer harness: the loss falls, val PSNR is logged, the grid callback runs, and the export
    carries the data-derived factor (1 / std of the latents, not the untrained 1)."""
    import csv

    from argen.cli.common import compose_config
    from argen.cli.train import run as train_run
    from argen.data.shapes import ShapesDataset

    result = train_run(compose_config("train", [*KL_TINY, f"paths.output_root={tmp_path}"]))
    with open(Path(result["run_dir"]) / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 20 and sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert any(r.get("train/kl") for r in rows) and "val/psnr" in result["metrics"]
    assert not any(r.get("train/codebook_usage") for r in rows)  # no codebook, no codebook statistics
    assert sorted(p.name for p in (Path(result["run_dir"]) / "grids").glob("*.png")) == [
        "step0000010.png", "step0000020.png", "step0000030.png"]  # the reconstruction grid callback
    tok = load_pretrained(result["export_dir"])
    assert isinstance(tok, ContinuousTokenizer) and tok.fixed_scale is None and tok.scaling_factor != 1.0
    train = ShapesDataset(split="train", size=32, image_size=32, seed=0)  # measured on all 32, exported weights
    z = tok.encode(torch.stack([train[i]["image"] for i in range(32)]))
    assert z.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)


def test_a_sample_cache_is_seeded_by_the_dataset_index_and_says_so(tmp_path: Path) -> None:
    from argen.cli.common import compose_config
    from argen.cli.tokenize import run as tokenize_run
    from argen.data.codes import CodeDataset
    from argen.data.shapes import ShapesDataset
    from tokenizers_vq.io import save_pretrained

    config = {**KL_TOK, "scaling_factor": 0.5, "latent": "sample"}
    tok = save_pretrained(tiny(scaling_factor=0.5, latent="sample"), tmp_path / "tok", config=config,
                          meta={"kind": "tokenizer", "image_size": 32})
    base = [f"tokenizer_path={tok}", "data=shapes", "data.train.size=6", "splits=[train]"]
    a = CodeDataset(root=str(tokenize_run(compose_config("tokenize", [*base, f"output_dir={tmp_path / 'a'}"]))))
    b = CodeDataset(root=str(tokenize_run(compose_config("tokenize", [*base, f"output_dir={tmp_path / 'b'}",
                                                                       "batch_size=4"]))))
    assert torch.equal(a.tokens, b.tokens)  # row i's draw depends on its index, not on its batch
    assert a.manifest["preprocessing"]["tokens"] == "posterior sample (per-sample seeds) x scaling_factor 0.5"
    shapes = ShapesDataset(split="train", size=6, image_size=32, seed=0)
    images = torch.stack([shapes[i]["image"] for i in range(6)])
    assert not torch.allclose(a.tokens, tiny(scaling_factor=0.5).encode(images), atol=1e-3)  # draws, not the mean


def test_the_reconstruction_report_gives_latent_statistics_instead_of_codes() -> None:
    from argen.eval.reconstruction import evaluate_reconstruction
    from tokenizers_vq.metrics import psnr

    t = tiny()
    x = images(6)
    t.set_scale_statistics(t.scale_statistics(x))
    data = [{"image": img} for img in x]
    report = evaluate_reconstruction(t, data, batch_size=4, progress=False)
    assert report.codebook_usage is None and report.vocab_size is None and report.num_images == 6
    assert report.latent_std == pytest.approx(float(t.encode(x).std(unbiased=False)), rel=1e-5)
    assert report.latent_std == pytest.approx(1.0, rel=1e-4) and report.scaling_factor == t.scaling_factor
    assert report.psnr == pytest.approx(float(psnr(t.decode(t.encode(x)).clamp(-1, 1), x).mean()), rel=1e-5)
