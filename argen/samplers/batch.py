"""The rows a sampler has in flight, for continuous batching: which sample each row is drawing, how far
it got, and its tokens. A row that finishes hands its sample over and takes the next one of the request
into its slot; when the request runs dry, finished rows leave and the batch shrinks.

Per-sample seeds travel with the sample (``RowRandom.reset``), so every image is what it would be if it
were drawn alone: batch composition only changes how many rows share a forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from argen.core import Condition, DecodeState, SamplingStats
from argen.samplers.common import OnFinish
from argen.samplers.random import RowRandom


@dataclass
class Flight:
    """index: (B,) sample index per row (CPU); n: (B,) positions decided per row (CPU); tokens: (B, L)
    decided tokens then drafts, in the generator's chain order; out: (N, L) finished samples, in layout
    order; state: the generator's decode state (2B rows when guided: row b and its null twin b + B); rng:
    the rows' random streams; order: (L,) the layout position at each chain index
    (:func:`~argen.core.protocols.chain_order`; None: the chain is the layout order)."""

    cond: Condition
    seeds: Tensor
    index: Tensor
    n: Tensor
    tokens: Tensor
    out: Tensor
    state: DecodeState
    rng: RowRandom
    doubled: bool
    stats: SamplingStats = field(default_factory=SamplingStats)
    queued: int = 0
    on_finish: OnFinish | None = None
    order: Tensor | None = None

    def __post_init__(self) -> None:
        if self.order is not None and bool((self.order == torch.arange(len(self.order))).all()):
            self.order = None  # the layout order: nothing to map
        self.inverse = None if self.order is None else torch.argsort(self.order)

    def layout(self, chain: Tensor) -> Tensor:
        """Layout positions of chain indices (any shape, CPU; -1 stays -1)."""
        if self.order is None:
            return chain
        return torch.where(chain >= 0, self.order[chain.clamp_min(0)], -1)

    def inverse_of(self, layout: Tensor) -> Tensor:
        """Chain indices of layout positions (any shape, CPU, >= 0)."""
        return layout if self.inverse is None else self.inverse[layout]

    def in_layout(self, tokens: Tensor) -> Tensor:
        """(R, L) tokens in chain order -> layout order."""
        return tokens if self.inverse is None else tokens[:, self.inverse.to(tokens.device)]

    @property
    def rows(self) -> int:
        return len(self.index)

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def both(self, rows: Tensor) -> Tensor:
        """State rows of ``rows``: the rows themselves and, when guided, their null twins."""
        return torch.cat([rows, rows + self.rows]) if self.doubled else rows

    def take(self, count: int) -> Tensor:
        """The next ``count`` sample indices of the request (fewer at its end)."""
        got = torch.arange(self.queued, min(self.queued + count, len(self.seeds)))
        self.queued += len(got)
        return got


def finished_rows(flight: Flight) -> Tensor:
    """(R,) rows whose sample is complete: stored into ``out`` and reported (``on_finish``)."""
    done = ((flight.n >= flight.length) & (flight.index >= 0)).nonzero()[:, 0]
    if len(done):
        idx = flight.index[done]
        tokens = flight.in_layout(flight.tokens[done.to(flight.tokens.device)])
        flight.out[idx.to(flight.out.device)] = tokens
        if flight.on_finish is not None:
            flight.on_finish(idx.tolist(), tokens)
    return done


def compact(flight: Flight, keep: Tensor, select_source: Callable[[Tensor, Tensor], None]) -> None:
    """Drop the rows not in ``keep`` (no samples left for them) from every per-row structure."""
    both = flight.both(keep)
    flight.state.select(both)
    flight.rng.select(keep.to(flight.rng.seeds.device))
    select_source(keep, both)
    flight.index, flight.n = flight.index[keep], flight.n[keep]
    flight.tokens = flight.tokens[keep.to(flight.tokens.device)]
