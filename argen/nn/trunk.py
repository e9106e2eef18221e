"""The causal trunk every decoder-only generator here shares (raster, its drafter; NAR, Token-Shuffle and
xAR's AR part come next): where each row's new inputs go in the KV cache, what each of them may see,
and the blocks run over them.

A step's inputs are (B, N, C), left-aligned per row; row b writes ``counts[b]`` of them at its own slots
``lengths[b] ..`` and the rest are padding (slot -1, written to the cache's scratch slot, seen by no
one). Masks come from the slots (:func:`~argen.nn.attention.slot_mask`), RoPE from a per-row index into
the generator's rotary table, so rows of one batch can be anywhere in their sequences: what ragged
speculative decoding and continuous batching need. A generator passes an explicit ``mask`` instead when
its order is not causal in slots (block-causal, proximity, tree drafts).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from argen.core.state import DecodeState, KVCache
from argen.nn.attention import slot_mask


def row_slots(lengths: Tensor, counts: Tensor, width: int) -> Tensor:
    """(B, width) int64 CPU: slots ``lengths[b] + j`` for the first ``counts[b]`` inputs of row b, -1 after."""
    j = torch.arange(width)[None]
    return torch.where(j < counts[:, None], lengths[:, None] + j, torch.full_like(j, -1))


def positions_per_row(x: Tensor, batch: int, what: str) -> Tensor:
    """Layout positions given once for the batch (F,) or per row (B, F) -> (B, F) int64 CPU (-1: none)."""
    x = torch.as_tensor(x).to(torch.long).cpu()
    if x.dim() == 1:
        if bool((x < 0).any()):  # -1 pads rows that do less; the same for every row has no pads
            raise ValueError(f"{what} {x.tolist()} are negative (-1 pads only per-row (B, F) positions)")
        return x[None].expand(batch, -1)
    if x.dim() != 2 or x.shape[0] != batch:
        raise ValueError(f"{what} must be (F,) for every row or (B={batch}, F) per row, got {tuple(x.shape)}")
    return x


def find_inputs(slots: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """Index (B, Q) of the input whose slot is ``wanted`` (B, Q) in each row's ``slots`` (B, N), -1 where
    ``wanted`` is -1 (a padded query), and (B, Q) bool: whether each wanted slot is among the inputs."""
    hit = slots[:, None, :] == wanted[:, :, None]  # (B, Q, N)
    found = hit.any(-1) | (wanted < 0)
    return torch.where(wanted < 0, -1, hit.float().argmax(-1)), found


def run_layers(layers: Iterable[nn.Module], h: Tensor, rope: Tensor, state: DecodeState | None = None,
               slots: Tensor | None = None, key_valid: Tensor | None = None, *, mask: Tensor | None = None,
               levels: Tensor | None = None, first: int = 0) -> Tensor:
    """Run ``layers`` over inputs (B, N, C): a whole teacher-forced sequence (``state`` None, causal,
    ``key_valid`` marking padded keys, or as an explicit ``mask`` (B|1, 1, N, N) says), or a step whose
    inputs go to ``slots`` (B, N) of ``state``'s caches, attending in the order of the slot ``levels``
    (S,) (:func:`~argen.nn.attention.slot_mask`; None: causal). ``rope``: the inputs' rotary rows, (N,
    hd/2, 2) or (B, N, hd/2, 2). ``first``: the index of the first of ``layers`` among the generator's
    blocks, so that its KV cache is ``state.caches[first]`` (NAR runs its extra block on its own)."""
    layers = list(layers)
    if state is None:
        for layer in layers:
            h = layer(h, rope, key_valid=key_valid, mask=mask)
        return h
    if slots is None:
        raise ValueError("a decoding step needs the slots of its inputs")
    slots = slots.to(h.device)
    mask = slot_mask(slots, state.max_len, state.key_valid, levels)
    caches: list[KVCache] = state.caches[first:first + len(layers)]
    for layer, cache in zip(layers, caches):
        h = layer(h, rope, cache=cache, slots=slots, mask=mask)
    return h
