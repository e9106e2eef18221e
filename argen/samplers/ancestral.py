"""Ancestral sampling: walk the generator's plan, sample every queried position from the
(guided, processed) logits, feed the group back. Works for any generator with logits."""

from __future__ import annotations

import time
import torch
from torch import Tensor

from argen.core import Condition, Generator, Requirements, SampleResult, SamplingStats, check_compatible
from argen.samplers.common import OnFinish, finish, in_batches
from argen.samplers.policy import DecodingPolicy
from argen.samplers.random import RowRandom


class AncestralSampler:
    """temperature / top_k / top_p: see :class:`~argen.samplers.logits.LogitsProcessor`; cfg_scale /
    cfg_schedule: see :class:`~argen.samplers.guidance.Guidance` (1.0 = no guidance)."""

    requires = Requirements(output="logits")
    name = "ancestral"

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0,
                 cfg_schedule: str = "constant") -> None:
        self.policy = DecodingPolicy(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                                     cfg_schedule=cfg_schedule)

    def settings(self) -> dict[str, object]:
        return {"sampler": self.name, **self.policy.settings()}

    @torch.no_grad()
    def sample(self, generator: Generator, cond: Condition, *, seeds: Tensor, batch_size: int | None = None,
               on_finish: OnFinish | None = None) -> SampleResult:
        """cond: N conditions; seeds: (N,) per-sample seeds (see :func:`argen.samplers.random.sample_seeds`);
        at most ``batch_size`` rows at a time; ``on_finish(indices, tokens)`` as batches complete."""
        check_compatible(self, generator)
        self.policy.begin(generator)
        return in_batches(lambda c, s: self._batch(generator, c, s), cond, seeds, batch_size, on_finish)

    def _batch(self, generator: Generator, cond: Condition, seeds: Tensor) -> SampleResult:
        start_time = time.perf_counter()
        device = generator.device
        rng = RowRandom(seeds.to(device))
        state = generator.start(self.policy.conditions(generator, cond.to(device)))
        tokens = generator.layout.empty(len(cond), device)
        prev = torch.zeros(0, dtype=torch.long)
        stats = SamplingStats()
        for group in generator.plan():
            out = generator.step(state, self.policy.rows(tokens[:, prev.to(device)]), prev, group)
            assert out.logits is not None  # output="logits" was checked
            tokens[:, group.to(device)] = rng.categorical(self.policy.probs(out.logits, group))  # (B, Q)
            prev = group
            stats.forward_passes += 1
            stats.tokens += len(group) * len(cond)
        return SampleResult(tokens=tokens, stats=finish(stats, start_time, device))
