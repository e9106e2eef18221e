"""Draft sources of the speculative loop (:class:`~argen.samplers.speculative.SpeculativeSampler`): each
proposes, per row, up to ``width`` tokens for the positions after the row's decided ones, with the
distributions they were drawn from, and learns from the verified pass.

* :class:`JacobiDrafts`: Speculative Jacobi Decoding (Teng et al. 2024, algorithms.md section 7): the
  positions a pass left undecided are re-drafted from that pass's p (the Jacobi iteration: q becomes p),
  the rest of the window from fresh random tokens (one-hot q, SJD's ``random`` init) or the token one
  grid row above (``row``, SJD's ``repeat_horizon``).
* :class:`DrafterDrafts`: an EAGLE-style drafter (:class:`~argen.generators.drafter.EagleDrafter`)
  catches up on the target features of the tokens decided last round, then proposes a chain.

Every source draws the same random calls per round whatever its rows' state (their widths come from the
configuration), so a row's n-th round reads its n-th draws in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from argen.core import DecodeState, Generator, StepOutput
from argen.core.protocols import Drafter, bind
from argen.samplers.acceptance import one_hot_probs
from argen.samplers.batch import Flight
from argen.samplers.policy import DecodingPolicy
from tokenizers_vq.layout import TokenLayout


@dataclass
class Drafts:
    """tokens: (B, D) drafts (written into the flight's token rows too); q: (B, D, V) the distributions
    they were drawn from; counts: (B,) drafts each row really has (the rest is padding)."""

    tokens: Tensor
    q: Tensor
    counts: Tensor


def draft_counts(flight: Flight, width: int) -> Tensor:
    """(B,) drafts a row can have: ``width``, fewer near its end (the pass also scores the position after
    the last draft), none for idle rows."""
    return torch.where(flight.index >= 0, (flight.length - flight.n - 1).clamp(0, width), 0)


def draft_positions(flight: Flight, width: int) -> Tensor:
    """(B, width) layout positions n .. n + width - 1 of each row, clamped into the layout."""
    return (flight.n[:, None] + torch.arange(width)[None]).clamp_max(flight.length - 1)


class JacobiDrafts:
    """window: positions a pass can decide (window - 1 drafts + 1); init: ``random`` | ``row``."""

    def __init__(self, *, window: int = 17, init: str = "random") -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 (1 = ancestral sampling), got {window}")
        if init not in ("random", "row"):
            raise ValueError(f"init must be 'random' or 'row', got {init!r}")
        self.window, self.init = window, init
        self.width = window - 1
        self.q: Tensor | None = None  # (B, width, V) re-drafts of positions n .. n + have - 1
        self.have = torch.zeros(0, dtype=torch.long)

    def settings(self) -> dict[str, object]:
        return {"window": self.window, "init": self.init}

    def begin(self, flight: Flight, generator: Generator, policy: DecodingPolicy) -> None:
        self.vocab, self.grid_width = int(generator.layout.vocab_size), _grid_width(generator.layout)
        self.q = torch.zeros(flight.rows, self.width, self.vocab, device=flight.tokens.device)
        self.have = torch.zeros(flight.rows, dtype=torch.long)

    def restart(self, flight: Flight, rows: Tensor) -> None:
        self.have[rows] = 0

    def select(self, keep: Tensor, both: Tensor) -> None:
        assert self.q is not None
        self.q, self.have = self.q[keep.to(self.q.device)], self.have[keep]

    def propose(self, flight: Flight) -> Drafts:
        """Re-drafts first, then fresh drafts for the rest of each row's window."""
        assert self.q is not None
        counts, device = draft_counts(flight, self.width), flight.tokens.device
        if not self.width:
            return Drafts(flight.tokens[:, :0], self.q, counts)
        fresh = flight.rng.randint(self.vocab, self.width, device=device)  # drawn every round
        positions = draft_positions(flight, self.width).to(device)
        rows = torch.arange(flight.rows, device=device)
        for j in range(self.width):  # in order: ``row`` may copy a draft made earlier in this refill
            new = (j >= self.have).to(device) & (j < counts).to(device)
            pos = positions[:, j]
            token = fresh[:, j]
            if self.init == "row" and self.grid_width is not None:  # the layout's row above, along the chain
                lay = flight.layout(pos.cpu())
                above = flight.inverse_of((lay - self.grid_width).clamp_min(0)).to(device)
                token = torch.where((lay >= self.grid_width).to(device), flight.tokens[rows, above], token)
            flight.tokens[rows[new], pos[new]] = token[new]
            self.q[new, j] = one_hot_probs(token[new], self.vocab)
        return Drafts(flight.tokens.gather(1, positions), self.q, counts)

    def update(self, flight: Flight, out: StepOutput, p: Tensor, accepted: Tensor, counts: Tensor) -> None:
        """The window's undecided positions (after the accepted drafts and the token that followed them)
        become next round's drafts, drawn from this pass's p."""
        assert self.q is not None
        if not self.width:
            return
        device = p.device
        redraft = flight.rng.categorical(p)  # (B, width + 1), drawn every round
        a = accepted.to(device)
        index = (a[:, None] + 1 + torch.arange(self.width, device=device)[None]).clamp_max(self.width)
        self.q = p.gather(1, index[..., None].expand(-1, -1, p.shape[-1]))
        self.have = (counts - accepted.cpu() - 1).clamp_min(0)
        start = flight.n + accepted.cpu() + 1  # the first position after the one just decided
        positions = (start[:, None] + torch.arange(self.width)[None]).clamp_max(flight.length - 1).to(device)
        keep = (torch.arange(self.width)[None] < self.have[:, None]).to(device)
        values = torch.where(keep, redraft.gather(1, index), flight.tokens.gather(1, positions))
        flight.tokens.scatter_(1, positions, values)


def _grid_width(layout: TokenLayout) -> int | None:
    return int(layout.shapes[0][1]) if layout.kind == "grid" else None


class DrafterDrafts:
    """drafter: the EAGLE-style drafter; draft_len: drafts per pass; draft: ``sample`` (from q, verified
    with min(1, p/q)) | ``greedy`` (q's argmax as a candidate, q one-hot: EAGLE's and LANTERN's chain)."""

    def __init__(self, *, drafter: Drafter, draft_len: int = 4, draft: str = "sample") -> None:
        if not isinstance(drafter, Drafter):
            raise TypeError(f"a drafter draft source needs a drafter (argen.core.protocols.Drafter: an exported "
                            f"EAGLE drafter, sampler.drafter=<folder>); got {type(drafter).__name__}")
        if draft_len < 0:
            raise ValueError(f"draft_len must be >= 0 (0 = ancestral sampling), got {draft_len}")
        if draft not in ("sample", "greedy"):
            raise ValueError(f"draft must be 'sample' or 'greedy', got {draft!r}")
        self.drafter, self.width, self.draft = drafter, draft_len, draft
        self.dstate: DecodeState | None = None
        self.feats: Tensor | None = None  # (2B|B, F, C) target features of positions dfed .. n - 1

    def settings(self) -> dict[str, object]:
        return {"window": self.width + 1, "draft_len": self.width, "draft": self.draft}

    def begin(self, flight: Flight, generator: Generator, policy: DecodingPolicy) -> None:
        self.drafter.to(device=generator.device, dtype=generator.dtype).eval()
        bind(self.drafter, target=generator)
        self.policy, self.vocab = policy, int(generator.layout.vocab_size)
        self.dstate = self.drafter.start(flight.state.batch_size)
        self.feats = None

    def restart(self, flight: Flight, rows: Tensor) -> None:
        assert self.dstate is not None
        both = flight.both(rows)
        self.dstate.truncate(torch.where(torch.isin(torch.arange(self.dstate.batch_size), both), 0, self.dstate.fed))

    def select(self, keep: Tensor, both: Tensor) -> None:
        assert self.dstate is not None
        self.dstate.select(both)
        if self.feats is not None:
            self.feats = self.feats[both.to(self.feats.device)]

    def _catch_up(self, flight: Flight) -> Tensor | None:
        """Feed the drafter (token, target feature) of the positions decided since it last read; its
        output at each row's last input, (2B|B, 1, C), or None when no row has anything to read."""
        assert self.dstate is not None
        fed = self.dstate.fed[: flight.rows]
        counts = (flight.n - fed).clamp_min(0)
        width = int(counts.max()) if len(counts) else 0
        if not width or self.feats is None:
            return None
        positions = (fed[:, None] + torch.arange(width)[None]).clamp_max(flight.length - 1)
        tokens = flight.tokens.gather(1, positions.to(flight.tokens.device))
        both = self.policy.rows
        g = self.drafter.step(self.dstate, both(tokens), self.feats[:, :width], counts=both(counts))
        last = both(counts - 1).clamp_min(0).to(g.device)
        return g[torch.arange(g.shape[0], device=g.device), last][:, None]

    def propose(self, flight: Flight) -> Drafts:
        """Catch up, then a chain of ``draft_len`` drafts from the drafter's own features."""
        counts, device = draft_counts(flight, self.width), flight.tokens.device
        counts = torch.where(flight.n > 0, counts, 0)  # no target feature yet: the pass decides position 0
        g = self._catch_up(flight)
        tokens, qs = flight.tokens.new_zeros(flight.rows, self.width), []
        positions = draft_positions(flight, self.width)
        for i in range(self.width):
            live = (i < counts).to(device)
            if g is None:  # no row can draft yet; draw all the same, so every row's stream stays in step
                q = one_hot_probs(tokens[:, :1], self.vocab)
            else:
                q = self.policy.probs(self.drafter.head(g), flight.layout(positions[:, i:i + 1]))  # (B, 1, V)
            x = flight.rng.categorical(q) if self.draft == "sample" else q.argmax(-1)
            x = torch.where(live[:, None], x, 0)
            if self.draft == "greedy" or g is None:
                q = one_hot_probs(x, self.vocab)
            qs.append(torch.where(live[:, None, None], q, one_hot_probs(x, self.vocab)))
            tokens[:, i] = x[:, 0]
            rows = torch.arange(flight.rows, device=device)[live]
            flight.tokens[rows, positions[:, i].to(device)[live]] = x[live, 0]
            more = (i < counts - 1).long()
            if i < self.width - 1 and g is not None:  # the drafter reads its draft to propose the next
                g = self.drafter.step(self.dstate, self.policy.rows(x), g, counts=self.policy.rows(more)) \
                    if bool(more.any()) else None
        q_all = torch.cat(qs, dim=1) if qs else torch.zeros(flight.rows, 0, self.vocab, device=device)
        return Drafts(tokens, q_all, counts)

    def update(self, flight: Flight, out: StepOutput, p: Tensor, accepted: Tensor, counts: Tensor) -> None:
        """Drop the drafter's chain; keep the target features of the positions this pass decided."""
        assert self.dstate is not None and out.hidden is not None
        self.dstate.truncate(self.policy.rows(torch.minimum(self.dstate.fed[: flight.rows], flight.n)))
        self.feats = out.hidden
