"""Verification of a draft window against the target, shared by every speculative sampler (Jacobi
drafts, drafter chains): the acceptance rule of :mod:`argen.samplers.acceptance` (exact, or
LANTERN's relaxed target), the leading accepted drafts, and the token that follows them (resampled
at the first rejection, or the bonus token from the position after the last draft)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from argen.samplers.acceptance import (
    accept_exact,
    accepted_length,
    lantern_relax,
    lantern_target,
    load_neighbours,
    neighbour_transport,
    residual,
)
from argen.samplers.random import RowRandom


@dataclass
class Verdict:
    """accepted: (B,) leading drafts accepted; token: (B,) the next token after them."""

    accepted: Tensor
    token: Tensor


class Verifier:
    """acceptance: ``exact`` (lossless: accept x ~ q with min(1, p(x)/q(x)), resample the residual)
    or ``lantern`` (relaxed, every step within TVD ``lantern_delta`` of p, mass moved only between
    latent neighbours: x's ``lantern_k`` nearest codes). LANTERN's own rule needs candidate drafts
    (q one-hot on x: SJD's random drafts, greedy drafter chains, tokens already decided): x is accepted
    with p~(x) = p(x) + p(A), A its latent proximity set of mass <= delta, else the token comes from p
    without x and A, so the step outputs exactly p~. Drafts sampled from a proposal q (Jacobi's
    re-drafts, sampled drafter chains) are verified with the exact rule against
    :func:`~argen.samplers.acceptance.neighbour_transport`'s draft-independent p^ instead: LANTERN's
    p~ with the sampled q would break the delta bound (tests/unit/test_acceptance.py), and treating
    them as candidates would accept less than exact acceptance. At delta = 0 both are exact
    acceptance, token for token. LANTERN needs the tokenizer's codebook (:meth:`attach_tokenizer`);
    the neighbour table is cached in ``neighbours_cache`` when set. Records the TVD of every verified
    position."""

    def __init__(self, *, acceptance: str = "exact", lantern_k: int = 1000, lantern_delta: float = 0.1,
                 neighbours_cache: str | None = None) -> None:
        if acceptance not in ("exact", "lantern"):
            raise ValueError(f"acceptance must be 'exact' or 'lantern', got {acceptance!r}")
        if lantern_delta < 0 or lantern_k < 1:
            raise ValueError(f"need lantern_k >= 1 and lantern_delta >= 0, got {lantern_k}, {lantern_delta}")
        self.acceptance, self.lantern_k, self.lantern_delta = acceptance, lantern_k, lantern_delta
        self.neighbours_cache = neighbours_cache
        self.neighbours: Tensor | None = None
        self.tvd: list[Tensor] = []

    @property
    def relaxed(self) -> bool:
        return self.acceptance == "lantern"

    def settings(self) -> dict[str, object]:
        return {"k": self.lantern_k, "delta": self.lantern_delta} if self.relaxed else {}

    def attach_tokenizer(self, tokenizer: object) -> None:
        """LANTERN's latent proximity: the k-nearest-code table of the tokenizer's codebook."""
        if not self.relaxed:
            return
        codebook = tokenizer.codebook()  # type: ignore[attr-defined]
        k = min(self.lantern_k, codebook.shape[0] - 1)
        self.neighbours = load_neighbours(codebook, k, self.neighbours_cache)

    def begin(self, vocab: int) -> None:
        """Check the rule can verify a generator predicting ``vocab`` codes; reset the TVD record."""
        self.tvd = []
        if self.relaxed and self.neighbours is None:
            raise RuntimeError("LANTERN acceptance needs the tokenizer's codebook: call sampler.attach_tokenizer("
                               "tokenizer) first (argen-sample does)")
        if self.neighbours is not None and int(self.neighbours.shape[0]) != vocab:
            raise ValueError(f"the LANTERN neighbour table covers {self.neighbours.shape[0]} codes but the generator "
                             f"predicts {vocab}: it was built for another tokenizer")

    def __call__(self, p: Tensor, drafts: Tensor, q: Tensor, rng: RowRandom, counts: Tensor | None = None) -> Verdict:
        """p: (B, D + 1, V) target distributions at the D draft positions and the one after; drafts:
        (B, D); q: (B, D, V) the distributions the drafts were drawn from; counts: (B,) drafts each row
        really has (default D; a row's drafts past its count are ignored, and its next token comes from
        p at index counts[b]). Draws D uniforms (none when D = 0), then one categorical, whatever the
        counts: a row's stream does not depend on its batch-mates."""
        b, d = drafts.shape
        device = p.device
        rows = torch.arange(b, device=device)
        counts = torch.full((b,), d, dtype=torch.long, device=device) if counts is None else counts.to(device)
        if d == 0:
            return Verdict(accepted=torch.zeros(b, dtype=torch.long, device=device),
                           token=rng.categorical(p[:, :1])[:, 0])
        target, moved = self._target(p[:, :d], drafts, q)
        q_draft = q.gather(-1, drafts[..., None])[..., 0]
        p_draft = target.gather(-1, drafts[..., None])[..., 0]
        uniform = rng.uniform(d, device=device)
        accepted = torch.minimum(accepted_length(accept_exact(p_draft, q_draft, uniform)), counts)
        if moved is not None:  # TVD(p, p~) of every verified position
            j = torch.arange(d, device=device)[None]
            self.tvd.append(moved[(j <= accepted[:, None]) & (j < counts[:, None])])
        # the residual of the first rejected position, or p after the last draft when all passed
        at = accepted.clamp_max(d - 1)
        nxt = torch.where((accepted < counts)[:, None], residual(target[rows, at], q[rows, at]), p[rows, accepted])
        return Verdict(accepted=accepted, token=rng.categorical(nxt[:, None])[:, 0])

    def _target(self, target: Tensor, drafts: Tensor, q: Tensor) -> tuple[Tensor, Tensor | None]:
        """The distributions drafts are verified against (p, or LANTERN's relaxation of it; see the class
        docstring) and the mass each position moved (None for exact acceptance)."""
        if self.neighbours is None:
            return target, None
        candidate = q.gather(-1, drafts[..., None])[..., 0] >= 1.0  # (B, d): one-hot proposals
        relaxed = lantern_relax(target, drafts, self.neighbours, self.lantern_delta)
        moved = relaxed.mass
        relaxed_target = lantern_target(target, drafts, self.neighbours, relaxed)
        if not bool(candidate.all()):
            p_hat, transported = neighbour_transport(target, q, self.neighbours, self.lantern_delta)
            relaxed_target = torch.where(candidate[..., None], relaxed_target, p_hat)
            moved = torch.where(candidate, moved, transported)
        return relaxed_target, moved

    def stats(self) -> dict[str, float]:
        """max_tvd / mean_tvd over the verified positions since :meth:`begin` (LANTERN only)."""
        if not self.tvd:
            return {}
        tvd = torch.cat(self.tvd)
        if not tvd.numel():
            return {"max_tvd": 0.0, "mean_tvd": 0.0}
        return {"max_tvd": float(tvd.max()), "mean_tvd": float(tvd.mean())}
