"""argen-eval end to end: ShapesEval on a GenEval-layout folder, fd_digits on an .npz batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from argen.cli.common import compose_config
from argen.cli.evaluate import run
from argen.data.base import tensor_to_uint8
from argen.data.digits import DigitsDataset
from argen.data.shapes import ShapesWorld, make_prompt_suite, realize_prompt, render_scene
from argen.eval import geneval
from argen.eval.feature_nets import DigitsFeatureNet
from argen.eval.images import save_npz
from tokenizers_vq.io import save_pretrained


def test_shapes_eval_on_ground_truth_and_noise(tmp_path: Path) -> None:
    world = ShapesWorld(image_size=32)
    suite = make_prompt_suite(world, n_per_tag=5, seed=0)
    rng = np.random.default_rng(0)
    for i, md in enumerate(suite):
        geneval.write_sample_folder(tmp_path / "gt", i, md, [render_scene(realize_prompt(rng, md, world))[0]
                                                              for _ in range(2)])
        geneval.write_sample_folder(tmp_path / "noise", i, md, [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)])
    for name, expected in (("gt", 1.0), ("noise", 0.0)):
        cfg = compose_config("evaluate", ["eval=shapes", f"samples={tmp_path / name}",
                                          f"output_dir={tmp_path / ('out_' + name)}"])
        report = run(cfg)["shapes"]
        assert report["overall"] == expected and report["n_tasks"] == 6
        out = tmp_path / f"out_{name}"
        assert (out / "report.json").is_file() and (out / "shapes_tasks.png").is_file()
        assert "overall" in (out / "summary.md").read_text()


def test_fd_digits_from_an_npz_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = DigitsFeatureNet().eval()
    save_pretrained(net, tmp_path / "net", config=net.config(), meta={"kind": "feature_net"})
    real = torch.stack([s["image"] for s in DigitsDataset(split="val", image_size=32)])
    save_npz(tensor_to_uint8(real), tmp_path / "samples.npz")
    (tmp_path / "labels.json").write_text(json.dumps([0] * len(real)))
    cfg = compose_config("evaluate", ["eval=fd_digits", f"samples={tmp_path / 'samples.npz'}",
                                      f"eval.extractor.path={tmp_path / 'net'}", f"output_dir={tmp_path / 'out'}",
                                      "eval.n_boot=10", f"eval.labels={tmp_path / 'labels.json'}"])
    report = run(cfg)["fd_digits"]
    assert report["metric"] == "fd_digits" and report["extractor"] == "digits_cnn"
    assert report["num_fake"] == len(real) and report["num_real"] == 360
    assert report["floor"]["n"] == len(real) and report["fd_ci95"] is not None
    assert 1.0 <= report["inception_score"]["mean"] <= 10.0 and report["class_accuracy"] is not None
    assert json.loads((tmp_path / "out" / "report.json").read_text())["fd_digits"]["fd"] == report["fd"]


def test_reference_batch_with_stats_uses_stored_mu_sigma(tmp_path: Path) -> None:
    """An ADM-style reference batch: FD against its stored mu/sigma, its arr_0 images for P/R."""
    from argen.eval import fid as M

    torch.manual_seed(0)
    net = DigitsFeatureNet().eval()
    save_pretrained(net, tmp_path / "net", config=net.config(), meta={"kind": "feature_net"})
    real = tensor_to_uint8(torch.stack([s["image"] for s in DigitsDataset(split="test", image_size=32)]))
    fake = tensor_to_uint8(torch.stack([s["image"] for s in DigitsDataset(split="val", image_size=32)]))
    save_npz(fake, tmp_path / "samples.npz")
    with torch.no_grad():
        real_f = net(torch.from_numpy(real).permute(0, 3, 1, 2)).float()
    mu, sigma = M.feature_stats(real_f)
    np.savez(tmp_path / "ref.npz", arr_0=real, mu=(mu + 1.0).numpy(), sigma=sigma.numpy())  # shifted stats
    cfg = compose_config("evaluate", ["eval=fd_digits", f"samples={tmp_path / 'samples.npz'}",
                                      f"eval.extractor.path={tmp_path / 'net'}", f"eval.reference={tmp_path / 'ref.npz'}",
                                      "eval.floor_reference=null", "eval.n_boot=0", f"output_dir={tmp_path / 'out'}"])
    report = run(cfg)["fd_digits"]
    with torch.no_grad():
        fake_f = net(torch.from_numpy(fake).permute(0, 3, 1, 2)).float()
    expected = M.frechet_distance(mu + 1.0, sigma, *M.feature_stats(fake_f))
    assert report["fd"] == pytest.approx(expected, rel=1e-6)
    assert report["num_real"] == len(real) and report["precision"] is not None


def digits_net(path: Path) -> Path:
    torch.manual_seed(0)
    net = DigitsFeatureNet().eval()
    return save_pretrained(net, path, config=net.config(), meta={"kind": "feature_net"})


def test_a_corrupt_png_is_skipped_counted_and_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    images = tensor_to_uint8(torch.stack([s["image"] for s in DigitsDataset(split="val", image_size=32)]))[:40]
    (tmp_path / "samples").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "samples" / f"{i:06d}.png")
    (tmp_path / "samples" / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    cfg = compose_config("evaluate", ["eval=fd_digits", f"samples={tmp_path / 'samples'}", "eval.n_boot=0",
                                      f"eval.extractor.path={digits_net(tmp_path / 'net')}",
                                      f"output_dir={tmp_path / 'out'}"])
    with caplog.at_level("WARNING", logger="argen"):
        report = run(cfg)["fd_digits"]
    assert report["num_fake"] == 39
    assert report["unreadable_images"]["samples"] == 1 and report["unreadable_images"]["reference"] == 0
    assert any("skipped 1 unreadable sample image(s) (first: " in n and "000005.png" in n for n in report["notes"])
    assert any("000005.png" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    written = json.loads((tmp_path / "out" / "report.json").read_text())["fd_digits"]
    assert written["unreadable_images"]["samples"] == 1


def test_samples_at_another_resolution_than_the_reference_get_a_note(tmp_path: Path) -> None:
    small = tensor_to_uint8(torch.stack([s["image"] for s in DigitsDataset(split="val", image_size=16)]))[:40]
    save_npz(small, tmp_path / "samples.npz")
    cfg = compose_config("evaluate", ["eval=fd_digits", f"samples={tmp_path / 'samples.npz'}", "eval.n_boot=0",
                                      "eval.floor_reference=null", f"output_dir={tmp_path / 'out'}",
                                      f"eval.extractor.path={digits_net(tmp_path / 'net')}"])
    notes = run(cfg)["fd_digits"]["notes"]
    assert any("samples are 16x16 px but the reference is 32x32 px" in n for n in notes), notes
