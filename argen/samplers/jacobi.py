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
Deliberate difference from SJD: rows of a batch advance together by the shortest accepted prefix
(any prefix of verified tokens is a valid sample, so this stays lossless; the other rows re-verify
their later drafts in the next pass), because the KV cache keeps one length per batch. The residual
is resampled exactly, without re-applying top-k/top-p to it (SJD re-applies the warper, which is
not lossless with top-p).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from argen.core import Condition, Requirements, SampleResult, SamplingStats
from argen.samplers.acceptance import one_hot_probs
from argen.samplers.common import begin, finish, guided_probs, processing_settings
from argen.samplers.guidance import Guidance
from argen.samplers.logits import LogitsProcessor
from argen.samplers.random import RowRandom
from argen.samplers.verify import Verifier


class JacobiSampler:
    """window: positions decided per pass at most (>= 1); init: ``random`` | ``row`` (copy the token
    one grid row above, random where there is none); temperature / top_k / top_p / cfg_scale /
    cfg_schedule: as :class:`~argen.samplers.ancestral.AncestralSampler`.
    acceptance: ``exact`` (SJD, lossless) or ``lantern`` (LANTERN's relaxed rule, SJD + LANTERN):
    each draft x is verified against its relaxed target p~ (the mass of x's latent proximity set,
    among its ``lantern_k`` nearest codes and at most ``lantern_delta``, moved onto x; see
    :func:`~argen.samplers.acceptance.lantern_target`), so every step is within TVD delta of p.
    LANTERN needs the tokenizer's codebook (:meth:`attach_tokenizer`; argen-sample does it); the
    neighbour table is cached in ``neighbours_cache`` when set."""

    requires = Requirements(discrete=True, causal_window=True, rollback=True)

    def __init__(self, *, window: int = 17, init: str = "random", temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, cfg_scale: float = 1.0, cfg_schedule: str = "constant",
                 acceptance: str = "exact", lantern_k: int = 1000, lantern_delta: float = 0.1,
                 neighbours_cache: str | None = None) -> None:
        self.verifier = Verifier(acceptance=acceptance, lantern_k=lantern_k, lantern_delta=lantern_delta,
                                 neighbours_cache=neighbours_cache)
        if window < 1:
            raise ValueError(f"window must be >= 1 (1 = ancestral sampling), got {window}")
        if init not in ("random", "row"):
            raise ValueError(f"init must be 'random' or 'row', got {init!r}")
        self.window, self.init = window, init
        self.processor = LogitsProcessor(temperature=temperature, top_k=top_k, top_p=top_p)
        self.guidance = Guidance(scale=cfg_scale, schedule=cfg_schedule)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "lantern_jacobi" if self.verifier.relaxed else "sjd"

    def settings(self) -> dict[str, object]:
        return {"sampler": self.name, "window": self.window, "init": self.init, **processing_settings(self),
                **self.verifier.settings()}

    def attach_tokenizer(self, tokenizer: object) -> None:
        """LANTERN's latent proximity comes from the tokenizer's codebook (see :class:`Verifier`)."""
        self.verifier.attach_tokenizer(tokenizer)

    def _fresh_drafts(self, rng: RowRandom, tokens: Tensor, positions: Tensor, vocab: int,
                      width: int | None) -> Tensor:
        """Write draft tokens for ``positions`` (consecutive, none proposed yet) into ``tokens`` and
        return them (B, F). ``row`` copies the token one grid row above (decided, or drafted, possibly
        earlier in this same refill); random where there is none."""
        device = tokens.device
        drafts = rng.randint(vocab, len(positions), device=device)
        for j, pos in enumerate(positions.tolist()):
            if self.init == "row" and width is not None and pos >= width:
                drafts[:, j] = tokens[:, pos - width]
            tokens[:, pos] = drafts[:, j]
        return drafts

    @torch.no_grad()
    def sample(self, generator: object, cond: Condition, *, seeds: Tensor) -> SampleResult:
        start_time = time.perf_counter()
        rng, device, state = begin(self, generator, cond, seeds)
        layout = generator.layout  # type: ignore[attr-defined]
        length, vocab = layout.length, int(layout.vocab_size)
        width = layout.shapes[0][1] if layout.kind == "grid" else None
        b = len(cond)
        tokens = torch.zeros(b, length, dtype=torch.long, device=device)  # decided, then drafted
        q = torch.zeros(b, 0, vocab, device=device)  # draft distributions of positions n .. n + len(q) - 1
        stats = SamplingStats()
        self.verifier.begin(vocab)
        n = 0
        while n < length:
            w = min(self.window, length - n)
            have = q.shape[1]
            if have < w - 1:  # refill the window with fresh drafts (one-hot proposals)
                new = torch.arange(n + have, n + w - 1)
                q = torch.cat([q, one_hot_probs(self._fresh_drafts(rng, tokens, new, vocab, width), vocab)], dim=1)
            q = q[:, : w - 1]
            fed = torch.arange(max(n - 1, 0), n + w - 1)
            feed = tokens[:, fed.to(device)]
            if self.guidance.active:
                feed = torch.cat([feed, feed])
            query = torch.arange(n, n + w)
            out = generator.step(state, feed, fed, query)  # type: ignore[attr-defined]
            p = guided_probs(self, out.logits, query, length)  # (B, w, V)
            stats.forward_passes += 1
            verdict = self.verifier(p, tokens[:, n:n + w - 1], q, rng)
            accepted, extra = verdict.accepted, verdict.token
            rows = torch.arange(b, device=device)
            advance = int(accepted.min()) + 1  # rows move together (see the module docstring)
            keep_extra = accepted + 1 == advance  # rows whose last kept token is the sampled one
            last = n + advance - 1
            tokens[rows[keep_extra], last] = extra[keep_extra]
            n += advance
            stats.tokens += advance
            if n >= length:
                break
            state.truncate(n - 1)
            # Jacobi update: undecided positions of this window are re-drafted from this pass's p
            rest = torch.arange(advance, w)  # window indices still undecided
            if len(rest):
                redraft = rng.categorical(p[:, rest.to(device)])
                tokens[:, (n + torch.arange(len(rest))).to(device)] = redraft
                q = p[:, rest.to(device)]
            else:
                q = torch.zeros(b, 0, vocab, device=device)
        stats.extra.update(self.verifier.stats())
        return SampleResult(tokens=tokens, stats=finish(stats, start_time, device))
