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
    decided tokens then drafts; out: (N, L) finished samples; state: the generator's decode state
    (2B rows when guided: row b and its null twin b + B); rng: the rows' random streams."""

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
        flight.out[idx.to(flight.out.device)] = flight.tokens[done.to(flight.tokens.device)]
        if flight.on_finish is not None:
            flight.on_finish(idx.tolist(), flight.tokens[done.to(flight.tokens.device)])
    return done


def compact(flight: Flight, keep: Tensor, select_source: Callable[[Tensor, Tensor], None]) -> None:
    """Drop the rows not in ``keep`` (no samples left for them) from every per-row structure."""
    both = flight.both(keep)
    flight.state.select(both)
    flight.rng.select(keep.to(flight.rng.seeds.device))
    select_source(keep, both)
    flight.index, flight.n = flight.index[keep], flight.n[keep]
    flight.tokens = flight.tokens[keep.to(flight.tokens.device)]
