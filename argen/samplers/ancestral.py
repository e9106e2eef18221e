"""Ancestral sampling: walk the generator's plan, sample every queried position from the
(guided, processed) logits, feed the group back. Works for any discrete generator."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from argen.core import Condition, Requirements, SampleResult, SamplingStats
from argen.samplers.common import begin, finish, processing_settings
from argen.samplers.guidance import Guidance
from argen.samplers.logits import LogitsProcessor


class AncestralSampler:
    """temperature / top_k / top_p: see :class:`LogitsProcessor`; cfg_scale / cfg_schedule: see
    :class:`Guidance` (1.0 = no guidance)."""

    requires = Requirements(discrete=True)
    name = "ancestral"

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0,
                 cfg_schedule: str = "constant") -> None:
        self.processor = LogitsProcessor(temperature=temperature, top_k=top_k, top_p=top_p)
        self.guidance = Guidance(scale=cfg_scale, schedule=cfg_schedule)

    def settings(self) -> dict[str, object]:
        return {"sampler": self.name, **processing_settings(self)}

    @torch.no_grad()
    def sample(self, generator: object, cond: Condition, *, seeds: Tensor) -> SampleResult:
        """cond: B conditions; seeds: (B,) per-row seeds (see :func:`argen.samplers.random.sample_seeds`)."""
        start_time = time.perf_counter()
        rng, device, state = begin(self, generator, cond, seeds)
        plan = generator.plan()  # type: ignore[attr-defined]
        length = generator.layout.length  # type: ignore[attr-defined]
        b = len(cond)
        tokens = torch.zeros(b, length, dtype=torch.long, device=device)
        prev = torch.zeros(0, dtype=torch.long)
        stats = SamplingStats()
        for k, group in enumerate(plan):
            feed = tokens[:, prev.to(device)]
            if self.guidance.active:
                feed = torch.cat([feed, feed])
            out = generator.step(state, feed, prev, group)  # type: ignore[attr-defined]
            progress = torch.full((len(group),), k / max(len(plan) - 1, 1))
            probs = self.processor.probs(self.guidance.mix(out.logits, progress))  # (B, Q, V)
            tokens[:, group.to(device)] = rng.categorical(probs)
            prev = group
            stats.forward_passes += 1
            stats.tokens += len(group)
        return SampleResult(tokens=tokens, stats=finish(stats, start_time, device))
