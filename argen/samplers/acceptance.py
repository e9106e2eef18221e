"""Acceptance rules of speculative decoding, as pure functions (algorithms.md sections 7 and 8).

Exact speculative acceptance (Leviathan et al. 2023; Chen et al. 2023; SJD, Teng et al. 2024):
a draft x drawn from q is accepted with probability ``min(1, p(x) / q(x))``; on the first
rejection the position is resampled from ``normalise(max(0, p - q))``. The output is then
distributed exactly as p. For SJD's random drafts q is one-hot on the drawn token, so the
acceptance probability is p(x) and the residual is p with x removed.

LANTERN (Jang et al. 2024, sec. 8.3): for a draft x, the latent proximity set A is the largest
prefix of x's k nearest codes (by codebook distance) whose target mass stays <= delta (or
<= (delta - 1) p(x) for the relative bound, delta > 1). The relaxed target moves A's mass onto x,
so ``p~(x) = p(x) + p(A)`` and ``TVD(p, p~) = p(A) <= delta``. As in the reference code the draft is
a candidate (q = 1): it is accepted with p~(x); on rejection the reference removes x and, when A is
not empty, its k nearest codes from p before resampling (:func:`lantern_residual`); the samplers
remove x and A only, which makes the step's output exactly p~ (:func:`lantern_target`). p~ depends
on the draft, so the rule is only sound for candidates: with a sampled q in min(1, p~(x) / q(x)) every
code the drafter favours borrows its neighbours' mass at once and the output drifts far past delta.
For sampled drafts, :func:`neighbour_transport` builds a draft-independent relaxed target instead
(same neighbours, same delta), verified with the exact rule.

Probabilities here are after guidance and the logits processors (temperature, top-k, top-p), as
in both references.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


# ---- exact speculative acceptance ---------------------------------------------------------------
def accept_exact(p_draft: Tensor, q_draft: Tensor, uniform: Tensor) -> Tensor:
    """Per-position acceptance (B, W) bool: ``u < p(x) / q(x)``, i.e. probability min(1, p/q).
    p_draft, q_draft: target / draft probability of each drafted token (B, W); uniform: U(0, 1)."""
    return uniform * q_draft < p_draft


def accepted_length(accepted: Tensor) -> Tensor:
    """(B, W) bool -> (B,) number of leading accepted positions (verification stops at the first
    rejection)."""
    return accepted.long().cumprod(dim=-1).sum(dim=-1)


def residual(p: Tensor, q: Tensor) -> Tensor:
    """``normalise(max(0, p - q))`` over the last axis: where a rejected position is resampled from.
    Where p == q (nothing left) it returns p, which is then the correct distribution anyway."""
    r = (p - q).clamp_min(0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


def one_hot_probs(tokens: Tensor, vocab_size: int) -> Tensor:
    """The draft distribution of tokens drawn deterministically (SJD's random or copied drafts)."""
    return torch.nn.functional.one_hot(tokens, vocab_size).to(torch.float32)


# ---- LANTERN's relaxed acceptance ---------------------------------------------------------------
@dataclass
class Relaxed:
    """probability: p~(x) (B, W); mass: p(A) moved onto x (the TVD of this step); size: |A|."""

    probability: Tensor
    mass: Tensor
    size: Tensor


def lantern_relax(p: Tensor, draft: Tensor, neighbours: Tensor, delta: float) -> Relaxed:
    """p: (B, W, V) target probabilities at the draft positions; draft: (B, W) tokens; neighbours:
    (V, k) nearest codes of each code, closest first (:func:`neighbour_table`). delta <= 1 bounds
    p(A) absolutely, delta > 1 relatively (p(A) <= (delta - 1) p(x), LANTERN++'s lambda)."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    near = neighbours.to(draft.device)[draft]  # (B, W, k)
    p_near = p.gather(-1, near)  # (B, W, k), closest first
    cumulative = p_near.cumsum(-1)
    p_x = p.gather(-1, draft[..., None])[..., 0]  # (B, W)
    bound = torch.full_like(p_x, delta) if delta <= 1 else (delta - 1) * p_x
    # cumulative mass is non-decreasing, so the largest prefix within the bound is a count
    size = (cumulative <= bound[..., None]).long().sum(-1)  # (B, W)
    mass = torch.where(size > 0, cumulative.gather(-1, (size - 1).clamp_min(0)[..., None])[..., 0],
                       torch.zeros_like(p_x))
    return Relaxed(probability=p_x + mass, mass=mass, size=size)


def lantern_target(p: Tensor, draft: Tensor, neighbours: Tensor, relaxed: Relaxed) -> Tensor:
    """The relaxed target p~ (B, W, V) of each draft: p with the proximity set's mass moved onto x.
    ``TVD(p, p~) = relaxed.mass``. Verifying the draft as a candidate (q one-hot on x) against p~ with
    the exact rule (accept with p~(x), resample ``max(0, p~ - q)`` = p without x and A) is LANTERN's
    rule, and the step's output is then exactly p~. With a sampled proposal q in min(1, p~(x) / q(x))
    the output is not p~: p~ depends on the draft, and the total TVD can exceed delta."""
    k = neighbours.shape[1]
    near = neighbours.to(draft.device)[draft]  # (B, W, k)
    in_set = torch.arange(k, device=draft.device) < relaxed.size[..., None]
    moved = torch.zeros_like(p).scatter_add(-1, near, torch.where(in_set, p.gather(-1, near), 0.0))
    target = p - moved
    return target.scatter_add(-1, draft[..., None], relaxed.mass[..., None].to(p.dtype))


def neighbour_transport(p: Tensor, q: Tensor, neighbours: Tensor, delta: float,
                        max_codes: int = 16) -> tuple[Tensor, Tensor]:
    """A relaxed target for drafts *sampled* from q (B, W, V), where LANTERN's candidate rule would
    waste q: p^ moves target mass between latent neighbours only, from codes where p > q (surplus) to
    codes where q > p (deficit), at most ``delta`` in all (delta > 1: at most (delta - 1) p(x) onto
    each x). The ``max_codes`` codes with the largest deficit each ask their k nearest codes for up
    to q(x) - p(x), in proportion to the neighbours' surplus; a code asked for more than its surplus
    scales its grants down. p^ does not depend on the draft, so the exact rule against it
    (min(1, p^(x) / q(x)), residual ``max(0, p^ - q)``) outputs exactly p^, with
    ``TVD(p, p^) = moved <= delta``, and accepts ``sum min(p^, q) = sum min(p, q) + moved``: never
    less than exact acceptance, equal to it at delta = 0. Returns (p^ (B, W, V), moved (B, W)).
    This is argen's extension of LANTERN (whose relaxation is defined for candidate drafts, q = 1)
    to sampled proposals."""
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    nb = neighbours.to(p.device)
    k = nb.shape[1]
    lead = p.shape[:-1]
    surplus, deficit = (p - q).clamp_min(0), (q - p).clamp_min(0)
    need, codes = deficit.topk(min(max_codes, p.shape[-1]), dim=-1)  # (B, W, m) the largest deficits
    near = nb[codes].reshape(*lead, -1)  # (B, W, m * k) their neighbours
    s_near = surplus.gather(-1, near).reshape(*codes.shape, k)  # (B, W, m, k)
    available = s_near.sum(-1)  # (B, W, m)
    want = torch.minimum(need, available)
    if delta > 1:
        want = torch.minimum(want, (delta - 1) * p.gather(-1, codes))
    request = s_near * (want / available.clamp_min(1e-30))[..., None]  # (B, W, m, k)
    asked = torch.zeros_like(p).scatter_add_(-1, near, request.reshape(*lead, -1))
    grant = (surplus / asked.clamp_min(1e-30)).clamp_max(1.0)  # per giving code
    granted = request * grant.gather(-1, near).reshape(request.shape)
    inflow = torch.zeros_like(p).scatter_add_(-1, codes, granted.sum(-1))
    outflow = torch.zeros_like(p).scatter_add_(-1, near, granted.reshape(*lead, -1))
    moved = inflow.sum(-1)  # (B, W)
    if delta <= 1:
        scale = (delta / moved.clamp_min(1e-30)).clamp_max(1.0)[..., None]
        inflow, outflow = inflow * scale, outflow * scale
        moved = torch.minimum(moved * scale[..., 0], torch.full_like(moved, delta))  # float rounding
    return (p + inflow - outflow).clamp_min(0), moved


def accept_lantern(relaxed: Relaxed, uniform: Tensor) -> Tensor:
    """(B, W) bool: accept x with probability p~(x) (the draft is q = one-hot on x)."""
    return uniform < relaxed.probability


def lantern_residual(p: Tensor, draft: Tensor, neighbours: Tensor, relaxed: Relaxed) -> Tensor:
    """The distribution a rejected position is resampled from: p without x and, where A was not
    empty, without x's k nearest codes (LANTERN's reference code), renormalised. p: (B, W, V).
    The samplers resample ``residual(p~, one_hot(x))`` instead (:func:`lantern_target`): that removes
    x and A only, so the step's output is exactly p~ (within TVD delta of p); this function documents,
    and tests pin, the reference's stricter variant for comparison."""
    keep = torch.ones_like(p, dtype=torch.bool)
    keep.scatter_(-1, draft[..., None], False)
    near = neighbours.to(draft.device)[draft]  # (B, W, k)
    drop_near = (relaxed.size > 0)[..., None].expand_as(near)
    keep.scatter_(-1, near, ~drop_near & keep.gather(-1, near))
    r = torch.where(keep, p, torch.zeros_like(p))
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp_min(1e-30), p)


# ---- latent proximity: the neighbour table ------------------------------------------------------
def codebook_sha256(codebook: Tensor) -> str:
    return hashlib.sha256(codebook.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def neighbour_table(codebook: Tensor, k: int, *, chunk: int = 4096) -> Tensor:
    """(V, D) code vectors -> (V, k) int64: each code's k nearest other codes in L2, closest first
    (the diagonal is excluded, as LANTERN's ``generate_codebook``)."""
    v = codebook.shape[0]
    if not 1 <= k < v:
        raise ValueError(f"k must be in [1, {v - 1}] for a codebook of {v} codes, got {k}")
    codes = codebook.detach().float()
    rows = []
    for start in range(0, v, chunk):
        d = torch.cdist(codes[start:start + chunk], codes)  # (c, V)
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        rows.append(d.topk(k, dim=-1, largest=False).indices)
    return torch.cat(rows)


def load_neighbours(codebook: Tensor, k: int, cache_dir: str | Path | None = None) -> Tensor:
    """The k-neighbour table of ``codebook``, built once and cached as safetensors in ``cache_dir``
    (named by the codebook's sha256, so a table is never reused for another tokenizer). A cached table
    with fewer than k neighbours per code is rebuilt with k (the larger one serves every smaller k)."""
    from safetensors import safe_open
    from tokenizers_vq.io import save_safetensors

    sha = codebook_sha256(codebook)
    if cache_dir is None:
        return neighbour_table(codebook, k)
    path = Path(cache_dir) / f"neighbours_{sha[:16]}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            table = f.get_tensor("neighbours")
        check_neighbours(meta, sha, path)
        if table.shape[1] >= k:
            return table[:, :k].long()
    table = neighbour_table(codebook, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_safetensors({"neighbours": table.to(torch.int32).contiguous()}, tmp,
                     metadata={"codebook_sha256": sha, "k": str(k)})
    tmp.replace(path)
    return table


def check_neighbours(meta: dict[str, str], sha: str, path: Path | str) -> None:
    if meta.get("codebook_sha256") != sha:
        raise ValueError(f"neighbour table {path} was built for another tokenizer (codebook sha256 "
                         f"{str(meta.get('codebook_sha256'))[:12]}…, this one {sha[:12]}…); delete it or point "
                         f"the cache elsewhere")
