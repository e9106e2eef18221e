"""The decoding policy every sampler shares: classifier-free guidance with its schedule, then the logits
processors (algorithms.md section 0), with one definition of guidance progress.

Progress is where a position's plan step lies in the plan: 0 at the first step, 1 at the last. For a
raster plan that is position / (L - 1); for VAR's plan of scales it is scale k / (K - 1), VAR's linear
CFG ramp. It comes from the generator's own plan, so every sampler ramps guidance the same way for
every generator, and targets and drafters are processed by the same rule (a draft is proposed from
what it is checked by).
"""

from __future__ import annotations

import torch
from torch import Tensor

from argen.core import Condition, Generator
from argen.samplers.guidance import Guidance
from argen.samplers.logits import LogitsProcessor


def plan_progress(plan: list[Tensor], length: int) -> Tensor:
    """(L,) float: the progress in [0, 1] of the plan step that decides each layout position."""
    progress = torch.zeros(length)
    for k, group in enumerate(plan):
        progress[group.long()] = k / max(len(plan) - 1, 1)
    return progress


class DecodingPolicy:
    """temperature / top_k / top_p: see :class:`LogitsProcessor`; cfg_scale / cfg_schedule: see
    :class:`Guidance` (1.0 = no guidance)."""

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0,
                 cfg_schedule: str = "constant") -> None:
        self.processor = LogitsProcessor(temperature=temperature, top_k=top_k, top_p=top_p)
        self.guidance = Guidance(scale=cfg_scale, schedule=cfg_schedule)
        self._progress: Tensor | None = None

    @property
    def doubled(self) -> bool:
        """Whether the generator runs each row twice (with its condition and with the null one)."""
        return self.guidance.active

    def settings(self) -> dict[str, object]:
        p, g = self.processor, self.guidance
        return {"temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "cfg_scale": g.scale,
                "cfg_schedule": g.schedule}

    def begin(self, generator: Generator) -> None:
        """Read the generator's plan once per sampling call (guidance progress per position)."""
        self._progress = plan_progress(generator.plan(), generator.layout.length)

    def conditions(self, generator: Generator, cond: Condition) -> Condition:
        """[cond; null(cond)] when guided, else cond: the rows the generator runs."""
        return cond.cat(generator.null_cond(cond)) if self.doubled else cond

    def rows(self, x: Tensor) -> Tensor:
        """Per-row values of the B guided rows, repeated for their null twins when guided (2B rows)."""
        return torch.cat([x, x]) if self.doubled else x

    def guided(self, outputs: Tensor, positions: Tensor) -> Tensor:
        """Guidance alone: ``u + s (c - u)`` of a step's outputs ((2B, Q, ...) when guided, logits or a
        flow's velocities) at layout ``positions``: (Q,) for every row or (B, Q) per row (-1: padding)."""
        if self._progress is None:
            raise RuntimeError("DecodingPolicy.begin(generator) must run before the first step")
        positions = positions.long().cpu()
        return self.guidance.mix(outputs, self._progress[positions.clamp_min(0)])

    def probs(self, logits: Tensor, positions: Tensor) -> Tensor:
        """Target distributions (B, Q, V) from a step's logits ((2B, Q, V) when guided) at layout
        ``positions`` (as :meth:`guided`), after the logits processors."""
        return self.processor.probs(self.guided(logits, positions))
