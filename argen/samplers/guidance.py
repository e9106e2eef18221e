"""Classifier-free guidance by batch doubling (algorithms.md section 0).

The batch runs once with its condition and once with the null condition in a single forward of
2B rows; the logits mix as ``l_u + s (l_c - l_u)``. Schedules: ``constant`` (LlamaGen), and
``linear``, which ramps the scale from 1 at the first generated position to ``scale`` at the
last (progress = fraction of the image decided), the linear ramp VAR uses across scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from argen.core import Condition


@dataclass(frozen=True)
class Guidance:
    """scale: s (1 disables guidance, no doubling); schedule: constant | linear."""

    scale: float = 1.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "linear"):
            raise ValueError(f"guidance schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")

    @property
    def active(self) -> bool:
        return self.scale != 1.0 or self.schedule != "constant"

    def double(self, generator: object, cond: Condition) -> Condition:
        """[cond; null(cond)] when guidance is active, else cond."""
        return cond.cat(generator.null_cond(cond)) if self.active else cond  # type: ignore[attr-defined]

    def scale_at(self, progress: Tensor) -> Tensor:
        """Guidance scale at progress in [0, 1] (one value per query position)."""
        if self.schedule == "constant":
            return torch.full_like(progress, self.scale)
        return 1.0 + (self.scale - 1.0) * progress

    def mix(self, logits: Tensor, progress: Tensor) -> Tensor:
        """logits (2B, Q, ...) from a doubled batch (logits, or a flow's velocities (2B, Q, C)) -> guided
        (B, Q, ...); progress (Q,) or (B, Q) per row."""
        if not self.active:
            return logits
        cond, uncond = logits.float().chunk(2, dim=0)
        s = self.scale_at(progress.to(logits.device).float())
        s = s[None, :, None] if s.dim() == 1 else s[:, :, None]
        return uncond + s * (cond - uncond)
