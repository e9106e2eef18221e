"""Distribution metrics on extracted features: FD (FID / fd_<domain>), KID, IS, precision /
recall (k = 3) and density / coverage (k = 5), with bootstrap intervals and a real-vs-real floor.

The Fréchet distance uses torchmetrics' own float64 eigenvalue formula (the one its
``FrechetInceptionDistance`` computes, equal to ADM's ``sqrtm`` form; research/eval.md sec. 1.1);
KID uses torchmetrics' unbiased polynomial-kernel MMD. Features are accumulated by
:class:`FeatureBank`, a ``torchmetrics.Metric`` with float64 sufficient statistics (summed
exactly across processes) and the features themselves (gathered, for KID / P-R / bootstrap).
Naming: a distance on Inception features is ``fid``; on a domain network it is ``fd_<name>``
and never called FID (eval.md sec. 6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd
from torchmetrics.utilities import dim_zero_cat


class FeatureBank(Metric):
    """Accumulates (N, d) features: float64 n / sum / outer-product sums plus the raw features."""

    full_state_update = False

    def __init__(self, num_features: int, keep_features: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_features = num_features
        self.keep_features = keep_features
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("features", [], dist_reduce_fx="cat")

    def update(self, feats: Tensor) -> None:  # (B, d)
        f = feats.detach().double()
        self.n += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.t() @ f
        if self.keep_features:
            self.features.append(feats.detach().float())

    def compute(self) -> tuple[Tensor, Tensor]:
        """(mu (d,), sigma (d, d)) with the unbiased 1/(n-1) covariance, float64."""
        return stats_from_sums(self.n, self.total, self.outer)

    def all_features(self) -> Tensor:
        if not self.keep_features:
            raise RuntimeError("this FeatureBank was built with keep_features=False")
        return dim_zero_cat(self.features) if self.features else torch.zeros(0, self.num_features)


def stats_from_sums(n: Tensor, total: Tensor, outer: Tensor) -> tuple[Tensor, Tensor]:
    if float(n) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {int(n)}")
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return mu, sigma


def feature_stats(feats: Tensor) -> tuple[Tensor, Tensor]:
    """mu, sigma (float64) of (N, d) features."""
    f = feats.double()
    return stats_from_sums(torch.tensor(float(f.shape[0]), dtype=torch.float64), f.sum(0), f.t() @ f)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), float64 (torchmetrics' formula)."""
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    sigma1, sigma2 = torch.as_tensor(sigma1).double(), torch.as_tensor(sigma2).double()
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different feature widths: {tuple(mu1.shape)} vs {tuple(mu2.shape)}; "
                         f"were they made by the same extractor?")
    return float(_compute_fid(mu1, sigma1, mu2, sigma2))


def fd_features(real: Tensor, fake: Tensor) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def kid(real: Tensor, fake: Tensor, *, subsets: int = 100, subset_size: int = 1000,
        rng: torch.Generator | None = None) -> tuple[float, float]:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 over random subsets: (mean, std).

    Subset size is capped by the smaller set (torch-fidelity / torchmetrics defaults 100 x 1000).
    """
    m = kid_subset(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = rng or torch.Generator().manual_seed(0)
    values = []
    for _ in range(subsets):
        i = torch.randperm(real.shape[0], generator=rng)[:m]
        j = torch.randperm(fake.shape[0], generator=rng)[:m]
        values.append(poly_mmd(real[i].double(), fake[j].double(), degree=3, gamma=None, coef=1.0))
    v = torch.stack(values)
    return float(v.mean()), float(v.std(unbiased=False))


def kid_subset(subset_size: int, n_real: int, n_fake: int) -> int:
    """The subset size KID uses: ``subset_size`` capped by the smaller set."""
    return min(subset_size, n_real, n_fake)


def kid_note(subset_size: int, n_real: int, n_fake: int) -> str | None:
    """A report note when KID's subsets are a whole set: every subset then holds the same samples, so the std
    over subsets (~1e-15 when both sets are covered) says nothing about sampling spread."""
    m = kid_subset(subset_size, n_real, n_fake)
    if m < n_fake and m < n_real:
        return None
    which, n = ("generated", n_fake) if m == n_fake else ("reference", n_real)
    return (f"KID subsets of {m} cover all {n} {which} samples: kid.std measures no sampling spread over them; "
            f"use a smaller kid_subset_size (argen-eval: eval.kid_subset_size, e.g. {max(m // 2, 2)}) "
            f"or more samples")


def inception_score(logits: Tensor, *, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over consecutive splits: (mean, std); bounds 1 <= IS <= K."""
    log_p = logits.double().log_softmax(dim=1)
    scores = []
    for chunk in log_p.chunk(splits):
        p = chunk.exp()
        log_marginal = torch.log(p.mean(0, keepdim=True))
        scores.append(torch.exp((p * (chunk - log_marginal)).sum(1).mean()))
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(unbiased=False))


def _pairwise(a: Tensor, b: Tensor, block: int = 4096) -> Tensor:
    """Euclidean distances (A, B) in float32 blocks."""
    return torch.cat([torch.cdist(a[i:i + block].float(), b.float()) for i in range(0, a.shape[0], block)])


def _radii(x: Tensor, k: int) -> Tensor:
    """Distance of each point to its k-th nearest neighbour in its own set (itself excluded)."""
    d = _pairwise(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 0 self-distance is the 1st smallest


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = share of fake points inside some real k-NN ball;
    recall = share of real points inside some fake k-NN ball."""
    d = _pairwise(fake, real)  # (F, R)
    r_real, r_fake = _radii(real, k), _radii(fake, k)
    precision = (d <= r_real[None, :]).any(dim=1).float().mean()
    recall = (d.t() <= r_fake[None, :]).any(dim=1).float().mean()
    return float(precision), float(recall)


def density_coverage(real: Tensor, fake: Tensor, *, k: int = 5) -> tuple[float, float]:
    """Naeem et al. 2020: density = (1/kM) sum_j sum_i 1[y_j in B(x_i, r_k(x_i))];
    coverage = (1/N) sum_i 1[some y_j in B(x_i, r_k(x_i))]."""
    d = _pairwise(real, fake)  # (R, F)
    inside = d <= _radii(real, k)[:, None]
    density = inside.sum().double() / (k * fake.shape[0])
    coverage = inside.any(dim=1).double().mean()
    return float(density), float(coverage)


def bootstrap_fd(real_stats: tuple[Tensor, Tensor], fake: Tensor, *, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Bias-corrected percentile interval of FD over resamples of the generated features.

    Resampling with replacement repeats samples, which inflates FD (its finite-sample bias grows
    as the number of distinct samples falls), so the raw percentile interval can lie entirely
    above the estimate. The interval is therefore shifted by the bootstrap bias
    (mean of the resamples minus the estimate): it describes sampling spread around the
    estimate; the estimate's own upward bias at this N is what the real-vs-real floor shows.
    """
    g = torch.Generator().manual_seed(seed)
    point = frechet_distance(*real_stats, *feature_stats(fake))
    vals = []
    for _ in range(n_boot):
        idx = torch.randint(0, fake.shape[0], (fake.shape[0],), generator=g)
        vals.append(frechet_distance(*real_stats, *feature_stats(fake[idx])))
    bias = float(np.mean(vals)) - point
    lo, hi = np.percentile(vals, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo - bias), float(hi - bias)


@dataclass
class DistributionReport:
    """Every number carries its extractor, N and interval; ``floor`` is the real-vs-real value at the same N."""

    metric: str
    extractor: str
    num_real: int
    num_fake: int
    fd: float
    fd_ci95: tuple[float, float] | None = None
    floor: dict[str, float] = field(default_factory=dict)
    kid: dict[str, float] = field(default_factory=dict)
    precision: float | None = None
    recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    inception_score: dict[str, float] = field(default_factory=dict)
    class_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_name(extractor_name: str) -> str:
    """``fid`` for Inception features, ``fd_<name>`` for anything else."""
    return "fid" if extractor_name.startswith("inception") else f"fd_{extractor_name.split('_')[0]}"


def compare_features(real: Tensor, fake: Tensor, *, extractor: str, floor_real: Tensor | None = None,
                     real_stats: tuple[Tensor, Tensor] | None = None, n_boot: int = 200, seed: int = 0,
                     fake_logits: Tensor | None = None, fake_labels: Tensor | None = None,
                     pr_k: int = 3, dc_k: int = 5, kid_subset_size: int = 1000) -> DistributionReport:
    """All metrics of ``fake`` (N_f, d) against ``real`` (N_r, d) features.

    real_stats: precomputed (mu, sigma) of the reference (e.g. from an ADM / cached ``.npz``)
    used for FD instead of ``real``'s own statistics (``real`` may then be empty: KID / P-R need
    features and are skipped). floor_real: a second, disjoint real set; the floor is FD / KID
    between ``real`` and ``floor_real`` at the generated N. fake_logits / fake_labels: class
    logits and intended classes of the samples (IS and class accuracy). kid_subset_size: samples per KID
    subset (capped by the smaller set; a subset that is a whole set gets a note).
    """
    ref = real_stats if real_stats is not None else feature_stats(real)
    report = DistributionReport(metric=metric_name(extractor), extractor=extractor, num_real=int(real.shape[0]),
                                num_fake=int(fake.shape[0]), fd=frechet_distance(*ref, *feature_stats(fake)))
    if n_boot > 0:
        report.fd_ci95 = bootstrap_fd(ref, fake, n_boot=n_boot, seed=seed)
    if real.shape[0] >= 2:
        mean, std = kid(real, fake, subset_size=kid_subset_size, rng=torch.Generator().manual_seed(seed))
        n_real, n_fake = int(real.shape[0]), int(fake.shape[0])
        report.kid = {"mean": mean, "std": std, "subset_size": kid_subset(kid_subset_size, n_real, n_fake)}
        note = kid_note(kid_subset_size, n_real, n_fake)
        if note:
            report.notes.append(note)
        report.precision, report.recall = precision_recall(real, fake, k=pr_k)
        report.density, report.coverage = density_coverage(real, fake, k=dc_k)
    else:
        report.notes.append("reference given as statistics only: KID, precision/recall, density/coverage skipped")
    if floor_real is not None:
        n = min(fake.shape[0], floor_real.shape[0])
        report.floor = {"n": float(n), "fd": frechet_distance(*ref, *feature_stats(floor_real[:n]))}
        if real.shape[0] >= 2:
            report.floor["kid"] = kid(real, floor_real[:n], subset_size=kid_subset_size,
                                      rng=torch.Generator().manual_seed(seed))[0]
    else:
        report.notes.append("no second real set given: no real-vs-real floor")
    if fake_logits is not None:
        mean, std = inception_score(fake_logits)
        report.inception_score = {"mean": mean, "std": std}
        if fake_labels is not None:
            report.class_accuracy = float((fake_logits.argmax(1) == fake_labels).float().mean())
    return report


@torch.no_grad()
def extract(extractor: Any, batches: Iterable[Tensor], *, device: str | torch.device = "cpu",
            with_logits: bool = False) -> tuple[Tensor, Tensor | None]:
    """Run an extractor over uint8 batches (B, 3, H, W): features (N, d) and, if asked, class logits."""
    bank = FeatureBank(int(extractor.num_features))
    logits = []
    for batch in batches:
        batch = batch.to(device)
        bank.update(extractor(batch).float().cpu())
        if with_logits:
            logits.append(extractor.class_logits(batch).float().cpu())
    return bank.all_features(), (torch.cat(logits) if with_logits and logits else None)


def save_stats(path: str, feats: Tensor, *, extractor: str, dataset: str, extra: dict[str, Any] | None = None) -> None:
    """Reference statistics as ``.npz``: mu, sigma, n, extractor name (ADM-like keys)."""
    mu, sigma = feature_stats(feats)
    meta = {"extractor": extractor, "dataset": dataset, **(extra or {})}
    np.savez(path, mu=mu.numpy(), sigma=sigma.numpy(), n=np.array(feats.shape[0]), meta=np.array(str(meta)))


def load_stats(path: str, *, expected_dim: int | None = None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """mu, sigma from a cached ``.npz`` or an ADM reference batch (keys ``mu`` / ``sigma``)."""
    with np.load(path, allow_pickle=False) as data:
        if "mu" not in data or "sigma" not in data:
            raise KeyError(f"{path} has no mu/sigma statistics (keys: {list(data.keys())})")
        mu, sigma = torch.from_numpy(data["mu"]).double(), torch.from_numpy(data["sigma"]).double()
        info = {"n": int(data["n"])} if "n" in data else {}
        if "meta" in data:
            info["meta"] = str(data["meta"])
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {tuple(mu.shape)} / sigma {tuple(sigma.shape)} are not a (d,) / (d, d) pair")
    if expected_dim is not None and mu.shape[0] != expected_dim:
        raise ValueError(f"{path} holds {mu.shape[0]}-d statistics but the extractor gives {expected_dim}-d features; "
                         f"reference statistics must come from the same extractor")
    return mu, sigma, info
