"""Speculative Jacobi Decoding (Teng et al. 2024, algorithms.md section 7) for any generator whose
one pass gives logits for a causal window and whose decode state rolls back.

Each pass feeds the last accepted token and the W - 1 drafts that follow it, and gets the target
distributions p of the W positions. Drafts are verified left to right with the exact rule of
:mod:`argen.samplers.acceptance` (accept with min(1, p/q); on the first rejection resample from
``normalise(max(0, p - q))``); when every draft passes, the last position's p gives one more token.
The state is truncated to the accepted prefix, and the positions still undecided are re-drafted from
this pass's p (the Jacobi iteration: q becomes that p), the window refilled with random tokens
(one-hot q, SJD's ``random`` init) or with the token one row above (``row``, SJD's
``repeat_horizon``).

``window`` counts the positions a pass can decide (W - 1 drafts + 1), so ``window=1`` is ancestral
sampling, token for token under the same seeds; SJD's 16 drafts are ``window=17``.
SJD is the speculative loop (:mod:`argen.samplers.speculative`) with Jacobi re-drafts as its draft
source (:class:`~argen.samplers.drafts.JacobiDrafts`): rows advance by their own accepted prefixes and
finished rows take the next sample (continuous batching). The residual is resampled exactly, without
re-applying top-k/top-p to it (SJD re-applies the warper, which is not lossless with top-p).
"""

from __future__ import annotations

from typing import Any

from argen.samplers.drafts import JacobiDrafts
from argen.samplers.speculative import SpeculativeLoop


class JacobiSampler(SpeculativeLoop):
    """window: positions decided per pass at most (>= 1); init: ``random`` | ``row`` (copy the token
    one grid row above, random where there is none); temperature / top_k / top_p / cfg_scale /
    cfg_schedule: as :class:`~argen.samplers.ancestral.AncestralSampler`.
    acceptance: ``exact`` (SJD, lossless) or ``lantern`` (LANTERN's relaxed rule, SJD + LANTERN):
    each draft x is verified against its relaxed target p~ (the mass of x's latent proximity set,
    among its ``lantern_k`` nearest codes and at most ``lantern_delta``, moved onto x; see
    :func:`~argen.samplers.acceptance.lantern_target`), so every step is within TVD delta of p.
    LANTERN needs the tokenizer's codebook (:meth:`attach_tokenizer`; argen-sample does it); the
    neighbour table is cached in ``neighbours_cache`` when set."""

    names = ("sjd", "lantern_jacobi")

    def __init__(self, *, window: int = 17, init: str = "random", **policy_and_acceptance: Any) -> None:
        super().__init__(source=JacobiDrafts(window=window, init=init), **policy_and_acceptance)

    @property
    def window(self) -> int:
        return self.source.window  # type: ignore[attr-defined]
