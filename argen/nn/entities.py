"""Entities of next-X prediction (xAR, Ren et al. 2025; algorithms.md 4.1): how a latent grid is split into
the groups of positions one autoregressive step generates, and in which order.

* ``token``: every position on its own, in raster order (L steps);
* ``cell``: k x k blocks of neighbouring positions, the blocks in raster order of the block grid, positions
  row-major inside a block (the official code's ``clusterify``: 2 x 2 cells of 8 x 8 on a 16 x 16 latent);
* ``subsample``: strided, non-local groups: entity (i, j) holds the positions (r, c) with r = i and c = j
  modulo the stride, entities in raster order of (i, j), positions row-major inside each;
* ``image``: one entity holding every position (a single step: a flow model);
* ``scale``: the levels of a coarse-to-fine pyramid (FlowAR, algorithms.md 9), each level one entity;
  the positions of a ``scales`` layout are already coarse to fine, so its order is the identity.

A :class:`Partition` is what a generator needs: the sequence order (the layout position at each sequence
index, entity after entity, which is also the protocol's chain order) and the entity of each index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ENTITIES = ("token", "cell", "subsample", "image", "scale")


@dataclass(frozen=True)
class Partition:
    """order: (L,) the layout position at each sequence index; entity: (L,) the entity of each sequence index
    (0, 0, ..., 1, 1, ...: non-decreasing, entities contiguous)."""

    order: Tensor
    entity: Tensor

    @property
    def count(self) -> int:
        """Number of entities M (autoregressive steps)."""
        return int(self.entity[-1]) + 1

    def groups(self) -> list[Tensor]:
        """The layout positions of each entity, in sequence order (the generator's plan)."""
        return [self.order[self.entity == m] for m in range(self.count)]

    def inverse(self) -> Tensor:
        """(L,) the sequence index of each layout position."""
        inv = torch.empty_like(self.order)
        inv[self.order] = torch.arange(len(self.order), device=self.order.device)
        return inv


def _check_divides(what: str, size: int, height: int, width: int) -> None:
    if size < 1 or height % size or width % size:
        raise ValueError(f"the {what} {size} must divide the latent grid {height}x{width}; pick a divisor of both "
                         f"(e.g. {what} {max(1, min(height, width) // 2)})")


def grid_partition(kind: str, height: int, width: int, *, cell_size: int | None = None,
                   stride: int | None = None) -> Partition:
    """The partition of an (height, width) grid (raster layout order) into entities of ``kind``;
    ``cell_size`` (cell; default half the shorter side: 2 x 2 cells, the official setting) and ``stride``
    (subsample; default 2) size the entities."""
    cpu = torch.device("cpu")  # bookkeeping, also when a module is built on the meta device
    rows = torch.arange(height, device=cpu)[:, None].expand(height, width)
    cols = torch.arange(width, device=cpu)[None, :].expand(height, width)
    pos = torch.arange(height * width, device=cpu).view(height, width)
    if kind == "token":
        key = pos  # each position its own entity
    elif kind == "image":
        key = torch.zeros_like(pos)
    elif kind == "cell":
        k = max(1, min(height, width) // 2) if cell_size is None else int(cell_size)
        _check_divides("cell_size", k, height, width)
        key = (rows // k) * (width // k) + cols // k
    elif kind == "subsample":
        s = 2 if stride is None else int(stride)
        _check_divides("stride", s, height, width)
        key = (rows % s) * s + cols % s
    elif kind == "scale":
        raise ValueError("the scale entity partitions a pyramid of scales, not one grid: use scale_partition")
    else:
        raise ValueError(f"unknown entity {kind!r}; choose one of {', '.join(ENTITIES)}")
    key, pos = key.flatten(), pos.flatten()
    order = torch.argsort(key * (height * width) + pos)  # entity first, then raster order inside it
    return Partition(order=pos[order], entity=torch.unique(key, return_inverse=True)[1][order])


def scale_partition(shapes: tuple[tuple[int, int], ...]) -> Partition:
    """One entity per scale of a coarse-to-fine ``scales`` layout (the identity order)."""
    entity = torch.cat([torch.full((h * w,), k, device="cpu") for k, (h, w) in enumerate(shapes)])
    return Partition(order=torch.arange(len(entity), device="cpu"), entity=entity)

