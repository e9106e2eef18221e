"""Decoding state: the object a sampler holds between ``start`` and the last ``step``.

House style 3: state is an object you hold, never a mode the model is in. The KV caches are
preallocated once (LlamaGen rounds the length up to a multiple of 8) and written in place;
``truncate`` rolls the state back to a prefix of the fed tokens, which is all that speculative
decoding needs (a rejected draft's keys/values are simply overwritten by the next write).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def round_up(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


class KVCache:
    """Keys and values of one attention layer: (B, H, max_len, head_dim) each, filled up to a length
    kept by the owning :class:`DecodeState` (all layers advance together)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, F, hd) at slots [start, start+F); return all keys/values up to start+F."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise IndexError(f"KV cache overflow: writing slots [{start}, {end}) into a cache of {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


@dataclass
class DecodeState:
    """Everything a generator needs to continue decoding one batch.

    caches: one :class:`KVCache` per layer; length: slots written (condition prefix included);
    prefix_len: slots taken by the condition (text tokens, class token, VAR's start token);
    fed: layout positions fed so far (tokens occupy slots ``prefix_len + i`` for generators
    that feed one slot per position); pending: condition embeddings not yet run through the
    model (the first ``step`` consumes them with its feed); key_valid: (B, max_len) bool, False
    on padded condition slots; extras: generator-specific tensors (e.g. VAR's accumulated
    latent), each rolled back by the generator that owns it.
    """

    caches: list[KVCache]
    batch_size: int
    prefix_len: int
    max_len: int
    length: int = 0
    fed: int = 0
    pending: Tensor | None = None
    key_valid: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def truncate(self, fed: int) -> None:
        """Keep the condition and the first ``fed`` fed positions; later slots are forgotten
        (overwritten by the next step). Used to roll back rejected speculative drafts."""
        if fed < 0 or fed > self.fed:
            raise ValueError(f"cannot truncate to {fed} fed positions: the state holds {self.fed}")
        if self.pending is not None:
            return  # nothing has been run yet
        self.fed = fed
        self.length = self.prefix_len + fed

    @property
    def device(self) -> torch.device:
        return self.caches[0].k.device if self.caches else torch.device("cpu")
