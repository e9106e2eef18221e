"""Distribution metrics against direct reference computations; clear errors on bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from argen.eval import fid as M
from argen.eval.features import InceptionFeatures
from argen.eval.images import ImageBatchError, iter_images, npz_info, save_npz


def feats(seed: int, n: int, d: int = 8, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * scale + shift


def test_fd_matches_scipy_sqrtm() -> None:
    a, b = feats(0, 300, 16), feats(1, 200, 16, shift=0.4, scale=1.3)
    an, bn = a.double().numpy(), b.double().numpy()
    m1, m2 = an.mean(0), bn.mean(0)
    s1, s2 = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert M.fd_features(a, b) == pytest.approx(ref, rel=1e-3)
    assert M.fd_features(a, a) == pytest.approx(0.0, abs=1e-8)
    # closed form for diagonal Gaussians: sum (mu1-mu2)^2 + sum (s1-s2)^2
    mu1, mu2 = torch.zeros(4), torch.full((4,), 2.0)
    assert M.frechet_distance(mu1, torch.eye(4) * 4, mu2, torch.eye(4)) == pytest.approx(16 + 4, rel=1e-9)


def test_sharded_statistics_merge_exactly() -> None:
    a = feats(0, 101, 6)
    whole = M.FeatureBank(6)
    whole.update(a)
    parts = [M.FeatureBank(6) for _ in range(3)]
    for i, chunk in enumerate(a.split(40)):
        parts[i].update(chunk)
    merged_n = sum(p.n for p in parts)
    merged = M.stats_from_sums(merged_n, sum(p.total for p in parts), sum(p.outer for p in parts))
    for x, y in zip(whole.compute(), merged):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(whole.compute()[1], torch.from_numpy(np.cov(a.double().numpy(), rowvar=False)))


def test_matches_torchmetrics_fid_with_a_custom_extractor() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Flat(nn.Module):
        num_features = 12

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float().flatten(1)[:, :12] / 255.0

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (64, 3, 4, 4), generator=g, dtype=torch.uint8)
    fake = torch.randint(0, 200, (64, 3, 4, 4), generator=g, dtype=torch.uint8)
    tm = FrechetInceptionDistance(feature=Flat(), normalize=False)
    tm.update(real, real=True)
    tm.update(fake, real=False)
    ours = M.fd_features(Flat()(real), Flat()(fake))
    assert ours == pytest.approx(float(tm.compute()), rel=1e-5)


def _naive_kid(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.t() / d + 1) ** 3  # noqa: E731
    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                 - 2 * kxy.mean())


def test_kid_equals_unbiased_mmd_formula() -> None:
    a, b = feats(0, 50, 5).double(), feats(1, 50, 5, shift=0.5).double()
    mean, std = M.kid(a, b, subsets=1, subset_size=50)  # a single subset = the whole sets (permuted)
    assert mean == pytest.approx(_naive_kid(a, b), rel=1e-6) and std == 0.0


def _naive_pr(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    def radius(x: torch.Tensor, i: int) -> float:
        d = sorted(float((x[i] - x[j]).norm()) for j in range(len(x)) if j != i)
        return d[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, i) for i in range(len(fake))]
    prec = np.mean([any(float((f - real[i]).norm()) <= rr[i] for i in range(len(real))) for f in fake])
    rec = np.mean([any(float((r - fake[j]).norm()) <= rf[j] for j in range(len(fake))) for r in real])
    return float(prec), float(rec)


def test_precision_recall_density_coverage_reference_values() -> None:
    real, fake = feats(0, 30, 3), feats(1, 25, 3, shift=0.8)
    p, r = M.precision_recall(real, fake, k=3)
    assert (p, r) == pytest.approx(_naive_pr(real, fake, 3), abs=1e-6)
    assert M.precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    assert M.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    density, coverage = M.density_coverage(real, real.clone(), k=5)
    assert coverage == 1.0 and density > 0.9
    assert M.density_coverage(real, real + 100.0, k=5) == (0.0, 0.0)


def test_inception_score_bounds() -> None:
    same = torch.zeros(100, 10)
    assert M.inception_score(same)[0] == pytest.approx(1.0)
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0
    assert M.inception_score(confident, splits=1)[0] == pytest.approx(10.0, rel=1e-6)


def test_report_names_extractor_and_floor() -> None:
    real, fake, floor = feats(0, 200), feats(1, 150, shift=1.0), feats(2, 200)
    rep = M.compare_features(real, fake, extractor="digits_cnn", floor_real=floor, n_boot=20)
    assert rep.metric == "fd_digits" and rep.num_fake == 150 and rep.floor["n"] == 150
    assert rep.floor["fd"] < rep.fd and rep.fd_ci95 is not None and rep.fd_ci95[0] <= rep.fd <= rep.fd_ci95[1]
    assert M.metric_name("inception_v3_tf2015") == "fid"


def test_stats_roundtrip_and_mismatch(tmp_path: Path) -> None:
    a = feats(0, 50, 4)
    M.save_stats(str(tmp_path / "ref.npz"), a, extractor="digits_cnn", dataset="digits/test")
    mu, sigma, info = M.load_stats(str(tmp_path / "ref.npz"))
    torch.testing.assert_close(mu, a.double().mean(0))
    assert info["n"] == 50 and "digits_cnn" in info["meta"]
    with pytest.raises(ValueError, match="same extractor"):
        M.load_stats(str(tmp_path / "ref.npz"), expected_dim=8)
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match="mu/sigma"):
        M.load_stats(str(tmp_path / "bad.npz"))


def test_npz_sample_batches_stream_and_validate(tmp_path: Path) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (9, 6, 5, 3), dtype=np.uint8)
    save_npz(imgs, tmp_path / "s.npz")
    assert npz_info(tmp_path / "s.npz") == (9, 6, 5)
    got = torch.cat(list(iter_images(tmp_path / "s.npz", batch_size=4)))
    assert got.shape == (9, 3, 6, 5) and np.array_equal(got.permute(0, 2, 3, 1).numpy(), imgs)
    np.savez(tmp_path / "float.npz", arr_0=imgs.astype(np.float32))
    with pytest.raises(ImageBatchError, match="dtype float32, expected uint8"):
        next(iter_images(tmp_path / "float.npz"))
    np.savez(tmp_path / "gray.npz", arr_0=imgs[..., 0])
    with pytest.raises(ImageBatchError, match=r"expected \[N, H, W, 3\]"):
        next(iter_images(tmp_path / "gray.npz"))
    np.savez(tmp_path / "key.npz", images=imgs)
    with pytest.raises(ImageBatchError, match="no 'arr_0'"):
        next(iter_images(tmp_path / "key.npz"))


def test_missing_inception_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth.*never downloads|never downloads.*weights-inception"):
        InceptionFeatures(weights_path=str(tmp_path / "weights-inception-2015-12-05-6726825d.pth"))


def test_inception_path_with_stand_in_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wiring check with random weights of the right names/shapes (the real file cannot ship here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    inc = InceptionFeatures(weights_path=str(path))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    f, logits = inc(x), inc.class_logits(x)
    assert f.shape == (2, 2048) and logits.shape == (2, 1008)
    with pytest.raises(TypeError, match="uint8"):
        inc(x.float())
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not torch-fidelity's InceptionV3"):
        InceptionFeatures(weights_path=str(tmp_path / "other.pth"))


def test_kid_subsets_covering_every_sample_get_a_note() -> None:
    """With subsets as large as the smaller set, every subset is that whole set: KID's std is ~0 and says nothing."""
    real, fake = feats(0, 40), feats(1, 40, shift=0.2)
    report = M.compare_features(real, fake, extractor="x", n_boot=0)
    assert report.kid["std"] < 1e-9  # every subset is both whole sets, permuted
    note = next(n for n in report.notes if n.startswith("KID"))
    assert "KID subsets of 40 cover all 40 generated samples: kid.std measures no sampling spread" in note
    assert "use a smaller kid_subset_size (argen-eval: eval.kid_subset_size, e.g. 20) or more samples" in note
    smaller = M.compare_features(real, fake, extractor="x", n_boot=0, kid_subset_size=20)
    assert smaller.kid["subset_size"] == 20 and not any(n.startswith("KID") for n in smaller.notes)
