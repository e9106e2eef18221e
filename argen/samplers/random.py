"""Per-row random streams that do not depend on batch composition, process count or device.

A ``torch.Generator`` draws one stream for a whole batch, so which image a row gets depends on
its batch-mates. Here every row carries its own 64-bit seed (argen-sample derives it from the
global seed and the sample index) and each draw hashes (seed, draw counter, element) with the
SplitMix64 finaliser, in int64 arithmetic that gives the same bits on CPU and GPU. Samplers
take a :class:`RowRandom` as their randomness argument (house style 4: randomness is an
argument; nothing is seeded globally).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK63 = (1 << 63) - 1


def _to_signed(x: int) -> int:
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _to_signed(0x9E3779B97F4A7C15)
_M1 = _to_signed(0xBF58476D1CE4E5B9)
_M2 = _to_signed(0x94D049BB133111EB)


def _srl(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


def sample_seeds(seed: int, indices: Tensor | list[int] | range) -> Tensor:
    """The per-sample seeds argen-sample uses: a hash of (global seed, sample index)."""
    idx = torch.as_tensor(list(indices) if isinstance(indices, range) else indices, dtype=torch.int64)
    return splitmix64(splitmix64(torch.full_like(idx, _to_signed(seed))) ^ idx)


def decoder_seeds(seed: int, indices: Tensor | list[int] | range) -> Tensor:
    """Per-sample seeds for a stochastic tokenizer decoder: a stream apart from the sampler's
    (:func:`sample_seeds`), so the decoder's noise is not the sampler's draws again."""
    return splitmix64(sample_seeds(seed, indices) ^ _to_signed(0x5DEECE66D2B7E151))


class RowRandom:
    """Independent streams, one per batch row. ``seeds``: (B,) int64.

    Every draw is a pure function of (row seed, the row's draw counter, element index), so a row gets
    the same numbers whatever rows it shares a batch with, wherever in the batch it sits, and whatever
    width a call has beyond the elements the row uses. Counters are per row: a row that starts a new
    sample mid-batch (:meth:`reset`, continuous batching) begins its stream from 0, as it would alone.
    Samplers keep the sequence of calls per step a function of their configuration only, so a row's
    n-th step always reads its n-th draws."""

    def __init__(self, seeds: Tensor) -> None:
        self.seeds = seeds.to(torch.int64)
        self.counters = torch.zeros(len(self.seeds), dtype=torch.int64, device=self.seeds.device)

    def __len__(self) -> int:
        return self.seeds.shape[0]

    def _bits(self, n: int, device: torch.device | str | None) -> Tensor:
        """(B, n) int64 hashes of (seed, counter, element); advances every row's counter by one."""
        device = self.seeds.device if device is None else device
        step = _to_signed(0xD1B54A32D192ED03) * (self.counters.to(device) + 1)
        base = splitmix64(self.seeds.to(device) ^ step)  # (B,)
        self.counters = self.counters + 1
        return splitmix64(base[:, None] + torch.arange(n, device=device, dtype=torch.int64)[None] * _GOLDEN)

    def uniform(self, *shape: int, device: torch.device | str | None = None) -> Tensor:
        """(B, *shape) float32 in [0, 1); advances every row's stream by one draw."""
        n = 1
        for s in shape:
            n *= s
        u = _srl(self._bits(n, device), 40).to(torch.float32) * (1.0 / (1 << 24))  # top 24 bits -> exact float32
        return u.reshape(len(self), *shape)

    def normal(self, *shape: int, device: torch.device | str | None = None) -> Tensor:
        """(B, *shape) float32 standard normal draws (Box-Muller on two 26-bit uniforms from one hash, in
        float64, so CPU and GPU give the same values to float32 rounding); one draw of every row's stream."""
        n = 1
        for s in shape:
            n *= s
        bits = self._bits(n, device)
        u1 = (_srl(bits, 38).double() + 1.0) * (1.0 / (1 << 26))  # (0, 1]: the log is finite
        u2 = (bits & ((1 << 26) - 1)).double() * (1.0 / (1 << 26))
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
        return z.to(torch.float32).reshape(len(self), *shape)

    def randint(self, high: int, *shape: int, device: torch.device | str | None = None) -> Tensor:
        """(B, *shape) int64 uniform in [0, high)."""
        return (self.uniform(*shape, device=device).double() * high).long().clamp_max(high - 1)

    def categorical(self, probs: Tensor) -> Tensor:
        """One draw per row and query from probs (B, Q, V) by inverse CDF: (B, Q) int64."""
        b, q, v = probs.shape
        u = self.uniform(q, device=probs.device).double()  # (B, Q)
        cdf = probs.double().cumsum(-1)
        target = u * cdf[..., -1]
        idx = torch.searchsorted(cdf, target[..., None], right=True).squeeze(-1)
        return idx.clamp_max(v - 1)

    def rows(self, index: Tensor) -> RowRandom:
        """A view on some rows, each at its own draw position."""
        sub = RowRandom(self.seeds[index])
        sub.counters = self.counters[index].clone()
        return sub

    def select(self, index: Tensor) -> None:
        """Keep rows ``index`` in this order (rows of a batch that is compacted or reordered)."""
        self.seeds, self.counters = self.seeds[index], self.counters[index]

    def reset(self, rows: Tensor, seeds: Tensor) -> None:
        """Rows ``rows`` begin new streams from ``seeds`` (a new sample in that slot)."""
        self.seeds = self.seeds.clone()
        self.seeds[rows] = seeds.to(self.seeds)
        self.counters = self.counters.clone()
        self.counters[rows] = 0
