"""Decoding state: the object a sampler holds between ``start`` and the last ``step``.

House style 3: state is an object you hold, never a mode the model is in. The KV caches are
preallocated once (LlamaGen rounds the length up to a multiple of 8) and written in place. Every row
keeps its own length (Protocol 2, DESIGN.md): a step writes each row's inputs at that row's slots,
``truncate`` rolls each row back to a prefix of its fed tokens (a rejected draft's keys/values are
simply overwritten by the next write), and a row can be restarted with a new condition while the
others go on (continuous batching).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def round_up(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


class KVCache:
    """Keys and values of one attention layer: (B, H, max_len + 1, head_dim) each. Rows are filled up to
    lengths kept by the owning :class:`DecodeState` (all layers advance together); the extra last slot
    is scratch, where padded inputs of a ragged step write (never visible to any query)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.k = torch.zeros(batch, heads, max_len + 1, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2] - 1

    def write(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Every row stores k, v (B, H, F, hd) at slots [start, start+F); return all keys/values up to
        start+F (generators whose rows always advance together: VAR)."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise IndexError(f"KV cache overflow: writing slots [{start}, {end}) into a cache of {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def write_rows(self, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Row b stores k, v (B, H, N, hd) at its own ``slots[b]`` (B, N) (-1: padding, to scratch);
        return every slot's keys/values (B, H, max_len, hd): masks say which a query sees."""
        if slots.numel() and int(slots.max()) >= self.max_len:
            raise IndexError(f"KV cache overflow: writing slot {int(slots.max())} into a cache of {self.max_len}")
        index = torch.where(slots < 0, self.max_len, slots)[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k.scatter_(2, index, k)
        self.v.scatter_(2, index, v)
        return self.k[:, :, : self.max_len], self.v[:, :, : self.max_len]

    def select(self, index: Tensor) -> None:
        """Keep rows ``index`` (B',) in this order (rows may repeat)."""
        self.k, self.v = self.k[index], self.v[index]


def allocate_kv(layers: int, batch: int, heads: int, slots: int, head_dim: int, *, like: Tensor) -> list[KVCache]:
    """One :class:`KVCache` per layer, ``slots`` long, in ``like``'s dtype and device (every generator's)."""
    return [KVCache(batch, heads, slots, head_dim, dtype=like.dtype, device=like.device) for _ in range(layers)]


def _per_row(value: int | Tensor, batch: int, what: str) -> Tensor:
    out = torch.as_tensor(value, dtype=torch.long).cpu()
    out = out.expand(batch).clone() if out.dim() == 0 else out.clone()
    if out.shape != (batch,):
        raise ValueError(f"{what} must be one number or one per row ({batch}), got shape {tuple(out.shape)}")
    return out


@dataclass
class DecodeState:
    """Everything a generator needs to continue decoding one batch, row by row.

    caches: one :class:`KVCache` per layer; lengths: (B,) slots written per row (condition prefix
    included); fed: (B,) layout positions fed per row; prefix_len: slots taken by the condition (text
    tokens, class token, VAR's start token); pending: (B, T, C) condition embeddings not yet run through
    the model, for the rows flagged in ``pending_rows`` (the next step runs them with the row's feed);
    key_valid: (B, max_len) bool, False on padded condition slots; extras: generator-specific tensors
    (e.g. VAR's accumulated latent), each rolled back by the generator that owns it; tokens_per_slot:
    fed positions per slot of the caches (1; Token-Shuffle: the s^2 tokens of a window share one slot,
    and only complete windows hold slots). ``lengths`` and ``fed`` live on the CPU: they are
    bookkeeping, read by the host to build each step's slots.
    """

    caches: list[KVCache]
    batch_size: int
    prefix_len: int
    max_len: int
    lengths: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    fed: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    pending: Tensor | None = None
    pending_rows: Tensor | None = None
    key_valid: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    tokens_per_slot: int = 1

    def __post_init__(self) -> None:
        if self.lengths.numel() == 0:
            self.lengths = torch.zeros(self.batch_size, dtype=torch.long)
        if self.fed.numel() == 0:
            self.fed = torch.zeros(self.batch_size, dtype=torch.long)
        if self.pending is not None and self.pending_rows is None:
            self.pending_rows = torch.ones(self.batch_size, dtype=torch.bool)

    def is_pending(self) -> Tensor:
        """(B,) bool: rows whose condition has not run yet."""
        if self.pending is None or self.pending_rows is None:
            return torch.zeros(self.batch_size, dtype=torch.bool)
        return self.pending_rows.clone()

    def uniform_fed(self) -> int:
        """The number of fed positions when every row has fed the same (generators without ragged rows)."""
        if self.batch_size and bool((self.fed != self.fed[0]).any()):
            raise ValueError(f"rows of this state have fed different numbers of positions ({self.fed.tolist()}); "
                             f"this generator advances all rows together")
        return int(self.fed[0]) if self.batch_size else 0

    def truncate(self, fed: int | Tensor) -> None:
        """Keep the condition and the first ``fed`` fed positions of each row (one number, or (B,));
        later slots are forgotten (overwritten by the next step). Rolls back rejected drafts."""
        target = _per_row(fed, self.batch_size, "truncate's fed")
        if bool((target < 0).any()) or bool((target > self.fed).any()):
            raise ValueError(f"cannot truncate to {target.tolist()} fed positions: the rows hold {self.fed.tolist()}")
        ran = ~self.is_pending()  # a row whose condition is pending has nothing to forget
        self.fed = torch.where(ran, target, self.fed)
        self.lengths = torch.where(ran, self.prefix_len + self.fed // self.tokens_per_slot, self.lengths)

    def select(self, index: Tensor) -> None:
        """Keep rows ``index`` (B',) in this order, rows may repeat (multi-trial samplers, compacting a
        batch). Row-aligned tensors in ``extras`` (first dimension B) are selected too."""
        index = torch.as_tensor(index, dtype=torch.long)
        before, cpu = self.batch_size, index.cpu()
        for cache in self.caches:
            cache.select(index.to(cache.k.device))
        self.lengths, self.fed, self.batch_size = self.lengths[cpu], self.fed[cpu], len(cpu)
        if self.pending is not None:
            self.pending = self.pending[index.to(self.pending.device)]
            self.pending_rows = None if self.pending_rows is None else self.pending_rows[cpu]
        if self.key_valid is not None:
            self.key_valid = self.key_valid[index.to(self.key_valid.device)]
        for key, value in self.extras.items():
            if isinstance(value, Tensor) and value.dim() and value.shape[0] == before:
                self.extras[key] = value[index.to(value.device)]

    @property
    def device(self) -> torch.device:
        return self.caches[0].k.device if self.caches else torch.device("cpu")
