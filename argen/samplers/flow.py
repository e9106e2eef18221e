"""Flow sampling of continuous entities: walk a velocity generator's plan and, for each group, integrate
its flow from noise (t = 1) to data (t = 0) with Euler steps, then feed the finished entities back.

The protocol's convention (:class:`~argen.core.protocols.FlowGenerator`): ``x_t = (1 - t) x + t eps``,
velocity ``eps - x``, so one Euler step from t to t - dt is ``x <- x - dt * v(x, t)``. Guidance mixes the
velocities of the doubled rows, ``v_u + s (v_c - v_u)``, with the scale's schedule over the plan (the
shared :class:`~argen.samplers.policy.DecodingPolicy`). The starting noise is each row's own normal draws
(:meth:`RowRandom.normal`), so a sample does not depend on its batch-mates. ``temperature`` scales that
noise (1 = the model's distribution; < 1 trades diversity for fidelity, as xAR's and MAR's samplers do).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from argen.core import (Condition, DecodeState, FlowGenerator, Requirements, SampleResult, SamplingStats,
                        check_compatible)
from argen.samplers.common import OnFinish, finish, in_batches
from argen.samplers.policy import DecodingPolicy
from argen.samplers.random import RowRandom


def euler_times(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """(steps + 1,) noise levels from 1 (noise) down to 0 (data), evenly spaced."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


class FlowSampler:
    """steps: Euler steps per entity group; temperature: scale of the starting noise; cfg_scale /
    cfg_schedule: see :class:`~argen.samplers.guidance.Guidance` (1.0 = no guidance)."""

    requires = Requirements(output="velocity")
    name = "flow"

    def __init__(self, *, steps: int = 25, temperature: float = 1.0, cfg_scale: float = 1.0,
                 cfg_schedule: str = "constant") -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1 (Euler steps from noise to data), got {steps}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (it scales the starting noise), got {temperature}")
        self.steps, self.temperature = int(steps), float(temperature)
        self.policy = DecodingPolicy(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)

    def settings(self) -> dict[str, object]:
        s = self.policy.settings()
        return {"sampler": self.name, "steps": self.steps, "temperature": self.temperature,
                "cfg_scale": s["cfg_scale"], "cfg_schedule": s["cfg_schedule"]}

    @torch.no_grad()
    def sample(self, generator: FlowGenerator, cond: Condition, *, seeds: Tensor, batch_size: int | None = None,
               on_finish: OnFinish | None = None) -> SampleResult:
        """cond: N conditions; seeds: (N,) per-sample seeds; at most ``batch_size`` rows at a time."""
        check_compatible(self, generator)
        self.policy.begin(generator)
        return in_batches(lambda c, s: self._batch(generator, c, s), cond, seeds, batch_size, on_finish)

    def _solve(self, generator: FlowGenerator, state: DecodeState, noise: Tensor, group: Tensor) -> Tensor:
        """Integrate the group's entities (B, Q, C) from ``noise`` at t = 1 to t = 0."""
        times = euler_times(self.steps, noise.device)
        x, rows = noise, self.policy.rows
        for k in range(self.steps):
            t = times[k].expand(rows(x).shape[:2])  # (B', Q)
            v = self.policy.guided(generator.velocity(state, rows(x), t, group), group)
            x = x + (times[k + 1] - times[k]) * v.to(x.dtype)
        return x

    def _batch(self, generator: FlowGenerator, cond: Condition, seeds: Tensor) -> SampleResult:
        start_time = time.perf_counter()
        device = generator.device
        rng = RowRandom(seeds.to(device))
        state = generator.start(self.policy.conditions(generator, cond.to(device)))
        tokens = generator.layout.empty(len(cond), device)  # (B, L, C) float latents
        channels = tokens.shape[-1]
        prev = torch.zeros(0, dtype=torch.long)
        stats = SamplingStats()
        for group in generator.plan():
            generator.step(state, self.policy.rows(tokens[:, prev.to(device)]), prev, group)
            noise = self.temperature * rng.normal(len(group), channels, device=device)
            tokens[:, group.to(device)] = self._solve(generator, state, noise, group).to(tokens.dtype)
            prev = group
            stats.forward_passes += 1 + self.steps
            stats.tokens += len(group) * len(cond)
        return SampleResult(tokens=tokens, stats=finish(stats, start_time, device))
