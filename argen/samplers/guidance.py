"""Classifier-free guidance by batch doubling (algorithms.md section 0).

The batch runs once with its condition and once with the null condition in a single forward of
2B rows; the logits mix as ``l_u + s (l_c - l_u)``. The scale follows a schedule over the progress u
in [0, 1] of the plan step being decided (u = step k / (K - 1): the token index for raster, the window
index for Token-Shuffle, the scale for VAR; see :mod:`argen.samplers.policy`), with target scale s:

* ``constant``: s (LlamaGen);
* ``linear``: 1 + (s - 1) u, from no guidance at the first step to s at the last (VAR's ramp);
* ``cosine``: 1 + (s - 1) (1 - cos(pi u)) / 2, the same end points, slow at both ends;
* ``half_linear``: 1 + (s - 1) min(2u, 1), the linear ramp over the first half of the steps, then s.

The last three are the schedules Token-Shuffle (Ma et al. 2025) compares over the AR token index
because full guidance on the first tokens causes visual flaws. The paper's exact formulas could not be
retrieved (algorithms.md section 6.2): these are our definitions, each starting at 1 and ending at s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from argen.core import Condition


SCHEDULES = ("constant", "linear", "cosine", "half_linear")


@dataclass(frozen=True)
class Guidance:
    """scale: s (1 disables guidance, no doubling); schedule: one of :data:`SCHEDULES`."""

    scale: float = 1.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")

    @property
    def active(self) -> bool:
        """Every schedule is 1 throughout at scale 1: no guidance, so no doubled rows (whatever the schedule)."""
        return self.scale != 1.0

    def double(self, generator: object, cond: Condition) -> Condition:
        """[cond; null(cond)] when guidance is active, else cond."""
        return cond.cat(generator.null_cond(cond)) if self.active else cond  # type: ignore[attr-defined]

    def scale_at(self, progress: Tensor) -> Tensor:
        """Guidance scale at progress in [0, 1] (one value per query position)."""
        u = progress.clamp(0.0, 1.0)
        if self.schedule == "constant":
            return torch.full_like(u, self.scale)
        if self.schedule == "linear":
            ramp = u
        elif self.schedule == "cosine":
            ramp = (1.0 - torch.cos(math.pi * u)) / 2.0
        else:  # half_linear
            ramp = (2.0 * u).clamp_max(1.0)
        return 1.0 + (self.scale - 1.0) * ramp

    def mix(self, logits: Tensor, progress: Tensor) -> Tensor:
        """logits (2B, Q, ...) from a doubled batch (logits, or a flow's velocities (2B, Q, C)) -> guided
        (B, Q, ...); progress (Q,) or (B, Q) per row."""
        if not self.active:
            return logits
        cond, uncond = logits.float().chunk(2, dim=0)
        s = self.scale_at(progress.to(logits.device).float())
        s = s[None, :, None] if s.dim() == 1 else s[:, :, None]
        return uncond + s * (cond - uncond)
