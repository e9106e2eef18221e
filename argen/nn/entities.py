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
import torch.nn.functional as F
from torch import Tensor

from tokenizers_vq.layout import TokenLayout

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



def doubling_scales(side: int) -> list[int]:
    """FlowAR's scales for a latent of ``side``: side / 2^k down to 1 (16 -> 1, 2, 4, 8, 16)."""
    sides = [side]
    while sides[-1] % 2 == 0 and sides[-1] > 1:
        sides.append(sides[-1] // 2)
    return sides[::-1]


def entity_layout(kind: str, height: int, width: int, channels: int, *, cell_size: int | None = None,
                  stride: int | None = None, scales: list[int] | None = None) -> tuple[TokenLayout, Partition, Tensor]:
    """What a next-X generator of entity ``kind`` produces on a (height, width) latent of ``channels``: its
    layout (the grid; for ``scale`` the pyramid of square ``scales``, default :func:`doubling_scales`), the
    partition of that layout into entities, and each layout position's (row, col) (L, 2) in the finest
    grid's coordinates (a coarse token at the centre of the patch it summarises), for 2D RoPE."""
    if kind != "scale":
        layout = TokenLayout(kind="grid", shapes=((height, width),), vocab_size=None, channels=channels)
        rows = torch.arange(height, device="cpu").repeat_interleave(width)
        cols = torch.arange(width, device="cpu").repeat(height)
        part = grid_partition(kind, height, width, cell_size=cell_size, stride=stride)
        return layout, part, torch.stack([rows, cols], -1).float()
    if height != width:
        raise ValueError(f"the scale entity needs a square latent, got {height}x{width}")
    sides = doubling_scales(height) if scales is None else [int(s) for s in scales]
    if sides != sorted(set(sides)) or sides[-1] != height:
        raise ValueError(f"scales must increase strictly up to the latent side {height}, got {sides}")
    layout = TokenLayout(kind="scales", shapes=tuple((s, s) for s in sides), vocab_size=None, channels=channels)
    coords = []
    for s in sides:  # (i + 1/2) height / s - 1/2: the centre of the finest-grid patch coarse token i covers
        c = (torch.arange(s, device="cpu").float() + 0.5) * (height / s) - 0.5
        coords.append(torch.stack([c.repeat_interleave(s), c.repeat(s)], -1))
    return layout, scale_partition(layout.shapes), torch.cat(coords)


def pyramid(latent: Tensor, shapes: tuple[tuple[int, int], ...]) -> Tensor:
    """FlowAR's scales (algorithms.md 9): plain area downsamplings of the finest latent (B, h*w, C) (layout
    order) to every shape, concatenated coarse to fine -> (B, sum h_k w_k, C); the last scale is the latent."""
    b, _, c = latent.shape
    h, w = shapes[-1]
    grid = latent.transpose(1, 2).reshape(b, c, h, w)
    parts = [F.interpolate(grid, size=s, mode="area") if s != (h, w) else grid for s in shapes]
    return torch.cat([p.flatten(2).transpose(1, 2) for p in parts], dim=1)


def upsampled_previous(tokens: Tensor, shapes: tuple[tuple[int, int], ...], k: int) -> Tensor:
    """Scale k - 1 of a pyramid ``tokens`` (B, L, C) upsampled (bilinear) to scale k's shape -> (B, h_k w_k, C):
    the context FlowAR gives the next scale; zeros for k = 0."""
    b, _, c = tokens.shape
    hk, wk = shapes[k]
    if k == 0:
        return tokens.new_zeros(b, hk * wk, c)
    begin = sum(h * w for h, w in shapes[: k - 1])
    h, w = shapes[k - 1]
    prev = tokens[:, begin:begin + h * w].transpose(1, 2).reshape(b, c, h, w)
    up = F.interpolate(prev, size=(hk, wk), mode="bilinear", align_corners=False)
    return up.flatten(2).transpose(1, 2)
