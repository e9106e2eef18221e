"""Tokenizer reconstruction quality on held-out images: PSNR, SSIM, codebook usage (discrete tokenizers) or
latent statistics (continuous ones)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.utils import make_grid, save_image

from argen.core.progress import progress as progress_bar
from argen.data.base import collate_samples
from tokenizers_vq.metrics import psnr, ssim


@dataclass
class ReconstructionReport:
    """psnr / ssim: means over images (dB / [0,1]); codebook_usage: fraction of the V codes used at
    least once over the whole set; perplexity: exp(entropy) of the code histogram; n: images;
    per_scale: for a scale-residual tokenizer, the same usage / perplexity per scale (coarse to fine).

    Synonyms (one-grid tokenizers): ``flat_tokens`` is the fraction of tokens whose f x f patch is one flat
    colour (the background of a shapes scene, an object's interior) and ``flat_code_entropy`` the entropy
    in nats of their codes given that colour, H(code | colour): 0 when identical patches get one code.
    A generator pays it on every such token it predicts, so it bounds how low the generator's loss can go
    (issue 14: the quick start's tokenizer spent 6.35 nats on a grey background patch, 874 codes for it).
    ``flat_codes`` counts the distinct codes of the most common flat colour.

    Continuous tokenizers (``layout.vocab_size`` None) have no codes: the code fields are None and
    ``latent_mean`` / ``latent_std`` are the statistics of what ``encode`` returns (scaled latents: a std near 1
    means the scale factor does its job) with ``scaling_factor`` the tokenizer's."""

    psnr: float
    ssim: float
    codebook_usage: float | None
    perplexity: float | None
    num_images: int
    vocab_size: int | None
    tokens_per_image: int
    per_scale: list[dict[str, Any]] | None = None
    flat_tokens: float | None = None
    flat_code_entropy: float | None = None
    flat_codes: int | None = None
    latent_mean: float | None = None
    latent_std: float | None = None
    scaling_factor: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate_reconstruction(tokenizer: Any, dataset: Dataset, *, batch_size: int = 128,
                            device: str | torch.device = "cpu", progress: bool = True) -> ReconstructionReport:
    """Encode then decode every image of ``dataset`` (the round trip a generator's samples take)."""
    tokenizer = tokenizer.to(device).eval()
    layout = tokenizer.layout
    discrete = layout.vocab_size is not None
    vocab = int(layout.vocab_size) if discrete else 0
    # discrete: position -> scale (one group for a grid or sequence); per-scale histograms (K, V)
    groups = torch.cat([torch.full((h * w,), k) for k, (h, w) in enumerate(layout.shapes)])
    counts = torch.zeros(len(layout.shapes), vocab, dtype=torch.float64)
    moments = torch.zeros(3, dtype=torch.float64)  # continuous: sum, sum of squares, count of the latents
    psnr_sum = ssim_sum = 0.0
    n = 0
    synonyms = FlatPatchCodes(vocab) if discrete and layout.kind == "grid" and len(layout.shapes) == 1 else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    for batch in progress_bar(loader, desc="reconstruction eval", unit="batch", enabled=progress, leave=False):
        if "image" not in batch:
            continue
        images = batch["image"].to(device)
        tokens = tokenizer.encode(images)  # (B, L) codes or (B, L, C) scaled latents
        seeds = torch.arange(n, n + images.shape[0])  # a stochastic decoder (FlexTok): image i draws from seed i
        recon = tokenizer.decode(tokens, seeds).clamp(-1, 1)
        if discrete:
            flat = (groups[None] * vocab + tokens.cpu()).flatten()
            counts += torch.bincount(flat, minlength=counts.numel()).double().view_as(counts)
        else:
            z = tokens.double().cpu()
            moments += torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(float(z.numel()), dtype=torch.float64)])
        if synonyms is not None:
            synonyms.add(images.cpu(), tokens.cpu().view(-1, *layout.shapes[0]))
        psnr_sum += float(psnr(recon, images).sum())
        ssim_sum += float(ssim(recon, images).sum())
        n += images.shape[0]
    if n == 0:
        raise ValueError("no readable images to evaluate")
    common = {"psnr": psnr_sum / n, "ssim": ssim_sum / n, "num_images": n, "tokens_per_image": layout.length}
    if not discrete:
        mean = float(moments[0] / moments[2])
        factor = getattr(tokenizer, "scaling_factor", None)
        return ReconstructionReport(**common, codebook_usage=None, perplexity=None, vocab_size=None,
                                    latent_mean=mean, latent_std=float((moments[1] / moments[2] - mean * mean) ** 0.5),
                                    scaling_factor=None if factor is None else float(factor))
    total = counts.sum(0)
    per_scale = None
    if layout.kind == "scales":
        per_scale = [{"scale": f"{h}x{w}", "codebook_usage": float((c > 0).double().mean()),
                      "perplexity": _perplexity(c)} for (h, w), c in zip(layout.shapes, counts)]
    return ReconstructionReport(**common, codebook_usage=float((total > 0).double().mean()),
                                perplexity=_perplexity(total), vocab_size=vocab, per_scale=per_scale,
                                **(synonyms.summary() if synonyms is not None else {}))


class FlatPatchCodes:
    """Counts (flat colour, code) pairs over the tokens whose patch is one colour (see ReconstructionReport)."""

    def __init__(self, vocab: int, tolerance: int = 1) -> None:
        self.vocab, self.tolerance = vocab, tolerance
        self.pairs: dict[int, int] = {}
        self.tokens = 0

    def add(self, images: torch.Tensor, tokens: torch.Tensor) -> None:
        """images (B, 3, H, W) in [-1, 1]; tokens (B, h, w) of the patches H/h x W/w."""
        b, h, w = tokens.shape
        fy, fx = images.shape[-2] // h, images.shape[-1] // w
        levels = ((images.clamp(-1, 1) + 1) * 127.5).round().long()  # 0..255
        patches = levels.view(b, 3, h, fy, w, fx)
        lo, hi = patches.amin(dim=(3, 5)), patches.amax(dim=(3, 5))  # (B, 3, h, w)
        flat = ((hi - lo) <= self.tolerance).all(dim=1)  # (B, h, w)
        colour = patches.float().mean(dim=(3, 5)).round().long()  # (B, 3, h, w)
        key = (colour[:, 0] * 65536 + colour[:, 1] * 256 + colour[:, 2])[flat]
        pair, count = torch.unique(key * self.vocab + tokens[flat].long(), return_counts=True)
        for p, c in zip(pair.tolist(), count.tolist()):
            self.pairs[p] = self.pairs.get(p, 0) + c
        self.tokens += b * h * w

    def summary(self) -> dict[str, Any]:
        by_colour: dict[int, list[int]] = {}
        for p, c in self.pairs.items():
            by_colour.setdefault(p // self.vocab, []).append(c)
        total = sum(sum(v) for v in by_colour.values())
        if total == 0:
            return {"flat_tokens": 0.0, "flat_code_entropy": None, "flat_codes": None}
        entropy = 0.0
        for counts in by_colour.values():
            c = torch.tensor(counts, dtype=torch.float64)
            q = c / c.sum()
            entropy += float(c.sum() / total * -(q * q.log()).sum())
        top = max(by_colour.values(), key=sum)
        return {"flat_tokens": total / max(self.tokens, 1), "flat_code_entropy": entropy, "flat_codes": len(top)}


def _perplexity(counts: torch.Tensor) -> float:
    probs = counts[counts > 0] / counts.sum()
    return float(torch.exp(-(probs * probs.log()).sum()))


@torch.no_grad()
def save_reconstruction_grid(tokenizer: Any, images: torch.Tensor, path: str | Path, *, nrow: int = 8) -> Path:
    """Rows of originals interleaved with rows of their reconstructions, as one PNG."""
    device = next(tokenizer.parameters()).device
    images = images.to(device)
    recon = tokenizer.decode(tokenizer.encode(images), torch.arange(len(images))).clamp(-1, 1)
    rows = []
    for start in range(0, len(images), nrow):
        rows += [images[start:start + nrow], recon[start:start + nrow]]
    grid = make_grid(torch.cat(rows).cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path
